"""A folder of galaxy cutouts with a catalogue: the Hugging Face image-folder convention.

The folder holds the images and a ``metadata.csv`` (or ``metadata.jsonl`` / ``metadata.parquet``)
whose ``file_name`` column names each image relative to the folder, one row per galaxy, plus an
``id_str`` column and any catalogue columns (Galaxy Zoo votes of any tree, or nothing else)::

    cutouts/
      metadata.csv          file_name,id_str,ra,dec[,split][,smooth-or-featured-dr5_smooth,...]
      images/J1000.jpg
      images/J1001.fits

JPEG and PNG cutouts load through ``datasets.load_dataset("imagefolder")`` exactly as on the hub
(splits from ``train/`` and ``test/`` sub-folders when there are some). FITS cutouts (``.fits``,
``.fit``, ``.fits.gz``; the first image HDU) are not images to ``datasets``: this module reads
them with astropy and stores each as an 8-bit PNG, scaled as the Euclid MER pipeline makes its
Zoobot cutouts (Asterism ``morphology.py``, ``adjust_dynamic_range`` and ``to_uint8``):
``y = arcsinh(100 * flux)``, clipped to ``[0, p99.85(y)]`` per image, divided by its maximum and
multiplied by 255 (NaN pixels read as 0). A 2-D HDU becomes a grey PNG; a cube of 3 planes
``(3, h, w)`` an RGB one, each plane scaled alone.

A source with a single split (the usual case: no split column, no train/test folders) gets a
reproducible train/test split from :func:`galsae_lake.sources.assign_split` (a hash of the id).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from galsae_lake.errors import InputError

METADATA_NAMES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")
FITS_ENDINGS = (".fits", ".fit", ".fits.gz", ".fit.gz", ".fz")

#: the Euclid pipeline's arcsinh stretch: softening and the upper clip percentile
ARCSINH_Q = 100.0
CLIP_PERCENTILE = 99.85


def metadata_file(path: Path) -> Path | None:
    """The folder's metadata file, or None when ``path`` is not an image folder."""
    if not path.is_dir():
        return None
    return next((path / name for name in METADATA_NAMES if (path / name).is_file()), None)


def is_fits(name: str) -> bool:
    return str(name).lower().endswith(FITS_ENDINGS)


def stretch(flux: np.ndarray, q: float = ARCSINH_Q, clip: float = CLIP_PERCENTILE) -> np.ndarray:
    """One plane of flux as uint8, the Euclid pipeline's way (see the module docstring)."""
    flux = np.nan_to_num(np.asarray(flux, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    y = np.arcsinh(flux * q)
    y = np.clip(y, 0.0, np.percentile(y, clip))
    top = y.max()
    if top <= 0:
        return np.zeros(y.shape, np.uint8)
    return np.round(255.0 * y / top).astype(np.uint8)


def fits_png(path: Path) -> bytes:
    """A FITS cutout as PNG bytes (grey for one plane, RGB for three)."""
    from astropy.io import fits
    from PIL import Image

    try:
        with fits.open(path, memmap=False) as hdus:
            data = next((h.data for h in hdus if getattr(h, "data", None) is not None
                         and getattr(h.data, "ndim", 0) >= 2), None)
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"cannot read FITS cutout {path.name}: {exc}") from None
    if data is None:
        raise InputError(f"FITS cutout {path.name} has no image HDU")
    data = np.squeeze(np.asarray(data))
    if data.ndim == 2:
        image = Image.fromarray(stretch(data), mode="L")
    elif data.ndim == 3 and data.shape[0] == 3:
        image = Image.fromarray(np.stack([stretch(p) for p in data], axis=-1), mode="RGB")
    else:
        raise InputError(f"FITS cutout {path.name} has shape {data.shape}; expected (h, w) or (3, h, w)")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _read_metadata(path: Path):
    import polars as pl

    from galsae_lake.sources.files import read_table

    if path.suffix == ".jsonl":
        try:
            return pl.read_ndjson(path)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise InputError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    return read_table(path)


def load_folder(folder: Path) -> dict:
    """The folder as ``{split: datasets.Dataset}`` with an ``image`` column of stored bytes.

    Folders without FITS files go through ``datasets.load_dataset("imagefolder", ...)``; folders
    with FITS cutouts are read here (metadata by Polars, images by astropy) into the same shape.
    """
    import datasets

    meta = metadata_file(folder)
    if meta is None:
        raise InputError(f"{folder} has no metadata.csv (the image-folder convention: a "
                         f"file_name column naming each cutout)")
    frame = _read_metadata(meta)
    if "file_name" not in frame.columns:
        raise InputError(f"{meta} has no file_name column (the image-folder convention)")
    names = frame["file_name"].cast(str).to_list()
    if not any(is_fits(n) for n in names):
        try:
            loaded = datasets.load_dataset("imagefolder", data_dir=str(folder))
        except Exception as exc:  # datasets' own errors: one line
            first = " ".join(str(exc).strip().splitlines()[0].split()) if str(exc).strip() else type(exc).__name__
            raise InputError(f"cannot load image folder {folder}: {first}") from None
        return dict(loaded)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise InputError(f"{len(missing)} file(s) named in {meta.name} are not in {folder}, "
                         f"e.g. {missing[0]}")
    images = []
    for name in names:
        file = folder / name
        blob = fits_png(file) if is_fits(name) else file.read_bytes()
        images.append({"bytes": blob, "path": None})
    columns = {c: frame[c].to_list() for c in frame.columns if c != "file_name"}
    columns["image"] = images
    table = datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image(decode=False))
    if "split" in frame.columns:
        splits = {}
        for split in sorted(set(frame["split"].cast(str).to_list())):
            splits[split] = table.filter(lambda s: s == split, input_columns=["split"])
        return splits
    return {"train": table}
