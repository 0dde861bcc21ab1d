"""The engines beyond one machine against the plain single-process paths, in the same run.

``ray``: embeddings per second of ``embed --engine ray`` on a local Ray cluster against the plain
loop (``--engine local``), on the same synthetic images (zoobot-synth, fp32). Ray's time counts
the pipeline and its actors' start, not ``ray.init`` (printed apart).
``ddp``: SAE training steps per second with ``torchrun --nproc-per-node N`` against one process,
on the same planted embeddings and config (``train_seconds`` and ``steps`` from ``sae_runs``).

    python scripts/bench_engines.py ray --n 512
    python scripts/bench_engines.py ddp --rows 20000 --dim 320 --nproc 2
    python scripts/bench_engines.py ddp --device cuda --nproc 1      # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bench_ray(args) -> None:
    import ray

    from galsae_lake.encoders import embed
    from galsae_lake.lake import Lake
    from galsae_lake.sources.synthetic import synthesize

    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake(Path(tmp) / "lake")
        synthesize(lake, args.n, seed=0)
        common = dict(precision="fp32", progress=False, log=lambda _: None, splits=["train"],
                      force=True, device=args.device)
        rates = {}
        start = time.perf_counter()
        out = embed(lake, "zoobot-synth", **common)
        rows = out["splits"]["train"]["rows"]
        rates["local"] = rows / (time.perf_counter() - start)
        start = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        init = time.perf_counter() - start
        try:
            start = time.perf_counter()
            embed(lake, "zoobot-synth", engine="ray", **common)
            rates["ray"] = rows / (time.perf_counter() - start)
        finally:
            ray.shutdown()
    print(f"embed {rows} images (64 px, zoobot-synth, fp32), {args.cpus} CPUs for Ray:")
    print(f"  plain loop:        {rates['local']:8.1f} images/s")
    print(f"  ray (local):       {rates['ray']:8.1f} images/s   (ray.init {init:.1f} s not counted)")
    print(f"  ratio plain / ray: {rates['local'] / rates['ray']:8.2f}x")


def bench_ddp(args) -> None:
    import pyarrow as pa

    from galsae_lake.lake import Lake, vector_array

    rng = np.random.default_rng(0)
    atoms = rng.normal(size=(1024, args.dim)).astype(np.float32)
    pick = rng.integers(0, 1024, size=(args.rows, 16))
    X = atoms[pick].sum(1) + 0.1 * rng.normal(size=(args.rows, args.dim)).astype(np.float32)
    sets = ["epochs=%d" % args.epochs, "group_sizes=[64,64,128,256,512,1024]", "top_k=64",
            f"device={args.device}", "log_every=1000"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, args.nproc):
            lake = Lake(Path(tmp) / f"lake{n}")
            with lake.transaction("bench") as tx:
                tx.write("embeddings", pa.table({"id_str": [f"g{i}" for i in range(args.rows)],
                                                 "embedding": vector_array(X)}),
                         partition={"encoder": "planted", "split": "train"})
            cmd = ["-m", "galsae_lake", "--lake", str(lake.root), "train-sae", "--encoder",
                   "planted", "--quiet"] + [a for s in sets for a in ("--set", s)]
            if n > 1:
                cmd = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                       str(n)] + cmd
            done = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env=env)
            if done.returncode:
                sys.exit(done.stderr[-2000:])
            metrics = json.loads(lake.read("sae_runs")["metrics"][0])
            result[n] = (metrics["steps"] / metrics["train_seconds"], metrics["fvu"])
    print(f"train-sae {args.rows} x {args.dim}, 2048 latents, k=64, batch 256, "
          f"{args.epochs} epoch(s), {args.device}, {args.threads} thread(s) per process:")
    for n, (rate, fvu) in result.items():
        print(f"  {n} process(es): {rate:8.2f} steps/s   fvu {fvu:.4f}")
    print(f"  speed-up {args.nproc} vs 1: {result[args.nproc][0] / result[1][0]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    ray = sub.add_parser("ray")
    ray.add_argument("--n", type=int, default=512)
    ray.add_argument("--cpus", type=int, default=len(os.sched_getaffinity(0)))
    ray.add_argument("--device", default="cpu")
    ddp = sub.add_parser("ddp")
    ddp.add_argument("--rows", type=int, default=20000)
    ddp.add_argument("--dim", type=int, default=320)
    ddp.add_argument("--epochs", type=int, default=1)
    ddp.add_argument("--nproc", type=int, default=2)
    ddp.add_argument("--threads", type=int, default=1)
    ddp.add_argument("--device", default="cpu")
    args = parser.parse_args()
    (bench_ray if args.part == "ray" else bench_ddp)(args)


if __name__ == "__main__":
    main()
