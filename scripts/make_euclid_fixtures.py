"""Offline inputs for one run of scripts/reproduce_paper.sh, in the published shapes.

    python scripts/make_euclid_fixtures.py /tmp/euclid-in [--galaxies 80]
    GZ_EUCLID=/tmp/euclid-in/gz_euclid EUCLID_Q1=/tmp/euclid-in/euclid_q1 \
    EUCLID_Q1_EMBEDDINGS=/tmp/euclid-in/euclid_q1_embeddings \
    ZOOBOT_WEIGHTS=/tmp/euclid-in/zoobot-encoder-euclid MAE_WEIGHTS=/tmp/euclid-in/mae-encoder \
    Q1_CATALOGUE=/tmp/euclid-in/morphology_catalogue.parquet SAE_SET="epochs=2" PCA_COMPONENTS=8 \
    bash scripts/reproduce_paper.sh /tmp/euclid-lakes

Writes: a gz_euclid-shaped dataset (ids with the F-006_ release prefix, -euclid count, fraction
and total-votes columns for every label, images), a euclid_q1-shaped repo (NEG ids, 7 in 8 of
the galaxies), its embeddings (block 0/9/10/11 columns, plus 3 galaxies euclid_q1 lacks), the Q1
catalogue (- ids, every galaxy and one more) and random-weight hub folders of both encoders.
The vectors and labels are random: this checks that every step runs, not what it finds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from galsae_lake import gz
from galsae_lake.testing_euclid import (euclid_q1_embeddings, euclid_q1_repo, hub_model_folder,
                                        png, q1_catalogue, spell)


def gz_euclid(folder: Path, splits: dict, rng: np.random.Generator) -> None:
    import datasets

    (folder / "data").mkdir(parents=True, exist_ok=True)
    for split, galaxies in splits.items():
        ids = [spell(g, "gz_euclid") for g in galaxies]
        rows = {"id_str": ids, "image": [{"bytes": png(i, 64), "path": None} for i in range(len(ids))]}
        for question, answers in gz.QUESTIONS.items():
            total = rng.integers(0, 8, len(ids))
            counts = np.stack([rng.multinomial(t, rng.dirichlet(np.ones(len(answers)))) for t in total])
            for j, answer in enumerate(answers):
                rows[f"{question}-euclid_{answer}"] = counts[:, j].tolist()
                rows[f"{question}-euclid_{answer}_fraction"] = [
                    c / t if t else float("nan") for c, t in zip(counts[:, j], total)]
            rows[f"{question}-euclid_total-votes"] = total.tolist()
        features = datasets.Features({
            k: datasets.Image() if k == "image" else datasets.Value("string") if k == "id_str"
            else datasets.Value("float64") if k.endswith("_fraction") else datasets.Value("int64")
            for k in rows})
        datasets.Dataset.from_dict(rows, features=features).to_parquet(
            str(folder / "data" / f"{split}-00000-of-00001.parquet"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--galaxies", type=int, default=80)
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    galaxies = [(str(102000000 + i), str(rng.integers(10**17, 10**18)), bool(i % 3))
                for i in range(args.galaxies)]
    cut = int(0.8 * len(galaxies))
    splits = {"train": galaxies[:cut], "test": galaxies[cut:]}
    gz_euclid(out / "gz_euclid", splits, rng)
    in_q1 = {s: [spell(g, "q1") for g in gs if int(g[0]) % 8] for s, gs in splits.items()}
    euclid_q1_repo(out / "euclid_q1", in_q1, size=64)
    extra = [spell((str(103000000 + i), "1234567", True), "q1") for i in range(3)]
    euclid_q1_embeddings(out / "euclid_q1_embeddings",
                         {"train": [spell(g, "q1") for g in splits["train"]] + extra,
                          "test": [spell(g, "q1") for g in splits["test"]]})
    q1_catalogue(out / "morphology_catalogue.parquet",
                 [spell(g, "catalogue") for g in galaxies] + ["109999999_-1"])
    hub_model_folder(out / "zoobot-encoder-euclid", "convnext_nano")
    hub_model_folder(out / "mae-encoder", "zoobot_vit_small_patch8_224")
    print(f"offline Euclid inputs in {out}")


if __name__ == "__main__":
    main()
