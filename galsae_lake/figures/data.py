"""What the figures are drawn from: the analysis of one model, as the analysis recorded it.

Everything here reads the lake (``feature_summary``, ``feature_label_corr``, ``label_null``, the
model's run row and codes, ``images``); nothing recomputes what ``analyze`` stored: the secondary
view is ``feature_summary``'s secondary columns, and the question it left out is the
``--exclude-question`` that analysis ran with (its recorded parameters).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import polars as pl

from galsae_lake.errors import InputError
from galsae_lake.figures.numerics import sparse_code_explained_variance
from galsae_lake.lake import Lake
from galsae_lake.models import Model, has_codes, newest_pca, resolve_model, scan_codes

#: feature_summary's columns, as the figures name them
SUMMARY_COLUMNS = {
    "frequency": "frequency",
    "frequency_rank": "frequency_rank",
    "max_abs": "max_abs_spearman",
    "best_label": "best_label",
    "novelty": "novelty",
    "max_abs_secondary": "max_abs_spearman_secondary",
    "best_label_secondary": "best_label_secondary",
}
#: the per-label threshold of the permutation null drawn in the figures (a label_null column)
NULL_VALUE_COLUMN = "null_q95"
NULL_VALUE_TEXT = ("dotted: permutation null, the 95th percentile of the largest |ρ| of a label "
                   "with shuffled votes")


@dataclass
class FigureData:
    """What the figures of one model on one split are drawn from.

    ``features`` (and ``baseline`` for the paired PCA) hold one row per feature with the columns
    feature, frequency, position (0-based order by frequency), max_abs, best_label,
    max_abs_secondary, best_label_secondary, novelty (and group for SAE latents).
    ``excluded_question`` is the question the analysis left out of the secondary view ('' for
    none).
    """

    model_id: str
    kind: str  # "sae" or "pca"
    split: str
    encoder: str | None
    features: pl.DataFrame
    corr: pl.DataFrame  # feature, label, spearman (this model's method)
    labels: list[str]
    excluded_question: str = ""
    #: whether the labels are Galaxy Zoo votes (a catalog with a tree) or plain labels (labels.py)
    galaxy_zoo: bool = True
    baseline_id: str | None = None
    baseline: pl.DataFrame | None = None
    null: pl.DataFrame | None = None  # label, null_max_abs
    baseline_null: pl.DataFrame | None = None
    model: Model | None = None
    pca_id: str | None = None  # the PCA whose components/scores the figures use
    notes: list[str] = field(default_factory=list)

    @property
    def n_features(self) -> int:
        return self.features.height

    def describe(self) -> str:
        """One subtitle line: model, encoder, size, split."""
        size = f"{self.n_features} latents" if self.kind == "sae" else f"{self.n_features} components"
        enc = f", encoder {self.encoder}" if self.encoder else ""
        return f"{self.model_id} ({size}{enc}), {self.split} split"

    def secondary_text(self) -> str:
        """How the secondary view is named in titles: what it leaves out."""
        if not self.excluded_question:
            return "no question left out"
        return f"{self.excluded_question} left out"

    def in_secondary_view(self, label: str) -> bool:
        return not left_out(label, self.excluded_question)


def left_out(label: str, question: str) -> bool:
    """Whether ``label`` (question_answer) belongs to ``question`` ('' leaves nothing out)."""
    return bool(question) and label.rsplit("_", 1)[0] == question


def excluded_question(lake: Lake, model_id: str, split: str) -> str:
    """The question the analysis of (model_id, split) left out of its secondary view."""
    info = lake.partition_info("feature_summary", model_id=model_id, split=split)
    return str(info.parameters.get("exclude_question") or "") if info else ""


def _summary_frame(summary: pl.DataFrame) -> pl.DataFrame:
    """A feature_summary slice under the figures' column names, with its frequency position."""
    c = SUMMARY_COLUMNS
    out = summary.select(
        pl.col("feature").cast(pl.Int64),
        pl.col(c["frequency"]).cast(pl.Float64).alias("frequency"),
        pl.col(c["frequency_rank"]).cast(pl.Float64).alias("frequency_rank"),
        pl.col(c["max_abs"]).cast(pl.Float64).alias("max_abs"),
        pl.col(c["best_label"]).cast(pl.String).alias("best_label"),
        pl.col(c["novelty"]).cast(pl.Float64).alias("novelty"),
        pl.col(c["max_abs_secondary"]).cast(pl.Float64).alias("max_abs_secondary"),
        pl.col(c["best_label_secondary"]).cast(pl.String).alias("best_label_secondary"),
    )
    # position: 0-based order by frequency rank
    return out.sort(["frequency_rank", "feature"]).with_row_index("position").with_columns(
        pl.col("position").cast(pl.Int64))


def _read_null(lake: Lake, model_id: str, split: str, method: str) -> pl.DataFrame | None:
    """Per label, the permutation null's threshold of |rho| (label, null_max_abs), or None."""
    if not lake.exists("label_null", model_id=model_id, split=split):
        return None
    frame = (lake.read("label_null", model_id=model_id, split=split)
             .filter(pl.col("method") == method)
             .select("label", pl.col(NULL_VALUE_COLUMN).cast(pl.Float64).alias("null_max_abs"))
             .drop_nulls().filter(pl.col("null_max_abs").is_not_nan()))  # no permutations run
    if frame.is_empty():
        return None
    return frame.group_by("label").agg(pl.col("null_max_abs").max()).sort("label")


def _analysis(lake: Lake, model_id: str, split: str, method: str
              ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(feature_summary, feature_label_corr) rows of one method of one analysis."""
    summary = lake.read("feature_summary", model_id=model_id, split=split).filter(
        pl.col("method") == method)
    corr = (lake.read("feature_label_corr", model_id=model_id, split=split)
            .filter(pl.col("method") == method)
            .select(pl.col("feature").cast(pl.Int64), "label", pl.col("spearman").cast(pl.Float64)))
    return _summary_frame(summary), corr


def load_figure_data(lake: Lake, model_id: str, split: str = "test") -> FigureData:
    """Gather the analysis of ``model_id`` (an SAE run_id or a pca_id) on ``split``.

    For an SAE the newest PCA of the same encoder that has been analyzed on ``split`` is paired
    as the baseline. Raises InputError when the model has not been analyzed on that split.
    """
    if not lake.exists("feature_summary", model_id=model_id, split=split):
        raise InputError(
            f"no analysis of model {model_id!r} on split {split!r} in {lake.root}; run "
            f"galsae-lake analyze --model {model_id} --split {split} first")
    model = resolve_model(lake, model_id)
    features, corr = _analysis(lake, model_id, split, model.kind)
    # the labels in the order the analysis recorded (the catalogs' trees), and what they are
    info = lake.partition_info("feature_summary", model_id=model_id, split=split)
    recorded = info.recorded if info else {}
    order = {name: i for i, name in enumerate(recorded.get("labels") or ())}
    labels = sorted(corr["label"].unique().to_list(),
                    key=lambda label: (order[label], label) if label in order else _label_order(label))
    trees = recorded.get("trees")
    data = FigureData(model_id=model_id, kind=model.kind, split=split, encoder=model.encoder,
                      features=features, corr=corr, labels=labels,
                      excluded_question=excluded_question(lake, model_id, split),
                      galaxy_zoo=True if not trees else any(trees.values()),
                      null=_read_null(lake, model_id, split, model.kind), model=model)
    if model.kind == "pca":
        data.pca_id = model_id
        return data
    if lake.exists("sae_features", run_id=model_id):
        groups = lake.read("sae_features", run_id=model_id).select(
            pl.col("feature").cast(pl.Int64), pl.col("group").cast(pl.Int64))
        data.features = data.features.join(groups, on="feature", how="left")
    pca_id = newest_pca(lake, model.encoder, analyzed_on=split)
    if pca_id is None:
        data.notes.append(f"no analyzed PCA of encoder {model.encoder!r} on split {split!r}: "
                          "the PCA comparison is left out (run galsae-lake pca and analyze)")
        return data
    data.pca_id = data.baseline_id = pca_id
    data.baseline, _ = _analysis(lake, pca_id, split, "pca")
    data.baseline_null = _read_null(lake, pca_id, split, "pca")
    pca_excluded = excluded_question(lake, pca_id, split)
    if pca_excluded != data.excluded_question:
        data.notes.append(
            f"the PCA {pca_id} was analyzed with --exclude-question {pca_excluded!r}, the SAE with "
            f"{data.excluded_question!r}: their secondary views leave out different labels")
    return data


def _label_order(label: str) -> tuple[int, str]:
    from galsae_lake.gz import LABEL_NAMES

    return (LABEL_NAMES.index(label), label) if label in LABEL_NAMES else (len(LABEL_NAMES), label)


# ---------------------------------------------------------------- codes and images
def _n_galaxies(lake: Lake, encoder: str | None, split: str, fallback: int) -> int:
    """Galaxies in the split (codes are stored sparse: a galaxy with no active latent has no row)."""
    if encoder and lake.exists("embeddings", encoder=encoder, split=split):
        return int(lake.scan("embeddings", encoder=encoder, split=split).select(pl.len())
                   .collect().item())
    return fallback


def sae_explained_variance(lake: Lake, data: FigureData) -> np.ndarray | None:
    """PCA explained-variance ratios of the model's standardized codes on its split (or None)."""
    if data.model is None or not has_codes(lake, data.model, data.split):
        return None
    codes = scan_codes(lake, data.model, data.split).collect().with_columns(
        pl.col("id_str").cast(pl.Categorical).to_physical().alias("row"))
    present = int(codes["row"].max()) + 1 if codes.height else 0
    n_rows = max(_n_galaxies(lake, data.encoder, data.split, present), present)
    n_features = max(data.n_features, int(codes["feature"].max()) + 1 if codes.height else 0)
    return sparse_code_explained_variance(
        codes["row"].to_numpy(), codes["feature"].to_numpy(), codes["value"].to_numpy(),
        n_rows, n_features, n_components=min(64, n_features))


def top_activations(lake: Lake, model: Model, split: str, features: Sequence[int], n: int
                    ) -> pl.DataFrame:
    """The ``n`` galaxies with the highest (and for a PCA also the lowest) value per feature.

    Returns end ("highest"/"lowest"), feature, rank, id_str, value. SAE codes are stored
    non-zero only, so an SAE feature has no "lowest" end.
    """
    wanted = [int(f) for f in features]
    frame = (scan_codes(lake, model, split).filter(pl.col("feature").is_in(wanted))
             .select(pl.col("feature").cast(pl.Int64), "id_str",
                     pl.col("value").cast(pl.Float64)).collect())
    ends = [("highest", True)] + ([("lowest", False)] if model.kind == "pca" else [])
    parts = []
    for end, desc in ends:
        part = (frame.sort(["feature", "value", "id_str"], descending=[False, desc, False])
                .group_by("feature", maintain_order=True).head(n)
                .with_columns(pl.int_range(pl.len()).over("feature").alias("rank"),
                              pl.lit(end).alias("end")))
        parts.append(part)
    return pl.concat(parts).select("end", "feature", "rank", "id_str", "value")


def load_images(lake: Lake, split: str, ids: Iterable[str]) -> dict[str, bytes]:
    """PNG/JPEG bytes of the given galaxies from the ``images`` table (missing ids are absent)."""
    ids = sorted(set(ids))
    if not ids or not lake.exists("images", split=split):
        return {}
    frame = (lake.scan("images", split=split).filter(pl.col("id_str").is_in(ids))
             .select("id_str", "image").collect())
    return dict(zip(frame["id_str"].to_list(), frame["image"].to_list()))


def thumbnail_url(image: bytes, size: int, fmt: str = "PNG") -> str:
    """A data: URL of the image scaled to ``size`` px on its longer side (RGB)."""
    from PIL import Image

    from galsae_lake.images import open_image, to_rgb

    with open_image(image) as im:  # the pixel cap before decoding; 16-bit scaled
        im = to_rgb(im)
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        if im.size != (size, size):  # upscale small cutouts so galleries line up
            im = im.resize((size, size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        if fmt == "JPEG":
            im.save(out, "JPEG", quality=82, optimize=True)
            mime = "image/jpeg"
        else:
            im.save(out, "PNG", optimize=True)
            mime = "image/png"
    return f"data:{mime};base64," + base64.b64encode(out.getvalue()).decode("ascii")


def gallery_images(lake: Lake, split: str, ids: Iterable[str], size: int,
                   fmt: str = "PNG") -> dict[str, str]:
    """Thumbnails (data: URLs) of the given galaxies, by id."""
    return {i: thumbnail_url(b, size, fmt) for i, b in sorted(load_images(lake, split, ids).items())}

