"""OpenAI CLIP (ViT and ModifiedResNet image towers, text transformer), loadable from
OpenAI checkpoints.

Written from the semantics of openai-clip 1.0.1 ``clip/model.py`` as specified in
``shared/conformance/clip/README.md``; parameter names follow the OpenAI state-dict
layout exactly, so ``ViT-B-32.pt`` and friends load strictly.

Differences from the reference that do not change the math:

* Everything runs batch-first (``[N, L, D]``); attention is
  ``F.scaled_dot_product_attention`` over the packed ``in_proj`` weights.
* The causal text mask is built on the input's device at each call (no ``.cuda()``
  anywhere; works on CPU, CUDA and MPS).
* :func:`build_model` loads the stored values as they are and casts the whole
  model to one dtype (float32 by default).  The reference rounds the fp16-class
  weights to fp16 first; for OpenAI checkpoints they are fp16 already, so the
  result is identical.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import CheckpointError, check_state_dict, describe, load_state
from ..device import resolve_device

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "clip_normalize",
    "LayerNorm",
    "QuickGELU",
    "MultiheadSelfAttention",
    "ResidualAttentionBlock",
    "Transformer",
    "VisionTransformer",
    "Bottleneck",
    "AttentionPool2d",
    "ModifiedResNet",
    "CLIP",
    "CLIPConfig",
    "infer_config",
    "build_visual",
    "build_model",
    "load_clip",
    "EXTRA_KEYS",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_EXPECTED = "an OpenAI CLIP state dict (keys 'visual.*', 'transformer.resblocks.*', 'token_embedding.weight', ...)"


def clip_normalize(x01: torch.Tensor) -> torch.Tensor:
    """CLIP's per-channel mean/std normalisation of RGB images in [0, 1] (``[N,3,H,W]``)."""
    mean = torch.tensor(CLIP_MEAN, dtype=x01.dtype, device=x01.device).view(-1, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x01.dtype, device=x01.device).view(-1, 1, 1)
    return (x01 - mean) / std


# --------------------------------------------------------------------------- blocks
class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back (fp16-safe, whatever the param dtype)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): CLIP's GELU approximation (not ``nn.GELU``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def causal_mask(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask: -inf above the diagonal (position i sees j <= i), 0 elsewhere."""
    return torch.full((n, n), float("-inf"), device=device, dtype=dtype).triu_(1)


class MultiheadSelfAttention(nn.Module):
    """Self-attention with ``nn.MultiheadAttention``'s parameter layout
    (``in_proj_weight`` rows = [q; k; v], ``out_proj``), batch first."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.num_heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        n, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        # [N, L, 3, H, d] -> 3 x [N, H, L, d]
        q, k, v = qkv.view(n, length, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            # PyTorch's bf16 CPU attention kernel is slow in the backward pass (measured on the toy
            # CLIP: 330 ms against 41 ms in fp32 per step); the projections keep bf16
            with torch.autocast("cpu", enabled=False):
                out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                     attn_mask=None if mask is None else mask.float()).to(q.dtype)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, width))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = MultiheadSelfAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(4 * width, width))])
        )
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual attention blocks over ``[N, L, width]``."""

    def __init__(self, width: int, layers: int, heads: int, causal: bool = False):
        super().__init__()
        self.width, self.layers, self.causal = width, layers, causal
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = causal_mask(x.shape[1], x.device, x.dtype) if self.causal else None
        for block in self.resblocks:
            x = block(x, mask)
        return x


# --------------------------------------------------------------------------- towers
class VisionTransformer(nn.Module):
    """ViT image tower: patchify, class token, positional embedding, transformer,
    ``ln_post`` of the class token, linear projection."""

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int):
        super().__init__()
        self.input_resolution, self.output_dim = input_resolution, output_dim
        grid = input_resolution // patch_size
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[N,3,R,R]`` -> tokens ``[N, grid²+1, width]`` (the input of ``ln_pre``)."""
        x = self.conv1(x).flatten(2).transpose(1, 2)  # [N, grid², width], row-major patches
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transformer(self.ln_pre(self.embed(x)))
        return self.ln_post(x[:, 0]) @ self.proj


class Bottleneck(nn.Module):
    """ResNet-D bottleneck: strided convs replaced by an avg-pool after the 3x3 conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride > 1 or inplanes != planes * 4:
            # key names "-1" (pool, no params), "0" (conv), "1" (bn) as in the checkpoints
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * 4, 1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * 4)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    """Attention pooling: the mean token (plus positional embedding) attends over
    all spatial tokens; returns its projected output ``[N, output_dim]``."""

    def __init__(self, spacial_dim: int, embed_dim: int, num_heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim**2 + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)  # [N, HW, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        h, d = self.num_heads, c // self.num_heads
        # only the output at token 0 is used, so only token 0 needs to be a query
        q = self.q_proj(x[:, :1]).view(n, 1, h, d).transpose(1, 2)
        k = self.k_proj(x).view(n, -1, h, d).transpose(1, 2)
        v = self.v_proj(x).view(n, -1, h, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # [N, H, 1, d]
        return self.c_proj(out.transpose(1, 2).reshape(n, c))


class ModifiedResNet(nn.Module):
    """CLIP's ResNet image tower: 3-conv stem with avg-pool, anti-aliased
    bottleneck stages, attention pooling instead of global average pooling."""

    def __init__(self, layers: tuple[int, int, int, int], output_dim: int, heads: int, input_resolution: int = 224, width: int = 64):
        super().__init__()
        self.output_dim, self.input_resolution = output_dim, input_resolution
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.avgpool(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x.to(self.conv1.weight.dtype))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


# --------------------------------------------------------------------------- CLIP
class CLIP(nn.Module):
    """Image and text encoders with a shared embedding space and a learned logit scale."""

    def __init__(
        self,
        embed_dim: int,
        image_resolution: int,
        vision_layers: int | tuple[int, int, int, int],
        vision_width: int,
        vision_patch_size: int | None,
        context_length: int,
        vocab_size: int,
        transformer_width: int,
        transformer_heads: int,
        transformer_layers: int,
    ):
        super().__init__()
        self.context_length, self.vocab_size, self.embed_dim = context_length, vocab_size, embed_dim
        self.input_resolution = image_resolution
        self.visual = _make_visual(image_resolution, vision_layers, vision_width, vision_patch_size, embed_dim)
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads, causal=True)
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=transformer_width**-0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised images ``[N,3,R,R]`` -> unnormalised features ``[N, embed_dim]``."""
        return self.visual(image.to(self.dtype))

    def text_embed(self, text: torch.Tensor) -> torch.Tensor:
        """Token ids ``[N, L]`` -> token + positional embeddings ``[N, L, width]``."""
        if text.dim() != 2 or text.shape[1] > self.context_length:
            raise ValueError(f"text tokens must be [N, L<={self.context_length}], got shape {tuple(text.shape)}")
        return self.token_embedding(text).to(self.dtype) + self.positional_embedding[: text.shape[1]].to(self.dtype)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """Token ids ``[N, 77]`` -> unnormalised features ``[N, embed_dim]`` (pooled at the
        first occurrence of the largest id, the EOT token)."""
        eot = text.argmax(dim=-1)
        # The text tower is causal, so padding after the last EOT cannot change any EOT feature:
        # dropping it is exact and makes short prompts (the usual case) several times cheaper.
        if self.transformer.causal and text.shape[0]:
            text = text[:, : int(eot.max()) + 1]
        x = self.ln_final(self.transformer(self.text_embed(text)))
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(logits_per_image [N_img, N_txt], logits_per_text [N_txt, N_img])``."""
        img = self.encode_image(image)
        txt = self.encode_text(text)
        img = img / img.norm(dim=1, keepdim=True)
        txt = txt / txt.norm(dim=1, keepdim=True)
        logits_per_image = self.logit_scale.exp() * img @ txt.t()
        return logits_per_image, logits_per_image.t()


def _make_visual(resolution, layers, width, patch_size, output_dim) -> nn.Module:
    if isinstance(layers, (tuple, list)):
        return ModifiedResNet(tuple(layers), output_dim, heads=width * 32 // 64, input_resolution=resolution, width=width)
    return VisionTransformer(resolution, patch_size, width, layers, heads=width // 64, output_dim=output_dim)


# --------------------------------------------------------------------------- building
@dataclass(frozen=True)
class CLIPConfig:
    """Arguments of :class:`CLIP`, recovered from checkpoint shapes by :func:`infer_config`."""

    embed_dim: int
    image_resolution: int
    vision_layers: int | tuple[int, int, int, int]
    vision_width: int
    vision_patch_size: int | None
    context_length: int
    vocab_size: int
    transformer_width: int
    transformer_heads: int
    transformer_layers: int

    @property
    def is_vit(self) -> bool:
        return not isinstance(self.vision_layers, tuple)

    @property
    def vision_heads(self) -> int:
        return self.vision_width // 64 if self.is_vit else self.vision_width * 32 // 64


def _n_blocks(sd: Mapping[str, Any], prefix: str) -> int:
    """Number of distinct ``i`` in keys ``{prefix}.<i>.*``."""
    depth = prefix.count(".") + 1
    return len({k.split(".")[depth] for k in sd if k.startswith(prefix + ".")})


def _visual_config(sd: Mapping[str, torch.Tensor], source: Any) -> dict:
    """Visual-tower arguments from the ``visual.*`` keys."""
    try:
        if "visual.proj" in sd:
            width = sd["visual.conv1.weight"].shape[0]
            patch = sd["visual.conv1.weight"].shape[-1]
            layers = len([k for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
            grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            return dict(vision_layers=layers, vision_width=width, vision_patch_size=patch,
                        image_resolution=patch * grid, output_dim=sd["visual.proj"].shape[1])
        if "visual.layer1.0.conv1.weight" in sd:
            layers = tuple(_n_blocks(sd, f"visual.layer{b}") for b in (1, 2, 3, 4))
            width = sd["visual.layer1.0.conv1.weight"].shape[0]
            tokens = sd["visual.attnpool.positional_embedding"].shape[0]
            grid = round((tokens - 1) ** 0.5)
            if grid**2 + 1 != tokens:
                raise CheckpointError(source, f"'visual.attnpool.positional_embedding' with {tokens} rows (not grid²+1)", _EXPECTED)
            return dict(vision_layers=layers, vision_width=width, vision_patch_size=None,
                        image_resolution=32 * grid, output_dim=sd["visual.attnpool.c_proj.weight"].shape[0])
    except KeyError as e:
        raise CheckpointError(source, f"a partial CLIP visual tower (missing {e.args[0]!r})", _EXPECTED) from None
    raise CheckpointError(source, describe(sd) + " without 'visual.proj' (ViT) or 'visual.layer1.*' (ResNet)", _EXPECTED)


_TEXT_KEYS = ("positional_embedding", "text_projection", "token_embedding.weight", "ln_final.weight", "logit_scale")


def infer_config(state_dict: Mapping[str, torch.Tensor], source: Any = "<state dict>") -> CLIPConfig:
    """Recover the :class:`CLIP` arguments from tensor shapes (OpenAI ``build_model`` rules)."""
    sd = state_dict
    missing = [k for k in _TEXT_KEYS if k not in sd]
    if missing:
        raise CheckpointError(source, f"{describe(sd)} lacking the CLIP keys {missing}", _EXPECTED)
    vis = _visual_config(sd, source)
    width = sd["ln_final.weight"].shape[0]
    return CLIPConfig(
        embed_dim=sd["text_projection"].shape[1],
        image_resolution=vis["image_resolution"],
        vision_layers=vis["vision_layers"],
        vision_width=vis["vision_width"],
        vision_patch_size=vis["vision_patch_size"],
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        transformer_width=width,
        transformer_heads=width // 64,
        transformer_layers=_n_blocks(sd, "transformer.resblocks"),
    )


def _unwrap(obj: Any, source: Any) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded object: the dict itself, ``obj['state_dict']`` or
    ``obj['model']``; a ``module.`` (DataParallel) prefix is removed."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(source, describe(obj), _EXPECTED)
    for wrapper in ("state_dict", "model"):
        if wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    sd = dict(obj)
    if sd and all(isinstance(k, str) and k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(source, f"{describe(sd)} whose entry {bad[0]!r} is not a tensor", _EXPECTED)
    # a small model may store its token embedding sparsely (only the rows its vocabulary uses)
    return {k: v.to_dense() if v.is_sparse else v for k, v in sd.items()}


def _load_into(model: nn.Module, sd: Mapping[str, torch.Tensor], dtype: torch.dtype, source: Any, expected: str) -> nn.Module:
    """Strict key/shape check, then load (assigning the cast tensors: no double init cost).

    BatchNorm ``num_batches_tracked`` counters (unused in eval) may be absent."""
    reference = model.state_dict()
    check_state_dict(source, sd, reference, expected=expected, optional=("num_batches_tracked",))
    sd = dict(sd)
    for k in reference:
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = torch.zeros((), dtype=torch.long)
    cast = {k: v.detach().to(dtype=dtype if v.is_floating_point() else v.dtype, copy=True) for k, v in sd.items()}
    model.load_state_dict(cast, strict=True, assign=True)
    return model.eval()


def build_visual(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32, source: Any = "<state dict>") -> nn.Module:
    """Image tower alone (ViT or ModifiedResNet) from the ``visual.*`` keys of a CLIP
    state dict (other keys are ignored), in eval mode, cast to ``dtype``."""
    sd = {k[len("visual."):]: v for k, v in _unwrap(state_dict, source).items() if k.startswith("visual.")}
    vis = _visual_config({"visual." + k: v for k, v in sd.items()}, source)
    with torch.device("meta"):
        model = _make_visual(vis["image_resolution"], vis["vision_layers"], vis["vision_width"], vis["vision_patch_size"], vis["output_dim"])
    return _load_into(model, sd, dtype, source, "the 'visual.*' keys of a CLIP state dict")


def build_model(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32, source: Any = "<state dict>") -> CLIP:
    """A :class:`CLIP` whose architecture is inferred from ``state_dict`` shapes, loaded
    strictly, in eval mode, cast to ``dtype``, on the device of the given tensors.

    The 0-dim extras ``input_resolution``, ``context_length`` and ``vocab_size`` of
    OpenAI archives are checked against the inferred config and dropped.  Any other
    missing/unexpected key or wrong shape raises :class:`CheckpointError`.
    Meta tensors give a meta model (structure checks without memory).
    """
    sd = _unwrap(state_dict, source)
    cfg = infer_config(sd, source)
    implied = {"input_resolution": cfg.image_resolution, "context_length": cfg.context_length, "vocab_size": cfg.vocab_size}
    for key in EXTRA_KEYS:
        if key in sd:
            value = sd.pop(key)
            if value.numel() == 1 and value.device.type != "meta" and int(value) != implied[key]:
                raise CheckpointError(source, f"{key}={int(value)} but the tensor shapes imply {implied[key]}", _EXPECTED)
    with torch.device("meta"):
        model = CLIP(**asdict(cfg))
    return _load_into(model, sd, dtype, source, _EXPECTED)


def load_clip(
    name_or_path: str | os.PathLike | Mapping[str, torch.Tensor],
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> CLIP:
    """Load a CLIP model in eval mode on ``device`` (default: CUDA, MPS, then CPU) in ``dtype``.

    ``name_or_path`` is a pretrained name known to :mod:`styleclip_lib.pretrained`, a
    file (OpenAI TorchScript archive such as ``ViT-B-32.pt``, or a plain state dict,
    possibly wrapped as ``{'state_dict': ...}`` / ``{'model': ...}``), or an
    already-loaded state dict.
    """
    if isinstance(name_or_path, Mapping):
        source, obj = "<state dict>", name_or_path
    else:
        from ..pretrained import resolve

        source = resolve(name_or_path, kind="clip")
        obj = load_state(source, expected=_EXPECTED, allow_torchscript=True)
    model = build_model(obj, dtype=dtype, source=source)
    return model.to(resolve_device(device))
