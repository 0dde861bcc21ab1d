"""The bad-input matrix: every mistake ends in one clear line, exit != 0, and the lake is
byte-for-byte unchanged (a hash of every file under the lake before and after)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from galsae_lake.lake import Lake
from galsae_lake.testing import assert_refused, cli, lake_hash

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
    return ["ingest", "votes", path], ["unknown split 'validation'", "(in column 'split')"]


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
    root = lake_copy(root, files, "partial-catalog")  # the catalog is ingested: not the built lake
    ids = Lake(root).read("galaxies", split="test")["id_str"].to_list()
    path = files / "partial.csv"
    pl.DataFrame({"id_str": ids, "mass": [None] * len(ids)}, schema={"id_str": pl.String,
                                                                     "mass": pl.Float64}
                 ).with_columns(pl.lit("train").alias("split")).write_csv(path)
    assert cli("ingest", "labels", path, "--catalog", "partial", lake=root).exit_code == 1
    pl.DataFrame({"id_str": ids[:3], "mass": [1.0, 2.0, 3.0], "split": "train"}).write_csv(path)
    assert cli("ingest", "labels", path, "--catalog", "partial", lake=root).exit_code == 0
    return ["--lake", root, "analyze", "--model", run_id, "--catalog", "partial", "--permutations",
            "0"], ["catalog 'partial' has no labels for split 'test'"]


def case_unknown_encoder(root, files, run_id):
    return ["embed", "--encoder", "no-such-encoder"], ["unknown encoder 'no-such-encoder'"]


def case_corrupt_images(root, files, run_id):
    # a lake whose every image is corrupt: nothing can be embedded, nothing is zero-filled
    return ["--lake", str(files / "corrupt-lake"), "embed", "--encoder", "zoobot-synth"], [
        "could be decoded"]


def case_embed_missing_block(root, files, run_id):
    return ["embed", "--encoder", "mae-synth", "--weights", "shipped", "--features", "9"], [
        "blocks 0-5"]


def case_inner_join_matches_nothing(root, files, run_id):
    return ["ingest", "embeddings", embeddings_file(files, "strangers.parquet", np.ones((3, DIM))),
            "--encoder", "other", "--join", "inner"], ["none of the 3 ids"]


def case_unknown_model(root, files, run_id):
    return ["analyze", "--model", "sae-nope-000000"], ["unknown model id 'sae-nope-000000'"]


def case_analyze_memory_limit(root, files, run_id):
    return ["analyze", "--model", run_id, "--memory-limit", "lots"], ["--memory-limit 'lots'"]


def case_analyze_temp_directory(root, files, run_id):
    return ["analyze", "--model", run_id, "--temp-directory", str(files / "nowhere")], [
        "is not a folder"]


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


# ---- issue #18: the read-only sql, outputs into the lake, the lock file, one-line failures


def lake_copy(root, files, name):
    """A copy of the built lake for a case that breaks something in it."""
    import shutil

    copy = files / f"{name}-lake"
    if not copy.exists():
        shutil.copytree(root, copy, symlinks=True)
    return copy


def case_sql_explain_analyze_copy(root, files, run_id):
    return ["sql", f"EXPLAIN ANALYZE COPY (SELECT 'x' AS id_str) TO "
                   f"'{root}/galaxies/split=test/data.parquet' (FORMAT parquet)"], ["refused"]


def case_sql_explain_analyze_commented(root, files, run_id):
    return ["sql", f"/* a */ EXPLAIN /* b */ ANALYZE -- c\n COPY galaxies TO "
                   f"'{root}/galaxies/split=test/data.parquet'"], ["refused"]


def case_sql_reads_outside_files(root, files, run_id):
    return ["sql", f"SELECT * FROM read_text('{root}/galaxies/_table.json')"], ["sql"]


def case_sql_output_through_dotdot(root, files, run_id):
    target = f"{files}/../{root.name}/galaxies/split=test/data.parquet"
    return ["sql", "SELECT 'x' AS id_str", "--format", "parquet", "--output", target], [
        "inside the lake"]


def case_sql_output_through_symlink(root, files, run_id):
    link = files / "galaxies-link"
    if not link.exists():
        link.symlink_to(root / "galaxies")
    return ["sql", "SELECT 'x' AS id_str", "--format", "parquet", "--output",
            link / "split=test" / "data.parquet"], ["inside the lake"]


def case_figures_out_into_a_table(root, files, run_id):
    return ["figures", "--model", run_id, "--out", root / "galaxies" / "split=test"], [
        "inside the lake"]


def case_sql_nested_as_csv(root, files, run_id):
    return ["sql", "SELECT * FROM embeddings", "--format", "csv"], ["nested", "embedding"]


def case_lock_is_a_symlink(root, files, run_id):
    copy = lake_copy(root, files, "lock-link")
    outside = files / "precious.txt"
    outside.write_text("keep me")
    (copy / "_lock").unlink(missing_ok=True)
    (copy / "_lock").symlink_to(outside)
    return ["--lake", copy, "synth", "--n", "50"], ["symbolic link"]


def case_lock_is_a_folder(root, files, run_id):
    copy = lake_copy(root, files, "lock-dir")
    if not (copy / "_lock").is_dir():
        (copy / "_lock").unlink(missing_ok=True)
        (copy / "_lock").mkdir()
    return ["--lake", copy, "sql", "SELECT count(*) FROM galaxies"], ["folder"]


def case_lock_timeout_not_a_number(root, files, run_id):
    return ["synth", "--n", "50"], ["GALSAE_LOCK_TIMEOUT"], {"GALSAE_LOCK_TIMEOUT": "abc"}


def case_corrupt_page(root, files, run_id):
    # one flipped byte in a compressed data page: zstd fails (an OSError from Arrow)
    import pyarrow.parquet as pq

    copy = lake_copy(root, files, "corrupt-page")
    path = copy / "galaxies" / "split=test" / "data.parquet"
    column = pq.ParquetFile(path).metadata.row_group(0).column(0)
    start = column.data_page_offset + 40
    data = bytearray(path.read_bytes())
    if not data[start:start + 16] == b"\xff" * 16:
        data[start:start + 16] = b"\xff" * 16
        path.write_bytes(bytes(data))
    return ["--lake", copy, "sql", "SELECT * FROM galaxies"], []


def case_garbage_partition_tables(root, files, run_id):
    copy = lake_copy(root, files, "garbage")
    (copy / "galaxies" / "split=test" / "data.parquet").write_bytes(b"PAR1 garbage PAR1")
    return ["--lake", copy, "tables"], ["galaxies", "split=test"]


def case_garbage_partition_read(root, files, run_id):
    copy = lake_copy(root, files, "garbage-read")
    (copy / "galaxies" / "split=test" / "data.parquet").write_bytes(b"PAR1 garbage PAR1")
    return ["--lake", copy, "ingest", "embeddings", files / "toy.parquet", "--encoder", "x",
            ], ["split=test"]


def case_toml_binary(root, files, run_id):
    path = files / "binary.toml"
    path.write_bytes(bytes(range(256)) * 4)
    return ["train-sae", "--encoder", "toy", "--config", path], ["toml"]


def case_toml_deeply_nested(root, files, run_id):
    path = scratch_file(files, "nested.toml", "x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    return ["train-sae", "--encoder", "toy", "--config", path], ["nested"]


def case_huge_dictionary(root, files, run_id):
    return ["train-sae", "--encoder", "toy", "--config", "demo", "--set", "input_dim=16",
            "--set", "group_sizes=[10000000000]", "--set", "top_k=4"], ["GiB", "group_sizes"]


def case_csv_duplicate_header(root, files, run_id):
    path = scratch_file(files, "twice.csv", f"id_str,{SMOOTH},{SMOOTH}\nx,0.5,0.7\n")
    return ["ingest", "votes", path, "--split", "train"], ["twice"]


def case_embeddings_upper_case_split(root, files, run_id):
    return ["ingest", "embeddings", embeddings_file(files, "upper.parquet", np.ones((3, DIM)),
                                                    split="TRAIN"), "--encoder", "toy"], [
        "unknown split 'TRAIN'"]


def case_embeddings_validation_split(root, files, run_id):
    return ["ingest", "embeddings", embeddings_file(files, "val.parquet", np.ones((3, DIM)),
                                                    split="validation"), "--encoder", "toy"], [
        "unknown split 'validation'"]


CASES = [value for name, value in sorted(globals().items()) if name.startswith("case_")]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[5:] for c in CASES])
def test_bad_input_leaves_the_lake_unchanged(built, case, monkeypatch):
    root, files, run_id = built
    if case is case_corrupt_images:
        corrupt = Lake(files / "corrupt-lake")
        if not corrupt.exists("images"):
            with corrupt.transaction("test") as tx:
                tx.write("images", pa.table({"id_str": ["a", "b"],
                                             "image": [b"not a png", b"\x89PNG\r\n\x1a\n broken"]}),
                         partition={"split": "train"})
    args, words, *env = case(root, files, run_id)
    for name, value in (env[0] if env else {}).items():
        monkeypatch.setenv(name, value)
    if args[0] == "--lake":  # the case names its own lake
        assert_refused(args[1], args, *words, lake=False)
    else:
        assert_refused(root, args, *words)
    assert lake_hash(root) == built_hash(built), f"{case.__name__} changed the built lake"
    if case is case_lock_is_a_symlink:
        assert (files / "precious.txt").read_text() == "keep me"


_HASHES: dict = {}


def built_hash(built) -> str:
    """The built lake's hash, taken once (after the first case), so no case changes it."""
    root = built[0]
    return _HASHES.setdefault(str(root), lake_hash(root))


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
