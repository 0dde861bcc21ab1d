"""Is the synthetic world fair? Linear probes on the planted factors, before any encoder.

Draws and renders galaxies (no lake) and prints 5-fold cross-validated ROC AUCs (logistic
regression on standardized inputs, as scripts/bench_probe.py) for:

* ``dust_lane | edge-on`` from the nuisance properties alone (log flux, log size, axis ratio,
  PSF, sky noise): near 0.5 means no shape, size or flux tell; and from raw pixels (the lane
  is visible);
* ``ring | disks`` and ``lens_arc | ellipticals`` from raw pixels (are they visible at this
  image size?), and from the nuisance properties (should be near 0.5);
* each from the hand-designed rotation-invariant ``polar-fourier`` features (galsae_lake.polar):
  a linear probe on raw pixels must learn every position angle and radius separately.

    OMP_NUM_THREADS=1 python scripts/bench_world.py [--n 6000] [--image-size 64] [--seed 7]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_probe import probe_auc  # noqa: E402

from galsae_lake.sources import synthetic as sy  # noqa: E402


def nuisance_matrix(pop: dict[str, np.ndarray]) -> np.ndarray:
    return np.column_stack([np.log(np.maximum(pop["flux"], 1e-3)), np.log(np.maximum(pop["radius"], 1e-3)),
                            pop["axis_ratio"], pop["psf_fwhm"], pop["sky_noise"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--image-size", type=int, default=sy.BASE_SIZE)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    pop = sy.draw_population(args.n, args.image_size, args.seed)
    started = time.perf_counter()
    pixels = np.concatenate([sy.render(pop, np.arange(a, min(a + 256, args.n)), args.image_size, args.seed)
                             for a in range(0, args.n, 256)]).reshape(args.n, -1).astype(np.float32)
    print(f"rendered {args.n} galaxies at {args.image_size} px in {time.perf_counter() - started:.1f} s")
    nuisance = nuisance_matrix(pop)
    import torch

    from galsae_lake.polar import PolarFourier

    with torch.inference_mode():
        images = torch.from_numpy(pixels.reshape(args.n, args.image_size, args.image_size, 3) / 255.0)
        polar = PolarFourier()(images.permute(0, 3, 1, 2).float()).numpy()
    rows = [("dust_lane | edge-on", "dust_lane", pop["edge_on"] > 0),
            ("ring | disks", "ring", pop["disk"] > 0),
            ("lens_arc | ellipticals", "lens_arc", pop["smooth"] > 0)]
    print(f"\nLinear-probe ROC AUC ({args.n} galaxies, {args.image_size} px, seed {args.seed}; 0.5 = chance)")
    print("| probe | positives/population | nuisance only | raw pixels | polar-fourier (hand-designed) |")
    print("|---|---|---|---|---|")
    for name, factor, mask in rows:
        target = (pop[factor][mask] > 0).astype(int)
        a = probe_auc(nuisance[mask], target)
        b = probe_auc(pixels[mask], target)
        c = probe_auc(polar[mask], target)
        print(f"| {name} | {target.sum()}/{mask.sum()} | {a:.3f} | {b:.3f} | {c:.3f} |", flush=True)


if __name__ == "__main__":
    main()
