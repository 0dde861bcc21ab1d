"""Decoding galaxy cutouts safely: a pixel cap checked before decoding, and 16-bit images scaled.

Every reader of the ``images`` table's bytes (``embed``, the stand-in encoders' training, the
figures' galleries) opens them here:

- :func:`open_image` reads only the header first and refuses an image of more than
  :data:`MAX_PIXELS` pixels *before* decoding it (a 140 kB PNG can hold 144 megapixels, 1.5 GB
  decoded; such an image is reported as corrupt, like any other unreadable image).
- :func:`to_rgb` scales 16-bit greyscale (PNG ``I;16``/``I``) to 8 bits (value / 257) instead of
  clipping at 255, which turned 99.5% of a 16-bit cutout white.
"""

from __future__ import annotations

import io

import numpy as np

#: the most pixels an image may have to be decoded (a 5,000 x 5,000 cutout; 75 MB as RGB)
MAX_PIXELS = 25_000_000

_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def open_image(data: bytes, max_pixels: int = MAX_PIXELS):
    """A PIL image of PNG/JPEG ``data``, its header read, not yet decoded; ``ValueError`` for
    an unreadable image or one over ``max_pixels`` pixels."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise ValueError("not a readable PNG/JPEG image") from None
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise ValueError(f"image of {width} x {height} pixels is over the cap of "
                         f"{max_pixels:,} pixels (not decoded)")
    return img


def to_rgb(img):
    """``img`` as 8-bit RGB; 16-bit greyscale is scaled (value / 257), not clipped."""
    from PIL import Image

    if img.mode in _SIXTEEN_BIT:
        values = np.asarray(img, dtype=np.float64)
        grey = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return img.convert("RGB")
