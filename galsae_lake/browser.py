"""The feature browser: one self-contained HTML file to sort, filter and inspect a model's features.

Opened from disk, offline: the data (features, correlations with every label, the permutation
null if there is one) is embedded as JSON, the galaxies as small base64 JPEG thumbnails (each
galaxy once, however many features show it), and the page is vanilla JavaScript (no CDN).
"""

from __future__ import annotations

import html
from typing import Any

import polars as pl

from galsae_lake.figures import (SECONDARY_EXCLUDED_QUESTION, FigureData, _script_json,
                                 load_images, thumbnail_url, top_activations)
from galsae_lake.lake import Lake

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
    if chosen:
        table = "pca_scores" if pca else "sae_activations"
        keys = {"pca_id": data.model_id} if pca else {"run_id": data.model_id}
        if lake.exists(table, split=data.split, **keys):
            tops = top_activations(lake, data, chosen, n_images,
                                   pca_id=data.model_id if pca else None)
            images = load_images(lake, data.split, tops["id_str"].to_list())
            index: dict[str, int] = {}
            for id_str in sorted(images):
                index[id_str] = len(thumbs)
                thumbs.append(thumbnail_url(images[id_str], THUMB_SIZE, fmt="JPEG"))
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
        "secondaryExcluded": SECONDARY_EXCLUDED_QUESTION, "galleryTop": top,
        "features": features, "thumbs": thumbs,
    }


def browser_html(lake: Lake, data: FigureData, top: int = 256, n_images: int = 12) -> str:
    """The browser page for ``data`` (see :func:`browser_data`), as one HTML string."""
    payload = browser_data(lake, data, top=top, n_images=n_images)
    title = f"Feature browser: {data.model_id} ({data.split})"
    return (_TEMPLATE.replace("__TITLE__", html.escape(title))
            .replace("__DATA__", _script_json(payload)))


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 "DejaVu Sans", Helvetica, Arial, sans-serif; color: #222; }
header { padding: 10px 16px; background: #003f5c; color: white; }
header h1 { margin: 0; font-size: 18px; } header p { margin: 2px 0 0; font-size: 12px; opacity: .85; }
#filters { display: flex; flex-wrap: wrap; gap: 12px; padding: 8px 16px; background: #f3f5f7;
  border-bottom: 1px solid #ddd; align-items: end; }
#filters label { display: flex; flex-direction: column; font-size: 12px; color: #444; }
#filters input { width: 110px; padding: 3px 5px; font: inherit; }
#filters input[type=text] { width: 200px; }
#count { margin-left: auto; font-size: 12px; color: #555; }
main { display: grid; grid-template-columns: minmax(600px, 52%) 1fr; height: calc(100vh - 112px); }
#list { overflow: auto; border-right: 1px solid #ddd; }
table { border-collapse: collapse; width: 100%; font-size: 12.5px; }
th { position: sticky; top: 0; background: #fff; border-bottom: 2px solid #bbb; text-align: right;
  padding: 5px 5px; cursor: pointer; user-select: none; white-space: nowrap; }
th.txt, td.txt { text-align: left; }
th.sorted::after { content: " ▼"; font-size: 10px; } th.sorted.asc::after { content: " ▲"; }
td { padding: 3px 5px; border-bottom: 1px solid #eee; text-align: right; white-space: nowrap; }
td.txt { max-width: 140px; overflow: hidden; text-overflow: ellipsis; }
tr.feature-row { cursor: pointer; } tr.feature-row:hover { background: #fff3f2; }
tr.selected { background: #ffe1de !important; }
#detail { overflow: auto; padding: 12px 18px; }
#detail h2 { margin: 0 0 4px; font-size: 20px; } .stats { color: #444; margin-bottom: 10px; }
.gallery-row { display: flex; flex-wrap: wrap; gap: 6px; margin: 4px 0 12px; }
.end { font-size: 12px; color: #555; margin-top: 6px; }
figure { margin: 0; text-align: center; font-size: 11px; color: #333; }
figure img { width: 72px; height: 72px; image-rendering: auto; display: block; border-radius: 3px; }
.empty { color: #777; font-style: italic; }
h3 { font-size: 15px; margin: 14px 0 6px; }
.corr-row { display: grid; grid-template-columns: 230px 1fr 52px; align-items: center; gap: 8px;
  font-size: 12px; padding: 1px 0; }
.corr-row .name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.corr-row.secondary-excluded .name { color: #888; font-style: italic; }
.track { position: relative; height: 12px; background: #f4f4f4; }
.bar { position: absolute; top: 0; height: 12px; }
.bar.pos { left: 50%; background: #ff6361; } .bar.neg { right: 50%; background: #003f5c; }
.mid { position: absolute; left: 50%; top: -2px; bottom: -2px; width: 1px; background: #999; }
.nullmark { position: absolute; top: -3px; bottom: -3px; width: 0; border-left: 1px dashed #555; }
.legend { font-size: 12px; color: #555; margin-bottom: 6px; }
</style></head>
<body>
<header><h1 id="title"></h1><p id="subtitle"></p></header>
<div id="filters">
  <label>Min frequency (%)<input id="f-freq" type="number" min="0" max="100" step="0.1" value="0"></label>
  <label>Min max |ρ|<input id="f-rho" type="number" min="0" max="1" step="0.05" value="0"></label>
  <label>Min novelty<input id="f-nov-min" type="number" min="0" max="1" step="0.05" value="0"></label>
  <label>Max novelty<input id="f-nov-max" type="number" min="0" max="1" step="0.05" value="1"></label>
  <label>Best label contains<input id="f-label" type="text" placeholder="e.g. spiral"></label>
  <label><span>With gallery only</span><input id="f-gal" type="checkbox"></label>
  <span id="count"></span>
</div>
<main><div id="list"><table><thead><tr id="head"></tr></thead><tbody id="rows"></tbody></table></div>
<section id="detail"><p class="empty">Click a feature to see its galaxies and correlations.</p></section></main>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const isPCA = D.kind === "pca";
const noun = isPCA ? "PCA component" : "SAE feature";
const COLS = [
  {key: "f", label: isPCA ? "Comp." : "Feature", tip: isPCA ? "PCA component" : "SAE latent index", fmt: v => v},
  {key: "rank", label: "Rank", tip: "rank by activation frequency (1 = most frequent)", fmt: v => v},
  {key: "freq", label: "Freq.", tip: "share of galaxies where the feature is active", fmt: v => v == null ? "" : (100 * v).toFixed(2) + "%"},
  {key: "rho", label: "Max |ρ|", tip: "largest |Spearman ρ| with any Galaxy Zoo label", fmt: fix3},
  {key: "lab", label: "Best label", tip: "the label of the largest |ρ|", txt: true, fmt: v => v || ""},
  {key: "rho2", label: "Max |ρ|*", tip: "* without the smooth-or-featured question", fmt: fix3},
  {key: "lab2", label: "Best label*", tip: "* without the smooth-or-featured question", txt: true, fmt: v => v || ""},
  {key: "nov", label: "Novelty", tip: "1 − R² of the feature from all labels", fmt: fix3},
];
if (D.features.some(f => f.grp != null)) COLS.push({key: "grp", label: "Group", tip: "Matryoshka group", fmt: v => v == null ? "" : v});
function fix3(v) { return v == null ? "" : v.toFixed(3); }
function esc(s) { return String(s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c])); }
let sortKey = isPCA ? "f" : "rank", sortAsc = true, selected = null, shown = [];
document.getElementById("title").textContent = "Feature browser: " + D.model;
document.getElementById("subtitle").textContent = D.describe + " · " + D.features.length + " features · "
  + D.labels.length + " labels" + (D.null ? " · permutation null available" : "")
  + " · galleries for the " + (isPCA ? "first " : "") + D.galleryTop + (isPCA ? " components" : " most frequent features");
const head = document.getElementById("head");
head.innerHTML = COLS.map(c => `<th data-key="${c.key}" class="${c.txt ? "txt" : ""}" title="${esc(c.tip)}">${esc(c.label)}</th>`).join("");
head.addEventListener("click", e => {
  const th = e.target.closest("th"); if (!th) return;
  const key = th.dataset.key;
  if (key === sortKey) sortAsc = !sortAsc; else { sortKey = key; sortAsc = ["f", "rank", "lab", "lab2", "grp"].includes(key); }
  render();
});
for (const id of ["f-freq", "f-rho", "f-nov-min", "f-nov-max", "f-label", "f-gal"])
  document.getElementById(id).addEventListener("input", render);
function num(id, dflt) { const v = parseFloat(document.getElementById(id).value); return isNaN(v) ? dflt : v; }
function render() {
  const minFreq = num("f-freq", 0) / 100, minRho = num("f-rho", 0);
  const novMin = num("f-nov-min", 0), novMax = num("f-nov-max", 1);
  const text = document.getElementById("f-label").value.trim().toLowerCase();
  const galOnly = document.getElementById("f-gal").checked;
  shown = D.features.filter(f => (f.freq ?? 0) >= minFreq && (f.rho ?? 0) >= minRho
    && (f.nov == null || (f.nov >= novMin && f.nov <= novMax))
    && (!text || (f.lab || "").toLowerCase().includes(text) || (f.lab2 || "").toLowerCase().includes(text))
    && (!galOnly || f.gal));
  const dir = sortAsc ? 1 : -1;
  shown.sort((a, b) => {
    const x = a[sortKey], y = b[sortKey];
    if (x == null && y == null) return a.rank - b.rank;
    if (x == null) return 1; if (y == null) return -1;
    return (x < y ? -1 : x > y ? 1 : a.rank - b.rank) * dir;
  });
  for (const th of head.children) {
    th.classList.toggle("sorted", th.dataset.key === sortKey);
    th.classList.toggle("asc", th.dataset.key === sortKey && sortAsc);
  }
  document.getElementById("rows").innerHTML = shown.map(f =>
    `<tr class="feature-row${f.f === selected ? " selected" : ""}" data-feature="${f.f}">`
    + COLS.map(c => `<td class="${c.txt ? "txt" : ""}" title="${esc(c.fmt(f[c.key]))}">${esc(c.fmt(f[c.key]))}</td>`).join("")
    + "</tr>").join("");
  document.getElementById("count").textContent = `showing ${shown.length} of ${D.features.length}`;
}
document.getElementById("rows").addEventListener("click", e => {
  const tr = e.target.closest("tr[data-feature]"); if (tr) select(+tr.dataset.feature);
});
document.addEventListener("keydown", e => {
  if (e.target.tagName === "INPUT" || !shown.length) return;
  if (e.key !== "ArrowDown" && e.key !== "ArrowUp") return;
  const i = shown.findIndex(f => f.f === selected);
  const j = Math.max(0, Math.min(shown.length - 1, i + (e.key === "ArrowDown" ? 1 : -1)));
  select(shown[j].f); e.preventDefault();
  const row = document.querySelector(`tr[data-feature="${shown[j].f}"]`); if (row) row.scrollIntoView({block: "nearest"});
});
const byId = new Map(D.features.map(f => [f.f, f]));
function gallery(tiles) {
  return `<div class="gallery-row">` + tiles.map(([t, v, id]) => t >= 0
    ? `<figure><img src="${D.thumbs[t]}" alt="${esc(id)}" title="${esc(id)}"><figcaption>${v == null ? "" : v.toFixed(2)}</figcaption></figure>`
    : `<figure><div class="empty" title="${esc(id)}">no image</div><figcaption>${v == null ? "" : v.toFixed(2)}</figcaption></figure>`).join("") + `</div>`;
}
function select(fid) {
  selected = fid;
  for (const tr of document.querySelectorAll("tr.selected")) tr.classList.remove("selected");
  const tr = document.querySelector(`tr[data-feature="${fid}"]`); if (tr) tr.classList.add("selected");
  const f = byId.get(fid); if (!f) return;
  history.replaceState(null, "", "#feature=" + fid);
  let h = `<h2>${noun} ${f.f}</h2><div class="stats">frequency rank ${f.rank} · active in ${f.freq == null ? "?" : (100 * f.freq).toFixed(2) + "%"}`
    + ` of galaxies · max |ρ| ${fix3(f.rho)} (${esc(f.lab || "–")}) · without smooth-or-featured ${fix3(f.rho2)} (${esc(f.lab2 || "–")})`
    + ` · novelty ${fix3(f.nov)}${f.grp != null ? " · Matryoshka group " + f.grp : ""}</div>`;
  h += `<h3>${isPCA ? "Galaxies at both ends (score under each)" : "Top-activating galaxies (activation under each)"}</h3><div id="gallery">`;
  if (f.gal) {
    for (const end of Object.keys(f.gal)) {
      if (isPCA) h += `<div class="end">${end} scores</div>`;
      h += gallery(f.gal[end]);
    }
  } else {
    h += `<p class="empty">No gallery embedded for this feature (galleries cover the ${D.galleryTop} ${isPCA ? "first components" : "most frequent features"}).</p>`;
  }
  h += `</div><h3>Spearman ρ with every Galaxy Zoo label</h3>`
    + `<div class="legend">sorted by |ρ|; coral: positive, blue: negative${D.null ? "; dashed: permutation null max |ρ| for that label" : ""}; grey labels are left out of the secondary view</div><div id="corr">`;
  if (f.corr) {
    const order = D.labels.map((l, i) => i).filter(i => f.corr[i] != null)
      .sort((a, b) => Math.abs(f.corr[b]) - Math.abs(f.corr[a]));
    for (const i of order) {
      const r = f.corr[i], w = Math.min(50, 50 * Math.abs(r));
      const nul = D.null && D.null[i] != null ? D.null[i] : null;
      const cls = D.labels[i].startsWith(D.secondaryExcluded + "_") ? " secondary-excluded" : "";
      h += `<div class="corr-row${cls}" data-label="${esc(D.labels[i])}"><span class="name" title="${esc(D.labels[i])}">${esc(D.labels[i])}</span>`
        + `<span class="track"><span class="mid"></span><span class="bar ${r >= 0 ? "pos" : "neg"}" style="width:${w}%"></span>`
        + (nul != null ? `<span class="nullmark" style="left:${50 + 50 * nul}%"></span><span class="nullmark" style="left:${50 - 50 * nul}%"></span>` : "")
        + `</span><span class="val">${r.toFixed(3)}</span></div>`;
    }
  } else h += `<p class="empty">No correlations stored for this feature.</p>`;
  h += `</div>`;
  document.getElementById("detail").innerHTML = h;
}
render();
const m = /feature=(\d+)/.exec(location.hash);
if (m && byId.has(+m[1])) select(+m[1]);
</script></body></html>
"""
