"""Decoding safety (issue #18, items 7 and 8): a pixel cap before decoding, 16-bit PNGs scaled."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from galsae_lake.encoders import decode_image
from galsae_lake.images import MAX_PIXELS, open_image


def bomb_png(side: int = 12_000) -> bytes:
    """A PNG of side x side pixels (144 megapixels) that is a few kB on disk."""
    out = io.BytesIO()
    Image.new("1", (side, side)).save(out, "PNG")
    return out.getvalue()


def sixteen_bit_png(size: int = 64) -> tuple[bytes, np.ndarray]:
    values = np.linspace(0, 65535, size * size).reshape(size, size).astype(np.uint16)
    out = io.BytesIO()
    Image.fromarray(values).save(out, "PNG")  # mode I;16
    return out.getvalue(), values


def small_png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def test_a_decompression_bomb_is_refused_before_decoding():
    data = bomb_png()
    assert len(data) < 200_000 and 12_000 ** 2 > MAX_PIXELS
    with pytest.raises(ValueError, match="over the cap"):
        decode_image(data, 64)
    with pytest.raises(ValueError, match="over the cap"):
        open_image(data)


def test_sixteen_bit_pngs_are_scaled_not_clipped():
    data, values = sixteen_bit_png()
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    pixels = decode_image(data, 64)
    assert pixels.shape == (64, 64, 3)
    assert (pixels == 255).mean() < 0.01  # clipped, 99.6% of them were 255
    expected = np.rint(values / 257.0)
    assert np.abs(pixels[..., 0].astype(float) - expected).max() <= 1


def test_embed_reports_a_bomb_as_corrupt_and_decodes_the_rest():
    """embed's decoding workers: the bomb is a failed (corrupt) image, never zero-filled."""
    from galsae_lake.encoders.extraction import _ImageBatches, _Piece

    blobs = [small_png(0), bomb_png(), small_png(1)]
    pixels, kept, failed, last = _ImageBatches(64)[_Piece([0, 1, 2], blobs, True)]
    assert pixels.shape == (2, 64, 64, 3) and kept.tolist() == [0, 2]
    assert failed[0][0] == 1 and "over the cap" in failed[0][1]
