"""Memory of the label side of `analyze` at Euclid's size, against the seed's approach.

    python scripts/bench_label_side.py --n 10000000                  # DR1-sized: 10M galaxies
    python scripts/bench_label_side.py --n 3000000 --compare-tree /tmp/old-checkout

The label matrix of `analyze` is [galaxies x 46] float64 (3.4 GB at 10M). What the analysis does
with it besides the SQL: the orthonormal basis of the centred, median-imputed labels behind
novelty (``numpy_engine.label_basis``) and the hand-over of the labels to DuckDB
(``duckdb_engine.register_labels``). Each runs in a fresh child process on real-shaped labels
(vote fractions that follow the Galaxy Zoo Euclid tree, NaN where a question was not asked),
which reports its peak resident memory above the matrix itself (sampled every 10 ms) and its
time. The seed's approach on the same labels: ``SimpleImputer(strategy="median")`` and a
``LinearRegression`` fit (its compute_novelty_via_regression, one feature), run where it fits
in memory (``--seed-max``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, threading, time
import os
import numpy as np
sys.path.insert(0, {tree!r})
from galsae_lake import duckdb_engine, numpy_engine  # the measured tree's (bench_analyze adds ROOT)
assert numpy_engine.__file__.startswith({tree!r}), numpy_engine.__file__
sys.path.insert(0, {scripts!r})
from bench_analyze import vote_fractions
n, step = {n}, {step!r}
rng = np.random.default_rng(0)
labels = np.empty((n, 46), order="F")
for start in range(0, n, 1_000_000):
    labels[start:start + 1_000_000] = vote_fractions(rng, min(1_000_000, n - start))
import duckdb, scipy.linalg, sklearn.linear_model  # imported before the baseline
PAGE = os.sysconf("SC_PAGE_SIZE")
def rss():  # resident bytes now (Linux)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE
base = rss()
peak = [base]
def sample():
    while True:
        peak[0] = max(peak[0], rss())
        time.sleep(0.01)
threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter()
if step == "label_basis":
    out = numpy_engine.label_basis(labels)
    detail = f"basis {{out.shape[1]}} columns, {{out.nbytes / 2**30:.2f}} GB"
elif step == "register_labels":
    con = duckdb.connect()
    con.execute("SET threads = 2")
    duckdb_engine.register_labels(con, labels)
    entries = con.sql("SELECT count(*) FROM labels").fetchall()[0][0]
    detail = f"{{entries:,}} entries in DuckDB's labels (its own memory, spilled past its limit)"
else:
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LinearRegression
    imputed = SimpleImputer(strategy="median").fit_transform(labels)
    y = np.nan_to_num(labels[:, 0])
    LinearRegression().fit(imputed, y)
    detail = "SimpleImputer(median) + one LinearRegression fit"
seconds = time.perf_counter() - t
time.sleep(0.05)
print(json.dumps({{"above_gb": (peak[0] - base) / 2**30, "labels_gb": labels.nbytes / 2**30,
                   "seconds": seconds, "detail": detail}}))
"""


def measure(tree: Path, n: int, step: str) -> dict:
    code = CHILD.format(tree=str(tree), scripts=str(ROOT / "scripts"), n=n, step=step)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3_000_000, help="galaxies")
    parser.add_argument("--compare-tree", action="append", default=[], metavar="PATH",
                        help="also measure the galsae_lake of this checkout (e.g. an older commit)")
    parser.add_argument("--seed-max", type=int, default=3_000_000,
                        help="run the seed's approach only up to this many galaxies")
    args = parser.parse_args()
    results = {}
    for tree in [ROOT, *map(Path, args.compare_tree)]:
        for step in ("label_basis", "register_labels"):
            r = results[tree, step] = measure(tree, args.n, step)
            print(f"[{tree}] {step}: peak {r['above_gb']:.2f} GB above the {r['labels_gb']:.2f} GB "
                  f"label matrix ({args.n:,} x 46), {r['seconds']:.1f} s; {r['detail']}")
    if args.n <= args.seed_max:
        r = measure(ROOT, args.n, "seed")
        print(f"seed's approach: peak {r['above_gb']:.2f} GB above the label matrix, "
              f"{r['seconds']:.1f} s ({r['detail']})")
        ours = results[ROOT, "label_basis"]["above_gb"]
        print(f"memory above the labels, seed / ours (label_basis): {r['above_gb'] / ours:.1f}x")
    else:
        print(f"seed's approach not run above --seed-max {args.seed_max:,} galaxies")


if __name__ == "__main__":
    main()
