"""The bad-input matrix: every mistake ends in one clear line, exit != 0, and the lake is
byte-for-byte unchanged (a hash of every file under the lake before and after)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from galsae_lake.lake import Lake
from galsae_lake.testing import assert_refused, cli

DIM = 16
SMOOTH = "smooth-or-featured-euclid_smooth_fraction"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small lake with every stage: synth, embeddings, an SAE, a PCA, analyses."""
    root = tmp_path_factory.mktemp("bad") / "lake"
    files = root.parent / "files"
    files.mkdir()
    assert cli("synth", "--n", "300", "--seed", "3", lake=root).exit_code == 0
    lake = Lake(root)
    rng = np.random.default_rng(0)
    frames = []
    for split in ("train", "test"):
        ids = lake.read("galaxies", split=split)["id_str"].to_list()
        frames.append(pl.DataFrame({"id_str": ids, "split": split,
                                    "embedding": rng.standard_normal((len(ids), DIM)).tolist()}))
    good = files / "toy.parquet"
    pl.concat(frames).write_parquet(good)
    assert cli("ingest", "embeddings", good, "--encoder", "toy", lake=root).exit_code == 0
    result = cli("train-sae", "--encoder", "toy", "--config", "demo", "--set", "input_dim=16",
                 "--set", "group_sizes=[16,16]", "--set", "top_k=4", "--set", "epochs=2",
                 "--quiet", lake=root)
    assert result.exit_code == 0, result.output
    run_id = result.output.strip().splitlines()[-1].split()[-1]
    result = cli("pca", "--encoder", "toy", "--n-components", "8", lake=root)
    assert result.exit_code == 0, result.output
    assert cli("analyze", "--model", run_id, "--skip-empty-labels", "--permutations", "2",
               lake=root).exit_code == 0
    return root, files, run_id


def write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def embeddings_file(files, name, matrix, ids=None, split="train"):
    ids = ids if ids is not None else [f"x{i}" for i in range(len(matrix))]
    frame = pl.DataFrame({"id_str": ids, "split": split, "embedding": np.asarray(matrix).tolist()})
    path = files / name
    frame.write_parquet(path)
    return path


def case_nan_embeddings(root, files, run_id):
    matrix = np.ones((4, DIM))
    matrix[2, 3] = np.nan
    return ["ingest", "embeddings", embeddings_file(files, "nan.parquet", matrix),
            "--encoder", "other"], ["1 vectors contain NaN or inf", "first: id x2"]


def case_inf_embeddings(root, files, run_id):
    matrix = np.ones((4, DIM))
    matrix[1, 0] = np.inf
    return ["ingest", "embeddings", embeddings_file(files, "inf.parquet", matrix),
            "--encoder", "other"], ["1 vectors contain NaN or inf", "first: id x1"]


def case_wrong_dimension(root, files, run_id):
    return ["ingest", "embeddings", embeddings_file(files, "dim.parquet", np.ones((3, DIM + 1))),
            "--encoder", "toy"], ["already has 16-d"]


def case_duplicate_ids(root, files, run_id):
    return ["ingest", "embeddings", embeddings_file(files, "dup.parquet", np.ones((3, DIM)),
                                                    ids=["a", "b", "a"]),
            "--encoder", "other"], ["1 duplicate ids (first: 'a' appears 2 times)"]


def scratch_file(files, name, text):
    """A file with ``text`` in the scratch folder."""
    path = files / name
    path.write_text(text)
    return path


def case_missing_id_column(root, files, run_id):
    path = scratch_file(files, "noid.csv", f"name,{SMOOTH}\nx,0.5\n")
    return ["ingest", "votes", path, "--split", "train"], ["has no id column 'id_str'"]


def case_empty_split(root, files, run_id):
    path = scratch_file(files, "empty.csv", f"id_str,split,{SMOOTH}\n")
    return ["ingest", "votes", path], ["empty.csv has no rows"]


def case_unknown_split(root, files, run_id):
    path = scratch_file(files, "split.csv", f"id_str,split,{SMOOTH}\nx,validation,0.5\n")
    return ["ingest", "votes", path], ["unknown split 'validation' in column 'split'"]


def case_wrong_dtype(root, files, run_id):
    path = scratch_file(files, "dtype.csv", f"id_str,{SMOOTH}\nx,lots\ny,0.5\n")
    return ["ingest", "votes", path, "--split", "train"], [f"column '{SMOOTH}' is String, "
                                                           "expected numbers"]


def case_labels_match_nothing(root, files, run_id):
    path = scratch_file(files, "nolabels.csv", "id_str,colour,size\nx,red,3\n")
    return ["ingest", "votes", path, "--split", "train"], ["no Galaxy Zoo label columns"]


def case_fraction_out_of_range(root, files, run_id):
    path = scratch_file(files, "range.csv", f"id_str,{SMOOTH}\nx,1.5\n")
    return ["ingest", "votes", path, "--split", "train"], [
        "1 fraction(s) outside [0, 1], e.g. smooth-or-featured_smooth = 1.5 for x"]


def case_catalog_with_no_value_on_the_split(root, files, run_id):
    # a catalog whose only label has values on train alone: nothing left to analyze on test
    ids = Lake(root).read("galaxies", split="test")["id_str"].to_list()
    path = files / "partial.csv"
    pl.DataFrame({"id_str": ids, "mass": [None] * len(ids)}, schema={"id_str": pl.String,
                                                                     "mass": pl.Float64}
                 ).with_columns(pl.lit("train").alias("split")).write_csv(path)
    assert cli("ingest", "labels", path, "--catalog", "partial", lake=root).exit_code == 1
    pl.DataFrame({"id_str": ids[:3], "mass": [1.0, 2.0, 3.0], "split": "train"}).write_csv(path)
    assert cli("ingest", "labels", path, "--catalog", "partial", lake=root).exit_code == 0
    return ["analyze", "--model", run_id, "--catalog", "partial", "--permutations", "0"], [
        "catalog 'partial' has no labels for split 'test'"]


def case_unknown_encoder(root, files, run_id):
    return ["embed", "--encoder", "no-such-encoder"], ["unknown encoder 'no-such-encoder'"]


def case_corrupt_images(root, files, run_id):
    # a lake whose every image is corrupt: nothing can be embedded, nothing is zero-filled
    return ["--lake", str(files / "corrupt-lake"), "embed", "--encoder", "zoobot-synth"], [
        "could be decoded"]


def case_unknown_model(root, files, run_id):
    return ["analyze", "--model", "sae-nope-000000"], ["unknown model id 'sae-nope-000000'"]


def case_figures_unknown_model(root, files, run_id):
    return ["figures", "--model", "pca-nope-000000"], [
        "no analysis of model 'pca-nope-000000' on split 'test'"]


def case_invalid_toml(root, files, run_id):
    path = scratch_file(files, "bad.toml", "[training\nepochs = 3\n")
    return ["train-sae", "--encoder", "toy", "--config", path], ["is not valid TOML"]


def case_unknown_config_key(root, files, run_id):
    return ["train-sae", "--encoder", "toy", "--set", "learning_rat=0.1"], ["learning_rat"]


def case_k_too_large(root, files, run_id):
    return ["train-sae", "--encoder", "toy", "--set", "group_sizes=[8,8]",
            "--set", "top_k=32"], ["top_k=32 is larger than the dictionary (16 latents)"]


def case_missing_embeddings(root, files, run_id):
    return ["train-sae", "--encoder", "nobody"], ["embeddings for encoder 'nobody' not found"]


def case_sql_syntax(root, files, run_id):
    return ["sql", "SELEKT 1"], ['syntax error at or near "SELEKT"']


def case_sql_write(root, files, run_id):
    return ["sql", f"COPY galaxies TO '{root}/galaxies/split=train/data.parquet'"], ["refused a COPY statement"]


def case_sql_delete(root, files, run_id):
    return ["sql", "DROP VIEW galaxies"], ["refused a DROP statement"]


def case_synth_zero(root, files, run_id):
    return ["synth", "--n", "0"], ["--n must be at least 1, got 0"]


CASES = [value for name, value in sorted(globals().items()) if name.startswith("case_")]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_bad_input_leaves_the_lake_unchanged(built, case):
    root, files, run_id = built
    if case is case_corrupt_images:
        corrupt = Lake(files / "corrupt-lake")
        if not corrupt.exists("images"):
            with corrupt.transaction("test") as tx:
                tx.write("images", pa.table({"id_str": ["a", "b"],
                                             "image": [b"not a png", b"\x89PNG\r\n\x1a\n broken"]}),
                         partition={"split": "train"})
    args, words = case(root, files, run_id)
    if args[0] == "--lake":  # the case names its own lake
        assert_refused(args[1], args, *words, lake=False)
    else:
        assert_refused(root, args, *words)


def test_newer_schema_version_is_refused_by_every_writer(built, tmp_path):
    import shutil

    root, files, run_id = built
    copy = tmp_path / "lake"
    shutil.copytree(root, copy)
    sidecar = copy / "embeddings" / "_table.json"
    info = json.loads(sidecar.read_text())
    info["schema_version"] = 2
    sidecar.write_text(json.dumps(info))
    for args in (["train-sae", "--encoder", "toy"], ["pca", "--encoder", "toy"],
                 ["sql", "SELECT 1"], ["tables"]):
        assert_refused(copy, args, "schema version 2")
