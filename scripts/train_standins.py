"""Make the package's shipped stand-in weights: galsae_lake/weights/{zoobot-synth,mae-synth}/.

Deterministic: synthesizes its own galaxies (a seed the demo does not use, so the demo's galaxies
are unseen), trains each stand-in with ``galsae-lake train-encoder``'s code into a scratch lake,
and copies the hub-layout folders (config.json + float16 model.safetensors, each under 10 MB)
into the package.

    python scripts/train_standins.py [--n 8000] [--seed 2026] [--zoobot-epochs 24] [--mae-epochs 12]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from galsae_lake.encoders import SHIPPED_WEIGHTS
from galsae_lake.lake import Lake
from galsae_lake.sources.synthetic import synthesize
from galsae_lake.standins import train_encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8000, help="synthetic galaxies (80%% train)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--zoobot-epochs", type=int, default=24)
    parser.add_argument("--mae-epochs", type=int, default=12)
    parser.add_argument("--only", choices=["zoobot-synth", "mae-synth"], default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=SHIPPED_WEIGHTS)
    parser.add_argument("--lake", type=Path, default=None, help="scratch lake [default: a temp dir]")
    args = parser.parse_args()

    scratch = args.lake or Path(tempfile.mkdtemp(prefix="galsae-standins-"))
    lake = Lake(scratch)
    if not lake.exists("images"):
        synthesize(lake, args.n, seed=args.seed)
    epochs = {"zoobot-synth": args.zoobot_epochs, "mae-synth": args.mae_epochs}
    for name in ([args.only] if args.only else list(epochs)):
        start = time.perf_counter()
        summary = train_encoder(lake, name, epochs=epochs[name], seed=args.seed, device=args.device)
        target = args.out / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(lake.model_dir("encoders", name), target)
        size = (target / "model.safetensors").stat().st_size / 1e6
        print(json.dumps({"encoder": name, "seconds": round(time.perf_counter() - start, 1),
                          "n_images": summary["n_images"], "final_loss": summary["losses"][-1],
                          "weights_mb": round(size, 2), "out": str(target)}))
    if args.lake is None:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
