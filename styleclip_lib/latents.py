"""Validation of user-supplied latents, shared by every method.

The one rule of the kit: a latent batch is W+ of shape ``(N, num_ws, w_dim)``.  A single
``(num_ws, w_dim)`` latent gets the batch axis added; anything else is refused with a
message naming the expected shape — a ``[18, 512]`` latent must never become 18 images.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["as_w_plus", "check_prompt", "load_latents", "StoppableRun"]


def as_w_plus(latent, num_ws: int, w_dim: int, *, name: str = "latent", allow_w: bool = False,
              device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return ``latent`` as a float W+ batch ``(N, num_ws, w_dim)``, or raise ``ValueError``.

    ``allow_w=True`` also accepts W of shape ``(N, w_dim)`` (broadcast to every row).
    Non-finite values (NaN/inf) are refused.
    """
    if not isinstance(latent, torch.Tensor):
        try:
            latent = torch.as_tensor(latent)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{name}: expected a tensor of shape (N, {num_ws}, {w_dim}), got {type(latent).__name__}") from e
    if not (latent.is_floating_point()):
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {latent.dtype}")
    shape = tuple(latent.shape)
    if latent.ndim == 2 and shape == (num_ws, w_dim):
        latent = latent[None]
    elif allow_w and latent.ndim == 2 and shape[1] == w_dim:
        latent = latent[:, None, :].expand(-1, num_ws, -1)
    elif not (latent.ndim == 3 and shape[1:] == (num_ws, w_dim)):
        extra = f" or W of shape (N, {w_dim})" if allow_w else ""
        raise ValueError(f"{name}: expected W+ of shape (N, {num_ws}, {w_dim}) or a single ({num_ws}, {w_dim}) latent{extra}, got {shape}")
    if latent.shape[0] == 0:
        raise ValueError(f"{name}: the batch is empty (shape {shape})")
    if not torch.isfinite(latent).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return latent.to(device=device if device is not None else latent.device, dtype=dtype)


def check_prompt(prompt, name: str = "prompt", max_length: int = 300) -> str:
    """A non-empty text prompt (stripped), or ``ValueError``."""
    if not isinstance(prompt, str):
        raise ValueError(f"{name}: expected a string, got {type(prompt).__name__}")
    text = prompt.strip()
    if not text:
        raise ValueError(f"{name}: expected a non-empty text such as 'purple hair', got {prompt!r}")
    if len(text) > max_length:
        raise ValueError(f"{name}: {len(text)} characters, at most {max_length} allowed")
    return text


def load_latents(path: str | os.PathLike, num_ws: int, w_dim: int) -> torch.Tensor:
    """Read W+ latents from a ``.pt`` (tensor or ``{'latents'|'w_plus'|'latent': tensor}``) or ``.npy`` file."""
    from .checkpoint import CheckpointError, describe, load_state

    p = Path(path)
    if p.suffix == ".npy":
        import numpy as np

        try:
            obj = torch.from_numpy(np.load(p, allow_pickle=False))
        except (OSError, ValueError) as e:
            raise CheckpointError(p, f"an unreadable .npy file ({e})", f"W+ latents ({num_ws}, {w_dim})") from None
    else:
        obj = load_state(p, expected=f"W+ latents of shape (N, {num_ws}, {w_dim})")
        if isinstance(obj, dict):
            for k in ("latents", "w_plus", "latent", "w"):
                if isinstance(obj.get(k), torch.Tensor):
                    obj = obj[k]
                    break
            else:
                raise CheckpointError(p, describe(obj), f"a tensor of W+ latents (N, {num_ws}, {w_dim})")
    return as_w_plus(obj.float(), num_ws, w_dim, name=f"latents in {p.name}")


class StoppableRun:
    """Status shared by results of interruptible runs (optimisation, projection): they carry
    ``stopped`` ('completed' | 'callback' | 'interrupted'), ``steps_done`` and ``steps``."""

    @property
    def interrupted(self) -> bool:
        return self.stopped == "interrupted"

    @property
    def completed(self) -> bool:
        return self.steps_done >= self.steps
