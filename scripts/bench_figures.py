"""Time `galsae-lake figures` at the real test-split size (35k galaxies, 2048 latents, 64 PCA
components, 46 labels) on a synthetic lake built in the contract's shapes and analyzed by the real
`analyze` (galsae_lake.testing.build_analyzed_lake).

    PYTHONPATH=. .venv/bin/python scripts/bench_figures.py [--galaxies 35000] [--image-size 64]

Prints the time of each stage (load, explained variance, galleries, export, html) and the total;
the target is under 60 s per model. Also times the seed's way of getting the SAE explained-variance
curve (dense StandardScaler + PCA of the codes) against the sparse Gram matrix used here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from galsae_lake import figures as F  # noqa: E402
from galsae_lake.figures.numerics import sparse_code_explained_variance  # noqa: E402
from galsae_lake.testing import PCA_ID, RUN_ID, build_analyzed_lake  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--galaxies", type=int, default=35_000)
    ap.add_argument("--features", type=int, default=2048)
    ap.add_argument("--components", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--image-format", default="html,png")
    ap.add_argument("--keep", help="build the lake here and keep it (reused if it exists)")
    ap.add_argument("--screenshot", help="also save a Chromium screenshot of the SAE's browser.html")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    root = Path(args.keep) if args.keep else Path(tmp.name) / "lake"
    t = time.perf_counter()
    if args.keep and (root / "feature_summary").exists():
        from galsae_lake.lake import Lake

        lake = Lake(root)
        print(f"reusing the lake at {root}")
    else:
        lake = build_analyzed_lake(root, n_galaxies=args.galaxies, n_features=args.features,
                                   n_components=args.components, top_k=64,
                                   image_size=args.image_size, steps=2000)
        print(f"built the synthetic lake in {time.perf_counter() - t:.1f} s "
              f"({args.galaxies} galaxies, {args.features} latents, {args.components} components)")
    for model in (RUN_ID, PCA_ID):
        t = time.perf_counter()
        files = F.make_figures(lake, model, formats=args.image_format.split(","), log=print)
        total = time.perf_counter() - t
        size = sum(p.stat().st_size for p in files) / 1e6
        browser = next((p for p in files if p.name == "browser.html"), None)
        extra = f", browser.html {browser.stat().st_size / 1e6:.1f} MB" if browser else ""
        print(f"{model}: {len(files)} files, {size:.1f} MB{extra}, {total:.1f} s total")
        if args.screenshot and browser and model == RUN_ID:
            screenshot(browser, Path(args.screenshot))

    # the SAE explained-variance curve: sparse Gram matrix vs the seed's dense PCA (same numbers)
    acts = lake.read("sae_activations", run_id=RUN_ID, split="test")
    import polars as pl

    rows = acts["id_str"].cast(pl.Categorical).to_physical().to_numpy()
    feats, vals = acts["feature"].to_numpy(), acts["activation"].to_numpy()
    t = time.perf_counter()
    sparse = sparse_code_explained_variance(rows, feats, vals, args.galaxies, args.features)
    t_sparse = time.perf_counter() - t
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    t = time.perf_counter()
    dense = np.zeros((args.galaxies, args.features), np.float32)
    dense[rows, feats] = vals
    seed = PCA(64).fit(StandardScaler().fit_transform(dense)).explained_variance_ratio_
    t_dense = time.perf_counter() - t
    print(f"SAE explained variance: sparse Gram {t_sparse:.2f} s, seed's dense PCA {t_dense:.2f} s "
          f"({t_dense / t_sparse:.1f}x); max |difference| {np.abs(sparse - seed).max():.2e}")


def screenshot(page_path: Path, target: Path) -> None:
    """Open the browser page in headless Chromium, pick a feature, save a screenshot."""
    import shutil

    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(page_path.as_uri())
        page.check("#f-gal")
        page.click("th[data-key=rho]")
        page.locator("tr.feature-row").nth(2).click()
        page.wait_for_selector("#gallery img")
        target.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target))
        browser.close()
    print(f"screenshot: {target}")


if __name__ == "__main__":
    main()
