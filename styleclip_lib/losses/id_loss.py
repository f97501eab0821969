"""Identity-preservation loss (StyleCLIP ``criteria/id_loss.py``).

The loss compares face-identity embeddings of the edited image and of the
source image: ``mean_i (1 - <f(y_hat_i), f(y_i)>)`` with unit embeddings ``f``
(for StyleCLIP, the ArcFace IR-SE50 :class:`~styleclip_lib.models.arcface.IdentityEncoder`,
which does the pooling and face crop itself).  The source features are
detached: only ``y_hat`` receives gradients.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IDLoss", "identity_similarity"]


class IDLoss(nn.Module):
    """``IDLoss(model)(y_hat, y)`` = mean over the batch of 1 - <model(y_hat), model(y).detach()>.

    ``model`` is any callable mapping (N, 3, H, W) images to unit (N, D)
    embeddings, e.g. ``load_arcface(...)``.  Unlike the reference, which returns
    ``(loss, 0)`` (its second value is always 0), :meth:`forward` returns only
    the 0-dim loss tensor.  ``y`` is embedded under ``torch.no_grad()`` (same
    value as the reference's ``.detach()``, less memory).
    """

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.model = model

    @classmethod
    def from_pretrained(cls, name_or_path="model_ir_se50", device=None) -> "IDLoss":
        """IDLoss around :func:`~styleclip_lib.models.arcface.load_arcface` (frozen, eval mode)."""
        from ..models.arcface import load_arcface

        return cls(load_arcface(name_or_path, device=device))

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y_hat.shape[0] != y.shape[0]:
            raise ValueError(f"IDLoss: batch sizes differ ({y_hat.shape[0]} vs {y.shape[0]})")
        with torch.no_grad():
            y_feats = self.model(y)
        y_hat_feats = self.model(y_hat)
        return (1.0 - (y_hat_feats * y_feats.detach()).sum(dim=1)).mean()


def identity_similarity(model: Callable[[torch.Tensor], torch.Tensor], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample cosine similarity (N,) of the identity embeddings of images ``a`` and ``b``.

    Gradients flow through both arguments; wrap in ``torch.no_grad()`` for evaluation.
    """
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"identity_similarity: batch sizes differ ({a.shape[0]} vs {b.shape[0]})")
    return F.cosine_similarity(model(a), model(b), dim=1)
