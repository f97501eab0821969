"""Image conversion between generator tensors ([-1, 1], NCHW) and files / PIL / numpy."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["to_uint8", "tensor_to_pil", "save_image", "make_grid", "pil_to_tensor", "ImageError"]


class ImageError(ValueError):
    """An input that is not a usable image (names what was wrong)."""


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) or (3, H, W) in [-1, 1] → uint8 (N, H, W, 3), rounded (the TF conversion)."""
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected (N, 3, H, W), got {tuple(images.shape)}")
    x = (images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5 + 0.5
    return x.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def make_grid(images: torch.Tensor | np.ndarray, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile (N, H, W, 3) uint8 (or an (N, 3, H, W) tensor) into one uint8 image."""
    arr = to_uint8(images) if isinstance(images, torch.Tensor) else np.asarray(images)
    n, h, w, c = arr.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    grid = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = arr[i]
    return grid


def tensor_to_pil(images: torch.Tensor, nrow: int | None = None):
    from PIL import Image

    arr = to_uint8(images)
    return Image.fromarray(arr[0] if arr.shape[0] == 1 else make_grid(arr, nrow))


def save_image(images: torch.Tensor | np.ndarray, path: str | os.PathLike, nrow: int | None = None) -> Path:
    """Save a tensor batch (or uint8 array) as one PNG/JPEG (a grid when N > 1)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(images, torch.Tensor):
        img = tensor_to_pil(images, nrow)
    else:
        arr = np.asarray(images)
        img = Image.fromarray(arr if arr.ndim == 3 else make_grid(arr, nrow))
    img.save(path)
    return path


def pil_to_tensor(img, size: int | None = None) -> torch.Tensor:
    """PIL image → (1, 3, H, W) float in [-1, 1] (optionally resized to a square ``size``)."""
    from PIL import Image

    img = img.convert("RGB")
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.LANCZOS)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
