"""ArcFace IR-SE50 face-recognition network, as StyleCLIP's identity loss uses it.

The network is the "improved residual" (IR) ResNet of InsightFace with
squeeze-and-excitation (SE) gates, trained with the ArcFace margin loss; the
released ``model_ir_se50.pth`` (TreB1eN InsightFace_Pytorch) is a plain
state dict that this module loads with the reference key names:

* ``input_layer``: conv3x3 3->64, BN, PReLU;
* ``body.N``: 24 IR-SE units in four stages of (3, 4, 14, 3) units at widths
  (64, 128, 256, 512); the first unit of every stage has stride 2;
* ``output_layer``: BN2d, Dropout, flatten (C, H, W order), Linear(512*7*7 -> 512), BN1d;
* the embedding is L2-normalised.

:class:`IdentityEncoder` adds StyleCLIP's ``IDLoss.extract_feats`` preprocessing
(average-pool to 256, crop the face, average-pool to 112) in front of it, and
:func:`load_arcface` builds one from a checkpoint file.

The building blocks (:class:`SEModule`, :class:`BottleneckIRSE`,
:func:`get_blocks`) are shared with the e4e encoder (:mod:`.e4e`).
"""
from __future__ import annotations

from collections import namedtuple
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import CheckpointError, check_state_dict, describe, load_state, is_toy_checkpoint as _is_toy_checkpoint
from ..device import resolve_device

__all__ = [
    "Bottleneck",
    "SEModule",
    "BottleneckIR",
    "BottleneckIRSE",
    "get_block",
    "get_blocks",
    "unit_module",
    "make_input_layer",
    "make_body",
    "infer_body_config",
    "Backbone",
    "IdentityEncoder",
    "ArcFaceID",
    "assign_state",
    "backbone_from_state_dict",
    "load_arcface",
    "STAGE_UNITS",
    "STAGE_CHANNELS",
    "FACE_CROP",
]

#: units per stage for the supported depths (InsightFace ``get_blocks``)
STAGE_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
#: width of the four stages
STAGE_CHANNELS = (64, 128, 256, 512)
#: StyleCLIP's face crop on a 256x256 image: rows 35..222, columns 32..219 (188x188)
FACE_CROP = (35, 223, 32, 220)

Bottleneck = namedtuple("Bottleneck", ["in_channel", "depth", "stride"])
Bottleneck.__doc__ = "Description of one IR unit: input width, output width, stride."


def get_block(in_channel: int, depth: int, num_units: int, stride: int = 2) -> list[Bottleneck]:
    """One stage: a strided unit ``in_channel -> depth`` followed by ``num_units - 1`` units at ``depth``."""
    return [Bottleneck(in_channel, depth, stride)] + [Bottleneck(depth, depth, 1) for _ in range(num_units - 1)]


def get_blocks(
    num_layers: int = 50,
    channels: Sequence[int] | None = None,
    units: Sequence[int] | None = None,
) -> list[list[Bottleneck]]:
    """The stages of an IR network of depth ``num_layers`` (50, 100 or 152).

    ``channels`` (stage widths) and ``units`` (units per stage) override the
    standard ones; they exist so that tests can build narrow/shallow networks.
    The first stage's input width equals its own width (the input layer's
    output), as in the reference.
    """
    if units is None:
        if num_layers not in STAGE_UNITS:
            raise ValueError(f"num_layers must be one of {sorted(STAGE_UNITS)}, got {num_layers!r}")
        units = STAGE_UNITS[num_layers]
    channels = tuple(STAGE_CHANNELS if channels is None else channels)
    units = tuple(units)
    if len(channels) != len(units) or not units or min(units) < 1:
        raise ValueError(f"channels {channels} and units {units} must have the same non-zero length, units >= 1")
    stages, in_channel = [], channels[0]
    for depth, n in zip(channels, units):
        stages.append(get_block(in_channel, depth, n))
        in_channel = depth
    return stages


class SEModule(nn.Module):
    """Squeeze-and-excitation gate: x * sigmoid(fc2(relu(fc1(avgpool(x))))), fc = bias-free 1x1 convs."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = channels // reduction
        if hidden < 1:
            raise ValueError(f"SEModule: channels ({channels}) must be >= reduction ({reduction})")
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, padding=0, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = F.adaptive_avg_pool2d(x, 1)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(gate))))
        return x * gate


class BottleneckIR(nn.Module):
    """Improved-residual unit: BN-conv3x3-PReLU-conv3x3(stride)-BN [-SE] plus a shortcut, no activation after the sum.

    The shortcut is a parameter-free ``MaxPool2d(1, stride)`` (plain subsampling)
    when the width is unchanged, otherwise a strided bias-free 1x1 conv + BN.
    """

    se = False

    def __init__(self, in_channel: int, depth: int, stride: int):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, 1, stride, bias=False),
                nn.BatchNorm2d(depth),
            )
        layers = [
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        ]
        if self.se:
            layers.append(SEModule(depth, 16))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class BottleneckIRSE(BottleneckIR):
    """:class:`BottleneckIR` with a squeeze-and-excitation gate (reduction 16) at the end of the residual branch."""

    se = True


def unit_module(mode: str) -> type[BottleneckIR]:
    """``'ir'`` -> :class:`BottleneckIR`, ``'ir_se'`` -> :class:`BottleneckIRSE`."""
    if mode == "ir":
        return BottleneckIR
    if mode == "ir_se":
        return BottleneckIRSE
    raise ValueError(f"mode must be 'ir' or 'ir_se', got {mode!r}")


def make_input_layer(channels: int = 64) -> nn.Sequential:
    """The stem: bias-free conv3x3 3->channels, BN, PReLU (keys ``0``, ``1``, ``2``)."""
    return nn.Sequential(nn.Conv2d(3, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels), nn.PReLU(channels))


def make_body(stages: Sequence[Sequence[Bottleneck]], mode: str = "ir_se") -> nn.Sequential:
    """All units of ``stages`` in one flat ``Sequential`` (keys ``0..N-1``)."""
    unit = unit_module(mode)
    return nn.Sequential(*[unit(b.in_channel, b.depth, b.stride) for stage in stages for b in stage])


def infer_body_config(state: Mapping[str, torch.Tensor]) -> dict:
    """Read ``channels``, ``units`` and ``mode`` of an IR body from a state dict's shapes.

    Uses ``body.N.res_layer.1.weight`` (conv in->depth) of every unit: a stage
    starts at unit 0 and wherever the width changes, so stage widths after the
    first must differ from their predecessor (true of every released network).
    Raises ValueError when the dict does not look like an IR body.
    """
    indices = set()
    for k in state:
        if k.startswith("body."):
            head = k.split(".")[1]
            if head.isdigit():
                indices.add(int(head))
    if not indices:
        raise ValueError("no 'body.N.*' keys")
    n = max(indices) + 1
    if len(indices) != n:
        raise ValueError(f"body units are not numbered 0..{n - 1}")
    channels: list[int] = []
    units: list[int] = []
    for i in range(n):
        key = f"body.{i}.res_layer.1.weight"
        w = state.get(key)
        if w is None or getattr(w, "ndim", 0) != 4:
            raise ValueError(f"missing or malformed {key!r}")
        depth, in_channel = int(w.shape[0]), int(w.shape[1])
        if i == 0 or in_channel != depth:
            channels.append(depth)
            units.append(1)
        else:
            units[-1] += 1
    mode = "ir_se" if "body.0.res_layer.5.fc1.weight" in state else "ir"
    return {"channels": tuple(channels), "units": tuple(units), "mode": mode}


class Backbone(nn.Module):
    """ArcFace IR / IR-SE ResNet mapping a (N, 3, 112, 112) face crop to a unit (N, 512) embedding.

    Defaults are the released IR-SE50 (``Backbone(input_size=112, num_layers=50,
    drop_ratio=0.6, mode='ir_se')`` in the reference).  The input is used as is
    (StyleCLIP feeds generator output in [-1, 1] without further normalisation).
    ``channels``/``units``/``embedding_size`` override the architecture (tests).
    """

    def __init__(
        self,
        num_layers: int = 50,
        mode: str = "ir_se",
        drop_ratio: float = 0.6,
        affine: bool = True,
        *,
        input_size: int = 112,
        embedding_size: int = 512,
        channels: Sequence[int] | None = None,
        units: Sequence[int] | None = None,
    ):
        super().__init__()
        if input_size not in (112, 224):
            raise ValueError(f"input_size must be 112 or 224, got {input_size!r}")
        stages = get_blocks(num_layers, channels, units)
        width = stages[-1][-1].depth
        grid = input_size // 16  # four stride-2 stages
        self.input_size = input_size
        self.embedding_size = embedding_size
        # attribute order = state-dict order of the reference: input_layer, output_layer, body
        self.input_layer = make_input_layer(stages[0][0].in_channel)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.Dropout(drop_ratio),
            nn.Flatten(),
            nn.Linear(width * grid * grid, embedding_size),
            nn.BatchNorm1d(embedding_size, affine=affine),
        )
        self.body = make_body(stages, mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_layer(x)
        x = self.body(x)
        x = self.output_layer(x)
        return F.normalize(x, p=2, dim=1)


class IdentityEncoder(nn.Module):
    """Face-identity embedding of generator images, with StyleCLIP ``IDLoss`` preprocessing.

    ``forward(x)`` takes (N, 3, H, W) images in [-1, 1] (typically 1024 or 256
    square) and returns unit (N, D) embeddings:

    1. if the image is not 256x256, ``AdaptiveAvgPool2d((256, 256))`` (exact 4x4
       averaging for 1024 input);
    2. crop ``x[:, :, 35:223, 32:220]`` (188x188);
    3. ``AdaptiveAvgPool2d((112, 112))``;
    4. :class:`Backbone`.

    StyleCLIP tests only ``H != 256``; here a non-256 width also triggers the
    pooling, which is identical for the square images StyleCLIP uses.

    The backbone is a frozen feature extractor: :meth:`train` keeps it in eval
    mode (BatchNorm always uses its running statistics), so putting a parent
    module in training mode cannot change the embeddings.  Gradients still
    flow to the input.
    """

    def __init__(self, facenet: Backbone, crop: tuple[int, int, int, int] = FACE_CROP):
        super().__init__()
        self.facenet = facenet
        self.crop = tuple(crop)
        self.pool = nn.AdaptiveAvgPool2d((256, 256))
        self.face_pool = nn.AdaptiveAvgPool2d((facenet.input_size, facenet.input_size))
        self.facenet.eval()

    def train(self, mode: bool = True) -> "IdentityEncoder":
        super().train(mode)
        self.facenet.eval()
        return self

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Pool to 256, crop the face region, pool to the backbone's input size."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"IdentityEncoder: expected images of shape (N, 3, H, W), got {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != (256, 256):
            x = self.pool(x)
        top, bottom, left, right = self.crop
        x = x[:, :, top:bottom, left:right]
        return self.face_pool(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.facenet(self.preprocess(x))


ArcFaceID = IdentityEncoder

_EXPECTED = "an ArcFace IR-SE50 state dict (model_ir_se50.pth: input_layer.*, body.*, output_layer.*)"


def _tensor_dict(path, obj, expected: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(path, describe(obj), expected)
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        hint = ""
        if any(k in obj for k in ("g_ema", "state_dict", "generator", "latent_avg", "opts")):
            hint = " (a training checkpoint, not a bare state dict)"
        raise CheckpointError(path, describe(obj) + f" whose entries {bad[:3]!r} are not tensors{hint}", expected)
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def assign_state(module: nn.Module, state: Mapping[str, torch.Tensor], path, expected: str) -> nn.Module:
    """Check ``state`` against ``module`` (built on any device, typically meta) and assign its tensors.

    Missing ``num_batches_tracked`` entries are allowed (filled with 0); every
    other key must be present with the module's shape, and no extra key may
    appear (:class:`CheckpointError` otherwise).  Floating tensors are cast to
    float32.  Returns ``module`` holding the (CPU) tensors of ``state``.
    """
    reference = module.state_dict()
    check_state_dict(path, state, reference, expected=expected, optional=("num_batches_tracked",))
    full = {}
    for k, ref in reference.items():
        if k in state:
            v = state[k]
            full[k] = v.float() if v.is_floating_point() else v.to(ref.dtype)
        else:
            full[k] = torch.zeros((), dtype=torch.long)
    module.load_state_dict(full, strict=True, assign=True)  # every tensor of the module is in ``full``
    return module


def backbone_from_state_dict(
    state: Mapping[str, torch.Tensor], *, path="<state dict>", expected: str = _EXPECTED
) -> Backbone:
    """A :class:`Backbone` (CPU, float32) holding ``state``; architecture inferred from the shapes.

    The widths/units per stage, IR vs IR-SE, embedding size and BN1d
    ``affine`` are read from the dict (the released file gives IR-SE50); the
    input size is 112 (a 7x7 final grid).  Then the key/shape check is strict.
    """
    try:
        cfg = infer_body_config(state)
        embedding = int(state["output_layer.3.weight"].shape[0])
    except (ValueError, KeyError, IndexError) as e:
        raise CheckpointError(path, describe(state) + f" that is not an IR backbone ({e})", expected) from None
    affine = "output_layer.4.weight" in state
    with torch.device("meta"):
        try:
            net = Backbone(mode=cfg["mode"], affine=affine, embedding_size=embedding,
                           channels=cfg["channels"], units=cfg["units"])
        except ValueError as e:
            raise CheckpointError(path, f"an IR backbone of unsupported shape ({e})", expected) from None
    return assign_state(net, state, path, expected)


def load_arcface(name_or_path, device=None) -> IdentityEncoder:
    """Load ``model_ir_se50.pth`` (a registry name or a path) as a frozen :class:`IdentityEncoder`.

    Accepts the plain state dict with or without ``num_batches_tracked``
    entries (and a ``module.`` DataParallel prefix).  Any other content
    raises :class:`~styleclip_lib.checkpoint.CheckpointError` naming the
    missing / unexpected keys or wrong shapes.  The model is returned in eval
    mode, with ``requires_grad=False`` parameters, on ``device`` (default:
    :func:`~styleclip_lib.device.resolve_device`'s choice).
    """
    from ..pretrained import resolve

    dev = resolve_device(device)
    path = resolve(name_or_path, kind="arcface")
    if _is_toy_checkpoint(path):
        # the toy world's identity net has the same call contract (images in [-1, 1] -> unit embeddings)
        from ..toy.nets import load_net

        return load_net(path, "identity", device=dev)
    state = _tensor_dict(path, load_state(path, expected=_EXPECTED), _EXPECTED)
    model = IdentityEncoder(backbone_from_state_dict(state, path=path))
    model.requires_grad_(False)
    return model.to(dev).eval()
