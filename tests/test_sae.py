"""The SAE: config parsing, sparse math against the seed's dense math, recovery of a planted
dictionary, batch-independent inference, the checkpoint round trip through the lake, bad input."""

from __future__ import annotations

import copy
import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from galsae_lake.cli import main
from galsae_lake.errors import InputError
from galsae_lake.lake import Lake, vector_array
from galsae_lake.sae import (MatryoshkaSAE, SAEConfig, configs_dir, encode_embeddings,
                             load_config, parse_set, sparse_loss_and_grads)
from galsae_lake.train import evaluate, load_sae, train_model, train_sae
from galsae_lake.testing import assert_refused

SMALL = ["group_sizes=[16,16,32]", "top_k=3", "epochs=8", "learning_rate=1e-2",
         "n_batches_to_dead=20", "log_every=10"]


@pytest.fixture
def one_thread():
    """Tiny matrices: one thread avoids thread hand-offs on a busy machine (same results)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def planted(rng: np.random.Generator, n: int, D: np.ndarray, active: int = 3,
            offset: float = 0.5) -> np.ndarray:
    """Rows that are sums of ``active`` planted unit directions (weights 1-2) plus noise."""
    atoms, d = D.shape
    pick = np.argsort(rng.random((n, atoms)), axis=1)[:, :active]
    coef = np.zeros((n, atoms))
    np.put_along_axis(coef, pick, rng.uniform(1, 2, (n, active)), axis=1)
    return (coef @ D + 0.01 * rng.normal(size=(n, d)) + offset).astype(np.float32)


def directions(rng: np.random.Generator, atoms: int = 64, d: int = 32) -> np.ndarray:
    D = rng.normal(size=(atoms, d))
    return D / np.linalg.norm(D, axis=1, keepdims=True)


def write_embeddings(lake: Lake, encoder: str, splits: dict[str, np.ndarray]) -> None:
    with lake.transaction("test", {}) as tx:
        for split, X in splits.items():
            ids = [f"{split}-{i:05d}" for i in range(len(X))]
            tx.write("embeddings", pa.table({"id_str": ids, "embedding": vector_array(X)}),
                     partition={"encoder": encoder, "split": split})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A lake with planted embeddings (train shifted from test) and one SAE trained on it."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    D = directions(rng)
    lake = Lake(tmp_path_factory.mktemp("sae") / "lake")
    splits = {"train": planted(rng, 1500, D), "test": planted(rng, 400, D, offset=0.8)}
    write_embeddings(lake, "planted", splits)
    run_id = train_sae(lake, "planted", overrides=SMALL, progress=False).run_id
    torch.set_num_threads(2)
    return lake, run_id, splits


# ---------------------------------------------------------------- config
def test_config_plain_dotted_and_toml_values(tmp_path):
    config = load_config(None, ["training.epochs=7", "top_k=5", "group_sizes=[8, 8, 16]",
                                "model.l1_coeff=2e-3", "device=cpu"], encoder="zoobot-synth")
    assert (config.epochs, config.top_k, config.group_sizes) == (7, 5, [8, 8, 16])
    assert config.l1_coeff == 0.002 and config.device == "cpu"
    assert config.input_dim is None  # the shipped file's input_dim follows the embeddings
    assert parse_set("group_sizes=[1,2]") == ("group_sizes", [1, 2])
    assert parse_set("device=cuda:1") == ("device", "cuda:1")
    # the seed's config keys and sections, including its own path/plot keys (ignored)
    seed_toml = tmp_path / "seed.toml"
    seed_toml.write_text(
        "[model]\ninput_dim = 384\ngroup_sizes = [64, 64, 128, 256, 512, 1024]\ntop_k = 64\n"
        "l1_coeff = 0.001\naux_penalty = 0.03\nn_batches_to_dead = 256\naux_k_multiplier = 16\n"
        "[training]\nepochs = 200\nlearning_rate = 0.0001\nbatch_size = 256\ndevice = \"auto\"\n"
        "[data]\nrandom_seed = 42\ndataset_name = \"x\"\n[output]\nresults_dir = \"r\"\n")
    seed = load_config(seed_toml, ["input_dim=384"])
    assert seed.input_dim == 384 and seed.total_latents == 2048 and seed.random_seed == 42


def test_shipped_configs_by_name():
    demo = load_config("demo", ["epochs=3"])
    assert demo.total_latents == 512 and demo.epochs == 3 and demo.input_dim is None
    assert load_config("mae").group_sizes == [64, 64, 128, 256, 512, 1024]
    with pytest.raises(InputError, match="cannot read SAE config"):
        load_config("no-such-config")


def test_shipped_configs_are_the_seeds():
    zoobot = load_config(configs_dir() / "zoobot_sae.toml")
    mae = load_config(configs_dir() / "mae_sae.toml")
    assert (zoobot.input_dim, mae.input_dim) == (640, 384)
    for config in (zoobot, mae):
        assert config.group_sizes == [64, 64, 128, 256, 512, 1024] and config.top_k == 64
        assert (config.l1_coeff, config.aux_penalty, config.n_batches_to_dead,
                config.aux_k_multiplier) == (1e-3, 0.03, 256, 16)
        assert (config.epochs, config.learning_rate, config.batch_size,
                config.random_seed) == (200, 1e-4, 256, 42)


@pytest.mark.parametrize("overrides, message", [
    (["topk=3"], "unknown SAE config key 'topk'"),
    (["training.top_k=3"], "top_k belongs in section [model]"),
    (["top_k=4096"], "top_k=4096 is larger than the dictionary (2048 latents)"),
    (["dict_size=100"], "sum to 2048, not to the dictionary size dict_size=100"),
    (["group_sizes=[16,0]"], "group_sizes must be a list of positive integers"),
    (["epochs=ten"], "epochs must be an integer"),
])
def test_bad_config(overrides, message):
    with pytest.raises(InputError) as error:
        load_config(None, overrides)
    assert message in str(error.value)


# ---------------------------------------------------------------- the math
def _pair(dead: int, top_k: int = 4, seed: int = 0, dtype=torch.float64):
    torch.manual_seed(seed)
    config = SAEConfig(input_dim=24, group_sizes=[8, 8, 16, 32], top_k=top_k, aux_k_multiplier=2,
                       n_batches_to_dead=3).validate()
    model = MatryoshkaSAE(config).to(dtype)
    with torch.no_grad():
        model.b_dec.normal_(0, 0.1)
        model.b_enc.normal_(0, 0.1)
    model.num_batches_not_active[:dead] = 5
    return model, copy.deepcopy(model)


@pytest.mark.parametrize("dead, top_k, shift", [
    (0, 4, 0.0),    # no dead latents: no auxiliary loss
    (5, 4, 0.0),    # few dead: the auxiliary top-k keeps all of them
    (30, 4, 0.0),   # many dead: the auxiliary threshold is one of the activations
    (10, 40, -2.0),  # fewer positive activations than top_k * batch
])
def test_sparse_step_equals_the_seeds_dense_math(dead, top_k, shift):
    model, reference = _pair(dead, top_k)
    x = torch.randn(37, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.b_enc.add_(shift)
        reference.b_enc.add_(shift)
    out = reference(x)
    out["loss"].backward()
    reference.make_decoder_weights_and_grad_unit_norm()
    sparse = sparse_loss_and_grads(model, x)
    model.make_decoder_weights_and_grad_unit_norm()
    for key, ref_key in [("loss", "loss"), ("mse", "l2_loss"), ("l1", "l1_loss"),
                         ("aux", "aux_loss"), ("l0", "l0_norm")]:
        tolerance = 1e-6 if key == "l0" else 1e-12  # the seed counts in float32
        assert float(getattr(sparse, key)) == pytest.approx(float(out[ref_key].detach()), rel=tolerance)
    if dead > 4:
        assert float(sparse.aux) > 0
    for name in ("W_enc_t", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(model, name).grad, getattr(reference, name).grad,
                                   rtol=1e-10, atol=1e-14)
    fired = out["feature_acts"].sum(0) > 0
    assert torch.equal(sparse.fired, fired)


def test_training_steps_follow_the_seeds_trajectory(one_thread):
    """Ten AdamW steps: sparse step + fused AdamW against autograd + the seed's plain AdamW."""
    model, reference = _pair(dead=0, dtype=torch.float32)
    assert model.W_enc.untyped_storage().data_ptr() != model.W_dec.untyped_storage().data_ptr()
    assert model.W_enc.shape == (24, 64) and model.W_dec.shape == (64, 24)
    from galsae_lake.train import make_optimizer
    ours, _ = make_optimizer(model, model.config)
    seeds = torch.optim.AdamW(reference.parameters(), lr=model.config.learning_rate)
    generator = torch.Generator().manual_seed(5)
    for _ in range(10):
        x = torch.randn(64, 24, generator=generator)
        sparse_loss_and_grads(model, x)
        model.make_decoder_weights_and_grad_unit_norm()
        ours.step()
        seeds.zero_grad()
        reference(x)["loss"].backward()
        reference.make_decoder_weights_and_grad_unit_norm()
        seeds.step()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(model, name), getattr(reference, name),
                                   rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- it finds what is there
def test_planted_dictionary_is_recovered(one_thread):
    rng = np.random.default_rng(0)
    D = directions(rng)  # 64 directions in 32-d, three per row
    X = planted(rng, 6000, D)
    config = SAEConfig(input_dim=32, group_sizes=[16, 16, 32], top_k=3, n_batches_to_dead=20,
                       epochs=60, learning_rate=1e-2).validate()
    model, log, _ = train_model(X, config, progress=False)
    # decoder rows live in the normalized space: back to the embeddings' space
    rows = (model.W_dec.detach() * (model.std + 1e-5)).numpy()
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    best = np.abs(rows @ D.T).max(axis=1)
    assert (best >= 0.9).mean() >= 0.85
    assert len(set(np.abs(rows @ D.T).argmax(axis=1)[best >= 0.9])) >= 50  # distinct atoms
    assert log[-1]["dead_fraction"] <= 0.05
    assert evaluate(model, X[:1000])["fvu"] < 0.2


def test_training_is_deterministic_on_cpu():
    rng = np.random.default_rng(2)
    X = planted(rng, 600, directions(rng))
    config = SAEConfig(input_dim=32, group_sizes=[16, 16, 32], top_k=3, epochs=2).validate()
    a, log_a, _ = train_model(X, config, progress=False)
    b, log_b, _ = train_model(X, config, progress=False)
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        assert torch.equal(getattr(a, name), getattr(b, name))


# ---------------------------------------------------------------- the lake
def test_inference_does_not_depend_on_the_batch(trained):
    lake, run_id, splits = trained
    model = load_sae(lake, run_id)
    X = torch.from_numpy(splits["test"][:200])
    together = model.encode(X)
    alone = torch.cat([model.encode(X[i:i + 1]) for i in range(len(X))])
    assert torch.equal(together, alone)
    assert float(model.threshold) > 0
    assert 1 < float((together > 0).sum(1).float().mean()) < 6


def test_checkpoint_reproduces_the_stored_activations(trained):
    lake, run_id, splits = trained
    folder = lake.model_dir("sae", run_id)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == sorted(["W_enc", "b_enc", "W_dec", "b_dec", "threshold",
                                           "mean", "std"])
        assert list(f.get_tensor("W_enc").shape) == [32, 64]
        assert list(f.get_tensor("W_dec").shape) == [64, 32]
    model = load_sae(lake, run_id)
    for split, X in splits.items():
        stored = lake.read("sae_activations", run_id=run_id, split=split).sort("id_str", "feature")
        rows, cols, vals = encode_embeddings(model, X)
        ids = np.array([f"{split}-{i:05d}" for i in range(len(X))])
        order = np.lexsort((cols, ids[rows]))
        assert stored["id_str"].to_list() == ids[rows][order].tolist()
        assert stored["feature"].to_numpy().tolist() == cols[order].tolist()
        assert np.array_equal(stored["activation"].to_numpy(), vals[order])  # bit for bit
        assert (stored["activation"].to_numpy() > 0).all()


def test_tables_and_metrics(trained):
    lake, run_id, splits = trained
    run = lake.read("sae_runs").row(0, named=True)
    assert run["run_id"] == run_id and run["encoder"] == "planted"
    assert run["checkpoint"] == f"models/sae/{run_id}"
    config = json.loads(run["config"])
    assert config["group_sizes"] == [16, 16, 32] and config["input_dim"] == 32
    metrics = json.loads(run["metrics"])
    assert metrics["split"] == "test" and metrics["normalization"] == "train"
    assert (metrics["n_train"], metrics["n_test"]) == (1500, 400)
    levels = metrics["fvu_per_level"]
    assert [lv["latents"] for lv in levels] == [16, 32, 64]
    assert levels[0]["fvu"] > levels[-1]["fvu"] == metrics["fvu"]  # more latents, less error
    assert 0 < metrics["fvu"] < 1 and metrics["explained_variance_seed"] < 1
    assert metrics["threshold"] == pytest.approx(float(load_sae(lake, run_id).threshold))
    for key in ("l0", "dead_fraction"):
        assert key in metrics
    features = lake.read("sae_features", run_id=run_id).sort("feature")
    assert features.height == 64
    assert features["group"].to_list() == [0] * 16 + [1] * 16 + [2] * 32
    acts = lake.read("sae_activations", run_id=run_id, split="train")
    counts = acts.group_by("feature").len().sort("feature")
    freq = dict(zip(counts["feature"].to_list(), (counts["len"] / 1500).to_list()))
    for row in features.iter_rows(named=True):
        assert row["frequency"] == pytest.approx(freq.get(row["feature"], 0.0))
    maxes = acts.group_by("feature").max().sort("feature")
    assert np.allclose(features.filter(features["frequency"] > 0)["max_activation"].to_numpy(),
                       maxes["activation"].to_numpy())
    log = lake.read("sae_training_log", run_id=run_id).sort("step")
    assert set(log.columns) >= {"step", "epoch", "loss", "mse", "l1", "aux", "l0",
                                "dead_fraction", "lr"}
    assert log["epoch"].max() == 8 and log["lr"][0] == pytest.approx(1e-2)
    assert log["loss"][-1] < log["loss"][0]


def test_normalization_is_fitted_on_train_only(trained):
    lake, run_id, splits = trained
    model = load_sae(lake, run_id)
    train, test = splits["train"].astype(np.float64), splits["test"].astype(np.float64)
    np.testing.assert_allclose(model.mean.numpy(), train.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.std.numpy(), train.std(0, ddof=1), rtol=1e-5)
    assert np.abs(model.mean.numpy() - np.vstack([train, test]).mean(0)).max() > 0.05


def test_cli_rerun_replaces_the_same_run(trained):
    lake, run_id, splits = trained
    args = [item for setting in SMALL for item in ("--set", setting)]
    result = CliRunner().invoke(main, ["--lake", str(lake.root), "train-sae", "--encoder",
                                       "planted", "--quiet", "--threads", "1", *args])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == run_id  # same config and data: the same run, replaced
    assert lake.read("sae_runs").height == 1
    assert lake.read("sae_features", run_id=run_id).height == 64


# ---------------------------------------------------------------- bad input, through the CLI
@pytest.mark.parametrize("args, setup, message", [
    (["--set", "nonsense=1"], None, "unknown SAE config key 'nonsense'"),
    (["--set", "top_k=100"], None, "top_k=100 is larger than the dictionary (64 latents)"),
    (["--set", "dict_size=128"], None, "group_sizes [16, 16, 32] sum to 64"),
    (["--encoder", "nothing"], None, "embeddings for encoder 'nothing' not found"),
    (["--encoder", "broken"], "nan", "hold 1 NaN/inf values in 1 rows"),
    (["--encoder", "broken"], "inf", "hold 1 NaN/inf values in 1 rows"),
    (["--set", "input_dim=16"], None, "are 32-d but the SAE config says input_dim=16"),
])
def test_bad_input_one_line_lake_unchanged(trained, args, setup, message):
    lake, run_id, splits = trained
    if setup:
        X = splits["test"][:50].copy()
        X[7, 3] = np.nan if setup == "nan" else np.inf
        write_embeddings(lake, "broken", {"train": X})
    if "--encoder" not in args:
        args = ["--encoder", "planted", *args]
    small = ["--set", "group_sizes=[16,16,32]", "--set", "top_k=3", "--set", "epochs=1"]
    result = assert_refused(lake.root, ["train-sae", "--quiet", *small, *args], message)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
