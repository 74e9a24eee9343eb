"""A restored photo keeps its EXIF (GPS included) and ICC profile: drone surveys are mapped
by the GPS tags, and colour managed by the profile. Single-machine ``restore`` of files and
of a folder (the stream path); ``restore --ray`` is checked in test_ray.py."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from PIL import ExifTags, ImageCms
from PIL import Image as PILImage

from edgerestore.runtime import imageio

GPS = {ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: (52.0, 31.0, 12.5),
       ExifTags.GPS.GPSLongitudeRef: "E", ExifTags.GPS.GPSLongitude: (13.0, 24.0, 3.25)}
MAKE = "TestDrone"


@functools.cache  # the profile holds its creation time: one profile for the whole run
def icc_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_block() -> PILImage.Exif:
    exif = PILImage.Exif()
    exif[ExifTags.Base.Make] = MAKE
    exif.get_ifd(ExifTags.IFD.GPSInfo).update(GPS)
    return exif


def write_photo(path, seed: int, size=(48, 64)) -> None:
    """An RGB photo with a drone's EXIF (make, GPS) and an ICC profile, as Pillow saves them."""
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    PILImage.fromarray(pixels).save(path, exif=exif_block(), icc_profile=icc_profile())


def assert_metadata_kept(path, exif: bool = True) -> None:
    with PILImage.open(path) as pil:
        assert pil.info.get("icc_profile") == icc_profile(), path
        if exif:
            tags = pil.getexif()
            assert tags.get(ExifTags.Base.Make) == MAKE, path
            assert dict(tags.get_ifd(ExifTags.IFD.GPSInfo)) == GPS, path


@pytest.mark.parametrize("source_ext", [".jpg", ".png"])
@pytest.mark.parametrize("target_ext", [".jpg", ".png", ".tif"])
def test_write_keeps_metadata(tmp_path, source_ext, target_ext):
    source = tmp_path / f"in{source_ext}"
    write_photo(source, 0)
    image = imageio.read_image(source)
    assert image.metadata and image.metadata.icc == icc_profile()
    target = tmp_path / f"out{target_ext}"
    imageio.write_image(target, image.pixels, metadata=image.metadata)
    assert_metadata_kept(target, exif=target_ext != ".tif")  # TIFF: the ICC profile only (imageio docstring)
    again = imageio.read_image(target)  # the inserted segments and chunks leave the pixels readable
    if target_ext != ".jpg":
        np.testing.assert_array_equal(again.pixels, image.pixels)


def test_large_icc_profile_spans_jpeg_segments(tmp_path):
    """A profile over one segment's 64 KB is split into numbered APP2 chunks and read back whole."""
    big = icc_profile() + bytes(range(256)) * 400  # Pillow joins the chunks; it does not parse the profile
    metadata = imageio.Metadata(icc=big)
    target = tmp_path / "big.jpg"
    imageio.write_image(target, np.zeros((8, 8, 3), np.uint8), metadata=metadata)
    with PILImage.open(target) as pil:
        assert pil.info["icc_profile"] == big


def test_metadata_changes_no_pixel_and_none_adds_nothing(tmp_path):
    """The same pixels written with and without metadata: the one without has no eXIf or iCCP
    chunk (none empty either), the other has both, and both decode to the same pixels."""
    pixels = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    PILImage.fromarray(pixels).save(tmp_path / "pillow.png")
    metadata = imageio.Metadata(exif=exif_block().tobytes()[len(b"Exif\0\0"):], icc=icc_profile())
    imageio.write_image(tmp_path / "none.png", pixels)
    imageio.write_image(tmp_path / "with.png", pixels, metadata=metadata)
    plain, tagged = (tmp_path / "none.png").read_bytes(), (tmp_path / "with.png").read_bytes()
    assert b"iCCP" not in plain and b"eXIf" not in plain and b"iCCP" in tagged and b"eXIf" in tagged
    with PILImage.open(tmp_path / "pillow.png") as a, PILImage.open(tmp_path / "none.png") as b:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(imageio.read_image(tmp_path / "with.png").pixels, pixels)
    np.testing.assert_array_equal(imageio.read_image(tmp_path / "none.png").pixels, pixels)


def test_restore_keeps_metadata(run_cli, small_bundle, tmp_path):
    """``restore`` of files (the batch path) and of a folder into a folder (the stream path)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for k, ext in enumerate((".jpg", ".png")):
        write_photo(folder / f"p{k}{ext}", k)
    files = sorted(folder.iterdir())
    result = run_cli("restore", small_bundle, *files, "-o", tmp_path / "files", "--backend", "onnxruntime")
    assert result.exit_code == 0, result.output
    result = run_cli("restore", small_bundle, folder, "-o", tmp_path / "stream", "--backend", "onnxruntime")
    assert result.exit_code == 0, result.output
    for out in ("files", "stream"):
        for source in files:
            assert_metadata_kept(tmp_path / out / source.name)

