"""Galaxies, images and volunteer votes from a Hugging Face dataset (``mwalmsley/gz_euclid``),
or galaxies and images alone from an image dataset (``mwalmsley/euclid_q1``, configuration
``v1-gz_arcsinh_vis_y``: the images of the seed's MAE path, ``id_str`` + ``image``).

The dataset is read with ``datasets.load_dataset`` — a hub name, or a local folder of Parquet
files in the hub's layout (``data/train-*.parquet``, ``data/test-*.parquet``), or a folder
written by ``save_to_disk`` — and streamed in batches, so the ~100k galaxies of gz_euclid never
sit in memory at once: each batch goes straight into the lake's partition writers.

Kept as given: ``id_str`` (match other catalogues with :func:`galsae_lake.sources.normalize_id`)
and the image bytes (JPEG in gz_euclid; only decoded images are re-encoded, as PNG). Label
columns are read with or without the ``-euclid`` question suffix: counts, ``_fraction`` and
``_total-votes``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from galsae_lake.errors import InputError
from galsae_lake import trees
from galsae_lake.labels import catalog_row
from galsae_lake.sources import assign_split, check_ids, check_split, folder, label_columns, votes_long

#: column pairs tried, in order, for a galaxy's position
POSITION_COLUMNS = (("ra", "dec"), ("right_ascension", "declination"),
                    ("RIGHT_ASCENSION", "DECLINATION"))
ID_COLUMN = "id_str"
IMAGE_COLUMN = "image"


def _open(dataset: str, config: str | None, streaming: bool):
    """``load_dataset`` (or ``load_from_disk`` for a ``save_to_disk`` folder) as a split dict."""
    import datasets

    path = Path(dataset).expanduser()
    if folder.metadata_file(path) is not None:  # cutouts + metadata.csv (the image-folder convention)
        return folder.load_folder(path)  # local files, read whole: no need to stream
    try:
        if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.Dataset):
                loaded = datasets.DatasetDict({"train": loaded})
            if streaming:
                loaded = {k: v.to_iterable_dataset() for k, v in loaded.items()}
            return dict(loaded)
        return dict(datasets.load_dataset(str(path) if path.exists() else dataset, config,
                                          streaming=streaming))
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as exc:
        first = " ".join(str(exc).strip().splitlines()[0].split()) if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot load dataset {dataset!r}: {first}") from None
    except Exception as exc:  # datasets raises its own classes (DatasetNotFoundError, ...)
        if type(exc).__module__.startswith("datasets") or "huggingface" in type(exc).__module__:
            first = " ".join(str(exc).strip().splitlines()[0].split())
            raise InputError(f"cannot load dataset {dataset!r}: {first}") from None
        raise


def _image_bytes(value: Any) -> bytes | None:
    """Bytes of one image cell: stored bytes kept as they are, decoded images encoded as PNG."""
    if value is None:
        return None
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("path"):
            return Path(value["path"]).read_bytes()
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    from PIL import Image

    image = value if isinstance(value, Image.Image) else Image.fromarray(np.asarray(value))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _one_split(loaded: dict, splits: list[str]) -> str | None:
    """A source with one split only (an image folder without train/test folders) is split
    reproducibly by :func:`galsae_lake.sources.assign_split`: returns the split it came as."""
    if len(loaded) != 1 or all(split in loaded for split in splits):
        return None
    (only, data), = loaded.items()
    for split in splits:
        loaded[split] = data
    return only


def _columns_of(split_data) -> list[str]:
    names = getattr(split_data, "column_names", None)
    if names:
        return list(names)
    features = getattr(split_data, "features", None)
    if features:
        return list(features)
    first = next(iter(split_data.take(1) if hasattr(split_data, "take") else split_data), None)
    return list(first or {})


def dataset_source(dataset: str) -> str:
    """The ``galaxies.source`` of a dataset: its name without the owner (``gz_euclid``)."""
    return Path(dataset.rstrip("/")).name or dataset


def ingest_hf(lake, dataset: str = "mwalmsley/gz_euclid", config: str | None = None,
              splits: tuple[str, ...] | list[str] = ("train", "test"), limit: int | None = None,
              batch_size: int = 1000, catalog: str = "volunteers", streaming: bool = True,
              progress: bool = False, votes: bool = True) -> dict[str, Any]:
    """Stream ``dataset`` into ``galaxies``, ``images`` and ``votes`` (``catalog``), per split.

    ``limit`` caps the rows taken per split. A dataset with images and no Galaxy Zoo label
    columns (``euclid_q1``), or ``votes=False``, fills ``galaxies`` and ``images`` only.
    Returns ``{"splits": {split: rows}, "source": ..., "images_missing": n, "votes": bool}``:
    the rows counted while streaming, the real sizes. Everything is checked while streaming and
    written in one transaction: a bad row anywhere (no id, a repeated id, a fraction outside
    [0, 1]) leaves the lake unchanged.
    """
    import datasets

    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    splits = list(dict.fromkeys(splits))
    if not splits:
        raise InputError("no split given")
    for split in splits:
        check_split(split)
    loaded = _open(dataset, config, streaming)
    assigned = _one_split(loaded, splits)
    for split in splits:
        check_split(split, loaded)
    source = dataset_source(dataset)
    plans = {}
    for split in splits:
        data = loaded[split]
        columns = _columns_of(data)
        if ID_COLUMN not in columns:
            raise InputError(f"split {split} of {dataset} has no id column {ID_COLUMN!r}")
        labelled = trees.reads_any(columns)
        if not labelled and IMAGE_COLUMN not in columns:
            raise InputError(f"split {split} of {dataset} has neither Galaxy Zoo label columns "
                             f"nor an {IMAGE_COLUMN!r} column")
        # images without votes (euclid_q1, a cutout folder, --no-votes): galaxies and images only
        tree = trees.detect(columns).tree if votes and labelled else None
        if tree is not None:
            label_columns(columns, tree)  # raises on two columns naming the same label
        features = getattr(data, "features", None) or {}
        if isinstance(features.get(IMAGE_COLUMN), datasets.Image):
            # keep the stored bytes: no decode / re-encode round trip
            data = data.cast_column(IMAGE_COLUMN, datasets.Image(decode=False))
        if assigned is not None:
            data = data.filter(lambda i, s=split: assign_split(str(i)) == s, input_columns=[ID_COLUMN])
        if limit is not None:
            data = data.take(limit) if hasattr(data, "take") else data.select(range(min(limit, len(data))))
        position = next(((a, b) for a, b in POSITION_COLUMNS if a in columns and b in columns), None)
        wanted = [c for c in columns if c == ID_COLUMN or c in (position or ())
                  or (c != IMAGE_COLUMN and tree is not None and tree.parse_column(c) is not None)]
        plans[split] = (data, wanted, position, IMAGE_COLUMN in columns, tree)

    params = {"dataset": dataset, "config": config, "splits": splits, "limit": limit,
              "votes": votes}
    summary: dict[str, Any] = {"source": source, "splits": {}, "images_missing": 0,
                               "split_assigned_from": assigned, "tree": None,
                               "votes": any(plan[4] is not None for plan in plans.values())}
    seen: set[str] = set()
    with lake.transaction("ingest hf", params, upstream=[]) as tx:
        for split, (data, wanted, position, has_image, tree) in plans.items():
            info = {"dataset": dataset, "config": config}
            galaxies = tx.writer("galaxies", {"split": split}, info=info)
            images = tx.writer("images", {"split": split}, info=info) if has_image else None
            votes_out = (tx.writer("votes", {"catalog": catalog, "split": split}, info=info)
                         if tree is not None else None)
            rows = missing = 0
            batches = data.iter(batch_size=batch_size)
            if progress:
                from tqdm import tqdm
                batches = tqdm(batches, desc=f"ingest {split}", unit="batch", leave=False, disable=None)
            for batch in batches:
                frame = _frame(batch, wanted)
                if frame.height == 0:
                    continue
                check_ids(frame[ID_COLUMN], seen, where=f" in split {split}")
                ids = frame[ID_COLUMN].cast(pl.String)
                ra = frame[position[0]].cast(pl.Float64) if position else pl.Series([None] * frame.height, dtype=pl.Float64)
                dec = frame[position[1]].cast(pl.Float64) if position else pl.Series([None] * frame.height, dtype=pl.Float64)
                galaxies.write(pl.DataFrame({"id_str": ids, "source": [source] * frame.height,
                                             "ra": ra, "dec": dec}))
                if votes_out is not None:
                    votes_out.write(votes_long(frame, tree=tree))
                if images is not None:
                    blobs = [_image_bytes(v) for v in batch[IMAGE_COLUMN]]
                    keep = [i for i, blob in enumerate(blobs) if blob is not None]
                    missing += len(blobs) - len(keep)
                    if keep:
                        images.write(pa.table({"id_str": [ids[i] for i in keep],
                                               "image": pa.array([blobs[i] for i in keep], pa.binary())}))
                rows += frame.height
            if rows == 0:
                raise InputError(f"split {split} of {dataset} has no rows")
            galaxies.close()
            if votes_out is not None:
                votes_out.close()
            if images is not None:
                if images.rows:
                    images.info["images_missing"] = missing
                    images.close()
            summary["splits"][split] = rows
            summary["images_missing"] += missing
        if tree is not None:
            summary["tree"] = tree.name
            tx.write("catalogs", catalog_row(catalog, "votes", tree.name, len(tree.label_names), dataset))
    return summary


def _frame(batch: dict[str, list], wanted: list[str]) -> pl.DataFrame:
    """The id, position and label columns of one batch as a Polars frame (NaN kept as NaN)."""
    data = {}
    for column in wanted:
        values = batch[column]
        if column == ID_COLUMN:
            data[column] = pl.Series(column, [None if v is None else str(v) for v in values], dtype=pl.String)
        else:
            data[column] = pl.Series(column, values, strict=False)
    return pl.DataFrame(data)
