"""The PCA baseline: standardized embeddings, fitted on one split, scores for every split.

``fit_pca(lake, "zoobot-synth")`` writes ``pca_runs`` (one row), ``pca_components`` (loadings and
explained variance ratios) and ``pca_scores`` (long: galaxy, component, score) for every split of
the encoder's embeddings, and stores ``models/pca/<pca_id>/pca.safetensors`` (mean, scale,
components) so new embeddings can be scored the same way. It matches scikit-learn's
``StandardScaler`` + ``PCA(svd_solver="full")`` (same signs: the largest loading of each component
is positive).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from galsae_lake.errors import InputError
from galsae_lake.lake import Lake, short_id, vector_array, vectors

DEFAULT_COMPONENTS = 64


@dataclass
class PCAModel:
    """A fitted PCA: ``scores(X) = ((X - mean) / scale) @ components.T``."""

    mean: np.ndarray          # [d] float64, of the fit split
    scale: np.ndarray         # [d] float64 (population std; 1 where a column is constant)
    components: np.ndarray    # [k x d] float64, orthonormal rows
    explained_variance_ratio: np.ndarray  # [k]

    def scores(self, X: np.ndarray, batch: int = 65536) -> np.ndarray:
        out = np.empty((len(X), len(self.components)), np.float32)
        for start in range(0, len(X), batch):
            Z = (np.asarray(X[start:start + batch], np.float64) - self.mean) / self.scale
            out[start:start + batch] = Z @ self.components.T
        return out


def fit(X: np.ndarray, n_components: int = DEFAULT_COMPONENTS) -> PCAModel:
    """Standardize ``X`` [n x d] with its own mean and std, then PCA by eigendecomposition."""
    X = np.asarray(X, np.float64)
    n, d = X.shape
    if n < 2:
        raise InputError(f"PCA needs at least 2 galaxies on the fit split, got {n}")
    if not 1 <= n_components <= min(n, d):
        raise InputError(f"--n-components must be between 1 and {min(n, d)} "
                         f"(galaxies and dimensions of the fit split), got {n_components}")
    if not np.isfinite(X).all():
        raise InputError("embeddings contain NaN or infinite values; PCA needs finite vectors")
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale == 0] = 1.0  # as StandardScaler: a constant column stays 0, not NaN
    Z = (X - mean) / scale
    covariance = (Z.T @ Z) / (n - 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues = np.clip(eigenvalues[order], 0, None)
    components = eigenvectors[:, order[:n_components]].T
    # sign convention of scikit-learn's svd_flip(u_based_decision=False)
    biggest = np.argmax(np.abs(components), axis=1)
    components *= np.sign(components[np.arange(n_components), biggest])[:, None]
    total = eigenvalues.sum()
    ratio = eigenvalues[:n_components] / total if total > 0 else np.zeros(n_components)
    return PCAModel(mean, scale, components, ratio)


def fit_pca(lake: Lake, encoder: str, n_components: int = DEFAULT_COMPONENTS,
            fit_split: str = "train") -> str:
    """Fit a PCA on ``encoder``'s ``fit_split`` embeddings and score every split; returns pca_id."""
    splits = [p["split"] for p in lake.partitions("embeddings", encoder=encoder)]
    if not splits:
        raise InputError(f"embeddings for encoder {encoder!r} not found; run galsae-lake embed "
                         f"--encoder {encoder} (or ingest embeddings) first")
    if fit_split not in splits:
        raise InputError(f"encoder {encoder!r} has no embeddings for split {fit_split!r} "
                         f"(it has {', '.join(sorted(splits))})")
    fit_table = lake.arrow("embeddings", columns=["id_str", "embedding"], encoder=encoder,
                           split=fit_split)
    model = fit(vectors(fit_table), n_components)
    parameters = {"encoder": encoder, "n_components": n_components, "fit_split": fit_split}
    pca_id = short_id(f"pca-{encoder}", parameters)
    with lake.transaction("pca", parameters, upstream=["embeddings"]) as tx:
        for split in sorted(splits):
            table = fit_table if split == fit_split else lake.arrow(
                "embeddings", columns=["id_str", "embedding"], encoder=encoder, split=split)
            scores = model.scores(vectors(table))
            ids = table.column("id_str").combine_chunks()
            rows = len(ids)
            tx.write("pca_scores", pa.table({
                "id_str": pa.compute.take(ids, pa.array(np.repeat(np.arange(rows), n_components))),
                "component": pa.array(np.tile(np.arange(n_components, dtype=np.int32), rows)),
                "score": pa.array(scores.reshape(-1)),
            }), partition={"pca_id": pca_id, "split": split})
        tx.write("pca_components", pa.table({
            "component": pa.array(np.arange(n_components, dtype=np.int32)),
            "explained_variance_ratio": pa.array(model.explained_variance_ratio),
            "loading": vector_array(model.components),
        }), partition={"pca_id": pca_id})
        folder = tx.stage_dir("pca", pca_id)
        from safetensors.numpy import save_file
        save_file({"mean": model.mean, "scale": model.scale, "components": model.components,
                   "explained_variance_ratio": model.explained_variance_ratio},
                  str(folder / "pca.safetensors"))
        tx.write("pca_runs", pa.table({
            "pca_id": [pca_id], "encoder": [encoder], "n_components": [n_components],
            "fit_split": [fit_split], "n_fit": [fit_table.num_rows],
            "input_dim": [int(model.components.shape[1])],
            "explained_variance": [float(model.explained_variance_ratio.sum())],
            "checkpoint": [str(lake.model_dir("pca", pca_id))],
            "created_at": pa.array([datetime.now(timezone.utc)], pa.timestamp("us", tz="UTC")),
        }))
    return pca_id


def load_pca(lake: Lake, pca_id: str) -> PCAModel:
    """The stored PCA of ``pca_id`` (from ``models/pca/<pca_id>/pca.safetensors``)."""
    from safetensors.numpy import load_file
    path = lake.model_dir("pca", pca_id) / "pca.safetensors"
    if not path.exists():
        raise InputError(f"PCA {pca_id!r} not found; run galsae-lake pca --encoder NAME first")
    t = load_file(str(path))
    return PCAModel(t["mean"], t["scale"], t["components"], t["explained_variance_ratio"])
