"""Discovery: the fair world, novelty with a control, stability, the discovery rank, polar-fourier."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import scipy.stats
import torch
from click.testing import CliRunner

from galsae_lake import discovery
from galsae_lake.analysis import analyze
from galsae_lake.cli import main
from galsae_lake.encoders import embed
from galsae_lake.lake import Lake
from galsae_lake.polar import PolarFourier
from galsae_lake.sources import synthetic as sy
from galsae_lake.train import train_sae
from galsae_lake.testing import lake_hash

TINY = ["group_sizes=[16,16,32]", "top_k=4", "epochs=2", "batch_size=64"]


def test_dust_lanes_have_no_shape_size_or_flux_tell():
    pop = sy.draw_population(20000, seed=3)
    edge = pop["edge_on"] > 0
    lane = pop["dust_lane"][edge] > 0
    assert 0.4 < lane.mean() < 0.6
    for name in ("axis_ratio", "radius", "flux", "psf_fwhm", "sky_noise"):
        values = pop[name][edge]
        assert scipy.stats.ks_2samp(values[lane], values[~lane]).pvalue > 1e-3, name


def test_nuisance_factors_are_in_the_truth():
    assert set(sy.NUISANCE) <= set(sy.FACTORS)
    pop = sy.draw_population(500, seed=0)
    assert np.all((pop["sky_noise"] >= 0.8) & (pop["sky_noise"] <= 1.4))


def test_polar_fourier_is_rotation_invariant():
    pop = sy.draw_population(40, seed=1)
    images = torch.from_numpy(sy.render(pop, np.arange(8), seed=1) / 255.0).permute(0, 3, 1, 2).float()
    model = PolarFourier()
    a = model(images)
    b = model(torch.rot90(images, 1, dims=(2, 3)))
    assert a.shape == (8, model.num_features)
    # a quarter turn moves the light centre's sampling grid by whole pixels: equal up to sampling
    assert torch.allclose(a, b, atol=0.03), float((a - b).abs().max())
    assert not torch.allclose(a[0], a[1])


def test_concentration_and_ranks():
    feature = np.array([0] * 10 + [2] * 20)
    value = np.concatenate([np.full(10, 1.0), np.r_[np.full(2, 50.0), np.full(18, 1.0)]])
    c = discovery.concentration(feature, value, 3)
    assert c[0] == pytest.approx(0.1)
    assert np.isnan(c[1])
    assert c[2] == pytest.approx(100 / 118)
    score = discovery.discovery_score(np.array([0.9, 0.99, 0.9, 0.9]), np.array([0.05, 0.05, 0.9, 0.05]),
                                      np.array([0.95, 0.5, 0.95, np.nan]))
    assert score[2] == 0.0                       # outside the frequency band
    assert score[0] > score[1]                   # stable beats novel but unstable
    assert score[3] == pytest.approx(0.9)        # unknown stability counts as 1
    assert list(discovery.ranks(score)) == [1, 2, 3, 0]


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    lake = Lake(tmp_path_factory.mktemp("discovery") / "lake")
    sy.synthesize(lake, 300, seed=2)
    embed(lake, "polar-fourier", progress=False, log=lambda *_: None)
    return lake


def test_polar_fourier_embeds_through_the_encoder_path(lake):
    table = lake.read("embeddings", encoder="polar-fourier", split="test")
    assert table.height > 0 and len(table["embedding"][0]) == PolarFourier().num_features
    with pytest.raises(Exception, match="hand-designed"):
        embed(lake, "polar-fourier", weights="random", progress=False, log=lambda *_: None)


def test_analyze_with_control_and_stability(lake):
    runs = [train_sae(lake, "polar-fourier", config_path="demo", overrides=TINY + [f"random_seed={s}"],
                      progress=False).run_id for s in (1, 2)]
    assert discovery.sibling_runs(lake, runs[0]) == [runs[1]]
    plain = analyze(lake, runs[0], permutations=0, skip_empty_labels=True)
    before = lake.read("feature_summary", model_id=runs[0], split="test").sort("feature")
    analyze(lake, runs[0], permutations=0, skip_empty_labels=True, control="truth")
    after = lake.read("feature_summary", model_id=runs[0], split="test").sort("feature")
    assert plain["features"] == 64 == after.height
    # more regressors: novelty can only go down
    assert (after["novelty"] <= before["novelty"] + 1e-9).all()
    assert (after["novelty"] < before["novelty"] - 1e-6).any()
    assert sorted(after["discovery_rank"].to_list()) == list(range(64))
    stable = after["stability"].drop_nulls()
    assert stable.len() == 64 and ((stable >= 0) & (stable <= 1 + 1e-6)).all()
    live = after.filter(pl.col("frequency") > 0)
    assert live["concentration"].drop_nulls().len() == live.height
    # the score is the documented product
    r2 = after["control_r2"].to_numpy()
    assert ((r2 >= -1e-9) & (r2 <= 1 + 1e-9)).all()
    expected = discovery.discovery_score(after["novelty"].to_numpy(), after["frequency"].to_numpy(),
                                         after["stability"].to_numpy(), r2)
    assert np.allclose(after["discovery_score"].to_numpy(), expected)


def test_control_errors_leave_the_lake_unchanged(lake):
    run = train_sae(lake, "polar-fourier", config_path="demo", overrides=TINY, progress=False).run_id
    before = lake_hash(lake.root)
    result = CliRunner().invoke(main, ["--lake", str(lake.root), "analyze", "--model", run,
                                       "--skip-empty-labels", "--control", "no-such-catalog"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: --control 'no-such-catalog': no such votes catalogue")
    assert lake_hash(lake.root) == before


def test_concentration_in_sql_equals_numpy():
    """sql/feature_concentration.sql (what analyze runs) against discovery.concentration."""
    import duckdb
    import pyarrow as pa

    from galsae_lake import duckdb_engine

    rng = np.random.default_rng(3)
    for n in (500, 400_000):  # one chunk; many, sorted by two threads (places from rowid)
        feature = rng.integers(0, 6, n).astype(np.int32)
        feature[feature == 4] = 5                      # feature 4 never fires
        value = np.round(rng.exponential(1.0, n), 1).astype(np.float32)  # ties at the cut
        con = duckdb.connect()
        con.execute("SET threads = 2")
        con.execute("SET preserve_insertion_order = false")  # as analyze sets it
        con.register("codes", pa.table({"feature": feature, "row": np.arange(n, dtype=np.int32),
                                        "value": value}))
        got = duckdb_engine.concentration(con, 6)
        want = discovery.concentration(feature, value, 6)
        np.testing.assert_allclose(got, want, rtol=1e-12)
        assert np.isnan(got[4])
