"""Analysis: exact Spearman / novelty / PCA against scipy and scikit-learn, and the lake commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import scipy.stats
from click.testing import CliRunner
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression
from sklearn.preprocessing import StandardScaler

from galsae_lake.labels import read_labels
from galsae_lake import analysis, duckdb_engine, gz, models, numpy_engine
from galsae_lake import labels as label_side
from galsae_lake.numpy_engine import Codes, label_basis, novelty, spearman
from galsae_lake.cli import main
from galsae_lake.lake import Lake, vector_array
from galsae_lake.pca import fit as fit_pca_matrix
from galsae_lake.pca import fit_pca

ENCODER = "enc-test"
RUN_ID = "sae-enc-test-000001"


# ----------------------------------------------------------------------------- references


def seed_spearman(dense: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The seed's loop: scipy spearmanr per pair, NaN rows dropped, 0 if constant or n <= 10."""
    out = np.zeros((dense.shape[1], labels.shape[1]))
    for f in range(dense.shape[1]):
        for j in range(labels.shape[1]):
            keep = ~np.isnan(labels[:, j])
            a, b = dense[keep, f], labels[keep, j]
            if keep.sum() > 10 and np.std(a) > 0 and np.std(b) > 0:
                rho = scipy.stats.spearmanr(a, b)[0]
                out[f, j] = 0.0 if np.isnan(rho) else rho
    return out


def seed_novelty(dense: np.ndarray, labels: np.ndarray) -> np.ndarray:
    X = SimpleImputer(strategy="median").fit_transform(labels)
    out = []
    for f in range(dense.shape[1]):
        y = dense[:, f]
        if np.std(y) < 1e-10:
            out.append(1.0)
            continue
        out.append(1 - max(0.0, LinearRegression().fit(X, y).score(X, y)))
    return np.array(out)


def random_problem(seed: int, n: int = 70, F: int = 9, L: int = 7):
    """Sparse codes with ties, negatives, constant and empty columns; labels with NaN and ties."""
    rng = np.random.default_rng(seed)
    dense = np.where(rng.random((n, F)) < 0.35, rng.integers(-2, 5, (n, F)) * 0.5, 0.0)
    dense[:, 2] = 0.0                  # never fires
    dense[:, 3] = 1.5                  # constant, all non-zero
    dense[:, 4] = rng.normal(size=n)   # dense, no ties
    labels = rng.integers(0, 5, (n, L)) / 4.0
    asked = rng.random(n) < 0.6
    labels[~asked, 1] = np.nan         # one question asked to some galaxies ...
    labels[~asked, 2] = np.nan         # ... its answers share the row set
    labels[10:, 3] = np.nan             # n = 10 -> rho 0 (n <= 10 rule)
    labels[:, 4] = 1.0 - labels[:, 0]  # collinear with label 0 (fractions sum to one)
    labels[:, 5] = 0.25                # constant label
    return dense, labels


def sql_numbers(codes: Codes, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rho, novelty) of numpy ``codes`` by the DuckDB engine's SQL."""
    import duckdb
    con = duckdb.connect()
    analysis.use_codes(con, codes)
    rho, _ = duckdb_engine.spearman(con, labels, codes.n_features)
    return rho, duckdb_engine.novelty(con, label_basis(labels), codes.n_features)


# ----------------------------------------------------------------------------- exact numbers


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spearman_matches_scipy_with_ties_nan_and_constants(seed):
    dense, labels = random_problem(seed)
    codes = Codes.from_dense("sae", dense)
    expected = seed_spearman(dense, labels)
    rho, n, null = spearman(codes, labels, permutations=2)
    assert np.abs(rho - expected).max() <= 1e-6
    assert n.tolist() == (~np.isnan(labels)).sum(axis=0).tolist()
    assert (rho[:, 3] == 0).all() and (rho[:, 5] == 0).all()
    assert (rho[2] == 0).all() and (rho[3] == 0).all()
    assert np.abs(rho[4]).max() > 0.05  # something real was compared
    assert null.shape == (2, labels.shape[1])
    rho_sql, _ = sql_numbers(codes, labels)
    assert np.abs(rho_sql - expected).max() <= 1e-6
    assert np.abs(rho_sql - rho).max() <= 1e-9  # the two engines agree


def test_sparse_implicit_zeros_equal_explicit_zeros():
    # a galaxy with no row for a feature has code 0: the same ranks as a dense matrix with zeros
    dense, labels = random_problem(5)
    codes = Codes.from_dense("sae", dense)
    assert len(codes.value) < dense.size / 2
    explicit = Codes.from_dense("sae", dense + 0.0)
    assert np.array_equal(spearman(codes, labels)[0], spearman(explicit, labels)[0])
    # only negative codes: zeros rank above them
    neg = np.where(dense < 0, dense, 0.0)
    assert np.abs(spearman(Codes.from_dense("s", neg), labels)[0]
                  - seed_spearman(neg, labels)).max() <= 1e-6


def test_novelty_matches_sklearn_with_collinear_labels():
    dense, labels = random_problem(3)
    labels[:, 5] = np.where(np.isnan(labels[:, 1]), np.nan, 0.5)  # constant where present
    codes = Codes.from_dense("sae", dense)
    got = novelty(codes, label_basis(labels))
    assert np.abs(got - seed_novelty(dense, labels)).max() <= 1e-6
    assert got[2] == 1.0 and got[3] == 1.0  # constant features are fully novel, as the seed
    # a feature that is a label is not novel at all
    planted = np.nan_to_num(labels[:, :1], nan=0.0)
    assert novelty(Codes.from_dense("p", planted), label_basis(labels))[0] == pytest.approx(0, abs=1e-9)


def test_label_row_sets_group_labels_that_keep_the_same_rows():
    _, labels = random_problem(0)
    masks, set_of_label = numpy_engine.label_row_sets(labels)
    assert set_of_label[1] == set_of_label[2] and set_of_label[0] == set_of_label[4]
    assert len(masks) == 3
    for j, s in enumerate(set_of_label):
        assert np.array_equal(masks[s], ~np.isnan(labels[:, j]))


def test_pca_matches_sklearn():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(200, 8)) @ rng.normal(size=(8, 8)) + 3.0
    train[:, 7] = 2.0  # a constant dimension
    test = rng.normal(size=(50, 8)) * 2
    model = fit_pca_matrix(train, 5)
    scaler = StandardScaler().fit(train)
    reference = PCA(n_components=5, svd_solver="full").fit(scaler.transform(train))
    assert np.abs(model.explained_variance_ratio - reference.explained_variance_ratio_).max() <= 1e-9
    assert np.abs(model.components - reference.components_).max() <= 1e-6
    expected = reference.transform(scaler.transform(test))
    assert np.abs(model.scores(test) - expected).max() <= 1e-4  # scores are stored as float32


# ----------------------------------------------------------------------------- a small lake


def synthetic_votes(rng, ids: list[str], split: str) -> pa.Table:
    """Long votes that follow the decision tree: a question is asked where its parent answer
    got at least a third of the votes; fractions are multiples of 1/4 (ties)."""
    rows = {k: [] for k in ("id_str", "question", "answer", "label", "count", "total", "fraction")}
    for gid in ids:
        fractions: dict[str, float] = {}
        for question, answers in gz.QUESTIONS.items():
            parent = gz.DEPENDENCIES[question]
            asked = parent is None or fractions.get(parent, 0.0) >= 1 / 3 or rng.random() < 0.3
            counts = rng.multinomial(4, rng.dirichlet(np.ones(len(answers)))) if asked else None
            for i, answer in enumerate(answers):
                label = f"{question}_{answer}"
                frac = float(counts[i] / 4) if asked else None
                if asked:
                    fractions[label] = frac
                rows["id_str"].append(gid)
                rows["question"].append(question)
                rows["answer"].append(answer)
                rows["label"].append(label)
                rows["count"].append(int(counts[i]) if asked else 0)
                rows["total"].append(4 if asked else 0)
                rows["fraction"].append(frac)
    return pa.table(rows)


def build_lake(root: Path, n_train: int = 60, n_test: int = 90, F: int = 12, d: int = 6) -> Lake:
    """Embeddings, votes, an SAE run and its sparse codes, written through lake transactions."""
    rng = np.random.default_rng(42)
    lake = Lake(root)
    with lake.transaction("test-fixture", {}) as tx:
        for split, n in (("train", n_train), ("test", n_test)):
            ids = [f"{split}-{i:04d}" for i in range(n)]
            emb = rng.normal(size=(n, d)).astype(np.float32)
            tx.write("embeddings", pa.table({"id_str": ids, "embedding": vector_array(emb)}),
                     partition={"encoder": ENCODER, "split": split})
            tx.write("galaxies", pa.table({"id_str": ids, "source": ["synthetic"] * n,
                                           "ra": np.zeros(n), "dec": np.zeros(n)}),
                     partition={"split": split})
            tx.write("votes", synthetic_votes(rng, ids, split),
                     partition={"catalog": "volunteers", "split": split})
            dense = np.maximum(emb @ rng.normal(size=(d, F)) - 0.8, 0).astype(np.float32)
            dense[:, 5] = 0.0                                # a dead feature
            dense[: n // 3, 6] = np.round(dense[: n // 3, 6])  # ties
            dense[n - 5:] = 0.0                              # galaxies with no codes at all
            r, f = np.nonzero(dense)
            tx.write("sae_activations", pa.table({
                "id_str": pa.array([ids[i] for i in r]), "feature": f.astype(np.int32),
                "activation": dense[r, f]}), partition={"run_id": RUN_ID, "split": split})
        tx.write("sae_runs", pa.table({
            "run_id": [RUN_ID], "encoder": [ENCODER],
            "config": [json.dumps({"input_dim": d, "group_sizes": [4, 8], "top_k": 3})],
            "checkpoint": [""], "metrics": ["{}"],
            "created_at": pa.array([0], pa.timestamp("us", tz="UTC"))}))
    return lake


def dense_codes(lake: Lake, split: str, n_features: int, model_table="sae_activations",
                key="run_id", model_id=RUN_ID, columns=("feature", "activation")):
    ids = lake.arrow("embeddings", columns=["id_str"], encoder=ENCODER, split=split)
    ids = ids.column("id_str").to_pylist()
    index = {g: i for i, g in enumerate(ids)}
    dense = np.zeros((len(ids), n_features))
    codes = lake.arrow(model_table, **{key: model_id, "split": split}).to_pydict()
    for g, f, v in zip(codes["id_str"], codes[columns[0]], codes[columns[1]]):
        dense[index[g], f] = v
    return ids, dense


def lake_labels(lake: Lake, ids: list[str], split: str) -> np.ndarray:
    votes = lake.arrow("votes", catalog="volunteers", split=split).to_pydict()
    index = {g: i for i, g in enumerate(ids)}
    out = np.full((len(ids), len(gz.LABEL_NAMES)), np.nan)
    col = {name: j for j, name in enumerate(gz.LABEL_NAMES)}
    for g, label, frac in zip(votes["id_str"], votes["label"], votes["fraction"]):
        if frac is not None:
            out[index[g], col[label]] = frac
    return out


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    return build_lake(tmp_path_factory.mktemp("analysis") / "lake")


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and p.name != "_lock"}


def test_fit_pca_writes_scores_for_every_split(lake):
    pca_id = fit_pca(lake, ENCODER, n_components=4, fit_split="train")
    assert pca_id.startswith(f"pca-{ENCODER}-")
    run = lake.read("pca_runs").row(0, named=True)
    assert (run["encoder"], run["n_components"], run["fit_split"], run["n_fit"]) == (
        ENCODER, 4, "train", 60)
    train = lake.arrow("embeddings", encoder=ENCODER, split="train")
    test = lake.arrow("embeddings", encoder=ENCODER, split="test")
    from galsae_lake.lake import vectors
    scaler = StandardScaler().fit(vectors(train))
    reference = PCA(4, svd_solver="full").fit(scaler.transform(vectors(train)))
    ratio = lake.read("pca_components", pca_id=pca_id).sort("component")["explained_variance_ratio"]
    assert np.abs(ratio.to_numpy() - reference.explained_variance_ratio_).max() <= 1e-6
    ids, scores = dense_codes(lake, "test", 4, "pca_scores", "pca_id", pca_id, ("component", "score"))
    assert ids == test.column("id_str").to_pylist()
    expected = reference.transform(scaler.transform(vectors(test)))
    assert np.abs(scores - expected).max() <= 1e-4
    assert lake.exists("pca_scores", pca_id=pca_id, split="train")


def test_analyze_sae_matches_seed_loop(lake):
    result = analysis.analyze(lake, RUN_ID, permutations=5)
    assert result["features"] == 12 and result["rows"] == 90
    corr = lake.read("feature_label_corr", model_id=RUN_ID, split="test")
    assert corr.height == 12 * 46 and set(corr["method"]) == {"sae"}
    ids, dense = dense_codes(lake, "test", 12)
    labels = lake_labels(lake, ids, "test")
    expected = seed_spearman(dense, labels)
    got = np.zeros_like(expected)
    col = {name: j for j, name in enumerate(gz.LABEL_NAMES)}
    for f, label, rho in corr.select("feature", "label", "spearman").iter_rows():
        got[f, col[label]] = rho
    assert np.abs(got - expected).max() <= 1e-6
    n_expected = (~np.isnan(labels)).sum(axis=0)
    assert dict(corr.filter(feature=0).select("label", "n").iter_rows()) == {
        name: int(n_expected[j]) for name, j in col.items()}

    summary = lake.read("feature_summary", model_id=RUN_ID, split="test").sort("feature")
    freq = (dense != 0).mean(axis=0)
    assert np.abs(summary["frequency"].to_numpy() - freq).max() <= 1e-12
    assert summary["frequency_rank"].to_list() == list(np.lexsort((np.arange(12), -freq)).argsort())
    assert np.abs(summary["max_abs_spearman"].to_numpy() - np.abs(expected).max(axis=1)).max() <= 1e-6
    best = np.abs(expected).argmax(axis=1)
    row = summary.row(0, named=True)
    assert row["best_label"] == gz.LABEL_NAMES[best[0]]
    secondary = [j for j, name in enumerate(gz.LABEL_NAMES) if not name.startswith("smooth-or-featured")]
    assert np.abs(summary["max_abs_spearman_secondary"].to_numpy()
                  - np.abs(expected[:, secondary]).max(axis=1)).max() <= 1e-6
    assert summary.filter(feature=5)["best_label"][0] is None  # dead feature: no best label
    novelty_expected = seed_novelty(dense, labels)
    assert np.abs(summary["novelty"].to_numpy() - novelty_expected).max() <= 1e-6
    assert np.allclose(summary.sort("novelty_rank")["novelty"].to_numpy(),
                       np.sort(novelty_expected)[::-1], atol=1e-9)

    null = lake.read("label_null", model_id=RUN_ID, split="test")
    assert null.height == 46 and (null["permutations"] == 5).all() and (null["n_features"] == 12).all()
    assert np.abs(null.sort("label")["observed_max_abs_spearman"].to_numpy()
                  - np.abs(expected).max(axis=0)[np.argsort(gz.LABEL_NAMES)]).max() <= 1e-6
    assert (null["null_q95"] <= null["null_max"] + 1e-12).all()


def test_analyze_pca_and_compare(lake):
    pca_id = fit_pca(lake, ENCODER, n_components=4)
    analysis.analyze(lake, pca_id, permutations=3)
    summary = lake.read("feature_summary", model_id=pca_id, split="test").sort("feature")
    assert summary["frequency_rank"].to_list() == [0, 1, 2, 3]  # frequency 1: component order
    assert (summary["frequency"] == 1.0).all()
    _, scores = dense_codes(lake, "test", 4, "pca_scores", "pca_id", pca_id, ("component", "score"))
    ids = lake.arrow("embeddings", columns=["id_str"], encoder=ENCODER, split="test")
    labels = lake_labels(lake, ids.column("id_str").to_pylist(), "test")
    assert np.abs(summary["max_abs_spearman"].to_numpy()
                  - np.abs(seed_spearman(scores, labels)).max(axis=1)).max() <= 1e-6
    analysis.analyze(lake, RUN_ID, permutations=3)
    table = analysis.compare(lake, RUN_ID, split="test")
    assert table.filter(method="pca")["features"].to_list() == [4]
    assert table.filter(method="sae")["group_start"].to_list() == [0]
    assert table.filter(method="sae")["n_features"].to_list() == [12]


def test_permutation_null_is_chance_level_and_planted_signal_beats_it():
    rng = np.random.default_rng(7)
    n = 400
    labels = rng.random((n, 3))
    noise = np.where(rng.random((n, 50)) < 0.2, rng.exponential(size=(n, 50)), 0.0)
    noise[:, 0] = labels[:, 0] + 0.05 * rng.normal(size=n)  # feature 0 encodes label 0
    rho, _, null = spearman(Codes.from_dense("sae", noise), labels, permutations=30)
    observed = np.abs(rho).max(axis=0)
    assert observed[0] > 0.9 and np.quantile(null[:, 0], 0.95) < 0.3
    # labels 1, 2 are unrelated: the observed max is within the null's range
    for j in (1, 2):
        assert null[:, j].min() - 0.05 < observed[j] < null[:, j].max() + 0.05
    # more features, higher null: the footing a 2,048-feature SAE gets over 64 components
    _, _, small = spearman(Codes.from_dense("pca", noise[:, 1:6]), labels, permutations=30)
    assert np.median(small[:, 1]) < np.median(null[:, 1])


def test_reference_variant_uses_dense_relu_codes(lake, monkeypatch):
    ids = lake.arrow("embeddings", columns=["id_str"], encoder=ENCODER, split="test")
    rng = np.random.default_rng(3)
    relu = np.maximum(rng.normal(size=(ids.num_rows, 12)), 0)

    monkeypatch.setattr(analysis, "dense_relu_activations", lambda lake_, model, X: relu)
    analysis.analyze(lake, RUN_ID, permutations=0, reference_variant=True)
    corr = lake.read("feature_label_corr", model_id=RUN_ID, split="test").filter(method="sae_relu")
    labels = lake_labels(lake, ids.column("id_str").to_pylist(), "test")
    expected = seed_spearman(relu, labels)
    got = corr.sort("feature")["spearman"].to_numpy().reshape(12, 46)
    assert np.abs(got - expected).max() <= 1e-6
    summary = lake.read("feature_summary", model_id=RUN_ID, split="test")
    assert set(summary["method"]) == {"sae", "sae_relu"}


# ----------------------------------------------------------------------------- the CLI


def run(root: Path, *args: str):
    return CliRunner().invoke(main, ["--lake", str(root), *args])


def test_cli_pca_and_analyze(tmp_path):
    root = tmp_path / "lake"
    build_lake(root)
    out = run(root, "pca", "--encoder", ENCODER, "--n-components", "3")
    assert out.exit_code == 0, out.output
    pca_id = out.output.strip()
    out = run(root, "analyze", "--model", RUN_ID, "--permutations", "2", "--with-pca")
    assert out.exit_code == 0, out.output
    assert f"{RUN_ID} test: 12 features x 46 labels on 90 galaxies" in out.output
    assert f"{pca_id} test: 3 features" in out.output
    assert Lake(root).exists("feature_summary", model_id=pca_id, split="test")


@pytest.mark.parametrize("args, message", [
    (["analyze", "--model", "sae-nope-123456"], "unknown model id 'sae-nope-123456'"),
    (["analyze", "--model", RUN_ID, "--split", "train", "--catalog", "experts"],
     "no catalog 'experts' in the lake; catalogs: volunteers (votes)"),
    (["analyze", "--model", RUN_ID, "--exclude-question", "colour"],
     "--exclude-question 'colour' is not a question of the catalog's tree"),
    (["pca", "--encoder", "nope"], "embeddings for encoder 'nope' not found"),
    (["pca", "--encoder", ENCODER, "--fit-split", "valid"], "no embeddings for split 'valid'"),
    (["pca", "--encoder", ENCODER, "--n-components", "99"], "--n-components must be between"),
])
def test_cli_bad_input_is_one_line_and_leaves_the_lake_unchanged(tmp_path, args, message):
    root = tmp_path / "lake"
    build_lake(root)
    before = snapshot(root)
    out = run(root, *args)
    assert out.exit_code == 1
    assert message in out.output and "Traceback" not in out.output
    assert out.output.count("\n") == 1
    assert snapshot(root) == before


def test_cli_label_without_votes_is_left_out_with_a_note(tmp_path):
    root = tmp_path / "lake"
    lake = build_lake(root)
    votes = lake.read("votes", catalog="volunteers", split="test")
    import polars as pl
    votes = votes.with_columns(pl.when(pl.col("label") == "bar_weak").then(None)
                               .otherwise(pl.col("fraction")).alias("fraction"))
    with lake.transaction("edit", {}) as tx:
        tx.write("votes", votes.drop("catalog", "split"),
                 partition={"catalog": "volunteers", "split": "test"})
    for extra in ([], ["--skip-empty-labels"]):  # the flag is still accepted
        out = run(root, "analyze", "--model", RUN_ID, "--permutations", "0", *extra)
        assert out.exit_code == 0, out.output
        assert "1 label(s) have no value on split test and were left out: bar_weak" in out.output
        assert "12 features x 45 labels" in out.output
    corr = lake.read("feature_label_corr", model_id=RUN_ID, split="test")
    assert "bar_weak" not in corr["label"].to_list() and corr["label"].n_unique() == 45
    info = lake.partition_info("feature_summary", model_id=RUN_ID, split="test")
    assert info.recorded["empty_labels"] == ["bar_weak"]


@pytest.mark.parametrize("cache_bytes, by_row", [(numpy_engine.SHUFFLE_CACHE_BYTES, False), (0, True)])
def test_feature_blocks_give_the_same_numbers(monkeypatch, cache_bytes, by_row):
    dense, labels = random_problem(4)
    codes = Codes.from_dense("sae", dense)
    reference = spearman(codes, labels, permutations=3, seed=1)
    monkeypatch.setattr(numpy_engine, "SHUFFLE_CACHE_BYTES", cache_bytes)  # 0: rebuilt per block
    if by_row:  # every set multiplied in row order (CSC), as large sets are
        monkeypatch.setattr(numpy_engine, "BY_ROW_ROWS", 0)
    whole = spearman(codes, labels, permutations=3, seed=1)
    assert np.abs(whole[0] - seed_spearman(dense, labels)).max() <= 1e-6
    assert np.abs(whole[0] - reference[0]).max() <= 1e-12
    assert np.abs(whole[2] - reference[2]).max() <= 1e-6  # null: float32 sums, any order
    split = spearman(codes, labels, permutations=3, seed=1, block_entries=7, threads=2)
    assert len(numpy_engine.feature_blocks(codes, 7)) > 3
    for a, b in zip(whole, split):
        assert np.abs(a - b).max() <= 1e-12
    basis = label_basis(labels)
    assert np.abs(novelty(codes, basis) - novelty(codes, basis, block_entries=7)).max() <= 1e-12


def test_reference_variant_with_a_stand_in_checkpoint(tmp_path):
    sae = pytest.importorskip("galsae_lake.sae")
    import torch
    lake = build_lake(tmp_path / "lake")
    torch.manual_seed(0)
    model = sae.MatryoshkaSAE(sae.SAEConfig(input_dim=6, group_sizes=[4, 8], top_k=3))
    with lake.transaction("stand-in", {}) as tx:
        model.save(tx.stage_dir("sae", RUN_ID))
    analysis.analyze(lake, RUN_ID, permutations=0, reference_variant=True)
    test = lake.arrow("embeddings", encoder=ENCODER, split="test")
    from galsae_lake.lake import vectors
    relu = sae.encode_embeddings(model, vectors(test), dense=True)
    labels = lake_labels(lake, test.column("id_str").to_pylist(), "test")
    corr = lake.read("feature_label_corr", model_id=RUN_ID, split="test").filter(method="sae_relu")
    got = corr.sort("feature")["spearman"].to_numpy().reshape(12, 46)
    assert np.abs(got - seed_spearman(relu.astype(np.float64), labels)).max() <= 1e-6


def test_sort_codes_orders_by_feature_then_value():
    rng = np.random.default_rng(9)
    m = 5000
    feature = rng.integers(0, 40, m).astype(np.int32)
    row = rng.integers(0, 300, m).astype(np.int32)
    value = (rng.normal(size=m) * rng.integers(0, 3, m)).astype(np.float32)
    value[value == 0] = np.float32(-1e-30)
    value[:7] = [np.inf, -np.inf, 1e-38, -1e-38, 3.5, -3.5, 3.5]
    f, r, v = numpy_engine.sort_codes(feature, row, value, 300)
    order = np.lexsort((value, feature))
    assert np.array_equal(f, feature[order]) and np.array_equal(v, value[order])
    # rows travel with their entries (ties in value may come in any order)
    assert sorted(zip(f, v, r)) == sorted(zip(feature, value, row))
    # the argsort fallback when the key does not fit in 64 bits
    f2, r2, v2 = numpy_engine.sort_codes(feature, row, value, 2**40)
    assert np.array_equal(f2, f) and np.array_equal(v2, v)


def test_readers_keep_the_split_s_galaxies_and_drop_empty_codes(tmp_path):
    """sql/label_values.sql and sql/analysis_codes.sql: stray ids and unknown labels ignored;
    NULL, NaN and zero codes and out-of-range features dropped; galaxies without votes count
    for frequency only."""
    import duckdb
    lake = build_lake(tmp_path / "lake", n_train=20, n_test=30)
    ids = [f"test-{i:04d}" for i in range(30)]
    rng = np.random.default_rng(5)
    votes = synthetic_votes(rng, ids[:25], "test")  # the last 5 galaxies have no votes
    stray = pa.table({"id_str": ["elsewhere", ids[0]], "question": ["q", "q"], "answer": ["a", "a"],
                      "label": ["smooth-or-featured_smooth", "no-such-label"],
                      "count": pa.array([1, 1], pa.int32()), "total": pa.array([2, 2], pa.int32()),
                      "fraction": [0.5, 0.5]})
    ids_all, dense = dense_codes(lake, "test", 12)
    free = int(np.flatnonzero(dense[8] == 0)[0])  # a feature that galaxy 8 does not have
    assert ids_all == ids and dense[27, 4] == 0
    edge = pa.table({"id_str": ["elsewhere", ids[1], ids[2], ids[3], ids[4], ids[27], ids[8]],
                     "feature": pa.array([0, 1, 2, 12, 3, 4, free], pa.int32()),
                     "activation": pa.array([1.0, 0.0, None, 2.0, float("nan"), 3.0, 0.5],
                                            pa.float32())})
    dense[27, 4], dense[8, free] = 3.0, 0.5  # what the edge rows add; the rest is dropped
    with lake.transaction("edge", {}) as tx:
        tx.write("votes", pa.concat_tables([votes, stray.cast(votes.schema)]),
                 partition={"catalog": "volunteers", "split": "test"})
        tx.write("sae_activations", pa.concat_tables([
            lake.arrow("sae_activations", columns=["id_str", "feature", "activation"],
                       run_id=RUN_ID, split="test"), edge]),
                 partition={"run_id": RUN_ID, "split": "test"})
    model = models.resolve_model(lake, RUN_ID)
    split_ids = analysis.split_ids(lake, ENCODER, "test")
    con = duckdb.connect()
    got = read_labels(lake, split_ids, "test", ["volunteers"], con=con).values
    expected_labels = np.full((30, len(gz.LABEL_NAMES)), np.nan)
    col = {name: j for j, name in enumerate(gz.LABEL_NAMES)}
    for g, label, frac in zip(*(votes.column(c).to_pylist() for c in ("id_str", "label", "fraction"))):
        if frac is not None:
            expected_labels[ids.index(g), col[label]] = frac
    np.testing.assert_array_equal(got, expected_labels)
    assert np.isnan(got[25:]).all()
    voted = ~np.isnan(got).all(axis=1)
    assert voted.sum() == 25
    rows = np.full(len(split_ids), -1, np.int64)
    rows[voted] = np.arange(int(voted.sum()))
    frequency = analysis.load_codes(lake, model, "test", rows, split_ids, con)
    codes = analysis.fetch_codes(con, "sae", 12, frequency, 25)
    np.testing.assert_array_equal(frequency, (dense != 0).mean(axis=0))
    expected = Codes.from_dense("sae", dense[:25])
    for name in ("feature", "row", "value"):
        np.testing.assert_array_equal(getattr(codes, name), getattr(expected, name))
    assert codes.row.max() < 25 and codes.feature.max() < 12 and (codes.value != 0).all()


def test_average_ranks_equal_rankdata():
    rng = np.random.default_rng(3)
    X = np.column_stack([rng.integers(0, 11, 500) / 10.0, rng.normal(size=500),
                         np.full(500, 0.5), rng.integers(0, 2, 500) * 1.0])
    np.testing.assert_array_equal(numpy_engine.average_ranks(X), scipy.stats.rankdata(X, axis=0))


# ----------------------------------------------------------------------------- real-shaped labels


def real_shaped_labels(rng, n: int) -> np.ndarray:
    """[n x 46] float32 vote fractions as catalogues store them: counts over each galaxy's own
    number of volunteers, the answers of a question summing to one (up to float32 rounding),
    NaN where the decision tree did not ask the question."""
    out = np.full((n, len(gz.LABEL_NAMES)), np.nan, np.float32)
    column = {name: j for j, name in enumerate(gz.LABEL_NAMES)}
    volunteers = rng.integers(3, 40, n)
    for question, answers in gz.QUESTIONS.items():
        parent = gz.DEPENDENCIES[question]
        asked = np.ones(n, bool) if parent is None else np.nan_to_num(out[:, column[parent]]) >= 0.3
        rows = np.flatnonzero(asked)
        counts = np.array([rng.multinomial(t, p) for t, p in
                           zip(volunteers[rows], rng.dirichlet(np.ones(len(answers)), len(rows)))])
        cols = [column[f"{question}_{a}"] for a in answers]
        out[np.ix_(rows, cols)] = (counts / counts.sum(axis=1, keepdims=True)).astype(np.float32)
    return out


def test_novelty_matches_sklearn_on_float32_vote_fractions():
    """Answers that sum to one in float32 leave a direction of pure rounding noise; a basis that
    kept it fitted the noise (novelty off by ~0.03). Both engines agree with scikit-learn's
    LinearRegression on the float32 labels, median-imputed as the seed does."""
    rng = np.random.default_rng(11)
    labels32 = real_shaped_labels(rng, 3000)
    labels = labels32.astype(np.float64)
    X = np.nan_to_num(labels, nan=0.0)
    dense = np.column_stack([  # sparse non-linear functions of the labels, one with a constant
        np.where(X[:, 0] > 0.5, np.exp(X[:, 0]) + 0.1 * rng.normal(size=len(X)), 0.0),
        np.maximum(0, np.sin(7 * X[:, 1]) * X[:, 5] + 0.05 * rng.normal(size=len(X))),
        np.where(rng.random(len(X)) < 0.2, (X[:, 14] - X[:, 15]) ** 2, 0.0),
        np.full(len(X), 0.0),
    ]).astype(np.float32)
    imputed = SimpleImputer(strategy="median").fit_transform(labels32)
    assert imputed.dtype == np.float32
    expected = np.array([1 - max(0.0, LinearRegression().fit(imputed, y).score(imputed, y))
                         if np.std(y) >= 1e-10 else 1.0 for y in dense.T])
    codes = Codes.from_dense("sae", dense)
    basis = label_basis(labels)
    got = novelty(codes, basis)
    assert np.abs(got - expected).max() <= 1e-6
    assert np.abs(sql_numbers(codes, labels)[1] - got).max() <= 1e-9
    # the float64 tolerance keeps the noise directions and is measurably off
    noisy = label_basis(labels, rcond=np.finfo(float).eps * max(labels.shape))
    assert noisy.shape[1] > basis.shape[1]
    assert np.abs(novelty(codes, noisy) - expected).max() > 1e-4


def test_label_basis_in_blocks_is_the_same_basis():
    """label_basis block by block (tall-skinny QR): orthonormal, column-major, the same span
    (projections and novelty to 1e-10) whatever the block size, fewer rows than labels too."""
    rng = np.random.default_rng(3)
    labels = real_shaped_labels(rng, 500).astype(np.float64)
    dense = np.where(rng.random((500, 4)) < 0.4, rng.exponential(size=(500, 4)), 0.0)
    codes = Codes.from_dense("sae", dense.astype(np.float32))
    whole = label_basis(labels)
    assert whole.flags.f_contiguous
    np.testing.assert_allclose(whole.T @ whole, np.eye(whole.shape[1]), atol=1e-10)
    for chunk_rows in (7, 64, 499):
        blocks = label_basis(labels, chunk_rows=chunk_rows)
        assert blocks.shape == whole.shape
        np.testing.assert_allclose(blocks @ (blocks.T @ dense), whole @ (whole.T @ dense), atol=1e-10)
        assert np.abs(novelty(codes, blocks) - novelty(codes, whole)).max() <= 1e-10
    few = labels[:5]  # fewer rows than labels: at most 4 directions beside the constant
    assert label_basis(few, chunk_rows=2).shape[1] == label_basis(few).shape[1] <= 4


def test_read_labels_in_batches_equals_one_batch(lake, monkeypatch):
    """read_labels streams the long rows from DuckDB: any batch size, the same matrix."""
    split_ids = analysis.split_ids(lake, ENCODER, "test")
    whole = read_labels(lake, split_ids, "test", ["volunteers"]).values
    monkeypatch.setattr(label_side, "LABEL_BATCH_ROWS", 5)
    batched = read_labels(lake, split_ids, "test", ["volunteers"]).values
    assert batched.flags.f_contiguous
    np.testing.assert_array_equal(batched, whole)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_engines_agree_on_real_shaped_labels(seed):
    """duckdb and numpy engines: the same rho and novelty (1e-9), and rho equal to scipy's."""
    rng = np.random.default_rng(seed)
    labels = real_shaped_labels(rng, 400).astype(np.float64)
    dense = np.where(rng.random((400, 6)) < 0.3, rng.exponential(size=(400, 6)), 0.0)
    dense[:, 5] = np.round(dense[:, 5], 1)  # ties among the non-zero codes
    dense[:, 4] = rng.normal(size=400)      # dense, negatives
    codes = Codes.from_dense("sae", dense.astype(np.float32))
    rho, novelty_sql = sql_numbers(codes, labels)
    rho_np = spearman(codes, labels)[0]
    assert np.abs(rho - rho_np).max() <= 1e-9
    assert np.abs(novelty_sql - novelty(codes, label_basis(labels))).max() <= 1e-9
    assert np.abs(rho - seed_spearman(dense.astype(np.float32).astype(np.float64), labels)).max() <= 1e-9


def test_sql_ranks_stay_exact_when_the_sort_spills(tmp_path):
    """The SQL ranks by each code's place in a table made with ORDER BY (its rowid): that order
    holds when the table outgrows the memory limit and spills, with preserve_insertion_order
    off as in `analyze`."""
    import duckdb
    rng = np.random.default_rng(7)
    dense = np.where(rng.random((40_000, 64)) < 0.5, rng.normal(size=(40_000, 64)), 0.0)
    labels = rng.random((40_000, 12))
    labels[rng.random(40_000) < 0.4, 3:8] = np.nan
    labels[rng.random(40_000) < 0.5, 8:] = np.nan
    codes = Codes.from_dense("sae", dense.astype(np.float32))
    con = duckdb.connect()
    for setting in ("threads = 2", "memory_limit = '30MB'", f"temp_directory = '{tmp_path}'",
                    "preserve_insertion_order = false"):
        con.execute(f"SET {setting}")
    analysis.use_codes(con, codes)
    # the (set, code) rows (~2.6M, ~20 bytes each) cannot fit in 30MB
    assert len(codes.value) * 2 * 20 > 30e6
    rho, _ = duckdb_engine.spearman(con, labels, 64)
    assert np.abs(rho - spearman(codes, labels)[0]).max() <= 1e-9


@pytest.mark.parametrize("batch_rows", [1, 700])
def test_sql_in_batches_of_row_sets_is_the_same(monkeypatch, batch_rows):
    """The batch statements run once per batch of row sets: one set a batch, or two, or all
    in one, the same numbers; every batch's labels come back once."""
    rng = np.random.default_rng(4)
    labels = real_shaped_labels(rng, 300).astype(np.float64)
    dense = np.where(rng.random((300, 5)) < 0.4, np.round(rng.exponential(size=(300, 5)), 1), 0.0)
    codes = Codes.from_dense("sae", dense.astype(np.float32))
    whole, _ = sql_numbers(codes, labels)
    seen = []
    real = duckdb_engine.set_batches
    monkeypatch.setattr(duckdb_engine, "SET_BATCH_ROWS", batch_rows)
    monkeypatch.setattr(duckdb_engine, "set_batches",
                        lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    batched, _ = sql_numbers(codes, labels)
    assert np.array_equal(batched, whole) and np.abs(whole).max() > 0.05
    batches = seen[0]
    assert len(batches) > 1 and batches[0]["first_set"] == 0
    assert all(b["first_set"] <= b["last_set"] for b in batches)
    assert [b["first_set"] for b in batches[1:]] == [b["last_set"] + 1 for b in batches[:-1]]


def test_analyze_engines_write_the_same_tables(tmp_path):
    lake = build_lake(tmp_path / "lake")
    tables = {}
    for engine in analysis.ENGINES:
        result = analysis.analyze(lake, RUN_ID, permutations=3, engine=engine, memory_limit="500MB",
                                  temp_directory=str(tmp_path))
        assert result["engine"] == engine and result["duckdb"]["memory_limit"] == "500MB"
        assert result["duckdb"]["temp_directory"].startswith(str(tmp_path))
        tables[engine] = {name: lake.read(name, model_id=RUN_ID, split="test")
                          for name in ("feature_label_corr", "feature_summary", "label_null")}
    a, b = tables["duckdb"], tables["numpy"]
    assert np.abs(a["feature_label_corr"]["spearman"].to_numpy()
                  - b["feature_label_corr"]["spearman"].to_numpy()).max() <= 1e-9
    for column in ("novelty", "max_abs_spearman", "frequency"):
        assert np.abs(a["feature_summary"][column].to_numpy()
                      - b["feature_summary"][column].to_numpy()).max() <= 1e-9
    assert a["feature_summary"]["novelty_rank"].to_list() == b["feature_summary"]["novelty_rank"].to_list()
    assert np.abs(a["label_null"]["null_q95"].to_numpy() - b["label_null"]["null_q95"].to_numpy()).max() <= 1e-6


def test_every_sql_file_runs_and_is_in_the_readme():
    """sql/ holds what runs: each file is named in sql/README.md and run by the package's code."""
    import re
    from galsae_lake.lake import sql_dir
    readme = (sql_dir() / "README.md").read_text()
    package = Path(analysis.__file__).parent
    code = "\n".join(path.read_text() for path in package.rglob("*.py"))
    run = set(re.findall(r'(?:query|statements|run_script)\((?:con, )?"(\w+)"', code))
    files = {path.stem for path in sql_dir().glob("*.sql")}
    assert files and files <= run, files - run
    assert all(f"`{name}.sql`" in readme for name in files)
