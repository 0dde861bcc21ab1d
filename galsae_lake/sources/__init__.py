"""Where galaxies come from: the synthetic world, Hugging Face datasets, and vote catalogues on disk.

Every source fills the same tables (``galaxies``, ``images``, ``votes`` and, for synthetic data,
``truth``). What they share lives here:

- :func:`normalize_id` — the matching form of an ``id_str`` (``NEG`` or ``-``, a release prefix
  or none), defined in :mod:`galsae_lake.sources.ids` with the matching of catalogues to the lake.
- :func:`votes_long` — a wide Galaxy-Zoo-style frame (one row per galaxy, ``<question>_<answer>``
  count, ``_fraction`` and ``<question>_total-votes`` columns, with or without the ``-euclid``
  suffix) as the long ``votes`` table: ``id_str, question, answer, label, count, total, fraction``.
  Used by the Hugging Face and file ingests and by the synthetic volunteers.

``galaxies.id_str`` keeps ids exactly as the source gives them; no extra column is stored. Match
ids across catalogues with :mod:`galsae_lake.sources.ids` (Python, Polars and SQL forms).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import polars as pl

from galsae_lake import gz
from galsae_lake.errors import InputError
from galsae_lake.sources.ids import normalize_id, normalize_id_expr  # noqa: F401 (the one place)
from galsae_lake.trees import Tree

#: the splits the pipeline knows (real gz_euclid has these two)
SPLITS: tuple[str, ...] = ("train", "test")

#: columns of the long votes table, in order
VOTE_COLUMNS = ("id_str", "question", "answer", "label", "count", "total", "fraction")

#: how far a fraction may stray outside [0, 1] from float rounding before it is an error
FRACTION_TOLERANCE = 1e-6


def check_split(split: str, known: Iterable[str] = SPLITS) -> str:
    """``split`` if it is one of ``known``, else a one-line :class:`InputError`.

    The one rule for splits, for every ingest (votes, labels, embeddings): a split is written
    exactly as the pipeline names it (``train``, ``test``): no other case, no ``validation``.
    """
    known = tuple(known)
    if split not in known:
        raise InputError(f"unknown split {split!r}; splits are: {', '.join(known)}")
    return split


def check_split_values(values: pl.Series, column: str = "split") -> pl.Series:
    """A file's split column as strings, each value checked by :func:`check_split` (a missing
    value is an error too); one line naming the first bad value."""
    values = values.cast(pl.String)
    if values.null_count():
        raise InputError(f"{values.null_count()} row(s) without a split in column {column!r}; "
                         f"splits are: {', '.join(SPLITS)}")
    for value in values.unique().sort().to_list():
        try:
            check_split(value)
        except InputError as exc:
            raise InputError(f"{exc} (in column {column!r})") from None
    return values


#: the share of galaxies :func:`assign_split` puts in the test split
TEST_FRACTION = 0.2


def assign_split(id_str: str, test_fraction: float = TEST_FRACTION) -> str:
    """``"test"`` or ``"train"`` for a galaxy of a source that has one split only: reproducible
    (the first 8 bytes of the SHA-256 of the normalized id, as a fraction of 2^64, below
    ``test_fraction`` is test), independent of row order and of the other galaxies."""
    digest = hashlib.sha256(normalize_id(id_str).encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2.0**64 < test_fraction else "train"


def label_columns(columns: Iterable[str], tree: Tree | None = None) -> dict[str, dict[str, str]]:
    """Which columns of a wide frame hold which label data under ``tree`` (default: Euclid).

    Returns ``{label: {"count": col, "fraction": col}}`` plus, under the key
    ``"<question>__total"``, ``{"total": col}``. Raises :class:`InputError` when two columns
    name the same thing (e.g. ``bar_strong_fraction`` and ``bar-euclid_strong_fraction``).
    """
    tree = tree or gz.TREE
    found: dict[str, dict[str, str]] = {}
    for column in columns:
        parsed = tree.parse_column(column)
        if parsed is None:
            continue
        question, answer, kind = parsed
        key = f"{question}__total" if kind == "total" else tree.label_name(question, answer)
        slot = found.setdefault(key, {})
        if kind in slot:
            raise InputError(f"columns {slot[kind]!r} and {column!r} both hold {key} {kind}s")
        slot[kind] = column
    return found


def has_labels(columns: Iterable[str], tree: Tree | None = None) -> bool:
    """True when at least one column is a Galaxy Zoo count or fraction of ``tree``."""
    return any(k for k in label_columns(columns, tree) if not k.endswith("__total"))


#: the largest vote count the votes table holds (its count and total columns are Int32)
MAX_COUNT = 2**31 - 1


def _as_float(frame: pl.DataFrame, column: str) -> pl.Expr:
    dtype = frame.schema[column]
    if not dtype.is_numeric() and dtype != pl.Null:
        raise InputError(f"column {column!r} is {dtype}, expected numbers")
    # NaN and NULL both mean "not asked"
    return pl.col(column).cast(pl.Float64).fill_nan(None)


def _check_counts(frame: pl.DataFrame, columns: list[str]) -> None:
    """Vote counts are finite whole numbers the votes table can hold; one line otherwise."""
    for column in columns:
        values = frame.select(_as_float(frame, column).alias("v"))["v"].drop_nulls()
        if not values.len():
            continue
        bad = values.filter(values.is_infinite() | (values > MAX_COUNT))
        if bad.len():
            raise InputError(f"count column {column!r} holds {bad[0]:g}; vote counts must be finite "
                             f"and at most {MAX_COUNT:,}")
        frac = values.filter(values.round() != values)
        if frac.len():
            raise InputError(f"count column {column!r} holds fractional values (e.g. {frac[0]:g}); "
                             f"vote counts are whole numbers (name predicted fractions "
                             f"<question>_<answer>_fraction)")


def votes_long(frame: pl.DataFrame, id_column: str = "id_str", tree: Tree | None = None) -> pl.DataFrame:
    """A wide Galaxy Zoo frame (one row per galaxy) as the long ``votes`` table.

    In: ``frame`` with ``id_column`` and any of ``<q>_<a>`` counts, ``<q>_<a>_fraction`` and
    ``<q>_total-votes`` of ``tree``'s questions (default Euclid; ``q`` with or without the tree's
    suffix). Out: one row per galaxy and label present, galaxy order kept, labels in the tree's
    order, columns :data:`VOTE_COLUMNS`. ``total`` is the given total, else the sum of the
    question's counts when every answer has a count column; ``fraction`` is the given fraction,
    else ``count/total``; it is NULL where the question was not asked (NaN, NULL or a total of
    0). Counts are NULL when the source has none (e.g. predicted fractions).

    Raises :class:`InputError` (one line) for no label columns, non-numeric label columns,
    negative, fractional, infinite or too large counts, counts that exceed the given total,
    a row with some answers' counts missing and no total to say what the total was, and
    fractions outside [0, 1].
    """
    tree = tree or gz.TREE
    if id_column not in frame.columns:
        raise InputError(f"no id column {id_column!r}; columns start {', '.join(frame.columns[:6])}")
    columns = label_columns(frame.columns, tree)
    labels = [name for name in tree.label_names if name in columns]
    if not labels:
        raise InputError(f"no Galaxy Zoo label columns of the {tree.name} tree (like "
                         f"{tree.labels[0].question}{tree.suffix}_{tree.labels[0].answer}_fraction)")
    _check_counts(frame, [slot[kind] for slot in columns.values() for kind in ("count", "total")
                          if kind in slot])
    order = {name: i for i, name in enumerate(tree.label_names)}
    ids = pl.col(id_column).cast(pl.String).alias("id_str")
    parts = []
    for question, answers in tree.questions.items():
        present = [a for a in answers if tree.label_name(question, a) in columns]
        if not present:
            continue
        total_col = columns.get(f"{question}__total", {}).get("total")
        count_cols = [columns.get(tree.label_name(question, a), {}).get("count") for a in answers]
        given = [c for c in count_cols if c is not None]
        if total_col is not None:
            total = _as_float(frame, total_col)
            if given:
                _check_total(frame, question, total, given)
        elif given and len(given) == len(count_cols):
            counts = [_as_float(frame, c) for c in count_cols]
            _check_complete(frame, question, counts, count_cols)
            total = pl.sum_horizontal(counts)
            # a row where every count is missing was not asked, not asked-by-nobody
            total = pl.when(pl.all_horizontal([c.is_null() for c in counts])).then(None).otherwise(total)
        else:
            total = pl.lit(None, pl.Float64)
        for answer in present:
            label = tree.label_name(question, answer)
            slot = columns[label]
            count = _as_float(frame, slot["count"]) if "count" in slot else pl.lit(None, pl.Float64)
            if "fraction" in slot:
                fraction = _as_float(frame, slot["fraction"])
            else:
                fraction = pl.when(total > 0).then(count / total).otherwise(None)
            parts.append(frame.select(
                ids,
                pl.lit(question).alias("question"),
                pl.lit(answer).alias("answer"),
                pl.lit(label).alias("label"),
                count.alias("count"),
                total.alias("total"),
                fraction.alias("fraction"),
                pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"),
                pl.lit(order[label], pl.Int32).alias("_label"),
            ))
    long = pl.concat(parts, how="vertical")
    _check_votes(long)
    return (
        long.sort("_row", "_label")
        .with_columns(
            pl.col("count").cast(pl.Int32),
            pl.col("total").cast(pl.Int32),
            # a question nobody reached has no fraction, whatever the source wrote
            pl.when(pl.col("total") == 0).then(None).otherwise(
                pl.col("fraction").clip(0.0, 1.0)).alias("fraction"),
        )
        .select(VOTE_COLUMNS)
    )


def _first_bad(frame: pl.DataFrame, mask: pl.Expr) -> str | None:
    rows = frame.with_row_index("_i").filter(mask)
    return None if rows.height == 0 else f"{rows.height} row(s), e.g. row {rows['_i'][0]}"


def _check_total(frame: pl.DataFrame, question: str, total: pl.Expr, given: list[str]) -> None:
    """The counts given may not add up to more than the question's total."""
    summed = pl.sum_horizontal([_as_float(frame, c) for c in given])
    bad = _first_bad(frame, summed > total + 1e-9)
    if bad:
        raise InputError(f"question {question}: the answers' counts add up to more than its "
                         f"total-votes in {bad}")


def _check_complete(frame: pl.DataFrame, question: str, counts: list[pl.Expr],
                    names: list[str]) -> None:
    """Without a total column, a row with some answers' counts missing would get a wrong total."""
    some = pl.any_horizontal([c.is_null() for c in counts])
    every = pl.all_horizontal([c.is_null() for c in counts])
    bad = _first_bad(frame, some & ~every)
    if bad:
        raise InputError(f"question {question}: some answers' counts are missing where others are "
                         f"given ({bad}), so its total is unknown; fill them or give "
                         f"{question}_total-votes")


def _check_votes(long: pl.DataFrame) -> None:
    bad = long.filter((pl.col("fraction") < -FRACTION_TOLERANCE)
                      | (pl.col("fraction") > 1 + FRACTION_TOLERANCE))
    if bad.height:
        row = bad.row(0, named=True)
        raise InputError(f"{bad.height} fraction(s) outside [0, 1], e.g. {row['label']} = "
                         f"{row['fraction']} for {row['id_str']}")
    negative = long.filter((pl.col("count") < 0) | (pl.col("total") < 0))
    if negative.height:
        row = negative.row(0, named=True)
        raise InputError(f"{negative.height} negative vote count(s), e.g. {row['label']} for "
                         f"{row['id_str']}")


def off_tree(long: pl.DataFrame, tree: Tree) -> int:
    """How many (galaxy, question) pairs of a long votes table have votes although no volunteer
    chose the answer the tree asks it after (both counts known): 0 for votes that follow ``tree``;
    many suggest the catalogue belongs to another tree."""
    parents = pl.DataFrame({"question": list(tree.dependencies),
                            "parent": [tree.dependencies[q] for q in tree.dependencies]},
                           schema={"question": pl.String, "parent": pl.String}).drop_nulls()
    asked = (long.filter(pl.col("total") > 0).select("id_str", "question").unique()
             .join(parents, on="question"))
    parent_counts = long.select("id_str", pl.col("label").alias("parent"), pl.col("count"))
    bad = asked.join(parent_counts, on=["id_str", "parent"]).filter(pl.col("count") == 0)
    return bad.height


def check_ids(ids: pl.Series, seen: set[str] | None = None, where: str = "") -> None:
    """Raise :class:`InputError` for missing or duplicate ids (also against ids ``seen`` before).

    ``seen`` is updated in place, so a stream of batches can be checked one batch at a time.
    """
    if ids.null_count():
        raise InputError(f"{ids.null_count()} row(s) without an id{where}")
    values = ids.cast(pl.String)
    dup = values.filter(values.is_duplicated())
    if dup.len():
        raise InputError(f"duplicate id {dup[0]!r}{where} ({dup.n_unique()} id(s) repeated)")
    if seen is not None:
        again = [v for v in values.to_list() if v in seen]
        if again:
            raise InputError(f"duplicate id {again[0]!r}{where} ({len(again)} id(s) repeated)")
        seen.update(values.to_list())


def fractions_array(votes: pl.DataFrame, ids: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """The long votes table as a dense ``[galaxy, label]`` fraction matrix (NaN = not asked).

    Columns follow :data:`gz.LABEL_NAMES`; rows follow ``ids`` (default: first appearance).
    """
    wide = votes.pivot(on="label", index="id_str", values="fraction", aggregate_function="first")
    if ids is not None:
        wide = pl.DataFrame({"id_str": ids}).join(wide, on="id_str", how="left")
    for name in gz.LABEL_NAMES:
        if name not in wide.columns:
            wide = wide.with_columns(pl.lit(None, pl.Float64).alias(name))
    matrix = wide.select(gz.LABEL_NAMES).to_numpy().astype(np.float64)
    return wide["id_str"].to_list(), matrix
