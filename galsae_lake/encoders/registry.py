"""Encoders by name: the registry, and loading an encoder's weights for inference.

Encoders (:data:`ENCODERS`):

    zoobot-euclid  timm hf-hub:mwalmsley/zoobot-encoder-euclid (ConvNeXt-nano, 640-d, 224 px)
    mae-euclid     timm hf-hub:mwalmsley/euclid_encoder_mae_zoobot_vit_small_patch8_224 (ViT-S/8, 384-d)
    zoobot-synth   offline stand-in: ConvNeXt-atto supervised on simulated votes (320-d, 64 px)
    mae-synth      offline stand-in: ViT (patch 8, 6 blocks) masked autoencoder (192-d, 64 px)
    polar-fourier  hand-designed, not learned: rotation-invariant ring Fourier amplitudes (280-d)
    <timm name>    any timm architecture (timm's pretrained weights with ``hub``)

Weights (``weights=``): ``hub`` (download, the default for the Euclid encoders), ``random`` (the
same architecture untrained, seeded), a PATH (a folder in the hub layout, ``config.json`` +
``model.safetensors``, loaded through timm's ``local-dir:`` source exactly as the hub's files are;
or one ``.safetensors``/``.pth`` state dict), and for the stand-ins ``lake`` (trained into this
lake by ``train-encoder``) or ``shipped`` (the package's small weights); their default is the
lake's copy when there is one, else the shipped one.

``mae-euclid`` is the author's own timm architecture, ``zoobot_vit_small_patch8_224``: the hub
repo's ``config.json`` names it, so it must be registered in timm before ``hf-hub:``,
``local-dir:`` or ``--weights random`` can build it (:func:`register_architectures`; same name,
same arguments as the author's registration).

What an encoder's embedding is (``features``): ``head`` (timm's ``forward_head(...,
pre_logits=True)``, what the seed hooks on Zoobot) or ``pooled_features_block_N`` (block N's
patch tokens averaged over the grid, as ``mwalmsley/euclid_q1_embeddings`` stores them; the
default of ``mae-euclid``, with N = 11). See :mod:`galsae_lake.encoders.extraction`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from galsae_lake.errors import InputError

#: where the package keeps its shipped stand-in weights (one folder per encoder, hub layout)
SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
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
    #: what the embedding is: "head" or "pooled_features_block_N" (see :func:`parse_features`)
    features: str = "head"


_UNIT = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in [
        EncoderSpec("zoobot-euclid", "convnext_nano", "hf-hub:mwalmsley/zoobot-encoder-euclid", 224,
                    *_UNIT, description="Zoobot ConvNeXt-nano trained on Euclid Galaxy Zoo votes (640-d)"),
        EncoderSpec("mae-euclid", "zoobot_vit_small_patch8_224",
                    "hf-hub:mwalmsley/euclid_encoder_mae_zoobot_vit_small_patch8_224", 224, *_UNIT,
                    features="pooled_features_block_11",
                    description="ViT-S/8 masked autoencoder trained on Euclid images (384-d, "
                                "block 11's patch-token mean)"),
        EncoderSpec("zoobot-synth", "convnext_atto", None, 64, *_UNIT, standin=True,
                    description="offline stand-in: ConvNeXt-atto supervised on simulated votes (320-d)"),
        EncoderSpec("mae-synth", "vit_tiny_patch16_224", None, 64, *_UNIT,
                    model_args={"img_size": 64, "patch_size": 8, "depth": 6, "global_pool": "avg"},
                    standin=True,
                    description="offline stand-in: ViT (patch 8, 6 blocks) masked autoencoder (192-d)"),
        EncoderSpec("polar-fourier", "polar_fourier", None, 64, *_UNIT,
                    description="hand-designed, not learned: rotation-invariant Fourier amplitudes "
                                "of brightness and colour on rings around the light centre "
                                "(galsae_lake.polar, 280-d)"),
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
    features: str = "head"  # "head" or "pooled_features_block_N"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: the timm name the author of mwalmsley/euclid_encoder_mae_zoobot_vit_small_patch8_224 registered
MAE_EUCLID_ARCH = "zoobot_vit_small_patch8_224"
#: its arguments: ViT-S/8 at 224 px, patch tokens mean-pooled (so ``norm`` is an Identity and
#: ``fc_norm`` a LayerNorm), no classifier
MAE_EUCLID_ARGS = {"img_size": 224, "patch_size": 8, "depth": 12, "num_heads": 6, "embed_dim": 384,
                   "mlp_ratio": 4, "global_pool": "avg", "num_classes": 0}


def zoobot_vit_small_patch8_224(pretrained: bool = False, **kwargs):
    """The MAE encoder's architecture, built the way timm builds its own ViTs (arguments given
    here win over :data:`MAE_EUCLID_ARGS`, as in the author's registration)."""
    from timm.models.vision_transformer import _create_vision_transformer

    return _create_vision_transformer(MAE_EUCLID_ARCH, pretrained=pretrained,
                                      **{**MAE_EUCLID_ARGS, **kwargs})


def register_architectures() -> None:
    """Make timm know :data:`MAE_EUCLID_ARCH` (once per process; timm's own names are untouched)."""
    import timm
    from timm.models import register_model

    if not timm.is_model(MAE_EUCLID_ARCH):
        register_model(zoobot_vit_small_patch8_224)


_BLOCK = re.compile(r"^(?:pooled_features_block_)?(\d+)$")


def parse_features(value: str | int | None, default: str = "head") -> str:
    """The canonical name of an embedding choice: ``head`` or ``pooled_features_block_N``.

    Accepts ``head``, ``pooled_features_block_N`` or a block number ``N``; None gives ``default``.
    """
    if value is None:
        return default
    text = str(value).strip()
    if text == "head":
        return "head"
    match = _BLOCK.match(text)
    if not match:
        raise InputError(f"--features {value}: use head, pooled_features_block_N or a block number N")
    return f"pooled_features_block_{int(match.group(1))}"


def feature_block(features: str) -> int | None:
    """The block number of ``pooled_features_block_N``; None for ``head``."""
    return None if features == "head" else int(features.rsplit("_", 1)[1])


def encoder_tag(name: str) -> str:
    """The ``encoder`` partition value for an encoder name (``hf-hub:a/b`` -> ``a-b``)."""
    tag = name.split(":", 1)[-1] if ":" in name else name
    return tag.replace("/", "-").replace(":", "-")


def encoder_spec(name: str) -> EncoderSpec:
    """The registry entry for ``name``; plain timm names get a spec from timm's pretrained config."""
    if name in ENCODERS:
        return ENCODERS[name]
    import timm

    register_architectures()

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

    register_architectures()
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


def load_encoder(name: str, weights: str | None = None, lake=None,
                 features: str | int | None = None):
    """Load an encoder for inference: returns ``(model, EncoderInfo)``, the model in eval mode on CPU.

    ``weights``: None (the encoder's default), ``hub``, ``random``, ``lake``, ``shipped`` or a PATH.
    ``features``: what the embedding is (:func:`parse_features`; default: the encoder's own).
    Raises InputError with one line for an unknown encoder, unreachable hub, weights that do
    not fit the architecture, or a block the model does not have.
    """
    import timm
    import torch

    from galsae_lake.encoders.extraction import forward_features

    register_architectures()
    spec = encoder_spec(name)
    features = parse_features(features, spec.features)
    kind = weights or ("hub" if not spec.standin else "default")
    if spec.arch == "polar_fourier":  # hand-designed: no weights to choose
        from galsae_lake import polar

        if weights not in (None, "hub"):
            raise InputError(f"encoder {name} is hand-designed and has no weights; leave out --weights")
        model, weights_id, kind = polar.PolarFourier(), polar.VERSION, "hand-designed"
    elif spec.standin and kind in ("hub", "default", "lake", "shipped"):
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
    _check_block(model, name, features)
    dim = _embedding_dim(model, features)
    if dim is None:  # a model that does not say: one forward pass tells
        with torch.inference_mode():
            size = spec.input_size
            dim = int(forward_features(model, torch.zeros(1, 3, size, size), features).shape[-1])
    info = EncoderInfo(name=name, arch=spec.arch, weights=kind, weights_id=weights_id,
                       input_size=spec.input_size, mean=tuple(spec.mean), std=tuple(spec.std),
                       embedding_dim=dim, features=features)
    return model, info


def _check_block(model, name: str, features: str) -> None:
    """A one-line error when ``features`` names a block the model cannot give."""
    block = feature_block(features)
    if block is None:
        return
    if not hasattr(model, "forward_intermediates"):
        raise InputError(f"encoder {name} ({type(model).__name__}) cannot give intermediate "
                         f"blocks; use --features head")
    depth = len(getattr(model, "feature_info", None) or [])  # what forward_intermediates indexes
    if depth and not 0 <= block < depth:
        raise InputError(f"--features {features}: encoder {name} has blocks 0-{depth - 1}")


def _embedding_dim(model, features: str) -> int | None:
    """The size of the embedding as timm's model says it (None when it does not): the head's
    ``head_hidden_size`` (else ``num_features``), or block N's ``feature_info`` channels. The
    extraction checks the first batch against it."""
    block = feature_block(features)
    if block is None:
        dim = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
    else:
        info = getattr(model, "feature_info", None) or []
        dim = info[block].get("num_chs") if block < len(info) else None
    return int(dim) if dim else None


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

    register_architectures()
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
