"""Decoding: every accepted format, orientation, odd modes, and every kind of bad file."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lookalike.images import ImageError, decode, is_image_path
from tests.conftest import skimage_photo


def _bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "HEIF"])
def test_every_format_decodes_to_rgb(fmt: str) -> None:
    photo = skimage_photo("coffee")
    image = decode(_bytes(photo, fmt))
    assert image.mode == "RGB"
    assert image.size == photo.size
    # Lossy formats stay close to the original: the mean colour survives.
    diff = np.abs(np.asarray(image, float).mean((0, 1)) - np.asarray(photo, float).mean((0, 1)))
    assert diff.max() < 12


def test_gif_first_frame_is_used() -> None:
    red, blue = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")
    data = _bytes(red, "GIF", save_all=True, append_images=[blue])
    assert decode(data).getpixel((5, 5))[0] > 200


def test_exif_orientation_is_applied() -> None:
    photo = Image.new("RGB", (60, 30), "white")
    photo.paste(Image.new("RGB", (10, 30), "black"), (0, 0))  # black band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display after a 90° clockwise turn
    image = decode(_bytes(photo, "JPEG", exif=exif))
    assert image.size == (30, 60)
    top = np.asarray(image)[:8].mean()
    bottom = np.asarray(image)[-8:].mean()
    assert top < 60 < 200 < bottom  # the band that was on the left is now on top


def test_cmyk_16bit_palette_and_alpha() -> None:
    photo = skimage_photo("astronaut")
    cmyk = decode(_bytes(photo.convert("CMYK"), "JPEG"))
    assert cmyk.mode == "RGB"
    assert abs(np.asarray(cmyk, float).mean() - np.asarray(photo, float).mean()) < 15

    gradient = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    image16 = decode(_bytes(Image.fromarray(gradient), "PNG"))
    pixels = np.asarray(image16)[..., 0]
    assert image16.mode == "RGB" and pixels.max() >= 250 and pixels.min() == 0

    palette = decode(_bytes(photo.convert("P"), "PNG"))
    assert palette.mode == "RGB"

    transparent = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    assert decode(_bytes(transparent, "PNG")).getpixel((3, 3)) == (255, 255, 255)


def test_mislabelled_file_decodes_by_content(tmp_path) -> None:
    path = tmp_path / "really_a_png.jpg"
    path.write_bytes(_bytes(skimage_photo("rocket"), "PNG"))
    assert decode(path).size == (640, 427)


def test_draft_decodes_large_jpeg_at_reduced_scale() -> None:
    big = skimage_photo("astronaut").resize((2048, 2048))
    image = decode(_bytes(big, "JPEG"), min_side=224)
    assert 224 <= min(image.size) < 1024


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, I am a text file\n" * 10, "not an image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 200, "image"),
    ],
)
def test_bad_bytes_raise_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        decode(data)


def test_truncated_jpeg_is_refused() -> None:
    data = _bytes(skimage_photo("coffee"), "JPEG")
    with pytest.raises(ImageError, match="truncated"):
        decode(data[: len(data) // 2])


def test_decompression_bomb_is_refused_before_decoding() -> None:
    # A valid PNG header claiming 100000 x 100000 pixels with a tiny compressed body.
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    )
    with pytest.raises(ImageError, match="decompression bomb"):
        decode(png + chunk(b"IEND", b""))


def test_is_image_path() -> None:
    assert is_image_path("a/B.JPG") and is_image_path("x.heic")
    assert not is_image_path("notes.txt")
