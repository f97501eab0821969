"""StyleGAN2 generator in the rosinality/stylegan2-pytorch layout that StyleCLIP uses.

Pure PyTorch (no custom CUDA ops), so it runs on CPU, CUDA and MPS and is
differentiable in W, W+ and StyleSpace S.  State-dict keys are exactly the
reference ones (``style.N``, ``input.input``, ``conv1``, ``to_rgb1``, ``convs.N``,
``to_rgbs.N``, ``noises.noise_N``), so ``stylegan2-ffhq-config-f.pt['g_ema']`` loads
strictly.  The architecture is *inferred from the state dict*
(:func:`generator_from_state_dict`): resolution from the number of ToRGB layers,
``w_dim`` and ``n_mlp`` from the mapping network, channels per resolution from
the conv weights.

StyleSpace codes are handled as a list of ``(N, C)`` tensors, one per modulated
conv in the reference order (``conv1``, ``to_rgb1``, then per resolution block:
upsampling conv, conv, ToRGB).  The reference keeps them as ``(N, 1, C, 1, 1)``;
:func:`to_reference_styles` converts.
"""
from __future__ import annotations

import math
import os
import re
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..checkpoint import CheckpointError, check_state_dict, load_state, strip_prefix
from ..device import resolve_device

__all__ = [
    "Generator",
    "generator_from_state_dict",
    "load_generator",
    "to_reference_styles",
    "from_reference_styles",
]

SQRT2 = math.sqrt(2.0)


# ----------------------------------------------------------------------------- primitives

def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor, negative_slope: float = 0.2, scale: float = SQRT2) -> torch.Tensor:
    """``lrelu(x + b, 0.2)·√2`` (rosinality's CUDA op as pure math): ``b`` broadcasts on dim 1,
    except for 3-D input (the mapper's (N, rows, D)) where it goes on the last dim, as the reference."""
    shape = [1, 1, -1] if x.ndim == 3 else [1, -1] + [1] * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape).to(x.dtype), negative_slope) * scale


def make_kernel(k: Sequence[float]) -> torch.Tensor:
    k = torch.tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad, FIR-filter, downsample (rosinality's ``upfirdn2d_native``, square case)."""
    n, c, h, w = x.shape
    if up > 1:
        x = x.view(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.view(n, c, h * up, w * up)
    p0, p1 = pad
    x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    x = x[:, :, max(-p0, 0): x.shape[2] - max(-p1, 0), max(-p0, 0): x.shape[3] - max(-p1, 0)]
    # The reference flips the kernel before the correlation (true convolution).
    weight = torch.flip(kernel, [0, 1]).to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    x = F.conv2d(x, weight, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate: ``y = x·(W·lr_mul/√D)ᵀ + b·lr_mul``."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0, lr_mul: float = 1.0, activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation:
            out = F.linear(x, self.weight * self.scale)
            return fused_leaky_relu(out, self.bias * self.lr_mul)
        bias = self.bias * self.lr_mul if self.bias is not None else None
        return F.linear(x, self.weight * self.scale, bias)


class Blur(nn.Module):
    def __init__(self, kernel: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        k = make_kernel(kernel)
        if upsample_factor > 1:
            k = k * (upsample_factor ** 2)
        self.register_buffer("kernel", k)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    def __init__(self, kernel: Sequence[float], factor: int = 2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * (factor ** 2))
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution (Karras et al. 2020, eq. 1-3).

    The style ``s = A(w)`` scales the input channels of a shared weight and the
    demodulation divides each output channel by the norm of its modulated
    weight.  Computed as ``conv(x·s, W)·d`` rather than by building per-sample
    weights: identical math, batch-friendly on every device.
    """

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False, blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.demodulate, self.upsample = demodulate, upsample
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)

    def forward_style(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` with this layer modulated by the StyleSpace code ``style`` (N, in_channel)."""
        weight = self.scale * self.weight[0]  # (out, in, k, k)
        # every per-channel factor is cast to the activations' dtype, so that under autocast (or a
        # half-precision model) the activations stay in one low-precision dtype end to end
        x = x * style[:, :, None, None].to(x.dtype)
        if self.upsample:
            # conv_transpose2d takes (in, out, k, k); stride 2 then the FIR blur, as the reference.
            x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2, padding=0)
        else:
            x = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # d_o = 1/sqrt(sum_{i,k} (c·P_oik·s_i)^2 + 1e-8), per sample.
            demod = torch.rsqrt((style * style) @ weight.pow(2).sum(dim=(2, 3)).t() + 1e-8)
            x = x * demod[:, :, None, None].to(x.dtype)
        if self.upsample:
            x = self.blur(x)
        return x

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.forward_style(x, self.modulation(w))


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        if noise is None:
            return x
        return x + (self.weight * noise).to(x.dtype)


class ConstantInput(nn.Module):
    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyledConv(nn.Module):
    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, upsample: bool = False,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = _BiasAct(out_channel)

    def forward_style(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return self.activate(self.noise(self.conv.forward_style(x, style), noise))


class _BiasAct(nn.Module):
    """``FusedLeakyReLU`` of the reference (key ``activate.bias``)."""

    def __init__(self, channel: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias)


class ToRGB(nn.Module):
    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True, blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward_style(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        out = self.conv.forward_style(x, style)
        out = out + self.bias.to(out.dtype)
        if skip is not None:
            out = out + self.upsample(skip)
        return out


# ----------------------------------------------------------------------------- generator

def default_channels(channel_multiplier: int = 2) -> dict[int, int]:
    """Channels per resolution of the official config-f (``channel_multiplier=2``)."""
    cm = channel_multiplier
    return {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm, 1024: 16 * cm}


class Generator(nn.Module):
    """StyleGAN2 generator: mapping network ``z → w`` and synthesis network ``W+ → image``.

    Images are returned as the reference does: the final skip sum, nominally in
    [-1, 1], neither clamped nor squashed.
    """

    def __init__(self, size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1), lr_mlp: float = 0.01, channels: dict[int, int] | None = None):
        super().__init__()
        if size < 4 or size & (size - 1):
            raise ValueError(f"size: expected a power of two >= 4, got {size}")
        self.size = size
        self.style_dim = style_dim
        self.n_mlp = n_mlp
        self.lr_mlp = lr_mlp
        self.blur_kernel = list(blur_kernel)
        chans = dict(default_channels(channel_multiplier))
        if channels:
            chans.update({int(k): int(v) for k, v in channels.items()})
        self.channels = chans

        self.style = nn.Sequential(PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True) for _ in range(n_mlp)])
        self.input = ConstantInput(chans[4])
        self.conv1 = StyledConv(chans[4], chans[4], 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(chans[4], style_dim, upsample=False)

        self.log_size = int(math.log2(size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            res = (i + 5) // 2
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, 2 ** res, 2 ** res))
        in_ch = chans[4]
        for i in range(3, self.log_size + 1):
            out_ch = chans[2 ** i]
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_ch, style_dim, blur_kernel=blur_kernel))
            in_ch = out_ch
        self.n_latent = self.log_size * 2 - 2
        # The rosinality checkpoint stores the mean W next to g_ema; filled by the loader
        # (or mean_latent(4096) when the file has none).
        self.register_buffer("latent_avg", torch.zeros(style_dim))
        #: layout of the synthesis activations.  ``torch.channels_last`` makes oneDNN's CPU
        #: convolutions faster (measured on the toy generator's 64 px layer, forward + backward:
        #: 1.7x in fp32, 5x in bf16 on an AMX CPU); the math is the same in either layout.
        self.memory_format = torch.contiguous_format

    # ---- descriptive attributes (names of the design card)
    @property
    def num_ws(self) -> int:
        return self.n_latent

    @property
    def w_dim(self) -> int:
        return self.style_dim

    @property
    def resolution(self) -> int:
        return self.size

    @property
    def config(self) -> dict:
        return {"size": self.size, "style_dim": self.style_dim, "n_mlp": self.n_mlp, "lr_mlp": self.lr_mlp,
                "blur_kernel": self.blur_kernel, "channels": {str(k): v for k, v in self.channels.items() if k <= self.size}}

    def style_layers(self) -> list[tuple[str, ModulatedConv2d, int, bool]]:
        """(TF-style name, modulated conv, W+ row, is_torgb) for every StyleSpace layer in order."""
        layers = [("conv1_resolution_4", self.conv1.conv, 0, False), ("toRGB_resolution_4", self.to_rgb1.conv, 1, True)]
        for k, to_rgb in enumerate(self.to_rgbs):
            res = 2 ** (k + 3)
            layers.append((f"conv0_resolution_{res}", self.convs[2 * k].conv, 2 * k + 1, False))
            layers.append((f"conv1_resolution_{res}", self.convs[2 * k + 1].conv, 2 * k + 2, False))
            layers.append((f"toRGB_resolution_{res}", to_rgb.conv, 2 * k + 3, True))
        return layers

    @property
    def style_names(self) -> list[str]:
        return [name for name, *_ in self.style_layers()]

    @property
    def style_channels(self) -> list[int]:
        return [conv.in_channel for _, conv, _, _ in self.style_layers()]

    @property
    def conv_style_indices(self) -> list[int]:
        """S indices of the conv (non-ToRGB) layers: ``mindexs`` of the global-directions code."""
        return [i for i, (_, _, _, rgb) in enumerate(self.style_layers()) if not rgb]

    # ---- mapping
    def mapping(self, z: torch.Tensor, truncation: float = 1.0, truncation_latent: torch.Tensor | None = None) -> torch.Tensor:
        """z (N, w_dim) → W (N, w_dim), optionally truncated toward ``truncation_latent`` (default ``latent_avg``)."""
        if z.ndim != 2 or z.shape[1] != self.style_dim:
            raise ValueError(f"z: expected shape (N, {self.style_dim}), got {tuple(z.shape)}")
        w = self.style(z)
        if truncation != 1.0:
            w = self.truncate(w, truncation, truncation_latent)
        return w

    def truncate(self, w: torch.Tensor, truncation: float, truncation_latent: torch.Tensor | None = None) -> torch.Tensor:
        """``tl + ψ·(w − tl)``; works on W and W+ (the reference applies it before broadcasting)."""
        tl = self.latent_avg if truncation_latent is None else truncation_latent
        return tl.reshape(-1)[: self.style_dim] + truncation * (w - tl.reshape(-1)[: self.style_dim])

    @torch.no_grad()
    def mean_latent(self, n: int = 4096, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean of ``mapping(z)`` over ``n`` random z, shape (1, w_dim) as the reference."""
        device = self.input.input.device
        # z is drawn where ``generator`` lives (a seeded CPU generator gives the same mean on every device)
        z = torch.randn(n, self.style_dim, device=generator.device if generator is not None else device, generator=generator)
        return self.style(z.to(device)).mean(0, keepdim=True)

    # ---- W / W+ handling
    def to_w_plus(self, w: torch.Tensor) -> torch.Tensor:
        """W (N, D) → W+ (N, num_ws, D); W+ passes through.  Anything else is refused."""
        if w.ndim == 2 and w.shape[1] == self.style_dim:
            return w[:, None, :].expand(-1, self.n_latent, -1)
        if w.ndim == 3 and w.shape[1:] == (self.n_latent, self.style_dim):
            return w
        raise ValueError(
            f"latent: expected W of shape (N, {self.style_dim}) or W+ of shape (N, {self.n_latent}, {self.style_dim}), "
            f"got {tuple(w.shape)}"
        )

    def styles(self, w_plus: torch.Tensor) -> list[torch.Tensor]:
        """W or W+ → StyleSpace codes: one (N, C) tensor per modulated conv, reference order."""
        w_plus = self.to_w_plus(w_plus)
        return [conv.modulation(w_plus[:, row]) for _, conv, row, _ in self.style_layers()]

    # ---- noise
    def _noise(self, noise_mode: str, batch: int, noise: Sequence[torch.Tensor] | None, generator: torch.Generator | None):
        if noise is not None:
            if len(noise) != self.num_layers:
                raise ValueError(f"noise: expected {self.num_layers} tensors, got {len(noise)}")
            return list(noise)
        if noise_mode == "const":
            return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        if noise_mode == "random":
            dev = self.input.input.device
            return [torch.randn(batch, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2), device=dev, generator=generator,
                                dtype=self.input.input.dtype) for i in range(self.num_layers)]
        if noise_mode == "none":
            return [None] * self.num_layers
        raise ValueError(f"noise_mode: expected 'const', 'random' or 'none', got {noise_mode!r}")

    # ---- synthesis
    def synthesis_from_styles(self, styles: Sequence[torch.Tensor], noise_mode: str = "const",
                              noise: Sequence[torch.Tensor] | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """StyleSpace codes (list of (N, C), or the reference's (N, 1, C, 1, 1)) → image (N, 3, H, W)."""
        layers = self.style_layers()
        if len(styles) != len(layers):
            raise ValueError(f"styles: expected {len(layers)} tensors (one per StyleSpace layer), got {len(styles)}")
        styles = [s.reshape(s.shape[0], -1) for s in styles]
        for s, (name, conv, _, _) in zip(styles, layers):
            if s.shape[1] != conv.in_channel:
                raise ValueError(f"styles[{name}]: expected {conv.in_channel} channels, got {s.shape[1]}")
        batch = styles[0].shape[0]
        noises = self._noise(noise_mode, batch, noise, generator)

        x = self.input(batch)
        if self.memory_format is not torch.contiguous_format:
            x = x.contiguous(memory_format=self.memory_format)  # later layers keep the layout
        x = self.conv1.forward_style(x, styles[0], noises[0])
        skip = self.to_rgb1.forward_style(x, styles[1], None)
        si = 2
        for k, to_rgb in enumerate(self.to_rgbs):
            x = self.convs[2 * k].forward_style(x, styles[si], noises[2 * k + 1])
            x = self.convs[2 * k + 1].forward_style(x, styles[si + 1], noises[2 * k + 2])
            skip = to_rgb.forward_style(x, styles[si + 2], skip)
            si += 3
        return skip

    def synthesis(self, w_plus: torch.Tensor, noise_mode: str = "const", noise: Sequence[torch.Tensor] | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """W (N, D) or W+ (N, num_ws, D) → image (N, 3, H, W).  ``noise_mode``: 'const' (the stored buffers,
        reproducible), 'random' (fresh N(0,1) per call) or 'none'."""
        return self.synthesis_from_styles(self.styles(w_plus), noise_mode=noise_mode, noise=noise, generator=generator)

    def forward(self, z: torch.Tensor, truncation: float = 1.0, truncation_latent: torch.Tensor | None = None,
                noise_mode: str = "const", z2: torch.Tensor | None = None, inject_index: int | None = None) -> torch.Tensor:
        """z → image, with optional style mixing: W+ rows ``[0, inject_index)`` from ``z``, the rest from ``z2``."""
        w_plus = self.to_w_plus(self.mapping(z, truncation, truncation_latent))
        if z2 is not None:
            if inject_index is None or not 0 < inject_index < self.n_latent:
                raise ValueError(f"inject_index: expected an int in [1, {self.n_latent - 1}] with z2, got {inject_index!r}")
            w2 = self.to_w_plus(self.mapping(z2, truncation, truncation_latent))
            w_plus = torch.cat([w_plus[:, :inject_index], w2[:, inject_index:]], dim=1)
        return self.synthesis(w_plus, noise_mode=noise_mode)


# ----------------------------------------------------------------------------- reference-format helpers

def to_reference_styles(styles: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """(N, C) codes → the reference's (N, 1, C, 1, 1) ``style_vector`` tensors."""
    return [s.reshape(s.shape[0], 1, -1, 1, 1) for s in styles]


def from_reference_styles(styles: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    return [s.reshape(s.shape[0], -1) for s in styles]


_EXPECTED = "a StyleGAN2 generator in the rosinality layout ({'g_ema': state_dict, 'latent_avg': ...} or the bare state dict)"


def _unwrap_generator_state(obj, path) -> tuple[dict, torch.Tensor | None]:
    if not isinstance(obj, dict):
        from ..checkpoint import describe
        raise CheckpointError(path, describe(obj), _EXPECTED)
    latent_avg = obj.get("latent_avg") if isinstance(obj.get("latent_avg"), torch.Tensor) else None
    if "g_ema" in obj and isinstance(obj["g_ema"], dict):
        return obj["g_ema"], latent_avg
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        # e4e / StyleCLIP-mapper checkpoints carry the generator under 'decoder.'.
        dec = strip_prefix(obj["state_dict"], "decoder.")
        if dec:
            if latent_avg is not None and latent_avg.ndim == 2:
                latent_avg = latent_avg[0]
            return dec, latent_avg
    if "style.1.weight" in obj and "input.input" in obj:
        return obj, None
    from ..checkpoint import describe
    raise CheckpointError(path, describe(obj), _EXPECTED)


def generator_from_state_dict(state: dict, *, lr_mlp: float = 0.01, latent_avg: torch.Tensor | None = None,
                              path: str = "<state dict>", strict: bool = True) -> Generator:
    """Build a :class:`Generator` whose architecture is inferred from ``state`` and load it.

    ``lr_mlp`` cannot be read from shapes (it rescales the stored mapping
    weights); 0.01 is the value of every official StyleGAN2 checkpoint.
    """
    try:
        style_dim = state["style.1.weight"].shape[1]
        n_mlp = len({m.group(1) for k in state for m in [re.match(r"style\.(\d+)\.weight$", k)] if m})
        n_rgbs = len({m.group(1) for k in state for m in [re.match(r"to_rgbs\.(\d+)\.conv\.weight$", k)] if m})
        size = 2 ** (n_rgbs + 2)
        channels = {4: state["input.input"].shape[1]}
        for k in range(n_rgbs):
            channels[2 ** (k + 3)] = state[f"convs.{2 * k}.conv.weight"].shape[1]
        kernel = state.get("convs.0.conv.blur.kernel")
    except (KeyError, AttributeError, IndexError) as e:
        raise CheckpointError(path, f"a state dict without the generator key {e}", _EXPECTED) from None
    blur_kernel = (1, 3, 3, 1)
    if kernel is not None and kernel.shape[0] != 4:
        raise CheckpointError(path, f"a blur kernel of size {tuple(kernel.shape)}", "the [1,3,3,1] FIR kernel (4x4)")
    with torch.device("meta"):
        g = Generator(size, style_dim, n_mlp, lr_mlp=lr_mlp, channels=channels, blur_kernel=blur_kernel)
    reference = {k: v for k, v in g.state_dict().items() if k != "latent_avg"}
    if strict:
        check_state_dict(path, {k: v for k, v in state.items() if k != "latent_avg"}, reference, expected=_EXPECTED)
    g = g.to_empty(device="cpu")
    full = dict(state)
    # FIR kernels are architectural constants; old files may omit them.
    for k, v in g.state_dict().items():
        if k.endswith("kernel") and k not in full:
            full[k] = make_kernel(blur_kernel) * (4 if "upsample" in k or "blur" in k else 1)
    if latent_avg is None:
        latent_avg = state.get("latent_avg")
    full["latent_avg"] = torch.zeros(style_dim)
    g.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in full.items()}, strict=True)
    if latent_avg is not None:
        g.latent_avg.copy_(latent_avg.reshape(-1)[:style_dim].float())
    else:
        g.latent_avg.copy_(g.mean_latent(4096, generator=torch.Generator().manual_seed(0))[0])
    return g.eval()


def load_generator(name_or_path: str | os.PathLike, device: str | torch.device | None = None,
                   dtype: torch.dtype = torch.float32, lr_mlp: float = 0.01) -> Generator:
    """Load a StyleGAN2 generator from a checkpoint path or a registry name.

    Accepts the rosinality file (``g_ema`` + ``latent_avg``; ``g``/``d`` ignored),
    a bare generator state dict, and e4e/mapper checkpoints (``decoder.*``).
    The model is returned in eval mode with gradients disabled on its parameters
    (latents are what the methods optimise).
    """
    from ..pretrained import resolve

    path = resolve(name_or_path, kind="generator")
    obj = load_state(path, expected=_EXPECTED)
    state, latent_avg = _unwrap_generator_state(obj, path)
    g = generator_from_state_dict(state, lr_mlp=lr_mlp, latent_avg=latent_avg, path=str(path))
    g.requires_grad_(False)
    return g.to(device=resolve_device(device), dtype=dtype)
