"""export hats: a HATS catalogue of the galaxies with their top SAE features and PCA scores, read
back and cross-matched with a second local catalogue in LSDB."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

lsdb = pytest.importorskip("lsdb")

from galsae_lake.testing import assert_one_line_error, cli, lake_hash  # noqa: E402


@pytest.mark.slow  # fresh processes / a JVM / a Ray cluster
def test_export_hats_and_crossmatch(small_lake, tmp_path):
    lake, run_id, pca_id = small_lake
    out = tmp_path / "cat"
    before = lake_hash(lake.root)
    result = cli("export", "hats", "--model", run_id, "--out", str(out), "--top", "3",
                 lake=lake.root)
    assert result.exit_code == 0, result.output
    assert lake_hash(lake.root) == before  # --out outside the lake: the lake is untouched
    ours = lsdb.open_catalog(out)
    frame = ours.compute()
    galaxies = lake.read("galaxies")
    assert len(frame) == galaxies.height == 300
    assert set(frame.columns) >= {"id_str", "ra", "dec", "top_features", "top_activations",
                                  "n_active", "pca_scores"}
    one = frame.iloc[0]
    acts = lake.read("sae_activations", run_id=run_id).filter(id_str=one["id_str"]).sort(
        ["activation", "feature"], descending=[True, False])
    assert list(one["top_features"]) == acts["feature"].to_list()[:3]
    assert one["n_active"] == acts.height
    assert len(one["pca_scores"]) == 8
    # HEALPix partitioned: the partitions' pixels cover every galaxy once
    assert sum(len(ours.get_partition(p.order, p.pixel).compute())
               for p in ours.get_healpix_pixels()) == 300
    # a second local catalogue: 40 of our galaxies, 0.5 arcsec away, with a label of their own
    rng = np.random.default_rng(0)
    picked = frame.sample(40, random_state=0)
    other = pd.DataFrame({
        "name": "obj-" + picked["id_str"].astype(str).to_numpy(),
        "ra": picked["ra"].to_numpy() + 0.5 / 3600 / np.cos(np.deg2rad(picked["dec"].to_numpy())),
        "dec": picked["dec"].to_numpy(), "redshift": rng.uniform(0, 1, 40)})
    lsdb.from_dataframe(other, ra_column="ra", dec_column="dec").write_catalog(
        tmp_path / "other", catalog_name="other", progress_bar=False)
    matched = ours.crossmatch(lsdb.open_catalog(tmp_path / "other"), radius_arcsec=2.0,
                              n_neighbors=1, suffixes=("", "_other")).compute()
    assert len(matched) == 40
    assert sorted("obj-" + matched["id_str"]) == sorted(matched["name_other"])
    assert np.allclose(matched["_dist_arcsec"], 0.5, atol=0.01)


def test_export_hats_bad_model_is_one_line(small_lake, tmp_path):
    lake, _, _ = small_lake
    result = cli("export", "hats", "--model", "sae-nope-000000", "--out", str(tmp_path / "x"),
                 lake=lake.root)
    assert_one_line_error(result, "sae-nope-000000")
    assert not (tmp_path / "x").exists()
