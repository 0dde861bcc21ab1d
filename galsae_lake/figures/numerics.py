"""The numbers behind the charts: pure functions of frames and arrays (no lake, no Altair).

Frequency-rank groups, the series of the distribution charts, density curves (seaborn's KDE),
cumulative explained variance and the PCA spectrum of sparse SAE codes.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import polars as pl

#: the seed's comparisons use the first 64 PCA components and the 64 most frequent SAE features
TOP_COMPARED = 64
#: the seed's kdeplot(bw_adjust=0.7) on Scott's rule
BW_ADJUST = 0.7
EV_COMPONENTS = (1, 2, 4, 8, 16, 32, 64)
#: the seed compares SAE features active in more than 1% of galaxies (get_top_sae_features)
MIN_FREQUENCY = 0.01


def rank_group_edges(n_features: int, first: int = 64) -> list[int]:
    """The seed's frequency-rank groups: 0, 64, 128, 256, ... doubling, closed at ``n_features``."""
    edges = [0]
    edge = first
    while edge < n_features:
        edges.append(edge)
        edge *= 2
    edges.append(n_features)
    return edges


def rank_group_label(lo: int, hi: int) -> str:
    return f"{lo}–{hi}"


def comparison_values(sae: pl.DataFrame | None, pca: pl.DataFrame | None, column: str,
                      by_group: bool, top: int = TOP_COMPARED,
                      min_frequency: float = 0.0) -> pl.DataFrame:
    """Long frame (series, feature, value) of ``column`` for the SAE and PCA series.

    SAE features active in at most ``min_frequency`` of the galaxies are left out first (the
    seed's ``get_top_sae_features(min_freq=0.01)``), then ranked by frequency. Without
    ``by_group``: the ``top`` most frequent SAE features and the first ``top`` PCA components.
    With it: every kept SAE feature in frequency-rank groups (0–64, 64–128, ... up to the SAE size).
    """
    parts = []
    if sae is not None:
        size = sae.height
        sae = (sae.filter(pl.col("frequency") > min_frequency).sort("position").drop("position")
               .with_row_index("position").with_columns(pl.col("position").cast(pl.Int64)))
        if by_group:
            edges = rank_group_edges(size)
            names = [f"SAE {rank_group_label(lo, hi)}" for lo, hi in zip(edges[:-1], edges[1:])]
            which = np.searchsorted(np.asarray(edges[1:-1]), sae["position"].to_numpy(),
                                    side="right").astype(np.int64)
            grouped = sae.with_columns(pl.Series("series", np.asarray(names, dtype=object)[which],
                                                 dtype=pl.String))
            parts.append(grouped.select("series", "feature", pl.col(column).alias("value")))
        else:
            n = min(top, sae.height)
            parts.append(sae.filter(pl.col("position") < top).select(
                pl.lit(f"SAE (top {n} by frequency)").alias("series"), "feature",
                pl.col(column).alias("value")))
    if pca is not None:
        first = pca.sort("feature").head(top)
        parts.append(first.select(pl.lit(f"PCA (first {first.height} components)").alias("series"),
                                  "feature", pl.col(column).alias("value")))
    if not parts:
        return pl.DataFrame(schema={"series": pl.String, "feature": pl.Int64, "value": pl.Float64})
    # a feature without any rho (never active) has no value: leave it out (NaN breaks Vega JSON)
    return (pl.concat(parts).with_columns(pl.col("feature").cast(pl.Int64),
                                          pl.col("value").cast(pl.Float64))
            .drop_nulls("value").filter(pl.col("value").is_finite()))


def kde_curves(values: pl.DataFrame, lo: float = 0.0, hi: float = 1.0, steps: int = 201,
               bw_adjust: float = BW_ADJUST) -> pl.DataFrame:
    """Gaussian KDE (Scott's rule x ``bw_adjust``, as seaborn) of each series on [lo, hi].

    Series with fewer than two distinct values have no density and are left out (the rug shows them).
    """
    grid = np.linspace(lo, hi, steps)
    parts = []
    for (series,), group in values.group_by("series", maintain_order=True):
        x = group["value"].drop_nulls().drop_nans().to_numpy().astype(np.float64)
        if x.size < 2 or np.ptp(x) == 0:
            continue
        sd = x.std(ddof=1)
        bw = sd * x.size ** (-1 / 5) * bw_adjust  # scipy's scott_factor x data sd
        dens = np.exp(-0.5 * ((grid[:, None] - x[None, :]) / bw) ** 2).sum(1)
        dens /= x.size * bw * math.sqrt(2 * math.pi)
        parts.append(pl.DataFrame({"series": series, "x": grid, "density": dens}))
    if not parts:
        return pl.DataFrame(schema={"series": pl.String, "x": pl.Float64, "density": pl.Float64})
    return pl.concat(parts)


def cumulative_explained(ratios: Sequence[float], at: Sequence[int] = EV_COMPONENTS) -> list[float]:
    """Cumulative sums of explained-variance ratios at the given component counts (capped)."""
    c = np.cumsum(np.asarray(ratios, dtype=np.float64))
    return [float(c[min(k, len(c)) - 1]) for k in at]


def sparse_code_explained_variance(rows: np.ndarray, features: np.ndarray, values: np.ndarray,
                                   n_rows: int, n_features: int, n_components: int = 64) -> np.ndarray:
    """The seed's SAE curve: PCA explained-variance ratios of the standardized SAE codes.

    Equals ``PCA(n_components).fit(StandardScaler().fit_transform(X)).explained_variance_ratio_``
    for the dense ``X`` (n_rows x n_features) whose non-zeros are given, computed from the sparse
    Gram matrix (so a 35k x 2048 code costs a few seconds, not a dense SVD).
    """
    from scipy import sparse
    from scipy.linalg import eigh
    from scipy.sparse.linalg import eigsh

    x = sparse.csr_matrix((values.astype(np.float64), (rows, features)),
                          shape=(n_rows, n_features))
    gram = (x.T @ x).toarray() / n_rows
    mean = np.asarray(x.sum(axis=0)).ravel() / n_rows
    cov = gram - np.outer(mean, mean)
    std = np.sqrt(np.clip(np.diag(cov), 0, None))
    live = std > 1e-12 * max(std.max(initial=0), 1e-300)
    # StandardScaler leaves constant columns at zero: they add no variance
    corr = np.zeros_like(cov)
    corr[np.ix_(live, live)] = cov[np.ix_(live, live)] / np.outer(std[live], std[live])
    total = float(live.sum())
    if total == 0:
        return np.zeros(min(n_components, n_features))
    k = min(n_components, n_features)
    if k < n_features - 1:  # Lanczos: a few hundred products instead of a full tridiagonalization
        top = np.sort(eigsh(corr, k=k, which="LA", return_eigenvectors=False, tol=1e-12,
                            v0=np.ones(n_features)))
    else:
        top = eigh(corr, eigvals_only=True, subset_by_index=[n_features - k, n_features - 1])
    return np.clip(top[::-1], 0, None) / total
