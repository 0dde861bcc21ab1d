"""Epoch time of our SAE training against the seed's loop, on the same data in the same run.

The seed's loop (``seedsrc/src/train_matryoshka_sae.py``): a ``DataLoader`` over a CPU tensor
dataset (batch 256, shuffle, 4 workers, seeded generator), the dense forward with autograd,
``make_decoder_weights_and_grad_unit_norm``, plain AdamW, ``update_inactive_features``.
Ours: :func:`galsae_lake.train.train_model` (batches sliced from a tensor on the device, the
sparse step, fused AdamW). Both start from the same initialization and see the same batches in
the same order, so their loss curves are compared step by step. The two run in turn, one step
each, so that both see the same load on a shared machine.

    python scripts/bench_sae.py                          # 20k x 640, 1 epoch each, CPU
    python scripts/bench_sae.py --device cuda --rows 140000 --epochs 2 --full
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from galsae_lake.sae import MatryoshkaSAE, SAEConfig  # noqa: E402
from galsae_lake.train import fit_normalization, train_model  # noqa: E402


def planted_embeddings(rows: int, dim: int, atoms: int = 4096, active: int = 24,
                       seed: int = 0) -> np.ndarray:
    """Embedding-like data: sparse non-negative sums of unit directions plus noise."""
    rng = np.random.default_rng(seed)
    D = rng.normal(size=(atoms, dim)).astype(np.float32)
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    X = np.empty((rows, dim), np.float32)
    for start in range(0, rows, 8192):
        n = min(8192, rows - start)
        idx = rng.integers(0, atoms, size=(n, active))
        coef = rng.exponential(1.0, size=(n, active)).astype(np.float32)
        X[start:start + n] = np.einsum("na,nad->nd", coef, D[idx]) + 0.05 * rng.normal(
            size=(n, dim)).astype(np.float32)
    return X


class EmbeddingDataset(Dataset):
    """The seed's dataset: a CPU tensor, one row per item."""

    def __init__(self, X: torch.Tensor):
        self.embeddings = X

    def __len__(self):
        return len(self.embeddings)

    def __getitem__(self, idx):
        return self.embeddings[idx]


def seed_steps(X: np.ndarray, config: SAEConfig, device: torch.device, workers: int):
    """The seed's training loop as a generator: yields (seconds, loss) per step."""
    torch.manual_seed(config.random_seed)
    model = MatryoshkaSAE(config)
    fit_normalization(model, X)
    data = model.normalize(torch.tensor(X))  # normalized up front, as the seed's dataset does
    model.to(device)
    loader = DataLoader(EmbeddingDataset(data), batch_size=config.batch_size, shuffle=True,
                        num_workers=workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(config.random_seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.epochs, eta_min=config.learning_rate / 10)
    for _ in range(config.epochs):
        last = time.perf_counter()
        for batch in loader:
            optimizer.zero_grad()
            out = model(batch.to(device))
            out["loss"].backward()
            model.make_decoder_weights_and_grad_unit_norm()
            optimizer.step()
            model.update_inactive_features(out["feature_acts"].sum(0) > 0)
            loss = out["loss"].item()  # the seed's .item() per step
            seconds = time.perf_counter() - last
            yield seconds, loss
            last = time.perf_counter()
        scheduler.step()


def interleaved(X: np.ndarray, config: SAEConfig, device: torch.device, workers: int,
                max_steps: int | None):
    """Ours and the seed's loop step by step in turn, so both see the same machine load.

    Returns per-step seconds and losses of each (ours: :func:`train_model`).
    """
    t_ours, l_ours, t_seed, l_seed = [], [], [], []
    seed = seed_steps(X, config, device, workers)
    last = [time.perf_counter()]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def on_step(step, out):
        l_ours.append(float(out["loss"]))
        sync()
        t_ours.append(time.perf_counter() - last[0])
        seconds, loss = next(seed)
        t_seed.append(seconds)
        l_seed.append(loss)
        if max_steps and step >= max_steps:
            raise StopIteration
        last[0] = time.perf_counter()

    try:
        train_model(X, config, progress=False, device=device, on_step=on_step)
    except StopIteration:
        pass
    seed.close()
    return t_ours, l_ours, t_seed, l_seed


def windows(values: list[float], n: int = 8) -> list[float]:
    size = max(1, len(values) // n)
    return [statistics.fmean(values[i:i + size]) for i in range(0, size * n, size)
            if values[i:i + size]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=640)
    parser.add_argument("--epochs", type=int, default=1, help="epochs timed for each loop")
    parser.add_argument("--max-steps", type=int, default=None, help="stop each loop after N steps")
    parser.add_argument("--workers", type=int, default=4, help="the seed loop's DataLoader workers")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--full", action="store_true",
                        help="then time our full training at the seed config (200 epochs)")
    parser.add_argument("--full-seed", action="store_true",
                        help="also time the seed loop's full training (slow)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = SAEConfig(input_dim=args.dim, epochs=args.epochs).validate()
    print(f"data: {args.rows} x {args.dim} planted embeddings; config: {config.total_latents} "
          f"latents, k={config.top_k}, batch {config.batch_size}; device {device}, "
          f"{torch.get_num_threads()} threads")
    X = planted_embeddings(args.rows, args.dim)

    t_ours, l_ours, t_seed, l_seed = interleaved(X, config, device, args.workers, args.max_steps)
    steps = min(len(t_ours), len(t_seed))
    per_epoch = math.ceil(args.rows / config.batch_size)
    # medians of the steps after the first; epoch time: the seed loop's first step includes
    # starting its DataLoader workers, which it pays again every epoch, so it is kept; ours
    # includes one-off set-up (model, normalization), so it is left out
    med_o, med_s = statistics.median(t_ours[1:]), statistics.median(t_seed[1:])
    ep_o = statistics.fmean(t_ours[1:]) * per_epoch
    ep_s = t_seed[0] + statistics.fmean(t_seed[1:]) * (per_epoch - 1)
    print(f"median ms/step  ours {med_o * 1e3:8.2f}   seed loop {med_s * 1e3:8.2f}   "
          f"ratio {med_s / med_o:5.2f}x")
    print(f"epoch seconds   ours {ep_o:8.2f}   seed loop {ep_s:8.2f}   ratio {ep_s / ep_o:5.2f}x "
          f"({per_epoch} steps of batch {config.batch_size})")
    seed_epochs = SAEConfig().epochs
    print(f"at the seed's {seed_epochs} epochs, from these epoch times (extrapolated): ours "
          f"{ep_o * seed_epochs / 60:.1f} min, seed loop {ep_s * seed_epochs / 60:.1f} min")
    diff = [abs(a - b) for a, b in zip(l_ours[:steps], l_seed[:steps])]
    print(f"loss, same init and batches, {steps} steps: max |ours - seed| {max(diff):.2e} "
          f"(first 10 steps {max(diff[:10]):.2e}); final ours {l_ours[steps - 1]:.5f} "
          f"seed {l_seed[steps - 1]:.5f}")
    print("loss curve, means of 8 windows:")
    print("  ours " + " ".join(f"{v:.4f}" for v in windows(l_ours[:steps])))
    print("  seed " + " ".join(f"{v:.4f}" for v in windows(l_seed[:steps])))
    if args.full:
        full = SAEConfig(input_dim=args.dim).validate()
        started = time.perf_counter()
        train_model(X, full, progress=True, device=device)
        print(f"full training, ours: {args.rows} x {args.dim}, {full.epochs} epochs: "
              f"{time.perf_counter() - started:.1f} s")
        if args.full_seed:
            started = time.perf_counter()
            for _ in seed_steps(X, full, device, args.workers):
                pass
            print(f"full training, seed loop: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
