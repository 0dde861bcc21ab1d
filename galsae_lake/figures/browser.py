"""The feature browser: one self-contained HTML file to sort, filter and inspect a model's features.

Opened from disk, offline: the data (features, correlations with every label, the permutation
null if there is one) is embedded as JSON, the galaxies as small base64 JPEG thumbnails (each
galaxy once, however many features show it), and the page is vanilla JavaScript (no CDN).
"""

from __future__ import annotations

import html
from typing import Any

import polars as pl

from galsae_lake.figures.data import FigureData, gallery_images, top_activations
from galsae_lake.figures.export import fill, script_json, template
from galsae_lake.lake import Lake
from galsae_lake.models import has_codes

#: thumbnail edge in pixels (JPEG: a 48 px galaxy is ~1.5 KB, a third of the PNG)
THUMB_SIZE = 48


def _num(value: Any, digits: int = 4) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if value != value else round(value, digits)  # NaN -> null


def browser_data(lake: Lake, data: FigureData, top: int = 256, n_images: int = 12) -> dict:
    """The JSON the browser embeds: features, correlation matrix, galleries and thumbnails.

    Galleries are embedded for the ``top`` most frequent features (SAE) or the first ``top``
    components (PCA; both ends), ``n_images`` galaxies each.
    """
    labels = data.labels
    label_index = {label: i for i, label in enumerate(labels)}
    feats = data.features.sort("position")
    corr = data.corr.filter(pl.col("label").is_in(labels))
    matrix: dict[int, list[float | None]] = {}
    for (feature,), group in corr.group_by("feature"):
        row: list[float | None] = [None] * len(labels)
        for label, rho in zip(group["label"].to_list(), group["spearman"].to_list()):
            row[label_index[label]] = _num(rho, 3)
        matrix[int(feature)] = row
    pca = data.kind == "pca"
    chosen = (feats.sort("feature") if pca else feats).head(top)["feature"].to_list()
    galleries: dict[int, dict[str, list]] = {}
    thumbs: list[str] = []
    if chosen and data.model is not None and has_codes(lake, data.model, data.split):
        tops = top_activations(lake, data.model, data.split, chosen, n_images)
        images = gallery_images(lake, data.split, tops["id_str"].to_list(), THUMB_SIZE, "JPEG")
        index: dict[str, int] = {}
        for id_str, url in images.items():
            index[id_str] = len(thumbs)
            thumbs.append(url)
        for row in tops.iter_rows(named=True):
            tiles = galleries.setdefault(int(row["feature"]), {})
            tiles.setdefault(row["end"], []).append(
                [index.get(row["id_str"], -1), _num(row["value"], 3), row["id_str"]])
    null = None
    if data.null is not None and not data.null.is_empty():
        lookup = dict(zip(data.null["label"].to_list(), data.null["null_max_abs"].to_list()))
        null = [_num(lookup.get(label), 3) for label in labels]
    has_group = "group" in feats.columns
    features = []
    for r in feats.iter_rows(named=True):
        features.append({
            "f": int(r["feature"]), "rank": int(r["position"]) + 1, "freq": _num(r["frequency"], 5),
            "rho": _num(r["max_abs"], 3), "lab": r["best_label"],
            "rho2": _num(r.get("max_abs_secondary"), 3), "lab2": r.get("best_label_secondary"),
            "nov": _num(r["novelty"], 3), "grp": r.get("group") if has_group else None,
            "corr": matrix.get(int(r["feature"])), "gal": galleries.get(int(r["feature"])),
        })
    return {
        "model": data.model_id, "kind": data.kind, "split": data.split, "encoder": data.encoder,
        "describe": data.describe(), "labels": labels, "null": null,
        "secondaryExcluded": data.excluded_question,
        "secondaryText": data.secondary_text(),
        "leftOut": [not data.in_secondary_view(label) for label in labels], "galleryTop": top,
        "features": features, "thumbs": thumbs,
    }


def browser_html(lake: Lake, data: FigureData, top: int = 256, n_images: int = 12) -> str:
    """The browser page for ``data`` (see :func:`browser_data`), as one HTML string."""
    payload = browser_data(lake, data, top=top, n_images=n_images)
    title = f"Feature browser: {data.model_id} ({data.split})"
    return fill(template("browser.html"), title=html.escape(title), data=script_json(payload))
