"""Small networks of the toy world: the judge, the identity model and the encoder.

All take images in [-1, 1], (N, 3, H, W), at the toy resolution (any size is
resized to ``image_size`` first).  Each stores its constructor arguments in its
checkpoint (``{'kind', 'config', 'state_dict'}``), so loading needs no config file.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..checkpoint import CheckpointError, describe, load_state
from ..device import resolve_device

__all__ = ["ConvTrunk", "Judge", "IdentityNet", "ToyEncoder", "save_net", "load_net"]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU(), nn.MaxPool2d(2))


class ConvTrunk(nn.Module):
    """A small VGG-like CNN.  A strided stem halves the image first (CPU cost), then
    blocks halve it down to 4x4: 64 px → (N, width·8, 4, 4)."""

    def __init__(self, image_size: int = 64, width: int = 24):
        super().__init__()
        self.image_size, self.width = image_size, width
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.SiLU())
        n_down = max(1, (image_size // 8).bit_length() - 1)
        chans = [width * 2 ** i for i in range(n_down + 1)]
        self.blocks = nn.Sequential(*[_block(chans[i], chans[i + 1]) for i in range(n_down)])
        self.out_channels = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="area")
        return self.blocks(self.stem(x))


class Judge(nn.Module):
    """Attribute classifier + identity-parameter regressor.  Used only to *evaluate* edits."""

    def __init__(self, attributes: dict[str, Sequence[str]], identity: Sequence[str], image_size: int = 64, width: int = 24):
        super().__init__()
        self.attributes = {k: list(v) for k, v in attributes.items()}
        self.identity = list(identity)
        self.trunk = ConvTrunk(image_size, width)
        feat = self.trunk.out_channels
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(feat * 16, 256), nn.SiLU())
        self.attr_heads = nn.ModuleDict({k: nn.Linear(256, len(v)) for k, v in self.attributes.items()})
        self.identity_head = nn.Linear(256, len(self.identity))

    @property
    def config(self) -> dict:
        return {"attributes": self.attributes, "identity": self.identity, "image_size": self.trunk.image_size,
                "width": self.trunk.width}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.trunk(x)
        f = F.adaptive_avg_pool2d(f, 4)
        return self.head(f)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute and identity parameters (in [0, 1]) under key ``'identity'``."""
        h = self.features(x)
        out = {k: head(h) for k, head in self.attr_heads.items()}
        out["identity"] = torch.sigmoid(self.identity_head(h))
        return out

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per attribute: (value index, confidence); plus 'identity' (N, n_identity)."""
        out = self(x)
        res = {}
        for k in self.attributes:
            p = out[k].softmax(-1)
            conf, idx = p.max(-1)
            res[k] = (idx, conf)
        res["identity"] = out["identity"]
        return res


class IdentityNet(nn.Module):
    """The toy world's ArcFace: images → unit identity embeddings.

    Trained (separately from the judge) to regress the renderer's continuous
    identity parameters while ignoring every discrete attribute; the embedding
    is the centred prediction, L2-normalised, so the cosine of two faces is high
    exactly when their geometry agrees.  Same call contract as
    ``styleclip_lib.models.arcface`` models, so the ID loss works unchanged.
    """

    def __init__(self, n_identity: int, image_size: int = 64, width: int = 16, embed_dim: int = 32):
        super().__init__()
        self.n_identity, self.embed_dim = n_identity, embed_dim
        self.trunk = ConvTrunk(image_size, width)
        self.proj = nn.Sequential(nn.Flatten(), nn.Linear(self.trunk.out_channels * 16, 128), nn.SiLU(), nn.Linear(128, embed_dim))
        self.readout = nn.Linear(embed_dim, n_identity)

    @property
    def config(self) -> dict:
        return {"n_identity": self.n_identity, "image_size": self.trunk.image_size,
                "width": self.trunk.width, "embed_dim": self.embed_dim}

    def embed_raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.adaptive_avg_pool2d(self.trunk(x), 4))

    def predict_identity(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.readout(self.embed_raw(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed_raw(x), dim=-1)


class ToyEncoder(nn.Module):
    """e4e-like encoder: image → W+ = ``latent_avg`` + per-row offsets.

    Like e4e it predicts one base code plus small per-row deltas (rows share
    the base), which keeps inversions editable (close to W).
    """

    def __init__(self, num_ws: int, w_dim: int, image_size: int = 64, width: int = 24, pool: int = 2):
        super().__init__()
        self.num_ws, self.w_dim, self.pool = num_ws, w_dim, pool
        self.trunk = ConvTrunk(image_size, width)
        f = self.trunk.out_channels * pool * pool
        self.base = nn.Sequential(nn.Flatten(), nn.Linear(f, 256), nn.SiLU(), nn.Linear(256, w_dim))
        self.deltas = nn.Sequential(nn.Flatten(), nn.Linear(f, 128), nn.SiLU(), nn.Linear(128, num_ws * w_dim))
        self.register_buffer("latent_avg", torch.zeros(w_dim))

    @property
    def config(self) -> dict:
        return {"num_ws": self.num_ws, "w_dim": self.w_dim, "image_size": self.trunk.image_size,
                "width": self.trunk.width, "pool": self.pool}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features ``(N, C, pool, pool)``: a grid keeps *where* things are, so small
        parts (irises, the mouth line) are not averaged away with the whole face."""
        return F.adaptive_avg_pool2d(self.trunk(x), self.pool)

    def from_features(self, f: torch.Tensor) -> torch.Tensor:
        base = self.base(f)[:, None, :]
        delta = 0.1 * self.deltas(f).view(-1, self.num_ws, self.w_dim)
        return self.latent_avg + base + delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.features(x))


_KINDS = {"judge": Judge, "identity": IdentityNet, "encoder": ToyEncoder}


def save_net(net: nn.Module, kind: str, path: str | os.PathLike, half: bool = True) -> None:
    state = {k: (v.half() if half and v.is_floating_point() else v).cpu() for k, v in net.state_dict().items()}
    torch.save({"kind": kind, "config": net.config, "state_dict": state}, path)


def load_net(path: str | os.PathLike, kind: str, device: str | torch.device | None = None) -> nn.Module:
    expected = f"a toy-world {kind} checkpoint ({{'kind': '{kind}', 'config': ..., 'state_dict': ...}})"
    obj = load_state(path, expected=expected)
    if not isinstance(obj, dict) or obj.get("kind") != kind or "state_dict" not in obj:
        raise CheckpointError(path, describe(obj) if not isinstance(obj, dict) or "kind" not in obj else f"a toy {obj['kind']!r} checkpoint", expected)
    net = _KINDS[kind](**obj["config"])
    try:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in obj["state_dict"].items()})
    except RuntimeError as e:
        raise CheckpointError(path, f"weights that do not fit ({str(e).splitlines()[0]})", expected) from None
    net.requires_grad_(False)
    return net.eval().to(resolve_device(device))
