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

from collections.abc import Iterable

import numpy as np
import polars as pl

from galsae_lake import gz
from galsae_lake.errors import InputError
from galsae_lake.sources.ids import normalize_id, normalize_id_expr  # noqa: F401 (the one place)

#: the splits the pipeline knows (real gz_euclid has these two)
SPLITS: tuple[str, ...] = ("train", "test")

#: columns of the long votes table, in order
VOTE_COLUMNS = ("id_str", "question", "answer", "label", "count", "total", "fraction")

#: how far a fraction may stray outside [0, 1] from float rounding before it is an error
FRACTION_TOLERANCE = 1e-6


def check_split(split: str, known: Iterable[str] = SPLITS) -> str:
    """``split`` if it is one of ``known``, else a one-line :class:`InputError`."""
    known = tuple(known)
    if split not in known:
        raise InputError(f"unknown split {split!r}; splits are: {', '.join(known)}")
    return split


def label_columns(columns: Iterable[str]) -> dict[str, dict[str, str]]:
    """Which columns of a wide frame hold which label data.

    Returns ``{label: {"count": col, "fraction": col}}`` plus, under the key
    ``"<question>__total"``, ``{"total": col}``. Raises :class:`InputError` when two columns
    name the same thing (e.g. ``bar_strong_fraction`` and ``bar-euclid_strong_fraction``).
    """
    found: dict[str, dict[str, str]] = {}
    for column in columns:
        parsed = gz.parse_column(column)
        if parsed is None:
            continue
        question, answer, kind = parsed
        key = f"{question}__total" if kind == "total" else gz.label_name(question, answer)
        slot = found.setdefault(key, {})
        if kind in slot:
            raise InputError(f"columns {slot[kind]!r} and {column!r} both hold {key} {kind}s")
        slot[kind] = column
    return found


def has_labels(columns: Iterable[str]) -> bool:
    """True when at least one column is a Galaxy Zoo count or fraction."""
    return any(k for k in label_columns(columns) if not k.endswith("__total"))


def _as_float(frame: pl.DataFrame, column: str) -> pl.Expr:
    dtype = frame.schema[column]
    if not dtype.is_numeric() and dtype != pl.Null:
        raise InputError(f"column {column!r} is {dtype}, expected numbers")
    # NaN and NULL both mean "not asked"
    return pl.col(column).cast(pl.Float64).fill_nan(None)


def votes_long(frame: pl.DataFrame, id_column: str = "id_str") -> pl.DataFrame:
    """A wide Galaxy Zoo frame (one row per galaxy) as the long ``votes`` table.

    In: ``frame`` with ``id_column`` and any of ``<q>_<a>`` counts, ``<q>_<a>_fraction`` and
    ``<q>_total-votes`` (``q`` with or without ``-euclid``). Out: one row per galaxy and label
    present, galaxy order kept, labels in :data:`gz.LABEL_NAMES` order, columns
    :data:`VOTE_COLUMNS`. ``total`` is the given total, else the sum of the question's counts when
    every answer has a count column; ``fraction`` is the given fraction, else ``count/total``;
    it is NULL where the question was not asked (NaN, NULL or a total of 0). Counts are NULL
    when the source has none (e.g. predicted fractions).

    Raises :class:`InputError` (one line) for no label columns, non-numeric label columns,
    negative counts and fractions outside [0, 1].
    """
    if id_column not in frame.columns:
        raise InputError(f"no id column {id_column!r}; columns start {', '.join(frame.columns[:6])}")
    columns = label_columns(frame.columns)
    labels = [name for name in gz.LABEL_NAMES if name in columns]
    if not labels:
        raise InputError("no Galaxy Zoo label columns (like smooth-or-featured-euclid_smooth_fraction)")
    ids = pl.col(id_column).cast(pl.String).alias("id_str")
    parts = []
    for question, answers in gz.QUESTIONS.items():
        present = [a for a in answers if gz.label_name(question, a) in columns]
        if not present:
            continue
        total_col = columns.get(f"{question}__total", {}).get("total")
        count_cols = [columns.get(gz.label_name(question, a), {}).get("count") for a in answers]
        if total_col is not None:
            total = _as_float(frame, total_col)
        elif all(c is not None for c in count_cols):
            total = pl.sum_horizontal([_as_float(frame, c) for c in count_cols])
            # a row where every count is missing was not asked, not asked-by-nobody
            total = pl.when(pl.all_horizontal([_as_float(frame, c).is_null() for c in count_cols])
                            ).then(None).otherwise(total)
        else:
            total = pl.lit(None, pl.Float64)
        for answer in present:
            label = gz.label_name(question, answer)
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
                pl.lit(gz.LABEL_NAMES.index(label), pl.Int32).alias("_label"),
            ))
    long = pl.concat(parts, how="vertical")
    _check_votes(long)
    return (
        long.sort("_row", "_label")
        .with_columns(
            pl.col("count").round().cast(pl.Int32),
            pl.col("total").round().cast(pl.Int32),
            # a question nobody reached has no fraction, whatever the source wrote
            pl.when(pl.col("total") == 0).then(None).otherwise(
                pl.col("fraction").clip(0.0, 1.0)).alias("fraction"),
        )
        .select(VOTE_COLUMNS)
    )


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
