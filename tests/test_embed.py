"""embed, train-encoder, ingest embeddings / hf-embeddings: small images, tiny models, real numbers."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from galsae_lake.testing import assert_one_line_error, assert_refused, cli, lake_unchanged
from PIL import Image

from galsae_lake import encoders, standins
from galsae_lake.encoders import extraction as extract_module
from galsae_lake.encoders import ENCODERS, extract, load_encoder, save_hub_folder
from galsae_lake.errors import InputError
from galsae_lake.lake import Lake, vectors


def png(seed: int, size: int = 32) -> bytes:
    """A small galaxy-ish image: a Gaussian blob of random shape on noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - size / 2
    q, theta = rng.uniform(0.3, 1), rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = (-xx * np.sin(theta) + yy * np.cos(theta)) / q
    light = np.exp(-(u ** 2 + v ** 2) / (2 * rng.uniform(2, 6) ** 2))
    img = np.clip(light[..., None] * [200, 180, 150] + rng.normal(10, 4, (size, size, 3)), 0, 255)
    out = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


def make_lake(root, n_train=10, n_test=6, corrupt=("g3",)) -> Lake:
    lake = Lake(root)
    with lake.transaction("test-images") as tx:
        for split, ids in (("train", range(n_train)), ("test", range(100, 100 + n_test))):
            names = [f"g{i}" for i in ids]
            blobs = [b"\x89PNG broken" if name in corrupt else png(i) for i, name in zip(ids, names)]
            tx.write("images", pa.table({"id_str": names, "image": pa.array(blobs, pa.binary())}),
                     partition={"split": split})
            tx.write("galaxies", pa.table({"id_str": names, "source": ["test"] * len(names),
                                           "ra": [None] * len(names), "dec": [None] * len(names)},
                                          schema=pa.schema([("id_str", pa.string()),
                                                            ("source", pa.string()),
                                                            ("ra", pa.float64()),
                                                            ("dec", pa.float64())])),
                     partition={"split": split})
    return lake


@pytest.fixture
def lake(tmp_path) -> Lake:
    return make_lake(tmp_path / "lake")


FP32 = ("--weights", "random", "--precision", "fp32", "--batch-size", "4", "--workers", "1")


def test_embed_stores_vectors_skips_corrupt_and_matches_the_seed_preprocessing(lake):
    result = cli("embed", "--encoder", "zoobot-synth", *FP32, lake=lake.root)
    assert result.exit_code == 0, result.output
    assert "embeddings encoder=zoobot-synth" in result.output
    assert "corrupt image g3" in result.output
    train = lake.read("embeddings", encoder="zoobot-synth", split="train")
    test = lake.read("embeddings", encoder="zoobot-synth", split="test")
    assert train.height == 9 and test.height == 6  # g3 skipped, never zero-filled
    assert "g3" not in train["id_str"].to_list()
    x = vectors(train)
    assert x.shape == (9, 320) and np.isfinite(x).all()
    meta = lake.partition_info("embeddings", encoder="zoobot-synth", split="train")
    assert meta.skipped_corrupt == 1 and meta.corrupt_ids == ["g3"]
    assert meta.recorded["weights"] == "random" and meta.recorded["embedding_dim"] == 320
    # the seed's path: PIL Resize + ToTensor, model head output (via a hook)
    from torchvision import transforms

    model, info = load_encoder("zoobot-synth", "random")
    hooked = {}
    model.head.register_forward_hook(lambda m, i, o: hooked.__setitem__("head", o))
    tf = transforms.Compose([transforms.Resize((64, 64)), transforms.ToTensor()])
    ids = train["id_str"].to_list()
    batch = torch.stack([tf(Image.open(io.BytesIO(png(int(i[1:]))))) for i in ids])
    with torch.no_grad():
        model(batch)
    reference = hooked["head"].numpy()
    cosine = (x * reference).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.999


def test_embed_resumes_by_partition_and_force_redoes(lake):
    assert cli("embed", "--encoder", "zoobot-synth", *FP32, "--splits", "test",
               lake=lake.root).exit_code == 0
    with lake_unchanged(lake.root):
        again = cli("embed", "--encoder", "zoobot-synth", *FP32, "--splits", "test", lake=lake.root)
        assert again.exit_code == 0 and "already done" in again.output
    forced = cli("embed", "--encoder", "zoobot-synth", *FP32, "--splits", "test", "--force",
                 lake=lake.root)
    assert forced.exit_code == 0 and "already done" not in forced.output
    # other weights for the same encoder name are not "done"
    model, _ = load_encoder("zoobot-synth", "random")
    torch.nn.init.normal_(model.head.norm.weight)
    folder = lake.root.parent / "w"
    save_hub_folder(model, folder, "convnext_atto", {}, 64)
    other = cli("embed", "--encoder", "zoobot-synth", "--weights", str(folder), "--splits", "test",
                "--precision", "fp32", lake=lake.root)
    assert other.exit_code == 0 and "already done" not in other.output


def test_shards_merge_into_the_same_embeddings(lake):
    assert cli("embed", "--encoder", "zoobot-synth", *FP32, lake=lake.root).exit_code == 0
    first = cli("embed", "--encoder", "zoobot-synth", *FP32, "--shard", "0/2", "--as", "sharded",
                lake=lake.root)
    assert "1 of 2 shards done" in first.output
    assert not lake.exists("embeddings", encoder="sharded")
    second = cli("embed", "--encoder", "zoobot-synth", *FP32, "--shard", "1/2", "--as", "sharded",
                 lake=lake.root)
    assert second.exit_code == 0 and "merged 2 shards" in second.output
    whole = lake.read("embeddings", encoder="zoobot-synth").sort("id_str")
    merged = lake.read("embeddings", encoder="sharded").sort("id_str")
    assert whole["id_str"].to_list() == merged["id_str"].to_list()
    np.testing.assert_allclose(vectors(merged), vectors(whole), rtol=1e-5, atol=1e-5)
    # the shards are dropped in the merge's transaction; their corrupt-image counts carry over
    assert not lake.exists("embedding_shards") and "embedding_shards" not in lake.tables()
    meta = lake.partition_info("embeddings", encoder="sharded", split="train")
    assert (meta.merged_shards, meta.skipped_corrupt, meta.corrupt_ids) == (2, 1, ["g3"])
    assert lake.partition_info("embeddings", encoder="sharded", split="test").rows == 6
    # a shard run again after the merge finds it done, and a plain run too
    with lake_unchanged(lake.root):
        again = cli("embed", "--encoder", "zoobot-synth", *FP32, "--shard", "0/2", "--as",
                    "sharded", lake=lake.root)
        assert again.exit_code == 0 and "already merged" in again.output
        plain = cli("embed", "--encoder", "zoobot-synth", *FP32, "--as", "sharded", lake=lake.root)
        assert plain.exit_code == 0 and plain.output.count("already done") == 2


def test_hub_layout_folders_written_here_load_through_local_dir(tmp_path):
    """save_hub_folder's config.json + model.safetensors load back through timm's local-dir
    source (the folders timm itself writes, for both Euclid encoders: tests/test_euclid_shapes.py)."""
    name, arch, dim = "zoobot-euclid", "convnext_nano", 640
    model = encoders.build_model(ENCODERS[name])
    folder = tmp_path / name
    save_hub_folder(model, folder, arch, {}, 224)
    loaded, info = load_encoder(name, str(folder))
    assert (info.arch, info.embedding_dim, info.input_size, info.weights) == (arch, dim, 224, "path")
    assert info.weights_id.startswith("dir:")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_extract_upsamples_small_images_on_the_device_like_resizing_first():
    blobs = [png(i, 32) for i in range(5)]
    big = []
    for blob in blobs:  # the same images already at the model's input size
        out = io.BytesIO()
        Image.open(io.BytesIO(blob)).resize((64, 64), Image.BILINEAR).save(out, "PNG")
        big.append(out.getvalue())
    model, info = load_encoder("mae-synth", "random")
    a = extract(model, info, blobs, 2, "cpu", 0, "fp32", progress=False).embeddings
    b = extract(model, info, big, 2, "cpu", 0, "fp32", progress=False).embeddings
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert a.shape == (5, 192) and cosine.min() > 0.995


def test_bad_embed_input_is_one_line_and_leaves_the_lake_unchanged(lake, tmp_path, monkeypatch):
    assert cli("embed", "--encoder", "zoobot-synth", *FP32, "--splits", "test",
               lake=lake.root).exit_code == 0
    mae = tmp_path / "mae.safetensors"
    from safetensors.torch import save_file

    save_file(encoders.build_model(ENCODERS["mae-synth"]).state_dict(), str(mae))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    # read at import time: patch the constant too, so the hub attempt fails at once
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cases = [
        (("embed", "--encoder", "nonsense-net"), "unknown encoder"),
        (("embed", "--encoder", "zoobot-synth", "--weights", str(mae)), "do not fit"),
        (("embed", "--encoder", "zoobot-synth", "--weights", str(tmp_path / "nope")), "no such"),
        (("embed", "--encoder", "mae-synth", "--weights", "random", "--as", "zoobot-synth"),
         "already has 320-d"),
        (("embed", "--encoder", "zoobot-euclid"), "hub"),
        (("embed", "--encoder", "zoobot-synth", "--weights", "random", "--shard", "2/2"), "shard"),
        (("embed", "--encoder", "zoobot-synth", "--weights", "random", "--splits", "dev"), "no split dev"),
    ]
    for args, fragment in cases:
        assert_refused(lake.root, args, fragment)
    empty = tmp_path / "empty"
    assert_one_line_error(cli("embed", "--encoder", "zoobot-synth", lake=empty), "images")
    assert not empty.exists()


def test_ingest_parquet_npy_and_hf_store_values_bit_for_bit(lake, tmp_path):
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(8, 5)).astype(np.float32)
    ids = [f"g{i}" for i in range(4)] + ["g100", "g101", "x1", "x2"]  # x*: not in the catalogue
    splits = ["train"] * 4 + ["test"] * 4
    path = tmp_path / "emb.parquet"
    pq.write_table(pa.table({"id_str": ids, "split": splits,
                             "vec": pa.array(matrix.tolist(), pa.list_(pa.float32()))}), path)
    result = cli("ingest", "embeddings", str(path), "--encoder", "ext", "--column", "vec",
                 lake=lake.root)
    assert result.exit_code == 0, result.output
    assert "2 of 8 ids are not in the galaxies catalogue" in result.output
    stored = lake.read("embeddings", encoder="ext").sort("id_str")
    order = np.argsort(ids)
    assert vectors(stored).view(np.uint32).tolist() == matrix[order].view(np.uint32).tolist()
    assert sorted(stored["split"].unique().to_list()) == ["test", "train"]
    # .npy + ids, the seed's naming; split from --split
    np.save(tmp_path / "euclid_train_embeddings.npy", matrix[:3])
    np.save(tmp_path / "euclid_train_ids.npy", np.array(ids[:3]))
    result = cli("ingest", "embeddings", str(tmp_path / "euclid_train_embeddings.npy"),
                 "--encoder", "npy", "--split", "train", lake=lake.root)
    assert result.exit_code == 0, result.output
    got = lake.read("embeddings", encoder="npy").sort("id_str")
    assert vectors(got).view(np.uint32).tolist() == matrix[:3].view(np.uint32).tolist()
    # Parquet with a fixed-size list and no split column: splits come from the catalogue
    fixed = tmp_path / "fixed.parquet"
    pq.write_table(pa.table({"id_str": ["g1", "g102"], "embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(matrix[:2].reshape(-1)), 5)}), fixed)
    assert cli("ingest", "embeddings", str(fixed), "--encoder", "fx", lake=lake.root).exit_code == 0
    assert lake.read("embeddings", encoder="fx", split="test")["id_str"].to_list() == ["g102"]
    # a Hugging Face dataset in the euclid_q1_embeddings shape, saved to disk
    import datasets

    def split_ds(rows):
        return datasets.Dataset.from_dict({
            "id_str": [ids[i] for i in rows],
            "pooled_features_block_0": [matrix[i][::-1].tolist() for i in rows],
            "pooled_features_block_11": [matrix[i].tolist() for i in rows]},
            features=datasets.Features({
                "id_str": datasets.Value("string"),
                "pooled_features_block_0": datasets.Sequence(datasets.Value("float32"), length=5),
                "pooled_features_block_11": datasets.Sequence(datasets.Value("float32"), length=5)}))

    hf = tmp_path / "euclid_q1_embeddings"
    datasets.DatasetDict({"train": split_ds(range(4)), "test": split_ds(range(4, 8))}).save_to_disk(hf)
    result = cli("ingest", "hf-embeddings", "--dataset", str(hf), "--column",
                 "pooled_features_block_11", "--encoder", "mae-euclid", "--limit", "3",
                 lake=lake.root)
    assert result.exit_code == 0, result.output
    got = lake.read("embeddings", encoder="mae-euclid", split="train").sort("id_str")
    assert got["id_str"].to_list() == ["g0", "g1", "g2"]
    assert vectors(got).view(np.uint32).tolist() == matrix[:3].view(np.uint32).tolist()
    # the inner join (the seed's): x1, not in the catalogue, is left out and counted
    assert lake.read("embeddings", encoder="mae-euclid", split="test")["id_str"].sort().to_list() \
        == ["g100", "g101"]
    assert "5 of 6 ids matched galaxies, 1 did not" in result.output
    assert lake.partition_info("embeddings", encoder="mae-euclid",
                               split="test").id_match["unmatched"] == 1


def test_bad_ingest_input_is_one_line_and_leaves_the_lake_unchanged(lake, tmp_path):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"id_str": ["g0", "g1"], "split": ["train", "train"],
                             "embedding": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]}), good)
    assert cli("ingest", "embeddings", str(good), "--encoder", "ext", lake=lake.root).exit_code == 0

    def table(path, ids, rows, split="test"):
        pq.write_table(pa.table({"id_str": ids, "split": [split] * len(ids), "embedding": rows}), path)
        return str(path)

    cases = [
        (table(tmp_path / "nan.parquet", ["a", "b"], [[1.0, float("nan"), 0.0], [1.0, 2.0, 3.0]]),
         "NaN or inf"),
        (table(tmp_path / "inf.parquet", ["a", "b"], [[1.0, 2.0, 3.0], [float("inf"), 2.0, 3.0]]),
         "NaN or inf"),
        (table(tmp_path / "dup.parquet", ["a", "a"], [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]), "duplicate"),
        (table(tmp_path / "dim.parquet", ["a", "b"], [[1.0, 2.0], [3.0, 4.0]]), "already has 3-d"),
        (table(tmp_path / "ragged.parquet", ["a", "b"], [[1.0, 2.0, 3.0], [3.0, 4.0]]),
         "different lengths"),
    ]
    for path, fragment in cases:
        assert_refused(lake.root, ["ingest", "embeddings", path, "--encoder", "ext"], fragment)
    assert_refused(lake.root, ["ingest", "embeddings", good, "--encoder", "ext", "--column", "v"],
                   "no column 'v'")
    assert_refused(lake.root, ["ingest", "hf-embeddings", "--dataset", tmp_path / "none",
                               "--column", "c", "--encoder", "e"], "could not load dataset")


def test_dirichlet_multinomial_loss_matches_scipy():
    from scipy.stats import dirichlet_multinomial

    rng = np.random.default_rng(1)
    alpha = rng.uniform(1, 20, (3, 46))
    counts = rng.integers(0, 6, (3, 46)).astype(float)
    counts[1, standins.QUESTION_SLICES[1][1]] = 0  # a question nobody was asked adds nothing
    expected = 0.0
    for g in range(3):
        for _, cols in standins.QUESTION_SLICES:
            k = counts[g, cols]
            if k.sum() > 0:
                expected -= dirichlet_multinomial.logpmf(k, alpha[g, cols], int(k.sum()))
    got = standins.dirichlet_multinomial_loss(torch.tensor(alpha), torch.tensor(counts)).item()
    assert got == pytest.approx(expected / 3, rel=1e-9)


def test_train_encoder_stores_weights_that_embed_uses(lake, tmp_path):
    from galsae_lake.standins import train_encoder

    with lake.transaction("test-votes") as tx:  # two questions' worth of votes for train galaxies
        rows = [(f"g{i}", "smooth-or-featured", a, 3 if a == "smooth" else 1)
                for i in range(10) for a in ("smooth", "featured-or-disk", "problem")]
        tx.write("votes", pa.table({
            "id_str": [r[0] for r in rows], "question": [r[1] for r in rows],
            "answer": [r[2] for r in rows], "label": [f"{r[1]}_{r[2]}" for r in rows],
            "count": pa.array([r[3] for r in rows], pa.int32()),
            "total": pa.array([5] * len(rows), pa.int32()),
            "fraction": [r[3] / 5 for r in rows]}), partition={"catalog": "volunteers", "split": "train"})
    for name, dim in (("zoobot-synth", 320), ("mae-synth", 192)):
        summary = train_encoder(lake, name, epochs=1, batch_size=4, precision="fp32",
                                log=lambda s: None)
        assert len(summary["losses"]) == 1 and np.isfinite(summary["losses"][0])
        folder = lake.model_dir("encoders", name)
        config = json.loads((folder / "config.json").read_text())
        assert config["galsae_lake"]["encoder"] == name
        _, info = load_encoder(name, None, lake)
        assert info.weights == "lake" and info.embedding_dim == dim
    result = cli("embed", "--encoder", "mae-synth", "--splits", "test", "--precision", "fp32",
                 lake=lake.root)
    assert result.exit_code == 0, result.output
    meta = lake.partition_info("embeddings", encoder="mae-synth", split="test")
    assert meta.recorded["weights"] == "lake"
    with pytest.raises(InputError, match="zoobot-synth or mae-synth"):
        train_encoder(lake, "zoobot-euclid")


def test_shipped_standin_weights_are_small_and_load():
    for name, dim in (("zoobot-synth", 320), ("mae-synth", 192)):
        folder = encoders.SHIPPED_WEIGHTS / name
        assert (folder / "model.safetensors").stat().st_size <= 10 * 2 ** 20
        _, info = load_encoder(name, "shipped")
        assert info.weights == "shipped" and info.embedding_dim == dim and info.input_size == 64


def test_embed_streams_in_chunks_with_the_same_result_and_every_corrupt_image_counted(tmp_path):
    # 20 images read 7 at a time (3 chunks), corrupt ones in the first, second and third chunk
    corrupt = ("g2", "g9", "g13", "g19")
    lake = make_lake(tmp_path / "lake", n_train=20, n_test=3, corrupt=corrupt)
    run = dict(weights="random", splits=["train"], batch_size=4, precision="fp32", progress=False,
               log=lambda *a: None)
    whole = encoders.embed(lake, "zoobot-synth", tag="whole", workers=0, **run)
    chunked = encoders.embed(lake, "zoobot-synth", tag="chunked", workers=2, chunk_rows=7, **run)
    assert whole["splits"]["train"]["rows"] == chunked["splits"]["train"]["rows"] == 16
    a = lake.arrow("embeddings", encoder="whole", split="train")
    b = lake.arrow("embeddings", encoder="chunked", split="train")
    expected = [f"g{i}" for i in range(20) if f"g{i}" not in corrupt]
    assert a.column("id_str").to_pylist() == b.column("id_str").to_pylist() == expected
    assert np.array_equal(vectors(a).view(np.uint32), vectors(b).view(np.uint32))  # bit for bit
    for tag in ("whole", "chunked"):
        meta = lake.partition_info("embeddings", encoder=tag, split="train")
        assert meta.skipped_corrupt == 4 and meta.corrupt_ids == list(corrupt)
    # a chunk smaller than the batch and pieces smaller than the batch: still the same vectors
    extract_module.PIECE_ROWS, old = 3, extract_module.PIECE_ROWS
    try:
        small = encoders.embed(lake, "zoobot-synth", tag="small", workers=0, chunk_rows=2, **run)
    finally:
        extract_module.PIECE_ROWS = old
    assert small["splits"]["train"]["rows"] == 16
    c = lake.arrow("embeddings", encoder="small", split="train")
    assert c.column("id_str").to_pylist() == expected
    assert np.array_equal(vectors(a).view(np.uint32), vectors(c).view(np.uint32))


def test_embed_with_every_image_corrupt_across_chunks_leaves_the_lake_unchanged(tmp_path):
    lake = make_lake(tmp_path / "lake", n_train=9, n_test=2, corrupt=tuple(f"g{i}" for i in range(9)))
    with lake_unchanged(lake.root), \
            pytest.raises(InputError, match="no image could be decoded \\(9 corrupt\\)"):
        encoders.embed(lake, "zoobot-synth", weights="random", splits=["train"], chunk_rows=4,
                       batch_size=2, workers=0, progress=False, log=lambda *a: None)


def test_bf16_only_where_the_cpu_has_it_in_hardware(tmp_path):
    """AVX-512 alone emulates bf16 (2-3.6x slower than fp32 here): auto picks fp32 there."""
    base = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"
    emulated, native, amx = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    emulated.write_text(base)
    native.write_text(base.replace("avx512_vnni", "avx512_vnni avx512_bf16"))
    amx.write_text(base.replace("avx512_vnni", "amx_bf16 amx_tile"))
    assert not encoders.cpu_has_native_bf16(emulated)
    assert encoders.cpu_has_native_bf16(native) and encoders.cpu_has_native_bf16(amx)
    assert not encoders.cpu_has_native_bf16(tmp_path / "missing")
    assert encoders.resolve_precision("fp32", "cpu") == "fp32"
    assert encoders.resolve_precision("auto", "cpu") == (
        "bf16" if encoders.cpu_has_native_bf16() else "fp32")
