"""A synthetic Euclid-like world: galaxies with planted morphology, their cutouts, and volunteers.

``synthesize(lake, n)`` fills ``galaxies``, ``images``, ``votes`` (catalog ``volunteers``) and
``truth``. Deterministic per seed. Three steps, each usable on its own:

1. :func:`draw_population` draws every galaxy's planted factors (numpy arrays, one per factor).
2. :func:`render` paints them as RGB cutouts: two bands, VIS (sharp, blue channel) and Y (broader
   PSF, red channel; green is their mean), as the Euclid VIS+Y composites the encoders expect.
   Light profiles are drawn on coordinate grids for a whole batch at once: a Sersic bulge (boxy
   for some edge-on disks), an exponential disk seen at an inclination and position angle,
   logarithmic spiral arms (count, pitch angle), a bar, a ring, star-forming clumps, a dust lane
   across edge-on disks, a companion with a tidal bridge (mergers), tidal tails (disturbances),
   a lensing arc with a counter-image around ellipticals; foreground stars with Euclid's six
   diffraction spikes, satellite trails (in one band, as the exposures are separate) and cosmic
   rays (VIS only, unconvolved); a Moffat PSF per band, sky and shot noise, an arcsinh stretch.
3. :func:`simulate_volunteers` lets 3-40 volunteers per galaxy walk the Galaxy Zoo Euclid tree
   (:mod:`galsae_lake.gz`): each answers from probabilities set by the planted truth, blurred
   by how visible the galaxy is and by the volunteer's own carelessness, and is asked only the
   questions their own earlier answers open. ``merging`` is asked after the smooth and featured
   branches but not after ``problem`` (as on the real site; the published dependency is None).

Planted factors (``truth.factor``; values are numbers, NULL where a factor does not apply):

=====================  ====================================================================
smooth                 1 for an elliptical (Sersic) galaxy
disk                   1 for a disk seen face-on or inclined (not edge-on)
edge_on                1 for an edge-on disk
central_star           1 when the cutout is centred on a star, not a galaxy
radius                 half-light radius (ellipticals) or disk scale length, pixels
flux                   total galaxy flux, in units of the sky noise per pixel
axis_ratio             projected minor/major axis ratio of the main component
position_angle         degrees, 0-180
offset_x, offset_y     centre offset from the cutout centre, pixels
sersic_n               Sersic index of the elliptical or bulge (NULL without a bulge)
bulge_fraction         bulge-to-total light ratio (1 for ellipticals, 0 for stars)
bulge_boxy             1 for a boxy bulge in an edge-on disk
bulge_rounded          1 for a rounded bulge in an edge-on disk
spiral                 1 when the disk has spiral arms
arm_count              number of arms (0 without arms)
pitch_angle            arm pitch angle in degrees (small = tight); NULL without arms
bar                    1 for a barred disk
bar_strength           0-1 (0 without a bar)
ring                   1 for a ring (not asked by the tree)
clumps                 1 for star-forming clumps
clump_count            number of clumps
dust_lane              1 for a dust lane across an edge-on disk (not asked by the tree)
merger                 1 for a companion of comparable brightness with a tidal bridge
disturbance            tidal tails: 0 none, 1 minor, 2 major
lens_arc               1 for a gravitational lensing arc (not asked by the tree)
foreground_star        1 for a foreground star in the cutout
diffraction_spikes     1 when a star in the cutout is bright enough to show spikes
satellite_trail        1 for a satellite trail
cosmic_rays            number of cosmic-ray hits
psf_fwhm               VIS PSF FWHM, pixels
sky_noise              sky noise per pixel, relative to the nominal depth (0.8-1.4)
=====================  ====================================================================
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from PIL import Image
from scipy import fft as sfft

from galsae_lake import gz
from galsae_lake.labels import catalog_row
from galsae_lake.errors import InputError
from galsae_lake.sources import votes_long

#: factor names, in the order the truth table lists them
FACTORS: tuple[str, ...] = (
    "smooth", "disk", "edge_on", "central_star", "radius", "flux", "axis_ratio", "position_angle",
    "offset_x", "offset_y", "sersic_n", "bulge_fraction", "bulge_boxy", "bulge_rounded", "spiral",
    "arm_count", "pitch_angle", "bar", "bar_strength", "ring", "clumps", "clump_count", "dust_lane",
    "merger", "disturbance", "lens_arc", "foreground_star", "diffraction_spikes", "satellite_trail",
    "cosmic_rays", "psf_fwhm", "sky_noise",
)

#: the factors that are not morphology (brightness, size, shape, observing conditions): what a
#: real catalogue's photometry and sizes stand for; ``analyze --control truth`` controls for them
NUISANCE: tuple[str, ...] = ("flux", "radius", "axis_ratio", "psf_fwhm", "sky_noise")

#: kinds of central object
SMOOTH, DISK, EDGE_ON, STAR = 0, 1, 2, 3

#: Euclid Q1 fields (name, RA, Dec in degrees): where synthetic galaxies sit on the sky
Q1_FIELDS = (("EDF-N", 269.73, 66.02), ("EDF-S", 61.24, -48.42), ("EDF-F", 52.93, -28.09),
             ("LDN1641", 85.74, -8.39))

#: pixel scale the sizes below are written for; other image sizes scale them
BASE_SIZE = 64
MAX_CLUMPS = 8
#: a ring's share of its disk's light and its width (a fraction of its radius, plus 0.45 px)
RING_SHARE = 0.7
RING_WIDTH = 0.05
MAX_RAYS = 3
SOURCE = "synthetic"


# ---------------------------------------------------------------- population
def draw_population(n: int, image_size: int = BASE_SIZE, seed: int = 0) -> dict[str, np.ndarray]:
    """Draw the planted factors of ``n`` galaxies: ``{name: array[n]}``.

    Holds every factor of :data:`FACTORS` plus the rendering parameters (component fluxes,
    companion and arc geometry, ...). Rare factors are kept at >= 5% so a few thousand galaxies
    carry enough of each for analysis.
    """
    if n < 1:
        raise InputError(f"--n must be at least 1, got {n}")
    if image_size < 32:
        raise InputError(f"--image-size must be at least 32 pixels, got {image_size}")
    rng = np.random.default_rng([seed, 0])
    s = image_size / BASE_SIZE
    u = rng.random
    p: dict[str, np.ndarray] = {}
    kind = rng.choice(4, size=n, p=[0.39, 0.40, 0.15, 0.06])
    p["kind"] = kind
    smooth, disk, edge, star = (kind == SMOOTH), (kind == DISK), (kind == EDGE_ON), (kind == STAR)
    galaxy = ~star
    p["smooth"], p["disk"], p["edge_on"], p["central_star"] = (x.astype(float) for x in (smooth, disk, edge, star))

    p["offset_x"] = np.clip(rng.normal(0, 1.5, n), -4, 4) * s
    p["offset_y"] = np.clip(rng.normal(0, 1.5, n), -4, 4) * s
    p["position_angle"] = u(n) * 180.0
    # sizes: ellipticals by half-light radius, disks by scale length (edge-on ones larger, to show lanes)
    radius = np.exp(rng.uniform(np.log(3.0), np.log(8.5), n))
    radius = np.where(disk, np.exp(rng.uniform(np.log(3.0), np.log(7.0), n)), radius)
    radius = np.where(edge, rng.uniform(5.5, 10.0, n), radius)
    p["radius"] = np.where(star, 0.0, radius) * s
    flux = np.exp(rng.uniform(np.log(1500), np.log(15000), n)) * s * s
    p["flux"] = np.where(star, 0.0, flux)

    # projected shape: ellipticals round / in-between / cigar; disks by inclination; edge-on thin
    q_smooth = np.select([u(n) < 0.4, u(n) < 0.75], [rng.uniform(0.8, 1.0, n), rng.uniform(0.5, 0.8, n)],
                         rng.uniform(0.3, 0.5, n))
    q_disk = rng.uniform(0.3, 1.0, n)
    q_edge = rng.uniform(0.16, 0.34, n)
    p["axis_ratio"] = np.select([smooth, disk, edge], [q_smooth, q_disk, q_edge], 1.0)
    # half of the edge-on disks have a dust lane, drawn independently of their size, shape and
    # flux: only the lane itself tells them apart (scripts/bench_world.py checks that a probe of
    # those properties alone cannot)
    p["dust_lane"] = (edge & (u(n) < 0.5)).astype(float)

    # bulges
    bt_disk = np.where(u(n) < 0.12, 0.0, rng.uniform(0.04, 0.5, n))
    edge_shape = rng.choice(3, size=n, p=[0.3, 0.45, 0.25])  # none, rounded, boxy
    bt_edge = np.where(edge_shape == 0, 0.0, rng.uniform(0.12, 0.4, n))
    p["bulge_fraction"] = np.select([smooth, disk, edge], [np.ones(n), bt_disk, bt_edge], 0.0)
    p["bulge_boxy"] = (edge & (edge_shape == 2)).astype(float)
    p["bulge_rounded"] = (edge & (edge_shape == 1)).astype(float)
    has_bulge = p["bulge_fraction"] > 0
    p["sersic_n"] = np.where(smooth, rng.uniform(2.5, 5.0, n),
                             np.where(has_bulge, rng.uniform(1.5, 4.0, n), np.nan))
    p["bulge_radius"] = np.where(smooth, p["radius"], rng.uniform(0.4, 0.8, n) * p["radius"])
    p["bulge_q"] = np.select([smooth, disk, edge], [q_smooth, 0.65 + 0.35 * q_disk,
                                                    np.where(edge_shape == 2, 0.55, 0.8)], 1.0)
    p["bulge_box"] = np.where(p["bulge_boxy"] > 0, 3.2, 2.0)  # exponent of the isophote shape

    # disk structure (face-on / inclined disks)
    spiral = disk & (u(n) < 0.65)
    p["spiral"] = spiral.astype(float)
    arms = rng.choice([1, 2, 3, 4, 5, 6], size=n, p=[0.08, 0.5, 0.2, 0.12, 0.06, 0.04])
    p["arm_count"] = np.where(spiral, arms, 0).astype(float)
    p["pitch_angle"] = np.where(spiral, rng.uniform(8.0, 35.0, n), np.nan)
    p["arm_amplitude"] = np.where(spiral, rng.uniform(0.45, 0.8, n), 0.0)
    p["arm_phase"] = u(n) * 2 * np.pi
    bar = disk & (u(n) < 0.35)
    p["bar"] = bar.astype(float)
    p["bulge_fraction"] = np.where(bar, np.minimum(p["bulge_fraction"], 0.3), p["bulge_fraction"])
    p["bar_strength"] = np.where(bar, rng.uniform(0.3, 1.0, n), 0.0)
    p["bar_length"] = rng.uniform(1.2, 2.0, n) * p["radius"]
    p["bar_angle"] = u(n) * np.pi
    ring = disk & (u(n) < 0.22)
    p["ring"] = ring.astype(float)
    p["ring_radius"] = np.where(bar, 1.1 * p["bar_length"], rng.uniform(1.3, 2.2, n) * p["radius"])
    clumps = disk & (u(n) < 0.25)
    p["clumps"] = clumps.astype(float)
    p["clump_count"] = np.where(clumps, rng.integers(3, MAX_CLUMPS + 1, n), 0).astype(float)
    p["clump_rho"] = rng.uniform(0.3, 1.8, (n, MAX_CLUMPS)) * p["radius"][:, None]
    p["clump_phi"] = rng.uniform(0, 2 * np.pi, (n, MAX_CLUMPS))
    p["clump_flux"] = rng.uniform(0.05, 0.1, (n, MAX_CLUMPS))
    p["dust_tau"] = rng.uniform(0.9, 0.99, n)
    p["dust_offset"] = rng.uniform(-0.2, 0.2, n) * p["radius"] * p["axis_ratio"]

    # interactions
    merger = galaxy & (u(n) < 0.09)
    p["merger"] = merger.astype(float)
    p["companion_ratio"] = rng.uniform(0.35, 1.0, n)
    p["companion_radius"] = rng.uniform(0.5, 0.9, n) * p["radius"]
    p["companion_n"] = rng.uniform(1.0, 4.0, n)
    p["companion_sep"] = rng.uniform(1.3, 2.0, n) * (p["radius"] + p["companion_radius"])
    p["companion_angle"] = u(n) * 2 * np.pi
    level = np.where(u(n) < 0.6, 1, 2)
    p["disturbance"] = np.where(galaxy & ~merger & (u(n) < 0.14), level, 0).astype(float)
    p["tail_angle"] = u(n) * 2 * np.pi
    p["tail_span"] = rng.uniform(1.3, 2.2, n)
    p["tail_growth"] = rng.uniform(1.0, 1.6, n)
    p["tail_flux"] = np.where(p["disturbance"] == 2, rng.uniform(0.12, 0.2, n), rng.uniform(0.06, 0.1, n))
    lens = smooth & (u(n) < 0.16)
    p["lens_arc"] = lens.astype(float)
    # outside the lens galaxy's bright core, inside the cutout
    p["arc_radius"] = np.clip(rng.uniform(1.5, 2.3, n) * p["radius"], 9.0 * s, 0.36 * image_size)
    p["arc_angle"] = u(n) * 2 * np.pi
    p["arc_span"] = rng.uniform(0.45, 0.9, n)
    p["arc_flux"] = rng.uniform(0.2, 0.35, n)

    # contaminants and the central star
    p["star_flux"] = np.exp(rng.uniform(np.log(4000), np.log(60000), n)) * s * s
    fg = u(n) < 0.12
    p["foreground_star"] = fg.astype(float)
    r_fg = rng.uniform(0.22, 0.42, n) * image_size
    a_fg = u(n) * 2 * np.pi
    p["fg_x"], p["fg_y"] = r_fg * np.cos(a_fg), r_fg * np.sin(a_fg)
    p["fg_flux"] = np.exp(rng.uniform(np.log(600), np.log(60000), n)) * s * s
    spike_limit = 9000 * s * s
    p["diffraction_spikes"] = ((star & (p["star_flux"] > spike_limit))
                               | (fg & (p["fg_flux"] > spike_limit))).astype(float)
    p["spike_angle"] = rng.uniform(0, np.pi / 3, n)
    p["satellite_trail"] = (u(n) < 0.06).astype(float)
    p["trail_angle"] = u(n) * np.pi
    p["trail_offset"] = rng.uniform(-0.35, 0.35, n) * image_size
    p["trail_amp"] = rng.uniform(4.0, 14.0, n)
    p["trail_band"] = rng.integers(0, 2, n)  # 0 VIS, 1 Y: bands are separate exposures
    p["cosmic_rays"] = np.where(u(n) < 0.15, rng.integers(1, MAX_RAYS + 1, n), 0).astype(float)
    p["ray_x"] = rng.uniform(-0.45, 0.45, (n, MAX_RAYS)) * image_size
    p["ray_y"] = rng.uniform(-0.45, 0.45, (n, MAX_RAYS)) * image_size
    p["ray_len"] = rng.uniform(3.0, 8.0, (n, MAX_RAYS)) * s
    p["ray_angle"] = rng.uniform(0, np.pi, (n, MAX_RAYS))
    p["ray_amp"] = rng.uniform(100.0, 400.0, (n, MAX_RAYS))

    # observing conditions
    p["psf_fwhm"] = rng.uniform(1.3, 1.8, n) * s
    p["psf_fwhm_y"] = p["psf_fwhm"] * rng.uniform(1.5, 1.8, n)
    # sky noise per pixel relative to the nominal depth (fluxes above are in nominal sky sigmas)
    p["sky_noise"] = rng.uniform(0.8, 1.4, n)
    # colours (Y/VIS flux ratio): red bulges, blue arms, clumps and arcs
    p["color_bulge"] = rng.uniform(1.5, 2.0, n)
    p["color_disk"] = rng.uniform(1.0, 1.3, n)
    p["color_star"] = np.exp(rng.uniform(np.log(0.6), np.log(2.2), n))
    return p


def truth_matrix(pop: dict[str, np.ndarray]) -> np.ndarray:
    """The planted factors as a ``[galaxy, factor]`` float matrix, columns in :data:`FACTORS` order."""
    return np.column_stack([np.asarray(pop[name], dtype=np.float64) for name in FACTORS])


# ---------------------------------------------------------------- rendering
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    centre = (size - 1) / 2.0
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return x - centre, y - centre


def _col(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)[:, None, None]


def _unit(image: np.ndarray) -> np.ndarray:
    """Each image scaled to sum 1 (so a component's flux is set by one number)."""
    return image / np.maximum(image.sum(axis=(1, 2), keepdims=True), 1e-12)


def _sersic(r: np.ndarray, re: np.ndarray, n: np.ndarray) -> np.ndarray:
    b = _col(2.0 * n - 1.0 / 3.0)
    return np.exp(-b * ((r / _col(re)) ** _col(1.0 / n) - 1.0))


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _moffat_otf(fwhm: np.ndarray, size: int, beta: float = 2.8) -> np.ndarray:
    """The Fourier transform of a unit Moffat PSF centred at pixel (0, 0), per galaxy."""
    x, y = _grid(size)
    r2 = np.fft.ifftshift(x * x + y * y)[None]
    alpha = _col(fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0)))
    kernel = (1.0 + r2 / (alpha * alpha)) ** (-beta)
    return sfft.rfft2(_unit(kernel), workers=1)


def _line(dx, dy, angle, width):
    """A Gaussian line through (0, 0) at ``angle``; returns (profile, distance along the line)."""
    c, s = _col(np.cos(angle)), _col(np.sin(angle))
    along = c * dx + s * dy
    across = -s * dx + c * dy
    return np.exp(-0.5 * (across / width) ** 2), along


def render(pop: dict[str, np.ndarray], index: np.ndarray, image_size: int = BASE_SIZE,
           seed: int = 0) -> np.ndarray:
    """Paint galaxies ``index`` of ``pop`` as ``uint8 [b, size, size, 3]`` RGB cutouts.

    Each galaxy's noise comes from ``seed`` and its index, so a cutout is the same whatever
    batch renders it.
    """
    index = np.asarray(index)
    b, S = len(index), image_size
    s = S / BASE_SIZE
    P = {k: v[index] for k, v in pop.items()}
    X, Y = _grid(S)
    vis = np.zeros((b, S, S), np.float32)
    nir = np.zeros((b, S, S), np.float32)

    def add(sel, image, flux, color):
        vis[sel] += image * _col(flux)
        nir[sel] += image * _col(flux * color)

    kind = P["kind"]
    gal = np.flatnonzero(kind != STAR)
    if len(gal):
        g = {k: v[gal] for k, v in P.items()}
        dx = X[None] - _col(g["offset_x"])
        dy = Y[None] - _col(g["offset_y"])
        pa = np.deg2rad(g["position_angle"])
        c, sn = _col(np.cos(pa)), _col(np.sin(pa))
        u = c * dx + sn * dy
        v = -sn * dx + c * dy
        q = _col(g["axis_ratio"])
        flux = g["flux"]
        bt = g["bulge_fraction"]
        # bulge / elliptical: Sersic with a generalized-ellipse isophote (exponent 2 = ellipse)
        withb = np.flatnonzero(bt > 0)
        if len(withb):
            box = _col(g["bulge_box"][withb])
            ub, vb = np.abs(u[withb]) + 1e-3, np.abs(v[withb]) / _col(g["bulge_q"][withb]) + 1e-3
            rb = (ub ** box + vb ** box) ** (1.0 / box)
            bulge = _unit(_sersic(rb, g["bulge_radius"][withb], g["sersic_n"][withb]))
            add(gal[withb], bulge, flux[withb] * bt[withb], g["color_bulge"][withb])
        # disks, in the disk plane (deprojected)
        dsk = np.flatnonzero(g["kind"] != SMOOTH)
        if len(dsk):
            ud, vd = u[dsk], v[dsk] / q[dsk]
            rd = np.sqrt(ud * ud + vd * vd) + 1e-3
            h = g["radius"][dsk]
            disk_flux = flux[dsk] * (1 - bt[dsk])
            arm_share = g["arm_amplitude"][dsk] * g["spiral"][dsk]
            bar_share = 0.6 * g["bar_strength"][dsk]
            ring_share = RING_SHARE * g["ring"][dsk]
            base = _unit(np.exp(-rd / _col(h)))
            smooth_share = np.maximum(1 - arm_share - bar_share - ring_share, 0.1)
            add(gal[dsk], base, disk_flux * smooth_share, g["color_disk"][dsk])
            theta = np.arctan2(vd, ud)
            sp = np.flatnonzero(g["spiral"][dsk] > 0)
            if len(sp):
                m = _col(g["arm_count"][dsk][sp])
                hs = _col(h[sp])
                winding = 1.0 / np.tan(np.deg2rad(_col(g["pitch_angle"][dsk][sp])))
                r_s = rd[sp]
                phase = m * (theta[sp] - winding * np.log(r_s / hs)) + _col(g["arm_phase"][dsk][sp])
                inner = np.where(g["bar"][dsk][sp] > 0, g["bar_length"][dsk][sp], 0.6 * h[sp])
                arms = ((1 + np.cos(phase)) * 0.5) ** 4 * np.exp(-r_s / (1.3 * hs)) \
                    * (1 - np.exp(-(r_s / _col(inner)) ** 2))
                add(gal[dsk][sp], _unit(arms), disk_flux[sp] * arm_share[sp],
                    0.75 * g["color_disk"][dsk][sp])
            br = np.flatnonzero(g["bar"][dsk] > 0)
            if len(br):
                ang = g["bar_angle"][dsk][br]
                ca, sa = _col(np.cos(ang)), _col(np.sin(ang))
                ub_ = ca * ud[br] + sa * vd[br]
                vb_ = -sa * ud[br] + ca * vd[br]
                length = _col(g["bar_length"][dsk][br])
                bar = np.exp(-0.5 * ((ub_ / length) ** 4 + (vb_ / (0.18 * length)) ** 2))
                add(gal[dsk][br], _unit(bar), disk_flux[br] * bar_share[br],
                    g["color_bulge"][dsk][br] * 0.85)
            rg = np.flatnonzero(g["ring"][dsk] > 0)
            if len(rg):
                radius = _col(g["ring_radius"][dsk][rg])
                ring = np.exp(-0.5 * ((rd[rg] - radius) / (RING_WIDTH * radius + 0.45 * s)) ** 2)
                add(gal[dsk][rg], _unit(ring), disk_flux[rg] * ring_share[rg],
                    0.8 * g["color_disk"][dsk][rg])
            cl = np.flatnonzero(g["clumps"][dsk] > 0)
            for k in range(MAX_CLUMPS):
                on = cl[g["clump_count"][dsk][cl] > k]
                if not len(on):
                    break
                rho, phi = g["clump_rho"][dsk][on, k], g["clump_phi"][dsk][on, k]
                cu, cv = _col(rho * np.cos(phi)), _col(rho * np.sin(phi))
                sigma = 0.7 * s
                blob = np.exp(-0.5 * ((ud[on] - cu) ** 2 + ((vd[on] - cv) * q[dsk][on]) ** 2) / sigma ** 2)
                add(gal[dsk][on], _unit(blob), flux[dsk][on] * g["clump_flux"][dsk][on, k], 0.55)
        # companions with a tidal bridge (mergers)
        mg = np.flatnonzero(g["merger"] > 0)
        if len(mg):
            ang, sep = g["companion_angle"][mg], g["companion_sep"][mg]
            ox, oy = _col(sep * np.cos(ang)), _col(sep * np.sin(ang))
            rc = np.sqrt((dx[mg] - ox) ** 2 + (dy[mg] - oy) ** 2) + 1e-3
            comp = _unit(_sersic(rc, g["companion_radius"][mg], g["companion_n"][mg]))
            add(gal[mg], comp, flux[mg] * g["companion_ratio"][mg], g["color_bulge"][mg] * 0.9)
            line, along = _line(dx[mg] - ox / 2, dy[mg] - oy / 2, ang, 1.3 * s)
            bridge = line * np.exp(-0.5 * (along / (0.45 * _col(sep))) ** 4)
            add(gal[mg], _unit(bridge), 0.12 * flux[mg], 1.0)
        # tidal tails (disturbances) and the merger's own tail: curved streams from the edge out
        tl = np.flatnonzero((g["disturbance"] > 0) | (g["merger"] > 0))
        if len(tl):
            rr = np.sqrt(dx[tl] ** 2 + dy[tl] ** 2) + 1e-3
            th = np.arctan2(dy[tl], dx[tl])
            r0 = _col(1.2 * g["radius"][tl])
            span, growth = _col(g["tail_span"][tl]), _col(g["tail_growth"][tl])
            level = np.where(g["merger"][tl] > 0, 1, g["disturbance"][tl])
            tails = np.zeros_like(rr)
            for j, offset in enumerate((0.0, 0.8 * np.pi)):  # unequal tails: not a spiral
                phi = (th - _col(g["tail_angle"][tl] + offset)) % (2 * np.pi)
                centre = r0 * (1 + growth * phi)
                window = np.exp(-0.5 * ((phi - span / 2) / (span / 2)) ** 6)
                # diffuse, fading outwards: low surface brightness, unlike arms or arcs
                stream = np.exp(-0.5 * ((rr - centre) / (2.2 * s)) ** 2) * window * np.exp(-phi / span)
                tails += stream * _col(level >= (1 if j == 0 else 2))
            add(gal[tl], _unit(tails), flux[tl] * g["tail_flux"][tl], 1.0)
        # lensing arcs around ellipticals, with a faint counter-image
        ln = np.flatnonzero(g["lens_arc"] > 0)
        if len(ln):
            rr = np.sqrt(dx[ln] ** 2 + dy[ln] ** 2)
            th = np.arctan2(dy[ln], dx[ln])
            re_ = _col(g["arc_radius"][ln])
            dth = _wrap(th - _col(g["arc_angle"][ln]))
            arc = np.exp(-0.5 * ((rr - re_) / (0.55 * s)) ** 2) * np.exp(
                -0.5 * (dth / _col(g["arc_span"][ln])) ** 2)
            counter = np.exp(-0.5 * ((rr - 0.55 * re_) / (0.6 * s)) ** 2) * np.exp(
                -0.5 * (_wrap(dth - np.pi) / 0.25) ** 2)
            add(gal[ln], _unit(arc + 0.15 * counter), flux[ln] * g["arc_flux"][ln], 0.45)
        # dust lanes absorb light along the midplane of edge-on disks
        du = np.flatnonzero(g["dust_lane"] > 0)
        if len(du):
            lane = np.exp(-0.5 * ((v[du] - _col(g["dust_offset"][du])) / (0.85 * s)) ** 2) \
                * np.exp(-0.5 * (u[du] / (2.5 * _col(g["radius"][du]))) ** 2)
            tau = _col(g["dust_tau"][du])
            vis[gal[du]] *= 1 - tau * lane
            nir[gal[du]] *= 1 - 0.6 * tau * lane

    # stars: the central one (problem: star) and foreground ones; point sources before the PSF
    st_x = np.where(kind == STAR, P["offset_x"], P["fg_x"])
    st_y = np.where(kind == STAR, P["offset_y"], P["fg_y"])
    st_f = np.where(kind == STAR, P["star_flux"], P["fg_flux"])
    has_star = np.flatnonzero((kind == STAR) | (P["foreground_star"] > 0))
    if len(has_star):
        point = np.exp(-0.5 * ((X[None] - _col(st_x[has_star])) ** 2 + (Y[None] - _col(st_y[has_star])) ** 2) / 0.3 ** 2)
        add(has_star, _unit(point), st_f[has_star], P["color_star"][has_star])

    # the PSF: Moffat, broader in Y
    vis = sfft.irfft2(sfft.rfft2(vis, workers=1) * _moffat_otf(P["psf_fwhm"], S), s=(S, S), workers=1)
    nir = sfft.irfft2(sfft.rfft2(nir, workers=1) * _moffat_otf(P["psf_fwhm_y"], S), s=(S, S), workers=1)

    # Euclid's six diffraction spikes (three spider vanes), fading with distance
    sk = np.flatnonzero(P["diffraction_spikes"] > 0)
    if len(sk):
        dx = X[None] - _col(st_x[sk])
        dy = Y[None] - _col(st_y[sk])
        length = _col(6.0 * s * np.log10(st_f[sk] / (2000 * s * s)))
        spikes = np.zeros_like(dx)
        for j in range(3):
            line, along = _line(dx, dy, P["spike_angle"][sk] + j * np.pi / 3, 0.45 * s)
            spikes += line * np.exp(-np.abs(along) / length)
        amp = _col(0.004 * st_f[sk] / (s * s))
        vis[sk] += spikes * amp
        nir[sk] += spikes * amp * 0.5 * _col(P["color_star"][sk])
    # satellite trails: straight, already blurred, in one band only
    tr = np.flatnonzero(P["satellite_trail"] > 0)
    if len(tr):
        ang = P["trail_angle"][tr]
        ox = -np.sin(ang) * P["trail_offset"][tr]
        oy = np.cos(ang) * P["trail_offset"][tr]
        line, _ = _line(X[None] - _col(ox), Y[None] - _col(oy), ang, 0.7 * s)
        trail = line * _col(P["trail_amp"][tr])
        in_vis = P["trail_band"][tr] == 0
        vis[tr[in_vis]] += trail[in_vis]
        nir[tr[~in_vis]] += trail[~in_vis]
    # cosmic rays: sharp, unconvolved, VIS only
    cr = np.flatnonzero(P["cosmic_rays"] > 0)
    for k in range(MAX_RAYS):
        on = cr[P["cosmic_rays"][cr] > k]
        if not len(on):
            break
        dx = X[None] - _col(P["ray_x"][on, k])
        dy = Y[None] - _col(P["ray_y"][on, k])
        line, along = _line(dx, dy, P["ray_angle"][on, k], 0.35)
        half = _col(P["ray_len"][on, k] / 2)
        seg = line * np.exp(-0.5 * (np.maximum(np.abs(along) - half, 0) / 0.35) ** 2)
        vis[on] += seg * _col(P["ray_amp"][on, k])

    # sky noise (unit sigma per band) and shot noise
    # one noise stream per galaxy: a cutout does not depend on the batch it was rendered in
    noise = np.stack([np.random.default_rng([seed, 2, int(i)]).standard_normal((2, S, S), dtype=np.float32)
                      for i in index], axis=1) if b else np.zeros((2, 0, S, S), np.float32)
    sky = _col(P["sky_noise"]) ** 2
    vis = vis + noise[0] * np.sqrt(sky + 0.02 * np.maximum(vis, 0))
    nir = nir + noise[1] * np.sqrt(sky + 0.02 * np.maximum(nir, 0))
    return _stretch(vis, nir)


#: arcsinh stretch: softening (in sky sigmas) and the value that maps to white
STRETCH_SOFTENING = 2.0
STRETCH_WHITE = 400.0


def _stretch(vis: np.ndarray, nir: np.ndarray) -> np.ndarray:
    scale = 255.0 / math.asinh(STRETCH_WHITE / STRETCH_SOFTENING)
    r = np.arcsinh(nir / STRETCH_SOFTENING) * scale
    bl = np.arcsinh(vis / STRETCH_SOFTENING) * scale
    rgb = np.stack([r, 0.5 * (r + bl), bl], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """An ``uint8 [h, w, 3]`` array as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def render_png(pop: dict[str, np.ndarray], index: np.ndarray, image_size: int = BASE_SIZE,
               seed: int = 0) -> list[bytes]:
    """:func:`render` then PNG-encode each cutout."""
    return [encode_png(img) for img in render(pop, index, image_size, seed)]


# ---------------------------------------------------------------- volunteers
def _soft(true_index: np.ndarray, k: int, width: float) -> np.ndarray:
    """Probabilities over ``k`` ordered answers peaked at ``true_index`` (neighbours confused)."""
    j = np.arange(k)[None, :]
    w = np.exp(-0.5 * ((j - true_index[:, None]) / width) ** 2)
    return w / w.sum(1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def visibility(pop: dict[str, np.ndarray], image_size: int = BASE_SIZE) -> np.ndarray:
    """How clearly a galaxy's details can be seen, 0-1: faint and small galaxies are harder."""
    s = image_size / BASE_SIZE
    radius = np.maximum(pop["radius"] / s, 0.1)
    surface = pop["flux"] / (s * s) / (2 * np.pi * radius ** 2 * 2) / pop["sky_noise"]  # sky sigmas
    vis = _sigmoid((np.log(np.maximum(surface, 1e-3)) - np.log(2.0)) / 0.5) * _sigmoid((radius - 3.0) / 0.8)
    return np.where(pop["kind"] == STAR, 0.0, np.clip(vis, 0.02, 1.0))


def answer_probabilities(pop: dict[str, np.ndarray], image_size: int = BASE_SIZE) -> dict[str, np.ndarray]:
    """Per question, the ``[galaxy, answer]`` probabilities a careful volunteer answers with."""
    n = len(pop["kind"])
    kind = pop["kind"]
    vis = visibility(pop, image_size)
    smooth, disk, edge, star = (kind == SMOOTH), (kind == DISK), (kind == EDGE_ON), (kind == STAR)
    s = image_size / BASE_SIZE
    out: dict[str, np.ndarray] = {}

    # smooth-or-featured: features must be visible to be reported
    strength = np.maximum.reduce([
        pop["spiral"] * pop["arm_amplitude"] * 1.1, pop["bar_strength"] * 0.8, pop["clumps"] * 0.8,
        pop["ring"] * 0.7, pop["merger"] * 0.6, 0.12 + 0.15 * (1 - pop["bulge_fraction"])])
    featured = np.select([smooth, disk, edge], [0.12 + 0.15 * pop["lens_arc"] + 0.2 * pop["merger"],
                                                 0.15 + 0.75 * strength * vis, 0.85], 0.05)
    problem = np.where(star, 0.9, 0.03)
    artifact = np.clip(0.55 * pop["satellite_trail"] * pop["trail_amp"] / 14
                       + 0.35 * pop["diffraction_spikes"] + 0.08 * np.minimum(pop["cosmic_rays"], 2), 0, 0.7)
    tiny = (~star) & (pop["radius"] < 3.3 * s)
    problem = np.clip(problem + 0.5 * artifact * (1 - problem) + 0.08 * tiny, 0, 0.95)
    featured = np.clip(featured, 0, 1) * (1 - problem)
    out["smooth-or-featured"] = np.column_stack([1 - problem - featured, featured, problem])

    # disk-edge-on
    q = pop["axis_ratio"]
    yes = np.select([edge, disk], [0.93, 0.03 + 0.5 * _sigmoid((0.42 - q) / 0.05)], 0.12)
    out["disk-edge-on"] = np.column_stack([yes, 1 - yes])
    # has-spiral-arms
    yes = np.where(pop["spiral"] > 0, np.clip(0.2 + 0.85 * vis * pop["arm_amplitude"] / 0.7, 0, 0.96),
                   0.08 + 0.12 * pop["clumps"] + 0.1 * pop["ring"])
    out["has-spiral-arms"] = np.column_stack([yes, 1 - yes])
    # bar: strong bars are seen as strong, weak ones as weak, both missed when hard to see
    strong = pop["bar_strength"] >= 0.65
    barred = np.where(strong[:, None], [0.65, 0.28, 0.07], [0.15, 0.55, 0.30])
    unbarred = np.array([0.02, 0.08, 0.90])
    seen = (pop["bar"] * (0.35 + 0.65 * vis))[:, None]
    out["bar"] = seen * barred + (1 - seen) * unbarred
    # bulge-size from bulge-to-total (dominant, large, moderate, small, none)
    bt = pop["bulge_fraction"]
    k = np.select([bt >= 0.55, bt >= 0.35, bt >= 0.18, bt >= 0.05], [0, 1, 2, 3], 4)
    out["bulge-size"] = _soft(k, 5, 0.65)
    # how-rounded from the axis ratio (round, in-between, cigar-shaped)
    k = np.select([q >= 0.8, q >= 0.5], [0, 1], 2)
    out["how-rounded"] = _soft(k, 3, 0.45)
    # edge-on-bulge (boxy, none, rounded)
    k = np.select([pop["bulge_boxy"] > 0, pop["bulge_rounded"] > 0], [0, 2], 1)
    p = _soft(k, 3, 0.5)
    out["edge-on-bulge"] = np.where(edge[:, None], p, [0.15, 0.35, 0.5])
    # spiral-winding from the pitch angle (tight, medium, loose)
    pitch = np.nan_to_num(pop["pitch_angle"], nan=20.0)
    k = np.select([pitch < 15, pitch < 25], [0, 1], 2)
    out["spiral-winding"] = np.where((pop["spiral"] > 0)[:, None], _soft(k, 3, 0.55), [0.3, 0.4, 0.3])
    # spiral-arm-count (1, 2, 3, 4, more-than-4, cant-tell)
    arms = np.maximum(pop["arm_count"], 1)
    counts = _soft(np.minimum(arms, 5) - 1, 5, 0.5)
    cant = np.clip(0.08 + 0.5 * (1 - vis) + 0.15 * (arms >= 4), 0, 0.9)
    cant = np.where(pop["spiral"] > 0, cant, 0.6)
    out["spiral-arm-count"] = np.column_stack([counts * (1 - cant)[:, None], cant])
    # merging (none, minor-disturbance, major-disturbance, merger)
    table = np.array([[0.88, 0.08, 0.03, 0.01], [0.3, 0.5, 0.15, 0.05], [0.08, 0.25, 0.5, 0.17],
                      [0.04, 0.12, 0.3, 0.54]])
    level = np.where(pop["merger"] > 0, 3, pop["disturbance"].astype(int))
    seen = (0.5 + 0.5 * vis)[:, None]
    out["merging"] = seen * table[level] + (1 - seen) * table[0]
    # clumps
    yes = np.where(pop["clumps"] > 0, 0.15 + 0.75 * vis, 0.06)
    out["clumps"] = np.column_stack([yes, 1 - yes])
    # problem (star, artifact, zoom)
    out["problem"] = np.select(
        [star[:, None], (artifact > 0.2)[:, None], tiny[:, None]],
        [np.array([0.9, 0.07, 0.03]), np.array([0.06, 0.84, 0.1]), np.array([0.1, 0.2, 0.7])],
        np.array([0.25, 0.35, 0.4]))
    # artifact (satellite, scattered, diffraction, ray, saturation, other, ghost)
    weights = np.tile([0.15, 0.3, 0.15, 0.15, 0.1, 0.3, 0.1], (n, 1))
    weights[:, 0] += 5 * pop["satellite_trail"]
    weights[:, 2] += 4 * pop["diffraction_spikes"]
    weights[:, 3] += 1.5 * np.minimum(pop["cosmic_rays"], 2)
    weights[:, 4] += 1.5 * (star & (pop["star_flux"] > 30000 * s * s))
    out["artifact"] = weights / weights.sum(1, keepdims=True)
    for question, probs in out.items():
        assert probs.shape == (n, len(gz.QUESTIONS[question])), question
    return out


def _question_order() -> list[str]:
    """Questions with every parent before its children."""
    order: list[str] = []
    while len(order) < len(gz.QUESTIONS):
        for question, parent in gz.DEPENDENCIES.items():
            if question not in order and (parent is None or gz.question_of(parent) in order):
                order.append(question)
    return order


def simulate_volunteers(pop: dict[str, np.ndarray], seed: int = 0, image_size: int = BASE_SIZE
                        ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Let volunteers walk the tree for every galaxy.

    Returns ``(volunteers[n], {question: counts[n, answers]})``. Each galaxy gets 3-40 volunteers
    (log-normal, median 10). A volunteer reaches a question only if their own earlier answer is
    the one it depends on; each mixes the careful probabilities with a uniform guess by their
    own carelessness (Beta(1.2, 9), mean 12%).
    """
    rng = np.random.default_rng([seed, 1])
    n = len(pop["kind"])
    volunteers = np.clip(np.rint(rng.lognormal(np.log(10.0), 0.5, n)), 3, 40).astype(np.int64)
    galaxy = np.repeat(np.arange(n), volunteers)
    careless = rng.beta(1.2, 9.0, len(galaxy))
    probs = answer_probabilities(pop, image_size)
    answers: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for question in _question_order():
        k = len(gz.QUESTIONS[question])
        parent = gz.DEPENDENCIES[question]
        if parent is None:
            reached = np.ones(len(galaxy), bool)
            if question == "merging":  # asked after smooth or featured, not after problem
                reached = answers["smooth-or-featured"] != gz.QUESTIONS["smooth-or-featured"].index("problem")
        else:
            pq, pa_ = parent.rsplit("_", 1)
            reached = answers[pq] == gz.QUESTIONS[pq].index(pa_)
        who = np.flatnonzero(reached)
        p = probs[question][galaxy[who]]
        p = (1 - careless[who, None]) * p + careless[who, None] / k
        cumulative = np.cumsum(p, axis=1)
        draw = rng.random(len(who))[:, None] * cumulative[:, -1:]
        choice = np.minimum((draw > cumulative).sum(1), k - 1)
        answer = np.full(len(galaxy), -1, np.int64)
        answer[who] = choice
        answers[question] = answer
        counts[question] = np.bincount(galaxy[who] * k + choice, minlength=n * k).reshape(n, k)
    return volunteers, counts


def votes_frame(ids: list[str], counts: dict[str, np.ndarray]) -> pl.DataFrame:
    """Vote counts in the wide catalogue shape (``<q>-euclid_<a>`` and ``_total-votes``)."""
    columns: dict[str, Any] = {"id_str": ids}
    for question, matrix in counts.items():
        for j, answer in enumerate(gz.QUESTIONS[question]):
            columns[f"{question}{gz.CATALOG_SUFFIX}_{answer}"] = matrix[:, j].astype(np.int32)
        columns[f"{question}{gz.CATALOG_SUFFIX}_total-votes"] = matrix.sum(1).astype(np.int32)
    return pl.DataFrame(columns)


# ---------------------------------------------------------------- ids and sky
def make_ids(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Euclid-like ids ``<tile>_<object id>`` with the sign of a negative object id as ``NEG``.

    The object id encodes the position as Euclid's do (RA and |Dec| in 1e-7 degrees, the sign
    of Dec on the whole), so southern galaxies get ``NEG`` ids. Returns ``(ids, ra, dec)``.
    """
    rng = np.random.default_rng([seed, 3])
    field = rng.integers(0, len(Q1_FIELDS), n)
    centre_ra = np.array([f[1] for f in Q1_FIELDS])[field]
    centre_dec = np.array([f[2] for f in Q1_FIELDS])[field]
    dec = centre_dec + rng.uniform(-1.8, 1.8, n)
    ra = (centre_ra + rng.uniform(-1.8, 1.8, n) / np.cos(np.deg2rad(dec))) % 360
    tile = 102018000 + field * 1000 + rng.integers(0, 1000, n)
    ids = []
    for t, r, d in zip(tile.tolist(), ra.tolist(), dec.tolist()):
        number = round(r * 1e7) * 10**9 + round(abs(d) * 1e7)
        ids.append(f"{t}_{'NEG' if d < 0 else ''}{number}")
    if len(set(ids)) != n:  # positions are continuous: a repeat means a broken generator
        raise RuntimeError("synthetic ids collided")
    return ids, ra, dec


# ---------------------------------------------------------------- the lake
def synthesize(lake, n: int, image_size: int = BASE_SIZE, seed: int = 0, test_fraction: float = 0.2,
               batch_size: int = 256, progress: bool = False) -> dict[str, Any]:
    """Fill ``galaxies``, ``images``, ``votes`` (catalog volunteers) and ``truth`` with ``n``
    synthetic galaxies, in one transaction. Returns a summary: counts per split and the ids of
    the partitions written."""
    if not 0 <= test_fraction < 1:
        raise InputError(f"test fraction must be in [0, 1), got {test_fraction}")
    pop = draw_population(n, image_size, seed)
    ids, ra, dec = make_ids(n, seed)
    split = np.where(np.random.default_rng([seed, 4]).random(n) < test_fraction, "test", "train")
    volunteers, counts = simulate_volunteers(pop, seed, image_size)
    votes = votes_long(votes_frame(ids, counts))
    truth = truth_matrix(pop)
    id_arr = np.array(ids, dtype=object)
    params = {"n": n, "image_size": image_size, "seed": seed, "test_fraction": test_fraction}
    summary: dict[str, Any] = {"galaxies": n, "splits": {}}
    with lake.transaction("synth", params, upstream=[]) as tx:
        writers = {}
        for name in ("train", "test"):
            if (split == name).any():
                writers[name] = tx.writer("images", {"split": name},
                                          info={"image_size": image_size, "format": "png"})
        starts = range(0, n, batch_size)
        if progress:
            from tqdm import tqdm
            starts = tqdm(starts, desc="render", unit="batch", leave=False, disable=None)
        for start in starts:
            index = np.arange(start, min(start + batch_size, n))
            pngs = np.array(render_png(pop, index, image_size, seed), dtype=object)
            for name, writer in writers.items():
                keep = split[index] == name
                if keep.any():
                    writer.write(pa.table({"id_str": id_arr[index][keep].tolist(),
                                           "image": pa.array(pngs[keep].tolist(), pa.binary())}))
        for name, writer in writers.items():
            writer.close()
            mask = split == name
            chosen = id_arr[mask].tolist()
            tx.write("galaxies", pl.DataFrame({"id_str": chosen, "source": SOURCE,
                                               "ra": ra[mask], "dec": dec[mask]}),
                     partition={"split": name})
            tx.write("votes", votes.filter(pl.col("id_str").is_in(chosen)),
                     partition={"catalog": "volunteers", "split": name},
                     info={"volunteers_median": float(np.median(volunteers[mask]))})
            sub = truth[mask]
            tx.write("truth", pl.DataFrame({
                "id_str": np.repeat(id_arr[mask], len(FACTORS)).tolist(),
                "factor": np.tile(np.array(FACTORS, dtype=object), mask.sum()).tolist(),
                "value": sub.reshape(-1)}).with_columns(pl.col("value").fill_nan(None)),
                partition={"split": name})
            summary["splits"][name] = int(mask.sum())
        tx.write("catalogs", catalog_row("volunteers", "votes", gz.TREE.name, len(gz.LABEL_NAMES), None))
    summary["volunteers_median"] = float(np.median(volunteers))
    return summary
