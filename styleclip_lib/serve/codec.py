"""Decoding request payloads (base64 images, latents) and encoding results (PNG, data URLs).

Framework-free; every refusal is a :class:`~styleclip_lib.serve.errors.ServiceError` (4xx).
"""
from __future__ import annotations

import base64
import binascii
import io
import re
from typing import Any

import numpy as np
import torch

from .errors import LimitError, ServiceError

__all__ = ["decode_base64", "load_rgb", "rgb_to_tensor", "png_bytes", "data_url", "parse_latent", "fmt_bytes"]

_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w.+-]+=[\w.+-]+)*;base64,", re.IGNORECASE)
_WS = re.compile(r"\s+")


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def decode_base64(text: Any, max_bytes: int, field: str = "image") -> bytes:
    """Bytes of a base64 string (``data:...;base64,`` prefix and whitespace tolerated, URL-safe alphabet too)."""
    if not isinstance(text, str):
        raise ServiceError(400, "bad_base64", f"{field}: expected a base64 string, got {type(text).__name__}")
    s = text.strip()
    m = _DATA_URL.match(s)
    if m:
        s = s[m.end():]
    elif s.startswith("data:"):
        raise ServiceError(400, "bad_base64", f"{field}: a data URL must be base64 encoded ('data:image/png;base64,...')")
    s = _WS.sub("", s)
    if not s:
        raise ServiceError(400, "bad_base64", f"{field}: empty base64 string")
    approx = len(s) * 3 // 4
    if approx > max_bytes + 3:
        raise LimitError("max_upload_bytes", f"{field}: about {fmt_bytes(approx)} of image data, over the limit of "
                         f"max_upload_bytes={max_bytes} ({fmt_bytes(max_bytes)})", value=approx, max=max_bytes, status=413)
    if "-" in s or "_" in s:
        s = s.replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    try:
        data = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError(400, "bad_base64", f"{field}: not valid base64 (send the file's bytes base64-encoded, "
                                              "optionally as a data URL)") from None
    if len(data) > max_bytes:
        raise LimitError("max_upload_bytes", f"{field}: {fmt_bytes(len(data))} of image data, over the limit of "
                         f"max_upload_bytes={max_bytes} ({fmt_bytes(max_bytes)})", value=len(data), max=max_bytes, status=413)
    return data


def load_rgb(data: bytes, max_bytes: int, max_pixels: int, field: str = "image") -> np.ndarray:
    """(H, W, 3) uint8 of image-file bytes, through :func:`styleclip_lib.photo_io.load_image` (EXIF, modes, limits)."""
    from ..photo_io import ImageError, ImageTooLargeError, load_image

    try:
        return load_image(data, max_pixels=max_pixels, max_bytes=max_bytes)
    except ImageTooLargeError as e:
        msg = str(e)
        limit = "max_image_pixels" if "max_pixels" in msg or "pixels" in msg else "max_upload_bytes"
        mx = max_pixels if limit == "max_image_pixels" else max_bytes
        msg = re.sub(r"\bmax_pixels\b", "max_image_pixels", re.sub(r"\bmax_bytes\b", "max_upload_bytes", msg))
        raise LimitError(limit, f"{field}: {msg}", max=mx, status=413) from None
    except ImageError as e:
        raise ServiceError(400, "bad_image", f"{field}: {e}") from None


def rgb_to_tensor(rgb: np.ndarray, size: int) -> torch.Tensor:
    """Centre-crop to a square, resize to ``size`` (LANCZOS), → (1, 3, size, size) float in [-1, 1]."""
    from PIL import Image

    h, w = rgb.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    img = Image.fromarray(np.ascontiguousarray(rgb[top:top + s, left:left + s]))
    if img.size != (size, size):
        img = img.resize((size, size), Image.LANCZOS)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def png_bytes(image: torch.Tensor) -> bytes:
    """One (3, H, W) generator image in [-1, 1] → PNG bytes."""
    from PIL import Image

    from ..imageio import to_uint8

    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)[0]).save(buf, format="PNG")
    return buf.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _shape_of(x: Any, depth: int = 0) -> tuple:
    """Shape of a rectangular nested list (ValueError when ragged or too deep); counts elements cheaply."""
    if isinstance(x, (list, tuple)):
        if depth >= 3:
            raise ValueError("nested more than 3 levels deep")
        if not x:
            return (0,)
        shapes = {_shape_of(v, depth + 1) for v in x}
        if len(shapes) != 1:
            raise ValueError("ragged nested lists (rows of different lengths)")
        return (len(x), *shapes.pop())
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"expected numbers, found {type(x).__name__}")
    return ()


def parse_latent(value: Any, num_ws: int, w_dim: int, max_batch: int) -> torch.Tensor:
    """Nested lists → W+ ``(N, num_ws, w_dim)`` float32 (``(num_ws, w_dim)`` gets the batch axis)."""
    from ..latents import as_w_plus

    expected = f"W+ of shape (N, {num_ws}, {w_dim}) or a single ({num_ws}, {w_dim}) latent"
    try:
        shape = _shape_of(value)
    except (ValueError, RecursionError) as e:
        raise ServiceError(400, "bad_latent", f"latent: expected {expected} as nested lists of numbers; {e}") from None
    if len(shape) == 3 and shape[0] > max_batch:
        raise LimitError("max_batch", f"latent: a batch of {shape[0]} latents, over the limit of max_batch={max_batch}",
                         value=shape[0], max=max_batch)
    try:
        t = torch.tensor(value, dtype=torch.float32)
        return as_w_plus(t, num_ws, w_dim, name="latent")
    except (ValueError, TypeError, RuntimeError) as e:
        raise ServiceError(400, "bad_latent", str(e) if "latent" in str(e) else f"latent: expected {expected}: {e}") from None
