"""Figures: chart data and encodings (not pixels), the export, the CLI and the feature browser.

Lakes are built directly through lake transactions with synthetic tables in the contract's shapes
(`build_lake`, also used by scripts/bench_figures.py at the real test-split size).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from click.testing import CliRunner
from PIL import Image

from galsae_lake import figures as F
from galsae_lake.cli import main
from galsae_lake.errors import InputError
from galsae_lake.gz import LABEL_NAMES
from galsae_lake.lake import TABLES, Lake, TableSpec, register, vector_array

ENCODER = "synth"
RUN_ID = "sae-synth-a1b2c3"
PCA_ID = "pca-synth-d4e5f6"
OLD_PCA_ID = "pca-synth-000000"


def _ensure_null_table() -> None:
    """The analysis stage's permutation-null table (registered here when this branch lacks it)."""
    if F.NULL_TABLE not in TABLES:
        S, F64, I64, I32 = pa.string(), pa.float64(), pa.int64(), pa.int32()
        register(TableSpec(F.NULL_TABLE, ("model_id", "split"), (
            ("method", S), ("label", S), ("n", I64), ("n_features", I32), ("permutations", I32),
            ("observed_max_abs_spearman", F64), ("null_mean", F64), ("null_q50", F64),
            ("null_q95", F64), ("null_max", F64), ("excess_over_null", F64)),
            "max |rho| over all features per label, observed and with shuffled labels"))


def _null_frame(labels: list[str], method: str, q95: np.ndarray) -> pl.DataFrame:
    spec = TABLES[F.NULL_TABLE]
    cols = {}
    for name, kind in spec.columns:
        if name == "label":
            cols[name] = labels
        elif name == "method":
            cols[name] = [method] * len(labels)
        elif name in F.NULL_VALUE_COLUMNS:
            cols[name] = q95 if name == F.NULL_VALUE_COLUMNS[0] else q95 + 0.01
        elif pa.types.is_string(kind):
            cols[name] = [""] * len(labels)
        else:
            cols[name] = np.zeros(len(labels))
    return pl.DataFrame(cols)


def _png(color: tuple[int, int, int], size: int) -> bytes:
    yy, xx = np.mgrid[:size, :size]
    blob = np.exp(-((xx - size / 2) ** 2 + (yy - size / 2) ** 2) / (2 * (size / 6) ** 2))
    rgb = (blob[..., None] * np.array(color)[None, None, :]).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "PNG")
    return out.getvalue()


def _summary(method, corr: pl.DataFrame, frequency: np.ndarray, novelty: np.ndarray,
             secondary: bool = True) -> pl.DataFrame:
    """feature_summary rows computed from the correlations, as the analysis stage defines them."""
    ab = corr.with_columns(pl.col("spearman").abs().alias("a"))
    best = (ab.sort(["feature", "a"], descending=[False, True]).group_by("feature", maintain_order=True)
            .agg(pl.col("a").first().alias("max_abs_spearman"),
                 pl.col("label").first().alias("best_label")))
    sec = (ab.filter(~pl.col("label").str.starts_with("smooth-or-featured_"))
           .sort(["feature", "a"], descending=[False, True]).group_by("feature", maintain_order=True)
           .agg(pl.col("a").first().alias("max_abs_spearman_secondary"),
                pl.col("label").first().alias("best_label_secondary")))
    n = len(frequency)
    order = np.lexsort((np.arange(n), -frequency))
    rank = np.empty(n, np.int32)
    rank[order] = np.arange(n)
    nov_rank = np.empty(n, np.int32)
    nov_rank[np.lexsort((np.arange(n), -novelty))] = np.arange(n)
    frame = pl.DataFrame({"method": method, "feature": np.arange(n, dtype=np.int32),
                          "frequency": frequency, "frequency_rank": rank, "novelty": novelty,
                          "novelty_rank": nov_rank, "n_features": np.int32(n)}).join(best, on="feature")
    if secondary:
        frame = frame.join(sec, on="feature")
    return frame.sort("feature")


def build_lake(root, n_galaxies: int = 120, n_features: int = 96, n_components: int = 16,
               n_labels: int = 12, top_k: int = 8, image_size: int = 24, steps: int = 50,
               seed: int = 0, with_pca: bool = True, with_null: bool = True,
               with_images: bool = True, split: str = "test") -> Lake:
    """A lake with one SAE run (and its PCA baseline) analyzed on ``split``, synthetic throughout.

    SAE feature f is active on a galaxy with a propensity falling with f (so frequency ranks are
    known); every galaxy has ``top_k`` active latents. Images are coloured blobs.
    """
    rng = np.random.default_rng(seed)
    lake = Lake(root)
    ids = [f"g{i:06d}" for i in range(n_galaxies)]
    labels = list(LABEL_NAMES[:n_labels])
    # sparse codes: top_k latents per galaxy, drawn with propensity ~ 1/(f+8)
    p = 1.0 / (np.arange(n_features) + 8.0)
    p /= p.sum()
    chunks = []
    for start in range(0, n_galaxies, 4096):  # weighted sampling without replacement (Gumbel top-k)
        m = min(4096, n_galaxies - start)
        keys = np.log(p)[None, :] - np.log(-np.log(rng.random((m, n_features))))
        chunks.append(np.argpartition(-keys, top_k - 1, axis=1)[:, :top_k])
    active = np.concatenate(chunks)
    rows = np.repeat(np.arange(n_galaxies), top_k)
    feats = active.reshape(-1)
    acts = rng.exponential(1.0, rows.size).astype(np.float32) + 0.05
    frequency = np.bincount(feats, minlength=n_features) / n_galaxies
    dense = np.zeros((n_galaxies, n_features), np.float32)
    dense[rows, feats] = acts
    group_sizes = [64, 64, 128, 256, 512, 1024]
    edges = np.cumsum(group_sizes)
    group = np.searchsorted(edges, np.arange(n_features), side="right")
    sae_corr = pl.DataFrame({
        "method": "sae", "feature": np.repeat(np.arange(n_features, dtype=np.int32), n_labels),
        "label": labels * n_features,
        "spearman": np.tanh(rng.normal(0, 0.35, n_features * n_labels)), "n": n_galaxies})
    sae_summary = _summary("sae", sae_corr, frequency, rng.uniform(0.2, 1.0, n_features))
    config = {"input_dim": 16, "group_sizes": group_sizes, "top_k": top_k, "l1_coeff": 1e-3,
              "aux_penalty": 0.03, "n_batches_to_dead": 256, "aux_k_multiplier": 16,
              "epochs": 2, "learning_rate": 1e-4, "batch_size": 256, "random_seed": 0}
    levels = [{"level": i, "latents": int(c), "fvu": float(0.6 * 0.75 ** i)}
              for i, c in enumerate(edges)]
    metrics = {"split": split, "fvu": levels[-1]["fvu"], "fvu_per_level": levels,
               "explained_variance_seed": 0.8, "l0": float(top_k), "dead_fraction": 0.0,
               "threshold": 0.1, "n_train": 10, "n_test": n_galaxies, "normalization": "train"}
    now = datetime.now(timezone.utc)
    with lake.transaction("test-build", {"seed": seed}) as tx:
        if with_images:
            colors = rng.integers(40, 256, (n_galaxies, 3))
            tx.write("images", pl.DataFrame({
                "id_str": ids, "image": [_png(tuple(c), image_size) for c in colors]}),
                partition={"split": split})
        tx.write("embeddings", pa.table({"id_str": ids, "embedding": vector_array(
            rng.normal(size=(n_galaxies, 4)))}), partition={"encoder": ENCODER, "split": split})
        tx.write("sae_runs", pl.DataFrame({
            "run_id": [RUN_ID], "encoder": [ENCODER], "config": [json.dumps(config)],
            "checkpoint": [f"models/sae/{RUN_ID}"], "metrics": [json.dumps(metrics)],
            "created_at": [now]}))
        step = np.arange(steps, dtype=np.int64) * 10
        tx.write("sae_training_log", pl.DataFrame({
            "step": step, "epoch": (step // 100).astype(np.int32), "loss": 1.0 / (1 + step / 50),
            "mse": 0.8 / (1 + step / 50), "l1": np.full(steps, 0.01), "aux": np.full(steps, 0.02),
            "l0": np.full(steps, float(top_k)), "dead_fraction": np.linspace(0.2, 0.0, steps),
            "lr": np.linspace(1e-4, 1e-5, steps)}), partition={"run_id": RUN_ID})
        tx.write("sae_activations", pl.DataFrame({
            "id_str": [ids[r] for r in rows], "feature": feats.astype(np.int32), "activation": acts}),
            partition={"run_id": RUN_ID, "split": split})
        tx.write("sae_features", pl.DataFrame({
            "feature": np.arange(n_features, dtype=np.int32), "group": group.astype(np.int32),
            "frequency": frequency, "mean_activation": dense.sum(0) / np.maximum(1, (dense > 0).sum(0)),
            "max_activation": dense.max(0)}), partition={"run_id": RUN_ID})
        tx.write("feature_label_corr", sae_corr, partition={"model_id": RUN_ID, "split": split})
        tx.write("feature_summary", sae_summary, partition={"model_id": RUN_ID, "split": split})
        if with_null:
            _ensure_null_table()
            # the smooth-or-featured labels (first) get the highest null thresholds
            tx.write(F.NULL_TABLE, _null_frame(labels, "sae", np.linspace(0.2, 0.1, n_labels)),
                     partition={"model_id": RUN_ID, "split": split})
    if with_pca:
        for pid in (OLD_PCA_ID, PCA_ID):  # two PCAs of the encoder: the newer one is paired
            evr = np.sort(rng.dirichlet(np.ones(n_components * 2))[:n_components])[::-1]
            scores = rng.normal(size=(n_galaxies, n_components)).astype(np.float32)
            pca_corr = pl.DataFrame({
                "method": "pca",
                "feature": np.repeat(np.arange(n_components, dtype=np.int32), n_labels),
                "label": labels * n_components,
                "spearman": np.tanh(rng.normal(0, 0.25, n_components * n_labels)), "n": n_galaxies})
            with lake.transaction("test-pca", {"pid": pid}) as tx:
                tx.write("pca_components", pa.table({
                    "component": np.arange(n_components, dtype=np.int32),
                    "explained_variance_ratio": evr,
                    "loading": vector_array(rng.normal(size=(n_components, 4)))}),
                    partition={"pca_id": pid})
                tx.write("pca_scores", pl.DataFrame({
                    "id_str": np.repeat(ids, n_components),
                    "component": np.tile(np.arange(n_components, dtype=np.int32), n_galaxies),
                    "score": scores.reshape(-1)}), partition={"pca_id": pid, "split": split})
                tx.write("feature_label_corr", pca_corr, partition={"model_id": pid, "split": split})
                tx.write("feature_summary", _summary(
                    "pca", pca_corr, np.ones(n_components), rng.uniform(0.0, 0.8, n_components)),
                    partition={"model_id": pid, "split": split})
                if with_null:
                    tx.write(F.NULL_TABLE, _null_frame(labels, "pca", np.full(n_labels, 0.15)),
                             partition={"model_id": pid, "split": split})
    return lake


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    return build_lake(tmp_path_factory.mktemp("figlake") / "lake")


@pytest.fixture(scope="module")
def data(lake) -> F.FigureData:
    return F.load_figure_data(lake, RUN_ID)


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
def test_load_pairs_newest_pca_of_same_encoder(lake, data):
    assert data.kind == "sae" and data.encoder == ENCODER
    assert data.baseline_id == PCA_ID and data.pca_id == PCA_ID  # written after OLD_PCA_ID
    assert data.features.height == 96 and data.baseline.height == 16
    # position follows frequency rank; secondary view read from the summary
    top = data.features.sort("position").head(3)
    freq = data.features.sort("frequency", descending=True)["frequency"].head(3).to_list()
    assert top["frequency"].to_list() == freq
    assert "max_abs_secondary" in data.features.columns
    assert data.null is not None and data.null.height == 12
    assert data.null["null_max_abs"].max() == pytest.approx(0.2)


def test_secondary_computed_from_corr_when_summary_lacks_it(data):
    sec = F.secondary_alignment(data.corr).sort("feature")
    joined = data.features.sort("feature").join(sec, on="feature", suffix="_c")
    assert np.allclose(joined["max_abs_secondary"], joined["max_abs_secondary_c"])
    assert (joined["best_label_secondary"] == joined["best_label_secondary_c"]).all()
    assert not sec["best_label_secondary"].str.starts_with("smooth-or-featured").any()


def test_missing_analysis_is_one_clear_error(lake):
    with pytest.raises(InputError, match="galsae-lake analyze --model sae-nope-000000"):
        F.load_figure_data(lake, "sae-nope-000000")


def test_without_pca_the_comparison_is_skipped_with_a_note(tmp_path):
    lake = build_lake(tmp_path / "lake", with_pca=False, with_null=False)
    data = F.load_figure_data(lake, RUN_ID)
    assert data.baseline is None and data.pca_id is None
    assert any("PCA comparison is left out" in n for n in data.notes)
    figs = {f.name: f for f in F.comparison_figures(data)}
    spec = figs["max_rho"].chart.to_dict()
    series = {v["series"] for u in _layers(spec) for v in _values(spec, u) if "series" in v}
    assert series == {"SAE (top 64 by frequency)"}
    assert not any(u["mark"]["type"] == "rule" for u in _layers(spec))


# ---------------------------------------------------------------- chart data and encodings
def test_max_rho_chart_data_and_encodings(data):
    figs = {f.name: f for f in F.comparison_figures(data)}
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
    assert [_values(spec, r)[0]["x"] for r in (rule, rule2)] == pytest.approx([0.2, 0.15])
    assert [r["mark"]["color"] for r in (rule, rule2)] == [F.SAE_COLOR, F.PCA_COLOR]
    assert [_values(spec, t)[0]["text"] for t in (text, text2)] == ["SAE null 0.20", "PCA null 0.15"]
    assert "permutation null" in spec["title"]["subtitle"][-1]
    assert spec["title"]["text"] == "Alignment with Galaxy Zoo labels"
    what, model, _ = spec["title"]["subtitle"]
    assert what == "The 64 most frequent SAE features vs the first 16 PCA components"
    assert "96 latents" in model and PCA_ID in model and "test split" in model


def test_secondary_null_leaves_out_smooth_or_featured(data):
    figs = {f.name: f for f in F.comparison_figures(data)}
    spec = figs["max_rho_secondary"].chart.to_dict()
    rule = [u for u in _layers(spec) if u["mark"]["type"] == "rule"][0]
    kept = data.null.filter(~pl.col("label").str.starts_with("smooth-or-featured_"))
    assert kept.height == 9
    assert _values(spec, rule)[0]["x"] == pytest.approx(0.2 - 3 * 0.1 / 11)  # 4th label's null
    rug = _layers(spec)[-1]
    values = pl.DataFrame(_values(spec, rug)).filter(pl.col("series").str.starts_with("SAE"))
    want = dict(zip(data.features["feature"], data.features["max_abs_secondary"]))
    assert all(want[f] == pytest.approx(v) for f, v in zip(values["feature"], values["value"]))


def test_rank_groups_and_novelty(data):
    assert F.rank_group_edges(2048) == [0, 64, 128, 256, 512, 1024, 2048]
    assert F.rank_group_edges(96) == [0, 64, 96]
    figs = {f.name: f for f in F.comparison_figures(data)}
    spec = figs["novelty_by_rank_group"].chart.to_dict()
    rug = _layers(spec)[-1]
    values = pl.DataFrame(_values(spec, rug))
    counts = dict(values.group_by("series").len().iter_rows())
    kept = data.features.filter(pl.col("frequency") > F.MIN_FREQUENCY).sort("position")
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
    assert color["range"][:2] == list(F.GROUP_COLORS[:2]) and color["range"][-1] == F.PCA_COLOR
    assert "novelty" in spec["title"]["text"].lower() and not any(
        u["mark"]["type"] == "rule" for u in _layers(spec))  # no null for novelty


def test_missing_values_are_left_out():
    sae = pl.DataFrame({"feature": [0, 1, 2, 3], "position": [0, 1, 2, 3],
                        "frequency": [0.5, 0.4, 0.3, 0.001], "novelty": [0.5, float("nan"), None, 0.2]})
    values = F.comparison_values(sae, None, "novelty", by_group=False)
    assert values["feature"].to_list() == [0, 3]
    values = F.comparison_values(sae, None, "novelty", by_group=True, min_frequency=0.01)
    assert values["feature"].to_list() == [0]


def test_kde_matches_scipy_with_seaborn_bandwidth():
    from scipy.stats import gaussian_kde

    x = np.random.default_rng(1).uniform(0.2, 0.8, 50)
    curves = F.kde_curves(pl.DataFrame({"series": "a", "value": x}))
    ref = gaussian_kde(x, bw_method=gaussian_kde(x).factor * F.BW_ADJUST)(curves["x"].to_numpy())
    assert np.allclose(curves["density"], ref, rtol=1e-6)
    single = F.kde_curves(pl.DataFrame({"series": ["b", "b"], "value": [0.3, 0.3]}))
    assert single.is_empty()


def test_run_figures(lake, data):
    figs = {f.name: f for f in F.run_figures(lake, data, {})}
    assert set(figs) == {"fvu_per_level", "explained_variance", "training_curves"}
    fvu = figs["fvu_per_level"].chart.to_dict()
    units = _layers(fvu)
    assert [u["mark"]["type"] for u in units] == ["line", "point", "text"]
    enc = units[1]["encoding"]
    assert enc["x"]["field"] == "latents" and enc["y"]["field"] == "fvu"
    assert enc["x"]["scale"]["type"] == "log"
    rows = _values(fvu, units[0])
    assert [r["latents"] for r in rows] == [64, 128, 256, 512, 1024, 2048]
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
    assert metrics == set(F.TRAINING_METRICS)


def test_sparse_explained_variance_matches_sklearn():
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(3)
    dense = rng.exponential(size=(300, 40)) * (rng.random((300, 40)) < 0.15)
    dense[:, 7] = 0.0  # a dead latent
    dense[5] = 0.0  # a galaxy without any active latent (absent from the sparse table)
    r, c = np.nonzero(dense)
    got = F.sparse_code_explained_variance(r, c, dense[r, c], 300, 40, n_components=16)
    want = PCA(16).fit(StandardScaler().fit_transform(dense)).explained_variance_ratio_
    assert np.allclose(got, want, atol=1e-9)


def test_training_curves_are_binned_for_long_runs():
    log = pl.DataFrame({"step": np.arange(5000), "loss": np.linspace(2, 1, 5000)})
    spec = F.training_chart(log, title="t", subtitle=[], max_points=100).to_dict()
    rows = spec["datasets"][spec["data"]["name"]]
    assert 95 <= len(rows) <= 100 and rows[-1]["step"] == 4999


def test_galleries(lake, data):
    figs = F.gallery_figures(lake, data, top=3, n_images=5)
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

    chart = F.comparison_figures(data)[0].chart
    with alt.theme.enable(F.THEME):
        config = chart.to_dict()["config"]
    assert config["font"] == F.FONT and config["axis"]["labelFontSize"] >= 12
    assert config["title"]["fontSize"] >= 16


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
    runner = CliRunner()
    result = runner.invoke(main, ["--lake", str(lake.root), "figures", "--model", RUN_ID,
                                  "--format", "svg", "--top", "0", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "o" / "max_rho.svg") in result.output
    bad = runner.invoke(main, ["--lake", str(lake.root), "figures", "--model", RUN_ID,
                               "--format", "pdf"])
    assert bad.exit_code == 1 and "Error: unknown figure format(s) pdf" in bad.output
    missing = runner.invoke(main, ["--lake", str(lake.root), "figures", "--model", "pca-x-123456"])
    assert missing.exit_code == 1 and "galsae-lake analyze --model pca-x-123456" in missing.output
    assert "Traceback" not in missing.output


def test_default_out_is_lake_figures_dir(tmp_path):
    lake = build_lake(tmp_path / "lake", n_galaxies=40, with_null=False, with_images=False)
    files = F.make_figures(lake, RUN_ID, formats=("svg",), top=1)
    assert all(lake.figures_dir(RUN_ID) in p.parents for p in files)
    assert lake.figures_dir(RUN_ID) == lake.root / "figures" / RUN_ID
    assert not any("gallery" in str(p) for p in files)  # no images table: no galleries


# ---------------------------------------------------------------- the browser
def test_browser_data(lake, data):
    from galsae_lake.browser import browser_data

    payload = browser_data(lake, data, top=5, n_images=4)
    assert payload["labels"] == list(LABEL_NAMES[:12])
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
    assert payload["null"][0] == pytest.approx(0.2) and payload["null"][-1] == pytest.approx(0.1)


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


def test_browser_in_headless_chromium(made, tmp_path):
    """Open browser.html from disk in Chromium, click a feature, see its gallery and correlations."""
    chromium = _need_chromium()
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install playwright)")
    out, _ = made
    page_path = out / "browser.html"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors, requests = [], []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri())
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
            assert page.locator("#corr .corr-row").count() == 12
            assert page.locator("#detail h2").inner_text().startswith("SAE feature")
            top_label = page.locator("#corr .corr-row .name").first.inner_text()
            assert top_label in LABEL_NAMES
            page.fill("#f-label", "zzz-no-such-label")
            assert page.locator("tr.feature-row").count() == 0
            page.fill("#f-label", "")
            page.screenshot(path=str(tmp_path / "browser.png"), full_page=False)
            assert not errors, errors
            assert all(u.startswith(("file:", "data:", "about:")) for u in requests), requests
        finally:
            browser.close()
    assert (tmp_path / "browser.png").stat().st_size > 10_000


def test_report_renders_offline_in_headless_chromium(made):
    """figures.html draws every chart from the inlined Vega bundle, with no network request."""
    chromium = _need_chromium()
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install playwright)")
    out, _ = made
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            errors, requests = [], []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto((out / "figures.html").as_uri())
            charts = page.locator("div.chart").count()
            page.wait_for_function(
                f"document.querySelectorAll('div.chart svg.marks').length === {charts}",
                timeout=30_000)
            assert charts >= 10 and not errors, errors
            assert all(u.startswith(("file:", "data:", "about:")) for u in requests), requests
        finally:
            browser.close()
