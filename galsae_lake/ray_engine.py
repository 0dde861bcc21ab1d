"""``embed --engine ray``: the extraction as a Ray Data pipeline, on a local or remote Ray cluster.

Per split: Ray Data reads the ``images`` partition's Parquet file, decodes and resizes the images
in tasks (the plain loop's decoder, corrupt images marked with their reason, never zero-filled),
and runs the encoder in a pool of actors (``map_batches`` with a callable class: one GPU per actor
on a cluster with GPUs; on CPUs, actors and tasks ask for fractional CPUs, because on a small
machine whole-CPU actors starve the read tasks and the pipeline deadlocks). The actors return
Arrow tables whose ``embedding`` is a fixed-size list of float32 (what the lake stores, and what
DuckDB and Polars read as ``FLOAT[d]``), not Ray's tensor extension type. The driver takes the
results in input order and commits them through the lake's transaction like the plain loop:
workers never write into the lake. :class:`RayStream` yields what
:class:`~galsae_lake.encoders.extraction.ExtractionStream` yields, so ``embed`` treats both alike (resume
per split, corrupt images reported, one transaction per split).

Every node must see the lake's folder (a shared filesystem) and have galsae-lake installed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from galsae_lake.errors import InputError

#: CPUs a decode or read task asks for: small, so they always fit beside the actors
TASK_CPUS = 0.25
#: one encoder actor per this many CPUs of the cluster (CPU-only clusters)
CPUS_PER_ACTOR = 4


def import_ray():
    try:
        import ray
    except ImportError:
        raise InputError("--engine ray needs Ray: pip install 'galsae-lake[ray]'") from None
    return ray


class RaySession:
    """Connects to ``address`` (a running cluster) or starts a local one; a local cluster that
    this session started is shut down on exit. A Ray already initialized is used as it is."""

    def __init__(self, address: str | None = None):
        self.address, self.started = address, False

    def __enter__(self):
        ray = import_ray()
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                where = self.address or "a local cluster"
                raise InputError(f"--engine ray: cannot connect to {where} "
                                 f"({' '.join(str(exc).split())[:200]})") from None
            self.started = True
        return self

    def __exit__(self, *exc):
        if self.started:
            import_ray().shutdown()


def plan_actors(resources: dict, device: str | None) -> dict:
    """How many encoder actors and what each asks for, from the cluster's resources.

    GPUs (or ``device`` cuda): one actor per GPU. CPUs: one per :data:`CPUS_PER_ACTOR` CPUs,
    each asking for a fractional share that leaves room for the file listing (one CPU) and the
    read and decode tasks (2 CPUs: one actor at 0.5 CPU).
    """
    gpus = int(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    if device and device.startswith("cuda") and not gpus:
        raise InputError(f"--device {device}: the Ray cluster has no GPUs")
    if gpus and device in (None, "auto") or (device or "").startswith("cuda"):
        return {"actors": gpus, "num_gpus": 1, "num_cpus": min(1.0, cpus / gpus / 2),
                "device": "cuda", "threads": 1}
    actors = max(1, int(cpus // CPUS_PER_ACTOR))
    # Ray Data's file-listing task takes one whole CPU: leave it, and the tasks' shares, free
    share = max(TASK_CPUS, (cpus - 1 - 2 * TASK_CPUS) / actors)
    return {"actors": actors, "num_gpus": 0, "num_cpus": share, "device": "cpu",
            "threads": max(1, round(share))}


def decode_batch(batch: pa.Table, size: int) -> pa.Table:
    """A Ray task: image bytes -> ``pixels`` (fixed-size binary, uint8 HxWx3) and ``error``
    (NULL where the image decoded), with the plain loop's decoder and its corrupt-image reasons."""
    from galsae_lake.encoders.extraction import _ImageBatches, _Piece

    blobs = batch.column("image").to_pylist()
    pixels, kept, failed, _ = _ImageBatches(size)[_Piece(list(range(len(blobs))), blobs, True)]
    out = np.zeros((len(blobs), size * size * 3), np.uint8)
    out[kept.numpy()] = pixels.numpy().reshape(len(kept), -1)
    errors: list[str | None] = [None] * len(blobs)
    for i, reason in failed:
        errors[i] = reason
    width = size * size * 3
    return pa.table({
        "id_str": batch.column("id_str"),
        "pixels": pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(blobs),
                                                       [None, pa.py_buffer(out.tobytes())]),
        "error": pa.array(errors, pa.string()),
    })


class EncoderActor:
    """A Ray actor: holds the encoder on its device; decoded pixels -> embeddings (Arrow)."""

    def __init__(self, model_ref, info, size: int, precision: str, device: str, threads: int):
        import ray
        import torch

        from galsae_lake.encoders.extraction import resolve_precision

        torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.model = ray.get(model_ref[0]).to(self.device).eval()
        self.info, self.size = info, size
        self.precision = resolve_precision(precision, device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from galsae_lake.encoders.extraction import embed_batch
        from galsae_lake.lake import vector_array

        n, s = batch.num_rows, self.size
        ok = np.asarray(batch.column("error").is_null().to_numpy(zero_copy_only=False), bool)
        pixels = batch.column("pixels").combine_chunks()
        raw = np.frombuffer(pixels.buffers()[1], np.uint8)
        raw = raw[pixels.offset * s * s * 3:(pixels.offset + n) * s * s * 3].reshape(n, s, s, 3)
        embeddings = np.zeros((n, self.info.embedding_dim), np.float32)  # failed rows dropped later
        if ok.any():
            x = torch.from_numpy(np.ascontiguousarray(raw[ok])).to(self.device)
            embeddings[ok] = embed_batch(self.model, self.info, x, self.precision).cpu().numpy()
        return pa.table({"id_str": batch.column("id_str"), "embedding": vector_array(embeddings),
                         "error": batch.column("error")})


class RayStream:
    """The extraction of one ``images`` file on Ray, iterated like
    :class:`~galsae_lake.encoders.extraction.ExtractionStream`: ``(embeddings float32 [m, d], kept
    positions int64 [m], failed [(position, reason)])`` in input order. After iterating,
    ``seconds``, ``device``, ``precision``, ``batch_size``, ``workers`` (actors) describe the run."""

    def __init__(self, model, info, path: Path, ids: pa.Array, size: int,
                 batch_size: int | None = None, device: str | None = None,
                 precision: str = "auto", progress: bool | str = True):
        ray = import_ray()
        self.info, self.path, self.ids, self.size, self.progress = info, path, ids, size, progress
        self.n = len(ids)
        self.plan = plan_actors(ray.cluster_resources(), device)
        self.device = self.plan["device"]
        if precision not in ("auto", "bf16", "fp32"):
            raise InputError(f"--precision {precision}: use auto, bf16 or fp32")
        self.precision = precision if precision != "auto" else ("bf16" if self.device == "cuda"
                                                                 else "fp32")
        self.batch_size = batch_size or (256 if self.device == "cuda" else 64)
        self.workers = self.plan["actors"]
        self.model_ref = ray.put(model.cpu())
        self.seconds = 0.0

    def dataset(self):
        """The Ray Data pipeline: read -> decode (tasks) -> encode (actor pool)."""
        import ray

        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # rows come back in the file's order
        plan = self.plan
        ds = ray.data.read_parquet(str(self.path), columns=["id_str", "image"],
                                   num_cpus=TASK_CPUS)
        ds = ds.map_batches(decode_batch, fn_kwargs={"size": self.size}, batch_format="pyarrow",
                            batch_size=self.batch_size, num_cpus=TASK_CPUS)
        return ds.map_batches(
            EncoderActor, batch_format="pyarrow", batch_size=self.batch_size,
            fn_constructor_kwargs={"model_ref": [self.model_ref], "info": self.info,
                                   "size": self.size, "precision": self.precision,
                                   "device": self.device, "threads": plan["threads"]},
            compute=ray.data.ActorPoolStrategy(size=plan["actors"]), num_cpus=plan["num_cpus"],
            num_gpus=plan["num_gpus"])

    def __iter__(self):
        from tqdm import tqdm

        if self.n == 0:
            return
        start = time.perf_counter()
        progress = self.progress
        bar = tqdm(total=self.n, unit="img", desc=progress if isinstance(progress, str) else "embed",
                   disable=not progress, file=sys.stderr, leave=False)
        offset = 0
        try:
            for batch in self.dataset().iter_batches(batch_format="pyarrow", batch_size=None):
                m = batch.num_rows
                if not batch.column("id_str").combine_chunks().equals(self.ids.slice(offset, m)):
                    raise RuntimeError("Ray returned the images out of order")
                errors = batch.column("error")
                ok = np.asarray(errors.is_null().to_numpy(zero_copy_only=False), bool)
                positions = np.arange(offset, offset + m)
                failed = [(int(positions[i]), errors[int(i)].as_py()) for i in np.flatnonzero(~ok)]
                vectors = batch.column("embedding").combine_chunks().filter(pa.array(ok))
                embeddings = np.asarray(vectors.values.to_numpy(zero_copy_only=False),
                                        np.float32).reshape(-1, self.info.embedding_dim)
                offset += m
                bar.update(m)
                yield embeddings, positions[ok], failed
            if offset != self.n:
                raise RuntimeError(f"Ray returned {offset} of {self.n} images")
        finally:
            bar.close()
            self.seconds = time.perf_counter() - start

