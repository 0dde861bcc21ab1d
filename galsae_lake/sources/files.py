"""Label catalogues from a file: Parquet or CSV, one row per galaxy.

``ingest votes``: Galaxy Zoo columns of any campaign's tree (detected from the column names, see
:mod:`galsae_lake.trees`): volunteer votes (counts, fractions, totals) or predicted fractions
(e.g. the Zoobot predictions of the Euclid Q1 morphology catalogue, kept under their own
``catalog``). NaN and NULL both mean "not asked".

``ingest labels``: any numeric columns, no tree (redshift, stellar mass, ring or lens flags...):
continuous values or 0/1 flags, NaN and NULL meaning unknown.

Both match ids and assign splits the same way (:func:`match_ids`): splits come from ``--split``,
else the file's split column, else the lake's ``galaxies`` table (ids matched in their normalized
form, see :func:`galsae_lake.sources.normalize_id`); matched ids are stored in the lake's
spelling so they join ``galaxies`` and ``embeddings``. Each ingest records its catalog (kind,
tree) in the ``catalogs`` table and replaces the catalog's earlier partitions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from galsae_lake.errors import InputError
from galsae_lake.lake import check_partition_value
from galsae_lake import trees
from galsae_lake.labels import catalog_row, catalogs
from galsae_lake.sources import (SPLITS, check_ids, check_split, check_split_values, off_tree,
                                votes_long)
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


def _check_catalog(lake, catalog: str, kind: str) -> None:
    try:
        check_partition_value("catalog", catalog)
    except Exception as exc:
        raise InputError(str(exc)) from None
    existing = catalogs(lake).get(catalog)
    if existing is not None and existing.kind != kind:
        raise InputError(f"catalog {catalog!r} already holds {existing.kind}; pick another --catalog "
                         f"(one catalog is either votes or labels)")


def _read_with_ids(path, id_column: str) -> pl.DataFrame:
    """The file with its id column as ``id_str`` (strings; no missing or repeated ids)."""
    frame = read_table(path)
    if id_column not in frame.columns:
        raise InputError(f"{path} has no id column {id_column!r} (use --id-column)")
    frame = frame.with_columns(pl.col(id_column).cast(pl.String))
    check_ids(frame[id_column], where=f" in {Path(path).name}")
    if id_column != "id_str" and "id_str" in frame.columns:
        frame = frame.drop("id_str")
    return frame.rename({id_column: "id_str"})


def assign_splits(lake, frame: pl.DataFrame, path, split: str | None,
                  split_column: str) -> tuple[pl.DataFrame, int, dict | None]:
    """Each row's split and its id in the lake's spelling: ``(frame[_file_id, id_str, _split],
    unmatched, id_match)``, the one place ingests join a file's ids to the lake.

    The split is ``split`` if given, else the file's ``split_column`` (checked by
    :func:`galsae_lake.sources.check_split_values`), else the lake's ``galaxies`` (rows whose id
    the lake does not know are dropped and counted as ``unmatched``). Ids are matched in their
    normal form (:func:`galsae_lake.sources.ids.match_ids`: NEG read as -, release prefixes
    dropped); ``id_match`` is its count of matched and unmatched ids (None without galaxies).
    """
    if split is not None:
        check_split(split)
        assigned = frame.select("id_str", pl.lit(split).alias("_split"))
    elif split_column in frame.columns:
        values = check_split_values(frame[split_column], split_column)
        assigned = frame.select("id_str", values.alias("_split"))
    else:
        if not lake.exists("galaxies"):
            raise InputError(f"{path} has no split column {split_column!r} and the lake has no "
                             f"galaxies to take splits from; pass --split {'|'.join(SPLITS)}")
        assigned = None
    unmatched, id_match = 0, None
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
    out = (assigned.join(rename, on="id_str", how="left")
           .select(pl.col("id_str").alias("_file_id"), pl.col("_lake_id").alias("id_str"), "_split"))
    return out, unmatched, id_match


def _write_catalog(lake, command: str, table: str, long: pl.DataFrame, catalog: str, path,
                   params: dict, info: dict, row: "pa.Table") -> dict[str, int]:
    """Write ``long`` (with ``_split``) as ``table`` partitions of ``catalog``, replacing the
    catalog's other partitions, and its ``catalogs`` row, in one transaction."""
    splits: dict[str, int] = {}
    upstream = ["galaxies"] if lake.exists("galaxies") else []
    with lake.transaction(command, params, upstream=upstream) as tx:
        for (name,), part in long.partition_by("_split", as_dict=True, maintain_order=True).items():
            tx.write(table, part.drop("_split"), partition={"catalog": catalog, "split": name},
                     info=info)
            splits[name] = part["id_str"].n_unique()
        for old in lake.partitions(table, catalog=catalog):
            if old["split"] not in splits:
                tx.remove(table, old)
        tx.write("catalogs", row)
    return splits


def ingest_votes(lake, path: str | Path, catalog: str = "volunteers", id_column: str = "id_str",
                 split_column: str = "split", split: str | None = None,
                 tree: str | None = "auto") -> dict[str, Any]:
    """Read a wide Galaxy Zoo vote catalogue and write it as ``votes`` partitions ``(catalog, split)``.

    ``tree``: a tree name (:mod:`galsae_lake.trees`) or ``"auto"`` (from the column names).
    Returns ``{"catalog", "tree", "detection", "rows", "galaxies", "splits": {split: galaxies},
    "unmatched"}``. Raises :class:`InputError` (one line, lake unchanged) for: an empty file,
    no id column, duplicate ids, no column of any tree (naming the closest), fractions outside
    [0, 1], bad counts, an unknown split.
    """
    _check_catalog(lake, catalog, "votes")
    if split is not None:
        check_split(split)
    frame = _read_with_ids(path, id_column)
    detection = trees.detect(frame.columns, tree)
    long = votes_long(frame, tree=detection.tree)  # checks labels, counts and fraction ranges
    outside = off_tree(long, detection.tree)
    assigned, unmatched, id_match = assign_splits(lake, frame, path, split, split_column)
    long = (long.rename({"id_str": "_file_id"}).join(assigned, on="_file_id", how="inner")
            .drop("_file_id").select(*long.columns, "_split"))
    params = {"file": str(Path(path).absolute()), "catalog": catalog, "id_column": id_column,
              "split_column": split_column, "split": split, "tree": detection.tree.name}
    row = catalog_row(catalog, "votes", detection.tree.name, long["label"].n_unique(), Path(path).name)
    splits = _write_catalog(lake, "ingest votes", "votes", long, catalog, path, params,
                            {"file": Path(path).name, "tree": detection.tree.name,
                             "unmatched_dropped": unmatched, "off_tree": outside,
                             "id_match": id_match}, row)
    described = detection.describe()
    if outside:
        described += (f"; {outside} galaxy-question(s) have votes where no volunteer chose the "
                      f"answer the {detection.tree.name} tree asks them after (another tree?)")
    return {"catalog": catalog, "tree": detection.tree.name, "detection": described,
            "off_tree": outside,
            "rows": long.height, "splits": splits, "galaxies": sum(splits.values()),
            "unmatched": unmatched, "id_match": id_match}


def ingest_labels(lake, path: str | Path, catalog: str | None = None, columns: list[str] | None = None,
                  id_column: str = "id_str", split_column: str = "split",
                  split: str | None = None) -> dict[str, Any]:
    """Read numeric columns of a file as labels without a tree: ``labels`` partitions
    ``(catalog, split)``, one row per galaxy and label (``value`` NULL where unknown).

    ``catalog`` defaults to the file's name without its extension; ``columns`` to every numeric
    column but the id and split columns (booleans read as 0/1). Returns ``{"catalog",
    "labels", "rows", "galaxies", "splits", "unmatched", "binary"}``. Raises
    :class:`InputError` (one line, lake unchanged) for no numeric column, a named column that is
    missing or not numeric, an infinite value, a label with no value at all, duplicate ids and
    ids that match no galaxy.
    """
    catalog = catalog or Path(path).stem
    _check_catalog(lake, catalog, "labels")
    if split is not None:
        check_split(split)
    frame = _read_with_ids(path, id_column)
    skip = {"id_str", split_column}
    if columns:
        for name in columns:
            if name not in frame.columns:
                raise InputError(f"{path} has no column {name!r}; columns: {', '.join(frame.columns[:12])}")
            if not _numeric(frame.schema[name]):
                raise InputError(f"column {name!r} is {frame.schema[name]}, not numbers: labels are "
                                 f"numeric (continuous or 0/1)")
        chosen = list(dict.fromkeys(columns))
    else:
        chosen = [c for c in frame.columns if c not in skip and _numeric(frame.schema[c])]
        if not chosen:
            raise InputError(f"{path} has no numeric column besides the id and split "
                             f"(columns: {', '.join(frame.columns[:12])})")
    values = frame.select("id_str", *[pl.col(c).cast(pl.Float64).fill_nan(None) for c in chosen])
    for name in chosen:
        column = values[name]
        if column.is_infinite().any():
            raise InputError(f"column {name!r} holds an infinite value; use NULL or NaN for unknown")
        if column.null_count() == column.len():
            raise InputError(f"column {name!r} has no values (all NULL or NaN)")
    assigned, unmatched, id_match = assign_splits(lake, frame, path, split, split_column)
    long = (values.unpivot(index="id_str", on=chosen, variable_name="label", value_name="value")
            .rename({"id_str": "_file_id"}).join(assigned, on="_file_id", how="inner")
            .select("id_str", "label", "value", "_split"))
    binary = [c for c in chosen if values[c].drop_nulls().is_in([0.0, 1.0]).all()]
    params = {"file": str(Path(path).absolute()), "catalog": catalog, "columns": chosen,
              "id_column": id_column, "split_column": split_column, "split": split}
    row = catalog_row(catalog, "labels", None, len(chosen), Path(path).name)
    splits = _write_catalog(lake, "ingest labels", "labels", long, catalog, path, params,
                            {"file": Path(path).name, "unmatched_dropped": unmatched,
                             "id_match": id_match}, row)
    return {"catalog": catalog, "labels": chosen, "binary": binary, "rows": long.height,
            "splits": splits, "galaxies": sum(splits.values()), "unmatched": unmatched,
            "id_match": id_match}


def _numeric(dtype: pl.DataType) -> bool:
    return dtype.is_numeric() or dtype == pl.Boolean
