"""encoder4editing (e4e): image -> StyleGAN2 W+ inversion encoder.

The encoder is a feature-pyramid network on the ArcFace IR-SE50 body (the
building blocks of :mod:`.arcface`, same key names):

* the IR-SE body gives c1 (end of stage 2: 128 ch, 64x64), c2 (end of stage 3:
  256 ch, 32x32) and c3 (end of stage 4: 512 ch, 16x16) for a 256x256 input;
* ``styles.i`` are :class:`GradualStyleBlock` maps (strided conv3x3 +
  LeakyReLU(0.01) down to 1x1, then an :class:`EqualLinear`); the 18 styles of a
  1024 generator split 3 coarse (read c3), 4 middle (read p2) and 11 fine (read p1),
  where p2 = up(c3) + latlayer1(c2) and p1 = up(p2) + latlayer2(c1), up = bilinear
  with ``align_corners=True``;
* e4e predicts one base code w0 = styles[0](c3) and per-layer offsets:
  w_i = w0 + styles[i](features_i) for i >= 1.

:class:`E4EInverter` (what :func:`load_e4e` returns) adds the checkpoint's
``latent_avg`` and resizes the input to 256; the StyleGAN2 decoder stored in the
same checkpoint is built lazily from :mod:`.stylegan2` on request.
"""
from __future__ import annotations

import inspect
import math
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import CheckpointError, describe, load_state, strip_prefix, is_toy_checkpoint as _is_toy_checkpoint
from ..device import resolve_device
from .arcface import assign_state, get_blocks, infer_body_config, make_body, make_input_layer

__all__ = [
    "EqualLinear",
    "GradualStyleBlock",
    "upsample_add",
    "num_styles_for_size",
    "Encoder4Editing",
    "E4EInverter",
    "encoder_from_state_dict",
    "load_e4e",
    "INPUT_SIZE",
]

#: e4e's training resolution: every input is resized to this
INPUT_SIZE = 256


def num_styles_for_size(size: int) -> int:
    """Number of W+ entries of a StyleGAN2 generator of resolution ``size``: 2*log2(size) - 2."""
    log = int(math.log2(size)) if size > 0 else 0
    if size < 4 or 2 ** log != size:
        raise ValueError(f"stylegan size must be a power of two >= 4, got {size!r}")
    return 2 * log - 2


class EqualLinear(nn.Module):
    """Equalised-learning-rate linear layer: y = x (W / sqrt(in))^T + b (lr_mul 1, no activation)."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = 1.0 / math.sqrt(in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}"


class GradualStyleBlock(nn.Module):
    """Map a (N, in, s, s) feature map to a (N, out) style: log2(s) x [conv3x3 stride 2 + LeakyReLU(0.01)], EqualLinear.

    Convs sit at ``convs.0, .2, .4, ...`` (the activations take the odd slots).
    """

    def __init__(self, in_channel: int, out_channel: int, spatial: int):
        super().__init__()
        n_down = int(math.log2(spatial))
        if spatial < 2 or 2 ** n_down != spatial:
            raise ValueError(f"spatial must be a power of two >= 2, got {spatial!r}")
        self.out_channel = out_channel
        self.spatial = spatial
        layers: list[nn.Module] = []
        for i in range(n_down):
            layers += [nn.Conv2d(in_channel if i == 0 else out_channel, out_channel, 3, 2, 1), nn.LeakyReLU(0.01)]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_channel, out_channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x)
        if x.shape[-2:] != (1, 1):
            raise ValueError(
                f"GradualStyleBlock(spatial={self.spatial}) got a feature map that reduces to "
                f"{tuple(x.shape[-2:])} instead of 1x1: the encoder input must be {INPUT_SIZE}x{INPUT_SIZE}"
            )
        return self.linear(x.flatten(1))


def upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """FPN merge: bilinear (align_corners=True) upsampling of ``x`` to ``y``'s size, plus ``y``."""
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


class Encoder4Editing(nn.Module):
    """The e4e encoder: (N, 3, 256, 256) images in [-1, 1] -> (N, num_ws, style_dim) W+ offsets from the mean.

    Defaults build the released ``Encoder4Editing(50, 'ir_se', opts)`` with
    ``opts.stylegan_size = 1024`` (18 styles).  The number of styles is
    2*log2(stylegan_size) - 2; styles 0-2 read the coarsest map, 3-6 the
    middle one and 7+ the finest (hard-coded 3/7 split, as in the reference).

    ``channels``/``units`` override the stage widths/depths of the IR-SE body
    and ``style_dim`` the code width (tests build narrow instances).  The
    pyramid taps are the ends of stages 2, 3 and 4 (body units 6, 20, 23 for
    the 50-layer network, as in the reference).
    """

    coarse_ind = 3
    middle_ind = 7

    def __init__(
        self,
        num_layers: int = 50,
        mode: str = "ir_se",
        stylegan_size: int = 1024,
        style_dim: int = 512,
        *,
        channels: Sequence[int] | None = None,
        units: Sequence[int] | None = None,
    ):
        super().__init__()
        stages = get_blocks(num_layers, channels, units)
        if len(stages) != 4:
            raise ValueError(f"Encoder4Editing needs a four-stage body, got {len(stages)} stages")
        widths = [stage[-1].depth for stage in stages]
        ends, total = [], 0
        for stage in stages:
            total += len(stage)
            ends.append(total - 1)
        self.taps = (ends[1], ends[2], ends[3])  # c1, c2, c3
        self.style_count = num_styles_for_size(stylegan_size)
        self.stylegan_size = stylegan_size
        self.style_dim = style_dim

        self.input_layer = make_input_layer(stages[0][0].in_channel)
        self.body = make_body(stages, mode)
        feat = widths[3]
        self.styles = nn.ModuleList()
        for i in range(self.style_count):
            spatial = INPUT_SIZE // 16 if i < self.coarse_ind else INPUT_SIZE // 8 if i < self.middle_ind else INPUT_SIZE // 4
            self.styles.append(GradualStyleBlock(feat, style_dim, spatial))
        self.latlayer1 = nn.Conv2d(widths[2], feat, kernel_size=1, stride=1, padding=0)
        self.latlayer2 = nn.Conv2d(widths[1], feat, kernel_size=1, stride=1, padding=0)

    @property
    def num_ws(self) -> int:
        return self.style_count

    def pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The body's feature maps (c1, c2, c3), finest first."""
        x = self.input_layer(x)
        feats = []
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self.taps:
                feats.append(x)
        c1, c2, c3 = feats
        return c1, c2, c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2, c3 = self.pyramid(x)
        w0 = self.styles[0](c3)
        ws = [w0]
        features = c3
        p2 = None
        for i in range(1, self.style_count):
            if i == self.coarse_ind:
                p2 = upsample_add(c3, self.latlayer1(c2))
                features = p2
            elif i == self.middle_ind:
                features = upsample_add(p2, self.latlayer2(c1))
            ws.append(w0 + self.styles[i](features))
        return torch.stack(ws, dim=1)


def _find_generator_builder():
    try:
        from . import stylegan2
    except ImportError as e:
        raise ImportError(
            "E4EInverter.decoder needs styleclip_lib.models.stylegan2 (the StyleGAN2 Generator), "
            f"which could not be imported: {e}"
        ) from e
    for name in ("generator_from_state_dict", "build_generator_from_state_dict"):
        fn = getattr(stylegan2, name, None)
        if fn is not None:
            return fn
    raise ImportError(
        "E4EInverter.decoder needs styleclip_lib.models.stylegan2.generator_from_state_dict "
        "(or build_generator_from_state_dict), which is not defined"
    )


class E4EInverter(nn.Module):
    """Image -> W+ inversion with a loaded e4e encoder.

    ``forward(images)`` takes (N, 3, H, W) images in [-1, 1] (the e4e
    ``ffhq_encode`` transform: Resize(256), ToTensor, Normalize(0.5, 0.5)) and
    returns W+ codes of shape (N, num_ws, style_dim) = encoder(x) + latent_avg.
    Inputs that are not 256x256 are resized with antialiased bilinear
    interpolation (``F.interpolate(..., mode='bilinear', antialias=True)``, the
    tensor analogue of the PIL ``Resize`` used at training time; for 1024 -> 256 it
    is a smooth 4x downsampling, not plain 4x4 averaging).

    Attributes: ``encoder``, ``latent_avg`` (buffer, (num_ws, style_dim)),
    ``num_ws``, ``style_dim``, ``opts`` (the checkpoint's options dict) and
    ``decoder``: the checkpoint's StyleGAN2 generator, built from its
    ``decoder.*`` tensors by ``stylegan2.generator_from_state_dict`` the first
    time it is accessed (given ``latent_avg[0]`` as its mean W; then registered
    as a frozen, eval-mode submodule on the inverter's device).
    """

    def __init__(
        self,
        encoder: Encoder4Editing,
        latent_avg: torch.Tensor | None = None,
        *,
        start_from_latent_avg: bool = True,
        decoder_state: Mapping[str, torch.Tensor] | None = None,
        opts: Mapping | None = None,
        source: str = "<state dict>",
    ):
        super().__init__()
        self.encoder = encoder
        shape = (encoder.num_ws, encoder.style_dim)
        self._file_latent_avg = latent_avg is not None
        if latent_avg is None:
            latent_avg = torch.zeros(shape, device=next(encoder.parameters()).device)
        elif tuple(latent_avg.shape) != shape:
            raise ValueError(f"latent_avg must have shape {shape}, got {tuple(latent_avg.shape)}")
        self.register_buffer("latent_avg", latent_avg.detach().clone().float())
        self.start_from_latent_avg = bool(start_from_latent_avg)
        self.opts = dict(opts) if opts is not None else {}
        self._decoder_state = dict(decoder_state) if decoder_state else None
        self.source = str(source)

    @property
    def num_ws(self) -> int:
        return self.encoder.num_ws

    @property
    def style_dim(self) -> int:
        return self.encoder.style_dim

    @property
    def has_decoder(self) -> bool:
        """Whether a decoder is available (already built, or its tensors are kept)."""
        return self._modules.get("decoder") is not None or self._decoder_state is not None

    @property
    def decoder(self) -> nn.Module:
        dec = self._modules.get("decoder")
        if dec is None:
            if self._decoder_state is None:
                raise RuntimeError("this E4EInverter holds no decoder tensors (checkpoint without 'decoder.*' keys)")
            build = _find_generator_builder()
            params = inspect.signature(build).parameters
            kwargs = {"path": self.source} if "path" in params else {}
            if self._file_latent_avg and "latent_avg" in params:
                # the generator's mean W is the one e4e was trained around (row 0 of latent_avg)
                kwargs["latent_avg"] = self.latent_avg[0].detach().cpu()
            dec = build(self._decoder_state, **kwargs)
            dec = dec.to(self.latent_avg.device).eval()
            dec.requires_grad_(False)
            # registered as a submodule (``add_module`` would call this property via hasattr)
            self._modules["decoder"] = dec
            self._decoder_state = None
        return dec

    @staticmethod
    def resize(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
        """Resize (N, C, H, W) to size x size (antialiased bilinear); a no-op when already that size."""
        if tuple(x.shape[-2:]) == (size, size):
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"E4EInverter: expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
        codes = self.encoder(self.resize(images))
        if self.start_from_latent_avg:
            codes = codes + self.latent_avg.unsqueeze(0)
        return codes


_EXPECTED = "an e4e checkpoint (a dict with 'state_dict' of 'encoder.*'/'decoder.*' tensors, 'latent_avg', 'opts')"


def encoder_from_state_dict(
    state: Mapping[str, torch.Tensor],
    stylegan_size: int | None = None,
    *,
    path="<state dict>",
    expected: str = _EXPECTED,
) -> Encoder4Editing:
    """An :class:`Encoder4Editing` (CPU, float32) holding ``state`` (keys without the ``encoder.`` prefix).

    Stage widths/units, IR vs IR-SE and the style width are read from the
    shapes; the number of styles must match ``stylegan_size`` when given.  Then
    the key/shape check is strict (``num_batches_tracked`` optional).
    """
    try:
        cfg = infer_body_config(state)
        style_dim = int(state["styles.0.linear.weight"].shape[0])
    except (ValueError, KeyError, IndexError) as e:
        raise CheckpointError(path, describe(state) + f" that is not an e4e encoder ({e})", expected) from None
    n_styles = len({k.split(".")[1] for k in state if k.startswith("styles.")})
    if stylegan_size is None:
        stylegan_size = 2 ** ((n_styles + 2) // 2)
    try:
        expected_styles = num_styles_for_size(int(stylegan_size))
    except ValueError as e:
        raise CheckpointError(path, f"opts['stylegan_size'] = {stylegan_size!r}", expected + f" ({e})") from None
    if n_styles != expected_styles:
        raise CheckpointError(
            path,
            f"an encoder with {n_styles} style blocks",
            f"{expected_styles} style blocks for stylegan_size {stylegan_size} (2*log2(size)-2)",
        )
    with torch.device("meta"):
        try:
            enc = Encoder4Editing(mode=cfg["mode"], stylegan_size=int(stylegan_size), style_dim=style_dim,
                                  channels=cfg["channels"], units=cfg["units"])
        except ValueError as e:
            raise CheckpointError(path, f"an e4e encoder of unsupported shape ({e})", expected) from None
    return assign_state(enc, state, path, expected)


def load_e4e(name_or_path, device=None, *, keep_decoder: bool = True) -> E4EInverter:
    """Load an official e4e checkpoint (e.g. ``e4e_ffhq_encode.pt``) as a frozen :class:`E4EInverter`.

    The file is ``{'state_dict': {'encoder.*', 'decoder.*'}, 'latent_avg': [18, 512],
    'opts': {...}}`` and is read with ``torch.load(weights_only=True)``.
    ``opts['encoder_type']`` must be ``'Encoder4Editing'`` when present (a pSp
    ``GradualStyleEncoder`` checkpoint is refused), ``opts['stylegan_size']``
    (default: inferred from the number of style blocks) fixes the number of
    styles, and ``opts['start_from_latent_avg']`` (default True) whether
    ``latent_avg`` is added.  ``latent_avg`` may be [num_ws, D] or a single
    [D] / [1, D] mean W (repeated).  Every mismatch raises
    :class:`~styleclip_lib.checkpoint.CheckpointError`.

    The ``decoder.*`` tensors are kept on the CPU (``keep_decoder=True``) so
    that ``inverter.decoder`` can build the generator on first access; they are
    not checked here (the generator's own loader checks them).
    """
    from ..pretrained import resolve

    dev = resolve_device(device)
    path = resolve(name_or_path, kind="e4e")
    if _is_toy_checkpoint(path):
        # the toy world's encoder net has the same call contract (images in [-1, 1] -> W+)
        from ..toy.nets import load_net

        return load_net(path, "encoder", device=dev)
    ckpt = load_state(path, expected=_EXPECTED)
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping):
        hint = ""
        if isinstance(ckpt, Mapping) and ("g_ema" in ckpt or "generator" in ckpt):
            hint = " (a StyleGAN2 generator checkpoint, not e4e)"
        elif isinstance(ckpt, Mapping) and any(str(k).startswith("input_layer.") for k in ckpt):
            hint = " (a bare IR-SE state dict, e.g. ArcFace, not e4e)"
        raise CheckpointError(path, describe(ckpt) + hint, _EXPECTED)

    opts = ckpt.get("opts")
    if opts is None:
        opts = {}
    if not isinstance(opts, Mapping):
        raise CheckpointError(path, f"'opts' of type {type(opts).__name__}", "'opts' as a dict")
    encoder_type = opts.get("encoder_type")
    if encoder_type is not None and encoder_type != "Encoder4Editing":
        raise CheckpointError(path, f"opts['encoder_type'] = {encoder_type!r}", "'Encoder4Editing' (an e4e checkpoint)")

    sd = ckpt["state_dict"]
    bad = [k for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(path, f"non-tensor 'state_dict' entries {bad[:3]!r}", _EXPECTED)
    other = [k for k in sd if not (k.startswith("encoder.") or k.startswith("decoder."))]
    if other:
        raise CheckpointError(path, f"{len(other)} unexpected 'state_dict' keys (e.g. {other[:3]})",
                              "only 'encoder.*' and 'decoder.*' keys")
    enc_state = strip_prefix(sd, "encoder.")
    dec_state = strip_prefix(sd, "decoder.")
    if not enc_state:
        raise CheckpointError(path, "a 'state_dict' with no 'encoder.*' keys", _EXPECTED)

    encoder = encoder_from_state_dict(enc_state, opts.get("stylegan_size"), path=path)
    shape = (encoder.num_ws, encoder.style_dim)

    start = bool(opts.get("start_from_latent_avg", True))
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is None:
        if start:
            raise CheckpointError(path, "no 'latent_avg' (while opts['start_from_latent_avg'] is true)",
                                  f"'latent_avg' of shape {list(shape)}")
    else:
        if not isinstance(latent_avg, torch.Tensor):
            raise CheckpointError(path, f"'latent_avg' of type {type(latent_avg).__name__}", "a tensor")
        if tuple(latent_avg.shape) in ((shape[1],), (1, shape[1])):
            latent_avg = latent_avg.reshape(1, shape[1]).repeat(shape[0], 1)
        if tuple(latent_avg.shape) != shape:
            raise CheckpointError(path, f"'latent_avg' of shape {list(latent_avg.shape)}",
                                  f"shape {list(shape)} (or [{shape[1]}])")
        latent_avg = latent_avg.float()

    inverter = E4EInverter(encoder, latent_avg, start_from_latent_avg=start,
                           decoder_state=dec_state if keep_decoder else None, opts=opts, source=str(path))
    inverter.requires_grad_(False)
    return inverter.to(dev).eval()
