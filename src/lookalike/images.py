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
from dataclasses import dataclass
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

#: Camera RAW suffixes (decoded by rawpy/LibRaw: :func:`decode_raw`).
RAW_SUFFIXES = frozenset({".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".dng", ".rw2", ".pef"})
#: File suffixes that a folder walk treats as images (matched case-insensitively).
IMAGE_SUFFIXES = (
    frozenset(
        {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic"}
        | {".heif"}
    )
    | RAW_SUFFIXES
)
#: A RAW file's embedded preview is used when its shorter side is at least this (or the
#: ``min_side`` asked for, when larger); else the sensor data is demosaiced at half size.
RAW_PREVIEW_MIN = 512
#: Formats Pillow may report for a file we accept (content decides, not the suffix).
FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "DIB", "GIF", "TIFF", "HEIF", "AVIF"})
#: Largest image, in pixels, that is decoded (a 100-megapixel photo is fine; a bomb is not).
MAX_PIXELS = 120_000_000

#: Largest peak, in bytes, one decode may hold unless the caller says otherwise (see
#: :func:`decode_cost`): a 120 MP RGB photo fits, twice over.
MAX_DECODE_BYTES = 1 << 30
#: Formats whose decoder fills buffers of its own besides the image (measured peaks: WebP
#: decodes into RGBA buffers that Pillow copies and converts; GIF keeps frame state).
FORMAT_BUFFERS = {"WEBP": 4, "GIF": 3, "HEIF": 2, "AVIF": 2}
#: Rows are converted to RGB in strips whose widest intermediate takes this many bytes (a
#: strip makes a few: crops, alpha composites, float64 arrays for 16-bit grey).
STRIP_BYTES = 4 << 20
STRIP_COPIES = 6
#: Decoder state, tables and Python objects on top of the pixels.
DECODE_OVERHEAD = 24 << 20
#: Modes converted strip by strip (each strip makes intermediates of its own).
STRIPPED = frozenset(
    {"RGBA", "LA", "PA", "RGBa", "La", "P", "I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
)
#: Modes scaled to 8 bits through NumPy with the whole image's extrema.
SCALED = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
ORIENTATION = 0x0112
#: EXIF orientation -> the transposition that makes the image upright (as ImageOps does).
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

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
    max_bytes: int = MAX_DECODE_BYTES,
) -> Image.Image:
    """Decode ``source`` into an upright 8-bit RGB image.

    Args:
        source: a path, the file's bytes, or an already opened PIL image.
        min_side: when set, large JPEGs are decoded at a reduced scale (libjpeg's DCT scaling)
            whose shorter side is still at least ``min_side``: much faster for big photos.
        max_pixels: larger images are refused as possible decompression bombs.
        max_bytes: the memory the decode may hold at its peak, estimated from the header
            (:func:`decode_cost`): a JPEG is decoded at a reduced scale to fit, another format
            is reduced while it is converted when its pixels fit but the conversion would not,
            and refused when its decoded pixels alone would not fit.

    Raises:
        ImageError: empty, truncated, corrupt, unsupported, or too large.
    """
    if isinstance(source, Image.Image):
        return to_rgb(ImageOps.exif_transpose(source))
    if isinstance(source, str | Path):
        source = Path(source).read_bytes()
    if is_raw(source):
        raw = decode_raw(source, min_side=min_side, max_pixels=max_pixels)
        if raw is not None:
            return raw
    image = _open(source, max_pixels)
    plan = _plan(image, min_side, max_bytes)
    if plan.draft is not None:
        image.draft("RGB", plan.draft)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF/ICC chatter; real failures raise below
            image.load()
            orientation = _orientation(image)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg:
            raise ImageError("truncated image (file ends early)") from None
        raise ImageError(f"corrupt image data: {msg}") from None
    # Converted (and reduced) first, turned upright after: the copy a turn makes is of the
    # smallest image, and nothing is copied when the image is already upright.
    rgb = _to_rgb(image, plan.reduce)
    del image
    if orientation is not None:
        rgb = rgb.transpose(orientation)
    return rgb


def is_raw(data: bytes) -> bool:
    """Whether ``data`` may be a camera RAW file: CR3 (ISO media, ``crx``), RAF, ORF, RW2, or a
    TIFF structure (CR2, NEF, ARW, DNG, PEF are TIFF-based; :func:`decode_raw` tells them from
    an ordinary TIFF)."""
    head = bytes(data[:16])
    return (
        head[:4] in (b"II*\x00", b"MM\x00*", b"IIRO", b"IIRS", b"MMOR", b"IIU\x00")
        or head[4:12] == b"ftypcrx "
        or head[:15] == b"FUJIFILMCCD-RAW"
    )


def decode_raw(
    data: bytes, *, min_side: int | None = None, max_pixels: int = MAX_PIXELS
) -> Image.Image | None:
    """A camera RAW file as upright 8-bit RGB: its embedded preview when that is large enough
    (its shorter side at least ``min_side`` and :data:`RAW_PREVIEW_MIN`: what a search needs,
    at JPEG speed), else the sensor data demosaiced at half size (LibRaw's fast path: each
    2x2 Bayer block becomes one pixel; camera white balance). None when LibRaw does not know
    the format (an ordinary TIFF: Pillow reads it).

    Raises:
        ImageError: a RAW file LibRaw cannot read (corrupt, truncated), rawpy not installed,
            or more pixels than ``max_pixels``.
    """
    try:
        import rawpy
    except ImportError:  # pragma: no cover - rawpy is a dependency
        if bytes(data[:4]) in (b"II*\x00", b"MM\x00*"):
            return None  # maybe an ordinary TIFF
        raise ImageError("camera RAW files need rawpy: pip install rawpy") from None
    try:
        raw = rawpy.imread(io.BytesIO(data))
    except rawpy.LibRawFileUnsupportedError:
        return None
    except (rawpy.LibRawError, OSError, ValueError) as exc:
        raise ImageError(f"unreadable RAW file: {exc}") from None
    with raw:
        sizes = raw.sizes
        if sizes.width * sizes.height > max_pixels:
            raise ImageError(
                f"too many pixels ({sizes.width}x{sizes.height}); refused as a possible "
                "decompression bomb"
            )
        wanted = max(min_side or 0, RAW_PREVIEW_MIN)
        preview = _raw_preview(raw, rawpy, wanted, max_pixels)
        if preview is not None:
            turn = _RAW_FLIPS.get(int(sizes.flip))
            return preview.transpose(turn) if turn is not None else preview
        try:
            pixels = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
        except (rawpy.LibRawError, MemoryError, ValueError) as exc:
            raise ImageError(f"cannot demosaic RAW file: {exc}") from None
    return Image.fromarray(np.ascontiguousarray(pixels[..., :3]), "RGB")


#: LibRaw's ``flip`` -> the turn that makes its preview upright.
_RAW_FLIPS = {
    3: Image.Transpose.ROTATE_180,
    5: Image.Transpose.ROTATE_90,
    6: Image.Transpose.ROTATE_270,
}


def _raw_preview(raw: object, rawpy: object, wanted: int, max_pixels: int) -> Image.Image | None:
    """The embedded preview, decoded, when its shorter side is at least ``wanted``."""
    try:
        thumb = raw.extract_thumb()  # type: ignore[attr-defined]
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):  # type: ignore[attr-defined]
        return None
    except rawpy.LibRawError:  # type: ignore[attr-defined]
        return None
    try:
        if thumb.format == rawpy.ThumbFormat.JPEG:  # type: ignore[attr-defined]
            image = Image.open(io.BytesIO(thumb.data))
            if min(image.size) < wanted or image.size[0] * image.size[1] > max_pixels:
                return None
            image.draft("RGB", (wanted, wanted))  # the smallest DCT scale still that large
            image.load()
            return to_rgb(image)
        array = np.asarray(thumb.data)
        if array.ndim != 3 or min(array.shape[:2]) < wanted:
            return None
        return Image.fromarray(np.ascontiguousarray(array[..., :3]).astype(np.uint8), "RGB")
    except (OSError, ValueError, SyntaxError):
        return None


def decode_cost(
    source: str | Path | bytes,
    *,
    min_side: int | None = None,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_DECODE_BYTES,
) -> int:
    """The bytes :func:`decode` with the same arguments holds at its peak, from the header.

    The decoded pixels in Pillow's storage (4 bytes a pixel for RGB and every other
    multi-band mode, 2 for 16-bit grey, 1 for grey and palette; twice that for formats whose
    decoder keeps a buffer of its own), plus the 8-bit RGB result when a conversion is needed,
    plus a turned copy for an EXIF orientation: after the JPEG draft scale or the reduction
    that ``max_bytes`` asks for. A caller that admits decodes under a memory budget reserves
    this much (a 7000x7000 16-bit RGBA PNG of 372 KB costs about 400 MB).

    Raises:
        ImageError: what :func:`decode` raises from the header (not an image, too many
            pixels, too many bytes even reduced).

    Example:
        >>> import io
        >>> buffer = io.BytesIO()
        >>> Image.new("RGBA", (1000, 1000)).save(buffer, "PNG")
        >>> decode_cost(buffer.getvalue()) // 2**20  # RGBA + RGB result + strips + decoder
        35
    """
    return _plan(_open(source, max_pixels), min_side, max_bytes).peak


@dataclass(frozen=True)
class _Plan:
    """How one image is decoded: the JPEG draft size (or None), the reduction factor applied
    while converting to RGB, and the bytes held at the peak."""

    draft: tuple[int, int] | None
    reduce: int
    peak: int


def _open(source: str | Path | bytes, max_pixels: int) -> Image.Image:
    """The image with its header read (no pixels yet), checked against ``max_pixels``."""
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
    return image


def pixel_bytes(mode: str) -> int:
    """Bytes a pixel of ``mode`` takes in Pillow's memory (RGB is stored in 4)."""
    if mode in {"1", "L", "P"}:
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def _plan(image: Image.Image, min_side: int | None, max_bytes: int) -> _Plan:
    """The draft scale or reduction that keeps the decode of ``image`` under ``max_bytes``."""
    width, height = image.size
    jpeg = image.format == "JPEG"
    turned = _orientation_hint(image)
    factor = FORMAT_BUFFERS.get(image.format or "", 1)
    # What draft() picks for (min_side, min_side): both sides stay >= min_side.
    scale = _draft_scale(width, height, min_side) if jpeg and min_side else 1

    def peak(scale: int, reduce: int) -> tuple[int, int]:
        w, h = -(-width // scale), -(-height // scale)
        mode = image.mode
        source = w * h * pixel_bytes(mode) * factor
        rw, rh = -(-w // reduce), -(-h // reduce)
        converted = 0 if (mode == "RGB" and reduce == 1) else rw * rh * 4
        final = rw * rh * 4
        strips = min(source, STRIP_COPIES * STRIP_BYTES) if converted else 0
        return source, source + converted + (final if turned else 0) + strips + DECODE_OVERHEAD

    source, total = peak(scale, 1)
    while jpeg and total > max_bytes and scale < 8:
        scale *= 2
        source, total = peak(scale, 1)
    reduce = 1
    if total > max_bytes and source + DECODE_OVERHEAD < max_bytes and not jpeg:
        while total > max_bytes and reduce < min(width, height):
            reduce += 1
            source, total = peak(scale, reduce)
    if total > max_bytes:
        raise ImageError(
            f"decoding this {width}x{height} {image.mode} {image.format} would take about "
            f"{total / 2**20:,.0f} MB, more than the {max_bytes / 2**20:,.0f} MB allowed; "
            "send a smaller image"
        )
    draft = None
    if jpeg and scale > 1:
        # The request draft() turns into ``scale``: (min_side, min_side) when that is the
        # scale min_side alone gives (as decode always did), else the size at that scale.
        natural = min_side and scale == _draft_scale(width, height, min_side)
        draft = (min_side, min_side) if natural else (width // scale, height // scale)
    return _Plan(draft, reduce, total)


def _draft_scale(width: int, height: int, side: int) -> int:
    """The DCT scale JPEG's draft() picks for a request of (side, side)."""
    fit = min(width // side, height // side)
    return next((s for s in (8, 4, 2, 1) if fit >= s), 1)


def _orientation_hint(image: Image.Image) -> bool:
    """Whether the header says the image is stored turned (so decoding copies it once more)."""
    try:
        if image.format == "PNG" and "exif" not in image.info:
            return False  # an eXIf chunk after the pixels is found only by loading them
        return image.getexif().get(ORIENTATION, 1) not in (1, None)
    except Exception:  # a damaged EXIF block: decode() finds out
        return False


def _orientation(image: Image.Image) -> Image.Transpose | None:
    """The transposition that makes a loaded image upright (``ImageOps.exif_transpose``'s)."""
    try:
        orientation = image.getexif().get(ORIENTATION, 1)
    except Exception:
        return None
    return TRANSPOSE.get(orientation)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha composited over white, 16-bit scaled)."""
    return _to_rgb(image, 1)


def _to_rgb(image: Image.Image, reduce: int) -> Image.Image:
    """8-bit RGB, reduced ``reduce`` times per side (box filter), converted in strips of rows
    so that the peak is the source plus the result, never a few full-size intermediates."""
    mode = image.mode
    if reduce == 1 and (mode == "RGB" or mode not in STRIPPED):
        return image if mode == "RGB" else image.convert("RGB")
    width, height = image.size
    out = Image.new("RGB", (-(-width // reduce), -(-height // reduce)))
    extrema = image.getextrema() if mode in SCALED else None
    widest = 8 if mode in SCALED else 4  # float64 grey; RGBA
    rows = max(1, STRIP_BYTES // (width * widest))
    rows = max(reduce, rows - rows % reduce)
    for top in range(0, height, rows):
        strip = _strip_to_rgb(image.crop((0, top, width, min(height, top + rows))), extrema)
        if reduce > 1:
            strip = strip.reduce(reduce)
        out.paste(strip, (0, top // reduce))
    return out


def _strip_to_rgb(image: Image.Image, extrema: object) -> Image.Image:
    mode = image.mode
    if mode in SCALED:
        low, high = extrema  # type: ignore[misc]
        return Image.fromarray(_to_uint8(np.asarray(image), low, high), "L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _to_uint8(array: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """8-bit grey from 16-bit, 32-bit or float grey; ``low``/``high`` are the whole image's
    extrema when ``array`` is one strip of it."""
    array = array.astype(np.float64)
    if low is None or high is None:
        low, high = (array.min(), array.max()) if array.size else (0, 0)
    lo, hi = float(low), float(high)
    if hi <= 255 and lo >= 0:
        return array.astype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return (array / 257.0).round().astype(np.uint8)  # 16-bit range to 8-bit
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
