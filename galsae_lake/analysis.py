"""Alignment of SAE features and PCA components with Galaxy Zoo labels: Spearman, novelty, null.

``analyze(lake, model_id)`` reads one model's codes on one split (``sae_activations`` of an SAE
run or ``pca_scores`` of a PCA) and the split's ``votes``, and writes, for partition
``(model_id, split)``:

* ``feature_label_corr``: Spearman rho and n of every feature with every label, exactly as
  ``scipy.stats.spearmanr`` (average ranks for ties) on the rows where the label is not NULL;
  rho = 0 where either side is constant or n <= 10 (the seed's rules). The implicit zeros of
  sparse codes are values: they form one tie group whose average rank is known from counts.
* ``feature_summary``: frequency and its rank, max |rho| and best label (also without the
  smooth-or-featured question: the seed's "secondary" view), novelty = 1 - R^2 of an OLS fit on
  all labels (NaN imputed with the label's median; collinear labels handled by a rank-revealing
  QR) and its rank (``sql/feature_summary.sql``).
* ``label_null``: per label, the max |rho| over all features of the model reached with the label
  shuffled (``--permutations`` times), beside the observed max (``sql/label_null.sql``): a 2,048-
  feature SAE gets more chances than 64 PCA components, and the null says how much.

How the work is split: SQL (``sql/``) reads and joins the inputs, sorts codes, and assembles the
summary, the null and the comparison; numpy does the ranks within each label's row set and the
two large contractions (sparse codes times label ranks, and times an orthonormal basis of the
label matrix), which DuckDB can only do as 100M-row joins. The pure-SQL version of the Spearman
matrix (``sql/feature_label_corr.sql``, ``engine="sql"``) gives the same numbers and is tested
against scipy; it is the readable reference, the numpy engine the fast default.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import duckdb
import numpy as np
import pyarrow as pa
import scipy.linalg
import scipy.sparse
import scipy.stats

from galsae_lake import gz
from galsae_lake.errors import InputError
from galsae_lake.lake import Lake, query, vectors

DEFAULT_SPLIT = "test"
DEFAULT_CATALOG = "volunteers"
DEFAULT_PERMUTATIONS = 20
#: the seed's rule: rho is 0 unless more than this many rows keep the label
MIN_ROWS = 10
#: the seed's rule: a feature whose std is below this is constant (novelty 1)
CONSTANT_STD = 1e-10


@dataclass
class Codes:
    """The non-zero codes of one method on the analysis rows, sorted by (feature, value).

    ``row`` indexes the analysis rows (galaxies of the split with votes); ``frequency`` is the
    share of all galaxies of the split where the code is non-zero.
    """

    method: str
    n_features: int
    feature: np.ndarray   # int32
    row: np.ndarray       # int32
    value: np.ndarray     # float32 or float64
    frequency: np.ndarray  # [n_features] float64

    @classmethod
    def from_dense(cls, method: str, dense: np.ndarray, frequency_rows: np.ndarray | None = None
                   ) -> "Codes":
        """Codes of a dense [rows x features] matrix (zeros become implicit)."""
        dense = np.asarray(dense)
        rows, cols = np.nonzero(dense.T)  # feature-major, so (feature, row) is already sorted
        values = dense[cols, rows]
        order = np.lexsort((values, rows))
        freq_source = dense if frequency_rows is None else frequency_rows
        frequency = (freq_source != 0).mean(axis=0) if len(freq_source) else np.zeros(dense.shape[1])
        return cls(method, dense.shape[1], rows[order].astype(np.int32),
                   cols[order].astype(np.int32), values[order], frequency.astype(np.float64))


@dataclass
class MethodResult:
    method: str
    rho: np.ndarray        # [features x labels]
    n: np.ndarray          # [labels]
    novelty: np.ndarray    # [features]
    frequency: np.ndarray  # [features]
    null: np.ndarray       # [permutations x labels]: max |rho| over features, labels shuffled


@dataclass
class Model:
    model_id: str
    kind: str      # "sae" or "pca"
    encoder: str
    n_features: int
    info: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- the numbers


def label_row_sets(labels: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Group label columns by the rows where they are not NaN.

    Returns (masks, set_of_label): one boolean row mask per distinct row set, and for each label
    the index of its set. Galaxy Zoo answers of one question share a set, so there are at most 13.
    """
    kept = ~np.isnan(labels)
    packed = np.packbits(kept, axis=0).T  # one byte string per label, compared exactly
    unique, set_of_label = np.unique(packed, axis=0, return_inverse=True)
    masks = [np.unpackbits(u, count=labels.shape[0]).astype(bool) for u in unique]
    return masks, np.asarray(set_of_label).reshape(-1)


def _set_ranks(codes: Codes, mask: np.ndarray, groups: np.ndarray):
    """Average ranks of every feature within the rows of ``mask`` (implicit zeros included).

    Returns (keep, dr, var_f): which code entries lie in the set, their rank minus the zero
    block's average rank, and each feature's sum of squared centred ranks over the set.
    """
    n_set = int(mask.sum())
    F = codes.n_features
    keep = mask[codes.row]
    kf = codes.feature[keep]
    kg = groups[keep]
    kv = codes.value[keep]
    m = len(kf)
    # entries stay sorted by (feature, value), so tie groups and features are contiguous runs
    group_start = np.r_[True, kg[1:] != kg[:-1]] if m else np.zeros(0, bool)
    starts = np.flatnonzero(group_start)
    sizes = np.diff(np.r_[starts, m])
    group_first = np.repeat(starts, sizes)
    group_size = np.repeat(sizes, sizes)
    nnz = np.bincount(kf, minlength=F)
    feature_first = np.r_[0, np.cumsum(nnz)[:-1]][kf] if m else np.zeros(0, np.int64)
    rank_nonzero = (group_first - feature_first) + (group_size + 1) / 2.0
    negative = np.bincount(kf, weights=(kv < 0), minlength=F)
    zeros = n_set - nnz
    rank = rank_nonzero + np.where(kv > 0, zeros[kf], 0)
    zero_rank = negative + (zeros + 1) / 2.0
    middle = (n_set + 1) / 2.0
    dr = rank - zero_rank[kf]
    var_f = np.bincount(kf, weights=(rank - middle) ** 2, minlength=F) + zeros * (zero_rank - middle) ** 2
    return keep, dr, var_f


def _tie_groups(codes: Codes) -> np.ndarray:
    f, v = codes.feature, codes.value
    if len(f) == 0:
        return np.zeros(0, np.int64)
    if np.any(np.diff(f) < 0) or np.any((np.diff(f) == 0) & (np.diff(v) < 0)):
        raise ValueError("codes must be sorted by (feature, value)")
    new = np.r_[True, (f[1:] != f[:-1]) | (v[1:] != v[:-1])]
    return np.cumsum(new)


def spearman(codes: Codes, labels: np.ndarray, permutations: int = 0,
             rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spearman rho of every feature with every label column, as scipy.stats.spearmanr.

    ``labels`` is [rows x labels] with NaN where a label is missing; each label uses its own
    non-NaN rows. Returns (rho [features x labels], n [labels], null [permutations x labels]),
    where null holds the max |rho| over features with the label's values shuffled.
    """
    n_rows, L = labels.shape
    F = codes.n_features
    rho = np.zeros((F, L))
    n = (~np.isnan(labels)).sum(axis=0).astype(np.int64)
    null = np.zeros((permutations, L))
    rng = rng or np.random.default_rng(0)
    groups = _tie_groups(codes)
    masks, set_of_label = label_row_sets(labels)
    for s, mask in enumerate(masks):
        cols = np.flatnonzero(set_of_label == s)
        n_set = int(mask.sum())
        if n_set <= MIN_ROWS:
            continue
        keep, dr, var_f = _set_ranks(codes, mask, groups)
        kf = codes.feature[keep]
        counts = np.bincount(kf, minlength=F)
        A = scipy.sparse.csr_matrix((dr, codes.row[keep], np.r_[0, np.cumsum(counts)]),
                                    shape=(F, n_rows))
        ranks = scipy.stats.rankdata(labels[mask][:, cols], axis=0) - (n_set + 1) / 2.0
        var_l = (ranks ** 2).sum(axis=0)
        denominator = np.sqrt(np.outer(var_f, var_l))
        valid = denominator > 0

        def correlate(centred: np.ndarray) -> np.ndarray:
            full = np.zeros((n_rows, centred.shape[1]))
            full[mask] = centred
            numerator = np.asarray(A @ full)
            width = len(cols)
            out = np.zeros_like(numerator)
            tiled = np.tile(valid, (1, numerator.shape[1] // width))
            den = np.tile(denominator, (1, numerator.shape[1] // width))
            out[tiled] = numerator[tiled] / den[tiled]
            return np.clip(out, -1.0, 1.0)

        rho[:, cols] = correlate(ranks)
        # the null: shuffle each label within its rows, several permutations per product
        per_call = max(1, 64 // len(cols))
        for first in range(0, permutations, per_call):
            batch = range(first, min(permutations, first + per_call))
            shuffled = np.hstack([ranks[rng.permutation(n_set)] for _ in batch])
            r = np.abs(correlate(shuffled)).max(axis=0).reshape(len(batch), len(cols))
            null[first:first + len(batch), cols] = r
    return rho, n, null


def label_basis(labels: np.ndarray) -> np.ndarray:
    """An orthonormal basis [rows x rank] of the centred, median-imputed label matrix.

    Columns that are NaN everywhere are left out (as sklearn's SimpleImputer does); dependent
    columns (answers of one question sum to one) are dropped by a rank-revealing QR.
    """
    present = ~np.isnan(labels).all(axis=0)
    X = labels[:, present].astype(np.float64, copy=True)
    if X.shape[1] == 0:
        return np.zeros((len(labels), 0))
    medians = np.nanmedian(X, axis=0)
    holes = np.isnan(X)
    X[holes] = np.take(medians, np.nonzero(holes)[1])
    X -= X.mean(axis=0)
    Q, R, _ = scipy.linalg.qr(X, mode="economic", pivoting=True)
    diagonal = np.abs(np.diag(R))
    if diagonal.size == 0 or diagonal[0] == 0:
        return np.zeros((len(labels), 0))
    tolerance = diagonal[0] * max(X.shape) * np.finfo(float).eps
    return Q[:, : int((diagonal > tolerance).sum())]


def novelty(codes: Codes, basis: np.ndarray) -> np.ndarray:
    """1 - R^2 (clipped to [0, 1]) of each feature regressed on the labels with an intercept.

    ``basis`` comes from :func:`label_basis`. Constant features get novelty 1 (as the seed).
    """
    n_rows = len(basis)
    F = codes.n_features
    counts = np.bincount(codes.feature, minlength=F)
    value = codes.value.astype(np.float64)
    A = scipy.sparse.csr_matrix((value, codes.row, np.r_[0, np.cumsum(counts)]), shape=(F, n_rows))
    projected = np.asarray(A @ basis)
    explained = (projected ** 2).sum(axis=1)
    total_sum = np.bincount(codes.feature, weights=value, minlength=F)
    mean = total_sum / n_rows
    total = (np.bincount(codes.feature, weights=(value - mean[codes.feature]) ** 2, minlength=F)
             + (n_rows - counts) * mean ** 2)
    out = np.ones(F)
    variable = total / n_rows >= CONSTANT_STD ** 2
    out[variable] = 1.0 - np.clip(explained[variable] / total[variable], 0.0, 1.0)
    return out


# ----------------------------------------------------------------------------- the lake side


def resolve_model(lake: Lake, model_id: str) -> Model:
    """The SAE run or PCA named ``model_id``; an InputError naming the known ids otherwise."""
    import json
    known: list[str] = []
    if lake.exists("sae_runs"):
        table = lake.arrow("sae_runs")
        ids = table.column("run_id").to_pylist()
        known += ids
        if model_id in ids:
            row = table.slice(ids.index(model_id), 1).to_pylist()[0]
            config = json.loads(row["config"] or "{}")
            size = sum(config.get("group_sizes") or [])
            if not size and lake.exists("sae_features", run_id=model_id):
                size = int(lake.arrow("sae_features", run_id=model_id).column("feature")
                           .to_numpy().max()) + 1
            return Model(model_id, "sae", row["encoder"], int(size), row)
    if lake.exists("pca_runs"):
        table = lake.arrow("pca_runs")
        ids = table.column("pca_id").to_pylist()
        known += ids
        if model_id in ids:
            row = table.slice(ids.index(model_id), 1).to_pylist()[0]
            return Model(model_id, "pca", row["encoder"], int(row["n_components"]), row)
    hint = f"known models: {', '.join(known)}" if known else "run galsae-lake train-sae or pca first"
    raise InputError(f"unknown model id {model_id!r}; {hint}")


def split_ids(lake: Lake, encoder: str, split: str) -> np.ndarray:
    """The galaxies of a split: the encoder's embeddings rows, else the ``galaxies`` table."""
    if lake.exists("embeddings", encoder=encoder, split=split):
        ids = lake.arrow("embeddings", columns=["id_str"], encoder=encoder, split=split)
    elif lake.exists("galaxies", split=split):
        ids = lake.arrow("galaxies", columns=["id_str"], split=split)
    else:
        raise InputError(f"split {split!r} has no embeddings for encoder {encoder!r} and no galaxies")
    return ids.column("id_str").to_numpy(zero_copy_only=False).astype(object)


def label_matrix(lake: Lake, ids: np.ndarray, split: str, catalog: str,
                 con: duckdb.DuckDBPyConnection) -> np.ndarray:
    """[galaxies x 46] vote fractions in gz.LABEL_NAMES order, NaN where missing or not asked."""
    if not lake.exists("votes", catalog=catalog, split=split):
        have = sorted({p["catalog"] + "/" + p["split"] for p in lake.partitions("votes")})
        raise InputError(f"no votes for split {split!r} in catalog {catalog!r}"
                         + (f" (votes exist for {', '.join(have)})" if have else
                            "; ingest votes first (galsae-lake ingest votes FILE)"))
    con.register("split_ids", pa.table({"id_str": pa.array(ids, pa.string()),
                                        "row": pa.array(np.arange(len(ids), dtype=np.int32))}))
    con.register("label_names", pa.table({
        "label": pa.array(gz.LABEL_NAMES),
        "label_index": pa.array(np.arange(len(gz.LABEL_NAMES), dtype=np.int32))}))
    con.execute(f"CREATE OR REPLACE TEMP VIEW votes_source AS SELECT * FROM "
                f"{lake.duckdb_source('votes', catalog=catalog, split=split)}")
    long = con.execute(query("label_values")).fetchnumpy()
    matrix = np.full((len(ids), len(gz.LABEL_NAMES)), np.nan)
    matrix[long["row"], long["label_index"]] = long["fraction"]
    return matrix


def read_codes(lake: Lake, model: Model, split: str, rows_of_split: np.ndarray, ids: np.ndarray,
               con: duckdb.DuckDBPyConnection) -> Codes:
    """The model's non-zero codes on ``split`` (sql/analysis_codes.sql), rows re-indexed.

    ``rows_of_split[i]`` is the analysis row of the split's i-th galaxy, or -1 if it has no votes.
    """
    table, key = ("sae_activations", "run_id") if model.kind == "sae" else ("pca_scores", "pca_id")
    if not lake.exists(table, **{key: model.model_id, "split": split}):
        raise InputError(f"{table} has no rows for {model.model_id!r} on split {split!r}")
    feature, value = ("feature", "activation") if model.kind == "sae" else ("component", "score")
    source = lake.duckdb_source(table, **{key: model.model_id, "split": split})
    con.execute(f'CREATE OR REPLACE TEMP VIEW codes_source AS SELECT id_str, "{feature}" AS '
                f'feature, "{value}" AS value FROM {source}')
    con.register("split_rows", pa.table({"id_str": pa.array(ids, pa.string()),
                                         "row": pa.array(rows_of_split.astype(np.int32))}))
    result = con.sql(query("analysis_codes"), params={"n_features": model.n_features}).to_arrow_table()
    f = result.column("feature").to_numpy()
    r = result.column("row").to_numpy()
    v = result.column("value").to_numpy()
    del result
    frequency = np.bincount(f, minlength=model.n_features)[: model.n_features] / max(len(ids), 1)
    voted = r >= 0
    return Codes(model.kind, model.n_features, f[voted], r[voted], v[voted], frequency)


def dense_relu_activations(lake: Lake, model: Model, X: np.ndarray) -> np.ndarray:
    """The seed's dense ReLU codes of embeddings ``X`` under SAE ``model`` [rows x features]."""
    from galsae_lake import sae  # imported here: torch is only needed for this option
    if hasattr(sae, "load_sae"):
        network = sae.load_sae(lake, model.model_id)
    else:
        network = sae.MatryoshkaSAE.load(model.info.get("checkpoint")
                                         or lake.model_dir("sae", model.model_id))
    return sae.encode_embeddings(network, X, dense=True)


def compute(codes: Codes, labels: np.ndarray, permutations: int, seed: int = 0,
            engine: str = "numpy") -> MethodResult:
    """Spearman matrix, novelty and the permutation null of one method's codes."""
    rng = np.random.default_rng(seed)
    if engine == "sql":
        rho, n = spearman_sql(codes, labels)
        _, _, null = spearman(codes, labels, permutations, rng) if permutations else (
            None, None, np.zeros((0, labels.shape[1])))
    else:
        rho, n, null = spearman(codes, labels, permutations, rng)
    return MethodResult(codes.method, rho, n, novelty(codes, label_basis(labels)),
                        codes.frequency, null)


def spearman_sql(codes: Codes, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Spearman matrix by sql/feature_label_corr.sql alone (the reference engine)."""
    con = duckdb.connect(":memory:")
    rows, cols = np.nonzero(~np.isnan(labels))
    con.register("codes", pa.table({"method": pa.array(np.full(len(codes.feature), codes.method)),
                                    "feature": codes.feature, "row": codes.row,
                                    "value": codes.value.astype(np.float64)}))
    con.register("labels", pa.table({"label": cols.astype(np.int32), "row": rows.astype(np.int32),
                                     "value": labels[rows, cols]}))
    con.register("features", pa.table({"method": pa.array([codes.method] * codes.n_features),
                                       "feature": np.arange(codes.n_features, dtype=np.int32)}))
    out = con.execute(query("feature_label_corr"), {"min_rows": MIN_ROWS}).fetchnumpy()
    rho = np.zeros((codes.n_features, labels.shape[1]))
    rho[out["feature"], out["label"]] = out["spearman"]
    n = (~np.isnan(labels)).sum(axis=0).astype(np.int64)
    return rho, n


def analyze(lake: Lake, model_id: str, split: str = DEFAULT_SPLIT, catalog: str = DEFAULT_CATALOG,
            exclude_question: str = gz.PRIMARY_QUESTION, permutations: int = DEFAULT_PERMUTATIONS,
            seed: int = 0, seed_variant: bool = False, skip_empty_labels: bool = False,
            engine: str = "numpy", threads: int | None = None, memory_limit: str = "4GB",
            dense_codes: Callable[[Lake, Model, np.ndarray], np.ndarray] | None = None
            ) -> dict[str, Any]:
    """Write feature_label_corr, feature_summary and label_null for (model_id, split).

    ``seed_variant`` adds method ``sae_relu``: the seed's dense ReLU activations of the same SAE
    (pre-activation > 0, no top-k), computed from the split's embeddings. Returns a summary dict.
    """
    started = time.perf_counter()
    if permutations < 0:
        raise InputError("--permutations must be >= 0")
    if exclude_question and exclude_question not in gz.QUESTIONS:
        raise InputError(f"--exclude-question {exclude_question!r} is not a Galaxy Zoo question; "
                         f"one of: {', '.join(gz.QUESTIONS)}")
    if engine not in ("numpy", "sql"):
        raise InputError(f"engine must be numpy or sql, got {engine!r}")
    model = resolve_model(lake, model_id)
    if seed_variant and model.kind != "sae":
        raise InputError("--seed-variant needs an SAE run id (dense ReLU codes of its latents)")
    con = duckdb.connect(":memory:")
    con.execute(f"SET threads = {int(threads or os.cpu_count() or 1)}")
    con.execute("SET memory_limit = $limit", {"limit": memory_limit})
    ids = split_ids(lake, model.encoder, split)
    all_labels = label_matrix(lake, ids, split, catalog, con)
    voted = ~np.isnan(all_labels).all(axis=1)
    if not voted.any():
        raise InputError(f"no votes for split {split!r} in catalog {catalog!r} match the "
                         f"{len(ids)} galaxies of {model.model_id!r}")
    empty = [gz.LABEL_NAMES[j] for j in np.flatnonzero(np.isnan(all_labels[voted]).all(axis=0))]
    if empty and not skip_empty_labels:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise InputError(f"label(s) {shown} have no votes on split {split!r} (NaN everywhere); "
                         f"pass --skip-empty-labels to analyze without them")
    rows_of_split = np.full(len(ids), -1, np.int64)
    rows_of_split[voted] = np.arange(int(voted.sum()))
    labels = all_labels[voted]
    codes = read_codes(lake, model, split, rows_of_split, ids, con)
    results = [compute(codes, labels, permutations, seed, engine)]
    del codes
    if seed_variant:
        X = vectors(lake.arrow("embeddings", columns=["id_str", "embedding"],
                               encoder=model.encoder, split=split))
        dense = (dense_codes or dense_relu_activations)(lake, model, X)
        relu = Codes.from_dense("sae_relu", dense[voted], frequency_rows=dense)
        results.append(compute(relu, labels, permutations, seed, engine))
    tables = summarize(con, results, exclude_question)
    parameters = {"model_id": model_id, "split": split, "catalog": catalog,
                  "exclude_question": exclude_question, "permutations": permutations,
                  "seed": seed, "seed_variant": seed_variant,
                  "skip_empty_labels": skip_empty_labels}
    partition = {"model_id": model_id, "split": split}
    info = {"kind": model.kind, "encoder": model.encoder, "n_features": model.n_features,
            "catalog": catalog, "rows": int(voted.sum()), "galaxies": int(len(ids)),
            "empty_labels": empty}
    upstream = ["sae_activations" if model.kind == "sae" else "pca_scores", "votes"]
    with lake.transaction("analyze", parameters, upstream=upstream) as tx:
        for name, table in tables.items():
            tx.write(name, table, partition=partition, info=info)
    main = results[0]
    best = float(np.abs(main.rho).max()) if main.rho.size else 0.0
    return {"model_id": model_id, "kind": model.kind, "split": split, "rows": int(voted.sum()),
            "features": model.n_features, "labels": len(gz.LABEL_NAMES) - len(empty),
            "max_abs_spearman": best, "median_novelty": float(np.median(main.novelty)),
            "null_q95_median": float(np.median(np.quantile(main.null, 0.95, axis=0)))
            if permutations else None,
            "seconds": time.perf_counter() - started}


def summarize(con: duckdb.DuckDBPyConnection, results: list[MethodResult],
              exclude_question: str | None) -> dict[str, pa.Table]:
    """feature_label_corr, feature_summary (sql/feature_summary.sql) and label_null tables."""
    L = len(gz.LABEL_NAMES)
    corr_parts, stat_parts, null_parts = [], [], []
    for result in results:
        F = result.rho.shape[0]
        corr_parts.append(pa.table({
            "method": pa.array(np.full(F * L, result.method)),
            "feature": pa.array(np.repeat(np.arange(F, dtype=np.int32), L)),
            "label_index": pa.array(np.tile(np.arange(L, dtype=np.int32), F)),
            "spearman": pa.array(result.rho.reshape(-1)),
            "n": pa.array(np.tile(result.n, F)),
        }))
        stat_parts.append(pa.table({
            "method": pa.array(np.full(F, result.method)),
            "feature": pa.array(np.arange(F, dtype=np.int32)),
            "frequency": pa.array(result.frequency),
            "novelty": pa.array(result.novelty),
        }))
        P = result.null.shape[0]
        null_parts.append(pa.table({
            "method": pa.array(np.full(P * L, result.method)),
            "permutation": pa.array(np.repeat(np.arange(P, dtype=np.int32), L)),
            "label_index": pa.array(np.tile(np.arange(L, dtype=np.int32), P)),
            "max_abs_spearman": pa.array(result.null.reshape(-1)),
        }))
    con.register("label_names", pa.table({
        "label": pa.array(gz.LABEL_NAMES),
        "label_index": pa.array(np.arange(L, dtype=np.int32)),
        "question": pa.array([gz.question_of(name) for name in gz.LABEL_NAMES])}))
    con.register("corr_values", pa.concat_tables(corr_parts))
    con.register("feature_stats", pa.concat_tables(stat_parts))
    con.register("null_samples", pa.concat_tables(null_parts))
    params = {"exclude_question": exclude_question or ""}
    corr = con.sql("SELECT c.method, c.feature, l.label, c.spearman, c.n FROM corr_values c "
                       "JOIN label_names l USING (label_index) ORDER BY c.method, c.feature, "
                       "c.label_index").to_arrow_table()
    summary = con.sql(query("feature_summary"), params=params).to_arrow_table()
    null = con.sql(query("label_null")).to_arrow_table()
    return {"feature_label_corr": corr, "feature_summary": summary, "label_null": null}


def compare(lake: Lake, sae_id: str, pca_id: str | None = None, split: str = DEFAULT_SPLIT):
    """SAE vs PCA by frequency-rank group (sql/sae_vs_pca.sql) as a Polars DataFrame.

    ``pca_id`` defaults to the newest analyzed PCA of the SAE's encoder.
    """
    model = resolve_model(lake, sae_id)
    if model.kind != "sae":
        raise InputError(f"{sae_id!r} is a PCA; compare takes an SAE run id")
    pca_id = pca_id or latest_pca(lake, model.encoder)
    for model_id in (sae_id, pca_id):
        if not lake.exists("feature_summary", model_id=model_id, split=split):
            raise InputError(f"{model_id!r} is not analyzed on split {split!r}; run galsae-lake "
                             f"analyze --model {model_id} --split {split} first")
    con = lake.connect(["feature_summary", "label_null"])
    return con.sql(query("sae_vs_pca"), params={"sae_id": sae_id, "pca_id": pca_id,
                                                "split": split}).pl()


def latest_pca(lake: Lake, encoder: str) -> str:
    """The newest PCA fitted on ``encoder``'s embeddings."""
    if lake.exists("pca_runs"):
        runs = lake.read("pca_runs").filter(encoder=encoder).sort("created_at")
        if runs.height:
            return runs["pca_id"][-1]
    raise InputError(f"no PCA for encoder {encoder!r}; run galsae-lake pca --encoder {encoder} first")
