"""Time and memory of the main job: `galsae-lake demo` on a fresh lake, then again on the same lake.

    python scripts/bench_demo.py [--n 10000] [--runs 2] [--lake DIR]

Each run is a separate process (as a user runs it); its wall time and peak resident memory
(ru_maxrss of the child) are printed, with the per-stage times the demo reports. Targets: first
run <= 10 min, second <= 5 min, peak memory < 4 GB on the 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(lake: Path, n: int) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "galsae_lake", "--lake", str(lake), "demo",
                           "--n", str(n)], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"demo failed:\n{proc.stderr[-3000:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    stages = re.findall(r"^\[\d+/\d+\] (.+): ([\d.]+) s$", proc.stderr, flags=re.M)
    return {"seconds": seconds, "peak_gb": max(peak_kb, before) / 1024 ** 2,
            "stages": stages, "summary": proc.stdout}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--lake", type=Path, default=None)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    lake = args.lake or folder / "lake"
    if lake.exists():
        shutil.rmtree(lake)
    print(f"demo --n {args.n} on {os.cpu_count()} cores, lake {lake}")
    results = []
    for i in range(args.runs):
        result = run_once(lake, args.n)
        results.append(result)
        label = "first run (fresh lake)" if i == 0 else f"run {i + 1} (same lake)"
        # ru_maxrss of children is the largest child so far: exact for the first run, an upper
        # bound for later ones
        print(f"{label}: {result['seconds']:.0f} s ({result['seconds'] / 60:.1f} min), "
              f"peak memory {result['peak_gb']:.2f} GB")
        for name, seconds in result["stages"]:
            print(f"    {name:<28} {float(seconds):6.1f} s")
    print()
    print(results[-1]["summary"])
    if args.lake is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
