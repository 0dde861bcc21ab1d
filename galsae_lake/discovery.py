"""Discovery: rank features by how likely they are new morphology rather than noise or nuisance.

Novelty alone (1 - R^2 of a feature on the Galaxy Zoo labels) cannot find new morphology: weak,
noisy features and features that track brightness or size are the most "novel" of all, and a
perfect detector of a factor the labels do not name still shares some variance with them. This
module adds what a truth-free ranking needs, as extra columns of ``feature_summary``:

* **control**: novelty fitted on the labels *plus* non-morphological properties (photometry,
  size, shape, observing conditions): :func:`control_matrix` reads them from the synthetic
  world's ``truth`` (``--control truth``: :data:`galsae_lake.sources.synthetic.NUISANCE`) or
  from any votes catalogue of plain per-galaxy values (``--control CATALOG``: every label of
  that catalogue is a control column);
* **stability**: the best cosine between the feature's decoder direction and any decoder row of
  each other SAE run on the same encoder with the same config but another seed, averaged over
  those runs (feature consistency): a feature that every run learns is real;
* **frequency band**: features firing on fewer than ``FREQUENCY_BAND[0]`` or more than
  ``FREQUENCY_BAND[1]`` of the galaxies are too rare to judge or too common to be one thing;
* **control R^2**: the share of the feature's variance the controls alone explain (a feature
  that partly tracks brightness is pushed down even where the labels and controls together
  leave it "novel");
* **concentration**: the share of the feature's activation mass carried by its strongest tenth
  of firing galaxies (recorded; it did not improve the ranking in scripts/bench_discovery.py,
  so the score leaves it out).

``discovery_score`` = novelty x stability^4 x (1 - control R^2)^2, 0 outside the band, combines them and ``discovery_rank`` orders the features by it (0 = most
promising). The weights were chosen on the synthetic world's truth by
``scripts/bench_discovery.py``, which prints where the features that best track each planted
factor land.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow as pa

from galsae_lake.errors import InputError

#: frequencies outside this band get no discovery score (too rare to judge, too common to be one thing)
FREQUENCY_BAND = (0.003, 0.25)
#: quantile bins per control column (indicators added to the raw values): non-linear control
CONTROL_BINS = 10
#: the control that reads the synthetic world's nuisance properties from ``truth``
TRUTH_CONTROL = "truth"
#: score = novelty * stability ** STABILITY_POWER * (1 - control_r2) ** CONTROL_POWER
STABILITY_POWER = 4.0
CONTROL_POWER = 2.0


# ----------------------------------------------------------------------------- control columns


def control_matrix(lake, ids, split: str, source: str) -> tuple[np.ndarray, list[str]]:
    """``[galaxies x controls]`` non-morphological properties in ``ids`` order, NaN where unknown.

    ``source`` is ``truth`` (the synthetic world's nuisance factors; flux and size as log1p) or
    the name of a votes catalogue whose labels are taken as plain per-galaxy values.
    """
    order = pl.DataFrame({"id_str": [str(i) for i in ids]})
    if source == TRUTH_CONTROL:
        from galsae_lake.sources.synthetic import NUISANCE

        if not lake.exists("truth", split=split):
            raise InputError(f"--control truth needs the truth table on split {split!r} (synthetic "
                             f"galaxies only; galsae-lake synth writes it)")
        wide = (lake.scan("truth", split=split).filter(pl.col("factor").is_in(list(NUISANCE)))
                .collect().pivot(on="factor", index="id_str", values="value"))
        names = [name for name in NUISANCE if name in wide.columns]
        wide = order.join(wide, on="id_str", how="left")
        columns = []
        for name in names:
            value = wide[name].cast(pl.Float64).fill_null(np.nan).to_numpy()
            columns.append(np.log1p(np.maximum(value, 0)) if name in ("flux", "radius") else value)
    else:
        if not lake.exists("votes", catalog=source, split=split):
            have = sorted({p["catalog"] for p in lake.partitions("votes")}) if lake.exists("votes") else []
            raise InputError(f"--control {source!r}: no such votes catalogue on split {split!r} "
                             f"(use 'truth' or one of: {', '.join(have) or 'none'})")
        wide = (lake.scan("votes", catalog=source, split=split).select("id_str", "label", "fraction")
                .collect().pivot(on="label", index="id_str", values="fraction", aggregate_function="first"))
        names = sorted(c for c in wide.columns if c != "id_str")
        wide = order.join(wide, on="id_str", how="left")
        columns = [wide[name].cast(pl.Float64).fill_null(np.nan).to_numpy() for name in names]
    if not names:
        raise InputError(f"--control {source!r} has no columns on split {split!r}")
    return expand(np.column_stack(columns)), names


def expand(controls: np.ndarray, bins: int = CONTROL_BINS) -> np.ndarray:
    """Each control column plus indicators of its quantile bins (NaN rows in none), so that a
    feature that is any monotone or bumpy function of brightness or size is explained, not only
    a linear one."""
    parts = [controls]
    for column in controls.T:
        present = ~np.isnan(column)
        if present.sum() < 2 * bins:
            continue
        edges = np.unique(np.quantile(column[present], np.linspace(0, 1, bins + 1)[1:-1]))
        which = np.where(present, np.searchsorted(edges, column, side="right"), -1)
        parts.append((which[:, None] == np.arange(1, len(edges) + 1)[None]).astype(np.float64))
    return np.hstack(parts)


# ----------------------------------------------------------------------------- stability


def sibling_runs(lake, run_id: str) -> list[str]:
    """Other SAE runs on the same encoder with the same config but another ``random_seed``."""
    if not lake.exists("sae_runs"):
        return []
    runs = lake.read("sae_runs")
    mine = runs.filter(pl.col("run_id") == run_id)
    if not mine.height:
        return []
    key = (mine["encoder"][0], _without_seed(mine["config"][0]))
    return sorted(row["run_id"] for row in runs.iter_rows(named=True)
                  if row["run_id"] != run_id and (row["encoder"], _without_seed(row["config"])) == key)


def _without_seed(config: str) -> str:
    values = json.loads(config)
    values.pop("random_seed", None)
    values.pop("device", None)
    return json.dumps(values, sort_keys=True)


def decoder_directions(lake, run_id: str) -> np.ndarray:
    """The run's decoder rows ``[latents x input_dim]``, unit norm."""
    from galsae_lake.train import load_sae

    weights = load_sae(lake, run_id).W_dec.detach().cpu().numpy().astype(np.float64)
    return weights / np.maximum(np.linalg.norm(weights, axis=1, keepdims=True), 1e-12)


def stability(lake, run_id: str, others: list[str]) -> np.ndarray | None:
    """Per latent, the best |cosine| with any decoder row of each other run, averaged over runs;
    None when there is no other run."""
    if not others:
        return None
    mine = decoder_directions(lake, run_id)
    best = [np.abs(mine @ decoder_directions(lake, other).T).max(axis=1) for other in others]
    return np.mean(best, axis=0)


# ----------------------------------------------------------------------------- the score


def concentration(feature: np.ndarray, value: np.ndarray, n_features: int) -> np.ndarray:
    """Share of each feature's activation mass in its strongest tenth of firing galaxies
    (NaN for a feature that never fires). ``feature``/``value``: the non-zero codes."""
    out = np.full(n_features, np.nan)
    order = np.lexsort((-np.abs(value), feature))
    f, v = feature[order], np.abs(value[order]).astype(np.float64)
    starts = np.searchsorted(f, np.arange(n_features))
    ends = np.searchsorted(f, np.arange(n_features), side="right")
    for j in np.flatnonzero(ends > starts):
        block = v[starts[j]:ends[j]]
        total = block.sum()
        if total > 0:
            out[j] = block[: max(1, len(block) // 10)].sum() / total
    return out


def discovery_score(novelty: np.ndarray, frequency: np.ndarray, stable: np.ndarray,
                    control_r2: np.ndarray | None = None,
                    stability_power: float = STABILITY_POWER, control_power: float = CONTROL_POWER,
                    band: tuple[float, float] = FREQUENCY_BAND) -> np.ndarray:
    """novelty x stability^4 x (1 - control R^2)^2 inside the frequency band, 0 outside.

    Unknown stability (no other seed) or control R^2 (no control) count as 1 and 0."""
    stable = np.where(np.isnan(stable), 1.0, stable)
    kept = 1.0 if control_r2 is None else 1.0 - np.nan_to_num(control_r2, nan=0.0)
    inside = (frequency >= band[0]) & (frequency <= band[1])
    return np.where(inside, novelty * stable ** stability_power * kept ** control_power, 0.0)


def ranks(score: np.ndarray) -> np.ndarray:
    """0 = highest score; ties by feature index."""
    order = np.lexsort((np.arange(len(score)), -score))
    out = np.empty(len(score), np.int32)
    out[order] = np.arange(len(score), dtype=np.int32)
    return out


def add_columns(summary: pa.Table, method: str, stable: np.ndarray, concentrated: np.ndarray,
                control_r2: np.ndarray | None = None,
                band: tuple[float, float] = FREQUENCY_BAND) -> pa.Table:
    """``feature_summary`` plus stability, control_r2, concentration, discovery_score and
    discovery_rank for ``method``'s rows (features in order); other methods' rows get NULL."""
    frame = pl.from_arrow(summary)
    mine = frame.filter(pl.col("method") == method).sort("feature")
    score = discovery_score(mine["novelty"].to_numpy(), mine["frequency"].to_numpy(), stable,
                            control_r2, band=band)
    r2 = np.full(mine.height, np.nan) if control_r2 is None else control_r2
    extra = pl.DataFrame({
        "method": [method] * mine.height, "feature": mine["feature"],
        "stability": pl.Series(stable, dtype=pl.Float64).fill_nan(None),
        "control_r2": pl.Series(r2, dtype=pl.Float64).fill_nan(None),
        "concentration": pl.Series(concentrated, dtype=pl.Float64).fill_nan(None),
        "discovery_score": score, "discovery_rank": ranks(score)})
    return frame.join(extra, on=["method", "feature"], how="left").to_arrow()
