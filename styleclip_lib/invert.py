"""GAN inversion: find the W+ latent (and optionally the noise maps) whose image is a given face.

Two families, one result type (:class:`InversionResult`):

* :class:`EncoderInversion` -- one forward pass of an inversion encoder (e4e, ``load_e4e``, or the
  toy world's encoder, ``load_e4e('toy')``; both map images in [-1, 1] to W+).  Fast, editable
  codes, approximate reconstructions.
* :class:`ProjectionInversion` -- optimisation-based projection for *any* generator, after
  rosinality's ``projector.py`` (itself StyleGAN2's projector): Adam on W (one code broadcast to
  every row) or W+, optional optimisation of the noise maps with the noise regulariser
  (``noise_regularize``, 1e5 in the reference) and per-step renormalisation, a cosine lr ramp-down
  with a linear ramp-up, and decaying Gaussian noise added to the latent early on (``noise``,
  ``noise_ramp``).  It can start from the mean W (the reference) or from an encoder's code
  (``encoder+projection``, the usual "encode then refine").

:func:`invert` picks the method from a :class:`~styleclip_lib.worlds.ModelSet`::

    res = invert(aligned_face, load_models("toy"), method="encoder+projection", steps=100)
    res.w_plus, res.reconstruction, res.metrics()   # {'mse':..., 'psnr':..., 'perceptual':..., 'id_similarity':...}

**The perceptual loss ("LPIPS-like").**  The reference projector minimises LPIPS (VGG16 features
with learned linear heads).  Those weights are a download we cannot assume, and for non-photo
domains (the toy world) ImageNet VGG features are no better than pixels.  The default loss here,
:func:`lpips_like`, is the multi-scale structural-similarity + L1 mix of Zhao et al. (2017, "Loss
functions for image restoration with neural networks"): on a 2x average-pooling pyramid of up to
five scales (the coarsest at least 8 px; images over 256 px are first area-resized to 256, as the
reference does before LPIPS),

    D(x, y) = 0.84 * sum_s w_s (1 - SSIM_s(x, y)) + 0.16 * sum_s w_s mean|x_s - y_s|

with the MS-SSIM scale weights ``w_s`` (Wang et al. 2003: 0.0448, 0.2856, 0.3001, 0.2363, 0.1333,
renormalised to the scales used), SSIM with a Gaussian window (sigma 1.5, reflect padding) on RGB
in [0, 1].  Using ``1 - SSIM`` per scale rather than the MS-SSIM product keeps the gradient finite
when a scale's contrast-structure term is negative early in the projection.  ``D`` is 0 for
identical images and about 0.3-0.4 for two unrelated toy faces; it needs no weights, works at any
resolution >= 8 px and is what ``InversionResult.perceptual`` reports for every method (so numbers
are comparable across methods).  Any callable ``loss(x, y) -> (N,)`` (e.g. an installed
``lpips.LPIPS``) can be passed instead, and ``id_lambda`` adds an identity-feature term
``1 - cos(R(x), R(y))`` with the identity model (ArcFace / the toy identity net), a second
"perceptual" signal learnt on faces.

Deliberate differences from ``projector.py``: per-sample losses are *summed* over a batch (each
image is projected as if alone; the reference's noise regulariser and LPIPS mix the batch), the lr
schedule samples step midpoints (``t = (i + 0.5) / steps``; the reference's first step has lr 0),
noise maps start from the generator's constant noise buffers (so an ``encoder+projection`` run starts
exactly at the encoder's reconstruction) instead of fresh N(0, 1) draws, the latent noise is drawn
from a seeded generator, and runs are interruptible (callback / Ctrl-C return a partial result)
and resumable (``resume=result.state``).
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .latents import StoppableRun, as_w_plus

__all__ = [
    "InversionResult",
    "EncoderInversion",
    "ProjectionInversion",
    "invert",
    "lpips_like",
    "ssim",
    "image_metrics",
    "images_to_tensor",
    "noise_regularize",
    "encoder_input_size",
    "METHODS",
]

#: methods of :func:`invert`
METHODS = ("encoder", "projection", "encoder+projection")
LOSSES = ("lpips-like", "mse")
SPACES = ("w", "w+")
STATE_VERSION = 1

_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_ALPHA = 0.84  # Zhao et al.: weight of the MS-SSIM part against L1


# ----------------------------------------------------------------------------- images

def _is_aligned_face(x: Any) -> bool:
    return hasattr(x, "image") and hasattr(x, "inverse") and hasattr(x, "output_size")


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) → (N, C, size, size): antialiased bilinear (a no-op at that size)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def images_to_tensor(images: Any, size: Optional[int] = None, *, name: str = "image") -> torch.Tensor:
    """Any image input → float (N, 3, H, W) in [-1, 1], optionally resized to ``size`` × ``size``.

    Accepts a tensor ((N, 3, H, W) or (3, H, W): float in [-1, 1] as the generator produces,
    or uint8 in [0, 255]), an :class:`~styleclip_lib.align.AlignedFace` (its crop), a PIL image,
    a numpy array, a path / bytes / file (through :func:`~styleclip_lib.photo_io.load_image`), or
    a list of those (same size after resizing).  Inputs must be square: align the face first
    (:func:`~styleclip_lib.align.align_face`).
    """
    from PIL import Image

    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"{name}: an empty list")
        parts = [images_to_tensor(im, size, name=f"{name}[{i}]") for i, im in enumerate(images)]
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"{name}: the images have different sizes {sorted(shapes)}; pass size= to resize them")
        return torch.cat(parts)
    if _is_aligned_face(images):
        images = images.image
    if isinstance(images, torch.Tensor):
        x = images.detach()
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{name}: expected a tensor of shape (N, 3, H, W) or (3, H, W), got {tuple(images.shape)}")
        if x.dtype == torch.uint8:
            x = x.float() / 127.5 - 1.0
        elif not x.is_floating_point():
            raise ValueError(f"{name}: expected a float tensor in [-1, 1] or uint8, got dtype {x.dtype}")
        x = x.float()
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name}: contains NaN or infinite values")
    else:
        if isinstance(images, Image.Image):
            pil = images.convert("RGB")
        else:
            from .photo_io import load_image

            pil = Image.fromarray(load_image(images))
        if size is not None and pil.size != (size, size) and pil.size[0] == pil.size[1]:
            pil = pil.resize((size, size), Image.LANCZOS)
        arr = np.asarray(pil, dtype=np.float32) / 127.5 - 1.0
        x = torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
    if x.shape[0] == 0:
        raise ValueError(f"{name}: the batch is empty")
    h, w = x.shape[-2:]
    if h != w:
        raise ValueError(
            f"{name}: a {w}×{h} image; inversion needs a square, aligned face crop "
            "(styleclip_lib.align.align_face(photo, output_size=...) makes one)")
    if h < 8:
        raise ValueError(f"{name}: a {w}×{h} image is too small to invert (at least 8×8)")
    if size is not None:
        x = _resize(x, int(size))
    return x


# ----------------------------------------------------------------------------- the LPIPS-like distance

def _gauss_1d(sigma: float, radius: int, device, dtype) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _blur(x: torch.Tensor, sigma: float = 1.5, radius: int = 5) -> torch.Tensor:
    """Separable Gaussian blur, reflect padding, same size."""
    c, h, w = x.shape[1:]
    r = max(0, min(radius, h - 1, w - 1))
    if r == 0:
        return x
    k = _gauss_1d(sigma, r, x.device, x.dtype)
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM per sample (N,) of (N, C, H, W) images (Gaussian window, reflect padding)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _blur(x, sigma), _blur(y, sigma)
    sxx = _blur(x * x, sigma) - mx * mx
    syy = _blur(y * y, sigma) - my * my
    sxy = _blur(x * y, sigma) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return (num / den).flatten(1).mean(1)


def _num_scales(size: int, max_scales: int = 5, min_size: int = 8) -> int:
    n = 1
    while n < max_scales and size // (2 ** n) >= min_size:
        n += 1
    return n


def lpips_like(x: torch.Tensor, y: torch.Tensor, *, max_size: int = 256, scales: Optional[int] = None,
               alpha: float = _ALPHA) -> torch.Tensor:
    """The weight-free "LPIPS-like" distance (N,) of images in [-1, 1] (see the module docstring).

    ``alpha`` · multi-scale (1 − SSIM) + (1 − ``alpha``) · multi-scale L1, on a 2× average-pooling
    pyramid (``scales`` levels, default: as many as keep the coarsest ≥ 8 px, at most 5), after
    area-resizing images larger than ``max_size``.  Differentiable in both arguments.
    """
    if x.shape != y.shape:
        raise ValueError(f"lpips_like: shapes differ {tuple(x.shape)} vs {tuple(y.shape)}")
    x = (x.float() + 1) * 0.5
    y = (y.float() + 1) * 0.5
    if max_size and x.shape[-1] > max_size:
        x = F.interpolate(x, size=(max_size, max_size), mode="area")
        y = F.interpolate(y, size=(max_size, max_size), mode="area")
    n = scales or _num_scales(x.shape[-1])
    weights = torch.tensor(_MS_SSIM_WEIGHTS[:n], dtype=x.dtype, device=x.device)
    weights = weights / weights.sum()
    dssim = x.new_zeros(x.shape[0])
    l1 = x.new_zeros(x.shape[0])
    for s in range(n):
        if s:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        dssim = dssim + weights[s] * (1.0 - ssim(x, y))
        l1 = l1 + weights[s] * (x - y).abs().flatten(1).mean(1)
    return alpha * dssim + (1 - alpha) * l1


def _per_sample(v: torch.Tensor, n: int, what: str) -> torch.Tensor:
    if v.dim() == 0:
        if n != 1:
            raise ValueError(f"{what}: returned a scalar for a batch of {n}; return one value per image (N,)")
        return v.reshape(1)
    if v.numel() != n:
        raise ValueError(f"{what}: returned shape {tuple(v.shape)}, expected ({n},)")
    return v.reshape(n)


@torch.no_grad()
def image_metrics(reconstruction: torch.Tensor, target: torch.Tensor, identity_model: Any = None) -> dict:
    """Per-sample metrics of a reconstruction against its target (both (N, 3, H, W), [-1, 1]).

    ``mse``: mean squared error in the generator's [-1, 1] units (both images clamped to
    [-1, 1], what one sees); ``psnr``: ``10·log10(4 / mse)`` dB (= PSNR of the [0, 1] images);
    ``perceptual``: :func:`lpips_like`; ``id_similarity``: cosine of the identity embeddings
    (``None`` without an identity model).  Each an (N,) CPU tensor.
    """
    rec = reconstruction.detach().float().clamp(-1, 1)
    tgt = target.detach().float().to(rec.device).clamp(-1, 1)
    if rec.shape != tgt.shape:
        tgt = _resize(tgt, rec.shape[-1])
    mse = (rec - tgt).pow(2).flatten(1).mean(1)
    psnr = 10 * torch.log10(4.0 / mse.clamp_min(1e-12))
    out = {"mse": mse.cpu(), "psnr": psnr.cpu(), "perceptual": lpips_like(rec, tgt).cpu(), "id_similarity": None}
    if identity_model is not None:
        from .losses.id_loss import identity_similarity

        out["id_similarity"] = identity_similarity(identity_model, rec, tgt).float().cpu()
    return out


# ----------------------------------------------------------------------------- result

@dataclass
class InversionResult(StoppableRun):
    """What every inversion returns.

    Attributes:
        w_plus: (N, num_ws, w_dim) the inverted latents (on the generator's device).
        reconstruction: (N, 3, H, W) ``G(w_plus)`` (with ``noises`` when optimised), generator range.
        target: (N, 3, H, W) the image being inverted, at the generator's resolution, [-1, 1].
        noises: the optimised noise maps (one (N, 1, r, r) tensor per generator noise layer, for
            ``generator.synthesis(w, noise=noises)``), or ``None`` (the generator's constant noise).
        mse, psnr, perceptual, id_similarity: per-sample (N,) metrics from :func:`image_metrics`
            (``id_similarity`` is ``None`` when no identity model was available).
        loss_history: ``{term: [batch-mean value per step]}`` (projection; empty for the encoder).
        method: ``'encoder'``, ``'projection'`` or ``'encoder+projection'``.
        steps_done / steps: optimisation steps applied / scheduled (0 / 0 for the encoder).
        stopped: ``'completed'``, ``'callback'`` or ``'interrupted'`` (Ctrl-C).
        state: projection only: pass ``resume=result.state`` to continue a stopped run.
        initial_w_plus: the starting latent of a projection (the encoder's code for
            ``encoder+projection``).
        initial_metrics: metrics of the starting latent's image (projection).
        seconds: wall time of the inversion.
    """

    w_plus: torch.Tensor
    reconstruction: torch.Tensor
    target: torch.Tensor
    mse: torch.Tensor
    psnr: torch.Tensor
    perceptual: torch.Tensor
    id_similarity: Optional[torch.Tensor] = None
    noises: Optional[list] = None
    loss_history: dict = field(default_factory=dict)
    method: str = "encoder"
    steps_done: int = 0
    steps: int = 0
    stopped: str = "completed"
    state: Optional[dict] = field(default=None, repr=False)
    initial_w_plus: Optional[torch.Tensor] = field(default=None, repr=False)
    initial_metrics: Optional[dict] = field(default=None, repr=False)
    seconds: float = 0.0


    def metrics(self) -> dict:
        """Batch means as floats: ``mse``, ``psnr``, ``perceptual`` and ``id_similarity`` (if any)."""
        out = {"mse": float(self.mse.mean()), "psnr": float(self.psnr.mean()), "perceptual": float(self.perceptual.mean())}
        if self.id_similarity is not None:
            out["id_similarity"] = float(self.id_similarity.mean())
        return out

    def render(self, generator: Any, w_plus: Optional[torch.Tensor] = None, styles: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """Render edited ``w_plus`` (or StyleSpace ``styles``) with this inversion's noise maps, so
        that an edit keeps the details the projection put in the noise."""
        noise = self.noises
        with torch.no_grad():
            if styles is not None:
                return generator.synthesis_from_styles(list(styles), noise=noise) if noise is not None else \
                    generator.synthesis_from_styles(list(styles))
            w = self.w_plus if w_plus is None else w_plus
            return generator.synthesis(w, noise=noise) if noise is not None else generator.synthesis(w)

    def to_pil(self, which: str = "reconstruction") -> list:
        """One PIL image per sample of ``reconstruction`` or ``target``."""
        from PIL import Image

        from .imageio import to_uint8

        if which not in ("reconstruction", "target"):
            raise ValueError(f"which: expected 'reconstruction' or 'target', got {which!r}")
        return [Image.fromarray(a) for a in to_uint8(getattr(self, which))]


def _result_from(w_plus, reconstruction, target, identity_model, **kw) -> InversionResult:
    m = image_metrics(reconstruction, target, identity_model)
    return InversionResult(w_plus=w_plus, reconstruction=reconstruction, target=target, mse=m["mse"], psnr=m["psnr"],
                           perceptual=m["perceptual"], id_similarity=m["id_similarity"], **kw)


from .device import module_device as _device_of  # noqa: E402  (shared helper)


def _check_generator(generator: Any) -> None:
    for attr in ("num_ws", "w_dim", "synthesis", "resolution"):
        if not hasattr(generator, attr):
            raise TypeError(f"generator: expected a StyleGAN2 Generator (load_generator(...)), got {type(generator).__name__}")


# ----------------------------------------------------------------------------- encoder

def encoder_input_size(encoder: Any) -> Optional[int]:
    """The square input size an encoder was trained at (e4e: 256; the toy encoder: its trunk's),
    or ``None`` when unknown (images are then passed at the generator's resolution)."""
    from .models.e4e import INPUT_SIZE, E4EInverter

    if isinstance(encoder, E4EInverter):
        return INPUT_SIZE
    trunk = getattr(encoder, "trunk", None)
    size = getattr(trunk, "image_size", None) or getattr(encoder, "input_size", None)
    return int(size) if size else None


class EncoderInversion:
    """Invert aligned faces with an encoder: ``EncoderInversion(encoder, generator)(images)``.

    Args:
        encoder: e4e (:func:`~styleclip_lib.models.e4e.load_e4e`) or the toy encoder; any callable
            mapping (N, 3, S, S) images in [-1, 1] to (N, num_ws, w_dim) W+.
        generator: the StyleGAN2 generator the encoder was trained for (renders the reconstruction).
        input_size: the encoder's input side; ``'auto'`` (default) reads it from the encoder (e4e
            256), ``None`` passes images at the generator's resolution.
        identity_model: optional identity net for the ``id_similarity`` metric.
        batch_size: images per encoder call.
    """

    def __init__(self, encoder: Callable, generator: Any, *, input_size: Union[int, str, None] = "auto",
                 identity_model: Any = None, batch_size: int = 8):
        _check_generator(generator)
        if not callable(encoder):
            raise TypeError(f"encoder: expected a callable (load_e4e(...)), got {type(encoder).__name__}")
        self.encoder = encoder
        self.generator = generator
        self.input_size = encoder_input_size(encoder) if input_size == "auto" else (int(input_size) if input_size else None)
        self.identity_model = identity_model
        self.batch_size = max(1, int(batch_size))

    @torch.no_grad()
    def encode(self, images: Any, *, encoder_images: Any = None) -> torch.Tensor:
        """W+ (N, num_ws, w_dim) of ``images`` (``encoder_images``: the same faces already at the
        encoder's input size, e.g. a 256 px alignment for e4e, used instead of resizing)."""
        g = self.generator
        dev = _device_of(g)
        size = self.input_size or g.resolution
        x = images_to_tensor(encoder_images if encoder_images is not None else images, size,
                             name="encoder_images" if encoder_images is not None else "image").to(dev)
        w = torch.cat([self.encoder(x[i:i + self.batch_size]) for i in range(0, x.shape[0], self.batch_size)])
        if w.ndim != 3 or tuple(w.shape[1:]) != (g.num_ws, g.w_dim):
            raise ValueError(
                f"encoder: returned latents of shape {tuple(w.shape)}, but the generator takes W+ of shape "
                f"(N, {g.num_ws}, {g.w_dim}); use the encoder trained for this generator")
        return w.float()

    @torch.no_grad()
    def __call__(self, images: Any, *, encoder_images: Any = None) -> InversionResult:
        t0 = time.perf_counter()
        g = self.generator
        target = images_to_tensor(images, g.resolution).to(_device_of(g))
        w = self.encode(images, encoder_images=encoder_images)  # from the input, not the resized target
        if w.shape[0] != target.shape[0]:
            raise ValueError(f"encoder_images: {w.shape[0]} images for {target.shape[0]} targets")
        rec = torch.cat([g.synthesis(w[i:i + self.batch_size]) for i in range(0, w.shape[0], self.batch_size)])
        return _result_from(w, rec, target, self.identity_model, method="encoder", seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------- projection

def noise_regularize(noises: Sequence[torch.Tensor]) -> torch.Tensor:
    """rosinality's noise regulariser, per sample (N,): squared auto-correlation at 1-pixel shifts
    of every noise map, summed over a 2× pyramid down to 8 px."""
    loss = 0.0
    for noise in noises:
        size = noise.shape[2]
        while True:
            loss = loss + (noise * torch.roll(noise, shifts=1, dims=3)).mean((1, 2, 3)).pow(2) \
                + (noise * torch.roll(noise, shifts=1, dims=2)).mean((1, 2, 3)).pow(2)
            if size <= 8:
                break
            noise = noise.reshape(noise.shape[0], 1, size // 2, 2, size // 2, 2).mean([3, 5])
            size //= 2
    return loss


@torch.no_grad()
def _noise_normalize_(noises: Sequence[torch.Tensor]) -> None:
    for noise in noises:
        mean = noise.mean((1, 2, 3), keepdim=True)
        std = noise.std((1, 2, 3), keepdim=True).clamp_min(1e-8)
        noise.sub_(mean).div_(std)


def _check_pos(value: Any, name: str, *, allow_zero: bool = True) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return v


class ProjectionInversion:
    """Optimisation-based projection of images into a generator (rosinality ``projector.py`` style).

    Args:
        generator: a StyleGAN2 :class:`~styleclip_lib.models.stylegan2.Generator`.
        space: ``'w+'`` (default; one code per row, best reconstructions and the space the edits
            use) or ``'w'`` (one code broadcast to every row: the reference default, more editable).
        steps: Adam steps; default 1000 from the mean latent (the reference), 200 from an encoder /
            given latent.
        lr: peak learning rate; default 0.1 from the mean latent (the reference), 0.02 otherwise.
        loss: ``'lpips-like'`` (default, :func:`lpips_like`), ``'mse'``, or a callable
            ``loss(images, target) -> (N,)``.
        mse_lambda: weight of an extra pixel MSE term (reference ``--mse``, default 0).
        noise_regularize: weight of :func:`noise_regularize` (reference 1e5).
        optimize_noise: also optimise the generator's noise maps (reference: yes).  The maps are
            returned in ``result.noises``; render edits with them (:meth:`InversionResult.render`).
        noise, noise_ramp: latent noise strength ``latent_std · noise · max(0, 1 − t/noise_ramp)²``
            (reference 0.05 and 0.75); default ``noise`` is 0.05 from the mean latent, 0 otherwise.
        lr_rampup, lr_rampdown: fractions of the run for the linear ramp-up / cosine ramp-down.
        init: ``'mean'`` (the mean W of ``n_mean_latent`` samples), ``'encoder'`` (needs
            ``encoder``), a W / W+ tensor or an :class:`InversionResult` (refine it).
            ``__call__(init=...)`` overrides it per call.
        encoder: an encoder (see :class:`EncoderInversion`) for ``init='encoder'``.
        l2_lambda: pull toward the starting latent (sum of squares; 0 = off) -- keeps an
            ``encoder+projection`` code near the encoder's editable region.
        identity_model, id_lambda: identity net; ``id_lambda > 0`` adds ``1 − cos`` of its
            embeddings to the loss; with a model, ``id_similarity`` is reported either way.
        n_mean_latent: samples for the mean latent and its spread (reference 10000).
        seed: seed of the mean-latent samples and of the latent noise.
        progress: tqdm progress bar.
    """

    def __init__(self, generator: Any, *, space: str = "w+", steps: Optional[int] = None, lr: Optional[float] = None,
                 loss: Union[str, Callable] = "lpips-like", mse_lambda: float = 0.0, noise_regularize: float = 1e5,
                 optimize_noise: bool = True, noise: Optional[float] = None, noise_ramp: float = 0.75,
                 lr_rampup: float = 0.05, lr_rampdown: float = 0.25, init: Any = "mean", encoder: Any = None,
                 l2_lambda: float = 0.0, identity_model: Any = None, id_lambda: float = 0.0,
                 n_mean_latent: int = 10000, seed: int = 0, progress: bool = True):
        _check_generator(generator)
        if space not in SPACES:
            raise ValueError(f"space: expected one of {SPACES}, got {space!r}")
        if isinstance(loss, str) and loss not in LOSSES:
            raise ValueError(f"loss: expected one of {LOSSES} or a callable loss(images, target) -> (N,), got {loss!r}")
        if not isinstance(loss, str) and not callable(loss):
            raise TypeError(f"loss: expected a name or a callable, got {type(loss).__name__}")
        if isinstance(init, str) and init not in ("mean", "encoder"):
            raise ValueError(f"init: expected 'mean', 'encoder' or a latent tensor, got {init!r}")
        if isinstance(init, str) and init == "encoder" and encoder is None:
            raise ValueError("init='encoder' needs encoder= (e.g. load_e4e(...) or models.encoder)")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1):
            raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
        if id_lambda and identity_model is None:
            raise ValueError("id_lambda > 0 needs identity_model= (e.g. load_arcface(...) or models.identity)")
        self.generator = generator
        self.space = space
        self.steps = None if steps is None else int(steps)
        self.lr = None if lr is None else _check_pos(lr, "lr", allow_zero=False)
        self.loss = loss
        self.mse_lambda = _check_pos(mse_lambda, "mse_lambda")
        self.noise_regularize = _check_pos(noise_regularize, "noise_regularize")
        self.optimize_noise = bool(optimize_noise)
        self.noise = None if noise is None else _check_pos(noise, "noise")
        self.noise_ramp = _check_pos(noise_ramp, "noise_ramp", allow_zero=False)
        self.lr_rampup = _check_pos(lr_rampup, "lr_rampup")
        self.lr_rampdown = _check_pos(lr_rampdown, "lr_rampdown")
        self.init = init
        self.encoder = encoder
        self.l2_lambda = _check_pos(l2_lambda, "l2_lambda")
        self.identity_model = identity_model
        self.id_lambda = _check_pos(id_lambda, "id_lambda")
        self.n_mean_latent = int(n_mean_latent)
        self.seed = int(seed)
        self.progress = bool(progress)
        self._mean_cache: Optional[tuple] = None

    # ---- helpers
    @torch.no_grad()
    def mean_latent(self) -> tuple[torch.Tensor, float]:
        """(mean W (1, w_dim), latent_std) over ``n_mean_latent`` seeded samples (the reference's
        ``latent_std`` is the RMS distance of a sample to the mean: a norm, not a per-dim std)."""
        if self._mean_cache is None:
            g = self.generator
            dev = _device_of(g)
            z = torch.randn(self.n_mean_latent, g.w_dim, generator=torch.Generator().manual_seed(self.seed)).to(dev)
            w = torch.cat([g.mapping(z[i:i + 2048]) for i in range(0, z.shape[0], 2048)])
            mean = w.mean(0, keepdim=True)
            std = float(((w - mean).pow(2).sum() / w.shape[0]) ** 0.5)
            self._mean_cache = (mean, std)
        return self._mean_cache

    def _image_loss(self, images: torch.Tensor, target: torch.Tensor) -> dict:
        n = images.shape[0]
        mse = (images - target).pow(2).flatten(1).mean(1)
        if self.loss == "mse":
            return {"mse": mse}
        if self.loss == "lpips-like":
            terms = {"perceptual": lpips_like(images, target)}
        else:
            terms = {"perceptual": _per_sample(self.loss(images, target), n, "loss")}
        terms["mse"] = mse
        return terms

    def _initial_latent(self, init: Any, target: torch.Tensor, images: Any, encoder_images: Any) -> tuple[torch.Tensor, str]:
        g = self.generator
        dev = _device_of(g)
        n = target.shape[0]
        if isinstance(init, InversionResult):
            init = init.w_plus
        if isinstance(init, torch.Tensor) or (init is not None and not isinstance(init, str) and not callable(init)):
            w = as_w_plus(init, g.num_ws, g.w_dim, name="init", allow_w=True, device=dev)
            if w.shape[0] == 1 and n > 1:
                w = w.expand(n, -1, -1)
            if w.shape[0] != n:
                raise ValueError(f"init: {w.shape[0]} latents for {n} images")
            return w.detach().clone(), "latent"
        if init == "mean":
            mean, _ = self.mean_latent()
            return mean[:, None, :].expand(n, g.num_ws, -1).clone(), "mean"
        encoder = self.encoder if init == "encoder" else init
        if encoder is None:
            raise ValueError("init='encoder' needs encoder=")
        inv = encoder if isinstance(encoder, EncoderInversion) else EncoderInversion(encoder, g)
        w = inv.encode(images, encoder_images=encoder_images)
        if w.shape[0] != n:
            raise ValueError(f"encoder_images: {w.shape[0]} images for {n} targets")
        return w.detach().clone(), "encoder"

    # ---- the run
    def __call__(self, images: Any = None, *, init: Any = None, encoder_images: Any = None, steps: Optional[int] = None,
                 callback: Optional[Callable[[int, dict], Optional[bool]]] = None,
                 resume: Optional[Mapping] = None) -> InversionResult:
        """Project ``images`` (aligned square faces; anything :func:`images_to_tensor` takes).

        Args:
            init: starting latent for this call ('mean', 'encoder', a W / W+ tensor, an
                :class:`InversionResult` or an encoder); default: the constructor's ``init``.
            encoder_images: the faces at the encoder's input size, for an encoder start.
            steps: override the schedule length (with ``resume``: continue up to this many steps;
                pass the original value to finish an interrupted run).
            callback: ``callback(steps_done, losses)`` after every step (``losses``: batch means
                of the terms and ``'total'``); returning ``False`` stops (``stopped='callback'``).
            resume: ``result.state`` of a stopped run; ``images`` may then be omitted (the state
                holds the target).  Continues with the same latent, noise maps, Adam moments and
                random stream, so stop + resume gives the same result as one uninterrupted run.

        Ctrl-C (``KeyboardInterrupt``) during the loop returns the partial result
        (``stopped='interrupted'``) with a resumable ``state``.
        """
        from .methods.optimization import lr_schedule

        t0 = time.perf_counter()
        g = self.generator
        dev = _device_of(g)
        space = self.space
        if resume is not None:
            state = self._check_state(resume)
            target = state["target"].to(dev) if images is None else images_to_tensor(images, g.resolution).to(dev)
            if tuple(target.shape) != tuple(state["target"].shape):
                raise ValueError(f"resume: the images have shape {tuple(target.shape)} but the state was made "
                                 f"for {tuple(state['target'].shape)}")
            init_w = state["init"].to(dev)
            how = state["init_kind"]
            start = int(state["step"])
            total_steps = int(steps if steps is not None else state["steps"])
            lr0 = float(state["lr"])
            noise0 = float(state["noise"])
            latent_std = float(state["latent_std"])
        else:
            if images is None:
                raise ValueError("images: the faces to invert are required (or resume=)")
            target = images_to_tensor(images, g.resolution).to(dev)
            init_w, how = self._initial_latent(self.init if init is None else init, target, images, encoder_images)
            start = 0
            from_mean = how == "mean"
            total_steps = int(steps if steps is not None else (self.steps or (1000 if from_mean else 200)))
            lr0 = self.lr if self.lr is not None else (0.1 if from_mean else 0.02)
            noise0 = self.noise if self.noise is not None else (0.05 if from_mean else 0.0)
            latent_std = self.mean_latent()[1] if noise0 > 0 else 0.0
        if isinstance(total_steps, bool) or total_steps < 1:
            raise ValueError(f"steps: expected an int >= 1, got {total_steps!r}")
        if start >= total_steps:
            raise ValueError(f"steps: the resumed run has done {start} steps already; pass steps > {start} to continue")
        n = target.shape[0]

        if resume is not None:
            param = state["latent"].to(dev).clone().requires_grad_(True)
            noises = [t.to(dev).clone().requires_grad_(True) for t in state["noises"]] if state["noises"] is not None else None
        else:
            param = (init_w.mean(1) if space == "w" else init_w).detach().clone().requires_grad_(True)
            noises = None
            if self.optimize_noise:
                noises = [getattr(g.noises, f"noise_{i}").detach().to(dev).expand(n, -1, -1, -1).clone().requires_grad_(True)
                          for i in range(g.num_layers)]
        if (noises is not None) != self.optimize_noise:
            raise ValueError("resume: the state was made with a different optimize_noise setting")
        params = [param] + (noises if noises is not None else [])
        optimizer = torch.optim.Adam(params, lr=lr0)
        rng = torch.Generator(device="cpu")
        if resume is not None:
            optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
            rng.set_state(state["rng"].clone())
            history = copy.deepcopy(dict(state.get("loss_history", {})))
        else:
            rng.manual_seed(self.seed + 1)
            history = {}
        anchor = (init_w.mean(1) if space == "w" else init_w).detach()

        embed = src_feats = None
        if self.identity_model is not None and self.id_lambda > 0:
            embed = self.identity_model
            with torch.no_grad():
                src_feats = embed(target).detach()

        def expand(p: torch.Tensor) -> torch.Tensor:
            return p[:, None, :].expand(-1, g.num_ws, -1) if space == "w" else p

        def render(p: torch.Tensor) -> torch.Tensor:
            return g.synthesis(expand(p), noise=noises) if noises is not None else g.synthesis(expand(p))

        if resume is None:
            with torch.no_grad():
                initial_metrics = image_metrics(render(param), target, self.identity_model)
        else:
            initial_metrics = state.get("initial_metrics")

        bar = None
        if self.progress:
            try:
                from tqdm.auto import tqdm

                bar = tqdm(total=total_steps, initial=start, desc="projection", dynamic_ncols=True)
            except Exception:  # noqa: BLE001 - no tqdm: no bar
                bar = None
        done = start
        stopped = "completed"
        try:
            for i in range(start, total_steps):
                t = (i + 0.5) / total_steps
                lr = lr_schedule(t, lr0, rampdown=self.lr_rampdown, rampup=self.lr_rampup)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                strength = latent_std * noise0 * max(0.0, 1.0 - t / self.noise_ramp) ** 2
                # the draw happens every step (also at strength 0) so the stream does not depend on it
                eps = torch.randn(param.shape, generator=rng).to(dev)
                latent_n = param + eps * strength if strength > 0 else param
                images = render(latent_n)
                terms = self._image_loss(images, target)
                if self.loss == "mse":
                    total = terms["mse"].sum()
                else:
                    total = terms["perceptual"].sum()
                    if self.mse_lambda:
                        total = total + self.mse_lambda * terms["mse"].sum()
                if noises is not None and self.noise_regularize:
                    terms["noise"] = noise_regularize(noises)
                    total = total + self.noise_regularize * terms["noise"].sum()
                if self.l2_lambda:
                    terms["l2"] = (param - anchor).pow(2).flatten(1).sum(1)
                    total = total + self.l2_lambda * terms["l2"].sum()
                if embed is not None:
                    terms["id"] = 1.0 - (embed(images) * src_feats).sum(1)
                    total = total + self.id_lambda * terms["id"].sum()
                grads = torch.autograd.grad(total, params)
                for p, gr in zip(params, grads):
                    p.grad = gr
                optimizer.step()
                if noises is not None:
                    _noise_normalize_(noises)
                done = i + 1
                losses = {k: float(v.detach().mean()) for k, v in terms.items()}
                losses["total"] = float(total.detach()) / n
                losses["lr"] = lr
                for k, v in losses.items():
                    history.setdefault(k, []).append(v)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses['total']:.4f}")
                if callback is not None and callback(done, losses) is False:
                    stopped = "callback"
                    break
        except KeyboardInterrupt:
            stopped = "interrupted"
        finally:
            if bar is not None:
                bar.close()
        for k in list(history):
            del history[k][done:]

        with torch.no_grad():
            final = expand(param.detach()).contiguous().clone()
            final_noises = [t.detach().clone() for t in noises] if noises is not None else None
            rec = g.synthesis(final, noise=final_noises) if final_noises is not None else g.synthesis(final)
        new_state = {
            "version": STATE_VERSION, "space": space, "latent": param.detach().clone(),
            "noises": [t.clone() for t in final_noises] if final_noises is not None else None,
            "optimizer": copy.deepcopy(optimizer.state_dict()), "rng": rng.get_state(), "step": done,
            "steps": total_steps, "lr": lr0, "noise": noise0, "latent_std": latent_std, "init": init_w.detach().clone(),
            "init_kind": how, "target": target.detach().clone(), "loss_history": copy.deepcopy(history),
            "initial_metrics": initial_metrics,
        }
        method = "encoder+projection" if how == "encoder" else "projection"
        return _result_from(final, rec, target, self.identity_model, noises=final_noises, loss_history=history,
                            method=method, steps_done=done, steps=total_steps, stopped=stopped, state=new_state,
                            initial_w_plus=init_w.detach().clone(), initial_metrics=initial_metrics,
                            seconds=time.perf_counter() - t0)

    def _check_state(self, resume: Any) -> dict:
        if not isinstance(resume, Mapping) or resume.get("version") != STATE_VERSION:
            raise ValueError("resume: expected the `state` of a projection InversionResult")
        for k in ("space", "latent", "noises", "optimizer", "rng", "step", "steps", "init", "target"):
            if k not in resume:
                raise ValueError(f"resume: the state has no {k!r} entry")
        if resume["space"] != self.space:
            raise ValueError(f"resume: the state was made with space={resume['space']!r}, this projector uses {self.space!r}")
        return dict(resume)


# ----------------------------------------------------------------------------- one entry point

def _identity_for(models: Any, identity_model: Any) -> Any:
    """The identity net for metrics: explicit, none (``None``/``False``), or ``'auto'``: the model
    set's when it is loaded already or its weights are on this machine (the toy world's ship with
    the package; a registry name counts when it is in the download cache) -- a metric never
    triggers a download.  A file that fails to load gives a warning and no metric."""
    import os

    if identity_model is None or identity_model is False:
        return None
    if not (isinstance(identity_model, str) and identity_model == "auto"):
        return identity_model
    cache = getattr(models, "_cache", {})
    if "identity" in cache:
        return cache["identity"]
    name = getattr(models, "parts", {}).get("identity")
    if not name:
        return None
    if not str(name).lower().startswith("toy") and not os.path.exists(str(name)):
        from . import pretrained

        try:
            if not pretrained.is_cached(name):
                return None
        except (LookupError, ValueError, OSError):
            return None
    try:
        return models.identity
    except (OSError, ValueError, ImportError, RuntimeError, KeyError) as e:  # missing / unloadable weights
        warnings.warn(f"identity model unavailable, id_similarity not computed: {e}", stacklevel=3)
        return None


def _as_model_set(models: Any, device: Any = None):
    if isinstance(models, str):
        from .worlds import load_models

        return load_models(models, device)
    if not hasattr(models, "generator"):
        raise TypeError(f"models: expected a ModelSet (load_models('toy'|'ffhq')) or its name, got {type(models).__name__}")
    return models


def invert(image: Any, models: Any = "toy", method: str = "encoder", *, encoder_image: Any = None,
           identity_model: Any = "auto", steps: Optional[int] = None, callback: Optional[Callable] = None,
           resume: Optional[Mapping] = None, progress: bool = False, **projection_kwargs) -> InversionResult:
    """Invert an aligned face (or a batch of them) into the model set's generator.

    Args:
        image: the aligned face: an :class:`~styleclip_lib.align.AlignedFace`, a PIL image, a
            tensor in [-1, 1], an array or a file; square, resized to the generator's resolution.
            Nothing is aligned here (use :func:`~styleclip_lib.align.align_face`, or
            :func:`styleclip_lib.photo.edit_photo` for the whole photo pipeline).
        models: a :class:`~styleclip_lib.worlds.ModelSet` or its name (``'toy'``, ``'ffhq'``).
        method: ``'encoder'`` (one pass of ``models.encoder``), ``'projection'`` (optimisation from
            the mean latent) or ``'encoder+projection'`` (optimisation from the encoder's code).
        encoder_image: the same face aligned at the encoder's input size (e4e: 256), used by the
            encoder instead of resizing ``image``.
        identity_model: ``'auto'`` (the model set's identity net when its weights are local), a
            model, or ``None`` -- used for the ``id_similarity`` metric (and ``id_lambda``).
        steps, callback, resume, progress, **projection_kwargs: for the projection methods, see
            :class:`ProjectionInversion` (``space``, ``lr``, ``loss``, ``noise_regularize``,
            ``optimize_noise``, ``l2_lambda``, ``id_lambda``, ``seed``, ...).
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    models = _as_model_set(models)
    if method == "encoder":
        if projection_kwargs or steps is not None or resume is not None:
            extra = sorted(projection_kwargs) + [k for k, v in (("steps", steps), ("resume", resume)) if v is not None]
            raise ValueError(f"{', '.join(extra)}: only for method='projection' or 'encoder+projection'")
        idm = _identity_for(models, identity_model)
        return EncoderInversion(models.encoder, models.generator, identity_model=idm)(image, encoder_images=encoder_image)
    idm = _identity_for(models, identity_model)
    g = models.generator
    if method == "projection" or resume is not None:
        proj = ProjectionInversion(g, identity_model=idm, progress=progress, **projection_kwargs)
        return proj(image, steps=steps, callback=callback, resume=resume)
    proj = ProjectionInversion(g, identity_model=idm, progress=progress, encoder=models.encoder, init="encoder",
                               **projection_kwargs)
    return proj(image, encoder_images=encoder_image, steps=steps, callback=callback)
