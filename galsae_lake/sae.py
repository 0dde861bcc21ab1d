"""The Matryoshka BatchTopK sparse autoencoder: its config, the model, and its sparse training math.

The model and loss are the seed's (``seedsrc/src/models/matryoshka_sae.py``): nested Matryoshka
reconstruction (mean MSE over the prefix levels), BatchTopK during training, L1 on the kept codes,
the auxiliary loss on dead latents, decoder rows at unit norm with the parallel gradient removed.
What we change (see the README's "SAE" section):

- the input normalization (per-dimension mean/std) is fitted on the train split only and saved in
  the checkpoint; :meth:`MatryoshkaSAE.encode` applies it, so no consumer can forget it;
- inference uses a batch-independent threshold (a moving average of the smallest activation that
  BatchTopK keeps during training), so a galaxy's code never depends on its batch;
- the checkpoint is ``model.safetensors`` + ``config.json`` (no pickle);
- training computes the loss and its gradients by hand with sparse arithmetic
  (:func:`sparse_loss_and_grads`): the decoder and most of the encoder's gradient only touch the
  kept codes. :meth:`MatryoshkaSAE.forward` keeps the seed's dense autograd math as the reference
  that the tests compare against.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from galsae_lake.errors import InputError

#: the seed adds this to the standard deviation before dividing
NORM_EPS = 1e-5
CHECKPOINT_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: inference computes pre-activations in blocks of this many rows (see encode)
ENCODE_BLOCK = 256

# TOML sections of the seed's config files, and where each of our keys lives
SECTIONS = {
    "model": ("input_dim", "group_sizes", "top_k", "l1_coeff", "aux_penalty", "n_batches_to_dead",
              "aux_k_multiplier", "dict_size"),
    "training": ("epochs", "learning_rate", "batch_size", "device", "log_every",
                 "threshold_momentum"),
    "data": ("random_seed",),
}
#: keys of the seed's TOML files that name its own paths and plots: accepted and ignored
SEED_ONLY_KEYS = {
    "data": {"dataset_name", "train_embedding_path", "train_ids_path", "test_embedding_path",
             "test_ids_path", "gz_dataset_name", "gz_config_name", "mae_dataset_name",
             "embedding_block"},
    "output": {"results_dir", "model_filename", "wandb_project"},
    "visualization": {"max_features_to_visualize", "top_images_per_feature"},
}


@dataclass
class SAEConfig:
    """Hyperparameters of one SAE: what the TOML files, ``--set`` and ``config.json`` hold.

    Key names are the seed's. ``input_dim=None`` means "the dimension of the embeddings";
    ``dict_size=None`` means ``sum(group_sizes)``.
    """

    input_dim: int | None = 640
    group_sizes: list[int] = field(default_factory=lambda: [64, 64, 128, 256, 512, 1024])
    top_k: int = 64
    l1_coeff: float = 1e-3
    aux_penalty: float = 0.03
    n_batches_to_dead: int = 256
    aux_k_multiplier: int = 16
    dict_size: int | None = None
    epochs: int = 200
    learning_rate: float = 1e-4
    batch_size: int = 256
    random_seed: int = 42
    #: "auto" (cuda when available), "cpu", "cuda", "cuda:1", ...
    device: str = "auto"
    #: a training-log row every this many steps (and at every epoch's end)
    log_every: int = 50
    #: weight of the newest batch in the moving average of the inference threshold
    threshold_momentum: float = 0.01

    @property
    def total_latents(self) -> int:
        return int(sum(self.group_sizes))

    def validate(self) -> "SAEConfig":
        """Raise :class:`InputError` (one line) for a config that cannot train."""
        types = {"input_dim": int, "top_k": int, "n_batches_to_dead": int, "aux_k_multiplier": int,
                 "dict_size": int, "epochs": int, "batch_size": int, "random_seed": int,
                 "log_every": int, "l1_coeff": float, "aux_penalty": float,
                 "learning_rate": float, "threshold_momentum": float}
        for name, kind in types.items():
            value = getattr(self, name)
            if value is None and name in ("input_dim", "dict_size"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    kind is int and not isinstance(value, int)):
                raise InputError(f"SAE config: {name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
            if kind is float:
                setattr(self, name, float(value))
        if not isinstance(self.device, str):
            raise InputError(f"SAE config: device must be a string, got {self.device!r}")
        sizes = self.group_sizes
        if (not isinstance(sizes, list) or not sizes
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes)):
            raise InputError(f"SAE config: group_sizes must be a list of positive integers, got {sizes!r}")
        if self.dict_size is not None and self.dict_size != self.total_latents:
            raise InputError(f"SAE config: group_sizes {sizes} sum to {self.total_latents}, "
                             f"not to the dictionary size dict_size={self.dict_size}")
        for name in ("top_k", "epochs", "batch_size", "n_batches_to_dead", "aux_k_multiplier",
                     "log_every"):
            if getattr(self, name) < 1:
                raise InputError(f"SAE config: {name} must be at least 1, got {getattr(self, name)}")
        if self.input_dim is not None and self.input_dim < 1:
            raise InputError(f"SAE config: input_dim must be at least 1, got {self.input_dim}")
        if self.top_k > self.total_latents:
            raise InputError(f"SAE config: top_k={self.top_k} is larger than the dictionary "
                             f"({self.total_latents} latents)")
        if not self.learning_rate > 0 or not math.isfinite(self.learning_rate):
            raise InputError(f"SAE config: learning_rate must be positive, got {self.learning_rate}")
        for name in ("l1_coeff", "aux_penalty"):
            if not getattr(self, name) >= 0:
                raise InputError(f"SAE config: {name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.threshold_momentum <= 1:
            raise InputError("SAE config: threshold_momentum must be in (0, 1]")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "SAEConfig":
        config = cls()
        apply_settings(config, values, source="config")
        return config.validate()


def _flatten(table: dict[str, Any], source: str) -> dict[str, Any]:
    """Seed-style sections (``[model] top_k``) or plain keys to plain keys; seed-only keys dropped."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            for inner, inner_value in value.items():
                if inner in SEED_ONLY_KEYS.get(key, ()):
                    continue
                flat[_plain_key(f"{key}.{inner}", source)] = inner_value
        else:
            flat[_plain_key(key, source)] = value
    return flat


def _plain_key(key: str, source: str) -> str:
    """``training.epochs`` -> ``epochs``; an unknown key or a key in the wrong section raises."""
    names = {f.name for f in fields(SAEConfig)}
    section, _, name = key.rpartition(".")
    if name not in names:
        raise InputError(f"{source}: unknown SAE config key {key!r}; keys are: {', '.join(sorted(names))}")
    if section and name not in SECTIONS.get(section, ()):
        home = next((s for s, keys in SECTIONS.items() if name in keys), "?")
        raise InputError(f"{source}: {key!r}: {name} belongs in section [{home}], not [{section}]")
    return name


def apply_settings(config: SAEConfig, values: dict[str, Any], source: str) -> SAEConfig:
    """Set plain or section-dotted keys on ``config`` (in place)."""
    for key, value in _flatten(values, source).items():
        setattr(config, key, value)
    return config


def parse_set(item: str) -> tuple[str, Any]:
    """``"training.epochs=60"`` -> ``("training.epochs", 60)``; the value is parsed as TOML."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InputError(f"--set {item!r}: expected key=value (e.g. --set epochs=60)")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # a bare word such as device=cpu
    return key, value


def configs_dir() -> Path:
    """The folder of the shipped TOML configs (inside the package, so installs find it)."""
    return Path(__file__).resolve().parent / "configs"


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                encoder: str | None = None) -> SAEConfig:
    """A validated :class:`SAEConfig`: TOML file (else the shipped one), then ``--set`` overrides.

    ``path`` is a TOML file or the name of a shipped config (``zoobot``, ``mae``, ``demo``).
    Without ``path``, the shipped config is ``mae_sae.toml`` for encoders whose name starts with
    ``mae`` and ``zoobot_sae.toml`` otherwise. A shipped config's ``input_dim`` follows the
    embeddings unless ``overrides`` set it.
    """
    config = SAEConfig()
    if path is None:
        name = "mae_sae.toml" if (encoder or "").lower().startswith("mae") else "zoobot_sae.toml"
        path = configs_dir() / name
        shipped = True
    else:
        path = Path(path)
        shipped = not path.exists() and (configs_dir() / f"{path.name}_sae.toml").exists()
        if shipped:  # a shipped config by name: zoobot, mae, demo
            path = configs_dir() / f"{path.name}_sae.toml"
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read SAE config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"SAE config {path} is not valid TOML: not UTF-8 text") from None
    try:
        table = tomllib.loads(text)
        apply_settings(config, table, source=str(path))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"SAE config {path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise InputError(f"SAE config {path} is nested too deeply to be an SAE config") from None
    if isinstance(overrides, dict):
        pairs = list(overrides.items())
    else:
        pairs = [parse_set(item) for item in overrides or []]
    for key, value in pairs:
        apply_settings(config, {key: value}, source=f"--set {key}")
    if shipped and not any(k.rpartition(".")[2] == "input_dim" for k, _ in pairs):
        config.input_dim = None
    return config.validate()


def check_memory(config: SAEConfig, device: torch.device) -> None:
    """Refuse (one line) a dictionary whose training would not fit the machine, before any
    allocation: parameters, gradients and AdamW's two moments (16 bytes per float32 weight),
    a batch of dense codes, and the CPU build's temporary copy of the encoder."""
    d, n = int(config.input_dim), int(config.total_latents)
    weights = 2 * d * n + n + d
    need = 16 * weights + 12 * int(config.batch_size) * n  # (codes, their grads, top-k work)
    build = 4 * (weights + d * n)  # built on the CPU, then moved
    checks = [("the CPU", build if device.type == "cuda" else build + need, _available_ram())]
    if device.type == "cuda":
        checks.append((str(device), need, torch.cuda.mem_get_info(device)[0]))
    for where, bytes_needed, available in checks:
        if available is not None and bytes_needed > available:
            raise InputError(
                f"SAE config: a dictionary of {n:,} latents on {d} inputs needs about "
                f"{bytes_needed / 2**30:.1f} GiB to train on {where}, which has "
                f"{available / 2**30:.1f} GiB free; use smaller group_sizes (or batch_size)")


def _available_ram() -> int | None:
    """Bytes of memory available to a new allocation (MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"SAE config: unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"SAE config: device {name!r} asked for, but no CUDA device is available")
    return device


class MatryoshkaSAE(nn.Module):
    """Matryoshka BatchTopK SAE with the seed's parameters and orientation.

    Parameters: ``W_enc`` [input_dim x latents] (stored as its transpose ``W_enc_t``),
    ``b_enc`` [latents], ``W_dec`` [latents x input_dim], ``b_dec`` [input_dim]. Buffers: ``threshold`` (the inference threshold), ``mean``
    and ``std`` (the input normalization), ``num_batches_not_active`` (training only).
    Inputs of :meth:`encode`/:meth:`encode_dense` are raw embeddings (normalized inside);
    :meth:`decode` and :meth:`forward` work in the normalized space.
    """

    def __init__(self, config: SAEConfig):
        super().__init__()
        if config.input_dim is None:
            raise ValueError("config.input_dim must be set before building the model")
        self.config = config
        d, n = config.input_dim, config.total_latents
        self.input_dim, self.total_dict_size = d, n
        self.group_sizes = list(config.group_sizes)
        self.top_k = config.top_k
        # parameters in the seed's order (AdamW state follows it)
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.b_enc = nn.Parameter(torch.zeros(n))
        # the encoder is stored transposed, [latents x input_dim]: the sparse step builds its
        # gradient latent by latent; ``W_enc`` is the seed's [input_dim x latents] view of it
        W_enc = nn.init.kaiming_uniform_(torch.empty(d, n))
        self.W_enc_t = nn.Parameter(W_enc.t().contiguous())
        self.W_dec = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(n, d)))
        with torch.no_grad():  # tied initialization, unit-norm decoder rows (the seed's)
            # row-major (the seed's clone of a transpose is column-major): the fused AdamW
            # kernel assumes a parameter and its gradient share strides
            self.W_dec.data = self.W_enc_t.detach().clone()
            self.W_dec.data /= self.W_dec.data.norm(dim=-1, keepdim=True)
        self.register_buffer("num_batches_not_active", torch.zeros(n, dtype=torch.long))
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(d))
        bounds = np.cumsum(self.group_sizes)
        self.group_indices = [0] + [int(b) for b in bounds]
        group_of = torch.repeat_interleave(torch.arange(len(self.group_sizes)),
                                           torch.tensor(self.group_sizes))
        self.register_buffer("group_of", group_of, persistent=False)

    @property
    def W_enc(self) -> torch.Tensor:
        """The encoder weights in the seed's orientation, [input_dim x latents] (a view)."""
        return self.W_enc_t.t()

    # ------------------------------------------------------------ inference
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw embeddings -> the standardized space the SAE works in (train-split statistics)."""
        return (x - self.mean) / (self.std + NORM_EPS)

    def pre_activations(self, x_norm: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b_enc, x_norm - self.b_dec, self.W_enc)

    def _rowwise_pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations of raw rows, computed in zero-padded blocks of ``ENCODE_BLOCK`` rows.

        A matrix product's rounding depends on its shape (one row takes another BLAS path than
        many), so every row goes through a product of the same shape: a row's code is then the
        same bits alone or in any batch.
        """
        x = self.normalize(x)
        n = x.shape[0]
        pad = (-n) % ENCODE_BLOCK
        if pad:
            x = torch.cat([x, x.new_zeros(pad, x.shape[1])])
        blocks = [self.pre_activations(x[i:i + ENCODE_BLOCK]) for i in range(0, len(x), ENCODE_BLOCK)]
        return torch.cat(blocks)[:n]

    @torch.no_grad()
    def encode_dense(self, x: torch.Tensor) -> torch.Tensor:
        """The seed's dense codes: ReLU of the pre-activations, no sparsity (raw embeddings in)."""
        return F.relu(self._rowwise_pre_activations(x))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Sparse codes [rows x latents] of raw embeddings: activations above ``threshold``.

        Row by row: a galaxy's code does not depend on the other rows in the batch.
        """
        acts = F.relu(self._rowwise_pre_activations(x))
        return acts * (acts > self.threshold)

    def decode(self, codes: torch.Tensor, latents: int | None = None) -> torch.Tensor:
        """Reconstruction (normalized space) from the first ``latents`` codes (all by default)."""
        n = self.total_dict_size if latents is None else latents
        return codes[:, :n] @ self.W_dec[:n] + self.b_dec

    # ------------------------------------------------------------ the seed's training math
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The seed's dense training forward on normalized ``x`` (BatchTopK over the batch).

        Kept as the reference for :func:`sparse_loss_and_grads`; training uses the sparse one.
        """
        pre_acts = self.pre_activations(x)
        acts = F.relu(pre_acts)
        n_keep = min(self.top_k * x.shape[0], acts.numel())
        values, indices = torch.topk(acts.flatten(), k=n_keep, sorted=False)
        acts_topk = torch.zeros_like(acts.flatten()).scatter_(0, indices, values).view_as(acts)
        recon = self.b_dec.expand_as(x)
        levels = []
        for i in range(len(self.group_sizes)):
            lo, hi = self.group_indices[i], self.group_indices[i + 1]
            recon = recon + acts_topk[:, lo:hi] @ self.W_dec[lo:hi]
            levels.append(recon)
        l2 = torch.stack([(r - x).pow(2).mean() for r in levels]).mean()
        l1 = self.config.l1_coeff * acts_topk.abs().sum(-1).mean()
        aux = self._dense_aux_loss(x, recon, acts)
        return {"loss": l2 + l1 + aux, "l2_loss": l2, "l1_loss": l1, "aux_loss": aux,
                "l0_norm": (acts_topk > 0).float().sum(-1).mean(), "feature_acts": acts_topk,
                "final_reconstruction": recon}

    def _dense_aux_loss(self, x, recon, acts):
        dead = self.num_batches_not_active >= self.config.n_batches_to_dead
        if not dead.any():
            return torch.zeros((), device=x.device)
        residual = (x - recon).detach()
        dead_acts = acts[:, dead]
        n_aux = min(self.top_k * self.config.aux_k_multiplier * x.shape[0], dead_acts.numel())
        top, _ = torch.topk(dead_acts.flatten(), k=n_aux)
        acts_aux = F.relu(dead_acts - top[-1])
        recon_aux = acts_aux @ self.W_dec[dead]
        return self.config.aux_penalty * (recon_aux - residual).pow(2).mean()

    @torch.no_grad()
    def update_inactive_features(self, fired: torch.Tensor) -> None:
        """``fired``: bool [latents], True where a latent kept a code in this batch."""
        self.num_batches_not_active += 1
        self.num_batches_not_active[fired] = 0

    @torch.no_grad()
    def make_decoder_weights_and_grad_unit_norm(self) -> None:
        """The seed's step: unit-norm decoder rows, gradient parallel to them removed.

        Same values as the seed's code, computed in place (fewer passes over the decoder).
        """
        if self.W_dec.grad is None:
            return
        W, grad = self.W_dec.data, self.W_dec.grad
        W.div_(torch.linalg.vector_norm(W, dim=-1, keepdim=True))
        parallel = torch.linalg.vecdot(grad, W).unsqueeze(1)  # row-wise dot products (faster than bmm)
        grad.addcmul_(parallel, W, value=-1)

    # ------------------------------------------------------------ checkpoint
    def save(self, folder: str | Path) -> None:
        """``model.safetensors`` (W_enc, b_enc, W_dec, b_dec, threshold, mean, std) + ``config.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {name: getattr(self, name).detach().to("cpu", torch.float32).contiguous()
                   for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "mean", "std")}
        save_file(tensors, str(folder / CHECKPOINT_FILE), metadata={"format": "galsae-lake-sae"})
        (folder / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "MatryoshkaSAE":
        """A model from a folder written by :meth:`save` (safetensors + JSON, no pickle)."""
        folder = Path(folder)
        try:
            values = json.loads((folder / CONFIG_FILE).read_text())
            tensors = load_file(str(folder / CHECKPOINT_FILE))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot load the SAE checkpoint in {folder}: {exc}") from None
        config = SAEConfig.from_dict(values)
        model = cls(config)
        with torch.no_grad():
            for name, tensor in tensors.items():
                getattr(model, name).copy_(tensor)
        return model.to(device).eval()


class StepOutput(NamedTuple):
    """One sparse training step: the loss and its parts (tensors), the mean number of kept codes
    per row, the smallest kept activation (for the inference threshold) and which latents fired."""

    loss: torch.Tensor
    mse: torch.Tensor
    l1: torch.Tensor
    aux: torch.Tensor
    l0: float
    min_kept: torch.Tensor
    fired: torch.Tensor  # bool [latents]
    nnz: int = 0          # kept codes (data parallel: this rank's)
    batch_total: int = 0  # rows the losses are divided by (data parallel: the global batch)


def sparse_loss_and_grads(model: MatryoshkaSAE, x: torch.Tensor, group=None,
                          batch_total: int | None = None) -> StepOutput:
    """One training step's loss and gradients (set on ``.grad``) for normalized ``x``.

    The same function as the seed's forward + backward (tests check it against
    :meth:`MatryoshkaSAE.forward` with autograd), computed with sparse arithmetic: BatchTopK keeps
    ``top_k * batch`` codes, so the decoder, its gradient and the reconstruction part of the
    encoder's gradient only touch those codes (weighted sums of rows, ``embedding_bag``, and one
    sampled product). Only the encoder's forward product and the auxiliary loss's dead columns
    are dense.

    Returns a :class:`StepOutput`.

    Data parallel (:mod:`galsae_lake.distributed`): ``x`` is this rank's slice of a global batch
    of ``batch_total`` rows and ``group`` a :class:`~galsae_lake.distributed.RankGroup`; the
    BatchTopK and auxiliary thresholds are the global batch's, and the losses and gradients
    returned are this rank's shares (divided by the global batch) for the caller to sum.
    """
    cfg = model.config
    B, d = x.shape
    Bt = B if group is None else batch_total  # the (global) batch the losses are divided by
    L, G = model.total_dict_size, len(model.group_sizes)
    W_enc, b_enc, W_dec, b_dec = model.W_enc, model.b_enc, model.W_dec, model.b_dec
    with torch.no_grad():
        c = x - b_dec
        pre = torch.addmm(b_enc, c, W_enc)
        flat = pre.view(-1)
        n_keep = min(cfg.top_k * Bt, Bt * L)
        # BatchTopK on the pre-activations: the same kept set as on ReLU(pre), minus non-positives
        z, idx = (_batch_topk(model, flat, n_keep) if group is None  # idx ascending: (row, group)
                  else group.batch_topk(flat, n_keep))               # bags in order
        if not bool(z.gt(0).all()):  # fewer positive activations than top_k * batch
            positive = z > 0
            idx, z = idx[positive], z[positive]
        rows, cols = idx // L, idx % L
        nnz = z.numel()
        rg = rows * G + model.group_of[cols]  # bag (row, Matryoshka group) of each code
        offsets = torch.zeros(B * G, dtype=torch.long, device=x.device)
        offsets[1:] = torch.bincount(rg, minlength=B * G)[:-1].cumsum(0)
        # per-group contributions sum_j z_j W_dec[j]; then per-level errors, cumulated in place:
        # E_i = b_dec + sum_{g <= i} contribution_g - x
        err = F.embedding_bag(cols, W_dec, offsets, mode="sum", per_sample_weights=z).view(B, G, d)
        err[:, 0] += b_dec - x
        for g in range(1, G):
            err[:, g] += err[:, g - 1]
        mse = (err.square().mean() if group is None  # torch's cascaded sum, as the seed's
               else err.square().sum() / (Bt * G * d))  # per-level means
        l1 = cfg.l1_coeff * z.sum() / Bt
        err_last = err[:, -1].clone()  # x - recon = -E_last, for the auxiliary loss
        # gradient of the mean over levels of each level's mean squared error; group g feeds
        # every level >= g, so its gradient is a reverse cumulative sum (in place)
        d_contrib = err.mul_(2.0 / (G * Bt * d))
        for g in range(G - 2, -1, -1):
            d_contrib[:, g] += d_contrib[:, g + 1]
        grad_b_dec = d_contrib[:, 0].sum(0)
        d_contrib = d_contrib.view(B * G, d)
        # latent-major order of the codes, for the weight gradients
        order = torch.argsort(cols, stable=True)
        cols_t, rg_t, rows_t, z_t = cols[order], rg[order], rows[order], z[order]
        counts = torch.bincount(cols, minlength=L)
        crow_t = torch.zeros(L + 1, dtype=torch.long, device=x.device)
        crow_t[1:] = counts.cumsum(0)
        # d loss / d code = <d_contrib[bag], W_dec[latent]> (+ L1), sampled where codes are kept
        A_t = _csr(crow_t, rg_t, z_t, size=(L, B * G))
        grad_z_t = torch.sparse.sampled_addmm(A_t, W_dec, d_contrib.t(), beta=0.0).values()
        grad_z_t = grad_z_t + cfg.l1_coeff / Bt
        grad_W_dec = F.embedding_bag(rg_t, d_contrib, crow_t[:-1], mode="sum",
                                     per_sample_weights=z_t)
        grad_W_enc_t = F.embedding_bag(rows_t, c, crow_t[:-1], mode="sum",
                                       per_sample_weights=grad_z_t)  # [L, d]
        grad_b_enc = torch.zeros(L, device=x.device, dtype=x.dtype).index_add_(0, cols_t, grad_z_t)
        aux = torch.zeros((), device=x.device)
        dead = model.num_batches_not_active >= cfg.n_batches_to_dead
        dead_cols = dead.nonzero().squeeze(1)
        if dead_cols.numel():
            residual = -err_last
            dead_acts = pre[:, dead_cols].clamp_(min=0)
            dflat = dead_acts.reshape(-1)
            n_aux = min(cfg.top_k * cfg.aux_k_multiplier * Bt, Bt * dead_cols.numel())
            if group is None:
                t_val, t_idx = torch.kthvalue(dflat, dflat.numel() - n_aux + 1)
            else:  # the global batch's threshold; t_idx None where another rank holds it
                t_val, t_idx = group.kth_largest(dflat, n_aux)
            shifted = dead_acts - t_val
            above = shifted > 0
            acts_aux = shifted.clamp_(min=0)
            W_dead = W_dec[dead_cols]
            r_aux = acts_aux @ W_dead - residual
            aux = cfg.aux_penalty * (r_aux.pow(2).mean() if group is None
                                     else r_aux.pow(2).sum() / (Bt * d))
            d_r = r_aux.mul_(2.0 * cfg.aux_penalty / (Bt * d))
            grad_W_dec.index_add_(0, dead_cols, acts_aux.t() @ d_r)
            g = (d_r @ W_dead.t()).mul_(above)
            g_sum = g.sum() if group is None else group.sum_(g.sum())
            if t_idx is not None:
                g.view(-1)[t_idx] -= g_sum  # the threshold is itself one of the activations
            g.mul_(dead_acts > 0)  # ReLU
            grad_W_enc_t.index_add_(0, dead_cols, g.t() @ c)
            grad_b_enc.index_add_(0, dead_cols, g.sum(0))
        grad_b_dec -= grad_b_enc @ model.W_enc_t  # b_dec also enters the encoder (x - b_dec)
        model.W_enc_t.grad = grad_W_enc_t
        model.b_enc.grad = grad_b_enc
        model.W_dec.grad = grad_W_dec
        model.b_dec.grad = grad_b_dec
        fired = counts > 0
        loss = mse + l1 + aux
        min_kept = z.min() if nnz else torch.zeros((), device=x.device)
        if group is not None:  # the global smallest kept code
            min_kept = group.min(z.min() if nnz else torch.tensor(float("inf"), device=x.device))
            min_kept = min_kept if bool(torch.isfinite(min_kept)) else torch.zeros_like(min_kept)
    return StepOutput(loss, mse, l1, aux, nnz / B, min_kept, fired, nnz, Bt)


def _batch_topk(model: MatryoshkaSAE, flat: torch.Tensor, n_keep: int):
    """The ``n_keep`` largest values of ``flat`` and their indices, indices ascending.

    Exactly ``torch.topk``'s selection. On CPU it first narrows to the values above a bound,
    0.9 x the previous batch's smallest kept value: when at least ``n_keep`` values exceed it,
    the largest ``n_keep`` are among them, found with a selection (no sort) in index order.
    """
    hint = getattr(model, "_topk_hint", None)
    z = idx = None
    if hint is not None and flat.device.type == "cpu":
        candidates = (flat > hint).nonzero().squeeze(1)  # ascending
        if candidates.numel() >= n_keep:
            values = flat[candidates]
            kth = torch.kthvalue(values, values.numel() - n_keep + 1).values
            keep = values >= kth
            if int(keep.sum()) == n_keep:  # no ties at the boundary: exactly topk's set
                z, idx = values[keep], candidates[keep]
    if z is None:
        z, idx = torch.topk(flat, n_keep, sorted=False)
        idx, perm = torch.sort(idx)
        z = z[perm]
    smallest = float(z.min()) if z.numel() else 0.0
    model._topk_hint = 0.9 * smallest if smallest > 0 else None
    return z, idx


def encode_embeddings(model: MatryoshkaSAE, X: np.ndarray, dense: bool = False,
                      batch_size: int = 4096):
    """Codes of raw embeddings ``X`` [rows x input_dim] (normalized inside the model).

    ``dense=False``: the model's sparse codes (inference threshold) as numpy ``(rows, cols,
    vals)``: int64 row indices into ``X``, int32 feature indices, float32 activations, row-major.
    ``dense=True``: the seed's dense ReLU codes as a float32 array [rows x latents].
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[1] != model.input_dim:
        raise InputError(f"expected embeddings of shape [rows, {model.input_dim}], got {list(X.shape)}")
    device = model.W_enc.device
    model.eval()
    outs_r, outs_c, outs_v, dense_parts = [], [], [], []
    for start in range(0, len(X), batch_size):
        xb = torch.tensor(X[start:start + batch_size], device=device)
        if dense:
            dense_parts.append(model.encode_dense(xb).cpu().numpy())
            continue
        codes = model.encode(xb)
        r, c = codes.nonzero(as_tuple=True)
        outs_r.append((r + start).cpu().numpy())
        outs_c.append(c.to(torch.int32).cpu().numpy())
        outs_v.append(codes[r, c].cpu().numpy())
    if dense:
        return (np.concatenate(dense_parts) if dense_parts
                else np.zeros((0, model.total_dict_size), np.float32))
    if not outs_r:
        return np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)
    return np.concatenate(outs_r), np.concatenate(outs_c), np.concatenate(outs_v)


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size) -> torch.Tensor:
    """A CSR matrix from indices we built sorted (so no invariant checks), without beta warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)
