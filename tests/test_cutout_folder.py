"""A folder of real-looking cutouts (PNG, JPEG and FITS) with a metadata.csv, plus a flags file:
the astronomer's usual starting point, run end to end through the CLI."""

from __future__ import annotations

import io

import numpy as np
import polars as pl
import pytest
from galsae_lake.testing import cli, lake_hash
from PIL import Image

from galsae_lake.lake import Lake
from galsae_lake.sources import assign_split
from galsae_lake.sources import folder as cutouts
from galsae_lake.sources.synthetic import draw_population, render, truth_matrix

N = 36


def make_folder(root, n: int = N):
    """Synthetic galaxies rendered at 64 px, written as PNG, JPEG and (flux) FITS files."""
    from astropy.io import fits

    pop = draw_population(n, 64, seed=5)
    images = render(pop, np.arange(n), 64, seed=5)
    (root / "images").mkdir(parents=True)
    names, ids = [], []
    for i, image in enumerate(images):
        gid = f"J1000{i:02d}.0+0200{i:02d}"
        if i % 3 == 0:
            name = f"images/{gid}.png"
            Image.fromarray(image).save(root / name)
        elif i % 3 == 1:
            name = f"images/{gid}.jpg"
            Image.fromarray(image).save(root / name, quality=90)
        else:
            name = f"images/{gid}.fits"
            flux = np.sinh(image[..., 2].astype(np.float64) / 40.0) / 100.0  # back to "flux"
            fits.PrimaryHDU(flux.astype(np.float32)).writeto(root / name)
        names.append(name)
        ids.append(gid)
    pl.DataFrame({"file_name": names, "id_str": ids, "ra": np.linspace(150, 151, n),
                  "dec": np.linspace(2, 3, n)}).write_csv(root / "metadata.csv")
    truth = truth_matrix(pop)
    return ids, truth


def test_the_arcsinh_stretch_is_the_euclid_pipelines():
    flux = np.array([[-1.0, 0.0, 0.001], [0.01, 0.1, np.nan]])
    y = np.arcsinh(np.nan_to_num(flux) * 100)
    y = np.clip(y, 0, np.percentile(y, 99.85))
    np.testing.assert_array_equal(cutouts.stretch(flux), np.round(255 * y / y.max()).astype(np.uint8))
    assert cutouts.stretch(np.zeros((4, 4))).max() == 0


def test_assign_split_is_reproducible_and_about_a_fifth_test():
    ids = [f"g{i}" for i in range(2000)]
    first = [assign_split(g) for g in ids]
    assert first == [assign_split(g) for g in reversed(ids)][::-1]
    assert 0.17 < first.count("test") / len(ids) < 0.23
    assert assign_split("102020107_NEG5") == assign_split("102020107_-5")  # normalized ids


def test_folder_of_cutouts_and_a_flags_file_end_to_end(tmp_path):
    folder = tmp_path / "cutouts"
    ids, truth = make_folder(folder)
    root = tmp_path / "lake"
    out = cli("ingest", "hf", "--dataset", folder, lake=root)
    assert out.exit_code == 0, out.output
    assert "one split (train): train/test assigned by a hash" in out.output
    assert "no votes (no Galaxy Zoo label columns)" in out.output
    lake = Lake(root)
    galaxies = lake.read("galaxies")
    assert galaxies.height == N
    want = {g: assign_split(g) for g in ids}
    assert dict(zip(galaxies["id_str"], galaxies["split"])) == want
    # JPEG and PNG bytes are kept as stored; FITS became 8-bit grey PNG by the stated stretch
    images = dict(zip(lake.read("images")["id_str"], lake.read("images")["image"]))
    assert images[ids[1]] == (folder / f"images/{ids[1]}.jpg").read_bytes()
    fits_png = Image.open(io.BytesIO(images[ids[2]]))
    assert fits_png.format == "PNG" and fits_png.mode == "L" and fits_png.size == (64, 64)
    from astropy.io import fits
    flux = fits.getdata(folder / f"images/{ids[2]}.fits")
    np.testing.assert_array_equal(np.asarray(fits_png), cutouts.stretch(flux))

    # the flags: a ring flag (0/1) and the disk size (continuous), one unknown
    from galsae_lake.sources.synthetic import FACTORS
    ring = truth[:, FACTORS.index("ring")]
    flags = pl.DataFrame({"id_str": ids, "ring": (ring > 0).astype(int),
                          "size": np.round(truth[:, 0], 2)}).with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(None).otherwise(pl.col("size")).alias("size"))
    flags.write_csv(tmp_path / "flags.csv")
    for args in (["embed", "--encoder", "zoobot-synth", "--device", "cpu", "--workers", "0"],
                 ["pca", "--encoder", "zoobot-synth", "--n-components", "4"],
                 ["ingest", "labels", tmp_path / "flags.csv"]):
        out = cli(*args, lake=root)
        assert out.exit_code == 0, (args, out.output)
    pca_id = lake.read("pca_runs")["pca_id"][0]
    out = cli("analyze", "--model", pca_id, "--catalog", "flags", "--permutations", "2", lake=root)
    assert out.exit_code == 0, out.output
    n_test = sum(s == "test" for s in want.values())
    assert f"4 features x 2 labels on {n_test} galaxies" in out.output
    corr = lake.read("feature_label_corr", model_id=pca_id, split="test")
    assert set(corr["label"]) == {"ring", "size"}
    out = cli("figures", "--model", pca_id, "--format", "html", "--top", "1", lake=root)
    assert out.exit_code == 0, out.output
    page = (root / "figures" / pca_id / "browser.html").read_text()
    assert '"ring"' in page and '"size"' in page


def test_a_folder_without_file_name_or_with_a_missing_file_is_one_line(tmp_path):
    folder = tmp_path / "cutouts"
    make_folder(folder, n=3)
    meta = pl.read_csv(folder / "metadata.csv")
    root = tmp_path / "lake"
    meta.rename({"file_name": "path"}).write_csv(folder / "metadata.csv")
    out = cli("ingest", "hf", "--dataset", folder, lake=root)
    assert out.exit_code == 1 and "no file_name column" in out.output
    meta.with_columns(pl.col("file_name").str.replace("images/", "gone/")).write_csv(folder / "metadata.csv")
    out = cli("ingest", "hf", "--dataset", folder, lake=root)
    assert out.exit_code == 1 and "not in" in out.output and out.output.count("\n") == 1
    assert lake_hash(root) == ""


@pytest.mark.parametrize("shape", [(3, 16, 16), (16, 16)])
def test_fits_planes(tmp_path, shape):
    from astropy.io import fits
    path = tmp_path / "x.fits"
    fits.PrimaryHDU(np.random.default_rng(0).random(shape).astype(np.float32)).writeto(path)
    image = Image.open(io.BytesIO(cutouts.fits_png(path)))
    assert image.mode == ("RGB" if len(shape) == 3 else "L")


def test_a_jpeg_and_png_folder_loads_through_datasets_imagefolder_with_its_votes(tmp_path):
    folder = tmp_path / "cutouts"
    ids, _ = make_folder(folder, n=9)
    meta = pl.read_csv(folder / "metadata.csv").filter(~pl.col("file_name").str.ends_with(".fits"))
    n = meta.height
    meta = meta.with_columns(pl.Series("smooth-or-featured-euclid_smooth", np.arange(n) % 5),
                             pl.Series("smooth-or-featured-euclid_featured-or-disk", 4 - np.arange(n) % 5),
                             pl.Series("smooth-or-featured-euclid_problem", np.zeros(n, int)))
    meta.write_csv(folder / "metadata.csv")
    for fits_file in (folder / "images").glob("*.fits"):
        fits_file.unlink()
    root = tmp_path / "lake"
    out = cli("ingest", "hf", "--dataset", folder, lake=root)
    assert out.exit_code == 0, out.output
    assert "votes[catalog=volunteers] (tree euclid)" in out.output
    lake = Lake(root)
    assert lake.read("images").height == n
    votes = lake.read("votes")
    assert votes.filter(pl.col("label") == "smooth-or-featured_smooth").sort("id_str")["fraction"].to_list() \
        == [v / 4 for v in (np.arange(n) % 5)[np.argsort(meta["id_str"].to_numpy())]]
    assert lake.read("catalogs")["tree"].to_list() == ["euclid"]
