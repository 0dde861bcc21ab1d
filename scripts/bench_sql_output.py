"""Peak memory of `galsae-lake sql ... -o FILE` by output format, against the earlier way of
writing JSON (the whole result as a list of dicts, then one json.dumps).

    PYTHONPATH=. .venv/bin/python scripts/bench_sql_output.py [--rows 2000000] [--skip-earlier]

Builds a lake with one ``truth`` partition of ROWS rows (id_str, factor, value), then runs each
way in a fresh process and prints its peak resident memory (ru_maxrss) and wall time. The
earlier JSON is run as a small script over the same DuckDB result (``relation.pl().to_dicts()``
and ``json.dumps``), as cli.write_frame did before issue #18.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from galsae_lake.lake import Lake  # noqa: E402

QUERY = "SELECT * FROM truth"
EARLIER = """
import json, sys
from galsae_lake.lake import Lake, user_sql
with user_sql(Lake(sys.argv[1]), sys.argv[2]) as relation:
    frame = relation.pl()
with open(sys.argv[3], "w") as out:
    out.write(json.dumps(frame.to_dicts(), default=str, indent=1) + "\\n")
"""


BUILD = """
import sys
import numpy as np, pyarrow as pa
from galsae_lake.lake import Lake
rows = int(sys.argv[2])
ids = np.char.add("g", np.arange(rows).astype(str))
with Lake(sys.argv[1]).transaction("bench") as tx:
    tx.write("truth", pa.table({"id_str": ids, "factor": np.full(rows, "bar"),
                                "value": np.random.default_rng(0).random(rows)}),
             partition={"split": "train"})
"""


def peak(argv: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of one child process."""
    started = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, _, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if child.returncode not in (0, None):
        raise SystemExit(child.stderr.read())
    return usage.ru_maxrss / 1024, seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--skip-earlier", action="store_true",
                    help="Leave out the earlier JSON (it needs ~1.5 GB per million rows).")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake(Path(tmp) / "lake")
        # built in a child: a child forked from a big parent counts the parent's pages as its own
        subprocess.run([sys.executable, "-c", BUILD, str(lake.root), str(args.rows)], check=True)
        cli = [sys.executable, "-m", "galsae_lake", "--lake", str(lake.root), "sql", QUERY]
        print(f"{args.rows:,} rows of truth; peak RSS of one process; "
              f"{time.strftime('%Y-%m-%d')}, {sys.platform}")
        for label, argv in [
            ("baseline: SELECT 1", cli[:-1] + ["SELECT 1 AS x", "--format", "csv", "-o",
                                                f"{tmp}/one.csv"]),
            ("csv", cli + ["--format", "csv", "-o", f"{tmp}/out.csv"]),
            ("json (JSON lines, streamed)", cli + ["--format", "json", "-o", f"{tmp}/out.jsonl"]),
            ("parquet", cli + ["--format", "parquet", "-o", f"{tmp}/out.parquet"]),
            ("json, earlier (list of dicts + dumps)",
             [sys.executable, "-c", EARLIER, str(lake.root), QUERY, f"{tmp}/old.json"]),
        ][: 4 if args.skip_earlier else 5]:
            mb, seconds = peak(argv)
            print(f"  {label:40s} {mb:8.0f} MB  {seconds:6.1f} s")


if __name__ == "__main__":
    main()
