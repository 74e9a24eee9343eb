"""Image I/O: exact round trips, gray+alpha handling, and one-line errors for bad files, through
OpenCV and through the Pillow path a runtime without OpenCV takes (``codec`` fixture)."""

from __future__ import annotations

import importlib.util
import io
import os
import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage

from edgerestore.runtime import imageio
from edgerestore.runtime.errors import EdgeRestoreError
from edgerestore.runtime.imageio import Image, from_float, list_images, read_image, to_float, write_image

RNG = np.random.default_rng(0)
LOSSLESS = [(".png", 8), (".png", 16), (".tif", 8), (".tif", 16), (".tiff", 16), (".bmp", 8)]
CODECS = ["opencv", "pillow"]
NEEDS_OPENCV = "needs OpenCV: pip install 'edgerestore[opencv]'"


def use_codec(monkeypatch: pytest.MonkeyPatch, codec: str) -> None:
    """``pillow``: image I/O as in an install without OpenCV (imageio's ``cv2`` is then None)."""
    monkeypatch.setattr(imageio, "cv2", cv2 if codec == "opencv" else None)


@pytest.fixture(params=CODECS)
def codec(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    use_codec(monkeypatch, request.param)
    return request.param


def pillow_cannot_write(ext: str, bit_depth: int, channels: int, with_alpha: bool) -> bool:
    """What the Pillow path refuses to write (and says so): 16-bit colour or alpha PNGs, BMPs with alpha."""
    return (ext == ".png" and bit_depth == 16 and (channels == 3 or with_alpha)) or (ext == ".bmp" and with_alpha)


def _random(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return RNG.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True, dtype=dtype)


def _one_line_error(path: Path, match: str) -> str:
    with pytest.raises(EdgeRestoreError, match=match) as info:
        read_image(path)
    message = str(info.value)
    assert "\n" not in message and path.name in message
    return message


def _png_bytes(array: np.ndarray, colour_type: int) -> bytes:
    """A minimal PNG encoder, for the 16-bit gray+alpha files no installed library writes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    height, width = array.shape[:2]
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    raw = b"".join(b"\x00" + big_endian[y].tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, array.dtype.itemsize * 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("ext", "bit_depth"), LOSSLESS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("with_alpha", [False, True])
@pytest.mark.parametrize("writer", CODECS)
@pytest.mark.parametrize("reader", CODECS)
def test_lossless_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ext: str, bit_depth: int, channels: int,
                             with_alpha: bool, writer: str, reader: str) -> None:
    """Each codec reads what either wrote; the Pillow path refuses, in one line, what it cannot hold."""
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    pixels = _random((7, 9, channels), dtype)
    alpha = _random((7, 9), dtype) if with_alpha else None
    use_codec(monkeypatch, writer)
    if writer == "pillow" and pillow_cannot_write(ext, bit_depth, channels, with_alpha):
        with pytest.raises(EdgeRestoreError, match=re.escape(NEEDS_OPENCV)) as info:
            write_image(tmp_path / f"x{ext}", pixels, alpha)
        assert "\n" not in str(info.value) and not list(tmp_path.iterdir())
        return
    write_image(tmp_path / f"x{ext}", pixels, alpha)
    use_codec(monkeypatch, reader)
    if reader == "pillow" and ext == ".png" and bit_depth == 16 and (channels == 3 or with_alpha):
        _one_line_error(tmp_path / f"x{ext}", re.escape("a 16-bit colour or alpha PNG (Pillow keeps 8 bits of it), "
                                                        + NEEDS_OPENCV))
        return
    image = read_image(tmp_path / f"x{ext}")
    if with_alpha and channels == 1 and ext in (".png", ".bmp"):
        pixels = np.repeat(pixels, 3, axis=2)  # OpenCV has no gray+alpha encoder: written as RGBA
    assert image.bit_depth == bit_depth
    assert image.pixels.dtype == dtype and image.pixels.shape == pixels.shape
    np.testing.assert_array_equal(image.pixels, pixels)
    if with_alpha:
        np.testing.assert_array_equal(image.alpha, alpha)
    else:
        assert image.alpha is None


@pytest.mark.parametrize("ext", [".jpg", ".jpeg"])
@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_round_trip_is_close_and_drops_alpha(codec: str, tmp_path: Path, ext: str, channels: int) -> None:
    pixels = cv2.GaussianBlur(_random((32, 32, 3), np.uint8), (7, 7), 2)[..., :channels].copy()
    write_image(tmp_path / f"x{ext}", pixels, alpha=np.zeros((32, 32), np.uint8))
    image = read_image(tmp_path / f"x{ext}")
    assert image.pixels.shape == pixels.shape and image.alpha is None and image.bit_depth == 8
    assert np.abs(image.pixels.astype(int) - pixels).mean() < 3


@pytest.mark.parametrize("ext", [".jpg", ".bmp"])
def test_16_bit_to_8_bit_formats(codec: str, tmp_path: Path, ext: str) -> None:
    pixels = np.full((8, 8, 3), 257 * 200, np.uint16)
    write_image(tmp_path / f"x{ext}", pixels)
    image = read_image(tmp_path / f"x{ext}")
    assert image.bit_depth == 8
    assert abs(int(image.pixels.mean()) - 200) <= 1


def test_rgb_channel_order(codec: str, tmp_path: Path) -> None:
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    PILImage.fromarray(red).save(tmp_path / "red.png")
    assert read_image(tmp_path / "red.png").pixels[0, 0].tolist() == [255, 0, 0]
    write_image(tmp_path / "out.png", red)
    assert np.asarray(PILImage.open(tmp_path / "out.png"))[0, 0].tolist() == [255, 0, 0]


def test_rgba_from_pillow(codec: str, tmp_path: Path) -> None:
    rgba = _random((5, 6, 4), np.uint8)
    PILImage.fromarray(rgba).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(image.pixels, rgba[..., :3])
    np.testing.assert_array_equal(image.alpha, rgba[..., 3])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_gray_alpha_png(codec: str, tmp_path: Path, dtype: type) -> None:
    la = _random((5, 6, 2), dtype)
    (tmp_path / "la.png").write_bytes(_png_bytes(la, colour_type=4))
    if codec == "pillow" and dtype == np.uint16:
        _one_line_error(tmp_path / "la.png", re.escape(NEEDS_OPENCV))
        return
    image = read_image(tmp_path / "la.png")
    assert image.pixels.shape == (5, 6, 1) and image.pixels.dtype == dtype
    np.testing.assert_array_equal(image.pixels[..., 0], la[..., 0])
    np.testing.assert_array_equal(image.alpha, la[..., 1])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("planar", [False, True])
def test_gray_alpha_tiff(tmp_path: Path, dtype: type, planar: bool) -> None:
    la = _random((5, 6, 2), dtype)
    data = np.moveaxis(la, -1, 0) if planar else la
    tifffile.imwrite(
        tmp_path / "la.tif",
        data,
        photometric="minisblack",
        planarconfig="separate" if planar else "contig",
        extrasamples=["unassalpha"],
    )
    image = read_image(tmp_path / "la.tif")
    assert image.pixels.dtype == dtype
    np.testing.assert_array_equal(image.pixels[..., 0], la[..., 0])
    np.testing.assert_array_equal(image.alpha, la[..., 1])


@pytest.mark.parametrize("compression", [None, "tiff_deflate"])
def test_rgba_tiff_from_pillow_keeps_unassociated_alpha(tmp_path: Path, compression: str | None) -> None:
    rgba = _random((6, 7, 4), np.uint8)
    PILImage.fromarray(rgba).save(tmp_path / "a.tif", compression=compression)
    image = read_image(tmp_path / "a.tif")
    np.testing.assert_array_equal(image.pixels, rgba[..., :3])
    np.testing.assert_array_equal(image.alpha, rgba[..., 3])


def test_lzw_tiff(tmp_path: Path) -> None:
    """LZW needs imagecodecs in tifffile; without it plain RGB goes through OpenCV, alpha is refused."""
    rgba = _random((6, 7, 4), np.uint8)
    PILImage.fromarray(rgba[..., :3]).save(tmp_path / "rgb.tif", compression="tiff_lzw")
    PILImage.fromarray(rgba).save(tmp_path / "rgba.tif", compression="tiff_lzw")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.tif").pixels, rgba[..., :3])
    if importlib.util.find_spec("imagecodecs"):
        np.testing.assert_array_equal(read_image(tmp_path / "rgba.tif").alpha, rgba[..., 3])
    else:
        _one_line_error(tmp_path / "rgba.tif", "needs the imagecodecs package")


def test_translucent_rgba_tiff_is_not_premultiplied(tmp_path: Path) -> None:
    rgba = _random((6, 7, 4), np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif").pixels, rgba[..., :3])


def test_16_bit_planar_rgb_tiff(tmp_path: Path) -> None:
    rgb = _random((6, 7, 3), np.uint16)
    tifffile.imwrite(tmp_path / "p.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "p.tif").pixels, rgb)


def test_palette_and_bilevel_decode(codec: str, tmp_path: Path) -> None:
    rgb = _random((6, 7, 3), np.uint8)
    PILImage.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    PILImage.fromarray(rgb[..., 0] > 127).save(tmp_path / "b.tif")
    assert read_image(tmp_path / "p.png").pixels.shape == (6, 7, 3)
    if codec == "pillow":  # a 1-bit TIFF is one of those tifffile leaves to OpenCV
        _one_line_error(tmp_path / "b.tif", re.escape("a TIFF that tifffile does not read exactly, " + NEEDS_OPENCV))
        return
    bilevel = read_image(tmp_path / "b.tif")
    assert bilevel.pixels.shape == (6, 7, 1) and set(np.unique(bilevel.pixels)) <= {0, 255}


def _pil_bytes(image: PILImage.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def _decode_cases() -> dict[str, bytes]:
    """PNG, JPEG and BMP files of every layout either decoder might read its own way."""
    rgb, rgba = _random((9, 11, 3), np.uint8), _random((9, 11, 4), np.uint8)
    gray, palette = PILImage.fromarray(rgb[..., 0]), PILImage.fromarray(rgb).convert("P")
    key = tuple(int(v) for v in rgb[0, 0])  # a colour that occurs, so the colour key makes alpha 0 somewhere
    cases = {
        "png gray": _pil_bytes(gray, "PNG"),
        "png gray 16-bit": _png_bytes(_random((9, 11), np.uint16), colour_type=0),
        "png gray+alpha": _png_bytes(rgba[..., :2], colour_type=4),
        "png rgb": _pil_bytes(PILImage.fromarray(rgb), "PNG"),
        "png rgba": _pil_bytes(PILImage.fromarray(rgba), "PNG"),
        "png palette": _pil_bytes(palette, "PNG"),
        "png palette+tRNS": _pil_bytes(palette, "PNG", transparency=3),
        "png rgb colour key": _pil_bytes(PILImage.fromarray(rgb), "PNG", transparency=key),
        "png gray colour key": _pil_bytes(gray, "PNG", transparency=key[0]),
        "png 1-bit": _pil_bytes(PILImage.fromarray(rgb[..., 0] > 127), "PNG"),
        "png rgb 16-bit": _png_bytes(_random((9, 11, 3), np.uint16), colour_type=2),
        "jpeg gray": _pil_bytes(gray, "JPEG"),
        "jpeg rgb 4:4:4": _pil_bytes(PILImage.fromarray(rgb), "JPEG", subsampling=0),
        "jpeg cmyk": _pil_bytes(PILImage.fromarray(rgb).convert("CMYK"), "JPEG"),
        "bmp gray (Pillow)": _pil_bytes(gray, "BMP"),
        "bmp gray (OpenCV)": cv2.imencode(".bmp", rgb[..., 0])[1].tobytes(),
        "bmp rgb": _pil_bytes(PILImage.fromarray(rgb), "BMP"),
        "bmp palette": _pil_bytes(palette, "BMP"),
        "bmp 1-bit": _pil_bytes(PILImage.fromarray(rgb[..., 0] > 127), "BMP"),
        "bmp 32-bit without alpha mask": _pil_bytes(PILImage.fromarray(rgba), "BMP"),
        "bmp 32-bit with alpha mask": cv2.imencode(".bmp", rgba)[1].tobytes(),
    }
    for bits in (2, 4):
        levels = (rgb[..., 0] >> (8 - bits)) * (255 // (2**bits - 1))
        cases[f"png gray {bits}-bit"] = _pil_bytes(PILImage.fromarray(levels.astype(np.uint8)), "PNG", bits=bits)
    return cases


DECODE_CASES = _decode_cases()


@pytest.mark.parametrize("case", list(DECODE_CASES))
def test_pillow_decodes_as_opencv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """Without OpenCV a file decodes to the same pixels and alpha, or is refused in one line.
    (JPEGs with subsampled chroma are left out: IJG libjpeg 9, which an OpenCV may be built
    with, upsamples chroma differently from libjpeg-turbo; gray and 4:4:4 decode alike in both.)"""
    path = tmp_path / "case.img"
    path.write_bytes(DECODE_CASES[case])
    use_codec(monkeypatch, "opencv")
    expected = read_image(path)
    use_codec(monkeypatch, "pillow")
    if case in ("png rgb 16-bit", "jpeg cmyk"):
        _one_line_error(path, re.escape(NEEDS_OPENCV))
        return
    image = read_image(path)
    assert image.bit_depth == expected.bit_depth
    assert image.pixels.dtype == expected.pixels.dtype and image.pixels.shape == expected.pixels.shape
    np.testing.assert_array_equal(image.pixels, expected.pixels)
    assert (image.alpha is None) == (expected.alpha is None)
    if expected.alpha is not None:
        np.testing.assert_array_equal(image.alpha, expected.alpha)


def test_float_conversion() -> None:
    image = Image(pixels=np.array([[[0], [255], [128]]], np.uint8), alpha=None, bit_depth=8)
    floats = to_float(image)
    assert floats.dtype == np.float32 and floats.max() == 1.0 and floats.min() == 0.0
    np.testing.assert_array_equal(from_float(floats, 8), image.pixels)
    assert from_float(np.array([0.4 / 255, 0.6 / 255, -1.0, 2.0]), 8).tolist() == [0, 1, 0, 255]
    sixteen = from_float(np.array([1.0, 0.5]), 16)
    assert sixteen.dtype == np.uint16 and sixteen.tolist() == [65535, 32768]
    image16 = Image(pixels=np.full((1, 1, 1), 65535, np.uint16), alpha=None, bit_depth=16)
    assert to_float(image16).item() == 1.0


def test_missing_and_empty(codec: str, tmp_path: Path) -> None:
    _one_line_error(tmp_path / "nope.png", "does not exist")
    (tmp_path / "empty.png").write_bytes(b"")
    _one_line_error(tmp_path / "empty.png", "empty")
    (tmp_path / "text.png").write_text("hello, not an image")
    _one_line_error(tmp_path / "text.png", "not a PNG, JPEG, TIFF or BMP")


def _encoded(ext: str) -> bytes:
    pixels = cv2.GaussianBlur(_random((64, 64, 3), np.uint8), (5, 5), 1)
    if ext == ".tif":
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, pixels, photometric="rgb")
        return buffer.getvalue()
    return cv2.imencode(ext, pixels)[1].tobytes()


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif", ".bmp"])
@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_files_raise(codec: str, tmp_path: Path, ext: str, keep: float) -> None:
    data = _encoded(ext)
    (tmp_path / f"cut{ext}").write_bytes(data[: int(len(data) * keep)])
    _one_line_error(tmp_path / f"cut{ext}", "truncated or corrupt")


def test_jpeg_missing_only_end_marker_raises(codec: str, tmp_path: Path) -> None:
    (tmp_path / "cut.jpg").write_bytes(_encoded(".jpg")[:-2])
    _one_line_error(tmp_path / "cut.jpg", "truncated or corrupt")


def test_truncated_jpeg_raises_even_if_decoder_fills_grey(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenCV 4's libjpeg returns a grey-filled image for a truncated JPEG instead of failing."""
    monkeypatch.setattr(cv2, "imdecode", lambda buffer, flags: np.full((64, 64, 3), 128, np.uint8))
    data = _encoded(".jpg")
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    _one_line_error(tmp_path / "cut.jpg", "truncated or corrupt")


@pytest.mark.parametrize(
    ("array", "kwargs", "mode"),
    [
        (np.zeros((4, 5), np.float32), {}, "float32 x1"),
        (np.zeros((4, 5, 3), np.float32), {"photometric": "rgb"}, "float32 x3"),
        (np.zeros((4, 5), np.int16), {}, "int16 x1"),
        (np.zeros((4, 5, 2), np.uint8), {"photometric": "minisblack", "planarconfig": "contig"}, "x2 without alpha"),
        (np.zeros((4, 5, 5), np.uint8), {"photometric": "rgb", "planarconfig": "contig", "extrasamples": [0, 0]}, "x5"),
        (np.zeros((4, 5, 4), np.uint8), {"photometric": "separated"}, "uint8 x4 CMYK"),
    ],
)
def test_unsupported_modes(tmp_path: Path, array: np.ndarray, kwargs: dict[str, object], mode: str) -> None:
    tifffile.imwrite(tmp_path / "a.tif", array, **kwargs)
    message = _one_line_error(tmp_path / "a.tif", "unsupported image mode")
    assert mode in message and "need 8- or 16-bit gray, RGB or RGBA" in message


def test_write_errors_leave_nothing(codec: str, tmp_path: Path) -> None:
    pixels = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(EdgeRestoreError, match="unknown extension '.gif'"):
        write_image(tmp_path / "x.gif", pixels)
    with pytest.raises(EdgeRestoreError, match="does not exist"):
        write_image(tmp_path / "missing" / "x.png", pixels)
    (tmp_path / "file").write_text("")
    with pytest.raises(EdgeRestoreError, match="cannot write"):
        write_image(tmp_path / "file" / "x.png", pixels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_unwritable_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Simulated: the tests may run as root, for whom chmod 0500 does not stop a write.
    import tempfile

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(EdgeRestoreError, match="cannot write .*Permission denied"):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_failed_write_removes_temp_file(codec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(EdgeRestoreError, match="No space left on device"):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_write_replaces_existing_file(codec: str, tmp_path: Path) -> None:
    write_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8))
    write_image(tmp_path / "x.png", np.full((4, 4, 3), 9, np.uint8))
    assert read_image(tmp_path / "x.png").pixels.max() == 9
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_list_images(tmp_path: Path) -> None:
    for name in ["b.PNG", "a.jpg", "c.tiff", "d.Tif", "e.jpeg", "f.bmp", "notes.txt", ".x.png.tmp-1.png"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "dir.png").mkdir()
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["a.jpg", "b.PNG", "c.tiff", "d.Tif", "e.jpeg", "f.bmp"]
    with pytest.raises(EdgeRestoreError, match="does not exist"):
        list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeRestoreError, match="no images"):
        list_images(tmp_path / "empty")
