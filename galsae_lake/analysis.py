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

How the work is split: pyarrow reads the codes and votes (ids mapped through the Parquet string
dictionaries; ``sql/analysis_codes.sql`` and ``sql/label_values.sql`` do the same join for
``engine="sql"``, tested equal); SQL assembles the summary, the null and the comparison; numpy
does the ranks within each label's row set and the two large contractions (sparse codes times
label ranks, and times an orthonormal basis of the label matrix), which DuckDB can only do as
100M-row joins. The pure-SQL version of the Spearman matrix (``sql/feature_label_corr.sql``,
``engine="sql"``) gives the same numbers and is tested against scipy; it is the readable
reference, the numpy engine the fast default.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.linalg
import scipy.sparse
import scipy.stats

from galsae_lake import gz
from galsae_lake import labels as label_side
from galsae_lake.errors import InputError
from galsae_lake.lake import Lake, query, vectors
from galsae_lake.models import Model, latest_pca, resolve_model

DEFAULT_SPLIT = "test"
DEFAULT_CATALOG = "volunteers"
DEFAULT_PERMUTATIONS = 20
#: DuckDB's memory limit during analyze (sorts past it spill to a temporary folder)
MEMORY_LIMIT = "2GB"
#: threads over label row sets in numpy (1: the GIL-bound parts made two slower than one)
WORKERS = 1
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


# ----------------------------------------------------------------------------- the numbers


def label_row_sets(labels: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Group label columns by the rows where they are not NaN.

    Returns (masks, set_of_label): one boolean row mask per distinct row set, and for each label
    the index of its set. Galaxy Zoo answers of one question share a set, so there are at most 13.
    """
    kept = ~np.isnan(labels)
    packed = np.packbits(kept, axis=0)  # compared exactly, as bytes, one column per label
    index: dict[bytes, int] = {}
    set_of_label = np.array([index.setdefault(packed[:, j].tobytes(), len(index))
                             for j in range(labels.shape[1])], dtype=np.int64)
    masks = [kept[:, int(np.argmax(set_of_label == s))].copy() for s in range(len(index))]
    return masks, set_of_label


#: code entries handled at once (bounds memory: a few arrays of this many float64 values)
BLOCK_ENTRIES = 4_000_000


def feature_blocks(codes: Codes, block_entries: int = BLOCK_ENTRIES) -> list[tuple[int, int, int, int]]:
    """Split the sorted codes into runs of whole features: (first feature, end feature, start, stop)."""
    F = codes.n_features
    if len(codes.feature) and (np.any(np.diff(codes.feature) < 0)):
        raise ValueError("codes must be sorted by (feature, value)")
    bounds = np.searchsorted(codes.feature, np.arange(F + 1))
    blocks, first = [], 0
    while first < F:
        end = first + 1
        while end < F and bounds[end + 1] - bounds[first] <= block_entries:
            end += 1
        blocks.append((first, end, int(bounds[first]), int(bounds[end])))
        first = end
    return blocks


@dataclass
class _Block:
    """One run of whole features of the sorted codes, with its set-independent tie structure."""

    first: int             # first feature
    F: int                 # features in the block
    feature: np.ndarray    # block-local feature of each entry (int32)
    row: np.ndarray
    value: np.ndarray
    bounds: np.ndarray     # [F + 1] index of each feature's first entry (int64)
    tie: np.ndarray        # entries in a tie group of two or more (rare for float codes)
    tie_start: np.ndarray  # index of the first entry of each such entry's tie group
    tie_end: np.ndarray    # index one past its last entry
    negatives: bool        # any negative code (SAE codes are all positive)

    @classmethod
    def of(cls, codes: Codes, first: int, end: int, start: int, stop: int) -> "_Block":
        f = codes.feature[start:stop] - first
        v = codes.value[start:stop]
        m = len(f)
        bounds = np.concatenate(([0], np.cumsum(np.bincount(f, minlength=end - first))))
        same = np.zeros(m, bool)  # entry equals the one before it, in the same feature
        if m:
            same[1:] = (f[1:] == f[:-1]) & (v[1:] == v[:-1])
        tied = same.copy()
        tied[:-1] |= same[1:]
        tie = np.flatnonzero(tied)
        if len(tie):
            opens = ~same[tie]  # the first entry of each tie group
            group = np.cumsum(opens) - 1
            starts = tie[opens]
            ends = np.append(tie[np.flatnonzero(opens)[1:] - 1] + 1, tie[-1] + 1)
            tie_start, tie_end = starts[group], ends[group]
        else:
            tie_start = tie_end = tie
        return cls(first, end - first, f, codes.row[start:stop], v, bounds, tie,
                   tie_start, tie_end, bool((v < 0).any()))

    def ranks(self, mask: np.ndarray, position: np.ndarray):
        """Average ranks of the block's features within the rows of ``mask``.

        Returns (kf, kc, dr, var_f, nnz): the local feature and the set position
        (``position[row]``) of each entry inside the set (grouped by feature), its rank minus the
        rank of the feature's zero block (implicit zeros are one tie group, below positives and
        above negatives), each feature's sum of squared centred ranks over the set, and its
        entries in the set. Ranks are half-integers: the work is done on twice the rank, in exact
        integers. Without ties an entry's rank among its feature's kept entries is its index
        among them; only entries of tie groups need a look-up.
        """
        n_set = int(mask.sum())
        F = self.F
        if n_set == len(mask):  # every row: kept indices are entry indices
            keep = idx = None
            kf, kv, rows = self.feature, self.value, self.row
            starts = self.bounds
        else:
            keep = mask[self.row]
            idx = np.flatnonzero(keep)
            kf, rows = self.feature[idx], self.row[idx]
            kv = self.value[idx] if self.negatives else None
            starts = np.searchsorted(idx, self.bounds)  # kept entries before each feature
        nnz = np.diff(starts)
        m = len(kf)
        # 2 b + t: b kept entries of the feature below the entry's tie group, t in it (t = 1
        # without ties): twice the average rank among the feature's kept entries, minus one
        twice = np.arange(m, dtype=np.int64)
        twice -= np.repeat(starts[:-1], nnz)
        twice *= 2
        twice += 1
        ties = np.zeros(F)  # sum over kept tie groups of t^3 - t, per feature
        if len(self.tie):
            if idx is None:
                at, low, high = self.tie, self.tie_start, self.tie_end
            else:
                sel = keep[self.tie]
                at = np.searchsorted(idx, self.tie[sel])  # kept_before(x) = searchsorted(idx, x)
                low = np.searchsorted(idx, self.tie_start[sel])
                high = np.searchsorted(idx, self.tie_end[sel])
            size = high - low
            twice[at] = low + high - 2 * starts[kf[at]]
            ties = np.bincount(kf[at], weights=(size * size - 1).astype(np.float64), minlength=F)
        zeros = n_set - nnz
        # sum of squared centred average ranks: (n^3 - n - sum over tie groups of t^3 - t) / 12,
        # the zeros one group; n^3 - z^3 as (n - z)(n^2 + n z + z^2), without cancellation
        n64, z64 = float(n_set), zeros.astype(np.float64)
        var_f = (nnz * (n64 * n64 + n64 * z64 + z64 * z64) - nnz - ties) / 12.0
        if self.negatives and not zeros.any():  # dense codes (PCA): no zero block at all
            twice -= n_set        # twice the centred rank
            dr = twice * 0.5      # any constant shift works: centred label ranks sum to 0
        elif self.negatives:
            negative = np.bincount(kf[kv < 0], minlength=F)
            twice += 1
            twice += np.where(kv > 0, 2 * zeros[kf], 0)
            twice_zero = 2 * negative + zeros + 1
            dr = (twice - twice_zero[kf]) * 0.5
        else:  # all codes positive (SAE): every entry ranks above the zero block (2 z + 1 higher)
            twice += np.repeat(zeros, nnz)
            dr = twice * 0.5      # (rank - zero_rank): the zero block sits at (z + 1) / 2
        return kf, position[rows], dr, var_f, nnz


def _csr(kf: np.ndarray, kr: np.ndarray, data: np.ndarray, F: int, n_cols: int):
    """A [F x n_cols] CSR matrix from entries already grouped by feature."""
    indptr = np.concatenate(([0], np.cumsum(np.bincount(kf, minlength=F))))
    return scipy.sparse.csr_matrix((data, kr, indptr), shape=(F, n_cols))


#: features non-zero on more than this share of a set's rows are multiplied as a dense matrix
#: (measured at 35,000 rows: 0.3 beat 0.1 and all-sparse for SAE codes; PCA is all dense)
DENSE_SHARE = 0.3


#: sets with more rows than this are multiplied in row order (their label matrices exceed the cache)
BY_ROW_ROWS = 100_000


class _CodeMatrix:
    """A [features x rows] matrix of code entries: frequent features dense (BLAS), the rest CSR.

    Entries come grouped by feature (``counts`` per feature), so each dense feature is one slice.
    """

    def __init__(self, kf, kc, dr, F: int, n_cols: int, float32: bool,
                 counts: np.ndarray | None = None):
        counts = np.bincount(kf, minlength=F) if counts is None else counts
        starts = np.concatenate(([0], np.cumsum(counts)))
        is_dense = counts > DENSE_SHARE * n_cols
        self.F = F
        self.dense_features = np.flatnonzero(is_dense)
        self.dense = np.zeros((len(self.dense_features), n_cols))
        for i, f in enumerate(self.dense_features):
            self.dense[i, kc[starts[f]:starts[f + 1]]] = dr[starts[f]:starts[f + 1]]
        if len(self.dense_features):
            sparse_entries = np.repeat(~is_dense, counts)
            kc, dr = kc[sparse_entries], dr[sparse_entries]
            counts = np.where(is_dense, 0, counts)
        index = np.int32 if len(kc) < 2**31 and n_cols < 2**31 else np.int64
        if n_cols > BY_ROW_ROWS:
            # CSC, entries in row order: the product streams through the rows of X once and
            # scatters into the small [F x columns] result, instead of jumping between rows
            # of an X far larger than the cache (a feature's entries are in value order)
            order = np.argsort(kc)
            local = np.repeat(np.arange(F, dtype=index), counts)[order]
            dr = dr[order]
            indptr = np.concatenate(([0], np.cumsum(np.bincount(kc, minlength=n_cols))))
            indptr = indptr.astype(index)
            make = lambda data: scipy.sparse.csc_matrix((data, local, indptr), shape=(F, n_cols))
        else:
            indptr = np.concatenate(([0], np.cumsum(counts))).astype(index)
            kc = kc.astype(index, copy=False)  # same index type: scipy would copy to convert
            make = lambda data: scipy.sparse.csr_matrix((data, kc, indptr), shape=(F, n_cols))
        # built directly in each precision: .astype() would sort the indices first, needlessly
        self.sparse = make(dr)
        self.dense32 = self.dense.astype(np.float32) if float32 else None
        self.sparse32 = make(dr.astype(np.float32)) if float32 else None

    def times(self, X: np.ndarray, float32: bool = False) -> np.ndarray:
        """self @ X [F x columns]: float64, or float32 (for the null) with ``float32``."""
        sparse, dense = (self.sparse32, self.dense32) if float32 else (self.sparse, self.dense)
        out = np.asarray(sparse @ X)
        if len(self.dense_features):
            out[self.dense_features] += dense @ X
        return out


#: bytes of shuffled label ranks kept for reuse across feature blocks (else rebuilt per block)
SHUFFLE_CACHE_BYTES = 768 * 2**20


def spearman(codes: Codes, labels: np.ndarray, permutations: int = 0, seed: int = 0,
             block_entries: int = BLOCK_ENTRIES, threads: int = 1
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spearman rho of every feature with every label column, as scipy.stats.spearmanr.

    ``labels`` is [rows x labels] with NaN where a label is missing; each label uses its own
    non-NaN rows. Returns (rho [features x labels], n [labels], null [permutations x labels]),
    where null holds the max |rho| over features with the rows of the label's set shuffled
    (answers of one question are shuffled together, keeping their joint distribution; the
    shuffled products run in float32, ample for a null). Row sets run on ``threads`` threads
    (numpy and scipy.sparse release the GIL); the result does not depend on it.
    """
    n_rows, L = labels.shape
    F = codes.n_features
    rho = np.zeros((F, L))
    n = (~np.isnan(labels)).sum(axis=0).astype(np.int64)
    null = np.zeros((permutations, L))
    spans = feature_blocks(codes, block_entries)
    # built once, shared by every row set (about 4 bytes per code entry: the local features)
    blocks = [_Block.of(codes, *span) for span in spans]
    masks, set_of_label = label_row_sets(labels)
    streams = np.random.SeedSequence(seed).spawn(len(masks))

    def one_set(s: int) -> None:
        mask = masks[s]
        cols = np.flatnonzero(set_of_label == s)
        n_set = int(mask.sum())
        if n_set <= MIN_ROWS:
            return
        position = np.cumsum(mask, dtype=np.int32) - 1  # row -> column of the set's matrices
        ranks = average_ranks(labels[mask][:, cols]) - (n_set + 1) / 2.0
        var_l = (ranks ** 2).sum(axis=0)
        width = len(cols)
        rng = np.random.default_rng(streams[s])
        shuffles = np.array([rng.permutation(n_set) for _ in range(permutations)], np.int32)
        per_call = max(1, 64 // width)  # shuffled label columns per product: bounds memory
        ranks32 = np.ascontiguousarray(ranks, np.float32)
        cache = len(spans) == 1 or n_set * permutations * width * 4 <= SHUFFLE_CACHE_BYTES
        batches: dict[int, np.ndarray] = {}

        def shuffled(p0: int) -> np.ndarray:
            """[n_set x (batch * width)] label ranks, permutation by permutation (one gather)."""
            if p0 in batches:
                return batches[p0]
            batch = ranks32[shuffles[p0:p0 + per_call]]  # [batch x n_set x width]
            out = np.ascontiguousarray(batch.transpose(1, 0, 2)).reshape(n_set, -1)
            if cache:
                batches[p0] = out
            return out

        set_null = np.zeros((permutations, width))
        for block in blocks:
            kf, kc, dr, var_f, nnz = block.ranks(mask, position)
            A = _CodeMatrix(kf, kc, dr, block.F, n_set, float32=permutations > 0, counts=nnz)
            del kf, kc, dr
            denominator = np.sqrt(np.outer(var_f, var_l))
            valid = denominator > 0
            safe = np.where(valid, denominator, 1.0)

            def correlate(numerator: np.ndarray) -> np.ndarray:
                out = numerator.reshape(len(var_f), -1, width) / safe[:, None, :]
                out[np.broadcast_to(~valid[:, None, :], out.shape)] = 0.0
                return np.clip(out, -1.0, 1.0)

            rho[block.first:block.first + block.F, cols] = correlate(A.times(ranks))[:, 0, :]
            inverse = np.where(valid, 1.0 / safe, 0.0).astype(np.float32)  # 0: rho is 0 there
            for p0 in range(0, permutations, per_call):
                batch = shuffles[p0:p0 + per_call]
                scaled = A.times(shuffled(p0), float32=True).reshape(len(var_f), len(batch), width)
                np.abs(scaled, out=scaled)
                scaled *= inverse[:, None, :]
                best = np.minimum(scaled.max(axis=0), 1.0)
                part = set_null[p0:p0 + len(batch)]
                np.maximum(part, best, out=part)
        null[:, cols] = set_null

    # the biggest sets first, so that two threads finish together
    order = sorted(range(len(masks)), key=lambda s: -int(masks[s].sum()))
    if threads > 1 and len(masks) > 1:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one_set, order))
    else:
        for s in order:
            one_set(s)
    return rho, n, null


def average_ranks(X: np.ndarray) -> np.ndarray:
    """1-based average ranks of each column (scipy.stats.rankdata, method "average"), exactly.

    A tie group filling sorted positions [lo, hi) gets the mean of ranks lo+1 .. hi,
    (lo + hi + 1) / 2. An unstable (SIMD) argsort suffices, since ties share one rank:
    rankdata's stable argsort is about twice slower.
    """
    n = X.shape[0]
    out = np.empty(X.shape)
    for j in range(X.shape[1]):
        order = np.argsort(X[:, j])
        ordered = X[order, j]
        new = np.ones(n, bool)
        new[1:] = ordered[1:] != ordered[:-1]
        starts = np.flatnonzero(new)
        ends = np.append(starts[1:], n)
        out[order, j] = np.repeat((starts + ends + 1) * 0.5, ends - starts)
    return out


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


def novelty(codes: Codes, basis: np.ndarray, block_entries: int = BLOCK_ENTRIES) -> np.ndarray:
    """1 - R^2 (clipped to [0, 1]) of each feature regressed on the labels with an intercept.

    ``basis`` comes from :func:`label_basis`: R^2 = |basis' y|^2 / |y - mean(y)|^2, the basis
    being orthogonal to the constant. Constant features get novelty 1 (as the seed).
    """
    n_rows = len(basis)
    out = np.ones(codes.n_features)
    for first, end, start, stop in feature_blocks(codes, block_entries):
        F = end - first
        kf = codes.feature[start:stop] - first
        value = codes.value[start:stop].astype(np.float64)
        counts = np.bincount(kf, minlength=F)
        matrix = _CodeMatrix(kf, codes.row[start:stop], value, F, n_rows, float32=False,
                             counts=counts)
        projected = matrix.times(basis)
        explained = (projected ** 2).sum(axis=1)
        mean = np.bincount(kf, weights=value, minlength=F) / n_rows
        total = (np.bincount(kf, weights=(value - mean[kf]) ** 2, minlength=F)
                 + (n_rows - counts) * mean ** 2)
        variable = total / n_rows >= CONSTANT_STD ** 2
        block = np.ones(F)
        block[variable] = 1.0 - np.clip(explained[variable] / total[variable], 0.0, 1.0)
        out[first:end] = block
    return out


# ----------------------------------------------------------------------------- the lake side


def split_ids(lake: Lake, encoder: str, split: str) -> np.ndarray:
    """The galaxies of a split: the encoder's embeddings rows, else the ``galaxies`` table."""
    if lake.exists("embeddings", encoder=encoder, split=split):
        ids = lake.arrow("embeddings", columns=["id_str"], encoder=encoder, split=split)
    elif lake.exists("galaxies", split=split):
        ids = lake.arrow("galaxies", columns=["id_str"], split=split)
    else:
        raise InputError(f"split {split!r} has no embeddings for encoder {encoder!r} and no galaxies")
    return ids.column("id_str").to_numpy(zero_copy_only=False).astype(object)


def _rows_in(column: pa.ChunkedArray, ids: pa.Array) -> np.ndarray:
    """Index in ``ids`` of each value of a string column (-1 where absent), via its dictionary.

    Read with ``read_dictionary``, a Parquet string column comes as dictionary chunks: only the
    dictionary (one entry per distinct value) is looked up, then its indices are gathered.
    """
    parts = []
    for chunk in column.chunks:
        if not pa.types.is_dictionary(chunk.type):
            chunk = chunk.dictionary_encode()
        lookup = pc.index_in(chunk.dictionary, value_set=ids).fill_null(-1).to_numpy()
        lookup = np.append(lookup.astype(np.int64), -1)  # the last slot: NULL values
        indices = chunk.indices.fill_null(len(lookup) - 1).to_numpy().astype(np.int64)
        parts.append(lookup[indices])
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _read(lake: Lake, table: str, columns: list[str], dictionary: list[str], **filters) -> pa.Table:
    """Columns of the table's partition files, string keys as dictionaries (no partition keys)."""
    parts = [pq.read_table(path, columns=columns, read_dictionary=dictionary)
             for path in lake.files(table, **filters)]
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def _float_column(table: pa.Table, name: str, dtype) -> np.ndarray:
    """A numeric column as numpy ``dtype``, NULL as NaN."""
    column = table.column(name)
    if column.null_count:
        column = column.cast(pa.float64()).fill_null(np.nan)
    return np.asarray(column.to_numpy(), dtype)


def label_matrix(lake: Lake, ids: np.ndarray, split: str, catalog: str,
                 con: duckdb.DuckDBPyConnection, engine: str = "numpy") -> np.ndarray:
    """[galaxies x 46] vote fractions in gz.LABEL_NAMES order, NaN where missing or not asked.

    ``engine="sql"`` joins with sql/label_values.sql; the default reads the Parquet files with
    pyarrow and maps ids through the files' string dictionaries (same result, no string join).
    """
    if not lake.exists("votes", catalog=catalog, split=split):
        have = sorted({p["catalog"] + "/" + p["split"] for p in lake.partitions("votes")})
        raise InputError(f"no votes for split {split!r} in catalog {catalog!r}"
                         + (f" (votes exist for {', '.join(have)})" if have else
                            "; ingest votes first (galsae-lake ingest votes FILE)"))
    matrix = np.full((len(ids), len(gz.LABEL_NAMES)), np.nan)
    if engine != "sql":
        votes = _read(lake, "votes", ["id_str", "label", "fraction"], ["id_str", "label"],
                      catalog=catalog, split=split)
        row = _rows_in(votes.column("id_str"), pa.array(ids, pa.string()))
        label = _rows_in(votes.column("label"), pa.array(gz.LABEL_NAMES, pa.string()))
        fraction = _float_column(votes, "fraction", np.float64)
        keep = (row >= 0) & (label >= 0) & ~np.isnan(fraction)
        matrix[row[keep], label[keep]] = fraction[keep]
        return matrix
    con.register("split_ids", pa.table({"id_str": pa.array(ids, pa.string()),
                                        "row": pa.array(np.arange(len(ids), dtype=np.int32))}))
    con.register("label_names", pa.table({
        "label": pa.array(gz.LABEL_NAMES),
        "label_index": pa.array(np.arange(len(gz.LABEL_NAMES), dtype=np.int32))}))
    con.execute(f"CREATE OR REPLACE TEMP VIEW votes_source AS SELECT * FROM "
                f"{lake.duckdb_source('votes', catalog=catalog, split=split)}")
    long = con.sql(query("label_values")).to_arrow_table()  # (fetchnumpy would import pandas)
    matrix[long.column("row").to_numpy(), long.column("label_index").to_numpy()] = \
        long.column("fraction").to_numpy()
    return matrix


def read_codes(lake: Lake, model: Model, split: str, rows_of_split: np.ndarray, ids: np.ndarray,
               con: duckdb.DuckDBPyConnection, engine: str = "numpy") -> Codes:
    """The model's non-zero codes on ``split``, rows re-indexed, sorted by (feature, value).

    ``rows_of_split[i]`` is the analysis row of the split's i-th galaxy, or -1 if it has no votes.
    ``engine="sql"`` joins with sql/analysis_codes.sql; the default reads the Parquet files with
    pyarrow (ids mapped through the files' string dictionaries; same result, no string join).
    """
    table, key, feature, value = model.codes
    if not lake.exists(table, **{key: model.model_id, "split": split}):
        raise InputError(f"{table} has no rows for {model.model_id!r} on split {split!r}")
    n_rows = int(rows_of_split.max()) + 1 if len(rows_of_split) else 1
    if engine != "sql":
        data = _read(lake, table, ["id_str", feature, value], ["id_str"],
                     **{key: model.model_id, "split": split})
        at = _rows_in(data.column("id_str"), pa.array(ids, pa.string()))
        f = np.asarray(data.column(feature).fill_null(-1).to_numpy(), np.int64)
        v = _float_column(data, value, np.float32)
        del data
        # the rules of sql/analysis_codes.sql: galaxies of the split, non-zero, not NaN, in range
        keep = (at >= 0) & (v != 0) & ~np.isnan(v) & (f >= 0) & (f < model.n_features)
        f, v = f[keep].astype(np.int32), v[keep]
        r = rows_of_split[at[keep]].astype(np.int32)
        del at, keep
        frequency = np.bincount(f, minlength=model.n_features) / max(len(ids), 1)
        voted = r >= 0
        if not voted.all():  # galaxies without votes count for frequency only
            f, r, v = f[voted], r[voted], v[voted]
        f, r, v = sort_codes(f, r, v, n_rows)
        return Codes(model.kind, model.n_features, f, r, v, frequency)
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
    if not voted.all():  # galaxies without votes count for frequency only
        f, r, v = f[voted], r[voted], v[voted]
    f, r, v = sort_codes(f, r, v, n_rows)
    return Codes(model.kind, model.n_features, f, r, v, frequency)


def sort_codes(feature: np.ndarray, row: np.ndarray, value: np.ndarray, n_rows: int):
    """Codes sorted by (feature, value): one in-place sort of packed 64-bit keys.

    The key is feature | order-preserving bits of the float32 value | row, so sorting keys
    sorts the entries and carries the row along; about 5x faster than DuckDB's ORDER BY or
    numpy's lexsort. Falls back to an argsort when the three do not fit in 64 bits.
    """
    value = np.ascontiguousarray(value, np.float32)
    bits = value.view(np.uint32)
    # flip negatives entirely and set the sign bit of positives: unsigned order = float order
    ordered = np.where(bits >> 31 == 1, ~bits, bits | np.uint32(0x80000000))
    del bits
    feature_bits = max(1, int(feature.max(initial=0)).bit_length())
    row_bits = max(1, int(n_rows - 1).bit_length())
    if feature_bits + 32 + row_bits > 64:
        order = np.argsort((feature.astype(np.uint64) << np.uint64(32)) | ordered)
        return feature[order], row[order], value[order]
    key = feature.astype(np.uint64) << np.uint64(32 + row_bits)
    key |= ordered.astype(np.uint64) << np.uint64(row_bits)
    del ordered
    key |= row.astype(np.uint64)
    key.sort()
    row = (key & np.uint64((1 << row_bits) - 1)).astype(np.int32)
    ordered = ((key >> np.uint64(row_bits)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    feature = (key >> np.uint64(32 + row_bits)).astype(np.int32)
    del key
    bits = np.where(ordered >> 31 == 1, ordered ^ np.uint32(0x80000000), ~ordered)
    return feature, row, bits.view(np.float32)


def dense_relu_activations(lake: Lake, model: Model, X: np.ndarray) -> np.ndarray:
    """The seed's dense ReLU codes of embeddings ``X`` under SAE ``model`` [rows x features]."""
    try:  # imported here: torch is only needed for this option
        from galsae_lake import sae
    except ImportError as exc:
        raise InputError(f"--reference-variant needs the SAE module (galsae_lake.sae): {exc}") from None
    try:
        from galsae_lake.train import load_sae
    except ImportError:
        load_sae = getattr(sae, "load_sae", None)
    if load_sae is not None:
        network = load_sae(lake, model.model_id)
    else:
        network = sae.MatryoshkaSAE.load(lake.model_dir("sae", model.model_id))
    return sae.encode_embeddings(network, X, dense=True)


def compute(codes: Codes, labels: np.ndarray, permutations: int, seed: int = 0,
            engine: str = "numpy", threads: int = 1) -> MethodResult:
    """Spearman matrix, novelty and the permutation null of one method's codes."""
    if engine == "sql":
        rho, n = spearman_sql(codes, labels)
        null = spearman(codes, labels, permutations, seed, threads=threads)[2]
    else:
        rho, n, null = spearman(codes, labels, permutations, seed, threads=threads)
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
    out = con.sql(query("feature_label_corr"), params={"min_rows": MIN_ROWS}).to_arrow_table()
    rho = np.zeros((codes.n_features, labels.shape[1]))
    rho[out.column("feature").to_numpy(), out.column("label").to_numpy()] = \
        out.column("spearman").to_numpy()
    n = (~np.isnan(labels)).sum(axis=0).astype(np.int64)
    return rho, n


def analyze(lake: Lake, model_id: str, split: str = DEFAULT_SPLIT,
            catalog: str | list[str] = DEFAULT_CATALOG, exclude_question: str | None = None,
            permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0,
            reference_variant: bool = False, skip_empty_labels: bool = False,
            engine: str = "numpy", threads: int | None = None) -> dict[str, Any]:
    """Write feature_label_corr, feature_summary and label_null for (model_id, split).

    ``catalog``: one catalog or several ("a,b" or a list; labels then named ``<catalog>:<label>``),
    votes of any tree or plain labels (:mod:`galsae_lake.labels`); labels with no value on the
    split are left out and listed in the result's ``empty_labels``. ``exclude_question`` None
    leaves out the tree's root question in the secondary view (none for plain labels).
    ``reference_variant`` adds method ``sae_relu``: the reference code's (the seed's) dense ReLU
    activations of the same SAE (pre-activation > 0, no top-k), computed from the split's
    embeddings. ``seed`` is the random seed of the label shuffles. ``threads`` is DuckDB's
    (default: all cores). Returns a summary dict.
    """
    started = time.perf_counter()
    if permutations < 0:
        raise InputError("--permutations must be >= 0")
    catalog = label_side.parse_catalogs(catalog)  # one or several catalogs (labels.py)
    if engine not in ("numpy", "sql"):
        raise InputError(f"engine must be numpy or sql, got {engine!r}")
    model = resolve_model(lake, model_id)
    if reference_variant and model.kind != "sae":
        raise InputError("--reference-variant needs an SAE run id (dense ReLU codes of its latents)")
    spill = tempfile.TemporaryDirectory(prefix="galsae-analyze-")
    con = duckdb.connect(":memory:")
    con.execute(f"SET threads = {int(threads or os.cpu_count() or 1)}")
    con.execute("SET memory_limit = $limit", {"limit": MEMORY_LIMIT})
    con.execute("SET temp_directory = $dir", {"dir": spill.name})  # sorts past the limit spill here
    try:
        return _analyze(lake, con, model, split, catalog, exclude_question, permutations, seed,
                        reference_variant, skip_empty_labels, engine, started)
    finally:
        con.close()
        spill.cleanup()


def _analyze(lake, con, model, split, catalog, exclude_question, permutations, seed,
             reference_variant, skip_empty_labels, engine, started):
    model_id = model.model_id
    ids = split_ids(lake, model.encoder, split)
    label_set = label_side.read_labels(lake, ids, split, catalog, exclude_question)
    exclude_question = label_set.exclude_question
    voted = ~np.isnan(label_set.values).all(axis=1)
    if not voted.any():
        raise InputError(f"no labels for split {split!r} in catalog {','.join(catalog)!r} match the "
                         f"{len(ids)} galaxies of {model.model_id!r}")
    # labels with no value on the split are left out (and named in the result), not an error
    filled = ~np.isnan(label_set.values[voted]).all(axis=0)
    empty = [name for name, ok in zip(label_set.names, filled) if not ok]
    label_set = label_set.without(filled)
    rows_of_split = np.full(len(ids), -1, np.int64)
    rows_of_split[voted] = np.arange(int(voted.sum()))
    labels = label_set.values[voted]
    codes = read_codes(lake, model, split, rows_of_split, ids, con, engine)
    timings = {"read": time.perf_counter() - started}
    results = [compute(codes, labels, permutations, seed, engine, WORKERS)]
    del codes
    timings["compute"] = time.perf_counter() - started - timings["read"]
    if reference_variant:
        X = vectors(lake.arrow("embeddings", columns=["id_str", "embedding"],
                               encoder=model.encoder, split=split))
        dense = dense_relu_activations(lake, model, X)
        relu = Codes.from_dense("sae_relu", dense[voted], frequency_rows=dense)
        results.append(compute(relu, labels, permutations, seed, engine, WORKERS))
    mark = time.perf_counter()
    tables = summarize(con, results, exclude_question, label_set.names, label_set.questions)
    timings["summarize"] = time.perf_counter() - mark
    mark = time.perf_counter()
    parameters = {"model_id": model_id, "split": split, "catalog": ",".join(catalog),
                  "exclude_question": exclude_question, "permutations": permutations,
                  "seed": seed, "reference_variant": reference_variant,
                  "skip_empty_labels": skip_empty_labels}
    partition = {"model_id": model_id, "split": split}
    info = {"kind": model.kind, "encoder": model.encoder, "n_features": model.n_features,
            "catalog": ",".join(catalog), "rows": int(voted.sum()), "galaxies": int(len(ids)),
            "empty_labels": empty, "labels": label_set.names,
            "trees": {c.name: c.tree.name if c.tree else None for c in label_set.catalogs}}
    upstream = [model.codes.table, *sorted({c.table for c in label_set.catalogs})]
    with lake.transaction("analyze", parameters, upstream=upstream) as tx:
        for name, table in tables.items():
            tx.write(name, table, partition=partition, info=info)
    timings["write"] = time.perf_counter() - mark
    main = results[0]
    best = float(np.abs(main.rho).max()) if main.rho.size else 0.0
    return {"model_id": model_id, "kind": model.kind, "split": split, "rows": int(voted.sum()),
            "features": model.n_features, "labels": len(label_set.names), "empty_labels": empty,
            "max_abs_spearman": best, "median_novelty": float(np.median(main.novelty)),
            "null_q95_median": float(np.median(np.quantile(main.null, 0.95, axis=0)))
            if permutations else None,
            "seconds": time.perf_counter() - started, "timings": timings}


def _by_label(method: str, row_name: str, matrix: np.ndarray, value_name: str) -> pa.Table:
    """A [rows x labels] matrix as a long table: method, row_name, label_index, value_name."""
    rows, labels = matrix.shape
    return pa.table({
        "method": pa.repeat(method, rows * labels),
        row_name: pa.array(np.repeat(np.arange(rows, dtype=np.int32), labels)),
        "label_index": pa.array(np.tile(np.arange(labels, dtype=np.int32), rows)),
        value_name: pa.array(matrix.reshape(-1)),
    })


def summarize(con: duckdb.DuckDBPyConnection, results: list[MethodResult],
              exclude_question: str | None, label_names: list[str] | None = None,
              questions: list[str] | None = None) -> dict[str, pa.Table]:
    """feature_label_corr, feature_summary (sql/feature_summary.sql) and label_null tables.

    ``label_names`` / ``questions``: the analyzed labels and their questions (default: Euclid's)."""
    label_names = list(gz.LABEL_NAMES) if label_names is None else list(label_names)
    if questions is None:
        questions = [gz.question_of(name) for name in label_names]
    L = len(label_names)
    corr_parts, stat_parts, null_parts = [], [], []
    for result in results:
        F = result.rho.shape[0]
        corr_parts.append(_by_label(result.method, "feature", result.rho, "spearman")
                          .append_column("n", pa.array(np.tile(result.n, F))))
        stat_parts.append(pa.table({
            "method": pa.repeat(result.method, F),
            "feature": pa.array(np.arange(F, dtype=np.int32)),
            "frequency": pa.array(result.frequency),
            "novelty": pa.array(result.novelty),
        }))
        null_parts.append(_by_label(result.method, "permutation", result.null, "max_abs_spearman"))
    con.register("label_names", pa.table({
        "label": pa.array(label_names, pa.string()),
        "label_index": pa.array(np.arange(L, dtype=np.int32)),
        "question": pa.array(questions, pa.string())}))
    corr_values = pa.concat_tables(corr_parts)
    con.register("corr_values", corr_values)
    con.register("feature_stats", pa.concat_tables(stat_parts))
    con.register("null_samples", pa.concat_tables(null_parts))
    params = {"exclude_question": exclude_question or ""}
    names = pa.array(label_names, pa.string())
    corr = pa.table({  # already in (method, feature, label) order
        "method": corr_values.column("method"), "feature": corr_values.column("feature"),
        "label": pa.DictionaryArray.from_arrays(
            corr_values.column("label_index").combine_chunks(), names).cast(pa.string()),
        "spearman": corr_values.column("spearman"), "n": corr_values.column("n")})
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


def analyze_with_pca(lake: Lake, sae_id: str, split: str = DEFAULT_SPLIT, **options: Any
                     ) -> tuple[list[dict[str, Any]], Any]:
    """Analyze SAE run ``sae_id`` and the newest PCA of its encoder on ``split``, then compare
    them (:func:`compare`). ``options`` go to :func:`analyze` (``reference_variant`` to the SAE's
    only). Returns both analyses' summaries and the comparison frame."""
    model = resolve_model(lake, sae_id)
    if model.kind != "sae":
        raise InputError(f"{sae_id!r} is a PCA; --with-pca needs an SAE run id")
    pca_id = latest_pca(lake, model.encoder)
    results = [analyze(lake, sae_id, split, **options)]
    options.pop("reference_variant", None)
    results.append(analyze(lake, pca_id, split, **options))
    return results, compare(lake, sae_id, pca_id, split)
