"""Training an SAE on one encoder's embeddings, evaluating it, and writing its four tables.

``train_sae(lake, "zoobot-synth")`` reads ``embeddings`` (every split of the encoder), fits the
normalization on the training split, trains :class:`~galsae_lake.sae.MatryoshkaSAE` with the
sparse step, evaluates it on the test split and writes, in one transaction:

- ``sae_runs``: one row (config JSON, checkpoint folder relative to the lake root, metrics JSON);
- ``sae_training_log``: a row every ``log_every`` steps and at each epoch's end (means since the
  previous row);
- ``sae_activations``: the non-zero inference codes of every galaxy of every split;
- ``sae_features``: per feature, over the training split: frequency (share of galaxies with a
  non-zero code), mean activation where non-zero, max activation, Matryoshka group;
- the checkpoint folder ``models/sae/<run_id>`` (``model.safetensors`` + ``config.json``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from galsae_lake.distributed import RankGroup, init_process_group, shutdown, world_from_env
from galsae_lake.errors import InputError, LakeError
from galsae_lake.lake import Lake, short_id, vectors
from galsae_lake.sae import (NORM_EPS, MatryoshkaSAE, SAEConfig, StepOutput, check_memory,
                             encode_embeddings,
                             load_config, resolve_device, sparse_loss_and_grads)

#: rows encoded at a time when writing activations and evaluating
ENCODE_BATCH = 4096


# ---------------------------------------------------------------- the loop
def fit_normalization(model: MatryoshkaSAE, X: np.ndarray) -> None:
    """Per-dimension mean and (unbiased, as the seed) std of the training rows, into the model."""
    X64 = torch.from_numpy(np.asarray(X, dtype=np.float64))
    with torch.no_grad():
        model.mean.copy_(X64.mean(0).float())
        model.std.copy_(X64.std(0).float())


def make_optimizer(model: MatryoshkaSAE, config: SAEConfig):
    """AdamW (the seed's betas and default weight decay) and cosine decay to lr/10 per epoch."""
    kwargs = dict(lr=config.learning_rate, betas=(0.9, 0.999))
    # the fused kernel is one pass over the weights instead of several; it ignores strides, so
    # only where each gradient has its parameter's layout (the sparse step and autograd do that)
    if model.W_dec.is_contiguous():
        try:
            return _with_schedule(torch.optim.AdamW(model.parameters(), fused=True, **kwargs), config)
        except (RuntimeError, TypeError):
            pass
    return _with_schedule(torch.optim.AdamW(model.parameters(), foreach=True, **kwargs), config)


def _with_schedule(optimizer, config: SAEConfig):
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.epochs, eta_min=config.learning_rate / 10)
    return optimizer, scheduler


def epoch_order(n: int, generator: torch.Generator) -> torch.Tensor:
    """One epoch's row order, drawn as the seed's ``DataLoader(shuffle=True, generator=g)`` does.

    The loader's iterator draws a base seed, then its RandomSampler draws the permutation it uses
    and, on exhausting it, one more (empty-sliced) permutation: same draws, same batches.
    """
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    order = torch.randperm(n, generator=generator)
    torch.randperm(n, generator=generator)
    return order


def train_model(X: np.ndarray, config: SAEConfig, progress: bool = True,
                device: str | torch.device | None = None,
                on_step: Callable[[int, StepOutput], None] | None = None,
                group=None) -> tuple[MatryoshkaSAE, list[dict], dict]:
    """Train an SAE on raw embeddings ``X`` [rows x input_dim] (the training split).

    Returns the model (eval mode, normalization and threshold set), the training-log rows and
    timing stats. Batches are slices of one tensor already on the device, in the same order
    as the seed's DataLoader with the same seed; deterministic on CPU. ``on_step(step, out)``
    is called after every optimizer step (benchmarks time it). ``group``: a
    :class:`~galsae_lake.distributed.RankGroup` to train data parallel (every rank passes the
    same ``X`` and takes its slice of each global batch; see :mod:`galsae_lake.distributed`).
    """
    config = dataclasses.replace(config, group_sizes=list(config.group_sizes))
    if config.input_dim is None:
        config.input_dim = int(X.shape[1])
    config.validate()
    device = torch.device(device) if device is not None else resolve_device(config.device)
    check_memory(config, device)  # before allocating: a huge dictionary is one clear line
    torch.manual_seed(config.random_seed)
    model = MatryoshkaSAE(config)
    fit_normalization(model, X)
    model.to(device)
    if group is not None:
        group.broadcast_model(model)
    data = model.normalize(torch.tensor(np.asarray(X, dtype=np.float32), device=device))
    n = data.shape[0]
    optimizer, scheduler = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(config.random_seed)
    steps_per_epoch = math.ceil(n / config.batch_size)
    keys = ("loss", "mse", "l1", "aux", "l0")
    sums = {k: torch.zeros((), dtype=torch.float64, device=device) for k in keys}
    count, step, log = 0, 0, []
    threshold = None
    started = time.perf_counter()
    model.train()
    epochs = tqdm(range(config.epochs), desc="train-sae", unit="epoch", disable=not progress,
                  file=sys.stderr)
    for epoch in epochs:
        order = epoch_order(n, generator).to(device)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=not progress, file=sys.stderr, mininterval=0.5)
        for b in bar:
            rows = order[b * config.batch_size:(b + 1) * config.batch_size]
            if group is None:
                out = sparse_loss_and_grads(model, data[rows])
            else:  # this rank's slice of the global batch; gradients summed over the ranks
                out = sparse_loss_and_grads(model, data[rows.tensor_split(group.size)[group.rank]],
                                            group=group, batch_total=len(rows))
                out = group.reduce_step(model, out)
            model.make_decoder_weights_and_grad_unit_norm()
            optimizer.step()
            model.update_inactive_features(out.fired)
            m = config.threshold_momentum
            threshold = out.min_kept.clone() if threshold is None else (
                threshold + m * (out.min_kept - threshold))
            for k in keys:
                sums[k] += getattr(out, k)
            count += 1
            step += 1
            if on_step is not None:
                on_step(step, out)
            if step % config.log_every == 0 or b == steps_per_epoch - 1:
                row = _log_row(model, optimizer, sums, count, step, epoch)
                log.append(row)
                sums = {k: torch.zeros_like(v) for k, v in sums.items()}
                count = 0
        epochs.set_postfix(loss=f"{log[-1]['loss']:.4f}", l0=f"{log[-1]['l0']:.1f}",
                           dead=f"{log[-1]['dead_fraction']:.3f}")
        scheduler.step()
    seconds = time.perf_counter() - started
    with torch.no_grad():
        model.threshold.copy_(threshold)
    model.eval()
    return model, log, {"train_seconds": seconds, "seconds_per_epoch": seconds / config.epochs,
                        "steps": step, "device": str(device)}


def _log_row(model, optimizer, sums, count, step, epoch) -> dict[str, Any]:
    dead = (model.num_batches_not_active >= model.config.n_batches_to_dead).float().mean()
    row = {"step": step, "epoch": epoch + 1}
    row.update({k: float(v) / count for k, v in sums.items()})
    row["dead_fraction"] = float(dead)
    row["lr"] = float(optimizer.param_groups[0]["lr"])
    return row


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: MatryoshkaSAE, X: np.ndarray, batch_size: int = ENCODE_BATCH) -> dict[str, Any]:
    """Reconstruction of raw embeddings ``X`` with the inference codes, in the normalized space.

    ``fvu_per_level``: fraction of variance unexplained per Matryoshka level, sum of squared
    errors over the sum of squared deviations from each dimension's mean. ``explained_variance_
    seed``: the seed's ``1 - MSE / var`` with one scalar variance over all values (final level).
    """
    device = model.W_enc.device
    G = len(model.group_sizes)
    sq_err = torch.zeros(G, dtype=torch.float64)
    nnz = 0
    raw = torch.tensor(np.asarray(X, dtype=np.float32))
    Xn = ((raw - model.mean.cpu()) / (model.std.cpu() + NORM_EPS)).double()
    dim_mean = Xn.mean(0)
    total_dev = float((Xn - dim_mean).pow(2).sum())
    scalar_var = float(Xn.var(unbiased=False))
    for start in range(0, len(X), batch_size):
        xb = torch.tensor(np.asarray(X[start:start + batch_size], np.float32), device=device)
        codes = model.encode(xb)
        xn = model.normalize(xb)
        nnz += int((codes > 0).sum())
        recon = model.b_dec.expand_as(xn)
        for g in range(G):
            lo, hi = model.group_indices[g], model.group_indices[g + 1]
            recon = recon + codes[:, lo:hi] @ model.W_dec[lo:hi]
            sq_err[g] += float((recon - xn).double().pow(2).sum())
    n_values = X.shape[0] * X.shape[1]
    fvu = [float(e) / total_dev if total_dev > 0 else float("nan") for e in sq_err]
    cumulative = np.cumsum(model.group_sizes).tolist()
    ev_seed = [1 - (float(e) / n_values) / (scalar_var if scalar_var > 0 else 1.0) for e in sq_err]
    return {
        "fvu": fvu[-1],
        "fvu_per_level": [{"level": i, "latents": int(cumulative[i]), "fvu": fvu[i]}
                          for i in range(G)],
        "explained_variance_seed": ev_seed[-1],
        "explained_variance_seed_per_level": ev_seed,
        "l0": nnz / max(len(X), 1),
    }


# ---------------------------------------------------------------- the lake
def read_embeddings(lake: Lake, encoder: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every split of an encoder's embeddings as ``{split: (ids, X)}``; NaN/inf raise."""
    try:
        parts = lake.partitions("embeddings", encoder=encoder)
    except LakeError:
        parts = []
    if not parts:
        raise InputError(f"embeddings for encoder {encoder!r} not found in {lake.root}; run "
                         f"galsae-lake embed --encoder {encoder} (or ingest embeddings) first")
    out = {}
    for part in parts:
        split = part["split"]
        table = lake.arrow("embeddings", columns=["id_str", "embedding"], encoder=encoder,
                           split=split)
        X = vectors(table, "embedding")
        bad = ~np.isfinite(X)
        if bad.any():
            raise InputError(f"embeddings of encoder {encoder!r} (split {split}) hold "
                             f"{int(bad.sum())} NaN/inf values in {int(bad.any(1).sum())} rows; "
                             "fix or drop them before training an SAE")
        ids = np.asarray(table.column("id_str").to_pylist(), dtype=object)
        out[split] = (ids, X)
    return out


def run_id_for(encoder: str, config: SAEConfig, split: str, ids: np.ndarray, X: np.ndarray) -> str:
    """``sae-<encoder>-<6 hex>`` from the config, the encoder and a fingerprint of the data."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.ascontiguousarray(X).tobytes())
    digest.update("\n".join(map(str, ids)).encode())
    params = {"config": config.to_dict(), "encoder": encoder, "split": split,
              "data": digest.hexdigest()}
    return short_id(f"sae-{encoder}", params)


@dataclasses.dataclass(frozen=True)
class TrainedSAE:
    """What :func:`train_sae` wrote: the run's ``sae_runs`` row, parsed."""

    run_id: str
    encoder: str
    config: SAEConfig
    metrics: dict[str, Any]
    checkpoint: Path  # the folder of model.safetensors + config.json


def train_sae(lake: Lake, encoder: str, config: SAEConfig | None = None, split: str = "train",
              config_path: str | None = None, overrides: list[str] | None = None,
              progress: bool = True, threads: int | None = None) -> TrainedSAE:
    """Train an SAE on ``embeddings`` of ``encoder`` (split ``split``) and write its tables.

    ``config``: an :class:`SAEConfig`; else one is loaded from ``config_path`` (a TOML file or
    a shipped config's name; default: the shipped TOML for the encoder) with ``overrides``
    (``["epochs=20", "training.batch_size=128"]``). ``threads``: CPU threads for torch during
    this call (on a busy shared machine 1 is often fastest). Returns the run (id, config,
    metrics, checkpoint). Re-running with the same config and data replaces the same run.
    """
    if threads is not None:
        if threads < 1:
            raise InputError(f"threads must be at least 1, got {threads}")
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return train_sae(lake, encoder, config, split, config_path, overrides, progress)
        finally:
            torch.set_num_threads(before)
    if config is None:
        config = load_config(config_path, overrides, encoder=encoder)
    else:
        config = dataclasses.replace(config, group_sizes=list(config.group_sizes)).validate()
    splits = read_embeddings(lake, encoder)
    if split not in splits:
        raise InputError(f"embeddings of encoder {encoder!r} have no split {split!r} "
                         f"(splits: {', '.join(sorted(splits))})")
    ids, X = splits[split]
    dim = X.shape[1]
    if config.input_dim is None:
        config.input_dim = dim
    elif config.input_dim != dim:
        raise InputError(f"embeddings of encoder {encoder!r} are {dim}-d but the SAE config says "
                         f"input_dim={config.input_dim}; pass --set input_dim={dim}")
    if len(X) < 2:
        raise InputError(f"embeddings of encoder {encoder!r} (split {split}) have {len(X)} row(s); "
                         "an SAE needs at least 2")
    resolve_device(config.device)
    run_id = run_id_for(encoder, config, split, ids, X)
    world = world_from_env()
    if world is None or world.world_size == 1:
        model, log, timing = train_model(X, config, progress=progress)
        world_size = 1
    else:  # torchrun / srun: data parallel; rank 0 alone evaluates and writes the lake
        if config.batch_size < world.world_size:
            raise InputError(f"batch_size={config.batch_size} is smaller than the "
                             f"{world.world_size} ranks; each rank needs rows of every batch")
        device = init_process_group(world, config.device)
        try:
            model, log, timing = train_model(X, config, progress=progress and world.is_main,
                                             device=device, group=RankGroup(world))
        finally:
            shutdown()
        if not world.is_main:
            return TrainedSAE(run_id, encoder, config, {"world_size": world.world_size,
                                                        "rank": world.rank},
                              lake.model_dir("sae", run_id))
        world_size = world.world_size
    eval_split = "test" if "test" in splits and split != "test" else split
    metrics = {"split": eval_split, **evaluate(model, splits[eval_split][1])}
    with lake.transaction("train-sae", {"encoder": encoder, "split": split,
                                        "config": config.to_dict()},
                          upstream=["embeddings"]) as tx:
        folder = tx.stage_dir("sae", run_id)
        model.save(folder)
        features = None
        for name, (split_ids, split_X) in splits.items():
            stats = _write_activations(tx, run_id, name, model, split_ids, split_X)
            if name == split:
                features = stats
        freq = features["count"] / len(X)
        dead_fraction = float((features["count"] == 0).mean())
        metrics.update({
            "l0_train": float(features["count"].sum() / len(X)),
            "dead_fraction": dead_fraction,
            "dead_fraction_training": float(log[-1]["dead_fraction"]) if log else 0.0,
            "threshold": float(model.threshold),
            "n_train": int(len(X)), "n_test": int(len(splits[eval_split][1])),
            "normalization": split, "train_split": split, "world_size": world_size, **timing,
        })
        group = np.repeat(np.arange(len(config.group_sizes)), config.group_sizes)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_act = np.where(features["count"] > 0, features["sum"] / features["count"], 0.0)
        tx.write("sae_features", pa.table({
            "feature": pa.array(np.arange(model.total_dict_size), pa.int32()),
            "group": pa.array(group, pa.int32()),
            "frequency": pa.array(freq, pa.float64()),
            "mean_activation": pa.array(mean_act, pa.float64()),
            "max_activation": pa.array(features["max"], pa.float64()),
        }), partition={"run_id": run_id})
        tx.write("sae_training_log", pa.Table.from_pylist(log), partition={"run_id": run_id})
        tx.write("sae_runs", pa.table({
            "run_id": [run_id], "encoder": [encoder],
            "config": [json.dumps(config.to_dict())],
            "checkpoint": [str(lake.model_dir("sae", run_id).relative_to(lake.root))],
            "metrics": [json.dumps(metrics)],
            "created_at": pa.array([datetime.now(timezone.utc)], pa.timestamp("us", tz="UTC")),
        }))
    return TrainedSAE(run_id, encoder, config, metrics, lake.model_dir("sae", run_id))


def _write_activations(tx, run_id, split, model, ids, X) -> dict[str, np.ndarray]:
    """Stream one split's non-zero codes into ``sae_activations``; returns per-feature stats."""
    n = model.total_dict_size
    stats = {"count": np.zeros(n, np.int64), "sum": np.zeros(n), "max": np.zeros(n)}
    writer = None
    for start, rows, cols, vals in _encode_chunks(model, X):
        stats["count"] += np.bincount(cols, minlength=n)
        stats["sum"] += np.bincount(cols, weights=vals, minlength=n)
        if len(vals):
            chunk_max = np.zeros(n)
            np.maximum.at(chunk_max, cols, vals)
            np.maximum(stats["max"], chunk_max, out=stats["max"])
            if writer is None:
                writer = tx.writer("sae_activations", {"run_id": run_id, "split": split})
            writer.write(pa.table({
                "id_str": pa.array(ids[start + rows], pa.string()),
                "feature": pa.array(cols, pa.int32()),
                "activation": pa.array(vals, pa.float32()),
            }))
    if writer is not None:
        writer.close()
    return stats


def _encode_chunks(model, X) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    chunk = ENCODE_BATCH * 4
    for start in range(0, len(X), chunk):
        rows, cols, vals = encode_embeddings(model, X[start:start + chunk])
        yield start, rows, cols, vals


def load_sae(lake: Lake, run_id: str, device: str | torch.device = "cpu") -> MatryoshkaSAE:
    """The trained model of ``run_id`` (with its normalization and threshold), in eval mode."""
    folder = lake.model_dir("sae", run_id)
    if not (folder / "model.safetensors").exists():
        raise LakeError(f"no SAE run {run_id!r} in {lake.root}; train one with "
                        "galsae-lake train-sae --encoder NAME")
    return MatryoshkaSAE.load(folder, device=device)
