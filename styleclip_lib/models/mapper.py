"""StyleCLIP latent mapper (Patashnik et al. 2021, sec. 5): one network per text prompt.

``LevelsMapper`` splits W+ into coarse / medium / fine row groups, each mapped by
its own 4-layer MLP; the edit is ``w + 0.1·M(w)`` (coefficient hard-coded in the
reference ``inference.py``/``coach.py``).  Key names follow the official
checkpoints, including the reference spelling ``course_mapping``.

The reference hard-codes rows 0–3 / 4–7 / 8–17 for the 18-row FFHQ generator,
i.e. resolutions 4–8 / 16–32 / 64+.  For other generators the same *resolution*
split is used: rows ``[0, 4)``, ``[4, 8)`` and ``[8, num_ws)``; a generator with
``num_ws <= 8`` (32 px) has no fine group.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any

import torch
from torch import nn

from ..checkpoint import CheckpointError, describe, load_state, strip_prefix
from ..device import resolve_device
from .stylegan2 import EqualLinear

__all__ = ["Mapper", "LevelsMapper", "load_mapper", "mapper_checkpoint", "MAPPER_STRENGTH"]

# w_hat = w + MAPPER_STRENGTH * mapper(w) in the reference inference and training code.
MAPPER_STRENGTH = 0.1
_GROUPS = ("coarse", "medium", "fine")
_KEY = {"coarse": "course_mapping", "medium": "medium_mapping", "fine": "fine_mapping"}


class RowPixelNorm(nn.Module):
    """PixelNorm over dim 1.  The mapper feeds (N, rows, D), so this normalises over
    the group's W+ rows, not the features: a reference quirk the checkpoints depend on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class Mapper(nn.Module):
    def __init__(self, latent_dim: int = 512, n_layers: int = 4, lr_mul: float = 0.01):
        super().__init__()
        self.mapping = nn.Sequential(RowPixelNorm(), *[EqualLinear(latent_dim, latent_dim, lr_mul=lr_mul, activation=True) for _ in range(n_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mapping(x)


class LevelsMapper(nn.Module):
    """Coarse / medium / fine mappers over W+ rows; ``forward(w_plus)`` returns the delta."""

    def __init__(self, latent_dim: int = 512, num_ws: int = 18, no_coarse_mapper: bool = False,
                 no_medium_mapper: bool = False, no_fine_mapper: bool = False, split: tuple[int, int] = (4, 8)):
        super().__init__()
        self.latent_dim, self.num_ws, self.split = latent_dim, num_ws, tuple(split)
        bounds = {"coarse": (0, min(split[0], num_ws)), "medium": (min(split[0], num_ws), min(split[1], num_ws)),
                  "fine": (min(split[1], num_ws), num_ws)}
        self.rows = bounds
        disabled = {"coarse": no_coarse_mapper, "medium": no_medium_mapper, "fine": no_fine_mapper}
        self.enabled = {g: (not disabled[g]) and bounds[g][1] > bounds[g][0] for g in _GROUPS}
        for g in _GROUPS:
            if self.enabled[g]:
                setattr(self, _KEY[g], Mapper(latent_dim))

    def forward(self, w_plus: torch.Tensor) -> torch.Tensor:
        if w_plus.ndim != 3 or w_plus.shape[1:] != (self.num_ws, self.latent_dim):
            raise ValueError(f"w_plus: expected shape (N, {self.num_ws}, {self.latent_dim}), got {tuple(w_plus.shape)}")
        parts = []
        for g in _GROUPS:
            a, b = self.rows[g]
            x = w_plus[:, a:b]
            parts.append(getattr(self, _KEY[g])(x) if self.enabled[g] else torch.zeros_like(x))
        return torch.cat(parts, dim=1)

    def edit(self, w_plus: torch.Tensor, strength: float = MAPPER_STRENGTH) -> torch.Tensor:
        """The edited latent ``w + strength·M(w)`` (reference strength 0.1)."""
        return w_plus + strength * self(w_plus)

    @property
    def options(self) -> dict[str, Any]:
        """The reference ``no_*_mapper`` flags of this mapper."""
        return {f"no_{g}_mapper": not self.enabled[g] for g in _GROUPS}


_EXPECTED = "a StyleCLIP mapper checkpoint ({'state_dict': {'mapper.course_mapping.mapping.1.weight': ...}, 'opts': {...}})"


def mapper_checkpoint(mapper: LevelsMapper, opts: dict[str, Any] | None = None, generator_state: dict | None = None) -> dict:
    """The official save format: ``{'state_dict': {'mapper.*'[, 'decoder.*']}, 'opts': {...}}``."""
    state = {f"mapper.{k}": v.detach().cpu() for k, v in mapper.state_dict().items()}
    if generator_state is not None:
        state.update({f"decoder.{k}": v.detach().cpu() for k, v in generator_state.items() if k != "latent_avg"})
    o = {"mapper_type": "LevelsMapper", **mapper.options, "num_ws": mapper.num_ws,
         "stylegan_size": 2 ** ((mapper.num_ws + 2) // 2), "latent_dim": mapper.latent_dim}
    o.update(opts or {})
    return {"state_dict": state, "opts": o}


def load_mapper(name_or_path: str | os.PathLike, device: str | torch.device | None = None, num_ws: int | None = None) -> LevelsMapper:
    """Load an official (or kit-trained) StyleCLIP LevelsMapper checkpoint.

    The variant (which of coarse/medium/fine exist) is inferred from the keys,
    as the reference's ``opts`` flags are overridden at inference time anyway.
    ``num_ws`` defaults to ``opts['num_ws']``, else is derived from
    ``opts['stylegan_size']`` (18 for the official 1024 px mappers).
    """
    from ..pretrained import resolve

    path = resolve(name_or_path, kind="mapper")
    obj = load_state(path, expected=_EXPECTED)
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise CheckpointError(path, describe(obj), _EXPECTED)
    opts = obj.get("opts") or {}
    state = strip_prefix(obj["state_dict"], "mapper.")
    if not state:
        raise CheckpointError(path, "a state dict without 'mapper.*' keys (" + describe(obj["state_dict"]) + ")", _EXPECTED)
    present = {g for g in _GROUPS if f"{_KEY[g]}.mapping.1.weight" in state}
    if not present:
        raise CheckpointError(path, "no course/medium/fine mapping weights", _EXPECTED)
    if opts.get("work_in_stylespace"):
        raise CheckpointError(path, "a StyleSpace mapper (work_in_stylespace=True)", "a W+ LevelsMapper (the only kind StyleCLIP released)")
    latent_dim = state[f"{_KEY[sorted(present)[0]]}.mapping.1.weight"].shape[1]
    if num_ws is None:
        num_ws = int(opts.get("num_ws") or 2 * int(math.log2(int(opts.get("stylegan_size", 1024)))) - 2)
    unknown = [k for k in state if not re.match(r"(course|medium|fine)_mapping\.mapping\.\d+\.(weight|bias)$", k)]
    if unknown:
        raise CheckpointError(path, f"unexpected mapper keys {unknown[:3]}", _EXPECTED)
    mapper = LevelsMapper(latent_dim, num_ws, *(g not in present for g in _GROUPS))
    try:
        mapper.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise CheckpointError(path, f"mapper weights that do not fit ({str(e).splitlines()[0]})", _EXPECTED) from None
    mapper.requires_grad_(False)
    return mapper.eval().to(resolve_device(device))
