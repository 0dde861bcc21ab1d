"""The numpy engine of `analyze` (``--engine numpy``) and the kernels both engines share.

Exact Spearman matrices (average ranks within each label's row set; the implicit zeros of sparse
codes one tie group whose rank is known from counts), novelty projections, the permutation null,
and :func:`label_basis`, the small factorization of the label matrix that the DuckDB engine
(``galsae_lake.duckdb_engine``) also uses. numpy does the ranks within each label's row set and
the two large contractions (sparse codes times label ranks, and times an orthonormal basis of the
label matrix) with BLAS and scipy.sparse; no lake access here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse

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


#: singular values of the label matrix below this share of the largest are rounding, not signal:
#: vote fractions are stored as float32, so the answers of a fully asked question sum to one only
#: to ~1e-7, and the dependent direction that leaves has a singular value ~1e-8..1e-7 of the
#: largest (real directions sit above 1e-2). 100 float32 epsilons keeps them apart.
LABEL_RCOND = 100 * float(np.finfo(np.float32).eps)
#: rows per block of label_basis (46 labels: ~50 MB of float64 a block)
BASIS_CHUNK_ROWS = 1 << 17


def label_basis(labels: np.ndarray, rcond: float = LABEL_RCOND,
                chunk_rows: int = BASIS_CHUNK_ROWS) -> np.ndarray:
    """An orthonormal basis [rows x rank] (column-major) of the centred, median-imputed labels.

    Columns that are NaN everywhere are left out (as sklearn's SimpleImputer does). The rank is
    decided at the labels' precision (``rcond``, relative to the largest singular value): the
    answers of a question sum to one up to float32 rounding, and a basis that kept that
    direction would fit the rounding noise (R^2 off by ~0.03 on real-shaped labels).

    Memory stays at the basis itself plus one block of ``chunk_rows`` rows: the imputed matrix
    X is never formed whole. A tall-skinny QR (each block's R, then the R of the stacked Rs)
    gives X's R; its SVD R = U S V' gives X = (Q U) S V', so the basis Q U = X V S^-1 is formed
    block by block for the directions kept (S >= rcond * S[0]: within ~eps / rcond of Q U).
    """
    n = len(labels)
    present, medians, means = [], [], []  # per column with a known value: its median, and the
    for j in range(labels.shape[1]):      # mean of the imputed column
        column = labels[:, j]
        known = column[~np.isnan(column)]
        if len(known):
            present.append(j)
            medians.append(np.median(known))
            means.append((known.sum() + (n - len(known)) * medians[-1]) / n)
    if not present:
        return np.zeros((n, 0), order="F")
    medians, means = np.array(medians), np.array(means)

    def block(start: int) -> np.ndarray:  # imputed and centred rows [start, start + chunk_rows)
        X = labels[start:start + chunk_rows, present].astype(np.float64, copy=True)
        holes = np.isnan(X)
        X[holes] = np.broadcast_to(medians, X.shape)[holes]
        X -= means
        return X

    def r_factor(X: np.ndarray) -> np.ndarray:  # the top rows of R: mode="r" pads R to X's rows
        return scipy.linalg.qr(X, mode="r", overwrite_a=True)[0][: len(present)].copy()

    starts = range(0, n, chunk_rows)
    Rs = [r_factor(block(start)) for start in starts]
    R = Rs[0] if len(Rs) == 1 else r_factor(np.vstack(Rs))
    _, singular, Vt = scipy.linalg.svd(R)
    if singular.size == 0 or singular[0] == 0:
        return np.zeros((n, 0), order="F")
    rank = int((singular > singular[0] * rcond).sum())
    W = Vt[:rank].T / singular[:rank]
    basis = np.empty((n, rank), order="F")
    for start in starts:
        basis[start:start + chunk_rows] = block(start) @ W
    return basis


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
