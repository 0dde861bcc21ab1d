"""Benchmark the synthetic world: galaxies per second per core at 64 px.

Single thread (BLAS/FFT/OpenMP pinned to one thread before numpy loads). Prints the median of
several runs of: rendering + PNG encoding in batches (what `galsae-lake synth` does), the same
one galaxy at a time (the unbatched approach, for the ratio), the volunteer simulation, and the
whole `synthesize` into a temporary lake.

    python scripts/bench_synth.py [--n 2000] [--repeats 3] [--image-size 64]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from galsae_lake.lake import Lake  # noqa: E402
from galsae_lake.sources import synthetic as sy  # noqa: E402


def timed(func, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    n, size = args.n, args.image_size
    pop = sy.draw_population(n, size, seed=0)

    def batched():
        for start in range(0, n, args.batch_size):
            sy.render_png(pop, np.arange(start, min(start + args.batch_size, n)), size, seed=0)

    single_n = min(n, 300)

    def one_by_one():
        for i in range(single_n):
            sy.render_png(pop, np.array([i]), size, seed=0)

    t_batched = timed(batched, args.repeats)
    t_single = timed(one_by_one, args.repeats)
    t_votes = timed(lambda: sy.simulate_volunteers(pop, seed=0, image_size=size), args.repeats)

    def end_to_end():
        with tempfile.TemporaryDirectory() as tmp:
            sy.synthesize(Lake(tmp), n, image_size=size, seed=0)

    t_all = timed(end_to_end, args.repeats)
    rate_b, rate_s = n / t_batched, single_n / t_single
    print(f"synthetic world, {size} px, 1 thread, median of {args.repeats} runs")
    print(f"  render + PNG, batches of {args.batch_size}: {rate_b:8.0f} galaxies/s")
    print(f"  render + PNG, one at a time:      {rate_s:8.0f} galaxies/s  (batched is {rate_b / rate_s:.1f}x)")
    print(f"  volunteers walking the tree:      {n / t_votes:8.0f} galaxies/s")
    print(f"  synthesize into a lake, all four tables: {n / t_all:8.0f} galaxies/s ({n} galaxies in {t_all:.2f} s)")


if __name__ == "__main__":
    main()
