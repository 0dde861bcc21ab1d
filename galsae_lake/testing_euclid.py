"""Offline stand-ins for the published Euclid inputs, each in the exact shape public code shows
(for the tests, tests/test_euclid_shapes.py, and scripts/make_euclid_fixtures.py).

Every builder writes what the online source serves, so the tests load it through the same code
path as online (docs/sources.md lists where each shape was verified):

- :func:`hub_model_folder`: a model repo as timm writes it (``timm.models.save_for_hf``:
  ``config.json`` naming the architecture + ``model.safetensors``), random weights of the exact
  architecture; :func:`hub_cache` puts such a folder into a Hugging Face hub cache, so
  ``timm.create_model("hf-hub:...")`` itself reads it offline.
- :func:`euclid_q1_repo`: a dataset repo in the hub's layout with configurations
  (``README.md`` YAML ``configs`` + ``<config>/<split>-*.parquet``), ``id_str`` + ``image``, as
  ``mwalmsley/euclid_q1`` (``v1-gz_arcsinh_vis_y``) is read by the seed.
- :func:`euclid_q1_embeddings`: a ``datasets`` DatasetDict saved to disk with ``id_str`` and
  ``pooled_features_block_{0,9,10,11}`` (fixed-length lists of float32), splits train and test.
- :func:`q1_catalogue`: a Parquet in the Euclid Q1 morphology catalogue's shape:
  ``{question}_{answer}_fraction`` (no ``-euclid``), ``{question}_{answer}_dirichlet``,
  ``right_ascension``/``declination``, ids with ``-``.

:func:`spell` writes an id in each source's spelling (``NEG``, ``-``, ``F-006_`` prefix).
"""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

from galsae_lake import gz

#: (tile index, object id, negative) of a few Euclid-like galaxies; the first three are the
#: galaxies whose image files galaxy-datasets spot-checks for gz_euclid
GALAXIES = [("102011288", "842787454598311005", True), ("102032117", "827217021378563764", True),
            ("102042983", "918837531292461296", True), ("102020107", "570178806082198283", False),
            ("102018211", "659012345678901234", True), ("102029999", "123456789012345678", False),
            ("102031415", "926535897932384626", True), ("102027182", "818284590452353602", False)]
PREFIX = "F-006_"


def spell(galaxy: tuple[str, str, bool], style: str) -> str:
    """An id as a source writes it: ``q1`` (euclid_q1 and its embeddings: ``NEG``),
    ``catalogue`` (the Q1 morphology catalogue: ``-``), ``gz_euclid`` (release prefix + ``NEG``)."""
    tile, number, negative = galaxy
    if style == "catalogue":
        return f"{tile}_{'-' if negative else ''}{number}"
    plain = f"{tile}_{'NEG' if negative else ''}{number}"
    return PREFIX + plain if style == "gz_euclid" else plain


def png(seed: int, size: int) -> bytes:
    """A galaxy-like PNG: an elliptical blob on noise (compresses well, decodes exactly)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size - 0.5
    a, b = rng.uniform(0.05, 0.25, 2)
    blob = np.exp(-(x ** 2 / a ** 2 + y ** 2 / b ** 2))
    rgb = np.stack([blob * rng.uniform(150, 255) for _ in range(3)], -1) + rng.uniform(0, 20, (size, size, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


def hub_model_folder(folder: Path, arch: str, seed: int = 0) -> Path:
    """Random weights of timm architecture ``arch`` (no classifier) written as timm writes a hub
    repo: ``config.json`` + ``model.safetensors``."""
    import timm
    import torch
    from timm.models import save_for_hf

    from galsae_lake.encoders import register_architectures

    register_architectures()
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=0)
    save_for_hf(model, folder, safe_serialization=True)
    return folder


def hub_cache(cache: Path, repo: str, folder: Path) -> None:
    """Put a model folder into a Hugging Face hub cache as ``repo``'s main revision."""
    import shutil

    root = cache / ("models--" + repo.replace("/", "--"))
    revision = "0" * 40
    shutil.copytree(folder, root / "snapshots" / revision)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(revision)


def euclid_q1_repo(root: Path, splits: dict[str, list[str]], size: int = 32,
                   config: str = "v1-gz_arcsinh_vis_y") -> Path:
    """A dataset repo in the hub's layout with two configurations (``config`` and the author's
    ``tiny-`` debug one, which holds only the first galaxy of each split); rows ``id_str`` +
    ``image`` (PNG)."""
    import datasets

    features = datasets.Features({"id_str": datasets.Value("string"), "image": datasets.Image()})
    yaml = ["---", "configs:"]
    for name, full in ((config, True), (f"tiny-{config}", False)):
        yaml += [f"- config_name: {name}", "  data_files:"]
        for split, ids in splits.items():
            rows = ids if full else ids[:1]
            data = datasets.Dataset.from_dict(
                {"id_str": rows, "image": [{"bytes": png(zlib.crc32(i.encode()), size), "path": None}
                                           for i in rows]}, features=features)
            (root / name).mkdir(parents=True, exist_ok=True)
            data.to_parquet(str(root / name / f"{split}-00000-of-00001.parquet"))
            yaml += [f"  - split: {split}", f"    path: {name}/{split}-*"]
    (root / "README.md").write_text("\n".join(yaml + ["---", "", "euclid_q1 stand-in", ""]))
    return root


def euclid_q1_embeddings(folder: Path, splits: dict[str, list[str]], dim: int = 384,
                         seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """``save_to_disk`` folder shaped as mwalmsley/euclid_q1_embeddings; returns the vectors
    ``{split: {column: matrix}}``."""
    import datasets

    vector = getattr(datasets, "List", None)
    column_type = (vector(datasets.Value("float32"), length=dim) if vector is not None
                   else datasets.Sequence(datasets.Value("float32"), length=dim))
    columns = [f"pooled_features_block_{n}" for n in (0, 9, 10, 11)]
    features = datasets.Features({"id_str": datasets.Value("string"),
                                  **{name: column_type for name in columns}})
    rng = np.random.default_rng(seed)
    parts, values = {}, {}
    for split, ids in splits.items():
        values[split] = {name: rng.normal(size=(len(ids), dim)).astype(np.float32) for name in columns}
        parts[split] = datasets.Dataset.from_dict(
            {"id_str": ids, **{name: values[split][name].tolist() for name in columns}},
            features=features)
    datasets.DatasetDict(parts).save_to_disk(str(folder))
    return values


def q1_catalogue(path: Path, ids: list[str], seed: int = 0) -> pl.DataFrame:
    """The Q1 morphology catalogue's shape: per galaxy, predicted ``{q}_{a}_fraction`` for every
    label of the tree (each question's answers sum to one), Dirichlet ``{q}_{a}_dirichlet``
    columns, ``right_ascension``/``declination``; written as Parquet."""
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {"id_str": ids,
                               "right_ascension": rng.uniform(50, 70, len(ids)),
                               "declination": rng.uniform(-50, -40, len(ids))}
    for question, answers in gz.QUESTIONS.items():
        concentration = rng.uniform(1, 40, (len(ids), len(answers)))
        fractions = concentration / concentration.sum(1, keepdims=True)
        for j, answer in enumerate(answers):
            data[f"{question}_{answer}_fraction"] = fractions[:, j].astype(np.float32)
            data[f"{question}_{answer}_dirichlet"] = concentration[:, j].astype(np.float32)
    frame = pl.DataFrame(data)
    frame.write_parquet(path)
    return frame


def save_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())
