"""Reading and writing images for restoration, without silently losing data.

OpenCV decodes and encodes PNG, JPEG and BMP. The extra checks exist because a
restoration run must never quietly work on a damaged or misread input:

* Truncated files must fail. OpenCV 5 refuses them, but OpenCV 4's libjpeg
  only warns and returns a grey-filled image, so JPEGs are also verified with
  Pillow.
* OpenCV's TIFF reader premultiplies unassociated alpha, drops the alpha of
  gray+alpha (and reduces it to 8 bits), misreads 16-bit planar and
  min-is-white files, and refuses tiled 8-bit ones. TIFFs are therefore read
  and written with tifffile, which returns the stored samples exactly; OpenCV
  is only the fallback for what tifffile leaves raw (palette, YCbCr,
  min-is-white, 1-bit) and for gray or RGB compressed in a way tifffile cannot
  decode without the optional imagecodecs package (LZW, JPEG); alpha or planar
  files compressed that way are refused rather than misread.
* OpenCV expands a gray+alpha PNG to four channels; it comes back as gray + alpha.
* Anything that is not 8- or 16-bit gray, RGB or RGBA (float, signed, CMYK,
  extra channels) is rejected rather than converted.

OpenCV is optional (the ``opencv`` extra; a Jetson has JetPack's). Without it, Pillow
decodes and encodes PNG, JPEG and BMP, but only what it holds exactly, and gives the
same arrays as OpenCV for those (the tests decode every case both ways and compare):
8-bit gray, gray+alpha, RGB, RGBA, palette and low-bit gray, and 16-bit gray. A 16-bit
colour or alpha PNG (Pillow keeps 8 of its bits), a CMYK JPEG, a BMP with alpha to
write (Pillow's would read back without it) and the TIFFs left to OpenCV above are
refused with the line that says how to install OpenCV. A full Pillow decode fails on
truncated JPEGs by itself; PNGs are also verified (chunk CRCs, the end chunk), which
Pillow's decode alone skips.

Metadata: a restored photo keeps its source's EXIF (GPS included: drone surveys are
mapped by it) and ICC profile. Pillow reads them; they are written into the encoded file
as the formats define them (JPEG APP1/APP2 segments, PNG eXIf/iCCP chunks, the TIFF
ICC tag) rather than by re-encoding with Pillow, so the pixels of a file do not depend on
whether its source had metadata. TIFF outputs keep the ICC profile only (an EXIF
sub-IFD is beyond tifffile's writer); BMP keeps neither.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image as PILImage

from edgerestore.runtime.atomic import atomic_file
from edgerestore.runtime.errors import EdgeRestoreError
from edgerestore.runtime.optional import load_if_installed, missing

cv2 = load_if_installed("cv2")  # None: PNG, JPEG and BMP go through Pillow (module docstring)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "png",
    b"\xff\xd8\xff": "jpeg",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
    b"II+\x00": "tiff",  # BigTIFF
    b"MM\x00+": "tiff",
    b"BM": "bmp",
}
_PNG_BIT_DEPTH_OFFSET = 24  # 8-byte signature, then IHDR length, type, width, height
_PNG_COLOUR_TYPE_OFFSET = 25
_PNG_GRAY, _PNG_GRAY_ALPHA = 0, 4
_TIFF_EXACT = (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB)
_TIFF_ALPHA = (tifffile.EXTRASAMPLE.ASSOCALPHA, tifffile.EXTRASAMPLE.UNASSALPHA)
_NEED = "need 8- or 16-bit gray, RGB or RGBA"
_MAX_VALUE = {8: 255, 16: 65535}
_DTYPE = {8: np.uint8, 16: np.uint16}


@dataclass(frozen=True)
class Metadata:
    """What a restored image keeps of its source file besides pixels."""

    exif: bytes | None = None  # the TIFF-structured EXIF block (no JPEG "Exif\0\0" header)
    icc: bytes | None = None  # the ICC profile

    def __bool__(self) -> bool:
        return bool(self.exif or self.icc)


@dataclass(frozen=True)
class Image:
    """A decoded image: ``pixels`` is HxWxC (C = 1 or 3, RGB order) in its file's dtype."""

    pixels: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    metadata: Metadata | None = None


def read_image(path: str | os.PathLike[str]) -> Image:
    """Decode a PNG, JPEG, TIFF or BMP file; raise EdgeRestoreError if it is unusable."""
    path = Path(path)
    data = _read_bytes(path)
    kind = next((k for magic, k in _MAGIC.items() if data.startswith(magic)), None)
    if kind is None:
        raise EdgeRestoreError(f"cannot read '{path}': not a PNG, JPEG, TIFF or BMP file")
    gray_alpha = False
    if kind == "tiff":
        array = _decode_tiff(data, path)
    elif cv2 is None:
        array = _decode_pillow(data, kind, path)
    else:
        if kind == "jpeg":
            _verify_jpeg(data, path)
        array = _decode_opencv(data, path)
        gray_alpha = kind == "png" and data[_PNG_COLOUR_TYPE_OFFSET] == _PNG_GRAY_ALPHA
    pixels, alpha = _split_channels(array, gray_alpha, path)
    return Image(pixels=pixels, alpha=alpha, bit_depth=8 if pixels.dtype == np.uint8 else 16,
                 metadata=_read_metadata(data, kind))


def to_float(image: Image) -> np.ndarray:
    """Pixels as float32 HxWxC in [0, 1], the range the models work in."""
    return image.pixels.astype(np.float32) / np.float32(_MAX_VALUE[image.bit_depth])


def from_float(array: np.ndarray, bit_depth: int) -> np.ndarray:
    """Back to integers: clip to [0, 1] and round to nearest (truncating would darken by half a step)."""
    scaled = np.clip(array, 0.0, 1.0) * _MAX_VALUE[bit_depth]
    return np.rint(scaled).astype(_DTYPE[bit_depth])


def write_image(path: str | os.PathLike[str], pixels: np.ndarray, alpha: np.ndarray | None = None,
                metadata: Metadata | None = None) -> None:
    """Write atomically, so a crash or a full disk never leaves a half-written output.
    ``metadata`` (a source's EXIF and ICC profile) goes in where the format holds it (module
    docstring).

    The format follows the extension. PNG and TIFF keep 16 bits; JPEG and BMP are
    8-bit only, so 16-bit data is rounded to 8 bits for them. JPEG has no alpha
    channel, so ``alpha`` is dropped there. PNG and BMP have no gray+alpha mode
    in OpenCV, so gray with alpha is written as RGBA (by Pillow too, so that a file
    is the same whichever wrote it).
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise EdgeRestoreError(
            f"cannot write '{path}': unknown extension '{path.suffix}' (use {', '.join(IMAGE_EXTENSIONS)})"
        )
    if not path.parent.is_dir():
        raise EdgeRestoreError(f"cannot write '{path}': directory '{path.parent}' does not exist")
    pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], -1)
    if pixels.dtype not in (np.uint8, np.uint16) or pixels.shape[2] not in (1, 3):
        raise ValueError(f"write_image needs uint8/uint16 HxWx1 or HxWx3 pixels, got {pixels.dtype} {pixels.shape}")
    if alpha is not None and (alpha.dtype != pixels.dtype or alpha.shape != pixels.shape[:2]):
        raise ValueError(f"alpha must be {pixels.dtype} {pixels.shape[:2]}, got {alpha.dtype} {alpha.shape}")
    if ext in (".tif", ".tiff"):
        data = _encode_tiff(pixels, alpha, metadata.icc if metadata else None)
    elif cv2 is None:
        data = _encode_pillow(pixels, alpha, ext, path)
    else:
        data = _encode_opencv(pixels, alpha, ext, path)
    if metadata and ext in (".jpg", ".jpeg"):
        data = _jpeg_with_metadata(data, metadata)
    elif metadata and ext == ".png":
        data = _png_with_metadata(data, metadata)
    try:
        with atomic_file(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        raise EdgeRestoreError(f"cannot write '{path}': {exc.strerror or exc}") from None


def list_images(directory: str | os.PathLike[str]) -> list[Path]:
    """Image files directly in ``directory``, sorted by name.

    Hidden files are skipped: they include our own in-progress temporary
    outputs and macOS ``._name`` resource forks, which carry image extensions.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise EdgeRestoreError(f"image directory '{directory}' does not exist or is not a directory")
    found = sorted(
        p
        for p in directory.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )
    if not found:
        raise EdgeRestoreError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in '{directory}'")
    return found


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise EdgeRestoreError(f"cannot read '{path}': file does not exist") from None
    except OSError as exc:
        raise EdgeRestoreError(f"cannot read '{path}': {exc.strerror or exc}") from None
    if not data:
        raise EdgeRestoreError(f"cannot read '{path}': file is empty")
    return data


@contextmanager
def opencv_silenced() -> Iterator[None]:
    """Keep OpenCV's multi-line decoder warnings off stderr; our error says it in one line.

    OpenCV's log level is one per process, and a stream decodes on its reader thread while
    other threads open and write videos: silenced blocks overlap without nesting, so the
    level is saved by the first block to enter and restored by the last to leave (a count
    under a lock), never by whichever block happens to end first."""
    global _silenced, _saved_level
    if cv2 is None:
        yield
        return
    with _silence_lock:
        if _silenced == 0:
            _saved_level = cv2.utils.logging.getLogLevel()
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        _silenced += 1
    try:
        yield
    finally:
        with _silence_lock:
            _silenced -= 1
            if _silenced == 0:
                cv2.utils.logging.setLogLevel(_saved_level)


_silence_lock = threading.Lock()
_silenced = 0  # blocks inside opencv_silenced, on every thread
_saved_level = 0


def _needs_opencv(what: str, alternative: str | None = None) -> EdgeRestoreError:
    return EdgeRestoreError(missing("cv2", what, alternative))


def _decode_opencv(data: bytes, path: Path) -> np.ndarray:
    """Decode with OpenCV and return gray, RGB or RGBA channel order."""
    if cv2 is None:  # the TIFFs tifffile leaves to OpenCV (module docstring)
        raise _needs_opencv(f"decoding '{path}', a TIFF that tifffile does not read exactly,")
    with opencv_silenced():
        array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise EdgeRestoreError(f"cannot decode '{path}': file is truncated or corrupt")
    if array.ndim == 3 and array.shape[2] == 3:
        return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    if array.ndim == 3 and array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA)
    return array


def _decode_pillow(data: bytes, kind: str, path: Path) -> np.ndarray:
    """Decode a PNG, JPEG or BMP with Pillow (no OpenCV installed) to what OpenCV's path
    returns: gray, gray+alpha (two channels here), RGB or RGBA; refuse what Pillow misreads."""
    if kind == "png" and data[_PNG_BIT_DEPTH_OFFSET] == 16 and data[_PNG_COLOUR_TYPE_OFFSET] != _PNG_GRAY:
        raise _needs_opencv(f"decoding '{path}', a 16-bit colour or alpha PNG (Pillow keeps 8 bits of it),")
    try:
        if kind == "png":
            with PILImage.open(io.BytesIO(data)) as pil:
                pil.verify()  # chunk CRCs and IEND: a decode alone accepts a PNG cut after its pixel data
        with PILImage.open(io.BytesIO(data)) as pil:
            pil.load()
            if pil.mode in ("P", "PA"):  # a palette: as OpenCV, RGB, or RGBA if it has transparency
                pil = pil.convert("RGBA" if pil.mode == "PA" or "transparency" in pil.info else "RGB")
            elif pil.mode == "RGB" and "transparency" in pil.info:  # a PNG's colour key, alpha in OpenCV
                pil = pil.convert("RGBA")
            elif pil.mode == "1":
                pil = pil.convert("L")
            mode, array = pil.mode, np.asarray(pil)
    except PILImage.DecompressionBombError as exc:  # over twice Pillow's pixel limit: not corrupt, too large
        raise EdgeRestoreError(f"cannot decode '{path}': {_first_line(exc)}") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... on corrupt data
        raise EdgeRestoreError(f"cannot decode '{path}': file is truncated or corrupt ({_first_line(exc)})") from None
    if mode in ("I;16", "I;16B", "I") and kind == "png":  # 16-bit gray ("I": older Pillow, int32)
        return array.astype(np.uint16)
    if mode not in ("L", "LA", "RGB", "RGBA"):
        raise _needs_opencv(f"decoding '{path}', a {mode} {kind.upper()},")
    return array


def _verify_jpeg(data: bytes, path: Path) -> None:
    """Fail on truncated JPEGs, which OpenCV 4 decodes into a grey-filled image.

    Pillow raises on a premature end of data; the 1/8-scale draft decode still
    reads every coefficient, so the check costs about one fast decode.
    """
    try:
        with PILImage.open(io.BytesIO(data)) as pil:
            pil.draft(pil.mode, (max(1, pil.width // 8), max(1, pil.height // 8)))
            pil.load()
    except (OSError, ValueError) as exc:
        raise EdgeRestoreError(f"cannot decode '{path}': file is truncated or corrupt ({exc})") from None


def _decode_tiff(data: bytes, path: Path) -> np.ndarray:
    """Read the first page as gray, gray+alpha, RGB or RGBA samples (see the module docstring)."""
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages.first
            photometric, samples, extra = page.photometric, page.samplesperpixel, page.extrasamples
            exact = (
                photometric in _TIFF_EXACT
                and page.bitspersample in (8, 16)
                and page.compression in tifffile.TIFF.DECOMPRESSORS
            )
            if photometric == tifffile.PHOTOMETRIC.SEPARATED:
                raise EdgeRestoreError(f"unsupported image mode {page.dtype} x{samples} CMYK in '{path}' ({_NEED})")
            if samples == 2 and (not extra or extra[0] not in _TIFF_ALPHA):
                raise EdgeRestoreError(f"unsupported image mode {page.dtype} x2 without alpha in '{path}' ({_NEED})")
            if samples > 4:
                raise EdgeRestoreError(f"unsupported image mode {page.dtype} x{samples} in '{path}' ({_NEED})")
            planar = page.axes.startswith("S")
            if not exact and photometric in _TIFF_EXACT and (samples in (2, 4) or planar):
                compression = getattr(page.compression, "name", page.compression)
                raise EdgeRestoreError(
                    f"cannot decode '{path}': {compression} {samples}-sample TIFF needs the imagecodecs"
                    " package (OpenCV would lose alpha or misread it)"
                )
            array = page.asarray() if exact else None
    except EdgeRestoreError:
        raise
    except Exception as exc:  # tifffile raises many exception types on corrupt or truncated data
        raise EdgeRestoreError(f"cannot decode '{path}': file is truncated or corrupt ({_first_line(exc)})") from None
    if array is None:
        return _decode_opencv(data, path)
    return np.moveaxis(array, 0, -1) if planar else array


def _split_channels(array: np.ndarray, gray_alpha: bool, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Split a gray, gray+alpha, RGB or RGBA array into HxWxC pixels and an optional alpha plane."""
    channels = 1 if array.ndim == 2 else array.shape[-1]
    if array.dtype not in (np.uint8, np.uint16) or array.ndim not in (2, 3) or channels > 4:
        raise EdgeRestoreError(f"unsupported image mode {array.dtype} x{channels} in '{path}' ({_NEED})")
    if channels == 1:
        return array.reshape(array.shape[0], array.shape[1], 1), None
    if channels == 2:
        return array[..., :1].copy(), array[..., 1].copy()
    if channels == 3:
        return array, None
    if gray_alpha:  # OpenCV expanded gray+alpha to RGBA with R = G = B
        return array[..., :1].copy(), array[..., 3].copy()
    return array[..., :3].copy(), array[..., 3].copy()


def _encode_tiff(pixels: np.ndarray, alpha: np.ndarray | None, icc: bytes | None = None) -> bytes:
    """Deflate-compressed TIFF with the alpha marked as unassociated, as tifffile stores it."""
    gray = pixels.shape[2] == 1
    if alpha is not None:
        array = np.dstack([pixels, alpha])
    else:
        array = pixels[..., 0] if gray else pixels
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        array,
        photometric="minisblack" if gray else "rgb",
        planarconfig="contig",
        extrasamples=None if alpha is None else [tifffile.EXTRASAMPLE.UNASSALPHA],
        compression="zlib",
        metadata=None,
        iccprofile=icc,
    )
    return buffer.getvalue()


def _encode_opencv(pixels: np.ndarray, alpha: np.ndarray | None, ext: str, path: Path) -> bytes:
    if ext in (".jpg", ".jpeg"):
        alpha = None
    if alpha is None:
        array = pixels[..., 0] if pixels.shape[2] == 1 else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    else:
        rgb = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels
        array = cv2.cvtColor(np.dstack([rgb, alpha]), cv2.COLOR_RGBA2BGRA)
    if ext in (".jpg", ".jpeg", ".bmp"):
        array = _eight_bit(array)
    ok, buffer = cv2.imencode(ext, array)
    if not ok:
        raise EdgeRestoreError(f"cannot write '{path}': the {ext} encoder failed")
    return buffer.tobytes()


# Pillow's options for OpenCV's defaults: PNG compression 1 (fast), JPEG quality 95.
_PILLOW_FORMATS = {".png": ("PNG", {"compress_level": 1}), ".jpg": ("JPEG", {"quality": 95}),
                   ".jpeg": ("JPEG", {"quality": 95}), ".bmp": ("BMP", {})}


def _encode_pillow(pixels: np.ndarray, alpha: np.ndarray | None, ext: str, path: Path) -> bytes:
    """What :func:`_encode_opencv` writes, with Pillow (no OpenCV installed); refuses what
    Pillow cannot write exactly (module docstring)."""
    if ext in (".jpg", ".jpeg"):
        alpha = None
    if ext != ".png":
        pixels, alpha = _eight_bit(pixels), None if alpha is None else _eight_bit(alpha)
    if pixels.dtype == np.uint16 and (pixels.shape[2] == 3 or alpha is not None):
        raise _needs_opencv(f"writing '{path}', a 16-bit colour or alpha PNG (Pillow writes 8 bits of it),",
                            "write a .tif")
    if ext == ".bmp" and alpha is not None:
        raise _needs_opencv(f"writing '{path}', a BMP with alpha (Pillow's reads back without it),",
                            "write a .png")
    if alpha is None:
        array = pixels[..., 0] if pixels.shape[2] == 1 else pixels
    else:
        array = np.dstack([np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels, alpha])
    image_format, options = _PILLOW_FORMATS[ext]
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, image_format, **options)
    return buffer.getvalue()


_EXIF_HEADER = b"Exif\x00\x00"  # JPEG's APP1 and Pillow's info["exif"] put it before the TIFF block
_ICC_HEADER = b"ICC_PROFILE\x00"
_SEGMENT_MAX = 65533  # a JPEG segment's payload: its 16-bit length counts itself


def _read_metadata(data: bytes, kind: str) -> Metadata | None:
    """The EXIF and ICC profile of an encoded image, as Pillow parses them (headers only, no
    decode). A file whose pixels decoded but whose metadata Pillow cannot parse keeps none."""
    if kind == "bmp":
        return None
    try:
        with PILImage.open(io.BytesIO(data)) as pil:
            # TIFF: Pillow's "exif" would be the image's own IFD (strips, sizes): not EXIF to carry over.
            exif = pil.info.get("exif") if kind != "tiff" else None
            icc = pil.info.get("icc_profile")
    except Exception:  # noqa: BLE001 - the pixels are what must read; metadata is kept when it parses
        return None
    if exif and exif.startswith(_EXIF_HEADER):
        exif = exif[len(_EXIF_HEADER):]
    metadata = Metadata(exif=bytes(exif) if exif else None, icc=bytes(icc) if icc else None)
    return metadata or None


def _jpeg_with_metadata(data: bytes, metadata: Metadata) -> bytes:
    """EXIF as an APP1 segment and the ICC profile as APP2 segments (split into numbered
    chunks, as the ICC specification does for profiles over 64 KB), after SOI and any JFIF
    APP0. An EXIF block too large for one segment (only a PNG or TIFF source can have one)
    is left out: JPEG has no way to hold it."""
    at = 2
    if data[2:4] == b"\xff\xe0":  # APP0 (JFIF) stays first, as JFIF readers expect
        at = 4 + struct.unpack(">H", data[4:6])[0]
    segments = []
    if metadata.exif and len(_EXIF_HEADER) + len(metadata.exif) <= _SEGMENT_MAX:
        segments.append(_jpeg_segment(0xE1, _EXIF_HEADER + metadata.exif))
    if metadata.icc:
        size = _SEGMENT_MAX - len(_ICC_HEADER) - 2
        chunks = [metadata.icc[i:i + size] for i in range(0, len(metadata.icc), size)]
        segments += [_jpeg_segment(0xE2, _ICC_HEADER + bytes([k + 1, len(chunks)]) + chunk)
                     for k, chunk in enumerate(chunks)]
    return data[:at] + b"".join(segments) + data[at:]


def _jpeg_segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _png_with_metadata(data: bytes, metadata: Metadata) -> bytes:
    """iCCP and eXIf chunks right after IHDR (iCCP must come before the image data)."""
    at = 8 + 8 + 13 + 4  # signature, IHDR's length and type, its 13 bytes, its CRC
    chunks = b""
    if metadata.icc:
        chunks += _png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(metadata.icc))
    if metadata.exif:
        chunks += _png_chunk(b"eXIf", metadata.exif)
    return data[:at] + chunks + data[at:]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _eight_bit(array: np.ndarray) -> np.ndarray:
    """8-bit formats (JPEG, BMP): 16-bit values rounded to the nearest 8-bit one."""
    return np.rint(array / 257.0).astype(np.uint8) if array.dtype == np.uint16 else array


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
