"""Embeddings someone already has, into the ``embeddings`` table (partition encoder, split).

Two sources, one validation:

* :func:`ingest_embeddings` reads a file: Parquet with an id column, an optional split column and
  a list or fixed-size-list column; or a ``.npy`` matrix with a ``.npy`` of ids (the seed's
  ``*_embeddings.npy`` / ``*_ids.npy`` pairs are found by name).
* :func:`ingest_hf_embeddings` reads a Hugging Face dataset in the shape of
  ``mwalmsley/euclid_q1_embeddings`` (``id_str`` plus list columns such as
  ``pooled_features_block_11``; the seed's SSL input), from the hub or a folder saved with
  ``datasets``' ``save_to_disk``.

float32 values are stored bit-for-bit (other float types are rounded to float32, and the summary
says so). Refused with one line, the lake unchanged: NaN or inf, duplicate or missing ids, vectors
of different lengths, a dimension that differs from rows the same encoder already has.

Ids are matched to the ``galaxies`` catalogue in their normal form
(:mod:`galsae_lake.sources.ids`: ``NEG`` or ``-``, with or without a release prefix) and stored
in the catalogue's spelling. ``join="inner"`` (the default of ``ingest hf-embeddings``, as the
seed inner-joins ``euclid_q1_embeddings`` to ``euclid_q1`` on ``id_str`` split by split) keeps
only the galaxies the catalogue has in the same split; ``join="all"`` (the default of
``ingest embeddings``) keeps every row. Either way the counts of matched and unmatched ids are
printed and kept in the partitions' sidecar (``id_match``), and an inner join that matches
nothing is an error, never an empty table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from galsae_lake.errors import InputError
from galsae_lake.lake import check_partition_value
from galsae_lake.sources import check_split
from galsae_lake.sources.ids import match_ids

#: what ``join`` may be: keep every row, or only the galaxies of the catalogue (same split)
JOINS = ("all", "inner")


def _numeric_values(values: pa.Array, where: str) -> tuple[pa.Array, str | None]:
    """float32 values unchanged; other numeric types cast to float32 (returns the old type name)."""
    kind = values.type
    if kind == pa.float32():
        return values, None
    if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
        raise InputError(f"{where}: vector values are {kind}, not numbers")
    return values.cast(pa.float32(), safe=False), str(kind)


def normalize_vectors(column: pa.ChunkedArray | pa.Array, ids: list[str], where: str):
    """A list / fixed-size-list column -> (FixedSizeListArray float32, rounded_from or None)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = array.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)
            or pa.types.is_fixed_size_list(kind)):
        raise InputError(f"{where}: column is {kind}, expected a list of numbers per row")
    if array.null_count:
        first = ids[int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])]
        raise InputError(f"{where}: {array.null_count} rows have no vector (first: id {first})")
    if pa.types.is_fixed_size_list(kind):
        size = kind.list_size
    else:
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        size = int(lengths[0]) if len(lengths) else 0
        odd = np.flatnonzero(lengths != size)
        if len(odd):
            raise InputError(f"{where}: vectors of different lengths (id {ids[odd[0]]} has "
                             f"{lengths[odd[0]]}, id {ids[0]} has {size})")
    if size == 0:
        raise InputError(f"{where}: vectors are empty")
    values = array.flatten()
    if values.null_count:
        raise InputError(f"{where}: vectors contain null values")
    values, rounded = _numeric_values(values, where)
    return pa.FixedSizeListArray.from_arrays(values, size), rounded


def _check_ids(ids: list, where: str) -> None:
    if any(i is None or i == "" for i in ids):
        raise InputError(f"{where}: some rows have no id")
    seen: dict[str, int] = {}
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
    dups = {k: v for k, v in seen.items() if v > 1}
    if dups:
        first = next(iter(dups))
        raise InputError(f"{where}: {len(dups)} duplicate ids (first: {first!r} appears "
                         f"{dups[first]} times)")


def _check_finite(vectors: pa.FixedSizeListArray, ids: list[str], where: str) -> None:
    matrix = vectors.flatten().to_numpy(zero_copy_only=False).reshape(len(vectors), -1)
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if len(bad):
        raise InputError(f"{where}: {len(bad)} vectors contain NaN or inf (first: id {ids[bad[0]]})")


def _join_catalogue(lake, table: pa.Table, ids: list[str], join: str, where: str, log):
    """Match ids to ``galaxies`` (normal form), respell them as the lake does and, for an inner
    join, keep the rows whose galaxy is in the same split. Returns (table, ids, id_match dict)."""
    if join not in JOINS:
        raise InputError(f"join {join!r}: use one of {', '.join(JOINS)}")
    if not lake.exists("galaxies"):
        if join == "inner":
            raise InputError(f"{where}: the lake has no galaxies to join the embeddings to (run "
                             f"galsae-lake ingest hf first, or keep every row with --join all)")
        log("no galaxies table to check the ids against")
        return table, ids, None
    known = lake.read("galaxies").select("id_str", pl.col("split").alias("_lake_split"))
    try:
        joined, match = match_ids(pl.Series(ids, dtype=pl.String), known)
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from None
    record = match.as_dict()
    log(match.line("embeddings"))
    lake_ids = joined["lake_id"]
    if join == "inner":
        splits = table.column("split").to_pylist()
        keep = (lake_ids.is_not_null() & (joined["_lake_split"] == pl.Series(splits))).fill_null(False)
        other = match.matched - int(keep.sum())
        record["other_split"] = other
        if other:
            log(f"{other} matched ids are in another split of galaxies: left out, as the seed's "
                f"split-by-split join does")
        if not keep.any():
            first = ids[0]
            raise InputError(f"{where}: none of the {len(ids)} ids matches a galaxy of the same "
                             f"split in the lake (first: {first!r}); check the dataset pairs with "
                             f"the galaxies ingested")
        mask = pa.array(keep.to_list())
        table = table.filter(mask)
        lake_ids = lake_ids.filter(keep)
        ids = [i for i, k in zip(ids, keep.to_list()) if k]
        record["kept"] = len(ids)
    respelled = [lake if lake is not None else mine for mine, lake in zip(ids, lake_ids.to_list())]
    return table, respelled, record


def store_embeddings(lake, table: pa.Table, encoder: str, command: str,
                     parameters: dict[str, Any], source: str, log=print,
                     join: str = "all") -> dict[str, Any]:
    """Validate ``table`` (id_str, split, embedding) and write it as ``embeddings`` partitions.

    Everything is checked before anything is written; all splits land in one transaction.
    ``join``: ``all`` keeps every row, ``inner`` only the galaxies in the same split of the
    lake's catalogue (see the module's docstring). Returns ``{"encoder", "rows", "dim",
    "splits": {split: rows}, "absent_from_catalogue", "id_match"}``.
    """
    import pyarrow.parquet as pq

    check_partition_value("encoder", encoder)
    where = source
    if table.num_rows == 0:
        raise InputError(f"{where}: no rows")
    ids = table.column("id_str").to_pylist()
    if not all(isinstance(i, str) for i in ids if i is not None):
        ids = [None if i is None else str(i) for i in ids]
    _check_ids(ids, where)
    table, ids, id_match = _join_catalogue(lake, table, ids, join, where, log)
    vectors, rounded = normalize_vectors(table.column("embedding"), ids, where)
    _check_finite(vectors, ids, where)
    splits = table.column("split").to_pylist()
    if any(s is None for s in splits):
        raise InputError(f"{where}: some rows have no split")
    for value in sorted(set(splits)):
        check_split(value)  # the one rule for splits, as `ingest votes` and `ingest hf` apply it
    dim = vectors.type.list_size
    replaced = set(splits)
    for part in lake.partitions("embeddings", encoder=encoder):
        if part["split"] in replaced:
            continue
        path = lake.partition_dir("embeddings", part) / "data.parquet"
        have = pq.read_schema(path).field("embedding").type.list_size
        if have != dim:
            raise InputError(f"{where}: vectors are {dim}-d but encoder {encoder} already has "
                             f"{have}-d embeddings (split {part['split']}); use another --encoder name")
    absent = None if id_match is None else id_match["unmatched"]
    clean = pa.table({"id_str": pa.array(ids, pa.string()), "split": pa.array(splits, pa.string()),
                      "embedding": vectors})
    counts: dict[str, int] = {}
    with lake.transaction(command, parameters, upstream=["galaxies"] if absent is not None else []) as tx:
        for split in sorted(replaced):
            part = clean.filter(pc.equal(clean.column("split"), split)).drop_columns(["split"])
            info = {"source": source, "embedding_dim": dim, "weights": "ingested",
                    "absent_from_catalogue": absent, "rounded_from": rounded, "id_match": id_match}
            tx.write("embeddings", part, partition={"encoder": encoder, "split": split}, info=info)
            counts[split] = part.num_rows
    for split, rows in counts.items():
        log(f"embeddings {encoder}/{split}: {rows} rows, {dim}-d, from {source}")
    if rounded:
        log(f"values were {rounded}, stored rounded to float32")
    if absent and join == "all":
        log(f"{absent} of {len(ids)} ids are not in the galaxies catalogue (kept)")
    return {"encoder": encoder, "rows": len(ids), "dim": dim, "splits": counts,
            "absent_from_catalogue": absent, "rounded_from": rounded, "id_match": id_match}


def _split_for(lake, ids: list[str], split: str | None, where: str) -> list[str]:
    """One split for every id: ``split`` if given, else the galaxies catalogue's."""
    if split is not None:
        return [split] * len(ids)
    if not lake.exists("galaxies"):
        raise InputError(f"{where}: no split column; pass --split SPLIT")
    catalogue = lake.read("galaxies").select("id_str", "split")
    lookup = dict(zip(catalogue["id_str"].to_list(), catalogue["split"].to_list()))
    missing = [i for i in ids if i not in lookup]
    if missing:
        raise InputError(f"{where}: no split column and {len(missing)} ids are not in the galaxies "
                         f"catalogue (first: {missing[0]}); pass --split SPLIT")
    return [lookup[i] for i in ids]


def read_embeddings_file(lake, path: str | Path, column: str = "embedding",
                         id_column: str = "id_str", split_column: str | None = "split",
                         split: str | None = None, ids: str | Path | None = None) -> pa.Table:
    """A Parquet or .npy file as a table (id_str, split, embedding), values untouched."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such file")
    where = str(path)
    if path.suffix == ".npy":
        try:
            matrix = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError(f"{where}: not a numeric .npy matrix ({exc})") from None
        if matrix.ndim != 2 or matrix.dtype.kind not in "fiu":
            raise InputError(f"{where}: expected a 2-d numeric matrix, got {matrix.dtype} "
                             f"{matrix.shape}")
        ids_path = Path(ids).expanduser() if ids else _sibling_ids(path)
        if ids_path is None or not ids_path.exists():
            raise InputError(f"{where}: pass --ids IDS.npy with one id per row")
        try:
            id_values = np.load(ids_path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError(f"{ids_path}: not an array of strings ({exc})") from None
        if id_values.ndim != 1 or len(id_values) != len(matrix):
            raise InputError(f"{ids_path}: {id_values.shape} ids for {matrix.shape[0]} rows")
        id_list = [str(i) for i in id_values.tolist()]
        flat = pa.array(np.ascontiguousarray(matrix).reshape(-1))
        vectors = pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])
        return pa.table({"id_str": id_list, "split": _split_for(lake, id_list, split, where),
                         "embedding": vectors})
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{where}: not a Parquet or .npy file ({exc})") from None
    names = schema.names
    if id_column not in names:
        raise InputError(f"{where}: no id column {id_column!r} (columns: {', '.join(names)}); "
                         f"use --id-column")
    if column not in names:
        lists = [f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)
                 or pa.types.is_fixed_size_list(f.type)]
        raise InputError(f"{where}: no column {column!r}; list columns are: "
                         f"{', '.join(lists) or 'none'} (use --column)")
    use_split = split is None and split_column is not None and split_column in names
    columns = [id_column, column] + ([split_column] if use_split else [])
    table = pq.read_table(path, columns=columns)
    id_list = table.column(id_column).to_pylist()
    if use_split:
        splits = table.column(split_column).to_pylist()
    else:
        splits = _split_for(lake, [str(i) for i in id_list], split, where)
    return pa.table({"id_str": pa.array([None if i is None else str(i) for i in id_list], pa.string()),
                     "split": pa.array(splits, pa.string()),
                     "embedding": table.column(column)})


def _sibling_ids(path: Path) -> Path | None:
    """The seed's naming: ``x_embeddings.npy`` goes with ``x_ids.npy``."""
    if "embeddings" in path.name:
        return path.with_name(path.name.replace("embeddings", "ids"))
    return None


def ingest_embeddings(lake, path: str | Path, encoder: str, column: str = "embedding",
                      id_column: str = "id_str", split_column: str | None = "split",
                      split: str | None = None, ids: str | Path | None = None,
                      log=print, join: str = "all") -> dict[str, Any]:
    """Read a Parquet/.npy embeddings file and store it as ``embeddings`` for ``encoder``."""
    table = read_embeddings_file(lake, path, column, id_column, split_column, split, ids)
    params = {"file": str(path), "encoder": encoder, "column": column, "id_column": id_column,
              "split_column": split_column, "split": split, "join": join}
    return store_embeddings(lake, table, encoder, "ingest embeddings", params, str(path), log,
                            join=join)


def ingest_hf_embeddings(lake, dataset: str, column: str, encoder: str,
                         config: str | None = None, splits: Sequence[str] | None = None,
                         limit: int | None = None, id_column: str = "id_str",
                         log=print, join: str = "inner") -> dict[str, Any]:
    """Read precomputed embeddings from a Hugging Face dataset (hub name or a saved folder).

    The shape of ``mwalmsley/euclid_q1_embeddings``: splits train and test, ``id_str`` and
    ``pooled_features_block_{0,9,10,11}`` (lists of 384 float32). ``join="inner"`` keeps the
    galaxies of the lake's catalogue, split by split, as the seed does."""
    import datasets

    try:
        if Path(dataset).expanduser().is_dir() and (
                (Path(dataset).expanduser() / "dataset_dict.json").exists()
                or (Path(dataset).expanduser() / "dataset_info.json").exists()):
            loaded = datasets.load_from_disk(str(Path(dataset).expanduser()))
        else:
            loaded = datasets.load_dataset(dataset, config)
    except Exception as exc:  # offline, unknown dataset or config: one line
        text = " ".join(str(exc).split())[:300]
        raise InputError(f"could not load dataset {dataset}: {text}") from None
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    wanted = list(splits) if splits else list(loaded)
    missing = [s for s in wanted if s not in loaded]
    if missing:
        raise InputError(f"dataset {dataset} has no split {', '.join(missing)} "
                         f"(splits: {', '.join(loaded)})")
    parts = []
    for split in wanted:
        part = loaded[split]
        names = part.column_names
        for needed, option in ((id_column, "--id-column"), (column, "--column")):
            if needed not in names:
                raise InputError(f"dataset {dataset}/{split} has no column {needed!r} "
                                 f"(columns: {', '.join(names)}); use {option}")
        part = part.select_columns([id_column, column])
        if limit is not None:
            part = part.select(range(min(limit, len(part))))
        arrow = part.with_format("arrow")[: len(part)]
        parts.append(pa.table({
            "id_str": arrow.column(id_column).cast(pa.string()),
            "split": pa.array([split] * arrow.num_rows, pa.string()),
            "embedding": arrow.column(column)}))
    table = pa.concat_tables(parts, promote_options="permissive")
    params = {"dataset": dataset, "config": config, "column": column, "splits": wanted,
              "limit": limit, "join": join}
    source = f"{dataset}{'/' + config if config else ''}:{column}"
    return store_embeddings(lake, table, encoder, "ingest hf-embeddings", params, source, log,
                            join=join)
