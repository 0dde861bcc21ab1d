"""The lake storage layer: layout, atomic and idempotent writes, sidecars, reads, versions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from galsae_lake import __version__
from galsae_lake.errors import LakeError
from galsae_lake.lake import (DATA_FILE, SCHEMA_VERSION, Lake, query, resolve_root, sql_dir,
                              vector_array, vectors)
from galsae_lake.testing import lake_unchanged


def galaxies(ids, split):
    return pl.DataFrame({"id_str": ids, "source": "test", "ra": 1.5, "dec": None, "split": split},
                        schema_overrides={"dec": pl.Float64})


def embedding_table(n=6, d=5, seed=0):
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((n, d)).astype(np.float32)
    matrix[0, 0] = np.float32(1e-38)  # a subnormal survives too
    return matrix, pa.table({"id_str": [f"g{i}" for i in range(n)], "embedding": vector_array(matrix)})


def test_root_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("GALSAE_LAKE", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_root() == tmp_path / "lake"
    monkeypatch.setenv("GALSAE_LAKE", str(tmp_path / "env"))
    assert resolve_root() == tmp_path / "env"
    assert resolve_root(tmp_path / "given") == tmp_path / "given"


def test_root_that_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(LakeError, match="is a file"):
        Lake(tmp_path / "afile")


def test_hive_layout_and_sidecar(tmp_path):
    lake = Lake(tmp_path / "lake")
    with lake.transaction("synth", {"n": 3}, upstream=["nothing"]) as tx:
        tx.write("galaxies", pl.concat([galaxies(["a", "b"], "train"), galaxies(["c"], "test")]))
    assert (lake.root / "galaxies" / "split=train" / DATA_FILE).exists()
    assert (lake.root / "galaxies" / "split=test" / DATA_FILE).exists()
    # partition keys are not repeated inside the files
    assert "split" not in pq.read_schema(lake.root / "galaxies" / "split=train" / DATA_FILE).names
    info = json.loads((lake.root / "galaxies" / "_table.json").read_text())
    assert info["schema_version"] == SCHEMA_VERSION
    assert info["rows"] == 3
    assert info["command"] == "synth" and info["parameters"] == {"n": 3}
    assert info["package_version"] == __version__
    assert info["upstream"] == ["nothing"]
    assert len(info["config_hash"]) == 12
    assert info["partitions"]["split=train"]["rows"] == 2
    # readable by DuckDB's own Hive reader, not only through our views
    con = duckdb.connect()
    rows = con.sql(f"SELECT split, count(*) FROM read_parquet('{lake.root}/galaxies/**/*.parquet',"
                   " hive_partitioning=true) GROUP BY split ORDER BY split").fetchall()
    assert rows == [("test", 1), ("train", 2)]


def test_embeddings_round_trip_bit_for_bit(tmp_path):
    lake = Lake(tmp_path / "lake")
    matrix, table = embedding_table()
    with lake.transaction("ingest") as tx:
        tx.write("embeddings", table, partition={"encoder": "enc", "split": "train"})
    # pyarrow
    stored = lake.arrow("embeddings", encoder="enc")
    assert stored.schema.field("embedding").type == pa.list_(pa.float32(), 5)
    assert vectors(stored).tobytes() == matrix.tobytes()
    # polars: Array(Float32, 5)
    frame = lake.read("embeddings", encoder="enc", split="train")
    assert frame.schema["embedding"] == pl.Array(pl.Float32, 5)
    assert vectors(frame).tobytes() == matrix.tobytes()
    # DuckDB: FLOAT[5]
    con = lake.connect()
    assert con.sql("SELECT DISTINCT typeof(embedding) FROM embeddings").fetchall() == [("FLOAT[5]",)]
    back = con.sql("SELECT embedding FROM embeddings ORDER BY id_str").arrow()
    back = back.read_all() if hasattr(back, "read_all") else back
    assert vectors(back).tobytes() == matrix.tobytes()
    # and a FLOAT[d] written by DuckDB comes back unchanged through the lake
    again = con.sql("SELECT id_str, embedding FROM embeddings").arrow()
    again = again.read_all() if hasattr(again, "read_all") else again
    with lake.transaction("copy") as tx:
        tx.write("embeddings", again, partition={"encoder": "copy", "split": "train"})
    assert vectors(lake.arrow("embeddings", encoder="copy")).tobytes() == matrix.tobytes()


def test_mixed_dimensions_read_per_encoder(tmp_path):
    lake = Lake(tmp_path / "lake")
    with lake.transaction("ingest") as tx:
        tx.write("embeddings", embedding_table(d=4)[1], partition={"encoder": "a", "split": "train"})
        tx.write("embeddings", embedding_table(d=3)[1], partition={"encoder": "b", "split": "train"})
    assert lake.read("embeddings", encoder="a").schema["embedding"] == pl.Array(pl.Float32, 4)
    con = lake.connect()
    dims = con.sql("SELECT encoder, len(embedding) FROM embeddings GROUP BY ALL ORDER BY 1").fetchall()
    assert dims == [("a", 4), ("b", 3)]
    source = lake.duckdb_source("embeddings", encoder="b")
    assert con.sql(f"SELECT DISTINCT typeof(embedding) FROM {source}").fetchall() == [("FLOAT[3]",)]


def test_rewrite_replaces_exactly_the_written_partitions(tmp_path):
    lake = Lake(tmp_path / "lake")
    with lake.transaction("synth") as tx:
        tx.write("galaxies", pl.concat([galaxies(["a", "b"], "train"), galaxies(["c"], "test")]))
    test_file = lake.root / "galaxies" / "split=test" / DATA_FILE
    before = test_file.read_bytes(), test_file.stat().st_mtime_ns
    for _ in range(2):  # idempotent: the same write twice gives the same table
        with lake.transaction("synth") as tx:
            tx.write("galaxies", galaxies(["x", "y", "z"], "train"))
        assert sorted(lake.read("galaxies", split="train")["id_str"]) == ["x", "y", "z"]
    assert (test_file.read_bytes(), test_file.stat().st_mtime_ns) == before
    assert lake.read("galaxies")["id_str"].sort().to_list() == ["c", "x", "y", "z"]
    assert lake.info("galaxies").rows == 4


def test_failure_inside_a_transaction_changes_nothing(tmp_path):
    lake = Lake(tmp_path / "lake")
    with lake.transaction("synth") as tx:
        tx.write("galaxies", galaxies(["a"], "train"))
    with lake_unchanged(lake.root), pytest.raises(RuntimeError):
        with lake.transaction("synth") as tx:
            tx.write("galaxies", galaxies(["b"], "train"))
            tx.write("galaxies", galaxies(["c"], "test"))
            raise RuntimeError("crash between writes")
    assert lake.read("galaxies")["id_str"].to_list() == ["a"]


def test_failure_on_a_fresh_lake_leaves_no_folder(tmp_path):
    lake = Lake(tmp_path / "lake")
    with pytest.raises(LakeError):
        with lake.transaction("synth") as tx:
            tx.write("galaxies", pl.DataFrame({"id_str": ["a"], "split": ["train"]}))
    assert not lake.root.exists()


def test_write_that_fails_midway_keeps_the_old_partition_readable(tmp_path, monkeypatch):
    lake = Lake(tmp_path / "lake")
    with lake.transaction("synth") as tx:
        tx.write("galaxies", galaxies(["old"], "train"))
    # the Parquet writer dies after writing part of the new file
    real = pq.ParquetWriter.write_table

    def dying(self, table, *args, **kwargs):
        real(self, table.slice(0, 1), *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", dying)
    with pytest.raises(OSError):
        with lake.transaction("synth") as tx:
            writer = tx.writer("galaxies", {"split": "train"})
            writer.write(galaxies(["new1", "new2"], "train").drop("split"))
    monkeypatch.undo()
    assert lake.read("galaxies", split="train")["id_str"].to_list() == ["old"]
    assert not (lake.root / "_staging").exists()


def test_schema_is_enforced(tmp_path):
    lake = Lake(tmp_path / "lake")
    with pytest.raises(LakeError, match="missing column"):
        with lake.transaction("x") as tx:
            tx.write("galaxies", pl.DataFrame({"id_str": ["a"], "split": ["train"]}))
    with pytest.raises(LakeError, match="expected"):
        with lake.transaction("x") as tx:
            frame = galaxies(["a"], "train").with_columns(ra=pl.lit("north"))
            tx.write("galaxies", frame)
    with pytest.raises(LakeError, match="invalid split"):
        with lake.transaction("x") as tx:
            tx.write("galaxies", galaxies(["a"], "../escape"))
    with pytest.raises(LakeError, match="unknown table"):
        lake.read("no_such_table")
    with pytest.raises(LakeError, match="has no data"):
        lake.read("galaxies")


def test_keyed_table_merges_by_key(tmp_path):
    lake = Lake(tmp_path / "lake")

    def run(run_id, metrics):
        return pl.DataFrame({"run_id": [run_id], "encoder": ["e"], "config": ["{}"],
                             "checkpoint": ["c"], "metrics": [metrics],
                             "created_at": [None]}).cast({"created_at": pl.Datetime("us", "UTC")})

    for run_id, metrics in [("r1", "1"), ("r2", "2"), ("r1", "3")]:
        with lake.transaction("train-sae") as tx:
            tx.write("sae_runs", run(run_id, metrics))
    runs = lake.read("sae_runs").sort("run_id")
    assert runs["run_id"].to_list() == ["r1", "r2"]
    assert runs["metrics"].to_list() == ["3", "2"]


def test_streaming_writer_and_model_folders(tmp_path):
    lake = Lake(tmp_path / "lake")
    with lake.transaction("train-sae") as tx:
        writer = tx.writer("sae_activations", {"run_id": "r", "split": "test"})
        for start in range(0, 30, 10):
            writer.write(pa.table({"id_str": [f"g{i}" for i in range(start, start + 10)],
                                   "feature": pa.array(range(10), pa.int32()),
                                   "activation": pa.array(np.ones(10), pa.float32())}))
        writer.close()
        (tx.stage_dir("sae", "r") / "config.json").write_text("{}")
    assert lake.read("sae_activations").height == 30
    assert (lake.model_dir("sae", "r") / "config.json").read_text() == "{}"


def test_newer_schema_version_is_refused(tmp_path):
    lake = Lake(tmp_path / "lake")
    with lake.transaction("synth") as tx:
        tx.write("galaxies", galaxies(["a"], "train"))
    sidecar = lake.root / "galaxies" / "_table.json"
    info = json.loads(sidecar.read_text())
    info["schema_version"] = SCHEMA_VERSION + 1
    sidecar.write_text(json.dumps(info))
    for action in (lambda: lake.read("galaxies"), lake.connect, lake.check_versions):
        with pytest.raises(LakeError, match="upgrade galsae-lake"):
            action()


def commit_dying(tx, monkeypatch, crash) -> None:
    """Commit ``tx`` with ``crash(lake, plan)`` run in place of applying its journaled plan."""
    import galsae_lake.lake as lakemod

    with monkeypatch.context() as patch:
        patch.setattr(lakemod, "_apply_plan", crash)
        with pytest.raises(KeyboardInterrupt):
            tx.commit()


def test_recovery_rolls_a_dead_commit_forward(tmp_path, monkeypatch):
    """A commit that died after its journal was written is finished by the next writer."""
    lake = Lake(tmp_path / "lake")
    with lake.transaction("synth") as tx:
        tx.write("galaxies", galaxies(["old"], "train"))
    # stage a transaction and write its journal, but "die" before moving files
    tx = lake.transaction("synth").__enter__()
    tx.write("galaxies", pl.concat([galaxies(["new"], "train"), galaxies(["t"], "test")]))

    def crash(lake_, plan):
        raise KeyboardInterrupt("killed after the journal was written")

    commit_dying(tx, monkeypatch, crash)
    # the journal is still there; the files are still the old ones
    train = lake.root / "galaxies" / "split=train" / "data.parquet"
    assert pl.read_parquet(train)["id_str"].to_list() == ["old"]
    assert any((lake.root / "_staging").rglob("_journal.json"))
    with lake.transaction("other") as other:  # the next writer recovers first
        other.write("truth", pl.DataFrame({"id_str": ["t"], "factor": ["f"], "value": [1.0],
                                           "split": ["test"]}))
    assert sorted(lake.read("galaxies")["id_str"].to_list()) == ["new", "t"]
    assert not (lake.root / "_staging").exists()
    assert lake.info("galaxies").rows == 2


def test_sql_folder_ships_with_the_package():
    assert sql_dir().is_dir()
    assert Path(sql_dir()).name == "sql"
    with pytest.raises(LakeError, match="no query"):
        query("no_such_query")


def test_remove_drops_partitions_with_the_writes_of_one_commit(tmp_path):
    lake = Lake(tmp_path / "lake")
    with lake.transaction("synth") as tx:
        tx.write("galaxies", pl.concat([galaxies(["a", "b"], "train"), galaxies(["c"], "test")]))
        tx.write("truth", pl.DataFrame({"id_str": ["c"], "factor": ["f"], "value": [1.0],
                                        "split": ["test"]}))
    with lake_unchanged(lake.root), pytest.raises(RuntimeError):  # a failure removes nothing
        with lake.transaction("drop") as tx:
            tx.remove("galaxies", {"split": "test"})
            raise RuntimeError("crash before commit")
    with pytest.raises(LakeError, match="partitioned by"):
        with lake.transaction("drop") as tx:
            tx.remove("galaxies", {"encoder": "x"})
    with lake.transaction("drop") as tx:
        tx.remove("galaxies", {"split": "test"})
        tx.remove("galaxies", {"split": "absent"})  # nothing there: nothing to do
        tx.write("galaxies", galaxies(["z"], "train"))
        tx.remove("truth", {"split": "test"})
    assert lake.read("galaxies")["id_str"].to_list() == ["z"]
    assert not (lake.root / "galaxies" / "split=test").exists()
    info = lake.info("galaxies")
    assert list(info.partitions) == ["split=train"] and info.rows == 1
    assert lake.partition_info("galaxies", split="train").rows == 1
    assert lake.partition_info("galaxies", split="test") is None
    with pytest.raises(LakeError, match="partitioned by"):
        lake.partition_info("galaxies", encoder="x")
    # the last partition of a table gone: the table (folder and sidecar) goes too
    assert not (lake.root / "truth").exists() and "truth" not in lake.tables()
    for first_write in (True, False):  # either order
        with pytest.raises(LakeError, match="written and removed"):
            with lake.transaction("drop") as tx:
                if first_write:
                    tx.write("galaxies", galaxies(["y"], "train"))
                tx.remove("galaxies", {"split": "train"})
                tx.write("galaxies", galaxies(["y"], "train"))
    assert lake.read("galaxies")["id_str"].to_list() == ["z"]


def test_recovery_finishes_a_dead_commit_that_removes(tmp_path, monkeypatch):
    lake = Lake(tmp_path / "lake")
    with lake.transaction("synth") as tx:
        tx.write("galaxies", pl.concat([galaxies(["a"], "train"), galaxies(["c"], "test")]))
    tx = lake.transaction("drop").__enter__()
    tx.remove("galaxies", {"split": "test"})

    def crash(lake_, plan):  # dies after moving the file aside, before the sidecar
        target = lake_.root / plan["removals"][0]["target"]
        aside = lake_.root / plan["removals"][0]["aside"]
        aside.parent.mkdir(parents=True, exist_ok=True)
        target.replace(aside)
        raise KeyboardInterrupt("killed half way")

    commit_dying(tx, monkeypatch, crash)
    with lake.transaction("other") as other:  # the next writer rolls it forward
        other.write("galaxies", galaxies(["b"], "train"))
    assert lake.read("galaxies")["id_str"].to_list() == ["b"]
    assert list(lake.info("galaxies").partitions) == ["split=train"]
    assert not (lake.root / "galaxies" / "split=test").exists()
    assert not (lake.root / "_staging").exists()


def test_sidecar_round_trips_through_its_typed_class(tmp_path):
    """_table.json is read and written by TableProperties without losing or changing a key."""
    from galsae_lake.properties import PartitionProperties, TableProperties

    lake = Lake(tmp_path / "lake")
    with lake.transaction("synth", {"n": 2}, upstream=["x"]) as tx:
        tx.write("galaxies", galaxies(["a"], "train"), info={"skipped_corrupt": 3, "weights": "w"})
        tx.write("galaxies", galaxies(["b"], "test"))
    raw = json.loads((lake.root / "galaxies" / "_table.json").read_text())
    assert TableProperties.from_json(raw).to_json() == raw
    train = lake.partition_info("galaxies", split="train")
    assert isinstance(train, PartitionProperties)
    assert (train.rows, train.command, train.parameters, train.upstream) == (1, "synth", {"n": 2},
                                                                             ["x"])
    assert train.skipped_corrupt == 3 and train.recorded == {"weights": "w"}
    assert train.merged_shards is None and "merged_shards" not in raw["partitions"]["split=train"]
    assert train.matches({"weights": "w", "rows": 1}) and not train.matches({"weights": "v"})
    assert raw["partitions"]["split=train"]["written_at"] == train.written_at
    assert lake.info("galaxies").updated_at == train.written_at


def test_readers_finish_a_dead_commit_before_reading(tmp_path, monkeypatch):
    """A commit that died after its journal (e.g. SIGKILL) is rolled forward by the next reader
    too: readers never see the tables of half a commit (issue #18, item 4)."""
    lake = Lake(tmp_path / "lake")
    with lake.transaction("synth") as tx:
        tx.write("galaxies", galaxies(["old"], "train"))
    tx = lake.transaction("train-sae").__enter__()
    tx.write("galaxies", galaxies(["new"], "train"))
    tx.write("truth", pl.DataFrame({"id_str": ["new"], "factor": ["f"], "value": [1.0],
                                    "split": ["train"]}))
    import galsae_lake.lake as lakemod

    real = lakemod._apply_plan

    def half(lake_, plan):  # the galaxies file moved, then killed before truth and the sidecars
        entry = next(e for e in plan["entries"] if e["table"] == "galaxies")
        os.replace(lake_.root / entry["staged"], lake_.root / entry["target"])
        raise KeyboardInterrupt("killed half way through the renames")

    commit_dying(tx, monkeypatch, half)
    assert real is lakemod._apply_plan
    assert not (lake.root / "truth").exists()  # on disk: half a commit
    assert lake.read("truth")["id_str"].to_list() == ["new"]  # a reader sees all of it
    assert lake.read("galaxies")["id_str"].to_list() == ["new"]
    assert lake.info("galaxies").command == "train-sae"
    assert not (lake.root / "_staging").exists()
