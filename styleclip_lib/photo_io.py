"""Robust loading of user photos (uploads, paths, arrays) into RGB ``uint8`` arrays.

:func:`load_image` is the single entry point that every user-facing path (notebooks, the
server's upload handler, :func:`styleclip_lib.align.align_face`) goes through::

    from styleclip_lib.photo_io import load_image
    rgb = load_image("portrait.jpg")                 # (H, W, 3) uint8, EXIF-uprighted
    rgb = load_image(request_bytes, max_pixels=20e6)  # bytes / file-like / PIL / numpy too

What it guarantees:

* **Sources**: a path (``str`` / ``os.PathLike``), ``bytes`` / ``bytearray`` / ``memoryview``,
  a binary file-like object (anything with ``read``), a ``PIL.Image.Image`` or a numpy array
  ((H, W), (H, W, 1|3|4), or channel-first (1|3|4, H, W)).
* **Orientation**: the EXIF ``Orientation`` tag is applied (``PIL.ImageOps.exif_transpose``),
  so phone photos come out upright.
* **Modes**: everything becomes RGB ``uint8``.  RGBA / LA / PA / P-with-transparency are
  composited on **white** (``background=``); ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``… are
  converted; 16-bit (``I;16*`` and ``I`` from 16-bit PNGs, ``uint16`` arrays) are scaled
  ``v / 257`` (65535 → 255), 32-bit float (``F``, float arrays) are read as ``[0, 1]`` when
  their maximum is <= 1, else as ``[0, 255]``.  An embedded ICC profile (Display P3 phone
  photos, CMYK print files) is converted to sRGB when Pillow's LittleCMS is available.
* **Refusals**, each an :class:`ImageError` (a ``ValueError``) naming the problem and, for
  limits, the limit: payloads over ``max_bytes`` (checked before reading a whole file or
  stream), bytes that are not an image, zero-size images, dimensions over ``max_pixels``
  (checked from the **header, before decoding** -- decompression-bomb safe; PNG / JPEG / GIF /
  BMP / WebP headers are parsed here, other formats through Pillow's lazy ``open``), and
  truncated files (``ImageFile.LOAD_TRUNCATED_IMAGES`` is forced off while decoding and the
  pixels are loaded eagerly, so a cut JPEG raises instead of coming back half grey).

:class:`ImageError` is :class:`styleclip_lib.imageio.ImageError` (one exception type for the
whole kit); :class:`ImageTooLargeError`, :class:`TruncatedImageError` and
:class:`NotAnImageError` are subclasses so a server can map them to HTTP 413 / 400.
"""
from __future__ import annotations

import io
import os
import struct
import threading
from pathlib import Path
from typing import Any, BinaryIO, Union

import numpy as np

from .imageio import ImageError

__all__ = [
    "load_image",
    "to_rgb_uint8",
    "pil_to_rgb_uint8",
    "sniff_image_size",
    "ImageError",
    "ImageTooLargeError",
    "TruncatedImageError",
    "NotAnImageError",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MAX_BYTES",
]

#: Default decoded-size limit: 50 megapixels (a 8660×5773 photo; phones shoot 12–50 MP).
DEFAULT_MAX_PIXELS = 50_000_000
#: Default payload limit: 50 MiB.
DEFAULT_MAX_BYTES = 50 * 1024 * 1024

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Any]


class ImageTooLargeError(ImageError):
    """The payload or the image dimensions exceed the configured limit."""


class TruncatedImageError(ImageError):
    """The file ends before the image data does (an interrupted upload or copy)."""


class NotAnImageError(ImageError):
    """The bytes are not in any image format Pillow can read."""


# ImageFile.LOAD_TRUNCATED_IMAGES is a module global; other code may have switched it on.
# We switch it off around our own decoding (restoring it afterwards) under this lock.
_TRUNCATION_LOCK = threading.Lock()


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _fmt_pixels(n: float) -> str:
    return f"{n / 1e6:.1f} MP" if n >= 1e5 else f"{int(n)} px"


# --------------------------------------------------------------------------- header sniffing
def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(w, h) from the first SOFn marker of a JPEG, without decoding anything."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # TEM, SOI, RSTn: no length
            i += 2
            continue
        if marker == 0xD9:  # EOI before any SOF
            return None
        (seglen,) = struct.unpack(">H", data[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        i += 2 + seglen
    return None


def sniff_image_size(data: bytes) -> tuple[str, int, int] | None:
    """``(format, width, height)`` read from the header of PNG / JPEG / GIF / BMP / WebP bytes.

    Nothing is decoded; ``None`` when the format is not one of these or the header is cut.
    Used to refuse zero-size and oversized images before Pillow allocates anything.
    """
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
            w, h = struct.unpack(">II", data[16:24])
            return "PNG", w, h
        if data[:3] == b"\xff\xd8\xff":
            wh = _jpeg_size(data)
            return ("JPEG", *wh) if wh else None
        if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
            w, h = struct.unpack("<HH", data[6:10])
            return "GIF", w, h
        if data[:2] == b"BM" and len(data) >= 26:
            (hdr,) = struct.unpack("<I", data[14:18])
            if hdr == 12:  # OS/2 BITMAPCOREHEADER
                w, h = struct.unpack("<HH", data[18:22])
            else:
                w, h = struct.unpack("<ii", data[18:26])
            return "BMP", abs(w), abs(h)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
            kind = data[12:16]
            if kind == b"VP8X":
                w = 1 + int.from_bytes(data[24:27], "little")
                h = 1 + int.from_bytes(data[27:30], "little")
                return "WEBP", w, h
            if kind == b"VP8L":
                b = int.from_bytes(data[21:25], "little")
                return "WEBP", 1 + (b & 0x3FFF), 1 + ((b >> 14) & 0x3FFF)
            if kind == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return "WEBP", w & 0x3FFF, h & 0x3FFF
    except (struct.error, IndexError):  # pragma: no cover - defensive
        return None
    return None


def _check_dims(w: int, h: int, max_pixels: float | None, what: str) -> None:
    if w <= 0 or h <= 0:
        raise ImageError(f"{what} has zero size ({w}×{h} pixels): nothing to load")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLargeError(
            f"{what} is too large: {w}×{h} = {_fmt_pixels(w * h)}, over the limit of "
            f"max_pixels={int(max_pixels):,} ({_fmt_pixels(max_pixels)}); resize it first "
            "or raise max_pixels"
        )


# --------------------------------------------------------------------------- reading bytes
def _read_source(source: Any, max_bytes: int | None) -> tuple[bytes, str]:
    """The raw bytes of a path / bytes / file-like source and a short description of it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        what = f"image bytes ({_fmt_bytes(len(data))})"
        if max_bytes is not None and len(data) > max_bytes:
            raise ImageTooLargeError(
                f"{what} exceed the limit of max_bytes={max_bytes:,} ({_fmt_bytes(max_bytes)})"
            )
        return data, what
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        what = f"image file {str(path)!r}"
        if not path.exists():
            raise FileNotFoundError(f"{what} does not exist")
        if path.is_dir():
            raise ImageError(f"{what} is a directory, not an image file")
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise ImageTooLargeError(
                f"{what} is {_fmt_bytes(size)}, over the limit of max_bytes={max_bytes:,} "
                f"({_fmt_bytes(max_bytes)})"
            )
        return path.read_bytes(), what
    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        what = f"image stream {name!r}" if isinstance(name, str) else "image stream"
        data = source.read(-1 if max_bytes is None else max_bytes + 1)
        if isinstance(data, str):
            raise ImageError(f"{what} is a text stream; open the file in binary mode ('rb')")
        data = bytes(data or b"")
        if max_bytes is not None and len(data) > max_bytes:
            raise ImageTooLargeError(
                f"{what} is larger than the limit of max_bytes={max_bytes:,} ({_fmt_bytes(max_bytes)})"
            )
        return data, what
    raise TypeError(
        "load_image: expected a path, bytes, a binary file-like object, a PIL image or a numpy "
        f"array, got {type(source).__name__}"
    )


# --------------------------------------------------------------------------- conversions
def _composite_on(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """(H, W, 4) uint8 → (H, W, 3) uint8 composited over a solid background."""
    rgb = rgba[..., :3].astype(np.float32)
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    bg = np.asarray(background, np.float32).reshape(1, 1, 3)
    out = rgb * a + bg * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _to_uint8_scale(arr: np.ndarray, sixteen_bit: bool | None = None) -> np.ndarray:
    """Any numeric array → uint8 with the scale its dtype implies (see module docstring)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        a = arr.astype(np.float64)
        finite = a[np.isfinite(a)]
        if finite.size == 0:
            raise ImageError("image has no finite pixel values")
        a = np.nan_to_num(a, nan=0.0, posinf=finite.max(), neginf=finite.min())
        if finite.max() <= 1.0:
            a = a * 255.0
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        if sixteen_bit is None:
            sixteen_bit = arr.dtype.itemsize >= 2 and (arr.dtype == np.uint16 or int(arr.max(initial=0)) > 255)
        if sixteen_bit:
            a = np.clip(arr.astype(np.float64), 0, 65535) / 257.0
            return np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.clip(arr, 0, 255).astype(np.uint8)
    raise ImageError(f"unsupported pixel dtype {arr.dtype}")


def to_rgb_uint8(arr: np.ndarray, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """A numpy image in any common layout / dtype → contiguous (H, W, 3) ``uint8`` RGB.

    Accepts (H, W), (H, W, 1|2|3|4) and channel-first (1|3|4, H, W); alpha (2 or 4 channels) is
    composited on ``background``.  ``uint16`` is read as 16-bit, floats as [0, 1] when <= 1.
    """
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 2, 3, 4):
        a = np.moveaxis(a, 0, -1)  # CHW → HWC
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (1, 2, 3, 4)):
        raise ImageError(f"image array has unsupported shape {a.shape}; expected (H, W) or (H, W, 1|2|3|4)")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"image array has zero size (shape {a.shape})")
    a = _to_uint8_scale(a)
    if a.ndim == 2:
        a = a[..., None]
    c = a.shape[-1]
    if c == 1:
        a = np.repeat(a, 3, axis=-1)
    elif c == 2:
        a = _composite_on(np.concatenate([np.repeat(a[..., :1], 3, -1), a[..., 1:]], -1), background)
    elif c == 4:
        a = _composite_on(a, background)
    return np.ascontiguousarray(a)


def _apply_icc(img, enabled: bool):
    """Convert an image with an embedded ICC profile to sRGB (best effort)."""
    icc = img.info.get("icc_profile") if enabled else None
    if not icc or img.mode not in ("RGB", "RGBA", "CMYK", "L"):
        return img
    try:
        from PIL import ImageCms

        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        dst = ImageCms.createProfile("sRGB")
        out_mode = "RGBA" if img.mode == "RGBA" else "RGB"
        return ImageCms.profileToProfile(img, src, dst, outputMode=out_mode)
    except Exception:  # missing LittleCMS, broken or exotic profile: keep the raw values
        return img


def pil_to_rgb_uint8(
    img,
    background: tuple[int, int, int] = (255, 255, 255),
    apply_icc: bool = True,
    source_format: str | None = None,
) -> np.ndarray:
    """A (loaded) PIL image in any mode → (H, W, 3) ``uint8`` RGB (no EXIF handling here).

    ``source_format`` (default ``img.format``) tells whether a mode-``I`` image came from a
    16-bit PNG / TIFF (scaled ``/257``) or holds 8-bit values.
    """
    mode = img.mode
    fmt = source_format or img.format
    w, h = img.size
    if w == 0 or h == 0:
        raise ImageError(f"image has zero size ({w}×{h} pixels)")
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img)
        if arr.dtype.byteorder == ">" or arr.dtype.kind not in "iu":
            arr = arr.astype(np.int64)
        sixteen = mode.startswith("I;16") or fmt in ("PNG", "TIFF") or int(arr.max(initial=0)) > 255
        return to_rgb_uint8(_to_uint8_scale(arr, sixteen_bit=bool(sixteen)), background)
    if mode == "F":
        return to_rgb_uint8(np.asarray(img, dtype=np.float32), background)
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    elif mode == "1":
        img = img.convert("L")
    elif mode in ("RGBa", "La"):  # premultiplied alpha
        img = img.convert("RGBA" if mode == "RGBa" else "LA")
    elif mode == "L" and "transparency" in img.info:
        img = img.convert("LA")
    elif mode == "RGB" and "transparency" in img.info:
        img = img.convert("RGBA")
    img = _apply_icc(img, apply_icc)
    mode = img.mode
    if mode in ("RGB", "RGBA", "L", "LA"):
        return to_rgb_uint8(np.asarray(img), background)
    try:
        return np.ascontiguousarray(np.asarray(img.convert("RGB")))
    except (ValueError, OSError) as e:
        raise ImageError(f"cannot convert an image in mode {mode!r} to RGB: {e}") from e


def _exif_upright(img):
    from PIL import ImageOps

    try:
        out = ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF: keep the pixels as stored
        return img
    return img if out is None else out


def _load_pixels(img, what: str) -> None:
    """Decode ``img`` now, with truncated-file tolerance forced off."""
    from PIL import ImageFile

    with _TRUNCATION_LOCK:
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            img.load()
        except OSError as e:
            msg = str(e)
            if "truncated" in msg or "broken data stream" in msg or "premature" in msg.lower():
                raise TruncatedImageError(
                    f"{what} is truncated or corrupt ({msg}); the file ends before the image "
                    "data does -- re-upload or re-export it"
                ) from e
            raise ImageError(f"{what} could not be decoded: {msg}") from e
        except (ValueError, SyntaxError, struct.error, IndexError, EOFError) as e:
            raise ImageError(f"{what} could not be decoded: {e}") from e
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")


def _is_heif(data: bytes) -> bool:
    return data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS


def _register_heif() -> bool:
    """Register pillow-heif's opener if that optional package is installed."""
    try:
        import pillow_heif  # type: ignore[import-not-found]

        pillow_heif.register_heif_opener()
        return True
    except Exception:
        return False


# --------------------------------------------------------------------------- entry point
def load_image(
    source: ImageSource,
    *,
    max_pixels: float | None = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    background: tuple[int, int, int] = (255, 255, 255),
    exif_transpose: bool = True,
    apply_icc: bool = True,
    as_pil: bool = False,
):
    """Load ``source`` as an upright RGB ``uint8`` array of shape (H, W, 3).

    Args:
        source: path, bytes, binary file-like, ``PIL.Image.Image`` or numpy array.
        max_pixels: refuse images with more than this many pixels (width × height), checked
            from the header before decoding.  ``None`` = no limit of ours (Pillow's own
            decompression-bomb guard, ``PIL.Image.MAX_IMAGE_PIXELS`` × 2, still applies).
        max_bytes: refuse payloads larger than this (paths: the file size; streams: reading
            stops at ``max_bytes + 1``).  ``None`` = no limit.  Not applied to PIL / numpy inputs.
        background: colour transparent pixels are composited on (white by default).
        exif_transpose: apply the EXIF orientation (default).
        apply_icc: convert an embedded ICC colour profile to sRGB (default).
        as_pil: return a ``PIL.Image.Image`` (mode RGB) instead of an array.

    Raises:
        ImageError: (or a subclass) with a message naming the problem and any limit.
        FileNotFoundError: a path that does not exist.
        TypeError: an unsupported source type.
    """
    from PIL import Image

    if isinstance(source, np.ndarray) or (
        not isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image))
        and not hasattr(source, "read")
        and hasattr(source, "__array__")
    ):
        arr = np.asarray(source)
        if arr.ndim >= 2 and max_pixels is not None:
            hw = arr.shape[1:] if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 2, 3, 4) else arr.shape[:2]
            _check_dims(int(hw[1]), int(hw[0]), max_pixels, "image array")
        out = to_rgb_uint8(arr, background)
        return Image.fromarray(out) if as_pil else out

    if isinstance(source, Image.Image):
        img, what = source, "image"
        _check_dims(img.size[0], img.size[1], max_pixels, what)
        _load_pixels(img, what)
    else:
        data, what = _read_source(source, max_bytes)
        if len(data) == 0:
            raise ImageError(f"{what} is empty (0 bytes)")
        sniffed = sniff_image_size(data)
        if sniffed is not None:
            fmt, w, h = sniffed
            _check_dims(w, h, max_pixels, f"{what} ({fmt})")
        try:
            try:
                img = Image.open(io.BytesIO(data))
            except Image.UnidentifiedImageError:
                if not (_is_heif(data) and _register_heif()):
                    raise
                img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise ImageTooLargeError(
                f"{what} is too large ({e}); limit max_pixels={max_pixels!r} "
                f"and Pillow's PIL.Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS!r}"
            ) from e
        except Image.UnidentifiedImageError as e:
            head = data[:16]
            if _is_heif(data):
                raise NotAnImageError(
                    f"{what} is a HEIC/HEIF/AVIF photo, which this Pillow cannot read: "
                    "pip install pillow-heif, or export the photo as JPEG"
                ) from e
            raise NotAnImageError(
                f"{what} is not a recognised image (first bytes {head!r}); upload a JPEG, PNG, "
                "WebP, BMP, GIF or TIFF file"
            ) from e
        except (OSError, ValueError, SyntaxError, struct.error, EOFError) as e:
            raise ImageError(f"{what} could not be opened as an image: {e}") from e
        fmt = img.format or "image"
        what = f"{what} ({fmt})"
        _check_dims(img.size[0], img.size[1], max_pixels, what)
        _load_pixels(img, what)

    source_format = img.format
    if exif_transpose:
        img = _exif_upright(img)
    out = pil_to_rgb_uint8(img, background=background, apply_icc=apply_icc, source_format=source_format)
    return Image.fromarray(out) if as_pil else out
