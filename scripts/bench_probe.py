"""Do the encoders see morphology? Linear-probe AUCs on the synthetic world's planted factors.

Synthesizes galaxies the stand-ins never saw, embeds them with each encoder, and fits a 5-fold
cross-validated logistic regression (C = 0.1 on standardized features) per planted binary factor
(from the ``truth`` table); prints the ROC AUC table (0.5 = chance). Rows ``... | disks`` probe only inside the population where the
factor can occur (face-on or inclined disks, or edge-on disks), so "is it a disk at all" cannot
answer them. ``pixel-stats`` is a baseline of brightness and size alone (per-channel mean and std,
light-weighted radius), what random weights are said to encode.

    python scripts/bench_probe.py [--n 1000] [--encoders zoobot-synth,mae-synth,...] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile

import numpy as np

#: (row name, factor, population) where population is None (all galaxies) or a mask name
PROBES = [
    ("edge_on", "edge_on", None),
    ("spiral", "spiral", None),
    ("spiral | disks", "spiral", "face_disk"),
    ("bar", "bar", None),
    ("bar | disks", "bar", "face_disk"),
    ("ring | disks", "ring", "face_disk"),
    ("clumps | disks", "clumps", "face_disk"),
    ("smooth", "smooth", None),
    ("merger", "merger", None),
    ("lens_arc", "lens_arc", None),
    ("dust_lane | edge-on", "dust_lane", "edge_on"),
    ("foreground_star", "foreground_star", None),
]

DEFAULT_ENCODERS = [
    ("zoobot-synth", None), ("mae-synth", None),
    ("zoobot-synth", "random"), ("mae-synth", "random"),
    ("zoobot-euclid", "random"), ("mae-euclid", "random"),
]


def pixel_stats(blobs: list[bytes]) -> np.ndarray:
    from PIL import Image

    rows = []
    for blob in blobs:
        x = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"), dtype=np.float32) / 255
        light = x.mean(2)
        h, w = light.shape
        yy, xx = np.mgrid[:h, :w]
        total = light.sum() + 1e-6
        cy, cx = (light * yy).sum() / total, (light * xx).sum() / total
        radius = np.sqrt((light * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum() / total)
        rows.append([*x.mean((0, 1)), *x.std((0, 1)), radius, light.max()])
    return np.asarray(rows, np.float32)


def probe_auc(features: np.ndarray, target: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    positives = int(target.sum())
    if positives < folds or len(target) - positives < folds:
        return float("nan")
    # one fixed, moderate L2 strength on standardized features for every encoder (nested CV over
    # C was too slow for a benchmark on 2 cores)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    scores = cross_val_predict(model, features, target,
                               cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                               method="decision_function")
    return float(roc_auc_score(target, scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7, help="synthetic world seed (unseen in training)")
    parser.add_argument("--encoders", default=None,
                        help="comma-separated NAME or NAME:WEIGHTS [default: stand-ins, their random "
                             "versions and the random Euclid architectures]")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import polars as pl

    from galsae_lake.encoders import extract, load_encoder
    from galsae_lake.lake import Lake
    from galsae_lake.sources.synthetic import synthesize

    lake = Lake(tempfile.mkdtemp(prefix="galsae-probe-"))
    synthesize(lake, args.n, seed=args.seed)
    images = lake.arrow("images", columns=["id_str", "image"])
    ids = images.column("id_str").to_pylist()
    blobs = images.column("image").to_pylist()
    truth = (lake.read("truth").pivot(on="factor", index="id_str", values="value")
             .join(pl.DataFrame({"id_str": ids}), on="id_str", how="right"))
    factor = {name: truth[name].fill_null(0).to_numpy() for name in truth.columns if name != "id_str"}
    populations = {None: np.ones(len(ids), bool),
                   "face_disk": factor["disk"] > 0, "edge_on": factor["edge_on"] > 0}

    encoders = DEFAULT_ENCODERS if args.encoders is None else [
        (item.split(":", 1)[0], item.split(":", 1)[1] if ":" in item else None)
        for item in args.encoders.split(",")]
    features = {"pixel-stats": pixel_stats(blobs)}
    for name, weights in encoders:
        model, info = load_encoder(name, weights, lake)
        label = f"{name} ({info.weights}, {info.embedding_dim}-d, {info.input_size} px)"
        result = extract(model, info, images.column("image").combine_chunks(), device=args.device,
                         progress=label)
        assert len(result.kept) == len(ids), "a synthetic image failed to decode"
        features[label] = result.embeddings
        print(f"embedded {len(ids)} with {label} in {result.seconds:.0f} s", flush=True)

    table = {}
    for label, x in features.items():
        row = {}
        for probe, name, population in PROBES:
            mask = populations[population]
            row[probe] = probe_auc(x[mask], (factor[name][mask] > 0).astype(int))
        table[label] = row
    counts = {probe: f"{int((factor[name][populations[pop]] > 0).sum())}/{int(populations[pop].sum())}"
              for probe, name, pop in PROBES}
    width = max(map(len, table)) + 2
    print(f"\nLinear-probe ROC AUC, {args.n} unseen synthetic galaxies, 5-fold CV (0.5 = chance)")
    print("positives/population: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    header = "| encoder".ljust(width) + " | " + " | ".join(p for p, _, _ in PROBES) + " |"
    print(header)
    print("|" + "-" * (width - 1) + "|" + "|".join("-" * (len(p) + 2) for p, _, _ in PROBES) + "|")
    for label, row in table.items():
        cells = " | ".join(f"{row[p]:.3f}".ljust(len(p)) for p, _, _ in PROBES)
        print(f"| {label}".ljust(width) + " | " + cells + " |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"n": args.n, "seed": args.seed, "positives": counts, "auc": table}, handle,
                      indent=1)
    shutil.rmtree(lake.root, ignore_errors=True)


if __name__ == "__main__":
    main()
