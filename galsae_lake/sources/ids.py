"""Galaxy ids across sources: one normal form, and one way to match a catalogue to the lake.

Euclid galaxies are named ``<tile index>_<object id>``, and the object id is negative for much of
the sky. The sources spell that differently (verified in public code, see docs/sources.md):

- the Euclid Q1 morphology catalogue (Zenodo 15020547) writes the sign: ``102011288_-842787454598311005``;
- ``mwalmsley/euclid_q1`` and ``mwalmsley/euclid_q1_embeddings`` write ``NEG`` for it:
  ``102011288_NEG842787454598311005`` (the seed replaces ``-`` by ``NEG`` in the catalogue to
  cross-match them);
- gz_euclid's catalogue (galaxy-datasets) names its images after ids that carry a release
  prefix: ``F-006_102011288_NEG842787454598311005``.

:func:`normalize_id` maps all three to ``102011288_-842787454598311005``. It is the only place
that knows these spellings: Python (:func:`normalize_id`), Polars (:func:`normalize_id_expr`)
and SQL (:func:`normalize_id_sql`) give the same answer (tested). Ids that are not Euclid ids
come back unchanged except for ``NEG`` read as ``-``.

The lake stores each id as its first source wrote it (``galaxies.id_str``); a catalogue joined
to the lake later is matched in the normal form and stored in the lake's spelling, so plain
``id_str`` joins work downstream. :func:`match_ids` does that match and counts what matched.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import polars as pl

#: a release prefix in front of a Euclid id, e.g. ``F-006_`` (letters, a dash, digits, an underscore)
_PREFIXED = r"^[A-Za-z][A-Za-z0-9]*-[0-9]+_([0-9]+_-?[0-9]+)$"
_PREFIXED_RE = re.compile(_PREFIXED)


def normalize_id(id_str) -> str:
    """The matching form of a galaxy id: ``NEG`` read as ``-``, a release prefix dropped.

    ``normalize_id("F-006_102011288_NEG842787454598311005") -> "102011288_-842787454598311005"``;
    ``normalize_id("102011288_-842787454598311005")`` is unchanged; idempotent.
    """
    text = str(id_str).replace("NEG", "-")
    return _PREFIXED_RE.sub(r"\1", text)


def normalize_id_expr(column: str = "id_str") -> pl.Expr:
    """:func:`normalize_id` as a Polars expression on ``column``."""
    return (pl.col(column).cast(pl.String).str.replace_all("NEG", "-", literal=True)
            .str.replace(_PREFIXED, "${1}"))


def normalize_id_sql(column: str = "id_str") -> str:
    """:func:`normalize_id` as a DuckDB SQL expression on ``column``."""
    return f"regexp_replace(replace({column}, 'NEG', '-'), '{_PREFIXED}', '\\1')"


@dataclass(frozen=True)
class IdMatch:
    """How a catalogue's ids met the lake's: printed by every ingest that joins, and kept in the
    sidecar of the partitions it writes (``id_match``)."""

    against: str          # what the ids were matched to, e.g. "galaxies"
    incoming: int         # distinct ids in the catalogue
    matched: int          # of those, found in ``against`` (in the normal form)
    unmatched: int        # not found
    respelled: int        # matched only in the normal form (stored in the lake's spelling)

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self, what: str) -> str:
        extra = f" ({self.respelled} matched only once normalized)" if self.respelled else ""
        return (f"{what}: {self.matched} of {self.incoming} ids matched {self.against}, "
                f"{self.unmatched} did not{extra}")


def match_ids(incoming: pl.Series, known: pl.DataFrame, against: str = "galaxies"
              ) -> tuple[pl.DataFrame, IdMatch]:
    """Match ``incoming`` ids to ``known`` (a frame with ``id_str`` and any other columns, e.g.
    ``split``) in the normal form.

    Returns ``(frame, IdMatch)``: ``frame`` has one row per incoming id, in order, with
    ``id_str`` (as given), ``lake_id`` (the lake's spelling, NULL where unmatched) and the other
    columns of ``known`` (NULL where unmatched). Raises ValueError when two known ids, or two
    incoming ids, are equal once normalized (the caller turns it into its one-line error).
    """
    mine = pl.DataFrame({"id_str": incoming.cast(pl.String)}).with_columns(
        normalize_id_expr().alias("_norm"))
    repeated = mine.filter(pl.col("_norm").is_duplicated())
    if repeated.height:
        raise ValueError(f"ids {repeated['id_str'][0]!r} and another are the same galaxy once "
                         f"normalized ({repeated['_norm'][0]})")
    lake = known.rename({"id_str": "lake_id"}).with_columns(
        normalize_id_expr("lake_id").alias("_norm"))
    twice = lake.filter(pl.col("_norm").is_duplicated())
    if twice.height:
        raise ValueError(f"{against} holds {twice['lake_id'][0]!r} and another id that are the "
                         f"same galaxy once normalized ({twice['_norm'][0]})")
    joined = mine.join(lake, on="_norm", how="left", maintain_order="left").drop("_norm")
    found = joined.filter(pl.col("lake_id").is_not_null())
    respelled = found.filter(pl.col("lake_id") != pl.col("id_str")).height
    stats = IdMatch(against=against, incoming=mine.height, matched=found.height,
                    unmatched=mine.height - found.height, respelled=respelled)
    return joined, stats
