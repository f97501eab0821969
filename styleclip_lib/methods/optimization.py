"""StyleCLIP *latent optimisation*: edit (or generate) an image by optimising its latent
code against a CLIP text loss (Patashnik et al., 2021, sec. 4; reference
``optimization/run_optimization.py`` and ``criteria/clip_loss.py`` of orpatashnik/StyleCLIP)::

    w* = argmin_w  D_CLIP(G(w), t) + λ_L2 ‖w − w_s‖² + λ_ID (1 − ⟨R(G(w_s)), R(G(w))⟩)

Adam (lr 0.1, default betas/eps) for 300 steps with a cosine lr schedule
(:func:`lr_schedule`); ``‖w − w_s‖²`` is the plain *sum* of squares over every
element of the latent (``((latent_code_init - latent) ** 2).sum()``).

Layers of this module:

* :func:`lr_schedule` / :func:`reference_lr_schedule` / :func:`kit_lr_schedule`:
  the learning-rate schedules;
* :func:`optimize_latent`: the optimisation loop on its own, for any image loss
  (the conformance trajectory test plugs a surrogate loss into it);
* :class:`LatentOptimization`: the pipeline (generator + CLIP [+ identity net]),
  called with a prompt, returning an :class:`OptimizationResult`.

Deliberate differences from the reference script (``schedule='reference'``,
``clip_normalize=False`` and ``clip_loss_mode='reference'`` give back its exact
arithmetic; the Adam trajectory of ``shared/conformance/stylegan2`` case (vi) is
reproduced):

* **CLIP input normalisation** (``clip_normalize=True``, default): the image is mapped
  from [-1, 1] to [0, 1] and standardised with CLIP's mean/std — the input
  distribution CLIP was trained on.  The reference feeds the raw [-1, 1] generator
  output to CLIP; ``clip_normalize=False`` does that.
* **lr schedule** (``schedule='kit'``, default): step ``i`` of ``steps`` uses
  ``t = (i + 0.5) / steps`` and honours ``lr_rampup``.  The reference calls
  ``get_lr(i / steps, lr)``: ``--lr_rampup`` is never passed on (the ramp-up is always
  0.05) and, with t = 0, **the first step has lr = 0** (one wasted forward/backward).
  The midpoint rule wastes no step at either end (t never reaches 0 nor 1).
  ``schedule='reference'`` reproduces the script exactly (``lr_rampup`` ignored).
* **CLIP loss** ``clip_loss_mode='cosine'`` (default) is ``1 − cos``; the reference
  computes ``1 − exp(logit_scale)·cos / 100``, equal for OpenAI CLIP (logit scale 100);
  ``'reference'`` reproduces the literal formula for any CLIP.
* **Final image**: the reference returns the image of the last *forward* pass, i.e.
  before the last Adam update; here ``images`` is rendered from the final latent.
* **Randomness**: the random start latent and the 4096-sample mean latent (truncation
  target, free-generation start) are drawn from a generator seeded with ``seed``
  (recorded in the result); the reference uses the unseeded global RNG.
* **Batches**: N > 1 latents are optimised together, each sample independently: the
  per-sample losses are **summed** (not averaged), so every sample receives exactly
  the gradient it would get alone, and Adam being element-wise, follows the same
  trajectory as a run on that sample alone (up to float rounding of batched
  convolutions).  For N = 1 the loss is the reference loss.  The ID term is the
  per-sample ``1 − ⟨R(x̂_i), R(x_i)⟩`` summed (the reference's ``IDLoss`` averages over
  the batch; identical for N = 1).
* Gradients are taken with :func:`torch.autograd.grad` w.r.t. the latent only: the
  models' parameters never accumulate ``.grad`` whatever their ``requires_grad``.
* Interruption and resumption (callback stop, Ctrl-C, ``resume=``) and loss histories
  are additions; nothing in them changes the arithmetic.
* ``clip_loss=`` / ``neutral=`` (additions, off by default) pair the prompt with a neutral text
  (``'hair'`` for ``'purple hair'``, ``Δt = unit(f(t) − f(t_neutral))``):

  - ``'directional'`` (StyleGAN-NADA): ``1 − cos(f(G(w)) − f(G(w_s)), Δt)``;
  - ``'anchored'``: ``1 − cos(f(G(w)), unit(f(G(w_s)) + anchor_step·Δt))``, the source's own
    CLIP embedding moved along Δt.  Why: the global loss ``1 − cos(f(G(w)), f(t))`` is also
    lowered by moving everything the text does not mention toward whatever CLIP's text feature
    happens to prefer (measured: "a smiling face" turned hair green); the anchored target keeps
    every other component of the image's embedding where it was.

* ``space='s_std'`` (an addition): the conv StyleSpace codes in units of each channel's std
  (:func:`optimize_latent`); with Adam every channel then moves in σ steps, as global directions'
  edits do.

  Measured in the toy world (``toy.evaluate --methods optimize``, 25 prompts x 20 faces, 40
  steps; success / collateral / clean success): reference (W+, global loss, lr 0.1, l2 0.008)
  0.548 / 0.848 / 0.084; ``space='s_std', clip_loss='anchored', lr=0.2, l2_lambda=0.002`` 0.482 / 0.132 / 0.420, 0.47 s per edit (seed 2024),
  on the v6 toy generator.  What limited it there: for the discrete attributes (hair style,
  beard, glasses, mouth) the CLIP gradient at the source was uninformative — its cosine with the
  channel relevance fs3·Δt (the average over many faces of what each channel does to CLIP) was
  0.00 ± 0.05, against 0.1–0.35 for colours — because that generator's attribute changes were
  steps: a beard code just below its threshold drew no beard and moving it slightly changed no
  pixel.  The v7 generator is fine-tuned to cross-fade between values (``toy.train.train_blend``),
  as a real StyleGAN2 changes smoothly: the reference then gives 0.520 / 0.828 / 0.096, the kit's
  knobs 0.540 / 0.172 / 0.452 (smile
  0.65, glasses 0.65, bald 0.35; beard, long hair, mohawk still ≤ 0.05).  Global directions,
  which uses the average instead of the local gradient, reaches those edits.

* ``channel_beta=`` / ``channel_sign=`` (additions, off by default): optimise only the channels
  global directions keeps for the text pair, each scaled by its relevance and (``channel_sign``)
  only the way the direction moves it.  Measured on v7, same protocol, ``space='s_std',
  clip_loss='anchored', channel_beta=0.15, l2_lambda=0``: lr 1.0, 40 steps 0.714 / 0.178 / 0.590,
  0.42 s per edit (beard 0.80, long hair 0.60, mohawk 0.35, bald 0.40; weakest brown hair 0.25,
  green background 0.30); 80 steps 0.752 / 0.248 / 0.554; lr 1.5 0.712 / 0.234 / 0.542;
  ``l2_lambda=0.0001`` 0.658 / 0.112 / 0.582 and ``l2_lambda=0.0003`` 0.576 / 0.074 / 0.538 (collateral
  within the target, success not),
  ``l2_lambda=0.002`` 0.384 / 0.054 / 0.368.  Without the sign constraint (lr 0.5, 25 prompts x 8
  faces) 0.68 / 0.18 / 0.56, and on 8 hard prompts x 8 faces 0.34 against 0.47 with it.  Why the
  sign matters: on those faces the optimisation reached a *lower* CLIP loss than the global
  direction's edit (mohawk 0.24 against 0.29) while the judge saw fewer mohawks (0.5 against 1.0):
  its move had cosine 0.1–0.3 with the global direction, i.e. part of what lowers the loss of a
  64-px CLIP at one image is not the attribute.  Still short of the 0.8 / 0.15 target; the
  per-image gradient stays a worse guide than the population average (global directions 0.85 /
  0.14).  Tried and not better: whole-gradient normalisation instead of Adam's per-coordinate one,
  CLIP augmentations (shifts, flips, noise; 4 views), anchor step 1.5–2, the directional loss.

* ``start='global'`` (an addition, off by default): start from global directions' edit of the
  source at ``start_alpha`` and let the per-image optimisation refine it (the L2 term, the
  anchored target and the sign constraint still refer to the source).  Same protocol, with
  ``channel_beta=0.15``, anchored, ``l2_lambda=0``, 40 steps: ``start_alpha=3, lr=0.5`` 0.830 /
  0.148 / 0.718 and ``start_alpha=4, lr=0.3`` 0.838 / 0.150 / 0.722 — the toy targets (≥ 0.8,
  ≤ 0.15) — where global directions alone gives 0.614 / 0.082 at α 3, 0.780 / 0.098 at α 4 and
  0.854 / 0.142 / 0.726 at α 6.  So the refinement buys the success a larger α would, at about
  the same collateral: it lies on global directions' trade-off curve, not beyond it.
  ``start_alpha=6, lr=1.0`` overshoots (0.836 / 0.252); ``lr=0.3`` 0.856 / 0.160;
  ``l2_lambda=0.0003`` pulls the edits back (0.740 / 0.086).
"""
from __future__ import annotations

import copy
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..latents import StoppableRun, as_w_plus, check_prompt
from ..losses.clip_loss import CLIPLoss

__all__ = [
    "lr_schedule",
    "reference_lr_schedule",
    "kit_lr_schedule",
    "schedule_lrs",
    "optimize_latent",
    "OptimizationResult",
    "LatentOptimization",
]

MODES = ("edit", "free_generation")
CLIP_LOSSES = ("global", "directional", "anchored")
SPACES = ("w+", "w", "s", "s_std")
STYLE_SPACES = ("s", "s_std")
SCHEDULES = ("kit", "reference")
STATE_VERSION = 1

LossFn = Callable[[torch.Tensor], Union[torch.Tensor, Mapping[str, torch.Tensor]]]
Callback = Callable[[int, dict, Optional[torch.Tensor]], Optional[bool]]


# ----------------------------------------------------------------------------- lr schedules

def lr_schedule(t: float, initial_lr: float, rampdown: float = 0.25, rampup: float = 0.05) -> float:
    """The reference ``get_lr``: cosine ramp-down over the last ``rampdown`` fraction of
    the run, linear ramp-up over the first ``rampup`` fraction (``t`` in [0, 1])::

        lr = initial_lr · (0.5 − 0.5·cos(π·min(1, (1 − t)/rampdown))) · min(1, t/rampup)

    Same floating-point operations as the reference.  ``rampdown <= 0`` / ``rampup <= 0``
    disable the respective ramp (the reference would divide by zero).
    """
    t = float(t)
    lr_ramp = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    lr_ramp = 0.5 - 0.5 * math.cos(lr_ramp * math.pi)
    lr_ramp = lr_ramp * (min(1.0, t / rampup) if rampup > 0 else 1.0)
    return initial_lr * lr_ramp


def reference_lr_schedule(steps: int, lr: float = 0.1, rampdown: float = 0.25) -> list[float]:
    """The learning rates of ``run_optimization.py``: ``get_lr(i / steps, lr)`` for
    ``i = 0 … steps−1`` — ramp-up fixed at 0.05 (the script never passes ``--lr_rampup``),
    first step lr = 0.  ``rampdown`` is not a reference option (0.25 there)."""
    steps = _check_steps(steps)
    return [lr_schedule(i / steps, lr, rampdown=rampdown) for i in range(steps)]


def kit_lr_schedule(steps: int, lr: float = 0.1, rampup: float = 0.05, rampdown: float = 0.25) -> list[float]:
    """The kit's schedule: ``lr_schedule((i + 0.5) / steps, lr, rampdown, rampup)`` —
    the reference curve sampled at step midpoints, so no step gets lr = 0 (the reference's
    first step does, and ``t = 1`` would zero the last one)."""
    steps = _check_steps(steps)
    return [lr_schedule((i + 0.5) / steps, lr, rampdown=rampdown, rampup=rampup) for i in range(steps)]


def schedule_lrs(steps: int, lr: float, schedule: str = "kit", lr_rampup: float = 0.05, lr_rampdown: float = 0.25) -> list[float]:
    """Learning rate of every step for ``schedule`` ``'kit'`` or ``'reference'``."""
    schedule = _check_choice(schedule, SCHEDULES, "schedule")
    if schedule == "reference":
        return reference_lr_schedule(steps, lr, rampdown=lr_rampdown)
    return kit_lr_schedule(steps, lr, rampup=lr_rampup, rampdown=lr_rampdown)


# ----------------------------------------------------------------------------- argument checks

def _check_steps(steps, name: str = "steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise ValueError(f"{name}: expected an integer >= 1, got {steps!r}")
    if steps < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {steps}")
    return int(steps)


def _check_choice(value, choices: Sequence[str], name: str) -> str:
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value.lower()


def _check_number(value, name: str, *, minimum: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    value = float(value)
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"{name}: expected a number {'>' if strict else '>='} {minimum}, got {value}")
    return value


def _check_every(value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"save_intermediate_every: expected an integer >= 0 (0 = no frames), got {value!r}")
    return int(value)


def _check_space(space) -> str:
    if isinstance(space, str) and space.lower() in ("w_plus", "wplus", "w+"):
        return "w+"
    if isinstance(space, str) and space.lower() in ("s", "stylespace", "style"):
        return "s"
    if isinstance(space, str) and space.lower() == "w":
        return "w"
    if isinstance(space, str) and space.lower() in ("s_std", "s-std"):
        return "s_std"
    raise ValueError("space: expected 'w+', 'w' (one offset shared by every W+ row), 's' (StyleSpace) or 's_std' "
                     f"(StyleSpace in units of each channel's std), got {space!r}")


def resolve_clip_loss(clip_loss: Optional[str], neutral: Optional[str]) -> tuple[str, Optional[str]]:
    """Checked ``(clip_loss, neutral)``: ``None`` means ``'directional'`` with a neutral text, else
    ``'global'``; the text-pair losses need a neutral text, the global one takes none."""
    if clip_loss is None:
        clip_loss = "directional" if neutral is not None else "global"
    clip_loss = _check_choice(clip_loss, CLIP_LOSSES, "clip_loss")
    if clip_loss == "global":
        if neutral is not None:
            raise ValueError("neutral: only used by clip_loss='directional' or 'anchored', got clip_loss='global'")
        return clip_loss, None
    if neutral is None:
        raise ValueError(f"neutral: clip_loss={clip_loss!r} needs a neutral text (e.g. 'hair' for 'purple hair')")
    return clip_loss, check_prompt(neutral, "neutral")


def _model_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in module.parameters():
        return p.device, p.dtype
    for b in module.buffers():
        return b.device, b.dtype
    return torch.device("cpu"), torch.float32


# ----------------------------------------------------------------------------- result

def _tqdm(total: int, initial: int, disable: bool, desc: str):
    if disable:
        return None
    try:
        from tqdm.auto import tqdm
    except Exception:  # tqdm missing or broken: no bar
        return None
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)


@dataclass
class OptimizationResult(StoppableRun):
    """What :func:`optimize_latent` / :class:`LatentOptimization` return.

    Attributes:
        images: (N, 3, H, W) images of the final latent (generator range, nominally [-1, 1]).
        source_images: (N, 3, H, W) images of the starting latent.
        w_plus: (N, num_ws, w_dim) final W+ (``space='w+'`` or ``'w'``), else ``None``.
        styles: list of (N, C) final StyleSpace codes, all layers in generator order
            (``space='s'``; the ToRGB codes are the unchanged source ones), else ``None``.
        loss_history: ``{term: [value per step]}``: the batch sums of every term, measured
            at each step *before* its Adam update.  Terms: ``'clip'`` (or ``'image'`` for a
            custom loss returning a bare tensor), ``'l2'`` (unweighted squared distance to
            the start), ``'id'`` (when used) and ``'total'`` (the weighted sum optimised).
        sample_loss_history: same layout, one list of N per-sample values per step
            (``None`` for a step whose custom loss was a batch scalar and N > 1).
        frames: (N, 3, H, W) CPU images saved after steps ``i`` (0-based) with
            ``i % save_intermediate_every == 0`` (the reference's rule); ``frame_steps`` holds
            the number of steps done at each frame.
        steps_done: Adam steps applied to the latent in total (resumed runs included).
        steps: length of the schedule (``steps`` argument).
        state: everything needed to continue: pass ``resume=result.state``.
        stopped: ``'completed'``, ``'callback'`` or ``'interrupted'`` (KeyboardInterrupt).
        seed: seed of the random start / mean latent (pipeline), else ``None``.
        prompt: the text prompt (pipeline), else ``None``.
        lrs: the learning rate used at each step (whole schedule).
        num_channels: with ``channel_beta`` (pipeline): how many conv channels were optimised.
    """

    images: torch.Tensor
    source_images: torch.Tensor
    w_plus: Optional[torch.Tensor]
    styles: Optional[list]
    loss_history: dict
    sample_loss_history: dict
    frames: list = field(default_factory=list)
    frame_steps: list = field(default_factory=list)
    steps_done: int = 0
    steps: int = 0
    state: dict = field(default_factory=dict)
    stopped: str = "completed"
    seed: Optional[int] = None
    prompt: Optional[str] = None
    lrs: list = field(default_factory=list)
    latent_history: Optional[list] = None
    num_channels: Optional[int] = None

    def to_pil(self, which: str = "images") -> list:
        """One PIL image per sample of ``images`` (``which='images'``) or ``source_images``."""
        from ..imageio import to_uint8
        from PIL import Image

        if which not in ("images", "source", "source_images"):
            raise ValueError(f"which: expected 'images' or 'source', got {which!r}")
        x = self.images if which == "images" else self.source_images
        return [Image.fromarray(a) for a in to_uint8(x)]

    def save_gif(self, path: str | os.PathLike, sample: Optional[int] = None, duration: int = 100, loop: int = 0) -> Path:
        """Animated GIF (pillow) of the optimisation: the source image, the saved ``frames``
        and the final image.  ``sample=None`` tiles the batch in a grid per frame;
        ``duration``: milliseconds per frame."""
        from ..imageio import make_grid, to_uint8
        from PIL import Image

        seq = [self.source_images.detach().cpu()] + [f for f in self.frames]
        if not self.frame_steps or self.frame_steps[-1] != self.steps_done:
            seq.append(self.images.detach().cpu())
        n = seq[0].shape[0]
        if sample is not None and not (-n <= sample < n):
            raise ValueError(f"sample: expected an index in [0, {n}), got {sample}")
        pil = []
        for x in seq:
            arr = to_uint8(x if sample is None else x[sample:sample + 1])
            pil.append(Image.fromarray(arr[0] if arr.shape[0] == 1 else make_grid(arr)))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pil[0].save(path, format="GIF", save_all=True, append_images=pil[1:], duration=int(duration), loop=int(loop))
        return path


# ----------------------------------------------------------------------------- the loop

def _terms(out, n: int) -> dict[str, torch.Tensor]:
    if isinstance(out, torch.Tensor):
        out = {"image": out}
    if not isinstance(out, Mapping) or not out:
        raise TypeError(f"image_loss_fn must return a tensor or a dict of tensors, got {type(out).__name__}")
    terms = {}
    for k, v in out.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"image_loss_fn: term {k!r} is a {type(v).__name__}, expected a tensor")
        if v.dim() > 1 or (v.dim() == 1 and v.shape[0] != n):
            v = v.reshape(-1) if v.numel() == n else None
            if v is None:
                raise ValueError(f"image_loss_fn: term {k!r} must be a scalar or have one value per sample ({n})")
        terms[k] = v
    return terms


def _values(t: torch.Tensor, n: int) -> tuple[float, Optional[list]]:
    t = t.detach()
    if t.dim() == 0:
        return float(t), ([float(t)] if n == 1 else None)
    return float(t.sum()), [float(v) for v in t.cpu()]


def _prepare_latent(generator, latent_init, space: str, device, dtype):
    """Source latent for ``space``: W+ (N, num_ws, w_dim), or the list of (N, C) styles."""
    if space in ("w+", "w"):
        if isinstance(latent_init, (list, tuple)):
            raise ValueError(f"latent: space={space!r} needs a W+ tensor (N, num_ws, w_dim), got a list (StyleSpace codes?)")
        return as_w_plus(latent_init, generator.num_ws, generator.w_dim, name="latent", device=device, dtype=dtype).detach()
    if isinstance(latent_init, (list, tuple)):
        chans = generator.style_channels
        if len(latent_init) != len(chans):
            raise ValueError(f"latent: expected {len(chans)} StyleSpace tensors, got {len(latent_init)}")
        styles = []
        for i, (s, c) in enumerate(zip(latent_init, chans)):
            if not isinstance(s, torch.Tensor) or not s.is_floating_point():
                raise ValueError(f"latent[{i}]: expected a float tensor")
            s = s.reshape(s.shape[0], -1) if s.dim() in (2, 5) else (s[None] if s.dim() == 1 else s)
            if s.dim() != 2 or s.shape[1] != c:
                raise ValueError(f"latent[{i}]: expected StyleSpace codes of shape (N, {c}), got {tuple(s.shape)}")
            if not torch.isfinite(s).all():
                raise ValueError(f"latent[{i}]: contains NaN or infinite values")
            styles.append(s.detach().to(device=device, dtype=dtype))
        if len({s.shape[0] for s in styles}) != 1:
            raise ValueError("latent: StyleSpace tensors have different batch sizes")
        return styles
    w = as_w_plus(latent_init, generator.num_ws, generator.w_dim, name="latent", device=device, dtype=dtype)
    with torch.no_grad():
        return [s.detach() for s in generator.styles(w)]


def _check_state(resume, space: str) -> dict:
    if not isinstance(resume, Mapping) or resume.get("version") != STATE_VERSION:
        raise ValueError("resume: expected the `state` of an OptimizationResult")
    for k in ("space", "latent", "source", "optimizer", "step"):
        if k not in resume:
            raise ValueError(f"resume: the state has no {k!r} entry")
    if resume["space"] != space:
        raise ValueError(f"resume: the state was made with space={resume['space']!r}, got space={space!r}")
    return resume


def _per_layer_channels(values, generator, space: str, name: str) -> list[torch.Tensor]:
    """``values`` as one flat (C_l,) tensor per StyleSpace layer (``channel_mask``/``channel_signs``)."""
    if space not in STYLE_SPACES:
        raise ValueError(f"{name}: only used with space='s' or 's_std' (StyleSpace channels), got space={space!r}")
    channels = list(generator.style_channels)
    if not isinstance(values, (list, tuple)) or len(values) != len(channels):
        raise ValueError(f"{name}: expected a list of {len(channels)} per-layer (C_l,) tensors, one per StyleSpace layer")
    out = []
    for i, (m, c) in enumerate(zip(values, channels)):
        m = torch.as_tensor(m).reshape(-1)
        if m.numel() != c:
            raise ValueError(f"{name}[{i}]: expected {c} channels, got {m.numel()}")
        out.append(m)
    return out


def _check_channel_mask(mask, generator, space: str, device, dtype) -> list[torch.Tensor]:
    out = []
    for i, m in enumerate(_per_layer_channels(mask, generator, space, "channel_mask")):
        m = m.to(device=device, dtype=dtype)
        if not bool(torch.isfinite(m).all()) or bool((m < 0).any()) or bool((m > 1).any()):
            raise ValueError(f"channel_mask[{i}]: expected weights in [0, 1]")
        out.append(m if space == "s_std" else (m != 0).to(dtype))
    return out


def _check_channel_signs(signs, generator, space: str, device, dtype) -> list[torch.Tensor]:
    out = []
    for i, m in enumerate(_per_layer_channels(signs, generator, space, "channel_signs")):
        if not bool(torch.isin(m, torch.tensor([-1.0, 0.0, 1.0], dtype=m.dtype)).all()):
            raise ValueError(f"channel_signs[{i}]: expected entries -1, 0 or +1")
        out.append(m.to(device=device, dtype=dtype))
    return out


def optimize_latent(
    generator: nn.Module,
    latent_init: Any,
    image_loss_fn: LossFn,
    *,
    space: str = "w+",
    steps: int = 300,
    lr: float = 0.1,
    lr_rampup: float = 0.05,
    lr_rampdown: float = 0.25,
    l2_lambda: float = 0.008,
    loss_weights: Optional[Mapping[str, float]] = None,
    schedule: str = "kit",
    save_intermediate_every: int = 0,
    progress: bool = False,
    callback: Optional[Callback] = None,
    resume: Optional[Mapping] = None,
    keep_latent_history: bool = False,
    source_images: Optional[torch.Tensor] = None,
    noise_mode: str = "const",
    desc: str = "latent optimisation",
    style_std: Optional[Sequence[torch.Tensor]] = None,
    channel_mask: Optional[Sequence[torch.Tensor]] = None,
    channel_signs: Optional[Sequence[torch.Tensor]] = None,
    latent_start: Any = None,
) -> OptimizationResult:
    """The StyleCLIP optimisation loop with any image loss.

    For every step ``i`` (as ``run_optimization.py``): set Adam's lr to the schedule's
    value, render ``images = G(latent)``, ``loss = Σ_k weight_k·term_k + l2_lambda·‖latent −
    latent_init‖²``, Adam step.

    Args:
        generator: a :class:`~styleclip_lib.models.stylegan2.Generator` (not modified).
        latent_init: starting W+ ``(N, num_ws, w_dim)`` (a single ``(num_ws, w_dim)`` gets a
            batch axis); for ``space='s'`` also a list of StyleSpace codes.  ``None`` when
            resuming.  It is also the anchor of the L2 term.
        image_loss_fn: ``images (N, 3, H, W) -> tensor or {term: tensor}``; each tensor a
            scalar or ``(N,)`` per-sample values (which are summed over the batch).
        space: ``'w+'`` optimises the whole W+; ``'s'`` only the conv (non-ToRGB) StyleSpace
            codes (the reference ``--work_in_stylespace``), ToRGB codes stay fixed; ``'w'`` (an
            addition) one offset added to every W+ row of the source, the space StyleGAN's
            mapping moves in (the L2 term is still ‖w+ − w+_src‖², i.e. num_ws·‖offset‖²);
            ``'s_std'`` (an addition) the conv StyleSpace codes as ``s = s_src + σ·δ`` with
            ``σ = style_std``, optimising ``δ`` and taking the L2 term ``‖δ‖²`` in σ units.
            Why: Adam moves every parameter by about lr per step whatever its scale, so in raw S
            a channel with σ = 0.05 and one with σ = 2 move alike; in σ units every channel
            moves in the steps global directions takes (α·σ).
        steps: length of the schedule.  When resuming, the loop continues from the state's
            step up to ``steps`` (pass the same value to finish an interrupted run).
        lr, lr_rampup, lr_rampdown, schedule: see :func:`schedule_lrs`.
        l2_lambda: weight of the squared L2 distance to ``latent_init`` (sum over all
            optimised elements; in S over the conv codes).
        loss_weights: weight per term of ``image_loss_fn`` (default 1).
        save_intermediate_every: keep a frame after steps ``i % every == 0`` (0: none).
        progress: tqdm bar.
        callback: ``callback(steps_done, losses, frame_or_None)`` after every step; ``losses``
            holds the batch sums (floats) of that step; returning ``False`` stops the run.
        resume: ``result.state`` of an earlier (stopped) run.
        keep_latent_history: store a CPU copy of the optimised latent after every step in
            ``result.latent_history`` (W+ tensors, or lists of the optimised S codes).
        source_images: the images of ``latent_init`` if already computed.
        noise_mode: generator noise (``'const'`` = reference ``randomize_noise=False``).
        style_std: ``space='s_std'`` only: per-layer (C_l,) std of every StyleSpace layer
            (ToRGB included, as :func:`~styleclip_lib.global_directions.style_statistics`
            returns them).  A resumed run uses the state's.
        channel_mask: ``space='s'``/``'s_std'`` only: one ``(C_l,)`` tensor of weights in [0, 1]
            per StyleSpace layer (ToRGB entries ignored; e.g. ``split_to_layers(|ds|, ...)`` of a
            global direction).  Channels of weight 0 are not optimised (zero gradients: Adam's
            moments stay 0 and they never leave the source).  In ``'s_std'`` a weight also scales
            the channel's step, ``s = s_src + w·σ·δ``; in ``'s'`` any weight > 0 means optimised.
            A resumed run uses the state's.
        channel_signs: ``space='s'``/``'s_std'`` only: one ``(C_l,)`` tensor of -1/0/+1 per
            StyleSpace layer; a channel of sign ±1 may only move that way from the source
            (projected Adam: after each step the code is clipped back to the allowed side), 0 is
            free.  A resumed run uses the state's.
        latent_start: where the optimisation starts, if not at ``latent_init`` (which stays the
            anchor of the L2 term and of ``channel_signs``); same forms as ``latent_init``.  In
            ``'w'`` it must differ from the anchor by one offset on every row; in ``'s_std'`` a
            channel that ``channel_mask`` freezes keeps the anchor's value (in ``'s'`` the start's).

    A ``KeyboardInterrupt`` during the loop is caught: the partial result
    (``stopped='interrupted'``, with a resumable ``state``) is returned instead of lost.
    """
    space = _check_space(space)
    steps = _check_steps(steps)
    lr = _check_number(lr, "lr")
    lr_rampup = _check_number(lr_rampup, "lr_rampup")
    lr_rampdown = _check_number(lr_rampdown, "lr_rampdown")
    l2_lambda = _check_number(l2_lambda, "l2_lambda")
    every = _check_every(save_intermediate_every)
    schedule = _check_choice(schedule, SCHEDULES, "schedule")
    weights = dict(loss_weights or {})
    device, dtype = _model_device_dtype(generator)
    styled = space in STYLE_SPACES
    if resume is not None and space == "s_std":
        style_std = resume.get("style_std")
    if space == "s_std":
        if style_std is None:
            raise ValueError("style_std: space='s_std' needs the per-layer StyleSpace std (global_directions.style_statistics)")
        from ..global_directions import _layer_std_list

        style_std = [s.to(device=device, dtype=dtype) for s in _layer_std_list(list(style_std), generator.style_channels)]
        if any(bool((s < 0).any()) for s in style_std):
            raise ValueError("style_std: expected non-negative standard deviations")
    elif style_std is not None:
        raise ValueError(f"style_std: only used with space='s_std', got space={space!r}")
    if resume is not None and styled:
        channel_mask, channel_signs = resume.get("channel_mask"), resume.get("channel_signs")
    if channel_mask is not None:
        channel_mask = _check_channel_mask(channel_mask, generator, space, device, dtype)
    if channel_signs is not None:
        channel_signs = _check_channel_signs(channel_signs, generator, space, device, dtype)

    if resume is not None:
        state = _check_state(resume, space)
        start = int(state["step"])
        if start >= steps:
            raise ValueError(f"steps: the resumed run has done {start} steps already; pass steps > {start} to continue")
        source = _prepare_latent(generator, state["source"], space, device, dtype)
        current = _prepare_latent(generator, state["latent"], space, device, dtype)
        history = copy.deepcopy(dict(state.get("loss_history", {})))
        sample_history = copy.deepcopy(dict(state.get("sample_loss_history", {})))
    else:
        if latent_init is None:
            raise ValueError("latent: a starting latent is required (or resume=)")
        start = 0
        source = _prepare_latent(generator, latent_init, space, device, dtype)
        current = source if latent_start is None else _prepare_latent(generator, latent_start, space, device, dtype)
        if latent_start is not None:
            shapes = [tuple(t.shape) for t in (current if styled else [current])]
            if shapes != [tuple(t.shape) for t in (source if styled else [source])]:
                raise ValueError(f"latent_start: expected the shape of the latent, got {shapes}")
        history, sample_history = {}, {}

    fixed, conv_idx = None, None
    if space == "w+":
        n = source.shape[0]
        params = [current.detach().clone().requires_grad_(True)]
    elif space == "w":
        n = source.shape[0]
        offset = (current - source)
        if not torch.allclose(offset, offset[:, :1].expand_as(offset), atol=1e-5):
            raise ValueError(f"{'resume' if resume is not None else 'latent_start'}: in space='w' the start differs "
                             "from the source by the same offset on every row; this one does not (made with another space?)")
        params = [offset[:, 0].detach().clone().requires_grad_(True)]
    elif space == "s":
        n = source[0].shape[0]
        conv_idx = list(generator.conv_style_indices)
        fixed = [s.detach().clone() for s in current]
        params = [fixed[i].clone().requires_grad_(True) for i in conv_idx]
    else:
        n = source[0].shape[0]
        conv_idx = list(generator.conv_style_indices)
        fixed = [s.detach().clone() for s in source]
        # δ = (s − s_src)/σ; a channel with σ = 0 never varies and keeps δ = 0
        # a channel weight scales the channel's σ step: Adam moves every δ by about lr, so weights
        # in (0, 1) make weakly relevant channels move less, as global directions' α·σ·ds does
        move = [s * channel_mask[i] for i, s in enumerate(style_std)] if channel_mask is not None else style_std
        params = [torch.where(move[i] > 0, (current[i] - source[i]) / move[i].clamp_min(1e-30), 0.0)
                  .detach().clone().requires_grad_(True) for i in conv_idx]
    src_opt = [source] if space == "w+" else [source[i] for i in conv_idx] if space == "s" else \
        [torch.zeros_like(p) for p in params]
    # space='w': ‖w+ − w+_src‖² of a shared offset is num_ws·‖offset‖²
    l2_scale = float(source.shape[1]) if space == "w" else 1.0

    def latent_of(ps) -> torch.Tensor:
        return ps[0] if space == "w+" else source + ps[0][:, None, :]

    def conv_styles(ps) -> list[torch.Tensor]:
        return list(ps) if space == "s" else [source[i] + move[i] * p for i, p in zip(conv_idx, ps)]

    def styles_of(ps) -> list[torch.Tensor]:
        styles = list(fixed)
        for i, s in zip(conv_idx, conv_styles(ps)):
            styles[i] = s
        return styles

    def render(ps) -> torch.Tensor:
        if space in ("w+", "w"):
            return generator.synthesis(latent_of(ps), noise_mode=noise_mode)
        return generator.synthesis_from_styles(styles_of(ps), noise_mode=noise_mode)

    if source_images is None:
        with torch.no_grad():
            source_images = generator.synthesis(source, noise_mode=noise_mode) if not styled else \
                generator.synthesis_from_styles(source, noise_mode=noise_mode)
    source_images = source_images.detach()

    optimizer = torch.optim.Adam(params, lr=lr)
    if resume is not None:
        optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
    lrs = schedule_lrs(steps, lr, schedule, lr_rampup, lr_rampdown)

    frames: list = []
    frame_steps: list = []
    latent_history: Optional[list] = [] if keep_latent_history else None
    done = start
    stopped = "completed"
    bar = _tqdm(steps, start, not progress, desc)

    def record(name: str, value: torch.Tensor) -> float:
        total, per = _values(value, n)
        history.setdefault(name, []).append(total)
        sample_history.setdefault(name, []).append(per)
        return total

    try:
        for i in range(start, steps):
            for group in optimizer.param_groups:
                group["lr"] = lrs[i]
            images = render(params)
            terms = _terms(image_loss_fn(images), n)
            l2 = l2_scale * sum(((s - p) ** 2).flatten(1).sum(1) for s, p in zip(src_opt, params))
            total = l2_lambda * l2.sum()
            per_total = l2_lambda * l2.detach()
            per_ok = True
            for k, v in terms.items():
                w = float(weights.get(k, 1.0))
                total = total + w * v.sum()
                if v.dim() == 1:
                    per_total = per_total + w * v.detach()
                else:
                    per_ok = per_ok and n == 1
                    per_total = per_total + w * v.detach()
            grads = torch.autograd.grad(total, params)
            if channel_mask is not None and space == "s":
                grads = [g * channel_mask[li] for g, li in zip(grads, conv_idx)]
            for p, g in zip(params, grads):
                p.grad = g
            optimizer.step()
            if channel_signs is not None:
                with torch.no_grad():
                    # δ (s_std) or s − s_src (s) keeps the sign the channel is allowed to move with
                    for p, o, li in zip(params, src_opt, conv_idx):
                        sign = channel_signs[li]
                        p.copy_(torch.where(sign != 0, o + sign * torch.relu(sign * (p - o)), p))
            done = i + 1

            losses = {k: record(k, v) for k, v in terms.items()}
            losses["l2"] = record("l2", l2)
            losses["total"] = float(total.detach())
            history.setdefault("total", []).append(losses["total"])
            sample_history.setdefault("total", []).append([float(v) for v in per_total.cpu()] if per_ok else None)
            if latent_history is not None:
                latent_history.append(latent_of(params).detach().cpu().clone() if not styled
                                      else [p.detach().cpu().clone() for p in conv_styles(params)])
            frame = None
            if every and i % every == 0:
                with torch.no_grad():
                    frame = render(params).detach().cpu()
                frames.append(frame)
                frame_steps.append(done)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses['total']:.4f}")
            if callback is not None and callback(done, losses, frame) is False:
                stopped = "callback"
                break
    except KeyboardInterrupt:
        stopped = "interrupted"
    finally:
        if bar is not None:
            bar.close()

    # Histories must match the steps actually applied (an interrupt may land mid-record).
    for d in (history, sample_history):
        for k in list(d):
            del d[k][done:]
    with torch.no_grad():
        images = render(params).detach()
    if not styled:
        final = latent_of(params).detach().clone()
        final_styles = None
    else:
        with torch.no_grad():
            final_styles = [s.detach().clone() for s in styles_of(params)]
        final = final_styles
    opt_state = copy.deepcopy(optimizer.state_dict())
    state = {
        "version": STATE_VERSION,
        "space": space,
        "latent": final if not styled else [s.clone() for s in final_styles],
        "source": source.clone() if not styled else [s.clone() for s in source],
        "optimizer": opt_state,
        "step": done,
        "steps": steps,
        "schedule": schedule,
        "lr": lr,
        "lr_rampup": lr_rampup,
        "lr_rampdown": lr_rampdown,
        "l2_lambda": l2_lambda,
        "loss_history": copy.deepcopy(history),
        "sample_loss_history": copy.deepcopy(sample_history),
    }
    if space == "s_std":
        state["style_std"] = [s.clone() for s in style_std]
    if channel_mask is not None:
        state["channel_mask"] = [m.clone() for m in channel_mask]
    if channel_signs is not None:
        state["channel_signs"] = [m.clone() for m in channel_signs]
    return OptimizationResult(
        images=images,
        source_images=source_images,
        w_plus=final if not styled else None,
        styles=final_styles,
        loss_history=history,
        sample_loss_history=sample_history,
        frames=frames,
        frame_steps=frame_steps,
        steps_done=done,
        steps=steps,
        state=state,
        stopped=stopped,
        lrs=lrs,
        latent_history=latent_history,
    )


# ----------------------------------------------------------------------------- the pipeline

def _identity_embedder(identity_model):
    """The embedding network of an identity model or of an ``IDLoss`` wrapping one."""
    from ..losses.id_loss import IDLoss

    if isinstance(identity_model, IDLoss):
        return identity_model.model
    return identity_model


class LatentOptimization:
    """StyleCLIP latent optimisation as a pipeline: ``LatentOptimization(G, clip)(prompt, w)``.

    Args:
        generator: StyleGAN2 :class:`~styleclip_lib.models.stylegan2.Generator`.
        clip_model: a :class:`~styleclip_lib.models.clip.CLIP` (e.g. ``load_clip('ViT-B/32')``).
        identity_model: optional network mapping images (N, 3, H, W) in [-1, 1] to unit
            identity embeddings (``load_arcface(...)``) or an
            :class:`~styleclip_lib.losses.id_loss.IDLoss`; required for ``id_lambda > 0``.
        clip_loss_mode: ``'cosine'`` (``1 − cos``, default) or ``'reference'``
            (``1 − exp(logit_scale)·cos/100``); equal for OpenAI CLIP.
        clip_normalize: ``True`` (default): map the image to CLIP's mean/std input
            distribution; ``False``: feed the raw [-1, 1] image as the reference does.
        device: where to run; ``None`` keeps the generator's device (the other models are
            moved there).  A given device moves all models (``Module.to``, in place).
        style_std: per-layer StyleSpace std for ``space='s_std'`` (or a zero-argument callable
            returning it, called on first use); ``None``: computed from 10 000 samples of the
            generator on first use (``global_directions.style_statistics``).
        fs3: the global-directions channel relevance (array, path to ``fs3.npy`` or a zero-argument
            callable returning either, called on first use) used by
            ``channel_beta``; ``templates``: the prompt templates of its text direction
            (default: the reference's 79 ImageNet templates).

    The models are used as they are (eval mode is the caller's business; ``load_*``
    return eval models); no parameter of theirs receives gradients.
    """

    def __init__(self, generator: nn.Module, clip_model: nn.Module, identity_model: Optional[nn.Module] = None, *,
                 clip_loss_mode: str = "cosine", clip_normalize: bool = True, device=None, style_std=None,
                 fs3=None, templates: Optional[Sequence[str]] = None):
        if device is not None:
            from ..device import resolve_device

            device = resolve_device(device)
            generator = generator.to(device)
        else:
            device = _model_device_dtype(generator)[0]
        self.device = device
        self.generator = generator
        self.clip_model = clip_model.to(device)
        self.identity_model = identity_model.to(device) if isinstance(identity_model, nn.Module) else identity_model
        self.clip_loss = CLIPLoss(self.clip_model, mode=_check_choice(clip_loss_mode, ("cosine", "reference"), "clip_loss_mode"),
                                  normalize=bool(clip_normalize))
        self._style_std = style_std
        self._fs3, self._fs3_checked = fs3, False
        self.templates = templates

    def fs3(self) -> torch.Tensor:
        """The channel relevance used by ``channel_beta`` (loaded on first use)."""
        if self._fs3 is None:
            raise ValueError("channel_beta: needs the fs3 channel relevance; pass fs3= (array or path to fs3.npy) "
                             "to LatentOptimization")
        if not self._fs3_checked:
            from ..global_directions import as_fs3

            self._fs3 = as_fs3(self._fs3() if callable(self._fs3) else self._fs3, self.generator)
            self._fs3_checked = True
        return self._fs3

    def relevant_channels(self, prompt: str, neutral: str, beta: float) -> tuple[list[torch.Tensor], int]:
        """Global directions' channel direction for (prompt, neutral) at threshold ``beta``, one
        ``(C_l,)`` tensor per StyleSpace layer: ``ds`` = ``fs3·Δt`` where ``|fs3·Δt| ≥ β``, scaled
        to max |ds| = 1, 0 elsewhere and on ToRGB layers (Δt over :attr:`templates`); and the
        number of channels kept."""
        from ..global_directions import relevant_channels

        return relevant_channels(self.clip_model, self.generator, self.fs3(), prompt, neutral, beta, self.templates)

    def style_std(self) -> list[torch.Tensor]:
        """Per-layer StyleSpace std used by ``space='s_std'`` (computed once if not given)."""
        if callable(self._style_std):
            self._style_std = self._style_std()
        if self._style_std is None:
            from ..global_directions import style_statistics

            self._style_std = style_statistics(self.generator, n=10_000, progress=False)[1]
        return self._style_std

    # ---- starting latents
    def mean_latent(self, n: int = 4096, seed: Optional[int] = None) -> torch.Tensor:
        """(1, w_dim) mean of ``mapping(z)`` over ``n`` z drawn from a generator seeded with ``seed``."""
        g = self.generator
        device, dtype = _model_device_dtype(g)
        rng = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        z = torch.randn(n, g.w_dim, generator=rng)
        with torch.no_grad():
            return g.mapping(z.to(device=device, dtype=dtype)).mean(0, keepdim=True)

    def initial_latent(self, mode: str = "edit", *, seed: int = 0, truncation: float = 0.7, num_images: int = 1) -> torch.Tensor:
        """The reference's starting W+ without ``--latent_path``: ``mean_latent(4096)``, then
        ``edit``: z ~ N(0, I) mapped with truncation ``truncation`` toward it, broadcast to
        every row; ``free_generation``: the mean latent repeated.  Seeded, (N, num_ws, w_dim)."""
        mode = _check_choice(mode, MODES, "mode")
        g = self.generator
        device, dtype = _model_device_dtype(g)
        rng = torch.Generator().manual_seed(int(seed))
        mean_z = torch.randn(4096, g.w_dim, generator=rng)
        with torch.no_grad():
            mean = g.mapping(mean_z.to(device=device, dtype=dtype)).mean(0, keepdim=True)
            if mode == "free_generation":
                return mean[:, None, :].repeat(num_images, g.num_ws, 1)
            z = torch.randn(num_images, g.w_dim, generator=rng).to(device=device, dtype=dtype)
            w = g.mapping(z, truncation=truncation, truncation_latent=mean)
            return w[:, None, :].repeat(1, g.num_ws, 1)

    # ---- the call
    def __call__(
        self,
        prompt: str,
        latent: Optional[Any] = None,
        *,
        mode: str = "edit",
        space: str = "w+",
        steps: int = 300,
        lr: float = 0.1,
        lr_rampup: float = 0.05,
        lr_rampdown: float = 0.25,
        l2_lambda: float = 0.008,
        id_lambda: float = 0.0,
        neutral: Optional[str] = None,
        clip_loss: Optional[str] = None,
        anchor_step: float = 1.0,
        channel_beta: Optional[float] = None,
        channel_sign: bool = True,
        start: str = "source",
        start_alpha: float = 4.1,
        start_beta: Optional[float] = None,
        truncation: float = 0.7,
        seed: Optional[int] = None,
        num_images: int = 1,
        schedule: str = "kit",
        save_intermediate_every: int = 0,
        progress: bool = True,
        callback: Optional[Callback] = None,
        resume: Optional[Mapping] = None,
    ) -> OptimizationResult:
        """Optimise a latent so that its image matches ``prompt``.

        Args:
            prompt: the text, e.g. ``'a person with purple hair'``.
            latent: starting W+ ``(N, num_ws, w_dim)``; a single ``(num_ws, w_dim)`` latent
                (e.g. an e4e inversion ``(18, 512)``) gets a batch axis.  Anything else is
                refused.  For ``space='s'`` a list of StyleSpace codes is accepted too.
                ``None``: the reference start (see :meth:`initial_latent`), from ``seed``.
            mode: ``'edit'``: loss = CLIP + l2_lambda·‖w − w_src‖² + id_lambda·ID.
                ``'free_generation'``: loss = CLIP only (``l2_lambda``/``id_lambda`` unused);
                without ``latent`` the start is the mean latent.
            space: ``'w+'``, ``'s'`` (optimise the conv StyleSpace codes only; ToRGB fixed),
                ``'s_std'`` (the same in units of each channel's std, L2 in σ units) or
                ``'w'`` (one offset shared by every W+ row); see :func:`optimize_latent`.
            steps: Adam steps (the schedule length; see ``resume``).  Reference default 300.
            lr, lr_rampup, lr_rampdown: peak lr and ramp fractions of :func:`lr_schedule`.
            l2_lambda: L2 weight (reference 0.008; the notebook also uses 0.005 for ID).
            id_lambda: identity-loss weight (reference 0; needs ``identity_model``).
            neutral: ``None`` (reference): the CLIP term is ``1 − cos(G(w), prompt)``.  A text
                such as ``'hair'`` for ``'purple hair'`` switches it to the *directional*
                CLIP loss ``1 − cos(f(G(w)) − f(G(w_s)), f(prompt) − f(neutral))``
                (:meth:`~styleclip_lib.losses.clip_loss.CLIPLoss.directional`; mode ``'edit'`` only).
            clip_loss: ``'global'`` (reference, ``1 − cos(f(G(w)), f(prompt))``),
                ``'directional'`` (above) or ``'anchored'``: ``1 − cos(f(G(w)), e)`` with the
                target ``e = normalise(f(G(w_s)) + anchor_step·Δt)``, the source's own CLIP
                embedding moved along the text direction ``Δt = unit(f(prompt) − f(neutral))``.
                ``None``: ``'directional'`` when ``neutral`` is given, else ``'global'``.
                The two text-pair losses need ``neutral`` and mode ``'edit'``.
            anchor_step: how far along ``Δt`` the anchored target lies (unit CLIP features;
                ``clip_loss='anchored'`` only).
            channel_beta: ``None`` (reference): every conv channel is optimised.  A threshold in
                [0, 1] (an addition; ``space='s'``/``'s_std'``, needs ``neutral``, hence a text-pair
                ``clip_loss``, and the pipeline's ``fs3``): only the channels that global directions
                would move for (``prompt``, ``neutral``) at ``beta = channel_beta`` are optimised
                (:meth:`relevant_channels`); in ``'s_std'`` each channel's step is scaled by its
                relevance ``|ds|``, as global directions scales its edit.  Why: the CLIP gradient at
                one image also moves channels of attributes the text does not name (collateral),
                and an L2 term strong enough to stop that also stops the edit; fs3 says, from many
                images, which channels this text is about.  No surviving channel: a warning, and
                the source comes back unchanged (as global directions).
            channel_sign: with ``channel_beta``: each kept channel may only move the way ``ds``
                moves it (``channel_signs`` of :func:`optimize_latent`), so the optimisation picks
                per image *how far* each channel goes, not which way.  Why: the per-image CLIP
                gradient is partly adversarial — in the toy world it lowered the CLIP loss below
                the global-direction edit's while the judge saw no mohawk, by moving channels
                against the population direction (cosine 0.1–0.3 with it).
            start: ``'source'`` (reference): the optimisation starts at the source latent.
                ``'global'`` (an addition; ``space='s'``/``'s_std'``, needs ``neutral`` and ``fs3``):
                it starts from the global-direction edit of the source, ``s + start_alpha·σ·ds`` with
                ``ds`` the direction of (``prompt``, ``neutral``) at ``start_beta`` (default
                ``channel_beta``, else 0.15), and refines it per image; the L2 term, the anchored /
                directional CLIP targets and ``channel_sign`` still refer to the source.
            start_alpha, start_beta: the global-direction start's strength and threshold (reference
                GUI defaults α 4.1, β 0.15).
            truncation: ψ for the random start latent (reference 0.7; unused with ``latent``).
            seed: seed of the random start and of the mean latent; ``None`` draws one from
                torch's global RNG (recorded in ``result.seed``).
            num_images: batch size of the random start (ignored with ``latent``).
            schedule: ``'kit'`` (midpoint cosine schedule, honours ``lr_rampup``) or
                ``'reference'`` (``get_lr(i/steps, lr)`` exactly: first step lr = 0,
                ``lr_rampup`` ignored).
            save_intermediate_every: keep a frame every this many steps (0: none) for
                :meth:`OptimizationResult.save_gif`.
            progress: tqdm progress bar.
            callback: ``callback(steps_done, losses, frame_or_None)`` after each step;
                returning ``False`` stops early (partial result, ``stopped='callback'``).
            resume: ``result.state`` of a stopped run; continues from its step up to
                ``steps`` with the same latent, anchor and Adam moments (pass the original
                ``steps`` to finish the original schedule; a larger value extends it).

        Returns:
            :class:`OptimizationResult`.  Ctrl-C (``KeyboardInterrupt``) during the loop
            returns the partial result (``stopped='interrupted'``) with a resumable state.

        Batches are optimised jointly with summed per-sample losses, i.e. each sample as if
        alone; per-sample curves are in ``result.sample_loss_history``.
        """
        text = check_prompt(prompt)
        mode = _check_choice(mode, MODES, "mode")
        space = _check_space(space)
        steps = _check_steps(steps)
        _check_choice(schedule, SCHEDULES, "schedule")
        _check_number(lr, "lr")
        _check_number(lr_rampup, "lr_rampup")
        _check_number(lr_rampdown, "lr_rampdown")
        l2_lambda = _check_number(l2_lambda, "l2_lambda")
        id_lambda = _check_number(id_lambda, "id_lambda")
        truncation = _check_number(truncation, "truncation")
        _check_every(save_intermediate_every)
        if id_lambda > 0 and mode == "edit" and self.identity_model is None:
            raise ValueError("id_lambda: > 0 needs an identity model; pass identity_model= (e.g. load_arcface(...)) "
                             "to LatentOptimization or set id_lambda=0")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise ValueError(f"seed: expected an integer or None, got {seed!r}")
        num_images = _check_steps(num_images, "num_images")
        if mode == "free_generation":
            l2_lambda, id_lambda = 0.0, 0.0
        clip_loss, neutral = resolve_clip_loss(clip_loss, neutral)
        anchor_step = _check_number(anchor_step, "anchor_step")
        if clip_loss != "global" and mode != "edit":
            raise ValueError(f"neutral: the {clip_loss} CLIP loss compares with a source image; use mode='edit'")
        start_kind = _check_choice(start, ("source", "global"), "start")
        start_alpha = float(start_alpha)
        if not math.isfinite(start_alpha):
            raise ValueError(f"start_alpha: expected a finite number, got {start_alpha!r}")
        if start_kind == "global" and resume is None:
            if space not in STYLE_SPACES:
                raise ValueError(f"start='global': the global-direction start is a StyleSpace edit; use space='s' or "
                                 f"'s_std', got space={space!r}")
            if neutral is None:
                raise ValueError("start='global': needs neutral= (the text pair of the global direction)")
        channel_mask, channel_signs, num_channels = None, None, None
        if channel_beta is not None and resume is None:
            if space not in STYLE_SPACES:
                raise ValueError(f"channel_beta: selects StyleSpace channels; use space='s' or 's_std', got space={space!r}")
            if neutral is None:
                raise ValueError("channel_beta: needs neutral= (the text pair whose direction selects the channels)")
            from ..global_directions import _check_beta

            ds, num_channels = self.relevant_channels(text, neutral, _check_beta(channel_beta))
            channel_mask = [d.abs() for d in ds]
            channel_signs = [torch.sign(d) for d in ds] if channel_sign else None

        g = self.generator
        device, dtype = _model_device_dtype(g)
        if resume is not None:
            if latent is not None:
                raise ValueError("latent: pass either latent or resume=, not both (the state holds the latent)")
            state = _check_state(resume, space)
            if state.get("mode", mode) != mode:
                raise ValueError(f"resume: the state was made with mode={state['mode']!r}, got mode={mode!r}")
            seed = state.get("seed", seed)
            init = None
            source = _prepare_latent(g, state["source"], space, device, dtype)
        else:
            if latent is None:
                if seed is None:
                    seed = int(torch.randint(0, 2 ** 31 - 1, (1,)).item())
                latent = self.initial_latent(mode, seed=seed, truncation=truncation, num_images=num_images)
            init = _prepare_latent(g, latent, space, device, dtype)
            source = init
        latent_start = None
        if start_kind == "global" and resume is None:
            from ..global_directions import _check_beta

            b = channel_beta if start_beta is None else start_beta
            ds, _ = self.relevant_channels(text, neutral, _check_beta(0.15 if b is None else b))
            std = self.style_std()
            latent_start = [src + start_alpha * (d * sd).to(device=device, dtype=dtype)
                            for src, d, sd in zip(source, ds, std)]
        with torch.no_grad():
            source_images = g.synthesis(source, noise_mode="const") if space not in STYLE_SPACES else \
                g.synthesis_from_styles(source, noise_mode="const")

        text_features = self.clip_loss.encode_prompt(text)
        if clip_loss != "global":
            direction = self.clip_loss.text_direction(text, neutral)
            with torch.no_grad():
                source_clip = self.clip_loss.image_features(source_images)
            if clip_loss == "anchored":
                text_features = self.clip_loss.anchored_target(source_clip, direction, anchor_step)
        embed = None
        src_feats = None
        if id_lambda > 0:
            embed = _identity_embedder(self.identity_model)
            with torch.no_grad():
                src_feats = embed(source_images).detach()

        def loss_fn(images: torch.Tensor) -> dict:
            if clip_loss == "directional":
                terms = {"clip": self.clip_loss.directional(images, source_clip, direction)}
            else:  # global: the prompt's features; anchored: one target per source image
                terms = {"clip": self.clip_loss(images, text_features)}
            if embed is not None:
                terms["id"] = 1.0 - (embed(images) * src_feats).sum(dim=1)
            return terms

        result = optimize_latent(
            g, init, loss_fn, space=space, steps=steps, lr=lr, lr_rampup=lr_rampup, lr_rampdown=lr_rampdown,
            l2_lambda=l2_lambda, loss_weights={"clip": 1.0, "id": id_lambda}, schedule=schedule,
            save_intermediate_every=save_intermediate_every, progress=progress, callback=callback, resume=resume,
            source_images=source_images, desc=f"StyleCLIP {text[:30]!r}",
            style_std=self.style_std() if space == "s_std" and resume is None else None,
            channel_mask=channel_mask, channel_signs=channel_signs, latent_start=latent_start,
        )
        if resume is not None and "channel_mask" in result.state:
            num_channels = int(sum(int((m > 0).sum()) for m in result.state["channel_mask"]))
        result.num_channels = num_channels
        result.state["mode"] = mode
        result.state["seed"] = seed
        result.state["prompt"] = text
        result.seed = seed
        result.prompt = text
        return result
