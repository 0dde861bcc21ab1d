"""Crash safety and concurrency of the lake: SIGKILL at random moments, two writers, readers."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import polars as pl
import pyarrow.parquet as pq
import pytest

from galsae_lake.lake import Lake

# Each transaction rewrites three partitions of two tables with rows tagged by one marker, so a
# reader can tell a whole partition (one marker, ROWS rows) from a torn one.
WRITER = textwrap.dedent("""
    import sys, polars as pl
    from galsae_lake.lake import Lake
    lake, tag, rounds = Lake(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    ROWS = 20_000
    for i in range(rounds):
        marker = f"{tag}-{i}"
        with lake.transaction("writer", {"marker": marker}) as tx:
            for split in ("train", "test", "val"):
                tx.write("galaxies", pl.DataFrame({
                    "id_str": [f"{split}{j}" for j in range(ROWS)], "source": marker,
                    "ra": 1.0, "dec": 2.0}), partition={"split": split})
                tx.write("truth", pl.DataFrame({"id_str": [f"{split}{j}" for j in range(ROWS)],
                    "factor": marker, "value": float(i)}), partition={"split": split})
        print(marker, flush=True)
""")
ROWS = 20_000


# a slow disk: every rename of a commit takes 30 ms, so a reader lands inside commits often
SLOW_RENAMES = textwrap.dedent("""
    import os, time
    _replace = os.replace
    def _slow(*args, **kwargs):
        _replace(*args, **kwargs)
        time.sleep(0.03)
    os.replace = _slow
""")


def start_writer(root, tag, rounds, env=None, slow=False):
    code = (SLOW_RENAMES if slow else "") + WRITER
    return subprocess.Popen([sys.executable, "-c", code, str(root), tag, str(rounds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def check_consistent(root) -> set[str]:
    """Every partition file whole (one marker, all rows); sidecars parse. Returns the markers."""
    lake = Lake(root)
    markers = set()
    for table, column in (("galaxies", "source"), ("truth", "factor")):
        for path in lake.files(table):
            frame = pl.read_parquet(path)
            assert frame.height == ROWS, path
            assert frame[column].n_unique() == 1, path
            markers.add(frame[column][0])
        sidecar = lake.root / table / "_table.json"
        if sidecar.exists():  # written right after the data files of a commit
            json.loads(sidecar.read_text())
    return markers


def snapshot(root):
    lake = Lake(root)
    return {t: lake.read(t).sort(lake.read(t).columns) for t in ("galaxies", "truth")}


@pytest.mark.slow
def test_sigkill_at_random_moments_never_tears_a_partition(tmp_path):
    reference = tmp_path / "reference"
    started = time.monotonic()
    done = start_writer(reference, "w", 3)
    assert done.wait(timeout=120) == 0, done.stderr.read()
    duration = time.monotonic() - started  # kill moments spread over a whole run, however fast
    expected = snapshot(reference)

    root = tmp_path / "lake"
    rng = random.Random(7)
    kills = 0
    for attempt in range(12):
        proc = start_writer(root, "w", 3)
        time.sleep(rng.uniform(0.05, 0.95) * duration)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        check_consistent(root)  # readable, no torn partition, after every kill
    assert kills >= 6
    finish = start_writer(root, "w", 3)
    assert finish.wait(timeout=120) == 0, finish.stderr.read()
    got = snapshot(root)
    for table in expected:
        assert got[table].equals(expected[table]), table
    assert not (root / "_staging").exists()
    assert Lake(root).info("galaxies").rows == 3 * ROWS


@pytest.mark.slow
def test_two_writers_and_a_reader(tmp_path):
    root = tmp_path / "lake"
    first = start_writer(root, "a", 4)
    second = start_writer(root, "b", 4)
    seen = set()
    reads = 0
    while first.poll() is None or second.poll() is None:
        if (root / "galaxies").exists():
            seen |= check_consistent(root)  # readers never block and never see half a write
            reads += 1
        time.sleep(0.02)
    assert first.returncode == 0, first.stderr.read()
    assert second.returncode == 0, second.stderr.read()
    assert reads > 0
    final = check_consistent(root)
    assert len(final) == 1 and final <= {"a-3", "b-3"}
    lake = Lake(root)
    assert lake.info("galaxies").rows == 3 * ROWS
    # each commit is whole: one transaction's marker in every partition of both tables
    markers = {pl.read_parquet(f)["source"][0] for f in lake.files("galaxies")}
    markers |= {pl.read_parquet(f)["factor"][0] for f in lake.files("truth")}
    assert len(markers) == 1


@pytest.mark.slow
def test_a_writer_that_cannot_get_the_lock_says_who_holds_it(tmp_path):
    root = tmp_path / "lake"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from galsae_lake.lake import Lake
            with Lake({str(root)!r}).lock():
                print("locked", flush=True)
                time.sleep(30)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        waiter = start_writer(root, "w", 1, env={"GALSAE_LOCK_TIMEOUT": "0.5"})
        assert waiter.wait(timeout=60) != 0
        err = waiter.stderr.read()
        assert "waiting for the lake lock held by pid" in err
        assert f"being written by pid {holder.pid}" in err and "gave up after" in err
    finally:
        holder.kill()
        holder.wait()
    assert not Lake(root).exists("galaxies")
    # a lock left by a dead process is no lock: the next writer proceeds
    ok = start_writer(root, "w", 1, env={"GALSAE_LOCK_TIMEOUT": "5"})
    assert ok.wait(timeout=60) == 0, ok.stderr.read()


def test_parquet_files_are_complete(tmp_path):
    root = tmp_path / "lake"
    proc = start_writer(root, "w", 1)
    assert proc.wait(timeout=60) == 0
    for path in Lake(root).files("galaxies"):
        assert pq.ParquetFile(path).metadata.num_rows == ROWS


def synth_process(root, n):
    return subprocess.Popen([sys.executable, "-m", "galsae_lake", "--lake", str(root), "synth",
                             "--n", str(n), "--seed", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def tables_of(root):
    lake = Lake(root)
    return {t: lake.read(t).sort(["split", "id_str"] + (["factor"] if t == "truth" else [])
                                 + (["label"] if t == "votes" else []))
            for t in ("galaxies", "images", "votes", "truth")}


@pytest.mark.slow
def test_sigkill_of_a_real_command(tmp_path):
    """`galsae-lake synth` killed at random moments: readable after each kill, then a re-run
    gives the same tables as an uninterrupted run."""
    reference = tmp_path / "reference"
    started = time.monotonic()
    done = synth_process(reference, 600)
    assert done.wait(timeout=120) == 0, done.stderr.read()
    duration = time.monotonic() - started
    expected = tables_of(reference)

    root = tmp_path / "lake"
    rng = random.Random(11)
    kills = 0
    for attempt in range(8):
        proc = synth_process(root, 600)
        time.sleep(rng.uniform(0.05, 0.95) * duration)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        lake = Lake(root)
        for table in ("galaxies", "images", "votes", "truth"):
            for path in lake.files(table):  # every partition file whole and readable
                assert pq.ParquetFile(path).metadata.num_rows > 0
                pl.read_parquet(path)
    assert kills >= 4
    finish = synth_process(root, 600)
    assert finish.wait(timeout=120) == 0, finish.stderr.read()
    got = tables_of(root)
    for table, frame in expected.items():
        assert got[table].equals(frame), table
    assert not (root / "_staging").exists()


# ---- issue #18: readers see whole commits; full disks; read-only lakes; one line per failure

def test_readers_see_whole_commits_while_two_writers_commit(tmp_path):
    """Lake.read and `sql` see every partition of a table from one commit (one marker), never
    the new train partition with the old test one."""
    from galsae_lake.lake import run_sql

    root = tmp_path / "lake"
    first = start_writer(root, "a", 1)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    writers = [start_writer(root, "b", 2, slow=True), start_writer(root, "c", 2, slow=True)]
    lake = Lake(root)
    reads = 0
    while any(w.poll() is None for w in writers):
        frame = lake.read("galaxies")
        assert frame.height == 3 * ROWS
        assert frame["source"].n_unique() == 1, frame.group_by("split").agg(
            pl.col("source").unique())
        counted = run_sql(lake, "SELECT count(DISTINCT source) AS n, count(*) AS rows "
                                "FROM galaxies")
        assert counted.row(0) == (1, 3 * ROWS)
        reads += 1
    for w in writers:
        assert w.returncode == 0, w.stderr.read()
    assert reads > 1


def _no_space(path):
    import errno

    return OSError(errno.ENOSPC, "No space left on device", str(path))


def _tiny_lake(root):
    lake = Lake(root)
    with lake.transaction("synth") as tx:
        tx.write("galaxies", pl.DataFrame({"id_str": ["old"], "source": "s", "ra": 1.0,
                                           "dec": 2.0, "split": "train"}))
    return lake


def test_a_full_disk_in_the_sidecar_update_ends_applied(tmp_path, monkeypatch):
    """ENOSPC after the journal: one line; the journal stays, no temporary file stays, and the
    next reader (or writer) finishes the commit, with its sidecar."""
    import galsae_lake.lake as lakemod
    from galsae_lake.errors import LakeError

    lake = _tiny_lake(tmp_path / "lake")
    real = lakemod._write_durably

    def full(path, text):
        if path.name == "_table.json":
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            real(tmp.with_name("x"), "")  # something was written, then the disk filled
            (tmp.with_name("x")).rename(tmp)
            raise _no_space(tmp)
        return real(path, text)

    monkeypatch.setattr(lakemod, "_write_durably", full)
    try:
        with lake.transaction("train-sae") as tx:
            tx.write("galaxies", pl.DataFrame({"id_str": ["new"], "source": "s", "ra": 1.0,
                                               "dec": 2.0, "split": "train"}))
            tx.write("truth", pl.DataFrame({"id_str": ["new"], "factor": "f", "value": 1.0,
                                            "split": "train"}))
        raise AssertionError("the commit should have failed")
    except LakeError as exc:
        message = str(exc)
    assert "no space left on the lake's disk" in message and "journaled" in message
    assert "\n" not in message
    assert list((tmp_path / "lake").rglob("_journal.json"))  # kept for the roll-forward
    monkeypatch.setattr(lakemod, "_write_durably", real)
    assert Lake(lake.root).read("truth")["id_str"].to_list() == ["new"]  # a reader finishes it
    assert Lake(lake.root).info("truth").command == "train-sae"
    assert Lake(lake.root).info("galaxies").rows == 1
    assert not (lake.root / "_staging").exists()
    assert not list(lake.root.rglob("*.tmp"))


def test_a_full_disk_while_staging_leaves_the_lake_as_it_was(tmp_path, monkeypatch):
    import galsae_lake.lake as lakemod
    from galsae_lake.testing import assert_one_line_error, cli, lake_hash

    lake = _tiny_lake(tmp_path / "lake")
    before = lake_hash(lake.root)

    def full(table, path, **options):
        path.write_bytes(b"PAR1 half")
        raise _no_space(path)

    monkeypatch.setattr(lakemod.pq, "write_table", full)
    result = cli("synth", "--n", "60", lake=lake.root)
    assert_one_line_error(result, "no space left on the lake's disk")
    assert lake_hash(lake.root) == before


def _mount_tmpfs(path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def test_a_really_full_disk(tmp_path):
    """On a 2 MB tmpfs (root only; skipped where mounting is not allowed): synth fills the
    disk; one line, and the lake is as it was."""
    import pytest
    from galsae_lake.testing import assert_one_line_error, lake_hash, run_cli

    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "2m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        root = disk / "lake"
        assert run_cli("synth", "--n", "30", "--seed", "1", lake=root).returncode == 0
        before = lake_hash(root)
        result = run_cli("synth", "--n", "3000", "--seed", "2", lake=root)
        assert_one_line_error(result, "no space left on the lake's disk")
        assert lake_hash(root) == before
        assert run_cli("tables", lake=root).returncode == 0
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=20)


def test_a_read_only_lake_is_one_line(tmp_path, monkeypatch):
    """A lake this user cannot write: every writer fails in one line (PermissionError in
    _staging before); readers still read it."""
    import errno

    from galsae_lake.testing import assert_one_line_error, cli, lake_hash

    lake = _tiny_lake(tmp_path / "lake")
    before = lake_hash(lake.root)
    real_mkdir = os.mkdir

    def read_only(path, *args, **kwargs):  # as a read-only mount answers (root ignores chmod)
        if str(path).startswith(str(lake.root)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only)
    for args in (["synth", "--n", "50"], ["pca", "--encoder", "x"]):
        result = cli(*args, lake=lake.root)
        assert_one_line_error(result, "permission denied" if args[0] == "synth" else "")
    assert cli("sql", "SELECT count(*) AS n FROM galaxies", lake=lake.root).exit_code == 0
    assert lake_hash(lake.root) == before


def test_debug_keeps_the_traceback(tmp_path):
    from galsae_lake.testing import run_cli

    lake = _tiny_lake(tmp_path / "lake")
    (lake.root / "galaxies" / "split=train" / "data.parquet").write_bytes(b"PAR1 garbage PAR1")
    plain = run_cli("sql", "SELECT * FROM galaxies", lake=lake.root)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert "split=train" in plain.stderr
    debug = run_cli("--debug", "sql", "SELECT * FROM galaxies", lake=lake.root)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_sql_json_is_json_lines_streamed(tmp_path):
    from galsae_lake.testing import cli

    lake = _tiny_lake(tmp_path / "lake")
    result = cli("sql", "SELECT range AS i FROM range(200000)", "--format", "json", lake=lake.root)
    lines = result.output.splitlines()
    assert len(lines) == 200_000 and json.loads(lines[-1]) == {"i": 199_999}
    result = cli("sql", "SELECT 1 AS i WHERE false", "--format", "json", lake=lake.root)
    assert result.exit_code == 0 and result.output == ""
    result = cli("sql", "SELECT 1 AS i WHERE false", "--format", "csv", lake=lake.root)
    assert result.output.splitlines() == ["i"]


def test_sql_sees_only_the_lake(tmp_path):
    """The sql connection cannot read or write files, even where the parse would let it."""
    import duckdb
    import pytest

    lake = _tiny_lake(tmp_path / "lake")
    con = lake.connect(sandbox=True)
    assert con.sql("SELECT count(*) FROM galaxies").fetchall() == [(1,)]
    outside = tmp_path / "x.parquet"
    for statement in (f"COPY (SELECT 1) TO '{outside}'",
                      f"SELECT * FROM read_parquet('{lake.root}/galaxies/*/*.parquet')",
                      "SET enable_external_access = true", f"ATTACH '{tmp_path}/db.duckdb'"):
        with pytest.raises(duckdb.Error):
            con.execute(statement)
    assert not outside.exists()
