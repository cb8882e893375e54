"""Decoding and validation of image files and bytes.

Everything that reads pixels goes through :func:`decode`, so every front end handles the same
formats the same way: JPEG, PNG, WebP, BMP, GIF (first frame), TIFF and HEIC/HEIF; EXIF
orientation applied; CMYK, 16-bit, palette and alpha images turned into 8-bit RGB. Any file that
cannot be used raises :class:`ImageError` with a short reason a person can act on; callers that
index many files turn it into a reported skip.

Example:
    >>> from lookalike.images import decode
    >>> image = decode("photo.heic", min_side=224)  # doctest: +SKIP
    >>> image.mode  # doctest: +SKIP
    'RGB'
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lookalike.errors import ImageError

try:  # HEIC/HEIF support is optional at import time but a declared dependency.
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF = True
except ImportError:  # pragma: no cover - exercised only without pillow-heif
    HEIF = False

#: File suffixes that a folder walk treats as images (matched case-insensitively).
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif"}
)
#: Formats Pillow may report for a file we accept (content decides, not the suffix).
FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "DIB", "GIF", "TIFF", "HEIF", "AVIF"})
#: Largest image, in pixels, that is decoded (a 100-megapixel photo is fine; a bomb is not).
MAX_PIXELS = 120_000_000

# Our own limit is checked from the header before any pixel is decoded; Pillow's own guard would
# otherwise warn (and raise only at twice its limit).
Image.MAX_IMAGE_PIXELS = None


def is_image_path(path: str | Path) -> bool:
    """True when ``path`` has an image suffix (the content is checked only by :func:`decode`)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def decode(
    source: str | Path | bytes | Image.Image,
    *,
    min_side: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> Image.Image:
    """Decode ``source`` into an upright 8-bit RGB image.

    Args:
        source: a path, the file's bytes, or an already opened PIL image.
        min_side: when set, large JPEGs are decoded at a reduced scale (libjpeg's DCT scaling)
            whose shorter side is still at least ``min_side``: much faster for big photos.
        max_pixels: larger images are refused as possible decompression bombs.

    Raises:
        ImageError: empty, truncated, corrupt, unsupported, or too large.
    """
    if isinstance(source, Image.Image):
        return to_rgb(ImageOps.exif_transpose(source))
    data = Path(source).read_bytes() if isinstance(source, str | Path) else source
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"too many pixels (decompression bomb?): {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"unreadable image header: {exc}") from None
    if image.format not in FORMATS:
        raise ImageError(f"unsupported format {image.format}")
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"too many pixels ({width}x{height} = {width * height:,} > {max_pixels:,}); "
            "refused as a possible decompression bomb"
        )
    if width == 0 or height == 0:
        raise ImageError("image has no pixels")
    if min_side and image.format == "JPEG":
        # draft() keeps both sides >= the request, so the shorter side stays >= min_side.
        image.draft("RGB", (min_side, min_side))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF/ICC chatter; real failures raise below
            image.load()
            image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg:
            raise ImageError("truncated image (file ends early)") from None
        raise ImageError(f"corrupt image data: {msg}") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha composited over white, 16-bit scaled)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}:
        return Image.fromarray(_to_uint8(np.asarray(image)), "L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _to_uint8(array: np.ndarray) -> np.ndarray:
    array = array.astype(np.float64)
    if array.max(initial=0) <= 255 and array.min(initial=0) >= 0:
        return array.astype(np.uint8)
    if array.min() >= 0 and array.max() <= 65535:
        return (array / 257.0).round().astype(np.uint8)  # 16-bit range to 8-bit
    lo, hi = float(array.min()), float(array.max())
    return ((array - lo) / max(hi - lo, 1e-12) * 255).round().astype(np.uint8)


def bundled_photo(name: str) -> Image.Image:
    """One of scikit-image's bundled photographs (``astronaut``, ``chelsea``, ...) as 8-bit RGB:
    real pictures every installation has, for calibration, the demo and tests.

    Example:
        >>> bundled_photo("coffee").size
        (600, 400)
    """
    from skimage import data

    array = getattr(data, name)()
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return Image.fromarray(array[..., :3].astype(np.uint8), "RGB")


def thumbnail(image: Image.Image, side: int) -> Image.Image:
    """A copy of ``image`` whose longer side is at most ``side`` pixels."""
    copy = image.copy()
    copy.thumbnail((side, side), Image.Resampling.LANCZOS)
    return copy
