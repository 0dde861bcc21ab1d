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


def start_writer(root, tag, rounds, env=None):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(root), tag, str(rounds)],
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
