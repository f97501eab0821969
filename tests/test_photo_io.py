"""Robust photo loading (styleclip_lib.photo_io.load_image)."""
from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from styleclip_lib.imageio import ImageError
from styleclip_lib.photo_io import (
    ImageTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    load_image,
    sniff_image_size,
)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w×h (no real pixel data): a decompression-bomb probe."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b"")


def _gradient(w=48, h=32) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.full_like(xx, 77)], -1).astype(np.uint8)


# --------------------------------------------------------------------------- sources
def test_every_source_kind_gives_the_same_rgb(tmp_path):
    arr = _gradient()
    png = _encode(Image.fromarray(arr), "PNG")
    path = tmp_path / "x.png"
    path.write_bytes(png)
    for src in (path, str(path), png, bytearray(png), memoryview(png), io.BytesIO(png), Image.fromarray(arr), arr,
                np.moveaxis(arr, -1, 0)):
        out = load_image(src)
        assert out.dtype == np.uint8 and out.shape == (32, 48, 3) and out.flags.c_contiguous
        assert np.array_equal(out, arr), type(src)
    pil = load_image(png, as_pil=True)
    assert isinstance(pil, Image.Image) and pil.mode == "RGB"
    with open(path, "rb") as fh:  # a real file object
        assert np.array_equal(load_image(fh), arr)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(TypeError, match="expected a path"):
        load_image(12345)


def test_exif_orientation_is_applied():
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red, right half blue
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = _encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes())
    raw = np.asarray(Image.open(io.BytesIO(data)))
    assert raw.shape == (20, 40, 3)  # stored sideways
    out = load_image(data)
    assert out.shape == (40, 20, 3)  # upright: portrait
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 60  # red on top after the clockwise turn
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 60
    kept = load_image(data, exif_transpose=False)
    assert kept.shape == (20, 40, 3)


# --------------------------------------------------------------------------- modes
def test_rgba_and_la_are_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 0       # transparent → white
    rgba[0, 1, 3] = 255     # opaque → (200, 0, 0)
    rgba[0, 2, 3] = 128     # half → between
    out = load_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == (200, 0, 0)
    assert tuple(out[0, 2]) == (round(200 * 128 / 255 + 255 * 127 / 255), 127, 127)
    assert tuple(load_image(rgba, background=(0, 0, 0))[0, 0]) == (0, 0, 0)

    la = Image.fromarray(np.array([[[10, 0], [10, 255]]], np.uint8), "LA")
    out = load_image(_encode(la, "PNG"))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == (10, 10, 10)


def test_palette_grey_bilevel_cmyk():
    arr = _gradient()
    p = Image.fromarray(arr).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    out = load_image(_encode(p, "PNG"))
    assert out.shape == arr.shape and np.abs(out.astype(int) - arr).mean() < 20

    # P with a transparent index → white
    pt = Image.new("P", (3, 1))
    pt.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pt.putpixel((0, 0), 1)
    pt.putpixel((1, 0), 0)
    pt.info["transparency"] = 0
    out = load_image(_encode(pt, "PNG", transparency=0))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 1]) == (255, 255, 255)

    grey = Image.fromarray(np.arange(0, 256, 16, dtype=np.uint8).reshape(4, 4), "L")
    out = load_image(_encode(grey, "PNG"))
    assert np.array_equal(out[..., 0], np.asarray(grey)) and np.array_equal(out[..., 0], out[..., 2])

    bilevel = Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1")
    assert load_image(_encode(bilevel, "PNG"))[0].tolist() == [[0, 0, 0], [255, 255, 255]]

    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red ink
    out = load_image(_encode(cmyk, "JPEG", quality=95))
    assert out.shape == (8, 8, 3)
    assert out[4, 4, 0] > 200 and out[4, 4, 1] < 60 and out[4, 4, 2] < 60


def test_sixteen_bit_and_float_are_scaled():
    v = np.array([[0, 257, 32896, 65535]], np.uint16)
    im16 = Image.fromarray(v)
    assert im16.mode.startswith("I;16")
    out = load_image(_encode(im16, "PNG"))
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert load_image(im16)[0, :, 0].tolist() == [0, 1, 128, 255]
    # mode "I" (32-bit) holding 16-bit values, as older Pillow opened 16-bit PNGs
    im_i = Image.fromarray(v.astype(np.int32), "I")
    assert load_image(im_i)[0, :, 0].tolist() == [0, 1, 128, 255]
    # numpy: uint16, float in [0, 1], bool
    assert load_image(v)[0, :, 1].tolist() == [0, 1, 128, 255]
    assert load_image(np.array([[0.0, 0.5, 1.0]], np.float32))[0, :, 0].tolist() == [0, 128, 255]
    assert load_image(np.array([[False, True]]))[0, :, 0].tolist() == [0, 255]
    f = Image.fromarray(np.array([[0.0, 1.0]], np.float32), "F")
    assert load_image(f)[0, :, 0].tolist() == [0, 255]


# --------------------------------------------------------------------------- refusals
def test_truncated_jpeg_is_refused_even_if_pil_was_told_to_tolerate_it(monkeypatch):
    data = _encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)), "JPEG", quality=90)
    for cut in (len(data) // 2, len(data) - 20, len(data) - 2):
        with pytest.raises(TruncatedImageError, match="truncated"):
            load_image(data[:cut])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(TruncatedImageError):
        load_image(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored for whoever set it
    # a half-read PIL image handed over directly is checked as well
    with pytest.raises(TruncatedImageError):
        load_image(Image.open(io.BytesIO(data[: len(data) // 3])))
    assert load_image(data).shape == (128, 128, 3)  # the complete file is fine


def test_non_image_empty_and_text_inputs():
    with pytest.raises(NotAnImageError, match="not a recognised image"):
        load_image(b"%PDF-1.4 this is not a picture at all" * 4)
    with pytest.raises(NotAnImageError):
        load_image(b"<html><body>404</body></html>")
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageError, match="binary mode"):
        load_image(io.StringIO("not bytes"))
    assert issubclass(NotAnImageError, ImageError) and issubclass(ImageError, ValueError)


def test_zero_size_images_are_refused():
    with pytest.raises(ImageError, match="zero size"):
        load_image(_png_header_only(0, 10))
    with pytest.raises(ImageError, match="zero size"):
        load_image(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ImageError, match="zero size"):
        load_image(Image.new("RGB", (0, 0)))


def test_huge_dimensions_are_refused_from_the_header():
    bomb = _png_header_only(100_000, 100_000)
    assert sniff_image_size(bomb) == ("PNG", 100_000, 100_000)
    t0 = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match=r"100000×100000.*max_pixels=50,000,000"):
        load_image(bomb)
    with pytest.raises(ImageTooLargeError):  # even with our limit off, Pillow's bomb guard holds
        load_image(bomb, max_pixels=None)
    assert time.perf_counter() - t0 < 2.0  # nothing was decoded / allocated

    # a real image over a configured limit, in formats sniffed here and through Pillow (TIFF)
    arr = _gradient(64, 64)
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"):
        data = _encode(Image.fromarray(arr), fmt)
        with pytest.raises(ImageTooLargeError, match=r"64×64 .*max_pixels=1,000"):
            load_image(data, max_pixels=1000)
        assert load_image(data, max_pixels=64 * 64).shape == (64, 64, 3)
    with pytest.raises(ImageTooLargeError, match="max_pixels"):
        load_image(arr, max_pixels=100)
    with pytest.raises(ImageTooLargeError, match="max_pixels"):
        load_image(Image.fromarray(arr), max_pixels=100)

    # a TIFF whose header claims 9000×9000 (81 MP, under Pillow's own guard): refused by ours
    tiff = bytearray(_encode(Image.fromarray(_gradient(8, 8)), "TIFF"))
    assert tiff[:4] == b"II*\x00"
    (ifd,) = struct.unpack_from("<I", tiff, 4)
    (count,) = struct.unpack_from("<H", tiff, ifd)
    for i in range(count):  # patch ImageWidth (256) and ImageLength (257)
        entry = ifd + 2 + 12 * i
        tag, typ = struct.unpack_from("<HH", tiff, entry)
        if tag in (256, 257):
            struct.pack_into("<H" if typ == 3 else "<I", tiff, entry + 8, 9000)
    tiff = bytes(tiff)
    with pytest.raises(ImageTooLargeError, match="9000×9000"):
        load_image(tiff)


def test_oversized_payloads_are_refused_before_reading(tmp_path):
    data = _encode(Image.fromarray(_gradient(64, 64)), "PNG")
    n = len(data)
    with pytest.raises(ImageTooLargeError, match=rf"max_bytes={n - 1:,}"):
        load_image(data, max_bytes=n - 1)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    with pytest.raises(ImageTooLargeError, match="max_bytes=100"):
        load_image(path, max_bytes=100)

    class Endless(io.RawIOBase):  # a stream that never ends: must not be read past the limit
        def readable(self):
            return True

        def readinto(self, b):
            b[:] = b"\x00" * len(b)
            return len(b)

    with pytest.raises(ImageTooLargeError, match="max_bytes=1,000"):
        load_image(io.BufferedReader(Endless()), max_bytes=1000)
    assert load_image(data, max_bytes=n).shape == (64, 64, 3)
