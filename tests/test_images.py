"""Safe image input: each bad file gets a clear UserError; odd but valid images come out as upright RGB."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from engine.images.loading import fit_to, load_image
from engine.request import UserError


def _png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming width x height, with a tiny IDAT: no pixels to speak of."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _noise(width: int = 64, height: int = 48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(UserError, match="The edge control image was not found at .*Check the path"):
        load_image(tmp_path / "nope.png", what="the edge control image")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(UserError, match=r"Image is an empty file \(0 bytes\)"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(UserError, match="is a folder"):
        load_image(tmp_path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path, fmt):
    data = _encoded(_noise(), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="The init image is damaged or incomplete"):
        load_image(path, what="the init image")
    assert load_image(_encoded(_noise(), fmt)).size == (64, 48)  # the next request works


def test_not_images(tmp_path):
    html = tmp_path / "photo.png"
    html.write_text("<!DOCTYPE html>\n<html><body><img src='x.png'></body></html>")
    with pytest.raises(UserError, match=r"web page \(HTML\)"):
        load_image(html)
    svg = tmp_path / "drawing.png"
    svg.write_text('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    with pytest.raises(UserError, match="SVG isn't supported. Export it as PNG"):
        load_image(svg)
    with pytest.raises(UserError, match="not an image this app can read"):
        load_image(b"\x00\x01garbage" * 50)
    with pytest.raises(UserError, match="is a PDF"):
        load_image(b"%PDF-1.7\n...")


def test_decompression_bomb_is_refused_before_decoding():
    started = time.perf_counter()
    with pytest.raises(UserError, match="far more pixels than can be opened safely"):
        load_image(_png_header(100_000, 100_000))
    with pytest.raises(UserError, match=r"is 5000x5000 pixels; the limit is 16\.8 megapixels"):
        load_image(_png_header(5000, 5000))
    with pytest.raises(UserError, match="64x48 pixels; the limit is"):
        load_image(_encoded(_noise(), "PNG"), max_pixels=1000)
    assert time.perf_counter() - started < 1.0


def test_too_many_bytes(tmp_path):
    data = _encoded(_noise(), "PNG")
    with pytest.raises(UserError, match="larger than the 1 KB limit"):
        load_image(data, max_bytes=1024)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    with pytest.raises(UserError, match="over the 1 KB limit"):
        load_image(path, max_bytes=1024)
    with pytest.raises(UserError, match="larger than"):
        load_image(io.BytesIO(data), max_bytes=1024)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image = load_image(io.BytesIO(_encoded(_noise(40, 20), "JPEG", exif=exif)))
    assert image.size == (20, 40) and image.mode == "RGB"


def test_modes_are_converted():
    deep = np.full((4, 4), 65535, dtype=np.uint16)
    deep[0, 0] = 32768
    rgb = np.asarray(load_image(_encoded(Image.fromarray(deep), "PNG")))
    assert rgb[1, 1].tolist() == [255, 255, 255] and rgb[0, 0].tolist() == [128, 128, 128]

    cmyk = load_image(_encoded(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.mode == "RGB" and cmyk.getpixel((1, 1))[0] > 200 > cmyk.getpixel((1, 1))[1]

    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.info["transparency"] = 1
    data = _encoded(palette, "PNG", transparency=1)
    assert load_image(data).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(data, background="black").getpixel((0, 0)) == (0, 0, 0)

    half = Image.new("LA", (2, 2), (0, 128))
    assert load_image(half).getpixel((0, 0)) == (127, 127, 127)


def test_first_frame_of_a_long_animation():
    frames = [Image.new("P", (16, 16), i % 250) for i in range(300)]
    for frame in frames:
        frame.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    data = _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10)
    started = time.perf_counter()
    image = load_image(data)
    assert image.getpixel((0, 0)) == (0, 255, 0)
    assert time.perf_counter() - started < 1.0


def test_arrays_and_pil_images():
    assert load_image(np.zeros((8, 6), dtype=np.float32) + 1.0).getpixel((0, 0)) == (255, 255, 255)
    rgba = np.zeros((5, 7, 4), dtype=np.uint8)
    assert load_image(rgba, background="red").size == (7, 5)
    assert load_image(rgba, background="red").getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(UserError, match=r"array of shape \(3, 3, 5\)"):
        load_image(np.zeros((3, 3, 5), dtype=np.uint8), what="the depth map")
    with pytest.raises(UserError, match="values from 0 to 300"):
        load_image(np.array([[0, 300]], dtype=np.int64))
    original = Image.new("RGBA", (3, 3), (0, 0, 255, 255))
    out = load_image(original)
    assert out.mode == "RGB" and original.mode == "RGBA"
    with pytest.raises(TypeError, match="cannot read an image from a dict"):
        load_image({"path": "x.png"})


def test_fit_to_modes():
    image = Image.new("RGB", (200, 100), "red")
    image.paste((0, 0, 255), (0, 0, 50, 100))  # a blue band on the left quarter
    crop = fit_to(image, 64, 64)
    assert crop.size == (64, 64) and crop.getpixel((2, 32))[2] < 10  # the blue band was cropped away
    stretched = fit_to(image, 64, 64, "resize")
    assert stretched.size == (64, 64) and stretched.getpixel((2, 32))[2] > 245
    padded = fit_to(image, 64, 64, "pad")
    assert padded.getpixel((32, 2)) == (0, 0, 0) and padded.getpixel((60, 32))[0] > 245
    assert fit_to(image, 200, 100) is image
    with pytest.raises(ValueError, match="use one of crop, resize, pad"):
        fit_to(image, 64, 64, "squash")
