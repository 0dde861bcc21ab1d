"""Image encoders by name, and the fast extraction loop that fills the ``embeddings`` table.

Encoders (the registry, :data:`ENCODERS`):

    zoobot-euclid  timm hf-hub:mwalmsley/zoobot-encoder-euclid (ConvNeXt-nano, 640-d, 224 px)
    mae-euclid     timm hf-hub:mwalmsley/euclid_encoder_mae_zoobot_vit_small_patch8_224 (ViT-S/8, 384-d)
    zoobot-synth   offline stand-in: ConvNeXt-atto supervised on simulated votes (320-d, 64 px)
    mae-synth      offline stand-in: ViT (patch 8, 6 blocks) masked autoencoder (192-d, 64 px)
    <timm name>    any timm architecture (timm's pretrained weights with ``hub``)

Weights (``weights=``): ``hub`` (download, the default for the Euclid encoders), ``random`` (the
same architecture untrained, seeded), a PATH (a folder in the hub layout, ``config.json`` +
``model.safetensors``, loaded through timm's ``local-dir:`` source exactly as the hub's files are;
or one ``.safetensors``/``.pth`` state dict), and for the stand-ins ``lake`` (trained into this
lake by ``train-encoder``) or ``shipped`` (the package's small weights); their default is the
lake's copy when there is one, else the shipped one.

The embedding is what the seed hooks: the output of the model's ``head`` with no classifier, i.e.
timm's ``forward_head(forward_features(x), pre_logits=True)`` (pooled, normed features).
Pixels are scaled to [0, 1] and, for the Zoobot-family encoders, not normalized further (as
Zoobot trains and the seed embeds); other timm models use their pretrained mean/std.

Speed: image bytes are decoded (JPEG draft mode) and resized in DataLoader workers, one whole
batch per worker call, and travel as uint8 (4x less than float); an image smaller than the model
input is shipped at its native size and upsampled on the device. Pinned memory, channels_last
and bf16 autocast on a GPU (also on CPUs with native bf16), batch size probed from free GPU
memory. A corrupt image is reported and skipped, never zero-filled. ``embed`` streams: images
are read from the partition file in chunks and travel to the workers inside their tasks, and
embeddings go into the partition through the lake's streaming writer, so memory stays bounded.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from galsae_lake.errors import InputError, LakeError

#: where the package keeps its shipped stand-in weights (one folder per encoder, hub layout)
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights"
#: the seed that makes ``--weights random`` reproducible
RANDOM_SEED = 0


@dataclass(frozen=True)
class EncoderSpec:
    """A named encoder: its timm architecture, where its weights live, and its input."""

    name: str
    arch: str
    hub: str | None
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    model_args: dict = field(default_factory=dict)
    standin: bool = False
    description: str = ""


_UNIT = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in [
        EncoderSpec("zoobot-euclid", "convnext_nano", "hf-hub:mwalmsley/zoobot-encoder-euclid", 224,
                    *_UNIT, description="Zoobot ConvNeXt-nano trained on Euclid Galaxy Zoo votes (640-d)"),
        EncoderSpec("mae-euclid", "vit_small_patch8_224",
                    "hf-hub:mwalmsley/euclid_encoder_mae_zoobot_vit_small_patch8_224", 224, *_UNIT,
                    description="ViT-S/8 masked autoencoder trained on Euclid images (384-d)"),
        EncoderSpec("zoobot-synth", "convnext_atto", None, 64, *_UNIT, standin=True,
                    description="offline stand-in: ConvNeXt-atto supervised on simulated votes (320-d)"),
        EncoderSpec("mae-synth", "vit_tiny_patch16_224", None, 64, *_UNIT,
                    model_args={"img_size": 64, "patch_size": 8, "depth": 6, "global_pool": "avg"},
                    standin=True,
                    description="offline stand-in: ViT (patch 8, 6 blocks) masked autoencoder (192-d)"),
    ]
}


@dataclass
class EncoderInfo:
    """What the extraction needs to know about a loaded encoder, and what the lake records."""

    name: str
    arch: str
    weights: str            # how the weights were chosen: hub, random, path, lake, shipped
    weights_id: str         # identifies the weights (hub id, seed or file hash): resume key
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    embedding_dim: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def encoder_tag(name: str) -> str:
    """The ``encoder`` partition value for an encoder name (``hf-hub:a/b`` -> ``a-b``)."""
    tag = name.split(":", 1)[-1] if ":" in name else name
    return tag.replace("/", "-").replace(":", "-")


def encoder_spec(name: str) -> EncoderSpec:
    """The registry entry for ``name``; plain timm names get a spec from timm's pretrained config."""
    if name in ENCODERS:
        return ENCODERS[name]
    import timm

    if name.startswith(("hf-hub:", "hf_hub:")):
        return EncoderSpec(name, name, name, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    base = name.split(".", 1)[0]
    if not timm.is_model(base):
        known = ", ".join(ENCODERS)
        raise InputError(f"unknown encoder {name!r}: use one of {known} or a timm model name "
                         f"(timm.list_models())")
    cfg = timm.get_pretrained_cfg(name) or timm.get_pretrained_cfg(base)
    size = int((getattr(cfg, "input_size", None) or (3, 224, 224))[-1])
    mean = tuple(getattr(cfg, "mean", None) or (0.485, 0.456, 0.406))
    std = tuple(getattr(cfg, "std", None) or (0.229, 0.224, 0.225))
    return EncoderSpec(name, name, None, size, mean, std)


def _file_digest(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:12]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).strip().split())
    return text[:300] + ("..." if len(text) > 300 else "")


def standin_weights_dir(name: str, lake=None, weights: str | None = None) -> tuple[Path, str]:
    """The folder holding a stand-in's weights and which one it is (``lake`` or ``shipped``)."""
    candidates = []
    if weights in (None, "lake") and lake is not None:
        candidates.append((lake.model_dir("encoders", name), "lake"))
    if weights in (None, "shipped"):
        candidates.append((SHIPPED_WEIGHTS / name, "shipped"))
    for folder, kind in candidates:
        if (folder / "model.safetensors").exists():
            return folder, kind
    if weights == "lake":
        raise InputError(f"encoder {name} has no weights in this lake; run "
                         f"galsae-lake train-encoder --encoder {name} first")
    raise InputError(f"encoder {name} has no weights (none shipped, none in the lake); run "
                     f"galsae-lake train-encoder --encoder {name}")


def build_model(spec: EncoderSpec, **overrides):
    """The spec's architecture with random weights (seeded) and no classifier."""
    import timm
    import torch

    torch.manual_seed(RANDOM_SEED)
    args = {**spec.model_args, **overrides}
    return timm.create_model(spec.arch, pretrained=False, num_classes=0, **args)


def _load_state_file(path: Path) -> dict:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_encoder(name: str, weights: str | None = None, lake=None):
    """Load an encoder for inference: returns ``(model, EncoderInfo)``, the model in eval mode on CPU.

    ``weights``: None (the encoder's default), ``hub``, ``random``, ``lake``, ``shipped`` or a PATH.
    Raises InputError with one line for an unknown encoder, unreachable hub, or weights that do
    not fit the architecture.
    """
    import timm
    import torch

    spec = encoder_spec(name)
    kind = weights or ("hub" if not spec.standin else "default")
    if spec.standin and kind in ("hub", "default", "lake", "shipped"):
        if kind == "hub":
            raise InputError(f"encoder {name} is an offline stand-in with no hub weights; use "
                             f"--weights lake, shipped, random or a PATH")
        folder, kind = standin_weights_dir(name, lake, None if kind == "default" else kind)
        model, weights_id = _load_folder(spec, folder)
    elif kind in ("lake", "shipped"):
        raise InputError(f"--weights {kind} is for the stand-ins zoobot-synth and mae-synth only")
    elif kind == "hub":
        source = spec.hub or spec.arch
        try:
            model = timm.create_model(source, pretrained=True, num_classes=0,
                                      **({} if spec.hub else spec.model_args))
        except Exception as exc:  # offline, unknown repo, ...: one line, with the way out
            raise InputError(f"could not load {name} weights from the hub ({_one_line(exc)}); "
                             f"use --weights random or --weights PATH offline") from None
        weights_id = f"hub:{source}"
    elif kind == "random":
        model = build_model(spec)
        weights_id = f"random:{RANDOM_SEED}"
    else:
        path = Path(kind).expanduser()
        if not path.exists():
            raise InputError(f"--weights {kind}: no such file or folder (use hub, random or a PATH)")
        if path.is_dir():
            model, weights_id = _load_folder(spec, path)
        else:
            model = build_model(spec)
            try:
                state = _load_state_file(path)
                model.load_state_dict(state, strict=True)
            except Exception as exc:
                raise InputError(f"weights {path} do not fit {name} ({spec.arch}): "
                                 f"{_mismatch(exc)}") from None
            weights_id = f"file:{_file_digest([path])}"
        kind = "path"
    model.eval()
    with torch.inference_mode():
        size = spec.input_size
        probe = model.forward_head(model.forward_features(torch.zeros(1, 3, size, size)),
                                   pre_logits=True)
    dim = int(probe.shape[-1])
    info = EncoderInfo(name=name, arch=spec.arch, weights=kind, weights_id=weights_id,
                       input_size=spec.input_size, mean=tuple(spec.mean), std=tuple(spec.std),
                       embedding_dim=dim)
    return model, info


def _mismatch(exc: BaseException) -> str:
    """A one-line summary of a load_state_dict failure."""
    text = str(exc)
    if "size mismatch" in text:
        first = next(line.strip() for line in text.splitlines() if "size mismatch" in line)
        return first.rstrip(".")
    if "Missing key" in text or "Unexpected key" in text:
        lines = [line.strip() for line in text.splitlines() if "key(s)" in line]
        return "; ".join(line[:160] + ("..." if len(line) > 160 else "") for line in lines)
    return _one_line(exc)


def _load_folder(spec: EncoderSpec, folder: Path):
    """A hub-layout folder (config.json + model.safetensors) through timm's ``local-dir:`` source."""
    import timm

    config_file = folder / "config.json"
    if not config_file.exists():
        raise InputError(f"weights folder {folder} has no config.json (expected the hub layout: "
                         f"config.json + model.safetensors)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{config_file} is not JSON ({exc})") from None
    arch = config.get("architecture")
    if spec.arch and not spec.arch.startswith(("hf-hub:", "hf_hub:")) and arch != spec.arch:
        raise InputError(f"weights {folder} do not fit {spec.name}: they are for {arch}, "
                         f"{spec.name} is {spec.arch}")
    files = [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json")]
    try:
        model = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0)
    except Exception as exc:
        raise InputError(f"weights {folder} do not fit {spec.name} ({arch}): {_mismatch(exc)}") from None
    return model, f"dir:{_file_digest(files)}"


def save_hub_folder(model, folder: Path, arch: str, model_args: dict, input_size: int,
                    mean=_UNIT[0], std=_UNIT[1], extra: dict | None = None, dtype=None) -> None:
    """Write ``model`` as a hub-layout folder (``config.json`` + ``model.safetensors``) timm can load."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(folder / "model.safetensors"))
    config = {
        "architecture": arch,
        "num_classes": 0,
        "num_features": int(getattr(model, "num_features", 0)),
        "model_args": dict(model_args),
        "pretrained_cfg": {
            "input_size": [3, input_size, input_size], "fixed_input_size": "img_size" in model_args,
            "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
            "mean": list(mean), "std": list(std), "num_classes": 0,
        },
        **(extra or {}),
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))


# ---------------------------------------------------------------- image decoding (in workers)

def decode_image(data: bytes, size: int) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 array (size, size, 3), RGB; raises on a corrupt image."""
    from PIL import Image

    from galsae_lake.images import open_image, to_rgb

    img = open_image(data)  # refuses an image over the pixel cap before decoding it
    with img:
        if img.format == "JPEG":
            img.draft("RGB", (size, size))  # let libjpeg downscale while decoding
        img = to_rgb(img)
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


#: rows ``embed`` reads from an ``images`` file at a time (bounds memory; not the batch size)
CHUNK_ROWS = 1024
#: images per DataLoader task: a larger model batch is put together from several on the device,
#: so the image bytes in flight to the workers stay small even with GPU batches of 1024
PIECE_ROWS = 128


class _Piece:
    """A worker task: encoded images with their positions in the input, and whether the model
    batch they belong to ends with them."""

    __slots__ = ("index", "blobs", "last")

    def __init__(self, index: list[int], blobs: list, last: bool):
        self.index, self.blobs, self.last = index, blobs, last


class _Pieces:
    """The DataLoader's sampler: iterates ``chunks`` of (positions, images) lazily (in the main
    process, a few tasks ahead of the workers) and cuts them into model batches of
    ``batch_size`` images, each sent as pieces of at most ``piece`` images. The batches are the
    same whatever the chunk size."""

    def __init__(self, chunks, batch_size: int, piece: int):
        self.chunks, self.batch_size = chunks, batch_size
        k = max(1, math.ceil(batch_size / max(1, piece)))
        self.piece = math.ceil(batch_size / k)

    def __iter__(self):
        index: list[int] = []
        blobs: list = []
        for positions, images in self.chunks:
            if isinstance(images, (pa.Array, pa.ChunkedArray)):
                images = images.to_pylist()
            index.extend(int(i) for i in positions)
            blobs.extend(images)
            while len(index) >= self.batch_size:
                yield from self._batch(index[: self.batch_size], blobs[: self.batch_size])
                del index[: self.batch_size], blobs[: self.batch_size]
        if index:
            yield from self._batch(index, blobs)

    def _batch(self, index, blobs):
        for start in range(0, len(index), self.piece):
            stop = start + self.piece
            yield _Piece(index[start:stop], blobs[start:stop], stop >= len(index))


class _ImageBatches:
    """Map-style dataset whose items are whole pieces: _Piece -> (uint8 NHWC, kept, failed, last)."""

    def __init__(self, size: int):
        self.size = size

    def __getitem__(self, piece: _Piece):
        import torch

        out = np.empty((len(piece.index), self.size, self.size, 3), dtype=np.uint8)
        kept, failed = [], []
        for i, value in zip(piece.index, piece.blobs):
            try:
                if value is None:
                    raise ValueError("no image bytes")
                out[len(kept)] = decode_image(value, self.size)
                kept.append(i)
            except Exception as exc:  # reported by the caller, never zero-filled
                failed.append((i, _one_line(exc)[:200]))
        return (torch.from_numpy(out[: len(kept)]), torch.tensor(kept, dtype=torch.int64), failed,
                piece.last)


def _load_size(images, target: int, probe: int = 16) -> int:
    """The size images travel at: their native size when all probed ones are smaller than
    ``target`` (the device upsamples, cheaper than shipping big tensors), else ``target``."""
    from PIL import Image

    n = len(images)
    native = 0
    for i in np.unique(np.linspace(0, n - 1, min(n, probe)).astype(int)):
        value = images[int(i)].as_py() if isinstance(images, pa.Array) else images[int(i)]
        try:
            with Image.open(io.BytesIO(value)) as img:
                native = max(native, *img.size)
        except Exception:
            continue
    return native if 0 < native < target else target


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device is available here")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """``auto``: bf16 on a GPU and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32."""
    import torch

    if precision not in ("auto", "bf16", "fp32"):
        raise InputError(f"--precision {precision}: use auto, bf16 or fp32")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


#: CPU flags of bf16 arithmetic in hardware (Linux /proc/cpuinfo names)
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Does this CPU compute in bf16 in hardware (AVX512-BF16 or AMX)?

    Not ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: that is true on any AVX-512 CPU, where
    oneDNN emulates bf16 and autocast runs 2-3.6x slower than fp32 (measured on a 2-core
    AVX-512 Xeon without AVX512-BF16). Outside Linux (no cpuinfo) the answer is no: fp32.
    """
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def default_workers(device: str) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.startswith("cuda"):
        return max(1, min(16, cpus - 1))
    return max(1, min(4, cpus // 2))  # on a CPU the forward needs the cores more than decoding


def auto_batch_size(model, info: EncoderInfo, device: str, precision: str) -> int:
    """A batch size for the device: on a GPU the largest power of two using ~40% of free memory."""
    import torch

    if not device.startswith("cuda"):
        return 64 if info.input_size <= 96 else 32
    free, _ = torch.cuda.mem_get_info()
    probe = 32
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    x = torch.zeros(probe, 3, info.input_size, info.input_size, device=device).contiguous(
        memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=precision == "bf16"):
        _forward(model, x)
    per_image = max(1, (torch.cuda.max_memory_allocated() - base) / probe)
    torch.cuda.empty_cache()
    fit = int(0.4 * free / per_image)
    return int(max(32, min(1024, 2 ** int(math.log2(max(fit, 1))))))


def _forward(model, x):
    out = model.forward_head(model.forward_features(x), pre_logits=True)
    if out.ndim == 3:  # a model that returns tokens: mean-pool them
        out = out.mean(1)
    return out


@dataclass
class Extraction:
    """The result of :func:`extract`: embeddings of the images that decoded, in input order."""

    embeddings: np.ndarray           # float32 [n_kept, d]
    kept: np.ndarray                 # int64 indices into the input of the rows of ``embeddings``
    failed: list[tuple[int, str]]    # (index, reason) of corrupt images, skipped
    seconds: float
    batch_size: int
    precision: str
    device: str
    workers: int


def extract(model, info: EncoderInfo, images, batch_size: int | None = None,
            device: str | None = None, workers: int | None = None, precision: str = "auto",
            progress: bool | str = True) -> Extraction:
    """Embed encoded images (an Arrow binary array or a list of bytes) with ``model``.

    Returns an :class:`Extraction`; corrupt images are listed in ``failed`` and left out.
    """
    n = len(images)
    size = _load_size(images, info.input_size)
    run = ExtractionStream(model, info, memory_chunks(images), n, size, batch_size, device,
                           workers, precision, progress)
    outputs, kept_all, failed_all = [], [], []
    for embeddings, kept, failed in run:
        outputs.append(embeddings)
        kept_all.append(kept)
        failed_all.extend(failed)
    embeddings = np.concatenate(outputs) if outputs else np.zeros((0, info.embedding_dim), np.float32)
    kept = np.concatenate(kept_all) if kept_all else np.zeros(0, np.int64)
    return Extraction(embeddings, kept, failed_all, run.seconds, run.batch_size, run.precision,
                      run.device, run.workers)


def memory_chunks(images, rows: int = CHUNK_ROWS):
    """``(positions, images)`` chunks of encoded images held in memory, for :class:`ExtractionStream`."""
    n = len(images)
    return ((np.arange(start, min(n, start + rows)), images[start:start + rows])
            for start in range(0, n, rows))


class ExtractionStream:
    """The extraction loop over images that arrive in chunks, for bounded memory.

    ``chunks`` yields ``(positions, images)``: int positions (increasing; they come back as
    ``kept`` and in ``failed``) and encoded images (Arrow binary array or list of bytes). ``n``
    is the total (the bar and the choice of workers), ``size`` the size images travel at (see
    :func:`_load_size`). Iterating yields ``(embeddings float32 [m, d], kept int64 [m], failed
    [(position, reason)])`` every 32 model batches and at the end, in input order; the chunks are
    read lazily, a few worker tasks ahead, so memory does not grow with the number of images.
    After iterating, ``seconds``, ``batch_size``, ``precision``, ``device``, ``workers`` describe
    the run.
    """

    def __init__(self, model, info: EncoderInfo, chunks, n: int, size: int,
                 batch_size: int | None = None, device: str | None = None,
                 workers: int | None = None, precision: str = "auto",
                 progress: bool | str = True):
        import torch

        self.info, self.chunks, self.n, self.size, self.progress = info, chunks, n, size, progress
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.start = time.perf_counter()
        self.model = model.to(self.device)
        if self.device.startswith("cuda"):
            self.model = self.model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True
        self.batch_size = batch_size or auto_batch_size(self.model, info, self.device, self.precision)
        self.workers = default_workers(self.device) if workers is None else workers
        if n <= 2 * self.batch_size:
            self.workers = 0  # starting processes costs more than decoding a few images
        self.seconds = 0.0

    def pieces(self):
        """The input pipeline alone: the DataLoader over the chunks, yielding pieces
        ``(uint8 NHWC pixels on the CPU, kept, failed, last)``, decoded and resized in the
        workers (``last``: the piece ends a model batch). Benchmarks time it without a model."""
        from torch.utils.data import DataLoader

        loader_args = {}
        if self.workers:
            import multiprocessing

            # fork: workers start fast and share the loaded libraries; the bytes come in the tasks
            context = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
            loader_args = {"prefetch_factor": 4, "multiprocessing_context": context}
        return DataLoader(_ImageBatches(self.size),
                          sampler=_Pieces(self.chunks, self.batch_size, PIECE_ROWS),
                          batch_size=None, num_workers=self.workers,
                          pin_memory=self.device.startswith("cuda"), **loader_args)

    def __iter__(self):
        import torch
        import torch.nn.functional as F
        from tqdm import tqdm

        info, device, size = self.info, self.device, self.size
        cuda = device.startswith("cuda")
        if self.n == 0:
            return
        loader = self.pieces()
        mean = torch.tensor(info.mean, device=device).view(1, 3, 1, 1) * 255
        std = torch.tensor(info.std, device=device).view(1, 3, 1, 1) * 255
        pending, pending_kept, failed_all, group, group_kept = [], [], [], [], []
        progress = self.progress
        bar = tqdm(total=self.n, unit="img", desc=progress if isinstance(progress, str) else "embed",
                   disable=not progress, file=sys.stderr, leave=False)

        def drain():
            embeddings = (torch.cat(pending).cpu().numpy() if pending
                          else np.zeros((0, info.embedding_dim), np.float32))
            kept = torch.cat(pending_kept).numpy() if pending_kept else np.zeros(0, np.int64)
            out = (embeddings.astype(np.float32, copy=False), kept, list(failed_all))
            pending.clear(), pending_kept.clear(), failed_all.clear()
            return out

        def forward(group):  # not a with-block around the loop: the consumer runs at each yield
            with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16,
                                                        enabled=self.precision == "bf16"):
                x = (group[0] if len(group) == 1 else torch.cat(group)).permute(0, 3, 1, 2).float()
                if size != info.input_size:  # upsample small images on the device
                    x = F.interpolate(x, size=(info.input_size, info.input_size), mode="bilinear",
                                      align_corners=False)
                x = ((x - mean) / std).contiguous(
                    memory_format=torch.channels_last if cuda else torch.contiguous_format)
                return _forward(self.model, x).float()

        try:
            for pixels, kept, failed, last in loader:
                failed_all.extend(failed)
                if len(kept):
                    group.append(pixels.to(device, non_blocking=True))
                    group_kept.append(kept)
                bar.update(len(kept) + len(failed))
                if not last:
                    continue  # more pieces of this model batch to come
                if group:
                    pending.append(forward(group))
                    pending_kept.append(group_kept[0] if len(group_kept) == 1 else torch.cat(group_kept))
                    group, group_kept = [], []
                if len(pending) >= 32:  # drain to host now and then, not every batch
                    yield drain()
            if pending or failed_all:
                yield drain()
        finally:
            bar.close()
            self.seconds = time.perf_counter() - self.start


# ---------------------------------------------------------------- the embed command

def parse_shard(shard: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    if shard is None:
        return None
    try:
        i, n = (int(part) for part in shard.split("/"))
    except ValueError:
        raise InputError(f"--shard {shard}: expected i/n, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise InputError(f"--shard {shard}: need 0 <= i < n")
    return i, n


def shard_mask(ids: Sequence[str], i: int, n: int) -> np.ndarray:
    """Rows of shard i of n: a stable hash of the id (independent of order and machine)."""
    return np.fromiter((zlib.crc32(s.encode()) % n == i for s in ids), dtype=bool, count=len(ids))


def _images_version(lake, split: str) -> str | None:
    meta = lake.partition_info("images", split=split)
    return meta.written_at if meta else None


def _done(lake, table: str, partition: dict, key: dict) -> bool:
    """Is this partition already written with the same encoder weights and images?"""
    if not lake.exists(table, **partition):
        return False
    meta = lake.partition_info(table, **partition)
    return meta is not None and meta.matches(key)


def embed(lake, encoder: str, weights: str | None = None, splits: Sequence[str] | None = None,
          batch_size: int | None = None, device: str | None = None, shard: str | None = None,
          workers: int | None = None, precision: str = "auto", force: bool = False,
          tag: str | None = None, progress: bool = True, log=print,
          chunk_rows: int | None = None) -> dict[str, Any]:
    """Embed the ``images`` table with ``encoder`` into ``embeddings`` (partition encoder, split).

    One transaction per split, so a run that stops keeps the splits already done; a split already
    embedded with the same weights from the same images is skipped unless ``force``.
    With ``shard="i/n"`` only the images whose id hashes to shard i are embedded, into
    ``embedding_shards`` (encoder, split, shard=i-of-n); when all n shards of a split are there
    (from any machine sharing the lake), they are merged into ``embeddings`` in one transaction.
    Images stream from the partition's file ``chunk_rows`` (default :data:`CHUNK_ROWS`) at a time
    and embeddings stream into the partition, so memory does not grow with the split.
    Returns a summary dict (encoder, weights, per-split rows, skipped corrupt images, images/s).
    """
    if not lake.exists("images"):
        raise LakeError(f"table images has no data in {lake.root}; run galsae-lake synth or "
                        f"galsae-lake ingest hf first")
    tag = tag or encoder_tag(encoder)
    from galsae_lake.lake import check_partition_value

    check_partition_value("encoder", tag)
    sharding = parse_shard(shard)
    available = [p["split"] for p in lake.partitions("images")]
    wanted = list(splits) if splits else available
    missing = [s for s in wanted if s not in available]
    if missing:
        raise InputError(f"images has no split {', '.join(missing)} (splits: {', '.join(available)})")
    model, info = load_encoder(encoder, weights, lake)
    _check_dim(lake, tag, info.embedding_dim)
    summary = {"encoder": tag, "weights": info.weights, "weights_id": info.weights_id,
               "embedding_dim": info.embedding_dim, "splits": {}}
    for split in wanted:
        key = {"weights_id": info.weights_id, "images_written_at": _images_version(lake, split),
               "input_size": info.input_size}
        if sharding:
            i, n = sharding
            partition = {"encoder": tag, "split": split, "shard": f"{i}-of-{n}"}
            table = "embedding_shards"
        else:
            partition, table = {"encoder": tag, "split": split}, "embeddings"
        if not force and sharding and _merged(lake, tag, split, sharding[1], key):
            log(f"embeddings {tag}/{split} shard {shard}: all {sharding[1]} shards are already "
                f"merged into embeddings with these weights and images, skipped (--force to redo)")
            summary["splits"][split] = {"skipped": True}
            continue
        if not force and _done(lake, table, partition, key):
            log(f"embeddings {tag}/{split}{' shard ' + shard if sharding else ''}: already done "
                f"with these weights and images, skipped (--force to redo)")
            summary["splits"][split] = {"skipped": True}
            if sharding:
                _merge_shards(lake, tag, split, sharding[1], key, summary, log)
            continue
        rows, corrupt, rate, stream = _embed_split(
            lake, model, info, split, table, partition, sharding, batch_size, device, workers,
            precision, chunk_rows, f"embed {tag}/{split}" if progress else False, log,
            meta={**key, "encoder_name": encoder, "weights": info.weights, "arch": info.arch,
                  "embedding_dim": info.embedding_dim},
            params={"encoder": encoder, "weights": info.weights_id, "split": split, "tag": tag,
                    "shard": shard})
        log(f"embeddings {tag}/{split}{' shard ' + shard if sharding else ''}: "
            f"{rows} rows, {info.embedding_dim}-d, {corrupt} corrupt skipped, "
            f"{rate:.0f} images/s ({stream.device}, {stream.precision}, batch {stream.batch_size})")
        summary["splits"][split] = {"rows": rows, "skipped_corrupt": corrupt, "images_per_s": rate}
        if sharding:
            _merge_shards(lake, tag, split, sharding[1], key, summary, log)
    return summary


def _image_chunks(parquet, mask: np.ndarray | None, chunk_rows: int):
    """(positions, images) of an images file, ``chunk_rows`` rows at a time; rows outside
    ``mask`` (a shard) left out."""
    offset = 0
    for batch in parquet.iter_batches(batch_size=chunk_rows, columns=["image"], use_threads=False):
        positions = np.arange(offset, offset + batch.num_rows)
        images = batch.column(0)
        if mask is not None:
            keep = mask[offset:offset + batch.num_rows]
            positions, images = positions[keep], images.filter(pa.array(keep))
        offset += batch.num_rows
        yield positions, images


def _embed_split(lake, model, info: EncoderInfo, split: str, table: str, partition: dict,
                 sharding, batch_size, device, workers, precision, chunk_rows, progress, log,
                 meta: dict, params: dict):
    """Stream one split's images through the encoder into ``table`` in one transaction.

    Memory holds the ids, one chunk of image bytes, the tasks in flight and 32 batches of
    embeddings, whatever the split's size. Returns (rows, corrupt count, images/s, stream).
    """
    import pyarrow.parquet as pq

    from galsae_lake.lake import vector_array

    (path,) = lake.files("images", split=split)
    # buffered, not pre-buffered: pages are read as needed, not the whole column chunk at once
    parquet = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
    ids = parquet.read(columns=["id_str"], use_threads=False).column("id_str").combine_chunks()
    mask = shard_mask(ids.to_pylist(), *sharding) if sharding else None
    n = int(mask.sum()) if mask is not None else len(ids)
    first = next(_image_chunks(parquet, mask, 256), (None, []))[1]
    size = _load_size(first, info.input_size) if len(first) else info.input_size
    del first
    stream = ExtractionStream(model, info, _image_chunks(parquet, mask, chunk_rows or CHUNK_ROWS),
                              n, size, batch_size, device, workers, precision, progress)
    corrupt_ids: list[str] = []
    corrupt, shown = 0, []
    with lake.transaction("embed", params, upstream=["images"]) as tx:
        writer = tx.writer(table, partition, info=meta)
        for embeddings, kept, failed in stream:
            for i, reason in failed:
                corrupt += 1
                if len(corrupt_ids) < 100:
                    corrupt_ids.append(ids[int(i)].as_py())
                if len(shown) < 5:
                    shown.append((ids[int(i)].as_py(), reason))
            if len(kept):
                _check_finite(embeddings, [], f"{partition['encoder']}/{split}")
                writer.write(pa.table({"id_str": ids.take(pa.array(kept)),
                                       "embedding": vector_array(embeddings)}))
        for name, reason in shown:
            log(f"corrupt image {name} in images/split={split}: {reason}; skipped")
        if corrupt > 5:
            log(f"... and {corrupt - 5} more corrupt images skipped")
        if writer.rows == 0:
            raise InputError(f"images/split={split}: no image could be decoded ({corrupt} corrupt)")
        rate = (writer.rows + corrupt) / max(stream.seconds, 1e-9)
        writer.info.update({"skipped_corrupt": corrupt, "corrupt_ids": corrupt_ids,
                            "precision": stream.precision, "device": stream.device,
                            "batch_size": stream.batch_size, "images_per_s": round(rate, 1)})
        writer.close()
    return writer.rows, corrupt, rate, stream


def _check_finite(matrix: np.ndarray, first_ids: list[str], where: str) -> None:
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        raise InputError(f"{where}: the encoder produced NaN/inf for {int(bad.sum())} images")


def _check_dim(lake, tag: str, dim: int) -> None:
    """Every partition of one encoder holds vectors of one size."""
    import pyarrow.parquet as pq

    for path in lake.files("embeddings", encoder=tag):
        have = pq.read_schema(path).field("embedding").type.list_size
        if have != dim:
            raise InputError(f"encoder {tag} already has {have}-d embeddings in the lake; these "
                             f"are {dim}-d (store them under another name with --as NAME)")


def _merged(lake, tag: str, split: str, n: int, key: dict) -> bool:
    """Are n shards of (tag, split) with this key already merged into ``embeddings``?"""
    return _done(lake, "embeddings", {"encoder": tag, "split": split}, {**key, "merged_shards": n})


def _merge_shards(lake, tag: str, split: str, n: int, key: dict, summary: dict, log) -> None:
    """When all n shards of (tag, split) are present with the same key, write ``embeddings``
    from them and drop them, in one transaction. Streams: one record batch in memory at a time
    (and the ids, to check that no galaxy is in two shards)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    partitions = [{"encoder": tag, "split": split, "shard": f"{i}-of-{n}"} for i in range(n)]
    done = [p for p in partitions if _done(lake, "embedding_shards", p, key)]
    if len(done) < n:
        log(f"embeddings {tag}/{split}: {len(done)} of {n} shards done; the last shard to finish "
            f"merges them into embeddings")
        return
    if _merged(lake, tag, split, n, key):
        return
    files = [path for p in partitions for path in lake.files("embedding_shards", **p)]
    ids = pa.chunked_array([pq.read_table(path, columns=["id_str"]).column(0) for path in files])
    if pc.count_distinct(ids).as_py() != len(ids):
        raise LakeError(f"embedding_shards {tag}/{split}: shards overlap (duplicate ids)")
    metas = [lake.partition_info("embedding_shards", **p) for p in partitions]
    info = {**key, "merged_shards": n,
            "skipped_corrupt": sum(meta.skipped_corrupt for meta in metas),
            "corrupt_ids": [i for meta in metas for i in meta.corrupt_ids][:100]}
    with lake.transaction("embed", {"encoder": tag, "split": split, "merge_shards": n},
                          upstream=["embedding_shards"]) as tx:
        writer = tx.writer("embeddings", {"encoder": tag, "split": split}, info=info)
        for path in files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS * 16,
                                                           columns=["id_str", "embedding"]):
                writer.write(pa.Table.from_batches([batch]))
        writer.close()
        for partition in partitions:
            tx.remove("embedding_shards", partition)
    log(f"embeddings {tag}/{split}: merged {n} shards, {writer.rows} rows (shards removed)")
    summary["splits"].setdefault(split, {})["merged_rows"] = writer.rows
