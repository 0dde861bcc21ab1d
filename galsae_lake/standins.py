"""Offline stand-ins for the two Euclid encoders, trained on the synthetic world.

Random weights do not see morphology (linear probes of random ConvNeXt/ViT embeddings find spiral
arms and bars near chance: they mostly encode brightness and size), so offline the project trains
its own small encoders at the synthetic images' native 64 px:

* ``zoobot-synth``: ConvNeXt-atto (320-d) supervised on the volunteers' vote counts the way Zoobot
  is: a head predicts Dirichlet concentrations for every answer, and the loss is the
  Dirichlet-multinomial negative log-likelihood of each question's counts (questions nobody was
  asked add nothing).
* ``mae-synth``: a ViT (patch 8, 6 blocks, 192-d, mean-pooled patch tokens) trained as a masked
  autoencoder: 75% of patches hidden, a light decoder reconstructs their (per-patch normalized)
  pixels.

:func:`train_encoder` trains either from a lake's ``images`` (and ``votes``) and stores it as a
hub-layout folder (``config.json`` + ``model.safetensors``, float16) under
``lake.model_dir("encoders", name)``; ``embed --encoder NAME`` then uses it. The package also ships
small weights made by ``scripts/train_standins.py`` so the demo only embeds.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from galsae_lake import gz
from galsae_lake.encoders import ENCODERS, build_model, decode_image, save_hub_folder
from galsae_lake.errors import InputError, LakeError

#: answer columns in gz.LABEL_NAMES order, and the slice of each question
QUESTION_SLICES: list[tuple[str, slice]] = []
_start = 0
for _q, _answers in gz.QUESTIONS.items():
    QUESTION_SLICES.append((_q, slice(_start, _start + len(_answers))))
    _start += len(_answers)

DEFAULTS = {
    "zoobot-synth": {"epochs": 24, "batch_size": 128, "learning_rate": 2e-3, "weight_decay": 0.05},
    "mae-synth": {"epochs": 12, "batch_size": 128, "learning_rate": 1.5e-3, "weight_decay": 0.05,
                  "mask_ratio": 0.75, "norm_pix_loss": True},
}


def load_training_images(lake, splits=("train",), size: int = 64, limit: int | None = None):
    """Decode a lake's images once: returns (ids, uint8 array [n, size, size, 3])."""
    parts = [p["split"] for p in lake.partitions("images")]
    use = [s for s in splits if s in parts]
    if not use:
        raise LakeError(f"table images has no split {', '.join(splits)} in {lake.root}; run "
                        f"galsae-lake synth first")
    table = lake.arrow("images", columns=["id_str", "image"], split=use[0]) if len(use) == 1 else \
        __import__("pyarrow").concat_tables(
            [lake.arrow("images", columns=["id_str", "image"], split=s) for s in use])
    ids = table.column("id_str").to_pylist()
    blobs = table.column("image").to_pylist()
    if limit is not None:
        ids, blobs = ids[:limit], blobs[:limit]
    keep, pixels = [], []
    for i, blob in zip(ids, blobs):
        try:
            pixels.append(decode_image(blob, size))
            keep.append(i)
        except Exception:
            continue  # a corrupt image is left out of training
    return keep, np.stack(pixels)


def vote_counts(lake, ids: list[str], catalog: str = "volunteers") -> np.ndarray:
    """Vote counts [n, 46] in gz.LABEL_NAMES order (0 where not asked)."""
    import polars as pl

    if not lake.exists("votes", catalog=catalog):
        raise LakeError(f"table votes has no catalog {catalog} in {lake.root}; zoobot-synth "
                        f"learns from volunteer votes (galsae-lake synth makes them)")
    votes = (lake.scan("votes", catalog=catalog).select("id_str", "label", "count")
             .filter(pl.col("id_str").is_in(ids)).collect())
    wide = votes.pivot(on="label", index="id_str", values="count", aggregate_function="sum")
    order = pl.DataFrame({"id_str": ids})
    wide = order.join(wide, on="id_str", how="left")
    matrix = np.zeros((len(ids), len(gz.LABEL_NAMES)), np.float32)
    for j, label in enumerate(gz.LABEL_NAMES):
        if label in wide.columns:
            matrix[:, j] = wide[label].fill_null(0).to_numpy().astype(np.float32)
    return matrix


def dirichlet_multinomial_loss(concentrations, counts):
    """Zoobot's loss: sum over questions of -log DirMult(counts | concentrations), mean over galaxies."""
    import torch

    total = 0.0
    for _, cols in QUESTION_SLICES:
        alpha, k = concentrations[:, cols], counts[:, cols]
        n, a = k.sum(1), alpha.sum(1)
        log_p = (torch.lgamma(n + 1) + torch.lgamma(a) - torch.lgamma(n + a)
                 + (torch.lgamma(k + alpha) - torch.lgamma(k + 1) - torch.lgamma(alpha)).sum(1))
        total = total + (-log_p)
    return total.mean()


def _augment(x, generator):
    """Random flips and quarter turns (a galaxy has no up or left), per batch."""
    import torch

    if torch.rand(1, generator=generator).item() < 0.5:
        x = x.flip(3)
    turns = int(torch.randint(0, 4, (1,), generator=generator).item())
    return torch.rot90(x, turns, dims=(2, 3)) if turns else x


def _schedule(optimizer, step: int, total: int, base_lr: float, warmup: int) -> None:
    lr = base_lr * (step + 1) / warmup if step < warmup else \
        base_lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    for group in optimizer.param_groups:
        group["lr"] = lr


class _ZoobotSynth:
    """ConvNeXt-atto encoder plus a Dirichlet head (concentrations 1..100, as Zoobot)."""

    def __init__(self):
        import torch

        self.encoder = build_model(ENCODERS["zoobot-synth"])
        self.head = torch.nn.Linear(self.encoder.num_features, len(gz.LABEL_NAMES))

    def parameters(self):
        return list(self.encoder.parameters()) + list(self.head.parameters())

    def to(self, device):
        self.encoder.to(device)
        self.head.to(device)

    def __call__(self, x):
        import torch

        return 1 + 99 * torch.sigmoid(self.head(self.encoder(x)))


class _MAE:
    """A masked autoencoder around timm's ViT: the encoder sees 25% of patches."""

    def __init__(self, mask_ratio: float, norm_pix_loss: bool = True, decoder_dim: int = 128,
                 decoder_depth: int = 2):
        import torch
        from timm.models.vision_transformer import Block

        spec = ENCODERS["mae-synth"]
        self.vit = build_model(spec)
        self.mask_ratio = mask_ratio
        # per-patch normalized targets, as MAE; measured on the synthetic world, plain pixels
        # (loss on the galaxy light only) gave worse linear probes (spiral | disks 0.68 vs 0.77)
        self.norm_pix_loss = norm_pix_loss
        dim = self.vit.embed_dim
        patch = self.vit.patch_embed.patch_size[0]
        self.patch = patch
        self.n_patches = self.vit.patch_embed.num_patches
        self.decoder = torch.nn.ModuleDict({
            "norm_in": torch.nn.LayerNorm(dim),
            "embed": torch.nn.Linear(dim, decoder_dim),
            "blocks": torch.nn.Sequential(*[Block(decoder_dim, 4) for _ in range(decoder_depth)]),
            "norm": torch.nn.LayerNorm(decoder_dim),
            "pred": torch.nn.Linear(decoder_dim, patch * patch * 3),
        })
        self.mask_token = torch.nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos = torch.nn.Parameter(torch.randn(1, self.n_patches, decoder_dim) * 0.02)

    def parameters(self):
        return (list(self.vit.parameters()) + list(self.decoder.parameters())
                + [self.mask_token, self.decoder_pos])

    def to(self, device):
        import torch

        self.vit.to(device)
        self.decoder.to(device)
        self.mask_token = torch.nn.Parameter(self.mask_token.detach().to(device))
        self.decoder_pos = torch.nn.Parameter(self.decoder_pos.detach().to(device))

    def patchify(self, x):
        b, c, h, w = x.shape
        p = self.patch
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def loss(self, x, generator):
        import torch

        vit = self.vit
        tokens = vit._pos_embed(vit.patch_embed(x))
        prefix = vit.num_prefix_tokens
        cls, patches = tokens[:, :prefix], tokens[:, prefix:]
        b, n, d = patches.shape
        keep = int(round(n * (1 - self.mask_ratio)))
        noise = torch.rand(b, n, generator=generator).to(x.device)
        order = noise.argsort(1)
        restore = order.argsort(1)
        kept = torch.gather(patches, 1, order[:, :keep, None].expand(-1, -1, d))
        encoded = vit.blocks(torch.cat([cls, kept], 1))[:, prefix:]
        dec = self.decoder["embed"](self.decoder["norm_in"](encoded))
        full = torch.cat([dec, self.mask_token.expand(b, n - keep, -1)], 1)
        full = torch.gather(full, 1, restore[:, :, None].expand(-1, -1, full.shape[-1]))
        full = self.decoder["blocks"](full + self.decoder_pos)
        pred = self.decoder["pred"](self.decoder["norm"](full))
        target = self.patchify(x)
        if self.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        mask = torch.ones(b, n, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, restore)
        per_patch = ((pred.float() - target) ** 2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()


def train_standin(name: str, images: np.ndarray, counts: np.ndarray | None = None,
                  epochs: int | None = None, batch_size: int | None = None,
                  learning_rate: float | None = None, seed: int = 0, device: str | None = None,
                  precision: str = "auto", log=print):
    """Train a stand-in on uint8 images [n, 64, 64, 3] (and vote counts for zoobot-synth).

    bf16 autocast where the device has it (``precision="auto"``). Returns
    ``(encoder_model, history)``: the timm encoder (no head, on CPU) and per-epoch losses.
    """
    import torch

    from galsae_lake.encoders import resolve_device, resolve_precision

    device = resolve_device(device)
    precision = resolve_precision(precision, device)

    if name not in DEFAULTS:
        raise InputError(f"train-encoder trains zoobot-synth or mae-synth, not {name!r}")
    hp = dict(DEFAULTS[name])
    for key, value in (("epochs", epochs), ("batch_size", batch_size), ("learning_rate", learning_rate)):
        if value is not None:
            hp[key] = value
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    if name == "zoobot-synth":
        if counts is None:
            raise InputError("zoobot-synth needs vote counts")
        net = _ZoobotSynth()
        modules = [net.encoder, net.head]
        targets = torch.from_numpy(counts).to(device)
    else:
        net = _MAE(hp["mask_ratio"], hp["norm_pix_loss"])
        modules = [net.vit, net.decoder]
        targets = None
    net.to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=hp["learning_rate"],
                                  weight_decay=hp["weight_decay"])
    data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)  # uint8, NCHW
    n = len(data)
    steps_per_epoch = max(1, n // hp["batch_size"])
    total = steps_per_epoch * hp["epochs"]
    warmup = max(1, min(200, total // 10))
    for module in modules:
        module.train()
    history, step, start = [], 0, time.perf_counter()
    for epoch in range(hp["epochs"]):
        order = torch.randperm(n, generator=generator)
        running = 0.0
        for b in range(steps_per_epoch):
            index = order[b * hp["batch_size"]:(b + 1) * hp["batch_size"]].to(device)
            x = _augment(data[index].float() / 255, generator)
            _schedule(optimizer, step, total, hp["learning_rate"], warmup)
            with torch.autocast(device.split(":")[0], torch.bfloat16, enabled=precision == "bf16"):
                if targets is not None:
                    loss = dirichlet_multinomial_loss(net(x).float(), targets[index])
                else:
                    loss = net.loss(x, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            running += loss.item()
            step += 1
        history.append(running / steps_per_epoch)
        log(f"{name} epoch {epoch + 1}/{hp['epochs']}: loss {history[-1]:.4f} "
            f"({time.perf_counter() - start:.0f} s)")
    encoder = (net.encoder if name == "zoobot-synth" else net.vit).cpu()
    encoder.eval()
    return encoder, {"losses": [round(v, 5) for v in history],
                     "seconds": round(time.perf_counter() - start, 1), **hp, "n_images": n,
                     "seed": seed, "precision": precision, "device": device}


def save_standin(name: str, model, folder, training: dict[str, Any]) -> None:
    """Write a trained stand-in as a hub-layout folder in float16 (small, loads via timm)."""
    import torch

    spec = ENCODERS[name]
    save_hub_folder(model, folder, spec.arch, spec.model_args, spec.input_size, spec.mean, spec.std,
                    extra={"galsae_lake": {"encoder": name, "training": training}},
                    dtype=torch.float16)


def train_encoder(lake, name: str, epochs: int | None = None, batch_size: int | None = None,
                  learning_rate: float | None = None, seed: int = 0, limit: int | None = None,
                  splits=("train",), device: str | None = None, precision: str = "auto",
                  log=print) -> dict[str, Any]:
    """Train a stand-in on this lake's images (and volunteer votes) and store it in the lake.

    Writes ``lake.model_dir("encoders", name)`` atomically; returns a summary (losses, seconds).
    """
    if name not in DEFAULTS:
        raise InputError(f"train-encoder trains zoobot-synth or mae-synth, not {name!r}")
    ids, images = load_training_images(lake, splits, ENCODERS[name].input_size, limit)
    counts = vote_counts(lake, ids) if name == "zoobot-synth" else None
    log(f"training {name} on {len(ids)} images from {lake.root}")
    model, training = train_standin(name, images, counts, epochs, batch_size, learning_rate,
                                    seed, device, precision, log=log)
    params = {"encoder": name, "seed": seed, "limit": limit, "splits": list(splits),
              **{k: v for k, v in training.items() if k not in ("losses", "seconds")}}
    with lake.transaction("train-encoder", params, upstream=["images", "votes"]) as tx:
        save_standin(name, model, tx.stage_dir("encoders", name), training)
    log(f"encoder {name}: stored in {lake.model_dir('encoders', name)}")
    return {"encoder": name, "folder": str(lake.model_dir("encoders", name)), **training}
