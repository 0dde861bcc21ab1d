"""The fast extraction loop: encoded images in, one embedding per image out.

The embedding (:func:`forward_features`) is one of two things, named as the lake records them:

- ``head``: what the seed hooks on Zoobot, the output of the model's ``head`` with no
  classifier, i.e. timm's ``forward_head(forward_features(x), pre_logits=True)`` (pooled, normed);
- ``pooled_features_block_N``: what ``mwalmsley/euclid_q1_embeddings`` holds, block N's output
  from ``forward_intermediates(x, indices=[N], intermediates_only=True, norm=True)`` averaged
  over the spatial grid (for the author's ViT, ``norm`` is an Identity: the raw patch tokens).
  Any timm model with ``forward_intermediates`` can give it.

Pixels are scaled to [0, 1] and, for the Zoobot-family encoders, not normalized further (as
Zoobot trains, the seed embeds and galaxy-datasets' view transforms do); other timm models use
their pretrained mean/std. :func:`embed_batch` is one batch of decoded pixels through all of
that, for any engine that decodes images itself.

Speed: image bytes are decoded (JPEG draft mode) and resized in DataLoader workers, one whole
batch per worker call, and travel as uint8 (4x less than float); an image smaller than the model
input is shipped at its native size and upsampled on the device. Pinned memory, channels_last
and bf16 autocast on a GPU (also on CPUs with native bf16), batch size probed from free GPU
memory. A corrupt image is reported and skipped, never zero-filled. The loop reads its images
in chunks (:class:`ExtractionStream`), so memory does not grow with their number; :func:`extract`
runs it on images held in memory.
"""

from __future__ import annotations

import io
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from galsae_lake.encoders.registry import EncoderInfo, _one_line
from galsae_lake.errors import InputError, LakeError

# image decoding (in workers)

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
        forward_features(model, x, info.features)
    per_image = max(1, (torch.cuda.max_memory_allocated() - base) / probe)
    torch.cuda.empty_cache()
    fit = int(0.4 * free / per_image)
    return int(max(32, min(1024, 2 ** int(math.log2(max(fit, 1))))))


def forward_features(model, x, features: str = "head"):
    """The embedding of a normalized batch ``x`` [n, 3, h, w]: ``head`` or
    ``pooled_features_block_N`` (see the module's docstring). Returns [n, d]."""
    if features == "head":
        out = model.forward_head(model.forward_features(x), pre_logits=True)
        return out.mean(1) if out.ndim == 3 else out  # a model that returns tokens: mean-pool
    block = int(features.rsplit("_", 1)[1])
    (out,) = model.forward_intermediates(x, indices=[block], intermediates_only=True, norm=True)
    # NCHW maps (timm's default output format): the mean over the spatial grid; NLC tokens: over L
    return out.mean(dim=(-2, -1)) if out.ndim == 4 else out.mean(1)


def normalize_pixels(pixels, info: EncoderInfo, channels_last: bool = False):
    """uint8 NHWC pixels (a tensor on any device, any square size) -> the model's input: float
    NCHW at ``info.input_size`` (bilinear resize on the device when needed), scaled to [0, 1]
    and normalized with the encoder's mean/std."""
    import torch
    import torch.nn.functional as F

    x = pixels.permute(0, 3, 1, 2).float()
    if x.shape[-1] != info.input_size or x.shape[-2] != info.input_size:
        x = F.interpolate(x, size=(info.input_size, info.input_size), mode="bilinear",
                          align_corners=False)
    mean = torch.tensor(info.mean, device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(info.std, device=x.device).view(1, 3, 1, 1) * 255
    return ((x - mean) / std).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def embed_batch(model, info: EncoderInfo, pixels, precision: str = "fp32"):
    """One batch of decoded images through the encoder: uint8 NHWC pixels (a torch tensor on the
    model's device) -> float32 embeddings [n, d] on that device. The loop of
    :class:`ExtractionStream` and any other engine call this."""
    import torch

    device = pixels.device.type
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16,
                                                enabled=precision == "bf16"):
        x = normalize_pixels(pixels, info, channels_last=device == "cuda")
        return forward_features(model, x, info.features).float()


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
        from tqdm import tqdm

        info, device = self.info, self.device
        if self.n == 0:
            return
        loader = self.pieces()
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
            pixels = group[0] if len(group) == 1 else torch.cat(group)
            out = embed_batch(self.model, info, pixels, self.precision)
            if out.shape[-1] != info.embedding_dim:
                raise LakeError(f"encoder {info.name} gave {out.shape[-1]}-d embeddings, its "
                                f"model says {info.embedding_dim}-d ({info.features})")
            return out

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
