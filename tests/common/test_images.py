"""Sniffing and decoding of real encoded images, each made with Pillow or byte by byte."""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from io import BytesIO
from typing import Any

import pytest
from PIL import Image, ImageFile, features

from common import images
from common.errors import ItemError
from common.images import decode_image, sniff_format

MAX_PIXELS = 1_000_000
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def crafted_png(width: int, height: int, idat: bytes, *, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def zero_filled_png(side: int) -> bytes:
    """A genuine ``side`` x ``side`` black 1-bit PNG: huge when decoded, tiny on the wire."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    rows_per_call = 1000
    idat = b"".join(compressor.compress(row * rows_per_call) for _ in range(side // rows_per_call))
    idat += compressor.compress(row * (side % rows_per_call)) + compressor.flush()
    return crafted_png(side, side, idat, bit_depth=1, colour_type=0)


def pixel(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    value = image.getpixel((x, y))
    assert isinstance(value, tuple)
    return value


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 6) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def decode_error(data: bytes, max_pixels: int = MAX_PIXELS) -> ItemError:
    with pytest.raises(ItemError) as caught:
        decode_image(data, max_pixels)
    return caught.value


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_every_supported_format_is_sniffed_and_decoded(fmt: str) -> None:
    data = encode(Image.new("RGB", (30, 20), (200, 40, 60)), fmt)

    assert sniff_format(data) == fmt
    image = decode_image(data, MAX_PIXELS)

    assert (image.mode, image.size) == ("RGB", (30, 20))
    assert close_to(pixel(image, 15, 10), (200, 40, 60), tolerance=10)


def test_big_endian_tiff_is_sniffed() -> None:
    assert sniff_format(b"MM\x00*\x00\x00\x00\x08") == "TIFF"


def test_empty_body_is_refused() -> None:
    with pytest.raises(ItemError) as caught:
        sniff_format(b"")
    assert caught.value.code == "empty_body"


@pytest.mark.parametrize(
    "data",
    [
        b"<!doctype html><html>",
        b"RIFF\x24\x00\x00\x00WAVEfmt ",
        b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2",
    ],
)
def test_non_images_are_refused_quoting_their_first_bytes(data: bytes) -> None:
    error = decode_error(data)

    assert error.code == "not_an_image"
    assert repr(data[:8]) in error.detail
    assert not error.transient


def test_exif_orientation_is_applied() -> None:
    # given a 40x20 picture, red on the left, stored sideways with Orientation 6 (rotate 90° clockwise)
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6

    # when
    image = decode_image(encode(stored, "JPEG", exif=exif, quality=95), MAX_PIXELS)

    # then it stands upright: 20 wide, 40 high, the left half now on top
    assert image.size == (20, 40)
    assert close_to(pixel(image, 10, 5), RED)
    assert close_to(pixel(image, 10, 35), BLUE)


def test_unreadable_exif_keeps_the_image_as_stored() -> None:
    data = encode(Image.new("RGB", (40, 20), GREEN), "PNG", exif=b"XX*\x00\x08\x00\x00\x00")

    image = decode_image(data, MAX_PIXELS)

    assert image.size == (40, 20)
    assert image.getpixel((0, 0)) == GREEN


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)

    image = decode_image(data, MAX_PIXELS)

    assert image.mode == "RGB"
    assert close_to(pixel(image, 8, 8), RED)


def test_16_bit_png_is_scaled_not_clipped() -> None:
    # given a 16-bit greyscale PNG
    deep = Image.new("I;16", (4, 1))
    for x, value in enumerate((65535, 32768, 257, 0)):
        deep.putpixel((x, 0), value)
    data = encode(deep, "PNG")
    assert Image.open(BytesIO(data)).mode == "I;16"

    # when
    image = decode_image(data, MAX_PIXELS)

    # then the whole range maps onto 0..255
    assert [image.getpixel((x, 0)) for x in range(4)] == [(255,) * 3, (128,) * 3, (1,) * 3, (0,) * 3]


def test_float_tiff_is_scaled_from_unit_range() -> None:
    floats = Image.new("F", (3, 1))
    for x, value in enumerate((1.0, 0.5, 0.0)):
        floats.putpixel((x, 0), value)

    image = decode_image(encode(floats, "TIFF"), MAX_PIXELS)

    assert [pixel(image, x, 0)[0] for x in range(3)] == [255, 128, 0]


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_is_composited_on_white(fmt: str) -> None:
    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([0, 0, 0, 255, 0, 0])
    palette_image.putpixel((1, 0), 1)

    image = decode_image(encode(palette_image, fmt, transparency=0), MAX_PIXELS)

    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((1, 0)) == RED


def test_rgba_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (3, 1))
    rgba.putpixel((0, 0), (0, 0, 255, 0))
    rgba.putpixel((1, 0), (0, 0, 255, 255))
    rgba.putpixel((2, 0), (0, 0, 0, 128))

    image = decode_image(encode(rgba, "PNG"), MAX_PIXELS)

    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((1, 0)) == BLUE
    assert close_to(pixel(image, 2, 0), (127, 127, 127), tolerance=1)


def test_grey_with_alpha_is_composited_on_white() -> None:
    grey_alpha = Image.new("LA", (2, 1))
    grey_alpha.putpixel((0, 0), (0, 0))
    grey_alpha.putpixel((1, 0), (100, 255))

    image = decode_image(encode(grey_alpha, "PNG"), MAX_PIXELS)

    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((1, 0)) == (100, 100, 100)


def test_rgb_colour_key_transparency_is_composited_on_white() -> None:
    keyed = Image.new("RGB", (2, 1), GREEN)
    keyed.putpixel((1, 0), RED)

    image = decode_image(encode(keyed, "PNG", transparency=GREEN), MAX_PIXELS)

    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((1, 0)) == RED


def test_bilevel_becomes_rgb() -> None:
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)

    image = decode_image(encode(bilevel, "PNG"), MAX_PIXELS)

    assert [image.getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), WHITE]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_yields_its_first_frame(fmt: str) -> None:
    red, green, blue = (Image.new("RGB", (8, 8), colour) for colour in (RED, GREEN, BLUE))
    data = encode(red, fmt, save_all=True, append_images=[green, blue], duration=100, loop=0)
    assert getattr(Image.open(BytesIO(data)), "n_frames", 1) == 3

    image = decode_image(data, MAX_PIXELS)

    assert close_to(pixel(image, 4, 4), RED, tolerance=10)


def test_pixel_limit_refuses_from_the_header() -> None:
    data = encode(Image.new("RGB", (300, 300)), "PNG")

    error = decode_error(data, max_pixels=10_000)

    assert error.code == "decompression_bomb"
    assert "300x300" in error.detail
    assert "ATELIER_FETCH__MAX_PIXELS=10000" in error.detail
    assert str(Image.MAX_IMAGE_PIXELS) not in error.detail


def test_pillow_bomb_error_quotes_our_limit() -> None:
    # 20000x20000 is over twice Pillow's limit: Pillow itself refuses it while opening
    error = decode_error(zero_filled_png(20_000), max_pixels=64_000_000)

    assert error.code == "decompression_bomb"
    assert "ATELIER_FETCH__MAX_PIXELS=64000000" in error.detail
    assert Image.MAX_IMAGE_PIXELS is not None
    assert str(2 * Image.MAX_IMAGE_PIXELS) not in error.detail


def test_compressed_bomb_is_refused_without_decoding() -> None:
    # given a genuine 20000x20000 PNG (400 megapixels) that is ~50 kB on the wire
    data = zero_filled_png(20_000)
    assert len(data) < 100_000

    # when
    tracemalloc.start()
    try:
        error = decode_error(data, max_pixels=64_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    # then it is refused before any pixel memory is allocated (decoding would need 1.2 GB)
    assert error.code == "decompression_bomb"
    assert peak < 20 * 1024 * 1024


def test_pillow_bomb_warning_range_is_refused_even_with_a_higher_limit() -> None:
    # 10000x10000 lies between Pillow's warning and error thresholds; the body is garbage, so only a
    # check made from the header (before decoding) can give decompression_bomb rather than corrupt_image.
    data = crafted_png(10_000, 10_000, b"garbage")

    with pytest.warns(Image.DecompressionBombWarning):
        error = decode_error(data, max_pixels=10**9)

    assert error.code == "decompression_bomb"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_truncated_images_are_refused(fmt: str) -> None:
    data = encode(Image.effect_noise((64, 64), 64).convert("RGB"), fmt)

    error = decode_error(data[: len(data) // 2])

    assert error.code == "truncated_image"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupt_png_body_is_refused() -> None:
    # a valid signature and IHDR, then an IDAT of garbage with a correct CRC
    data = crafted_png(16, 16, bytes(range(7, 207)))

    error = decode_error(data)

    assert error.code == "corrupt_image"
    assert not error.transient


def test_unreadable_header_behind_valid_magic_is_unsupported() -> None:
    error = decode_error(b"GIF89a\x00\x00")

    assert error.code == "unsupported_format"


# --- AVIF and HEIC ------------------------------------------------------------------------------------


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF support")
def test_avif_is_sniffed_and_decoded() -> None:
    data = encode(Image.new("RGB", (30, 20), (200, 40, 60)), "AVIF", quality=90)

    assert sniff_format(data) == "AVIF"
    image = decode_image(data, MAX_PIXELS)

    assert (image.mode, image.size) == ("RGB", (30, 20))
    assert close_to(pixel(image, 15, 10), (200, 40, 60), tolerance=12)


@pytest.mark.skipif(not images.HEIF_READABLE, reason="pillow-heif is not installed")
def test_heic_is_sniffed_and_decoded() -> None:
    data = encode(Image.new("RGB", (30, 20), (200, 40, 60)), "HEIF", quality=90)
    assert data[4:12] == b"ftypheic"

    assert sniff_format(data) == "HEIF"
    image = decode_image(data, MAX_PIXELS)

    assert (image.mode, image.size) == ("RGB", (30, 20))
    assert close_to(pixel(image, 15, 10), (200, 40, 60), tolerance=12)


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF support")
def test_avif_bomb_is_refused_from_the_header() -> None:
    error = decode_error(encode(Image.new("RGB", (300, 300)), "AVIF"), max_pixels=10_000)

    assert error.code == "decompression_bomb"


@pytest.mark.parametrize(
    ("fmt", "brand", "switch"), [("AVIF", b"avif", "avif_support"), ("HEIF", b"heic", "heif_support")]
)
def test_format_this_installation_cannot_read_is_unsupported(
    fmt: str, brand: bytes, switch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an installation without the decoder (Pillow built without libavif, no pillow-heif)
    if switch == "avif_support":
        monkeypatch.setattr(features, "check", lambda feature: False)
    else:
        monkeypatch.setattr(images, "HEIF_READABLE", False)
    data = b"\x00\x00\x00\x1cftyp" + brand + b"\x00\x00\x00\x00mif1miaf" + b"\x00" * 32

    # when
    error = decode_error(data)

    # then it is an image of a format we cannot read, not "not an image"
    assert (error.code, error.transient) == ("unsupported_format", False)
    assert fmt in error.detail


def test_avif_header_without_image_data_is_unsupported() -> None:
    data = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf"

    # a header alone: recognised as AVIF (not "not an image"), and refused by the decoder
    error = decode_error(data)

    assert error.code == "unsupported_format"
    assert "AVIF" in error.detail
