"""StyleCLIP latent mapper (Patashnik et al. 2021, sec. 5): one network per text prompt.

``LevelsMapper`` splits W+ into coarse / medium / fine row groups, each mapped by
its own 4-layer MLP; the edit is ``w + 0.1·M(w)`` (coefficient hard-coded in the
reference ``inference.py``/``coach.py``).  Key names follow the official
checkpoints, including the reference spelling ``course_mapping``.

The reference hard-codes rows 0–3 / 4–7 / 8–17 for the 18-row FFHQ generator,
i.e. resolutions 4–8 / 16–32 / 64+.  For other generators the same *resolution*
split is used: rows ``[0, 4)``, ``[4, 8)`` and ``[8, num_ws)``; a generator with
``num_ws <= 8`` (32 px) has no fine group.

``StyleSpaceMapper`` is the reference's ``WithoutToRGBStyleSpaceMapper`` (``--work_in_stylespace``):
one 4-layer MLP per conv StyleSpace layer, fed that layer's style codes, the edit
``s + 0.1·M_l(s)`` on every conv layer and none on the ToRGB layers (the layers global
directions manipulates too).  Keys ``mapper_{i}.mapping.{1..4}.*`` with ``i`` the layer's index
in the full StyleSpace list (conv and ToRGB, reference order), as the reference names them.
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

__all__ = ["Mapper", "LevelsMapper", "StyleSpaceMapper", "load_mapper", "mapper_checkpoint", "MAPPER_STRENGTH"]

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


class StyleSpaceMapper(nn.Module):
    """One mapper per conv StyleSpace layer; ``forward(styles)`` returns one delta per layer.

    ``style_channels``: the channel count of every StyleSpace layer (``Generator.style_channels``,
    conv and ToRGB); ``conv_indices``: which of them are conv layers (default: the StyleGAN2
    order conv, ToRGB, then conv, conv, ToRGB per resolution, i.e. every index but 1, 4, 7, ...).
    Each MLP's PixelNorm normalises over its layer's channels, as the reference's (it flattens
    each layer to (N, C) first).

    ``channel_scale`` / ``channel_sign`` (a kit addition, see ``MapperTrainer(channel_beta=)``):
    one ``(C_l,)`` tensor per StyleSpace layer.  With a scale, layer ``l``'s delta is
    ``scale_l · M_l(s)``, channels of scale 0 never move; with signs as well it is
    ``scale_l · sign_l · softplus(M_l(s))``, so every kept channel moves only the way its sign
    says and the mapper chooses how far.  Stored as buffers ``scale_{i}`` / ``sign_{i}``.
    """

    work_in_stylespace = True

    def __init__(self, style_channels, conv_indices=None, channel_scale=None, channel_sign=None):
        super().__init__()
        self.style_channels = [int(c) for c in style_channels]
        n = len(self.style_channels)
        if conv_indices is None:
            conv_indices = [i for i in range(n) if i % 3 != 1]
        self.conv_indices = sorted(int(i) for i in conv_indices)
        if not self.conv_indices or self.conv_indices[0] < 0 or self.conv_indices[-1] >= n:
            raise ValueError(f"conv_indices: expected indices into the {n} StyleSpace layers, got {conv_indices!r}")
        for i in self.conv_indices:
            setattr(self, f"mapper_{i}", Mapper(self.style_channels[i]))
        if channel_sign is not None and channel_scale is None:
            raise ValueError("channel_sign: needs channel_scale (the channels it applies to)")
        self.masked, self.signed = channel_scale is not None, channel_sign is not None
        for name, values in (("scale", channel_scale), ("sign", channel_sign)):
            if values is None:
                continue
            if len(values) != n:
                raise ValueError(f"channel_{name}: expected {n} per-layer tensors, got {len(values)}")
            for i in self.conv_indices:
                v = torch.as_tensor(values[i], dtype=torch.float32).reshape(-1)
                if v.numel() != self.style_channels[i] or not torch.isfinite(v).all():
                    raise ValueError(f"channel_{name}[{i}]: expected {self.style_channels[i]} finite values")
                if name == "scale" and bool((v < 0).any()):
                    raise ValueError(f"channel_scale[{i}]: expected values >= 0")
                self.register_buffer(f"{name}_{i}", v.clone())

    @property
    def num_styles(self) -> int:
        return len(self.style_channels)

    def _check(self, styles) -> list[torch.Tensor]:
        styles = [s.reshape(s.shape[0], -1) for s in styles]
        got = [s.shape[1] for s in styles]
        if got != self.style_channels:
            raise ValueError(f"styles: expected {self.num_styles} StyleSpace tensors of {self.style_channels} channels, "
                             f"got {len(got)} of {got}")
        return styles

    def forward(self, styles) -> list[torch.Tensor]:
        styles = self._check(styles)
        mapped = set(self.conv_indices)
        return [self._delta(i, s) if i in mapped else torch.zeros_like(s) for i, s in enumerate(styles)]

    def _delta(self, i: int, s: torch.Tensor) -> torch.Tensor:
        d = getattr(self, f"mapper_{i}")(s)
        if self.signed:
            d = getattr(self, f"sign_{i}") * torch.nn.functional.softplus(d)
        if self.masked:
            d = getattr(self, f"scale_{i}") * d
        return d

    def edit(self, styles, strength: float = MAPPER_STRENGTH) -> list[torch.Tensor]:
        """The edited codes ``s + strength·M(s)`` (reference strength 0.1)."""
        styles = self._check(styles)
        return [s + strength * d for s, d in zip(styles, self(styles))]

    @property
    def options(self) -> dict[str, Any]:
        return {"work_in_stylespace": True, "style_channels": list(self.style_channels),
                "conv_indices": list(self.conv_indices), "channel_masked": self.masked, "channel_signed": self.signed}


_EXPECTED = "a StyleCLIP mapper checkpoint ({'state_dict': {'mapper.course_mapping.mapping.1.weight': ...}, 'opts': {...}})"


def mapper_checkpoint(mapper, opts: dict[str, Any] | None = None, generator_state: dict | None = None) -> dict:
    """The official save format: ``{'state_dict': {'mapper.*'[, 'decoder.*']}, 'opts': {...}}``."""
    state = {f"mapper.{k}": v.detach().cpu() for k, v in mapper.state_dict().items()}
    if generator_state is not None:
        state.update({f"decoder.{k}": v.detach().cpu() for k, v in generator_state.items() if k != "latent_avg"})
    if isinstance(mapper, StyleSpaceMapper):
        # 3·log2(size) − 4 StyleSpace layers (26 at 1024 px)
        o = {"mapper_type": "LevelsMapper", **mapper.options, "stylegan_size": 2 ** ((mapper.num_styles + 4) // 3)}
    else:
        o = {"mapper_type": "LevelsMapper", **mapper.options, "work_in_stylespace": False, "num_ws": mapper.num_ws,
             "stylegan_size": 2 ** ((mapper.num_ws + 2) // 2), "latent_dim": mapper.latent_dim}
    o.update(opts or {})
    return {"state_dict": state, "opts": o}


def load_mapper(name_or_path: str | os.PathLike, device: str | torch.device | None = None, num_ws: int | None = None):
    """Load an official (or kit-trained) StyleCLIP mapper checkpoint: a W+ ``LevelsMapper`` or a
    ``StyleSpaceMapper`` (``work_in_stylespace``), told apart by the keys.

    LevelsMapper: the variant (which of coarse/medium/fine exist) is inferred from the keys,
    as the reference's ``opts`` flags are overridden at inference time anyway.
    ``num_ws`` defaults to ``opts['num_ws']``, else is derived from
    ``opts['stylegan_size']`` (18 for the official 1024 px mappers).
    StyleSpaceMapper: the conv layers and their widths come from the keys; a ToRGB layer has the
    width of the conv layer before it, and the list ends with a ToRGB layer.
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
    if any(re.match(r"mapper_\d+\.", k) for k in state):
        mapper = _style_space_mapper(path, state, opts)
    else:
        mapper = _levels_mapper(path, state, opts, num_ws)
    try:
        mapper.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise CheckpointError(path, f"mapper weights that do not fit ({str(e).splitlines()[0]})", _EXPECTED) from None
    mapper.requires_grad_(False)
    return mapper.eval().to(resolve_device(device))


def _levels_mapper(path, state: dict, opts: dict, num_ws: int | None) -> LevelsMapper:
    present = {g for g in _GROUPS if f"{_KEY[g]}.mapping.1.weight" in state}
    if not present:
        raise CheckpointError(path, "no course/medium/fine mapping weights", _EXPECTED)
    latent_dim = state[f"{_KEY[sorted(present)[0]]}.mapping.1.weight"].shape[1]
    if num_ws is None:
        num_ws = int(opts.get("num_ws") or 2 * int(math.log2(int(opts.get("stylegan_size", 1024)))) - 2)
    unknown = [k for k in state if not re.match(r"(course|medium|fine)_mapping\.mapping\.\d+\.(weight|bias)$", k)]
    if unknown:
        raise CheckpointError(path, f"unexpected mapper keys {unknown[:3]}", _EXPECTED)
    return LevelsMapper(latent_dim, num_ws, *(g not in present for g in _GROUPS))


def _style_space_mapper(path, state: dict, opts: dict) -> StyleSpaceMapper:
    unknown = [k for k in state if not re.match(r"(mapper_\d+\.mapping\.\d+\.(weight|bias)|(scale|sign)_\d+)$", k)]
    if unknown:
        raise CheckpointError(path, f"unexpected StyleSpace mapper keys {unknown[:3]}",
                              "a StyleSpace mapper ({'mapper.mapper_0.mapping.1.weight': ...})")
    widths = {}
    for k, v in state.items():
        if k.endswith(".mapping.1.weight"):
            widths[int(k.split(".")[0][len("mapper_"):])] = int(v.shape[1])
    conv = sorted(widths)
    channels = opts.get("style_channels")
    if channels is None:
        channels = []
        for i in range(conv[-1] + 2):
            channels.append(widths[i] if i in widths else (channels[-1] if channels else 0))
    extra = {}
    for name in ("scale", "sign"):
        if any(k.startswith(f"{name}_") for k in state):
            missing = [i for i in conv if f"{name}_{i}" not in state]
            if missing:
                raise CheckpointError(path, f"a channel-masked StyleSpace mapper without {name}_{missing[0]}",
                                      f"{name}_<i> for every conv layer {conv}")
            extra[f"channel_{name}"] = [state[f"{name}_{i}"] if i in widths else None for i in range(len(channels))]
    return StyleSpaceMapper(channels, conv, **extra)
