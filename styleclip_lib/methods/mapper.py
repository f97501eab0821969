"""StyleCLIP latent mapper: training (:class:`MapperTrainer`) and inference (:class:`LatentMapperEdit`).

The method (Patashnik et al. 2021, sec. 5; reference ``mapper/training/coach.py``)::

    w_hat = w + 0.1 · M(w)                      # M: LevelsMapper (coarse / medium / fine MLPs)
    loss  = clip_lambda      · mean_i D_CLIP(G(w_hat_i), description)
          + latent_l2_lambda · MSE(w_hat, w)     # torch.nn.MSELoss(): mean over every element
          + id_lambda        · L_ID(G(w_hat), G(w))

Only the mapper is trained (Ranger, lr 0.5, batch 2 in the reference); the
generator runs with its stored noise buffers (``randomize_noise=False``).  Terms
with a zero weight are not computed, as in the reference.

Inference::

    >>> edit = LatentMapperEdit.from_pretrained(generator, "mapper-purple_hair")
    >>> out = edit(w_plus)                 # strength 0.1 = the reference edit
    >>> out.images, out.source_images, out.w_plus, out.delta

Training::

    >>> trainer = MapperTrainer(generator, clip_model, IDLoss.from_pretrained(), description="purple hair",
    ...                         latents="train_faces", val_latents="test_faces", exp_dir="runs/purple")
    >>> result = trainer.train()           # Ctrl-C saves runs/purple/checkpoints/iteration_<step>.pt first
    >>> MapperTrainer(..., resume_from="runs/purple/checkpoints/iteration_2000.pt").train()   # continues exactly

Files written under ``exp_dir`` (layout of the reference)::

    checkpoints/iteration_{step}.pt   every save_interval steps and at max_steps
    checkpoints/best_model.pt         lowest validation loss so far
    checkpoints/timestamp.txt         one line per checkpoint (step, losses)
    logs/images_val/{step:05d}.png    validation grid: sources (top row), edits (bottom row)
    logs/images_train/{step:05d}.png  training batch every image_interval steps (same layout)
    logs/metrics.jsonl                train metrics every board_interval steps, every validation

Checkpoints are the official format ``{'state_dict': {'mapper.*', 'decoder.*'}, 'opts': {...}}``
(readable by :func:`~styleclip_lib.models.mapper.load_mapper` and by the reference
``StyleCLIPMapper.load_weights``, which needs the ``decoder.*`` keys: ``save_generator=True``)
plus keys the official loaders ignore: ``optimizer`` (optimizer state dict),
``step`` (updates done), ``rng`` (data-order generator state, current epoch order and
position), ``trainer`` (loss history, best validation loss, latents fingerprint) and
``latent_avg``.  All of it loads with ``torch.load(weights_only=True)``.

Deliberate differences from the reference
-----------------------------------------
* **CLIP input normalisation** (``clip_normalize=True``, the kit-wide default): images
  are mapped from [-1, 1] to [0, 1] and normalised with CLIP's mean/std, which is
  what CLIP was trained on.  The reference feeds the raw [-1, 1] generator output;
  ``clip_normalize=False`` reproduces it.  The CLIP loss is ``1 − cos`` (equal to the
  reference's ``1 − logits/100`` for OpenAI CLIP, whose logit scale is 100), resized with
  the reference's upsample-×7 + average-pool filter generalised to any size
  (:mod:`styleclip_lib.losses.clip_loss`).
* **Step counting.**  ``step`` is the number of optimizer updates done:
  ``iteration_{n}.pt`` holds the mapper after ``n`` updates and training stops after
  exactly ``max_steps`` updates.  The reference increments its counter after
  validating/saving, so its ``iteration_{n}.pt`` holds ``n + 1`` updates and it runs
  ``max_steps + 1`` updates (and also saves an ``iteration_0.pt``).
* **Validation.**  The reference validates with batch size 1 on at most 201 samples and
  averages the per-batch losses; here batches of ``val_batch_size`` are averaged
  weighted by size — the same per-sample mean — over at most ``val_max_samples``
  (default 201).  The reference's step-0 "sanity" validation (after the first update,
  on 5 samples, discarded) is replaced by a baseline validation of the untrained
  mapper before the first update (``validate_at_start``), recorded in ``val_history``
  and never written as ``best_model.pt``.  Instead of one image per validation
  sample, one grid of the first ``num_val_images`` samples per validation is saved,
  as PNG, clamped to [-1, 1] (the reference rescales every image to its own min/max).
* **Data.**  Without latents the reference samples 5000 train / 1000 test W from
  ``randn`` with truncation 0.7 (with an unseeded RNG and, as a bug, drawing the test z
  with the train size); here ``num_samples + num_val_samples`` z are drawn from a
  ``torch.Generator`` seeded with ``seed``.  Given only ``latents``, a seeded
  ``val_fraction`` of them is held out for validation.  Batches are drawn like
  ``DataLoader(shuffle=True, drop_last=True)`` from a seeded generator whose state is
  checkpointed, so a resumed run sees the same batches.
* **Mapper initialisation** uses ``seed`` (the global torch RNG is left untouched).
* The source image ``G(w)`` is only rendered when needed (ID loss, image logging).
* Frozen networks: the generator, CLIP and identity networks are put in eval mode and
  their ``requires_grad`` flags switched off during :meth:`MapperTrainer.train` (the
  reference lets gradients accumulate on the decoder); both are restored afterwards.
* No TensorBoard: metrics go to ``logs/metrics.jsonl`` and ``TrainResult.history``.
* The StyleSpace mapper (``work_in_stylespace=True``, the reference's ``--work_in_stylespace``):
  the training latents stay W+ and are turned into style codes per batch (the reference stores
  the codes); its latent L2 is the reference's, the sum over StyleSpace layers of each layer's MSE.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from ..checkpoint import CheckpointError, describe, load_state, strip_prefix
from ..latents import as_w_plus, check_prompt, load_latents
from ..models.mapper import MAPPER_STRENGTH, LevelsMapper, StyleSpaceMapper, load_mapper, mapper_checkpoint

__all__ = ["MapperResult", "LatentMapperEdit", "MapperEdit", "TrainResult", "MapperTrainer"]

PathLike = Union[str, os.PathLike]


# ----------------------------------------------------------------------------- helpers
from ..device import module_device as _module_device  # noqa: E402  (shared helper)


def _check_generator(generator: Any) -> None:
    for attr in ("num_ws", "w_dim", "synthesis"):
        if not hasattr(generator, attr):
            raise TypeError(f"generator: expected a StyleGAN2 Generator (load_generator(...)), got {type(generator).__name__}")


def _check_compatible(generator: Any, mapper: LevelsMapper, where: str = "mapper") -> None:
    if isinstance(mapper, StyleSpaceMapper):
        if mapper.style_channels != list(generator.style_channels) or \
                not set(mapper.conv_indices) <= set(generator.conv_style_indices):
            raise ValueError(
                f"{where} does not fit the generator: the StyleSpace mapper edits {mapper.num_styles} style layers of "
                f"{mapper.style_channels} channels (conv layers {mapper.conv_indices}) but the generator "
                f"({generator.resolution} px) has {len(generator.style_channels)} of {list(generator.style_channels)} "
                f"(conv layers {list(generator.conv_style_indices)}); use the generator the mapper was trained with")
        return
    if not isinstance(mapper, LevelsMapper):
        raise TypeError(f"{where}: expected a LevelsMapper or StyleSpaceMapper (load_mapper(...)), "
                        f"got {type(mapper).__name__}")
    if (mapper.num_ws, mapper.latent_dim) != (generator.num_ws, generator.w_dim):
        raise ValueError(
            f"{where} does not fit the generator: the mapper works on W+ of shape (N, {mapper.num_ws}, {mapper.latent_dim}) "
            f"but the generator ({generator.resolution} px) uses (N, {generator.num_ws}, {generator.w_dim}); "
            "use the generator the mapper was trained with (the official mappers need the 1024 px FFHQ generator)")


def _check_strength(strength: Any) -> float:
    try:
        s = float(strength)
    except (TypeError, ValueError):
        raise ValueError(f"strength: expected a number (0.1 is the reference edit), got {strength!r}") from None
    if not math.isfinite(s):
        raise ValueError(f"strength: expected a finite number, got {strength!r}")
    return s


def _resolve(value: Any) -> Any:
    """A statistic given as a value or as a callable that loads it on first use."""
    return value() if callable(value) else value


def _per_layer(stat: Any, generator: Any) -> list[torch.Tensor]:
    """Per-StyleSpace-layer (C_l,) tensors from a per-layer list/tuple or a flat (sum C,) vector."""
    from ..global_directions import _layer_std_list

    return _layer_std_list(list(stat) if isinstance(stat, tuple) else stat, generator.style_channels)


class _NullBar:
    def __init__(self, verbose: bool = False):
        self.verbose = verbose

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def write(self, text: str) -> None:
        if self.verbose:
            print(text)

    def close(self) -> None:
        pass


def _progress_bar(enabled: bool, total: int, initial: int, desc: str):
    if not enabled:
        return _NullBar()
    try:
        from tqdm.auto import tqdm
    except Exception:  # noqa: BLE001 - tqdm missing or broken: plain prints
        return _NullBar(verbose=True)
    bar = tqdm(total=total, initial=initial, desc=desc)
    bar.write = tqdm.write  # type: ignore[attr-defined]
    return bar


@contextlib.contextmanager
def _defer_sigint():
    """Hold back Ctrl-C while the optimizer step and the step counter are updated, so an
    interrupt never leaves the mapper half-updated (only with Python's default handler,
    in the main thread)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    received: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if received:
        raise KeyboardInterrupt


def _atomic_save(obj: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def _fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- inference
@dataclass
class MapperResult:
    """Output of :class:`LatentMapperEdit`.

    ``images`` / ``source_images``: (N, 3, H, W) generator outputs (nominally [-1, 1];
    None with ``return_images=False``) of the edited and of the input latents;
    ``w_plus``: the edited W+ ``source_w_plus + strength · delta``; ``delta``: the raw
    mapper output ``M(w)`` (not scaled by ``strength``); ``source_w_plus``: the input
    as a W+ batch; ``strength``: the coefficient used.  With a StyleSpace mapper the edit
    lives in StyleSpace: ``w_plus`` is None, ``styles`` / ``source_styles`` are the edited and
    the source codes (one (N, C) tensor per layer) and ``delta`` is a list like them.
    """

    images: Optional[torch.Tensor]
    source_images: Optional[torch.Tensor]
    w_plus: Optional[torch.Tensor]
    delta: Any
    source_w_plus: Optional[torch.Tensor] = None
    strength: float = MAPPER_STRENGTH
    styles: Optional[list] = None
    source_styles: Optional[list] = None


class LatentMapperEdit:
    """Apply a trained StyleCLIP latent mapper: ``w_hat = w + strength · M(w)``, then render.

    Args:
        generator: the StyleGAN2 :class:`~styleclip_lib.models.stylegan2.Generator` the
            mapper was trained for (its ``num_ws``/``w_dim`` must match the mapper's).
        mapper: a :class:`~styleclip_lib.models.mapper.LevelsMapper` or
            :class:`~styleclip_lib.models.mapper.StyleSpaceMapper` (moved to the generator's device).
        batch_size: latents rendered per generator call.
        noise_mode: generator noise, ``'const'`` (the reference's ``randomize_noise=False``).
    """

    def __init__(self, generator: Any, mapper: LevelsMapper, *, batch_size: int = 8, noise_mode: str = "const"):
        _check_generator(generator)
        _check_compatible(generator, mapper)
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
        self.generator = generator
        self.device = _module_device(generator)
        self.mapper = mapper.to(self.device)
        self.batch_size = batch_size
        self.noise_mode = noise_mode

    @classmethod
    def from_pretrained(cls, generator: Any, name_or_path: PathLike, *, device: Any = None, **kwargs) -> "LatentMapperEdit":
        """Build from a generator (object, path or registry name such as ``'stylegan2-ffhq'``) and
        a mapper checkpoint (path or registry name such as ``'mapper-purple_hair'``)."""
        if isinstance(generator, (str, os.PathLike)):
            from ..models.stylegan2 import load_generator

            generator = load_generator(generator, device=device)
        _check_generator(generator)
        mapper = load_mapper(name_or_path, device=_module_device(generator) if device is None else device)
        _check_compatible(generator, mapper, where=f"mapper {os.fspath(name_or_path)!r}")
        return cls(generator, mapper, **kwargs)

    @property
    def num_ws(self) -> int:
        return self.generator.num_ws

    @property
    def w_dim(self) -> int:
        return self.generator.w_dim

    def _render(self, w_plus: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.generator.synthesis(w_plus[i:i + self.batch_size], noise_mode=self.noise_mode)
                          for i in range(0, w_plus.shape[0], self.batch_size)])

    def _render_styles(self, styles: list) -> torch.Tensor:
        n = styles[0].shape[0]
        return torch.cat([self.generator.synthesis_from_styles([s[i:i + self.batch_size] for s in styles],
                                                               noise_mode=self.noise_mode)
                          for i in range(0, n, self.batch_size)])

    def _call_style_space(self, w: torch.Tensor, s: float, return_images: bool) -> MapperResult:
        parts = [self.generator.styles(w[i:i + self.batch_size]) for i in range(0, w.shape[0], self.batch_size)]
        styles = [torch.cat(layer) for layer in zip(*parts)]
        delta = [torch.cat(layer) for layer in zip(*(self.mapper(p) for p in parts))]
        edited = [c.clone() for c in styles] if s == 0.0 else [c + s * d for c, d in zip(styles, delta)]
        images = source = None
        if return_images:
            source = self._render(w)
            images = source.clone() if s == 0.0 else self._render_styles(edited)
        return MapperResult(images=images, source_images=source, w_plus=None, delta=delta, source_w_plus=w,
                            strength=s, styles=edited, source_styles=styles)

    @torch.no_grad()
    def __call__(self, latent: Any, strength: float = MAPPER_STRENGTH, return_images: bool = True) -> MapperResult:
        """Edit W+ ``latent`` of shape (N, num_ws, w_dim) or (num_ws, w_dim).

        ``strength`` 0.1 is the reference edit (the mapper was trained with it); 0 returns
        the source latents and images exactly; other values scale the edit.
        """
        s = _check_strength(strength)
        w = as_w_plus(latent, self.num_ws, self.w_dim, device=self.device)
        if isinstance(self.mapper, StyleSpaceMapper):
            return self._call_style_space(w, s, return_images)
        delta = torch.cat([self.mapper(w[i:i + self.batch_size]) for i in range(0, w.shape[0], self.batch_size)])
        w_hat = w.clone() if s == 0.0 else w + s * delta
        images = source = None
        if return_images:
            source = self._render(w)
            images = source.clone() if s == 0.0 else self._render(w_hat)
        return MapperResult(images=images, source_images=source, w_plus=w_hat, delta=delta, source_w_plus=w, strength=s)


MapperEdit = LatentMapperEdit


# ----------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    """Outcome of :meth:`MapperTrainer.train`.

    ``history``: per training step (key ``'step'``) the reference's loss names
    ``'loss'`` (weighted total), ``'loss_clip'``, ``'loss_l2_latent'``, ``'loss_id'`` (only
    the active terms, unweighted); ``val_history``: one dict per validation (``'step'``
    plus the same keys; step 0 is the untrained baseline); ``best_val_loss`` /
    ``best_step``: of ``best_model.pt`` (baseline excluded).
    """

    mapper: LevelsMapper
    step: int
    history: dict
    val_history: list
    best_val_loss: Optional[float]
    best_step: Optional[int]
    exp_dir: Optional[Path]
    last_checkpoint: Optional[Path]
    best_checkpoint: Optional[Path]
    stopped_early: bool = False
    elapsed: float = 0.0


_RESUME_EXPECTED = "a MapperTrainer checkpoint ({'state_dict': {'mapper.*'}, 'opts', 'optimizer', 'step', 'rng', ...})"


class MapperTrainer:
    """Train a StyleCLIP latent mapper for one text ``description`` (reference ``coach.py``).

    Args:
        generator: StyleGAN2 generator (object, path or registry name); frozen.
        clip_model: CLIP model (object, path or registry name such as ``'ViT-B/32'``); frozen.
        identity_model: face-identity network for the ID loss: an
            :class:`~styleclip_lib.losses.id_loss.IDLoss`, any callable mapping images to unit
            embeddings (e.g. ``load_arcface(...)``), or a path/registry name for
            ``IDLoss.from_pretrained``.  Required when ``id_lambda > 0`` (the reference
            default 0.1); pass ``id_lambda=0`` for non-face generators.
        description: the text prompt.
        latents: training W+ latents (N, num_ws, w_dim): a tensor, a ``.pt``/``.npy`` path or a
            registry name (``'train_faces'``).  ``None``: ``num_samples`` W sampled from the
            generator (z ~ N(0, 1) from ``seed``, truncation ``truncation`` towards
            ``latent_avg``, broadcast to W+), plus ``num_val_samples`` for validation.
        val_latents: validation latents (same forms).  ``None`` with ``latents`` given: a
            seeded ``val_fraction`` of ``latents`` is held out (0: no validation).
        no_coarse_mapper, no_medium_mapper, no_fine_mapper: LevelsMapper variant.
        work_in_stylespace: train the reference's StyleSpace mapper instead
            (:class:`~styleclip_lib.models.mapper.StyleSpaceMapper`: ``s + 0.1·M_l(s)`` on every conv
            StyleSpace layer; the ``no_*_mapper`` flags do not apply).
        channel_beta, channel_sign, fs3, style_std, templates: (kit additions; StyleSpace mapper with
            ``neutral``) train only the channels global directions keeps for (``description``,
            ``neutral``) at ``beta = channel_beta``, as ``LatentOptimization(channel_beta=)`` does:
            layer ``l``'s delta becomes ``(σ_l·|ds_l| / 0.1)·M_l(s)``, i.e. the edit moves each kept
            channel ``M`` steps of its std scaled by its relevance; with ``channel_sign`` (default)
            ``(σ_l·|ds_l| / 0.1)·sign(ds_l)·softplus(M_l(s))``, only the way the direction moves it,
            the mapper choosing per image how far.  ``fs3``: the channel relevance (array, path or
            a callable returning one); ``style_std``: per-layer StyleSpace std (or a callable;
            default computed from 10 000 samples); ``templates``: the text direction's prompt
            templates (default the 79 ImageNet ones).  Measured in the toy world ("purple hair",
            anchored loss, 20 held-out faces, success / collateral): the reference StyleSpace
            mapper (Ranger, 1000 steps) 0.15 / 0.25, as the W+ one; channel-masked at β 0.15 with
            the reference latent L2 0.8 0.15 / 0.20 (the CLIP loss is satisfied by a half-way,
            reddish edit: strength 0.2 gives 0.75); with ``latent_l2_lambda=0`` (Adam, lr 0.5)
            0.75 / 0.25 at 300 and at 1000 steps (the collateral is the mouth, 5 of 20); β 0.3
            keeps too few channels to edit (0.00).  The same masked mapper (β 0.15, L2 0, Adam, 1000
            steps) on "a face with glasses" 1.00 / 0.05 and "a smiling face" 0.70 / 0.20, where the
            reference W+ mapper gets 0.60 / 0.05 and 0.10 / 0.05; one per prompt over the toy world's
            25 edit prompts (300 steps each) 0.84 / 0.13, as global directions' 0.85 / 0.14.
        range_lambda, range_sigma, style_mean: (kit addition; StyleSpace mapper) weight of a loss on
            edited conv channels that leave their spread: the squared excess, in style stds, of
            ``|s' − mean|`` beyond ``range_sigma`` (or beyond the source's own distance), summed over
            channels.  Zero inside, so it bounds an edit where the latent L2 pulls every edit back.
            ``style_mean`` / ``style_std``: per-layer statistics (or callables; default computed from
            10 000 samples).  Measured in the toy world (masked mapper as above, β 0.15, L2 0, Adam,
            300 steps, "purple hair", success / collateral at strengths 0.1 / 0.2): without it the
            kept hair-colour channels end up to 97 stds off (0.75 / 0.25, 0.95 / 0.65); at
            ``range_sigma`` 3 0.15 / 0.25, 0.35 / 0.20; at 6 0.20 / 0.20, 0.75 / 0.20 (the CLIP loss
            is met by an edit that stops short of purple); off by default.
        clip_lambda, latent_l2_lambda, id_lambda: loss weights (reference 1.0, 0.8, 0.1).
        optimizer: ``'ranger'`` (:class:`~styleclip_lib.optim.Ranger`, the reference) or ``'adam'``.
            Ranger's RAdam rectification warms up over roughly ``1/(1-β2) = 1000`` steps, so
            its first few dozen updates are tiny at lr 0.5 (reference behaviour); the
            reference trains for 50000 steps.
        learning_rate, batch_size, max_steps: reference 0.5, 2, 50000.
        val_interval, save_interval, image_interval, board_interval: in steps (reference
            2000, 2000, 100, 50); ``save_interval=None`` saves only at ``max_steps`` and
            ``image_interval=None`` disables training images.
        val_batch_size, val_max_samples, num_val_images: validation batching, the cap on
            validation samples (reference: 201) and the number of samples in the grid.
        exp_dir: output folder (checkpoints, image grids, metrics).  ``None``: nothing is
            written (no checkpoints, no resume, Ctrl-C saves nothing).
        save_generator: include the generator as ``decoder.*`` (needed by the official
            loader; ~120 MB per checkpoint at 1024 px).
        clip_normalize: CLIP mean/std normalisation of [0, 1] images (kit default True;
            the reference feeds raw [-1, 1] images: False).
        validate_at_start: validate the untrained mapper before the first step (baseline).
        resume_from: a checkpoint written by this class: restores mapper, optimizer, step,
            data order, loss history and best loss; :meth:`train` then continues exactly.
        device: device to train on (the models are moved there); default: the generator's.
        seed: seeds latent sampling, the validation split, mapper init and the data order.
        neutral: ``None`` (reference): the CLIP term is ``1 − cos(G(ŵ), description)``.  A text
            such as ``'hair'`` for ``'purple hair'`` switches it to the directional CLIP loss
            ``1 − cos(f(G(ŵ)) − f(G(w)), f(description) − f(neutral))`` (a kit addition, see
            :meth:`~styleclip_lib.losses.clip_loss.CLIPLoss.directional`).  Measured in the toy
            world ("purple hair", 1000 Ranger steps, 20 held-out faces): success 0.05, collateral
            0.05, against 0.20 / 0.45 for the reference loss; at the reference latent-L2 weight
            the directional mapper barely edits.
        clip_loss: ``'global'`` (reference), ``'directional'`` (above) or ``'anchored'``: each
            edit's target is the source image's own CLIP embedding moved ``anchor_step`` along
            the text direction (see :class:`~styleclip_lib.methods.optimization.LatentOptimization`);
            ``None``: ``'directional'`` with ``neutral``, else ``'global'``.  The text-pair
            losses need ``neutral``.
        anchor_step: the anchored target's step along the text direction.  Measured in the toy
            world (1000 Ranger steps, 20 held-out faces, success / collateral): "purple hair"
            global 0.15 / 0.60 (3000 steps), anchored 0.15 / 0.25; "blue eyes" global 1.00 / 0.10,
            anchored 1.00 / 0.00.
    """

    def __init__(self, generator: Any, clip_model: Any, identity_model: Any = None, *, description: str,
                 latents: Any = None, val_latents: Any = None, val_fraction: float = 0.1,
                 num_samples: int = 5000, num_val_samples: int = 1000, truncation: float = 0.7,
                 no_coarse_mapper: bool = False, no_medium_mapper: bool = False, no_fine_mapper: bool = False,
                 clip_lambda: float = 1.0, latent_l2_lambda: float = 0.8, id_lambda: float = 0.1,
                 optimizer: str = "ranger", learning_rate: float = 0.5, batch_size: int = 2, max_steps: int = 50000,
                 val_interval: int = 2000, save_interval: Optional[int] = 2000, image_interval: Optional[int] = 100,
                 board_interval: int = 50, val_batch_size: int = 4, val_max_samples: Optional[int] = 201,
                 num_val_images: int = 8, exp_dir: Optional[PathLike] = None, save_generator: bool = True,
                 clip_normalize: bool = True, validate_at_start: bool = True, resume_from: Optional[PathLike] = None,
                 device: Any = None, seed: int = 0, neutral: Optional[str] = None, clip_loss: Optional[str] = None,
                 anchor_step: float = 1.0, work_in_stylespace: bool = False, channel_beta: Optional[float] = None,
                 channel_sign: bool = True, fs3: Any = None, style_std: Any = None, templates: Any = None,
                 range_lambda: float = 0.0, range_sigma: float = 3.0, style_mean: Any = None):
        from ..device import resolve_device
        from ..losses.clip_loss import CLIPLoss
        from ..losses.id_loss import IDLoss

        # ---- options
        self.description = check_prompt(description, name="description")
        for name, v in (("clip_lambda", clip_lambda), ("latent_l2_lambda", latent_l2_lambda), ("id_lambda", id_lambda),
                        ("range_lambda", range_lambda)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
        if clip_lambda == 0 and latent_l2_lambda == 0 and id_lambda == 0:
            raise ValueError("clip_lambda, latent_l2_lambda and id_lambda are all 0: nothing to train")
        if not (isinstance(range_sigma, (int, float)) and math.isfinite(range_sigma) and range_sigma > 0):
            raise ValueError(f"range_sigma: expected a number > 0 (in style stds), got {range_sigma!r}")
        if range_lambda > 0 and not work_in_stylespace:
            raise ValueError("range_lambda: bounds StyleSpace channels; use work_in_stylespace=True")
        if optimizer not in ("ranger", "adam"):
            raise ValueError(f"optimizer: expected 'ranger' (the reference) or 'adam', got {optimizer!r}")
        if not (isinstance(learning_rate, (int, float)) and math.isfinite(learning_rate) and learning_rate > 0):
            raise ValueError(f"learning_rate: expected a number > 0, got {learning_rate!r}")
        for name, v, allow_none in (("batch_size", batch_size, False), ("val_batch_size", val_batch_size, False),
                                    ("val_interval", val_interval, False), ("board_interval", board_interval, False),
                                    ("save_interval", save_interval, True), ("image_interval", image_interval, True),
                                    ("val_max_samples", val_max_samples, True)):
            if not ((allow_none and v is None) or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)):
                raise ValueError(f"{name}: expected an int >= 1{' or None' if allow_none else ''}, got {v!r}")
        if not (isinstance(max_steps, int) and max_steps >= 0):
            raise ValueError(f"max_steps: expected an int >= 0, got {max_steps!r}")
        if not (isinstance(num_val_images, int) and num_val_images >= 0):
            raise ValueError(f"num_val_images: expected an int >= 0, got {num_val_images!r}")
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction: expected a number in [0, 1), got {val_fraction!r}")
        if id_lambda > 0 and identity_model is None:
            raise ValueError(
                f"id_lambda={id_lambda} needs an identity model: pass identity_model=IDLoss.from_pretrained() "
                "(ArcFace IR-SE50, for faces) or load_arcface(...), or set id_lambda=0 (non-face generators)")

        # ---- models
        self._paths = {"generator": None, "identity": None}
        if isinstance(generator, (str, os.PathLike)):
            from ..models.stylegan2 import load_generator

            self._paths["generator"] = os.fspath(generator)
            generator = load_generator(generator, device=device)
        _check_generator(generator)
        if isinstance(clip_model, (str, os.PathLike)):
            from ..models.clip import load_clip

            clip_model = load_clip(clip_model, device=device)
        self.device = resolve_device(device) if device is not None else _module_device(generator)
        self.generator = generator.to(self.device)
        self.clip_model = clip_model.to(self.device)
        self.id_loss = None
        if id_lambda > 0:
            if isinstance(identity_model, (str, os.PathLike)):
                self._paths["identity"] = os.fspath(identity_model)
                identity_model = IDLoss.from_pretrained(identity_model, device=self.device)
            elif not isinstance(identity_model, IDLoss):
                if not callable(identity_model):
                    raise TypeError(f"identity_model: expected an IDLoss or a callable image -> embedding model, "
                                    f"got {type(identity_model).__name__}")
                identity_model = IDLoss(identity_model)
            self.id_loss = identity_model.to(self.device) if isinstance(identity_model, nn.Module) else identity_model
        self.clip_loss = CLIPLoss(self.clip_model, normalize=clip_normalize)
        self.clip_loss.encode_prompt(self.description)  # tokenizes now: a bad prompt fails here, not at step 1
        from .optimization import _check_number, resolve_clip_loss

        self.clip_loss_kind, self.neutral = resolve_clip_loss(clip_loss, neutral)
        self.anchor_step = _check_number(anchor_step, "anchor_step")
        self._clip_direction = None if neutral is None else self.clip_loss.text_direction(self.description, self.neutral)

        self.num_ws, self.w_dim = generator.num_ws, generator.w_dim
        self.channel_beta, self.channel_sign, self.num_channels = channel_beta, bool(channel_sign), None
        scale = sign = None
        if channel_beta is not None:
            scale, sign = self._channel_mask(channel_beta, work_in_stylespace, fs3, style_std, templates)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if work_in_stylespace:
                mapper = StyleSpaceMapper(generator.style_channels, generator.conv_style_indices, scale, sign)
            else:
                mapper = LevelsMapper(self.w_dim, self.num_ws, no_coarse_mapper, no_medium_mapper, no_fine_mapper)
        params = list(mapper.parameters())
        if not params:
            raise ValueError(f"every mapper group is disabled (the generator has {self.num_ws} W+ rows: "
                             f"{ {g: r for g, r in mapper.rows.items() if r[1] > r[0]} }); nothing to train")
        self.mapper = mapper.to(self.device).train()

        self.lambdas = {"clip": float(clip_lambda), "l2": float(latent_l2_lambda), "id": float(id_lambda),
                        "range": float(range_lambda)}
        self.range_sigma = float(range_sigma)
        self._style_range = self._style_range_stats(style_mean, style_std) if range_lambda > 0 else None
        self.optimizer_name = optimizer
        self.learning_rate = float(learning_rate)
        if optimizer == "ranger":
            from ..optim import Ranger

            self.optimizer = Ranger(self.mapper.parameters(), lr=self.learning_rate)
        else:
            self.optimizer = torch.optim.Adam(self.mapper.parameters(), lr=self.learning_rate)

        # ---- data
        self.seed = int(seed)
        self.truncation = float(truncation)
        self._latent_sources = {"train": None, "val": None}
        self.train_latents, self.val_latents = self._prepare_latents(latents, val_latents, float(val_fraction),
                                                                     num_samples, num_val_samples)
        if self.train_latents.shape[0] < batch_size:
            raise ValueError(f"batch_size={batch_size} but only {self.train_latents.shape[0]} training latents "
                             "(batches are drawn without replacement, incomplete batches dropped)")
        if val_max_samples is not None:
            self.val_latents = self.val_latents[:val_max_samples]
        self._fingerprint = _fingerprint(self.train_latents, self.val_latents)
        self._data_gen = torch.Generator().manual_seed(self.seed + 2)
        self._perm: Optional[torch.Tensor] = None
        self._cursor = 0

        # ---- schedule / outputs
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.max_steps = max_steps
        self.val_interval, self.board_interval = val_interval, board_interval
        self.save_interval = save_interval if save_interval is not None else max(max_steps, 1)
        self.image_interval = image_interval
        self.num_val_images = num_val_images
        self.save_generator = save_generator
        self.clip_normalize = clip_normalize
        self.validate_at_start = validate_at_start
        self.exp_dir = Path(exp_dir) if exp_dir is not None else None
        self.checkpoint_dir = self.exp_dir / "checkpoints" if self.exp_dir is not None else None
        self.log_dir = self.exp_dir / "logs" if self.exp_dir is not None else None

        # ---- state
        self.step = 0
        self.history: dict[str, list] = {k: [] for k in ["step", "loss", *self._loss_keys()]}
        self.val_history: list[dict] = []
        self.best_val_loss: Optional[float] = None
        self.best_step: Optional[int] = None
        self.last_checkpoint: Optional[Path] = None
        self._last_saved_step: Optional[int] = None
        self.resume_from = os.fspath(resume_from) if resume_from is not None else None
        if resume_from is not None:
            self.load_checkpoint(resume_from)

    def _style_range_stats(self, style_mean, style_std) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(mean, std) of every conv StyleSpace layer for the range loss, on the training device."""
        from ..global_directions import style_statistics

        g = self.generator
        mean, std = _resolve(style_mean), _resolve(style_std)
        if mean is None or std is None:
            m, sd = style_statistics(g, n=10_000, progress=False)
            mean, std = (m if mean is None else mean), (sd if std is None else std)
        mean, std = _per_layer(mean, g), _per_layer(std, g)
        # a constant channel has std 0: give it a floor so that moving it at all is off its range
        return [(mean[i].float().to(self.device), std[i].float().clamp_min(1e-6).to(self.device))
                for i in g.conv_style_indices]

    def _range_loss(self, styles_hat: list, source: list) -> torch.Tensor:
        """Squared excess, in style stds, of each edited conv channel beyond ``range_sigma`` of its
        mean (or beyond the source's own distance, for a source already outside), summed over
        channels and averaged over the batch: 0 while the edit stays where the generator's
        samples go, so it bounds an edit without pulling it back as the latent L2 does."""
        total = styles_hat[0].new_zeros(())
        n = len(source[0])
        for (mean, std), i in zip(self._style_range, self.generator.conv_style_indices):
            z_hat = (styles_hat[i].reshape(n, -1) - mean) / std
            bound = ((source[i].reshape(n, -1) - mean) / std).abs().clamp_min(self.range_sigma)
            total = total + torch.relu(z_hat.abs() - bound).pow(2).sum(1).mean()
        return total

    def _channel_mask(self, channel_beta, work_in_stylespace: bool, fs3, style_std, templates):
        from ..global_directions import as_fs3, relevant_channels, style_statistics

        if not work_in_stylespace:
            raise ValueError("channel_beta: selects StyleSpace channels; use work_in_stylespace=True")
        if self.neutral is None:
            raise ValueError("channel_beta: needs neutral= (the text pair whose direction selects the channels)")
        if fs3 is None:
            raise ValueError("channel_beta: needs fs3= (the channel relevance: array, path to fs3.npy or a callable)")
        g = self.generator
        fs3 = as_fs3(fs3() if callable(fs3) else fs3, g)
        ds, num = relevant_channels(self.clip_model, g, fs3, self.description, self.neutral, channel_beta, templates)
        if num == 0:
            raise ValueError(f"channel_beta={channel_beta}: no StyleSpace channel passes it for "
                             f"({self.description!r}, {self.neutral!r}); lower channel_beta")
        self.num_channels = int(num)
        std = _resolve(style_std)
        if std is None:
            std = style_statistics(g, n=10_000, progress=False)[1]
        std = _per_layer(std, g)
        scale = [d.abs().cpu() * sd.reshape(-1).float().cpu() / MAPPER_STRENGTH for d, sd in zip(ds, std)]
        sign = [torch.sign(d).cpu() for d in ds] if self.channel_sign else None
        return scale, sign

    # ------------------------------------------------------------------ data
    def _load_latent_arg(self, obj: Any, name: str) -> torch.Tensor:
        if isinstance(obj, (str, os.PathLike)):
            from ..pretrained import resolve

            self._latent_sources[name] = os.fspath(obj)
            w = load_latents(resolve(obj, kind="latents"), self.num_ws, self.w_dim)
        else:
            w = as_w_plus(obj, self.num_ws, self.w_dim, name="latents" if name == "train" else "val_latents")
        return w.detach().float().cpu().contiguous()

    @torch.no_grad()
    def _sample_latents(self, n: int) -> torch.Tensor:
        z = torch.randn(n, self.w_dim, generator=torch.Generator().manual_seed(self.seed))
        out = []
        for i in range(0, n, 512):
            w = self.generator.mapping(z[i:i + 512].to(self.device))
            if self.truncation != 1.0:
                w = self.generator.truncate(w, self.truncation)
            out.append(self.generator.to_w_plus(w).float().cpu())
        return torch.cat(out).contiguous()

    def _prepare_latents(self, latents, val_latents, val_fraction, num_samples, num_val_samples):
        val = self._load_latent_arg(val_latents, "val") if val_latents is not None else None
        if latents is None:
            for name, v in (("num_samples", num_samples), ("num_val_samples", num_val_samples)):
                if not (isinstance(v, int) and v >= 0):
                    raise ValueError(f"{name}: expected an int >= 0, got {v!r}")
            n_val = 0 if val is not None else num_val_samples
            w = self._sample_latents(num_samples + n_val)
            train, sampled_val = w[:num_samples], w[num_samples:]
            return train, (val if val is not None else sampled_val)
        train = self._load_latent_arg(latents, "train")
        if val is not None:
            return train, val
        n_val = int(round(val_fraction * train.shape[0]))
        if val_fraction > 0:
            n_val = max(1, n_val)
        if n_val >= train.shape[0]:
            raise ValueError(f"latents: {train.shape[0]} latents cannot be split into training and validation "
                             f"(val_fraction={val_fraction}); pass more latents, val_latents=..., or val_fraction=0")
        perm = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(self.seed + 1))
        return train[perm[n_val:]].contiguous(), train[perm[:n_val]].contiguous()

    def _next_batch(self) -> torch.Tensor:
        n = self.train_latents.shape[0]
        if self._perm is None or self._cursor + self.batch_size > n:
            self._perm = torch.randperm(n, generator=self._data_gen)
            self._cursor = 0
        idx = self._perm[self._cursor:self._cursor + self.batch_size]
        self._cursor += self.batch_size
        return self.train_latents[idx].to(self.device)

    # ------------------------------------------------------------------ losses
    def _loss_keys(self) -> list[str]:
        keys = []
        if self.lambdas["id"] > 0:
            keys.append("loss_id")
        if self.lambdas["clip"] > 0:
            keys.append("loss_clip")
        if self.lambdas["l2"] > 0:
            keys.append("loss_l2_latent")
        if self.lambdas["range"] > 0:
            keys.append("loss_range")
        return keys

    def _forward(self, w: torch.Tensor, need_source: bool):
        x = None
        if need_source or self.id_loss is not None or self.neutral is not None:
            with torch.no_grad():
                x = self.generator.synthesis(w, noise_mode="const")
        if isinstance(self.mapper, StyleSpaceMapper):
            w_hat = self.mapper.edit(self.generator.styles(w), MAPPER_STRENGTH)
            x_hat = self.generator.synthesis_from_styles(w_hat, noise_mode="const")
        else:
            w_hat = w + MAPPER_STRENGTH * self.mapper(w)
            x_hat = self.generator.synthesis(w_hat, noise_mode="const")
        return x, w_hat, x_hat

    def calc_loss(self, w: torch.Tensor, x: Optional[torch.Tensor], w_hat: torch.Tensor, x_hat: torch.Tensor):
        """``(total loss tensor, {name: float})`` with the reference's names and weights.  ``w``: the
        W+ batch; ``w_hat``: its edit, W+ or (StyleSpace mapper) one style tensor per layer."""
        loss = x_hat.new_zeros(())
        logs: dict[str, float] = {}
        cache: list = []

        def source_styles():  # the StyleSpace L2 and the range loss share one styles(w) per step
            if not cache:
                with torch.no_grad():
                    cache.append(self.generator.styles(w))
            return cache[0]

        if self.lambdas["id"] > 0:
            loss_id = self.id_loss(x_hat, x)
            logs["loss_id"] = float(loss_id.detach())
            loss = loss + self.lambdas["id"] * loss_id
        if self.lambdas["clip"] > 0:
            if self.clip_loss_kind == "directional":
                with torch.no_grad():
                    source = self.clip_loss.image_features(x)
                loss_clip = self.clip_loss.directional(x_hat, source, self._clip_direction).mean()
            elif self.clip_loss_kind == "anchored":
                with torch.no_grad():
                    target = self.clip_loss.anchored_target(self.clip_loss.image_features(x), self._clip_direction,
                                                            self.anchor_step)
                loss_clip = self.clip_loss(x_hat, target).mean()
            else:
                loss_clip = self.clip_loss(x_hat, self.description).mean()
            logs["loss_clip"] = float(loss_clip.detach())
            loss = loss + self.lambdas["clip"] * loss_clip
        if self.lambdas["l2"] > 0:
            if isinstance(w_hat, (list, tuple)):
                # the reference's StyleSpace L2: one MSE per style layer, summed
                source = source_styles()
                loss_l2 = sum(torch.nn.functional.mse_loss(c_hat, c) for c_hat, c in zip(w_hat, source))
            else:
                loss_l2 = torch.nn.functional.mse_loss(w_hat, w)
            logs["loss_l2_latent"] = float(loss_l2.detach())
            loss = loss + self.lambdas["l2"] * loss_l2
        if self.lambdas["range"] > 0:
            loss_range = self._range_loss(w_hat, source_styles())
            logs["loss_range"] = float(loss_range.detach())
            loss = loss + self.lambdas["range"] * loss_range
        logs["loss"] = float(loss.detach())
        return loss, logs

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, save_images: bool = True) -> Optional[dict]:
        """Mean losses over the validation latents (None when there are none); saves the
        grid ``logs/images_val/{step:05d}.png`` when ``exp_dir`` is set."""
        n = self.val_latents.shape[0]
        if n == 0:
            return None
        want = min(self.num_val_images, n) if (save_images and self.log_dir is not None) else 0
        sums: dict[str, float] = {}
        src, edit = [], []
        for i in range(0, n, self.val_batch_size):
            w = self.val_latents[i:i + self.val_batch_size].to(self.device)
            need = sum(t.shape[0] for t in src) < want
            x, w_hat, x_hat = self._forward(w, need_source=need)
            _, logs = self.calc_loss(w, x, w_hat, x_hat)
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v * w.shape[0]
            if need:
                src.append(x.cpu())
                edit.append(x_hat.cpu())
        result = {"step": self.step, **{k: v / n for k, v in sums.items()}}
        if want:
            from ..imageio import save_image

            s, e = torch.cat(src)[:want], torch.cat(edit)[:want]
            save_image(torch.cat([s, e]), self.log_dir / "images_val" / f"{self.step:05d}.png", nrow=want)
        return result

    # ------------------------------------------------------------------ checkpoints
    def _opts(self) -> dict:
        return {
            "exp_dir": str(self.exp_dir) if self.exp_dir is not None else None,
            "mapper_type": "LevelsMapper", **self.mapper.options,
            "latents_train_path": self._latent_sources["train"], "latents_test_path": self._latent_sources["val"],
            "train_dataset_size": int(self.train_latents.shape[0]), "test_dataset_size": int(self.val_latents.shape[0]),
            "work_in_stylespace": isinstance(self.mapper, StyleSpaceMapper), "batch_size": self.batch_size, "test_batch_size": self.val_batch_size,
            "workers": 0, "test_workers": 0, "learning_rate": self.learning_rate, "optim_name": self.optimizer_name,
            "id_lambda": self.lambdas["id"], "clip_lambda": self.lambdas["clip"], "latent_l2_lambda": self.lambdas["l2"],
            "stylegan_weights": self._paths["generator"], "stylegan_size": int(self.generator.resolution),
            "ir_se50_weights": self._paths["identity"], "checkpoint_path": self.resume_from,
            "max_steps": self.max_steps, "image_interval": self.image_interval, "board_interval": self.board_interval,
            "val_interval": self.val_interval, "save_interval": self.save_interval, "description": self.description,
            "device": str(self.device),
            # kit additions
            "clip_normalize": bool(self.clip_normalize), "seed": self.seed, "truncation": self.truncation,
            "neutral": self.neutral, "clip_loss": self.clip_loss_kind, "anchor_step": self.anchor_step,
            "channel_beta": self.channel_beta, "channel_sign": self.channel_sign, "num_channels": self.num_channels,
            "range_lambda": self.lambdas["range"], "range_sigma": self.range_sigma,
            "trainer": "styleclip_lib.methods.mapper.MapperTrainer",
        }

    def checkpoint_dict(self) -> dict:
        """The checkpoint of the current state (official format + resume keys)."""
        gen_state = None
        if self.save_generator:
            gen_state = self.generator.state_dict()
        ckpt = mapper_checkpoint(self.mapper, self._opts(), generator_state=gen_state)
        if self.save_generator:
            ckpt["latent_avg"] = self.generator.latent_avg.detach().cpu().clone()
        ckpt["optimizer"] = self.optimizer.state_dict()
        ckpt["step"] = int(self.step)
        ckpt["rng"] = {"data_generator": self._data_gen.get_state(),
                       "epoch_order": self._perm.clone() if self._perm is not None else None,
                       "cursor": int(self._cursor), "seed": self.seed}
        ckpt["trainer"] = {
            "history": {k: torch.tensor(v, dtype=torch.float64) for k, v in self.history.items()},
            "val_history": [dict(r) for r in self.val_history],
            "best_val_loss": self.best_val_loss, "best_step": self.best_step,
            "latents_fingerprint": self._fingerprint, "format": 1,
        }
        return ckpt

    def save_checkpoint(self, path: PathLike) -> Path:
        """Write :meth:`checkpoint_dict` to ``path`` (atomically)."""
        return _atomic_save(self.checkpoint_dict(), Path(path))

    def _checkpoint_me(self, logs: Optional[dict], is_best: bool) -> Optional[Path]:
        if self.checkpoint_dir is None:
            return None
        name = "best_model.pt" if is_best else f"iteration_{self.step}.pt"
        path = self.save_checkpoint(self.checkpoint_dir / name)
        with open(self.checkpoint_dir / "timestamp.txt", "a") as fh:
            if is_best:
                fh.write(f"**Best**: Step - {self.step}, Loss - {self.best_val_loss:.3f} \n{logs}\n")
            else:
                fh.write(f"Step - {self.step}, \n{logs}\n")
        if not is_best:
            self.last_checkpoint, self._last_saved_step = path, self.step
        return path

    def load_checkpoint(self, path: PathLike) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint` / :meth:`train`."""
        obj = load_state(path, expected=_RESUME_EXPECTED)
        if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
            raise CheckpointError(path, describe(obj), _RESUME_EXPECTED)
        missing = [k for k in ("optimizer", "step", "rng") if k not in obj]
        if missing:
            raise CheckpointError(path, f"a mapper checkpoint without the resume keys {missing} (an official mapper?)",
                                  _RESUME_EXPECTED)
        opts = obj.get("opts") or {}
        if opts.get("optim_name", self.optimizer_name) != self.optimizer_name:
            raise ValueError(f"resume_from: the checkpoint was trained with optimizer={opts.get('optim_name')!r}, "
                             f"this trainer uses {self.optimizer_name!r}")
        state = strip_prefix(obj["state_dict"], "mapper.")
        try:
            self.mapper.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        except RuntimeError as e:
            raise ValueError(f"resume_from {os.fspath(path)!r}: its mapper does not fit this trainer's "
                             f"{self.mapper.options} / latent_dim {self.w_dim} / {self.num_ws} rows "
                             f"({str(e).splitlines()[0]})") from None
        self.optimizer.load_state_dict(obj["optimizer"])
        self.step = int(obj["step"])
        rng = obj["rng"]
        self._data_gen.set_state(rng["data_generator"])
        perm = rng.get("epoch_order")
        if perm is not None and perm.numel() != self.train_latents.shape[0]:
            warnings.warn(f"resume_from: the checkpoint's data order is over {perm.numel()} latents, this trainer has "
                          f"{self.train_latents.shape[0]}; starting a new epoch", stacklevel=2)
            perm = None
        self._perm, self._cursor = perm, int(rng.get("cursor", 0)) if perm is not None else 0
        tr = obj.get("trainer") or {}
        if tr.get("latents_fingerprint") not in (None, self._fingerprint):
            warnings.warn("resume_from: the training/validation latents differ from the checkpoint's run; "
                          "training continues on the new latents", stacklevel=2)
        hist = tr.get("history") or {}
        keys = list(self.history)
        steps = [int(s) for s in hist["step"].tolist()] if "step" in hist else []
        self.history = {k: [float(x) for x in hist[k].tolist()] if k in hist else [math.nan] * len(steps) for k in keys}
        self.history["step"] = steps
        self.val_history = [dict(r) for r in tr.get("val_history", [])]
        self.best_val_loss, self.best_step = tr.get("best_val_loss"), tr.get("best_step")
        self._last_saved_step = self.step

    # ------------------------------------------------------------------ training
    @contextlib.contextmanager
    def _frozen(self):
        modules = [m for m in (self.generator, self.clip_model, self.id_loss) if isinstance(m, nn.Module)]
        flags = [[(p, p.requires_grad) for p in m.parameters()] for m in modules]
        modes = [[(sub, sub.training) for sub in m.modules()] for m in modules]
        try:
            for m in modules:
                m.requires_grad_(False)
                m.eval()
            self.mapper.train()
            yield
        finally:
            for fl in flags:
                for p, rg in fl:
                    p.requires_grad_(rg)
            for md in modes:
                for sub, tr in md:
                    sub.training = tr

    def _log_metrics(self, record: dict, prefix: str) -> None:
        if self.log_dir is None:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"split": prefix, **record}) + "\n")

    def _train_step(self) -> dict:
        w = self._next_batch()
        want_images = (self.log_dir is not None and self.image_interval is not None
                       and (self.step + 1) % self.image_interval == 0)
        self.optimizer.zero_grad(set_to_none=True)
        x, w_hat, x_hat = self._forward(w, need_source=want_images)
        loss, logs = self.calc_loss(w, x, w_hat, x_hat)
        if not math.isfinite(logs["loss"]):
            raise FloatingPointError(f"step {self.step + 1}: the loss is {logs['loss']} ({logs}); lower learning_rate?")
        loss.backward()
        with _defer_sigint():
            self.optimizer.step()
            self.step += 1
            self.history["step"].append(self.step)
            for k in self.history:
                if k != "step":
                    self.history[k].append(logs[k])
        if want_images:
            from ..imageio import save_image

            save_image(torch.cat([x.detach().cpu(), x_hat.detach().cpu()]),
                       self.log_dir / "images_train" / f"{self.step:05d}.png", nrow=w.shape[0])
        return logs

    def _run_validation(self, bar, baseline: bool = False) -> Optional[dict]:
        rec = self.validate()
        if rec is None:
            return None
        self.val_history.append(rec)
        self._log_metrics(rec, "test")
        bar.write(f"[mapper] step {self.step} validation: " + ", ".join(f"{k}={v:.4f}" for k, v in rec.items() if k != "step"))
        if not baseline and (self.best_val_loss is None or rec["loss"] < self.best_val_loss):
            self.best_val_loss, self.best_step = rec["loss"], self.step
            self._checkpoint_me(rec, is_best=True)
        return rec

    def train(self, progress: bool = True, callback: Optional[Callable[[int, dict], Any]] = None) -> TrainResult:
        """Train until ``max_steps`` updates (from the resumed step, if any).

        ``callback(step, logs)`` runs after every step (``logs``: that step's losses, plus
        ``'val'`` when it validated); a truthy return value stops training after saving a
        checkpoint.  Ctrl-C (``KeyboardInterrupt``) saves ``iteration_{step}.pt`` (when
        ``exp_dir`` is set) and re-raises.
        """
        start = time.time()
        stopped = False
        bar = _progress_bar(progress, self.max_steps, self.step, f"mapper '{self.description}'")
        try:
            with self._frozen():
                if self.step == 0 and self.validate_at_start and not self.val_history and self.max_steps > 0:
                    self._run_validation(bar, baseline=True)
                while self.step < self.max_steps:
                    logs = self._train_step()
                    bar.update(1)
                    bar.set_postfix({k.replace("loss_", ""): f"{v:.4f}" for k, v in logs.items()}, refresh=False)
                    if self.step % self.board_interval == 0:
                        self._log_metrics({"step": self.step, **logs}, "train")
                    val = None
                    if self.step % self.val_interval == 0 or self.step == self.max_steps:
                        val = self._run_validation(bar)
                        if val is not None:
                            logs = {**logs, "val": val}
                    if self.step % self.save_interval == 0 or self.step == self.max_steps:
                        self._checkpoint_me(val if val is not None else logs, is_best=False)
                    if callback is not None and callback(self.step, logs):
                        stopped = True
                        if self._last_saved_step != self.step:
                            self._checkpoint_me(logs, is_best=False)
                        break
        except KeyboardInterrupt:
            if self.checkpoint_dir is not None and self._last_saved_step != self.step:
                path = self._checkpoint_me({"interrupted": True, "step": self.step}, is_best=False)
                print(f"[mapper] interrupted at step {self.step}; saved {path} (resume_from=... to continue)", file=sys.stderr)
            raise
        finally:
            bar.close()
        best = self.checkpoint_dir / "best_model.pt" if (self.checkpoint_dir is not None and self.best_step is not None) else None
        return TrainResult(mapper=self.mapper, step=self.step, history={k: list(v) for k, v in self.history.items()},
                           val_history=[dict(r) for r in self.val_history], best_val_loss=self.best_val_loss,
                           best_step=self.best_step, exp_dir=self.exp_dir, last_checkpoint=self.last_checkpoint,
                           best_checkpoint=best, stopped_early=stopped, elapsed=time.time() - start)

    def pipeline(self, **kwargs) -> LatentMapperEdit:
        """A :class:`LatentMapperEdit` around the generator and the mapper being trained."""
        return LatentMapperEdit(self.generator, self.mapper, **kwargs)
