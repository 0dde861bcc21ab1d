"""The ``embed`` stage: the ``images`` table through an encoder into ``embeddings``.

``embed`` streams: images are read from the partition file in chunks and travel to the
extraction loop's workers inside their tasks, and embeddings go into the partition through the
lake's streaming writer, so memory stays bounded. ``--shard i/n`` embeds one hash-shard of the
ids into ``embedding_shards``; the last shard to finish merges them into ``embeddings``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from galsae_lake.encoders.extraction import CHUNK_ROWS, ExtractionStream, _load_size
from galsae_lake.encoders.registry import (EncoderInfo, encoder_spec, encoder_tag, feature_block,
                                           load_encoder, parse_features)
from galsae_lake.errors import InputError, LakeError


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
          chunk_rows: int | None = None, features: str | int | None = None,
          engine: str = "local", ray_address: str | None = None) -> dict[str, Any]:
    """Embed the ``images`` table with ``encoder`` into ``embeddings`` (partition encoder, split).

    One transaction per split, so a run that stops keeps the splits already done; a split already
    embedded with the same weights from the same images is skipped unless ``force``.
    With ``shard="i/n"`` only the images whose id hashes to shard i are embedded, into
    ``embedding_shards`` (encoder, split, shard=i-of-n); when all n shards of a split are there
    (from any machine sharing the lake), they are merged into ``embeddings`` in one transaction.
    Images stream from the partition's file ``chunk_rows`` (default :data:`CHUNK_ROWS`) at a time
    and embeddings stream into the partition, so memory does not grow with the split.
    ``features`` chooses the embedding (``head`` or ``pooled_features_block_N``; default: the
    encoder's own, block 11 for ``mae-euclid``); another choice than the default is stored
    under its own tag (``mae-euclid-block9``, ``zoobot-euclid-head``...) unless ``tag`` is given.
    ``engine="ray"`` runs the extraction as a Ray Data pipeline (:mod:`galsae_lake.ray_engine`)
    on the cluster at ``ray_address`` (else a local one); the driver writes, as above.
    Returns a summary dict (encoder, weights, per-split rows, skipped corrupt images, images/s).
    """
    if not lake.exists("images"):
        raise LakeError(f"table images has no data in {lake.root}; run galsae-lake synth or "
                        f"galsae-lake ingest hf first")
    default_features = encoder_spec(encoder).features
    features = parse_features(features, default_features)
    if tag is None:
        tag = encoder_tag(encoder)
        if features != default_features:
            block = feature_block(features)
            tag += "-head" if block is None else f"-block{block}"
    from galsae_lake.lake import check_partition_value

    check_partition_value("encoder", tag)
    sharding = parse_shard(shard)
    if engine not in ("local", "ray"):
        raise InputError(f"--engine {engine}: use local or ray")
    if engine == "ray" and sharding:
        raise InputError("--shard is for the local engine on several machines; --engine ray "
                         "spreads one run over the Ray cluster itself")
    if ray_address and engine != "ray":
        raise InputError("--ray-address needs --engine ray")
    available = [p["split"] for p in lake.partitions("images")]
    wanted = list(splits) if splits else available
    missing = [s for s in wanted if s not in available]
    if missing:
        raise InputError(f"images has no split {', '.join(missing)} (splits: {', '.join(available)})")
    model, info = load_encoder(encoder, weights, lake, features)
    _check_dim(lake, tag, info.embedding_dim)
    if engine == "ray":
        from galsae_lake.ray_engine import RaySession

        with RaySession(ray_address):
            return _embed_splits(lake, encoder, model, info, tag, wanted, sharding, shard, force,
                                 batch_size, device, workers, precision, chunk_rows, progress,
                                 log, engine)
    return _embed_splits(lake, encoder, model, info, tag, wanted, sharding, shard, force,
                         batch_size, device, workers, precision, chunk_rows, progress, log, engine)


def _embed_splits(lake, encoder, model, info, tag, wanted, sharding, shard, force, batch_size,
                  device, workers, precision, chunk_rows, progress, log, engine):
    summary = {"encoder": tag, "weights": info.weights, "weights_id": info.weights_id,
               "embedding_dim": info.embedding_dim, "features": info.features, "splits": {}}
    for split in wanted:
        key = {"weights_id": info.weights_id, "images_written_at": _images_version(lake, split),
               "input_size": info.input_size, "features": info.features}
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
            precision, chunk_rows, f"embed {tag}/{split}" if progress else False, log, engine,
            meta={**key, "encoder_name": encoder, "weights": info.weights, "arch": info.arch,
                  "embedding_dim": info.embedding_dim},
            params={"encoder": encoder, "weights": info.weights_id, "split": split, "tag": tag,
                    "shard": shard, "features": info.features})
        log(f"embeddings {tag}/{split}{' shard ' + shard if sharding else ''}: "
            f"{rows} rows, {info.embedding_dim}-d {info.features}, {corrupt} corrupt skipped, "
            f"{rate:.3g} images/s ({stream.device}, {stream.precision}, batch {stream.batch_size}"
            f"{', ray, %d actors' % stream.workers if engine == 'ray' else ''})")
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
                 engine: str, meta: dict, params: dict):
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
    if engine == "ray":
        from galsae_lake.ray_engine import RayStream

        stream = RayStream(model, info, path, ids, size, batch_size, device, precision, progress)
    else:
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
                            "engine": engine, "precision": stream.precision, "device": stream.device,
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
