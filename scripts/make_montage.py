"""Write docs/synth_montage.png: one row per planted factor of the synthetic world.

Each row shows the first galaxies (in seed order, not hand-picked) that carry the factor, so a
reader can check by eye that the factor is visible. Rows of morphology factors skip galaxies with
contaminants (stars, trails, cosmic rays) and mergers so the row shows the factor itself.

    python scripts/make_montage.py [--out docs/synth_montage.png] [--per-row 8] [--seed 0] [--scale 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from galsae_lake.sources import synthetic as sy


def rows(pop: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """(label, mask) per montage row."""
    clean = ((pop["foreground_star"] == 0) & (pop["satellite_trail"] == 0) & (pop["cosmic_rays"] == 0)
             & (pop["merger"] == 0) & (pop["disturbance"] == 0))
    face = pop["axis_ratio"] > 0.6
    pitch = np.nan_to_num(pop["pitch_angle"])
    plain_disk = (pop["disk"] > 0) & (pop["spiral"] == 0) & (pop["bar"] == 0) & (pop["ring"] == 0) \
        & (pop["clumps"] == 0)
    return [
        ("smooth (elliptical)", (pop["smooth"] > 0) & (pop["lens_arc"] == 0) & clean),
        ("smooth, cigar-shaped", (pop["smooth"] > 0) & (pop["axis_ratio"] < 0.5) & clean),
        ("disk, no features", plain_disk & clean),
        ("edge-on, rounded bulge", (pop["bulge_rounded"] > 0) & (pop["dust_lane"] == 0) & clean),
        ("edge-on, boxy bulge", (pop["bulge_boxy"] > 0) & (pop["dust_lane"] == 0) & clean),
        ("edge-on, dust lane", (pop["dust_lane"] > 0) & clean),
        ("spiral, 2 arms, tight", (pop["arm_count"] == 2) & (pitch < 15) & face & clean & (pop["bar"] == 0)),
        ("spiral, 2 arms, loose", (pop["arm_count"] == 2) & (pitch > 25) & face & clean & (pop["bar"] == 0)),
        ("spiral, 3+ arms", (pop["arm_count"] >= 3) & face & clean & (pop["bar"] == 0)),
        ("bar", (pop["bar_strength"] > 0.6) & face & clean & (pop["spiral"] == 0)),
        ("ring", (pop["ring"] > 0) & face & clean & (pop["spiral"] == 0)),
        ("clumps", (pop["clumps"] > 0) & face & clean & (pop["spiral"] == 0)),
        ("merger", pop["merger"] > 0),
        ("disturbance (tails)", (pop["disturbance"] == 2)),
        ("lensing arc", pop["lens_arc"] > 0),
        ("central star", pop["central_star"] > 0),
        ("foreground star", (pop["foreground_star"] > 0) & (pop["diffraction_spikes"] == 0)),
        ("diffraction spikes", pop["diffraction_spikes"] > 0),
        ("satellite trail", pop["satellite_trail"] > 0),
        ("cosmic rays", pop["cosmic_rays"] >= 2),
    ]


def montage(n: int = 6000, per_row: int = 8, seed: int = 0, image_size: int = 64,
            scale: int = 2) -> Image.Image:
    pop = sy.draw_population(n, image_size, seed)
    spec = rows(pop)
    cell, label_w = image_size * scale, 190
    sheet = Image.new("RGB", (label_w + per_row * (cell + 2), len(spec) * (cell + 2)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, mask) in enumerate(spec):
        chosen = np.flatnonzero(mask)[:per_row]
        if len(chosen):
            for c, image in enumerate(sy.render(pop, chosen, image_size, seed)):
                tile = Image.fromarray(image).resize((cell, cell), Image.NEAREST)
                sheet.paste(tile, (label_w + c * (cell + 2), r * (cell + 2)))
        draw.text((6, r * (cell + 2) + cell // 2 - 6), f"{label} ({mask.mean():.1%})", fill="black")
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/synth_montage.png")
    parser.add_argument("--per-row", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=1)
    args = parser.parse_args()
    sheet = montage(per_row=args.per_row, seed=args.seed, scale=args.scale)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB, {sheet.size[0]}x{sheet.size[1]} px)")


if __name__ == "__main__":
    main()
