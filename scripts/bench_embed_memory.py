"""Peak memory (RSS) and images/s of ``embed`` on one split of N synthetic PNGs (64 px by default).

Builds (once) a lake with N noisy 64-px PNG galaxies in split ``train``, then runs ``embed``
(zoobot-synth, shipped weights) in a fresh process per round and prints that process's peak RSS
(ru_maxrss; DataLoader workers are separate processes and not included) and its images/s.
Point PYTHONPATH-style at another checkout with --code to compare versions in the same run.

    python scripts/bench_embed_memory.py [--n 20000] [--lake /tmp/bench-mem/lake] [--code DIR ...]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from galsae_lake.encoders import embed
from galsae_lake.lake import Lake
lake = Lake(sys.argv[1])
start = time.perf_counter()
out = embed(lake, "zoobot-synth", splits=["train"], tag="bench-mem", force=True, progress=False,
            log=lambda *a: None)
seconds = time.perf_counter() - start
split = out["splits"]["train"]
print(json.dumps({"rows": split["rows"], "images_per_s": round(split["images_per_s"], 1),
                  "wall_s": round(seconds, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def build(root: Path, n: int, size: int = 64) -> None:
    import numpy as np
    import pyarrow as pa
    from PIL import Image

    from galsae_lake.lake import Lake

    lake = Lake(root)
    if lake.exists("images", split="train"):
        return
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] - size / 2
    with lake.transaction("bench-images") as tx:
        writer = tx.writer("images", {"split": "train"})
        for start in range(0, n, 1000):
            ids, blobs = [], []
            for i in range(start, min(n, start + 1000)):
                light = np.exp(-(xx ** 2 + (yy / rng.uniform(0.3, 1)) ** 2) / (2 * (rng.uniform(2, 8) * size / 64) ** 2))
                img = np.clip(light[..., None] * [200, 180, 150] + rng.normal(10, 4, (size, size, 3)),
                              0, 255)
                out = io.BytesIO()
                Image.fromarray(img.astype(np.uint8)).save(out, "PNG")
                ids.append(f"g{i}")
                blobs.append(out.getvalue())
            writer.write(pa.table({"id_str": ids, "image": pa.array(blobs, pa.binary())}))
        writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--lake", default="/tmp/bench-mem/lake")
    parser.add_argument("--code", nargs="*", default=[str(Path(__file__).resolve().parents[1])],
                        help="checkouts to compare (each the folder holding galsae_lake/)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--size", type=int, default=64, help="image side in px (noisy PNG)")
    args = parser.parse_args()
    build(Path(args.lake), args.n, args.size)
    size = sum(f.stat().st_size for f in Path(args.lake, "images").rglob("*.parquet"))
    print(f"images: {args.n} {args.size}-px PNGs, {size / 1e6:.0f} MB on disk", flush=True)
    for _ in range(args.rounds):
        for code in args.code:
            env = {**os.environ, "PYTHONPATH": code}
            done = subprocess.run([sys.executable, "-c", CHILD, args.lake], env=env,
                                  capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{code}: embed failed\n{done.stderr[-2000:]}")
            out = done.stdout
            print(json.dumps({"code": code, **json.loads(out.strip().splitlines()[-1])}), flush=True)


if __name__ == "__main__":
    main()
