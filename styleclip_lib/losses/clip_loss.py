"""StyleCLIP's CLIP loss (``criteria/clip_loss.py``), generalised to any generator
size and any CLIP input resolution.

Reference (StyleCLIP, S = ``--stylegan_size``)::

    image = AvgPool2d(kernel_size=S // 32)(Upsample(scale_factor=7)(image))   # -> 224x224
    similarity = 1 - CLIP(image, text)[0] / 100

The generator output (nominally in [-1, 1]) goes to CLIP **without** CLIP's
mean/std normalisation, and ``CLIP(...)[0]`` is ``exp(logit_scale) * cos``.

Resize as a matrix
------------------
Nearest upsampling by an integer u followed by average pooling with kernel and
stride k is separable and linear: per channel ``out = W @ x @ W.T`` with

    W[i, p] = |{a in [k*i, k*i + k) : floor(a / u) = p}| / k.

Measured in input pixels, output row i averages the interval
``[i*k/u, (i+1)*k/u)`` and W[i, p] is the length of its overlap with pixel
``[p, p+1)`` divided by the interval length ``k/u``.  That depends on u and k only
through ``k/u = S/R`` (scaling u and k by the same integer scales both intervals),
so for any input size S and output size R we use

    W[i, p] = |[i*S, (i+1)*S) ∩ [p*R, (p+1)*R)| / S        (integer overlaps)

which is exactly the reference for S a multiple of 32 and R = 224 (S=1024: u=7,
k=32; S=256: u=7, k=8) and is exact box-filter (area-overlap) resampling for every
other S, R, upsampling included (R = S is the identity).  It never materialises
the 7x upsampled image (7168² per channel at S = 1024).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn

from ..models.clip import clip_normalize

__all__ = ["resize_matrix", "styleclip_clip_input", "CLIPLoss"]

_MATRIX_CACHE: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()


def resize_matrix(size_in: int, size_out: int, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """``[size_out, size_in]`` box-filter weights (see module docstring); rows sum to 1."""
    key = (size_in, size_out, dtype, str(device))
    w = _MATRIX_CACHE.get(key)
    if w is None:
        s, r = size_in, size_out
        i = torch.arange(r, dtype=torch.int64).view(-1, 1)
        p = torch.arange(s, dtype=torch.int64).view(1, -1)
        lo = torch.maximum(i * s, p * r)
        hi = torch.minimum((i + 1) * s, (p + 1) * r)
        w = ((hi - lo).clamp_min(0).to(torch.float64) / s).to(dtype=dtype, device=device)
        _MATRIX_CACHE[key] = w
        while len(_MATRIX_CACHE) > 16:
            _MATRIX_CACHE.popitem(last=False)
    return w


def styleclip_clip_input(image: torch.Tensor, input_resolution: int = 224) -> torch.Tensor:
    """StyleCLIP's CLIP preprocessing: ``[N, C, H, W]`` -> ``[N, C, R, R]``.

    Equals ``AvgPool2d(S // 32)(Upsample(scale_factor=7)(image))`` for square S a
    multiple of 32 and R = 224; other sizes use the same box-filter formulation
    (each axis resized to R separately).  Differentiable; no normalisation.
    """
    if image.dim() != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {tuple(image.shape)}")
    h, w = image.shape[-2:]
    r = int(input_resolution)
    if h == r and w == r:
        return image
    compute = image.dtype if image.dtype in (torch.float32, torch.float64) else torch.float32
    wh = resize_matrix(h, r, dtype=compute, device=image.device)
    ww = wh if w == h else resize_matrix(w, r, dtype=compute, device=image.device)
    out = torch.matmul(torch.matmul(wh, image.to(compute)), ww.t())
    return out.to(image.dtype)


class CLIPLoss(nn.Module):
    """StyleCLIP's CLIP loss: ``1 - similarity(image, text)`` per image.

    Args:
        clip_model: a :class:`~styleclip_lib.models.clip.CLIP` (used as is; the loss does
            not change its ``requires_grad`` flags).
        mode: ``'cosine'`` (default): ``1 - cos(image, text)``, i.e. the reference
            generalised to CLIP's real logit scale.  ``'reference'``: literally
            ``1 - exp(logit_scale) * cos / reference_scale``.  The two agree for
            OpenAI CLIP, whose ``exp(logit_scale)`` is 100.
        reference_scale: the divisor of ``'reference'`` mode (100 in StyleCLIP).
        normalize: ``False`` (default, reference behaviour): the image, nominally in
            [-1, 1], is fed to CLIP raw.  ``True``: map [-1, 1] to [0, 1] and apply
            CLIP's mean/std (what CLIP was trained on).
        input_resolution: CLIP image size; defaults to ``clip_model.input_resolution``.
        cache_size: number of prompt strings whose text features are kept.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        *,
        mode: str = "cosine",
        reference_scale: float = 100.0,
        normalize: bool = False,
        input_resolution: int | None = None,
        cache_size: int = 256,
    ):
        super().__init__()
        if mode not in ("cosine", "reference"):
            raise ValueError(f"mode must be 'cosine' or 'reference', got {mode!r}")
        self.model = clip_model
        self.mode = mode
        self.reference_scale = float(reference_scale)
        self.normalize = normalize
        self.input_resolution = int(input_resolution or clip_model.input_resolution)
        self.cache_size = cache_size
        self._text_cache: "OrderedDict[str, torch.Tensor]" = OrderedDict()

    # ----------------------------------------------------------------- text side
    @torch.no_grad()
    def encode_prompt(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Text features ``[M, D]`` (not normalised, no grad) for prompt strings, cached
        per string (LRU).  The cache is keyed by text only: call
        :meth:`clear_cache` after changing the CLIP weights."""
        from ..tokenizer import tokenize

        if isinstance(texts, str):
            texts = [texts]
        todo = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if todo:
            tokens = tokenize(todo, context_length=self.model.context_length)
            device = next(self.model.parameters()).device
            feats = self.model.encode_text(tokens.to(device)).float()
            for t, f in zip(todo, feats):
                self._text_cache[t] = f
        out = []
        for t in texts:
            self._text_cache.move_to_end(t)
            out.append(self._text_cache[t])
        while len(self._text_cache) > max(self.cache_size, len(set(texts))):
            self._text_cache.popitem(last=False)
        return torch.stack(out)

    def clear_cache(self) -> None:
        self._text_cache.clear()

    def _text_features(self, text) -> torch.Tensor:
        if isinstance(text, str) or (isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text)):
            return self.encode_prompt(text)
        if not isinstance(text, torch.Tensor):
            raise TypeError(f"text must be prompt string(s), token ids or features, got {type(text).__name__}")
        if text.is_floating_point():  # already features
            return text if text.dim() == 2 else text.unsqueeze(0)
        tokens = text if text.dim() == 2 else text.unsqueeze(0)
        return self.model.encode_text(tokens)

    # ---------------------------------------------------------------- image side
    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """Generator output -> CLIP input (resize; mean/std only if ``normalize``)."""
        x = styleclip_clip_input(image, self.input_resolution)
        if self.normalize:
            x = clip_normalize((x + 1) / 2)
        return x

    def loss_matrix(self, image: torch.Tensor, text) -> torch.Tensor:
        """``[N_images, M_texts]`` losses (the shape the reference returns)."""
        img = self.model.encode_image(self.preprocess(image)).float()
        txt = self._text_features(text).to(img.device).float()
        cos = (img / img.norm(dim=-1, keepdim=True)) @ (txt / txt.norm(dim=-1, keepdim=True)).t()
        if self.mode == "cosine":
            return 1 - cos
        return 1 - self.model.logit_scale.exp().float() * cos / self.reference_scale

    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        """Unit CLIP image features ``[N, D]`` of generator outputs (with grad)."""
        img = self.model.encode_image(self.preprocess(image)).float()
        return img / img.norm(dim=-1, keepdim=True)

    def text_direction(self, target, neutral) -> torch.Tensor:
        """Unit ``f(target) − f(neutral)`` of unit text features ``[1, D]`` (no grad): global
        directions' ``dt`` with the prompts as they are (one template each)."""
        from ..global_directions import text_direction_from_embeddings

        return text_direction_from_embeddings(self._text_features(target), self._text_features(neutral))[None]

    @staticmethod
    def anchored_target(source_features: torch.Tensor, direction: torch.Tensor, step: float) -> torch.Tensor:
        """Unit ``f(source) + step·Δt`` per source image ``[N, D]``: the target of the anchored CLIP
        loss ``1 − cos(f(image), target)`` (pass it to :meth:`forward` as text features), the
        source's own embedding moved along the text direction, so that what the text does not
        mention keeps its share of the embedding."""
        target = source_features.float() + step * direction.to(source_features.device).float()
        return target / target.norm(dim=-1, keepdim=True)

    def directional(self, image: torch.Tensor, source_features: torch.Tensor, direction: torch.Tensor,
                    eps: float = 0.02) -> torch.Tensor:
        """Directional CLIP loss ``1 − cos(f(image) − f(source), Δt)`` per image ``[N]``
        (StyleGAN-NADA, Gal et al. 2022).  ``source_features``: :meth:`image_features` of the
        source images; ``direction``: :meth:`text_direction`.  Why offer it: the global loss
        ``1 − cos(f(image), f(text))`` is also lowered by making everything the text does not
        mention less distinct (its share of the image feature shrinks), which edits attributes
        nobody asked for; a change along Δt is rewarded only for moving the way the text pair
        differs.

        ``eps`` smooths the length of the change, ``sqrt(|Δf|² + eps²)``: an optimisation starts
        *at* the source, where Δf = 0 and the plain cosine's gradient is unbounded (measured: its
        first Adam step then filled the second-moment estimate so that every later step was
        negligible, and the result did not depend on ``l2_lambda`` at all).  For changes much
        larger than ``eps`` (a visible edit moves unit CLIP features by ~0.1-0.5) it is the
        NADA loss."""
        delta = self.image_features(image) - source_features.to(image.device).float()
        length = (delta.square().sum(dim=-1) + eps ** 2).sqrt()
        return 1 - (delta * direction.to(delta.device).float()).sum(dim=-1) / length

    def forward(self, image: torch.Tensor, text) -> torch.Tensor:
        """Per-image loss ``[N]``.

        ``text``: prompt string(s), token ids ``[M, L]`` / ``[L]`` or features
        ``[M, D]`` / ``[D]``, with M = 1 (one text for every image) or M = N (pairs).
        """
        losses = self.loss_matrix(image, text)
        n, m = losses.shape
        if m == 1:
            return losses[:, 0]
        if m == n:
            return losses.diagonal()
        raise ValueError(f"got {n} images and {m} texts; expected 1 text or one per image")
