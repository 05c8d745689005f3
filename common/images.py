"""Image sniffing and decoding: untrusted bytes in, one loaded upright RGB image out.

The format is decided by magic bytes alone (never by HTTP headers or file names), and the pixel count is
checked from the header before any pixel is decoded. AVIF is read by Pillow itself, HEIC/HEIF by the
pillow-heif plugin; where either is missing, such files end ``unsupported_format``. Every failure is an
``ItemError`` with a stable code: ``empty_body``, ``not_an_image``, ``unsupported_format``,
``decompression_bomb``, ``truncated_image``, ``corrupt_image``.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from common.errors import ItemError

logger = logging.getLogger(__name__)

try:
    from pillow_heif import register_heif_opener
except ImportError:  # the worker extra installs it; without it HEIC is unsupported_format
    HEIF_READABLE = False
else:
    register_heif_opener()
    HEIF_READABLE = True

MAX_PIXELS_SETTING = "ATELIER_FETCH__MAX_PIXELS"

# (offset, magic, Pillow format name)
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (8, b"WEBP", "WEBP"),  # after b"RIFF" + 4-byte size, checked below
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"II+\x00", "TIFF"),  # BigTIFF
    (0, b"MM\x00+", "TIFF"),
)

# ISO base media files (AVIF, HEIC): a "ftyp" box at offset 4 whose brands name the format
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
)

# What malformed input makes Pillow's parsers and decoders raise (found by fuzzing every supported format).
_DECODE_ERRORS: tuple[type[Exception], ...] = (OSError, SyntaxError, ValueError, EOFError, struct.error)

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_WHITE = (255, 255, 255, 255)


def sniff_format(data: bytes) -> str:
    """The Pillow format name of ``data`` judged by its magic bytes: JPEG, PNG, GIF, WEBP, BMP, TIFF, AVIF
    or HEIF."""
    if not data:
        raise ItemError("empty_body", "no bytes to decode (0-byte body)")
    for offset, magic, name in _MAGIC:
        if data.startswith(magic, offset) and (name != "WEBP" or data.startswith(b"RIFF")):
            return name
    brands = _ftyp_brands(data)
    if brands & _AVIF_BRANDS:
        return "AVIF"
    if brands & _HEIF_BRANDS:
        return "HEIF"
    raise ItemError("not_an_image", f"no known image signature; first bytes {data[:8]!r}")


def _ftyp_brands(data: bytes) -> set[bytes]:
    """The major and compatible brands of an ISO base media file's leading ``ftyp`` box; empty if none."""
    if len(data) < 16 or data[4:8] != b"ftyp":
        return set()
    size = min(struct.unpack_from(">I", data)[0], len(data))
    brands = {data[8:12]} | {data[i : i + 4] for i in range(16, size - 3, 4)}
    return brands


def _readable(fmt: str) -> bool:
    if fmt == "AVIF":
        return bool(features.check("avif"))
    if fmt == "HEIF":
        return HEIF_READABLE
    return True


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode ``data`` into a loaded RGB image: first frame, EXIF orientation applied, alpha on white.

    Images of more than ``max_pixels`` pixels (or more than Pillow's own ``MAX_IMAGE_PIXELS``) are refused
    from their header, before any pixel is decoded.
    """
    fmt = sniff_format(data)
    if not _readable(fmt):
        raise ItemError("unsupported_format", f"{fmt} image, which this installation cannot decode")
    with _decode_errors(fmt, data, max_pixels):
        image = Image.open(BytesIO(data), formats=[fmt])
        _check_pixels(image, max_pixels)
        image.seek(0)
        image.load()
    _apply_orientation(image)
    return _to_rgb(image)


@contextmanager
def _decode_errors(fmt: str, data: bytes, max_pixels: int) -> Iterator[None]:
    """Turn Pillow's exceptions into item errors. ``LOAD_TRUNCATED_IMAGES`` is never touched, so a
    truncated file raises rather than decoding to a grey tail."""
    try:
        yield
    except Image.DecompressionBombError as exc:
        raise ItemError(
            "decompression_bomb",
            f"{fmt} image over twice Pillow's limit, above {MAX_PIXELS_SETTING}={max_pixels}",
        ) from exc
    except UnidentifiedImageError as exc:
        raise ItemError(
            "unsupported_format", f"Pillow cannot read this {fmt} file; first bytes {data[:16]!r}"
        ) from exc
    except _DECODE_ERRORS as exc:
        code = "truncated_image" if _is_truncated(fmt, data, exc) else "corrupt_image"
        raise ItemError(code, f"{fmt} image of {len(data)} bytes: {exc}") from exc


def _is_truncated(fmt: str, data: bytes, exc: Exception) -> bool:
    # Pillow says "image file is truncated" or "Truncated File Read"; libwebp only says it failed, but
    # the RIFF header declares the file's length. ("broken data stream" is a decoder data error: a
    # complete file with a garbage body raises it, so it counts as corrupt.)
    if "truncated" in str(exc).lower():
        return True
    if fmt == "WEBP" and len(data) >= 8:
        declared: int = struct.unpack_from("<I", data, 4)[0]
        return len(data) < declared + 8
    return False


def _check_pixels(image: Image.Image, max_pixels: int) -> None:
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that. Lowering our limit to its threshold
    # turns that warning into a refusal without touching global warning filters or Pillow's settings.
    pillow_limit = Image.MAX_IMAGE_PIXELS
    limit = max_pixels if pillow_limit is None else min(max_pixels, pillow_limit)
    width, height = image.size
    if width * height > limit:
        lower = "" if limit == max_pixels else f" (Pillow's own limit, {limit}, is lower)"
        raise ItemError(
            "decompression_bomb",
            f"{width}x{height} = {width * height} pixels exceeds {MAX_PIXELS_SETTING}={max_pixels}{lower}",
        )
    if width * height == 0:
        raise ItemError("corrupt_image", f"header declares an empty {width}x{height} image")


def _apply_orientation(image: Image.Image) -> None:
    """Rotate per the EXIF Orientation tag, in place. Broken EXIF leaves the image as stored: the
    pixels are fine, only the orientation hint is lost."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except _DECODE_ERRORS as exc:
        logger.debug("ignoring unreadable EXIF orientation: %s", exc)


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_to_rgb(image)
    try:
        if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB", "1") and "transparency" in image.info):
            rgba = image.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
        return image if mode == "RGB" else image.convert("RGB")
    except ValueError as exc:
        raise ItemError("unsupported_format", f"image mode {mode!r} cannot be converted to RGB") from exc


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """Scale 16-bit and 32-bit integer samples from 0..65535 and float samples from 0..1 (or 0..255 when
    any exceeds 1) to 8 bits, rounding rather than clipping."""
    samples = np.asarray(image)
    if image.mode == "F":
        values = np.nan_to_num(samples.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        eight_bit = np.clip(np.rint(values * scale), 0, 255)
    else:
        wide = np.clip(samples.astype(np.int64), 0, 65535)
        eight_bit = (wide * 255 + 32767) // 65535
    return Image.fromarray(eight_bit.astype(np.uint8)).convert("RGB")
