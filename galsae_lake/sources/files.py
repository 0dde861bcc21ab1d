"""Vote catalogues from a file: Parquet or CSV, one row per galaxy, Galaxy Zoo columns.

Volunteer votes (counts, fractions, totals) or predicted fractions (e.g. the Zoobot predictions
of the Euclid Q1 morphology catalogue, kept under their own ``catalog``). NaN and NULL both mean
"not asked". Splits come from ``--split``, else the file's split column, else the lake's
``galaxies`` table (ids matched in their normalized form, see
:func:`galsae_lake.sources.normalize_id`); matched ids are stored in the lake's spelling so they
join ``galaxies`` and ``embeddings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from galsae_lake.errors import InputError
from galsae_lake.lake import check_partition_value
from galsae_lake.sources import SPLITS, check_ids, check_split, votes_long
from galsae_lake.sources.ids import match_ids

NULL_VALUES = ["", "NA", "NaN", "nan", "null", "NULL", "None"]


def read_table(path: str | Path) -> pl.DataFrame:
    """A Parquet or CSV file as a frame; one-line :class:`InputError` if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such file: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty")
    with path.open("rb") as handle:
        parquet = handle.read(4) == b"PAR1"
    if not parquet:
        _check_csv_header(path)
    try:
        if parquet:
            frame = pl.read_parquet(path)
        else:
            frame = pl.read_csv(path, null_values=NULL_VALUES, infer_schema_length=10_000,
                                separator="\t" if path.suffix.lower() == ".tsv" else ",")
    except (pl.exceptions.PolarsError, OSError) as exc:
        first = " ".join(str(exc).strip().splitlines()[0].split())
        raise InputError(f"cannot read {path}: {first}") from None
    if frame.height == 0:
        raise InputError(f"{path} has no rows")
    return frame


def _check_csv_header(path: Path) -> None:
    """Refuse a CSV whose header names a column twice (Polars would rename the second copy and
    the label in it would be silently dropped)."""
    import csv

    try:
        with path.open(newline="", encoding="utf-8", errors="replace") as handle:
            header = next(csv.reader(handle, delimiter="\t" if path.suffix.lower() == ".tsv"
                                     else ","), [])
    except (OSError, csv.Error) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise InputError(f"{path}: the header names column {name!r} twice; rename or drop "
                             f"one copy")
        seen.add(name)


def ingest_votes(lake, path: str | Path, catalog: str = "volunteers", id_column: str = "id_str",
                 split_column: str = "split", split: str | None = None) -> dict[str, Any]:
    """Read a wide vote catalogue and write it as ``votes`` partitions ``(catalog, split)``.

    Returns ``{"catalog", "rows", "galaxies", "splits": {split: galaxies}, "unmatched"}``.
    Raises :class:`InputError` (one line, lake unchanged) for: an empty file, no id column,
    duplicate ids, no label columns, fractions outside [0, 1], an unknown split.
    """
    try:
        check_partition_value("catalog", catalog)
    except Exception as exc:
        raise InputError(str(exc)) from None
    if split is not None:
        check_split(split)
    frame = read_table(path)
    if id_column not in frame.columns:
        raise InputError(f"{path} has no id column {id_column!r} (use --id-column)")
    frame = frame.with_columns(pl.col(id_column).cast(pl.String))
    check_ids(frame[id_column], where=f" in {Path(path).name}")
    if id_column != "id_str" and "id_str" in frame.columns:
        frame = frame.drop("id_str")
    frame = frame.rename({id_column: "id_str"})
    long = votes_long(frame)  # checks labels and fraction ranges

    unmatched, id_match = 0, None
    if split is not None:
        assigned = frame.select("id_str", pl.lit(split).alias("_split"))
    elif split_column in frame.columns:
        values = frame[split_column].cast(pl.String)
        unknown = values.filter(~values.is_in(list(SPLITS)) | values.is_null()).unique()
        if unknown.len():
            raise InputError(f"unknown split {unknown[0]!r} in column {split_column!r}; "
                             f"splits are: {', '.join(SPLITS)}")
        assigned = frame.select("id_str", values.alias("_split"))
    else:
        if not lake.exists("galaxies"):
            raise InputError(f"{path} has no split column {split_column!r} and the lake has no "
                             f"galaxies to take splits from; pass --split {'|'.join(SPLITS)}")
        assigned = None
    # match ids to the lake's spelling (NEG vs -, a release prefix) where the lake knows the galaxy
    if lake.exists("galaxies"):
        known = lake.read("galaxies").select("id_str", pl.col("split").alias("_lake_split"))
        try:
            matched, match = match_ids(frame["id_str"], known)
        except ValueError as exc:
            raise InputError(f"duplicate id: {exc}") from None
        matched = matched.rename({"lake_id": "_lake_id"})
        id_match = match.as_dict()
        if assigned is None:
            found = matched.filter(pl.col("_lake_id").is_not_null())
            unmatched = matched.height - found.height
            if found.height == 0:
                raise InputError(f"none of the {frame.height} ids in {path} match a galaxy in the lake")
            assigned = found.select("id_str", pl.col("_lake_split").alias("_split"))
        rename = matched.select("id_str", pl.coalesce("_lake_id", "id_str").alias("_lake_id"))
    else:
        rename = frame.select("id_str", pl.col("id_str").alias("_lake_id"))

    long = (long.join(assigned, on="id_str", how="inner")
            .join(rename, on="id_str", how="left")
            .with_columns(pl.col("_lake_id").alias("id_str")).drop("_lake_id"))
    params = {"file": str(Path(path).absolute()), "catalog": catalog, "id_column": id_column,
              "split_column": split_column, "split": split}
    summary: dict[str, Any] = {"catalog": catalog, "rows": long.height, "splits": {},
                               "unmatched": unmatched, "id_match": id_match}
    with lake.transaction("ingest votes", params, upstream=["galaxies"] if lake.exists("galaxies") else []) as tx:
        for (name,), part in long.partition_by("_split", as_dict=True, maintain_order=True).items():
            tx.write("votes", part.drop("_split"), partition={"catalog": catalog, "split": name},
                     info={"file": Path(path).name, "unmatched_dropped": unmatched,
                           "id_match": id_match})
            summary["splits"][name] = part["id_str"].n_unique()
    summary["galaxies"] = sum(summary["splits"].values())
    return summary
