"""``polar-fourier``: a hand-designed, rotation-invariant representation (no training, no weights).

This is not a learned encoder, and is said so wherever it appears: it is a fixed transform that
stands beside the two learned stand-ins (``zoobot-synth``, supervised; ``mae-synth``,
self-supervised) as an honest third representation for the offline demo. Around each galaxy's
light centre it samples brightness and colour on rings of fixed radii and keeps, per ring, the
amplitudes of the angular Fourier modes m = 0..M. Amplitudes do not change when the galaxy
rotates, so a lensing arc, a ring or a dust lane looks the same at any position angle, which a
small CNN or ViT trained for minutes on a CPU does not learn (arcs split across many narrow
latents by position angle, as measured in scripts/bench_discovery.py).

It is a torch module with timm's ``forward_features`` / ``forward_head`` so ``galsae-lake embed
--encoder polar-fourier`` runs it through the same extraction path as the real encoders.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: rings sampled (radii from RADIUS_MIN to RADIUS_MAX of the image side), angles per ring, modes kept
RINGS = 20
RADIUS_MIN, RADIUS_MAX = 0.01, 0.42
ANGLES = 32
MODES = 7
#: the light centre is the brightness-weighted centroid within this Gaussian window (image sides)
CENTRE_WINDOW = 0.12
VERSION = "polar-fourier-v1"


class PolarFourier(nn.Module):
    """Images ``[B, 3, S, S]`` in [0, 1] -> ``[B, 2 * RINGS * MODES]`` Fourier amplitudes of
    brightness (mean of the channels) and colour (red minus blue) on rings around the light
    centre. Amplitudes are square-rooted to tame their dynamic range."""

    def __init__(self, rings: int = RINGS, angles: int = ANGLES, modes: int = MODES):
        super().__init__()
        self.rings, self.angles, self.modes = rings, angles, modes
        self.num_features = 2 * rings * modes
        radius = torch.linspace(RADIUS_MIN, RADIUS_MAX, rings) * 2.0  # grid_sample's [-1, 1] units
        theta = torch.arange(angles) * (2 * math.pi / angles)
        self.register_buffer("dx", (radius[:, None] * torch.cos(theta)[None]).reshape(-1))
        self.register_buffer("dy", (radius[:, None] * torch.sin(theta)[None]).reshape(-1))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        B, _, S, _ = x.shape
        light = x.mean(1)                                                  # [B, S, S]
        colour = x[:, 0] - x[:, 2]
        coords = torch.linspace(-1.0, 1.0, S, device=x.device)
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        window = torch.exp(-0.5 * (xx ** 2 + yy ** 2) / (2 * CENTRE_WINDOW) ** 2)
        weight = (light - light.flatten(1).median(1).values[:, None, None]).clamp(min=0) ** 2 * window
        total = weight.sum((1, 2)).clamp(min=1e-12)
        cx = (weight * xx).sum((1, 2)) / total
        cy = (weight * yy).sum((1, 2)) / total
        grid = torch.stack([cx[:, None] + self.dx[None], cy[:, None] + self.dy[None]], -1)
        sampled = F.grid_sample(torch.stack([light, colour], 1), grid[:, None], mode="bilinear",
                                padding_mode="border", align_corners=True)  # [B, 2, 1, R*A]
        rings = sampled.reshape(B, 2, self.rings, self.angles)
        amplitude = torch.fft.rfft(rings, dim=-1).abs()[..., : self.modes] / self.angles
        return amplitude.clamp(min=0).sqrt().reshape(B, -1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = True) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)
