"""Figures: chart data and encodings (not pixels), the export, the CLI and the feature browser.

The lake is built by `galsae_lake.testing.build_analyzed_lake`: model tables in the contract's
shapes, analyzed by the real `analyze` stage (also used by scripts/bench_figures.py at the real
test-split size).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil

import numpy as np
import polars as pl
import pytest
from PIL import Image

from galsae_lake import figures as F
from galsae_lake.errors import InputError
from galsae_lake.figures import browser as B
from galsae_lake.figures import build as FB
from galsae_lake.figures import charts as FC
from galsae_lake.figures import numerics as FN
from galsae_lake.gz import LABEL_NAMES
from galsae_lake.lake import Lake
from galsae_lake.testing import ENCODER, PCA_ID, RUN_ID, assert_refused, build_analyzed_lake, cli


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    return build_analyzed_lake(tmp_path_factory.mktemp("figlake") / "lake")


@pytest.fixture(scope="module")
def data(lake) -> F.FigureData:
    return F.load_figure_data(lake, RUN_ID)


def _null_q95(lake: Lake, model_id: str, method: str, secondary_question: str = "") -> float:
    """The largest per-label null_q95 in label_null (outside ``secondary_question``'s labels)."""
    null = lake.read("label_null", model_id=model_id, split="test").filter(
        pl.col("method") == method)
    if secondary_question:
        null = null.filter(~pl.col("label").str.starts_with(secondary_question + "_"))
    return float(null["null_q95"].max())


def _layers(spec: dict, data: str | None = None) -> list[dict]:
    """Every unit spec (with a mark) inside a compound Vega-Lite spec; "_data" names its dataset."""
    data = spec.get("data", {}).get("name", data)
    out = []
    if "mark" in spec:
        out.append({**spec, "_data": data})
    for key in ("layer", "vconcat", "hconcat", "concat"):
        for sub in spec.get(key, []):
            out += _layers(sub, data)
    if "spec" in spec:
        out += _layers(spec["spec"], data)
    return out


def _values(spec: dict, unit: dict) -> list[dict]:
    return spec["datasets"][unit["_data"]]


# ---------------------------------------------------------------- data gathering
def test_load_pairs_newest_analyzed_pca_of_same_encoder(lake, data):
    assert data.kind == "sae" and data.encoder == ENCODER
    assert data.baseline_id == PCA_ID and data.pca_id == PCA_ID  # fitted after OLD_PCA_ID
    assert data.features.height == 96 and data.baseline.height == 16
    # position follows frequency rank
    top = data.features.sort("position").head(3)
    freq = data.features.sort("frequency", descending=True)["frequency"].head(3).to_list()
    assert top["frequency"].to_list() == freq
    assert data.null is not None and data.null.height == len(LABEL_NAMES)
    assert data.null["null_max_abs"].max() == pytest.approx(_null_q95(lake, RUN_ID, "sae"))


def test_figures_read_the_secondary_view_the_analysis_recorded(lake, data):
    summary = lake.read("feature_summary", model_id=RUN_ID, split="test").sort("feature")
    got = data.features.sort("feature")
    assert got["max_abs_secondary"].to_list() == summary["max_abs_spearman_secondary"].to_list()
    assert got["best_label_secondary"].to_list() == summary["best_label_secondary"].to_list()
    assert data.excluded_question == "smooth-or-featured"


def test_figures_and_browser_follow_analyze_exclude_question(tmp_path):
    """`analyze --exclude-question` decides what the figures and the browser leave out."""
    lake = build_analyzed_lake(tmp_path / "lake", n_galaxies=60, with_images=False,
                               exclude_question="has-spiral-arms")
    data = F.load_figure_data(lake, RUN_ID)
    assert data.excluded_question == "has-spiral-arms"
    payload = B.browser_data(lake, data, top=0)
    assert payload["secondaryExcluded"] == "has-spiral-arms"
    left_out = [label for label, out in zip(payload["labels"], payload["leftOut"]) if out]
    assert left_out == ["has-spiral-arms_yes", "has-spiral-arms_no"]
    spec = {f.name: f for f in FB.comparison_figures(data)}["max_rho_secondary"].chart.to_dict()
    assert spec["title"]["text"] == "Alignment with GZ labels, has-spiral-arms left out"
    rule = [u for u in _layers(spec) if u["mark"]["type"] == "rule"][0]
    assert _values(spec, rule)[0]["x"] == pytest.approx(
        _null_q95(lake, RUN_ID, "sae", "has-spiral-arms"))


def test_missing_analysis_is_one_clear_error(lake):
    with pytest.raises(InputError, match="galsae-lake analyze --model sae-nope-000000"):
        F.load_figure_data(lake, "sae-nope-000000")


def test_without_pca_the_comparison_is_skipped_with_a_note(tmp_path):
    lake = build_analyzed_lake(tmp_path / "lake", n_galaxies=60, with_pca=False, permutations=0,
                               with_images=False)
    data = F.load_figure_data(lake, RUN_ID)
    assert data.baseline is None and data.pca_id is None and data.null is None
    assert any("PCA comparison is left out" in n for n in data.notes)
    figs = {f.name: f for f in FB.comparison_figures(data)}
    spec = figs["max_rho"].chart.to_dict()
    series = {v["series"] for u in _layers(spec) for v in _values(spec, u) if "series" in v}
    assert series == {"SAE (top 64 by frequency)"}
    assert not any(u["mark"]["type"] == "rule" for u in _layers(spec))


# ---------------------------------------------------------------- chart data and encodings
def test_max_rho_chart_data_and_encodings(lake, data):
    figs = {f.name: f for f in FB.comparison_figures(data)}
    assert set(figs) == {"max_rho", "max_rho_by_rank_group", "max_rho_secondary",
                         "max_rho_by_rank_group_secondary", "novelty", "novelty_by_rank_group"}
    spec = figs["max_rho"].chart.to_dict()
    units = _layers(spec)
    line, rule, text, rule2, text2, rug = units
    assert line["mark"]["type"] == "line" and rug["mark"]["type"] == "tick"
    assert line["encoding"]["x"]["field"] == "x" and line["encoding"]["y"]["field"] == "density"
    assert line["encoding"]["color"]["field"] == "series"
    assert rug["encoding"]["x"]["field"] == "value"
    assert rug["encoding"]["x"]["scale"]["domain"] == [0, 1]
    # the rug holds exactly the top-64 SAE features by frequency and the 16 PCA components
    values = pl.DataFrame(_values(spec, rug))
    sae = values.filter(pl.col("series").str.starts_with("SAE"))
    expected = data.features.filter(pl.col("position") < 64)
    assert sorted(sae["feature"].to_list()) == sorted(expected["feature"].to_list())
    got = dict(zip(sae["feature"], sae["value"]))
    assert all(got[f] == pytest.approx(v) for f, v in zip(expected["feature"], expected["max_abs"]))
    pca = values.filter(pl.col("series").str.starts_with("PCA"))
    assert pca.height == 16 and pca["series"][0] == "PCA (first 16 components)"
    # density curves integrate to ~1 over [0, 1] (values lie well inside)
    curves = pl.DataFrame(_values(spec, line))
    for (_,), c in curves.group_by("series"):
        assert np.trapezoid(c["density"], c["x"]) == pytest.approx(1.0, abs=0.12)
    # the permutation nulls of both models: the largest per-label 95th percentile of each
    assert rule["mark"]["type"] == "rule" and text["mark"]["type"] == "text"
    nulls = [_null_q95(lake, RUN_ID, "sae"), _null_q95(lake, PCA_ID, "pca")]
    assert [_values(spec, r)[0]["x"] for r in (rule, rule2)] == pytest.approx(nulls)
    assert [r["mark"]["color"] for r in (rule, rule2)] == [FC.SAE_COLOR, FC.PCA_COLOR]
    assert [_values(spec, t)[0]["text"] for t in (text, text2)] == [
        f"SAE null {nulls[0]:.2f}", f"PCA null {nulls[1]:.2f}"]
    assert "permutation null" in spec["title"]["subtitle"][-1]
    assert spec["title"]["text"] == "Alignment with Galaxy Zoo labels"
    what, model, _ = spec["title"]["subtitle"]
    assert what == "The 64 most frequent SAE features vs the first 16 PCA components"
    assert "96 latents" in model and PCA_ID in model and "test split" in model


def test_secondary_null_leaves_out_smooth_or_featured(lake, data):
    figs = {f.name: f for f in FB.comparison_figures(data)}
    spec = figs["max_rho_secondary"].chart.to_dict()
    assert spec["title"]["text"] == "Alignment with GZ labels, smooth-or-featured left out"
    rule = [u for u in _layers(spec) if u["mark"]["type"] == "rule"][0]
    want = _null_q95(lake, RUN_ID, "sae", "smooth-or-featured")
    assert _values(spec, rule)[0]["x"] == pytest.approx(want)
    rug = _layers(spec)[-1]
    values = pl.DataFrame(_values(spec, rug)).filter(pl.col("series").str.starts_with("SAE"))
    want = dict(zip(data.features["feature"], data.features["max_abs_secondary"]))
    assert all(want[f] == pytest.approx(v) for f, v in zip(values["feature"], values["value"]))


def test_rank_groups_and_novelty(data):
    assert FN.rank_group_edges(2048) == [0, 64, 128, 256, 512, 1024, 2048]
    assert FN.rank_group_edges(96) == [0, 64, 96]
    figs = {f.name: f for f in FB.comparison_figures(data)}
    spec = figs["novelty_by_rank_group"].chart.to_dict()
    rug = _layers(spec)[-1]
    values = pl.DataFrame(_values(spec, rug))
    counts = dict(values.group_by("series").len().iter_rows())
    kept = data.features.filter(pl.col("frequency") > FN.MIN_FREQUENCY).sort("position")
    assert 64 < kept.height < 96  # the synthetic lake has a few rare latents
    assert counts == {"SAE 0–64": 64, "SAE 64–96": kept.height - 64,
                      "PCA (first 16 components)": 16}
    first = set(values.filter(pl.col("series") == "SAE 0–64")["feature"].to_list())
    assert first == set(kept.head(64)["feature"].to_list())
    assert spec["title"]["subtitle"][0].startswith(f"The {kept.height} of 96 SAE features active")
    nov = dict(zip(data.features["feature"], data.features["novelty"]))
    sae = values.filter(pl.col("series").str.starts_with("SAE"))
    assert all(nov[f] == pytest.approx(v) for f, v in zip(sae["feature"], sae["value"]))
    color = _layers(spec)[0]["encoding"]["color"]["scale"]
    assert color["range"][:2] == list(FC.GROUP_COLORS[:2]) and color["range"][-1] == FC.PCA_COLOR
    assert "novelty" in spec["title"]["text"].lower() and not any(
        u["mark"]["type"] == "rule" for u in _layers(spec))  # no null for novelty


def test_missing_values_are_left_out():
    sae = pl.DataFrame({"feature": [0, 1, 2, 3], "position": [0, 1, 2, 3],
                        "frequency": [0.5, 0.4, 0.3, 0.001], "novelty": [0.5, float("nan"), None, 0.2]})
    values = FN.comparison_values(sae, None, "novelty", by_group=False)
    assert values["feature"].to_list() == [0, 3]
    values = FN.comparison_values(sae, None, "novelty", by_group=True, min_frequency=0.01)
    assert values["feature"].to_list() == [0]


def test_kde_matches_scipy_with_seaborn_bandwidth():
    from scipy.stats import gaussian_kde

    x = np.random.default_rng(1).uniform(0.2, 0.8, 50)
    curves = FN.kde_curves(pl.DataFrame({"series": "a", "value": x}))
    ref = gaussian_kde(x, bw_method=gaussian_kde(x).factor * FN.BW_ADJUST)(curves["x"].to_numpy())
    assert np.allclose(curves["density"], ref, rtol=1e-6)
    single = FN.kde_curves(pl.DataFrame({"series": ["b", "b"], "value": [0.3, 0.3]}))
    assert single.is_empty()


def test_run_figures(lake, data):
    figs = {f.name: f for f in FB.run_figures(lake, data, {})}
    assert set(figs) == {"fvu_per_level", "explained_variance", "training_curves"}
    fvu = figs["fvu_per_level"].chart.to_dict()
    units = _layers(fvu)
    assert [u["mark"]["type"] for u in units] == ["line", "point", "text"]
    enc = units[1]["encoding"]
    assert enc["x"]["field"] == "latents" and enc["y"]["field"] == "fvu"
    assert enc["x"]["scale"]["type"] == "log"
    rows = _values(fvu, units[0])
    assert [r["latents"] for r in rows] == [3, 6, 12, 24, 48, 96]
    assert rows[0]["fvu"] == pytest.approx(0.6)
    ev = figs["explained_variance"].chart.to_dict()
    rows = pl.DataFrame(_values(ev, _layers(ev)[0]))
    assert _layers(ev)[0]["encoding"]["y"]["field"] == "cumulative"
    pca = rows.filter(pl.col("method").str.starts_with("PCA"))
    evr = Lake(lake.root).read("pca_components", pca_id=PCA_ID).sort("component")
    cum = np.cumsum(evr["explained_variance_ratio"].to_numpy())
    assert pca["components"].to_list() == [1, 2, 4, 8, 16]
    assert np.allclose(pca["cumulative"], cum[[0, 1, 3, 7, 15]])
    sae = rows.filter(pl.col("method").str.starts_with("SAE"))
    assert sae["components"].to_list() == [1, 2, 4, 8, 16, 32, 64]
    assert (np.diff(sae["cumulative"].to_numpy()) > 0).all() and sae["cumulative"].max() <= 1
    tr = figs["training_curves"].chart.to_dict()
    assert tr["spec"]["mark"]["type"] == "line" and tr["facet"]["field"] == "metric"
    assert tr["spec"]["encoding"]["x"]["field"] == "step"
    assert tr["resolve"]["scale"]["y"] == "independent"
    metrics = {r["metric"] for r in tr["datasets"][tr["data"]["name"]]}
    assert metrics == set(FC.TRAINING_METRICS)


def test_sparse_explained_variance_matches_sklearn():
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(3)
    dense = rng.exponential(size=(300, 40)) * (rng.random((300, 40)) < 0.15)
    dense[:, 7] = 0.0  # a dead latent
    dense[5] = 0.0  # a galaxy without any active latent (absent from the sparse table)
    r, c = np.nonzero(dense)
    got = FN.sparse_code_explained_variance(r, c, dense[r, c], 300, 40, n_components=16)
    want = PCA(16).fit(StandardScaler().fit_transform(dense)).explained_variance_ratio_
    assert np.allclose(got, want, atol=1e-9)


def test_training_curves_are_binned_for_long_runs():
    log = pl.DataFrame({"step": np.arange(5000), "loss": np.linspace(2, 1, 5000)})
    spec = FC.training_chart(log, title="t", subtitle=[], max_points=100).to_dict()
    rows = spec["datasets"][spec["data"]["name"]]
    assert 95 <= len(rows) <= 100 and rows[-1]["step"] == 4999


def test_galleries(lake, data):
    figs = FB.gallery_figures(lake, data, top=3, n_images=5)
    names = [f.name for f in figs]
    first = data.features.sort("position")["feature"].to_list()[:3]
    assert names[:3] == [f"gallery/{i:02d}-sae-feature-{f}" for i, f in enumerate(first)]
    assert names[3:] == [f"gallery/{i:02d}-pca-component-{i}" for i in range(3)]
    spec = figs[0].chart.to_dict()
    image, text = _layers(spec)
    assert image["mark"]["type"] == "image" and image["encoding"]["url"]["field"] == "url"
    assert text["mark"]["type"] == "text" and text["encoding"]["text"]["field"] == "value"
    tiles = pl.DataFrame(_values(spec, image))
    acts = (Lake(lake.root).read("sae_activations", run_id=RUN_ID, split="test")
            .filter(pl.col("feature") == first[0]).sort("activation", descending=True))
    assert tiles["id_str"].to_list() == acts["id_str"].head(5).to_list()
    assert np.allclose(tiles["value"], acts["activation"].head(5))
    assert all(u.startswith("data:image/png;base64,") for u in tiles["url"])
    assert "SAE feature" in spec["title"]["text"] and "frequency rank 1" in spec["title"]["text"]
    pca = figs[3].chart.to_dict()
    tiles = pl.DataFrame(_values(pca, _layers(pca)[0]))
    scores = (Lake(lake.root).read("pca_scores", pca_id=PCA_ID, split="test")
              .filter(pl.col("component") == 0).sort("score"))
    assert tiles.filter(pl.col("end") == "lowest")["id_str"].to_list() == \
        scores["id_str"].head(5).to_list()
    assert tiles.filter(pl.col("end") == "highest")["id_str"].to_list() == \
        scores["id_str"].reverse().head(5).to_list()


def test_theme_is_applied_on_export(data):
    import altair as alt

    chart = FB.comparison_figures(data)[0].chart
    with alt.theme.enable(FC.THEME):
        config = chart.to_dict()["config"]
    assert config["font"] == FC.FONT and config["axis"]["labelFontSize"] >= 12
    assert config["title"]["fontSize"] >= 16


def test_templates_are_package_data_filled_in_one_pass():
    from galsae_lake.figures.export import fill, template

    for name in ("browser.html", "report.html"):
        assert "__TITLE__" in template(name)
    assert fill("<t>__TITLE__</t>__DATA__", title="a __DATA__", data='"__TITLE__"') == \
        '<t>a __DATA__</t>"__TITLE__"'


# ---------------------------------------------------------------- make_figures, CLI
@pytest.fixture(scope="module")
def made(lake, tmp_path_factory):
    out = tmp_path_factory.mktemp("figs")
    files = F.make_figures(lake, RUN_ID, out=out, formats=("html", "png"), top=2)
    return out, files


def test_make_figures_writes_every_file(made):
    out, files = made
    names = {str(p.relative_to(out)) for p in files}
    for stem in ("max_rho", "max_rho_secondary", "max_rho_by_rank_group", "novelty",
                 "novelty_by_rank_group", "fvu_per_level", "explained_variance", "training_curves",
                 "gallery/00-pca-component-0"):
        assert f"{stem}.png" in names
    assert any(re.fullmatch(r"gallery/01-sae-feature-\d+\.png", n) for n in names)
    assert {"figures.html", "browser.html"} <= names
    for p in files:
        if p.suffix == ".png":
            with Image.open(p) as im:
                assert im.size[0] > 300 and im.size[1] > 100
    report = (out / "figures.html").read_text()
    assert "https://" not in report.split("const SPECS")[0][-2000:]  # Vega is inlined
    assert "vegaEmbed" in report and report.count('class="chart"') == len(
        [n for n in names if n.endswith(".png")])


def test_pca_model_figures(lake, tmp_path):
    files = F.make_figures(lake, PCA_ID, out=tmp_path, formats=("svg",), top=2)
    names = sorted(str(p.relative_to(tmp_path)) for p in files)
    assert names == ["explained_variance.svg", "gallery/00-pca-component-0.svg",
                     "gallery/01-pca-component-1.svg", "max_rho.svg", "max_rho_secondary.svg",
                     "novelty.svg"]
    svg = (tmp_path / "max_rho.svg").read_text()
    assert svg.startswith("<svg") and "Alignment with Galaxy Zoo labels" in svg


def test_cli_figures(lake, tmp_path):
    result = cli("figures", "--model", RUN_ID, "--image-format", "svg", "--top", "0",
                 "--out", tmp_path / "o", lake=lake.root)
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "o" / "max_rho.svg") in result.output
    usage = assert_refused(lake.root, ["figures", "--model", RUN_ID, "--image-format", "pdf"],
                           "'--image-format': pdf: choose from html, png, svg")
    assert usage.exit_code == 2
    # --format, the design's first name for it, still takes image formats (and only those)
    legacy = cli("figures", "--model", RUN_ID, "--format", "svg", "--top", "0", "--out",
                 tmp_path / "legacy", lake=lake.root)
    assert legacy.exit_code == 0 and (tmp_path / "legacy" / "max_rho.svg").exists()
    assert_refused(lake.root, ["figures", "--model", RUN_ID, "--format", "csv"], "choose from")
    assert_refused(lake.root, ["figures", "--model", "pca-x-123456"],
                   "galsae-lake analyze --model pca-x-123456")


def test_default_out_is_lake_figures_dir(tmp_path):
    lake = build_analyzed_lake(tmp_path / "lake", n_galaxies=40, permutations=0, with_images=False)
    files = F.make_figures(lake, RUN_ID, formats=("svg",), top=1)
    assert all(lake.figures_dir(RUN_ID) in p.parents for p in files)
    assert lake.figures_dir(RUN_ID) == lake.root / "figures" / RUN_ID
    assert not any("gallery" in str(p) for p in files)  # no images table: no galleries


# ---------------------------------------------------------------- the browser
def test_browser_data(lake, data):
    payload = B.browser_data(lake, data, top=5, n_images=4)
    assert payload["labels"] == list(LABEL_NAMES)
    feats = {f["f"]: f for f in payload["features"]}
    assert len(feats) == 96
    corr = data.corr.filter(pl.col("feature") == 3)
    want = dict(zip(corr["label"], corr["spearman"]))
    assert feats[3]["corr"] == [round(want[label], 3) for label in payload["labels"]]
    with_gallery = [f for f in payload["features"] if f["gal"]]
    assert [f["rank"] for f in with_gallery] == [1, 2, 3, 4, 5]
    tiles = with_gallery[0]["gal"]["highest"]
    assert len(tiles) == 4 and all(payload["thumbs"][t].startswith("data:image/jpeg") for t, _, _ in tiles)
    assert len(payload["thumbs"]) == len({t for f in with_gallery for t, _, _ in f["gal"]["highest"]})
    null = lake.read("label_null", model_id=RUN_ID, split="test").filter(pl.col("method") == "sae")
    want = dict(zip(null["label"], null["null_q95"]))
    assert payload["null"] == [pytest.approx(want[label], abs=5e-4) for label in LABEL_NAMES]
    assert payload["secondaryExcluded"] == "smooth-or-featured"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _need_chromium() -> str:
    """Chromium's path; skip without it, unless CI asks for the browser tests to be required."""
    chromium = _chromium()
    if chromium is None:
        if os.environ.get("GALSAE_REQUIRE_BROWSER"):
            pytest.fail("chromium is required here (GALSAE_REQUIRE_BROWSER) but not installed")
        pytest.skip("chromium is not installed (run scripts/install_chromium.sh)")
    return chromium


@contextlib.contextmanager
def _offline_page(path, **page_options):
    """``path`` opened in headless Chromium; after the block, no JavaScript error and no request
    that left the file (file:, data:, about: only)."""
    chromium = _need_chromium()
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(**page_options)
            errors, requests = [], []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(path.as_uri())
            yield page
            assert not errors, errors
            assert all(u.startswith(("file:", "data:", "about:")) for u in requests), requests
        finally:
            browser.close()


def test_browser_in_headless_chromium(made, tmp_path):
    """Open browser.html from disk in Chromium, click a feature, see its gallery and correlations."""
    out, _ = made
    with _offline_page(out / "browser.html", viewport={"width": 1400, "height": 900}) as page:
        rows = page.locator("tr.feature-row")
        assert rows.count() == 96
        # sort by max |rho| (descending) and filter by text: the table answers
        page.click("th[data-key=rho]")
        first = page.locator("tr.feature-row").first.get_attribute("data-feature")
        assert first is not None
        page.click("th[data-key=rank]")
        page.locator("tr.feature-row").first.click()
        page.wait_for_selector("#gallery img")
        assert page.locator("#gallery img").count() == 12
        assert page.locator("#corr .corr-row").count() == len(LABEL_NAMES)
        # the labels of the question the analysis left out are marked, and only those
        marked = page.locator("#corr .corr-row.secondary-excluded .name").all_inner_texts()
        assert sorted(marked) == sorted(label for label in LABEL_NAMES
                                        if label.startswith("smooth-or-featured_"))
        assert "smooth-or-featured left out" in page.locator("#detail .stats").inner_text()
        assert page.locator("#detail h2").inner_text().startswith("SAE feature")
        top_label = page.locator("#corr .corr-row .name").first.inner_text()
        assert top_label in LABEL_NAMES
        page.fill("#f-label", "zzz-no-such-label")
        assert page.locator("tr.feature-row").count() == 0
        page.fill("#f-label", "")
        page.screenshot(path=str(tmp_path / "browser.png"), full_page=False)
    assert (tmp_path / "browser.png").stat().st_size > 10_000


def test_report_renders_offline_in_headless_chromium(made):
    """figures.html draws every chart from the inlined Vega bundle, with no network request."""
    out, _ = made
    with _offline_page(out / "figures.html") as page:
        charts = page.locator("div.chart").count()
        page.wait_for_function(
            f"document.querySelectorAll('div.chart svg.marks').length === {charts}",
            timeout=30_000)
        assert charts >= 10
