"""Models of the lake: SAE runs and PCA baselines, found by id, by encoder, by what was analyzed.

The one place that knows where a model lives: ``sae_runs`` (key ``run_id``) and ``pca_runs``
(key ``pca_id``); every other stage calls these functions instead of reading those tables. A
model's id is called ``model_id`` where it may be either kind (the analysis tables' partition key).

The SAE and PCA code tables name their columns differently (``sae_activations``: feature,
activation; ``pca_scores``: component, score), as the design's table contract fixes. Code reads
them through :func:`scan_codes`, which gives both the same names (``feature``, ``value``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import polars as pl

from galsae_lake.errors import InputError
from galsae_lake.lake import Lake


class CodeTable(NamedTuple):
    """Where a kind of model keeps its per-galaxy codes, and the columns' names there."""

    table: str    # sae_activations | pca_scores
    key: str      # run_id | pca_id: the partition key naming the model
    feature: str  # feature | component
    value: str    # activation | score


#: the two kinds of model, each with its run table (and key) and its code table
RUN_TABLES = {"sae": ("sae_runs", "run_id"), "pca": ("pca_runs", "pca_id")}
CODE_TABLES = {"sae": CodeTable("sae_activations", "run_id", "feature", "activation"),
               "pca": CodeTable("pca_scores", "pca_id", "component", "score")}


@dataclass
class Model:
    """One SAE run or PCA baseline: its id, kind, encoder, size and its run-table row."""

    model_id: str
    kind: str      # "sae" or "pca"
    encoder: str
    n_features: int  # SAE latents or PCA components
    row: dict[str, Any] = field(default_factory=dict)

    @property
    def codes(self) -> CodeTable:
        return CODE_TABLES[self.kind]

    @property
    def config(self) -> dict[str, Any]:
        """The SAE's config (parsed from ``sae_runs.config``); empty for a PCA."""
        return _json(self.row.get("config")) if self.kind == "sae" else {}

    @property
    def metrics(self) -> dict[str, Any]:
        """The SAE's metrics (parsed from ``sae_runs.metrics``); empty for a PCA."""
        return _json(self.row.get("metrics")) if self.kind == "sae" else {}


def _json(text: str | None) -> dict[str, Any]:
    return json.loads(text) if text else {}


def _runs(lake: Lake, kind: str) -> pl.DataFrame | None:
    table, _ = RUN_TABLES[kind]
    return lake.read(table) if lake.exists(table) else None


def find_model(lake: Lake, model_id: str) -> Model | None:
    """The SAE run or PCA named ``model_id``, or None."""
    for kind, (_, key) in RUN_TABLES.items():
        runs = _runs(lake, kind)
        if runs is None:
            continue
        rows = runs.filter(pl.col(key) == model_id)
        if rows.height:
            row = rows.row(0, named=True)
            if kind == "pca":
                return Model(model_id, kind, row["encoder"], int(row["n_components"]), row)
            size = sum(_json(row["config"]).get("group_sizes") or [])
            if not size and lake.exists("sae_features", run_id=model_id):
                size = int(lake.scan("sae_features", run_id=model_id)
                           .select(pl.col("feature").max()).collect().item()) + 1
            return Model(model_id, kind, row["encoder"], int(size), row)
    return None


def model_ids(lake: Lake) -> list[str]:
    """Every SAE run id and PCA id of the lake."""
    ids: list[str] = []
    for kind, (_, key) in RUN_TABLES.items():
        runs = _runs(lake, kind)
        if runs is not None:
            ids += runs[key].to_list()
    return ids


def resolve_model(lake: Lake, model_id: str) -> Model:
    """The SAE run or PCA named ``model_id``; an InputError naming the known ids otherwise."""
    model = find_model(lake, model_id)
    if model is None:
        known = model_ids(lake)
        hint = (f"known models: {', '.join(known)}" if known
                else "run galsae-lake train-sae or pca first")
        raise InputError(f"unknown model id {model_id!r}; {hint}")
    return model


def newest_pca(lake: Lake, encoder: str, analyzed_on: str | None = None) -> str | None:
    """The newest PCA (by fit time) of ``encoder``; with ``analyzed_on``, the newest one that
    ``analyze`` has run on that split. None if there is none."""
    runs = _runs(lake, "pca")
    if runs is None:
        return None
    runs = runs.filter(pl.col("encoder") == encoder).sort(["created_at", "pca_id"])
    ids = runs["pca_id"].to_list()
    if analyzed_on is not None:
        analyzed = {p["model_id"] for p in lake.partitions("feature_summary", split=analyzed_on)}
        ids = [i for i in ids if i in analyzed]
    return ids[-1] if ids else None


def latest_pca(lake: Lake, encoder: str) -> str:
    """The newest PCA fitted on ``encoder``'s embeddings; an InputError if there is none."""
    pca_id = newest_pca(lake, encoder)
    if pca_id is None:
        raise InputError(f"no PCA for encoder {encoder!r}; run galsae-lake pca --encoder "
                         f"{encoder} first")
    return pca_id


def scan_codes(lake: Lake, model: Model, split: str) -> pl.LazyFrame:
    """The model's stored codes on ``split`` as (id_str, feature, value), whatever its kind."""
    t = model.codes
    return lake.scan(t.table, **{t.key: model.model_id, "split": split}).select(
        "id_str", pl.col(t.feature).alias("feature"), pl.col(t.value).alias("value"))


def has_codes(lake: Lake, model: Model, split: str) -> bool:
    t = model.codes
    return lake.exists(t.table, **{t.key: model.model_id, "split": split})
