"""StyleCLIP *global directions*: text-driven edits in StyleSpace without per-prompt training.

Method (Patashnik et al., 2021, sec. 6; reference code ``global_torch/`` and
``global_directions/`` of orpatashnik/StyleCLIP)::

    dt  = normalise(f(target) - f(neutral))           # CLIP text direction, 79 prompt templates
    r   = fs3 · dt                                    # relevance of every conv StyleSpace channel
    ds  = r ⊙ 1[|r| ≥ β] / max|r ⊙ 1[|r| ≥ β]|         # channel direction, largest kept |r| -> ±1
    s'_l = s_l + α · σ_l ⊙ ds_l                        # per S layer; ToRGB layers are never edited

``fs3`` (one unit CLIP-image-space row per conv channel) is a one-off preprocessing
of the generator (:func:`compute_fs3`, the reference ``SingleChannel.py``).

Everything here works on plain tensors:

* text side: :func:`text_direction_from_embeddings` takes the template embeddings;
  :func:`text_direction` is the thin glue that tokenizes and calls
  ``clip_model.encode_text`` (with a small LRU cache);
* relevance/boundary: :func:`relevance`, :func:`channel_direction`, :func:`auto_beta`,
  :func:`split_to_layers`, :func:`apply_direction`;
* fs3: :func:`fs3_from_features` (``GetFs``), :func:`compute_fs3` (batched, resumable),
  :func:`compute_fs3_correlation` / :func:`fs3_from_samples` (an addition: rows from the
  covariance of each channel with the CLIP features over samples), :func:`load_fs3` /
  :func:`save_fs3`;
* StyleSpace statistics: :func:`style_statistics`, :func:`sample_styles`;
* :class:`GlobalDirections`: the whole pipeline (generator + CLIP + fs3 + statistics).

Deliberate differences from the reference (everything else reproduces the
conformance goldens of ``shared/conformance/global_directions``):

* **No channel passes β** (``max|r| < β``): the reference divides 0 by 0 and every
  conv code becomes NaN.  :func:`channel_direction` returns a zero direction and
  ``num_channels == 0`` with a :class:`UserWarning`, so the edit is the identity.
* **A constant channel** (σ = 0, so ±ασ changes nothing) gets a zero fs3 row instead
  of the reference's 0/0 = NaN (:func:`fs3_from_features`).
* **target == neutral / empty prompt**: the reference returns a NaN ``dt``; here
  :class:`ValueError`.
* **fs3 preprocessing** defaults to ``variant='corrected'`` (see :func:`compute_fs3`);
  ``variant='reference'`` reproduces the original loop bit for bit in its
  StyleSpace codes.  Rows are unit vectors as the reference by default;
  ``normalize='magnitude'`` keeps each channel's mean effect (the paper's
  E[ΔI_c · Δi]), which the toy world ships (see :func:`fs3_from_features`).
* **Correlational fs3** (:func:`compute_fs3_correlation`, not in the reference): one render
  per sample instead of two per channel and sample; the toy world's fs3 is made so, because
  its attribute values are patterns over many channels (measured there: see that function).
* Arithmetic is float64 (the reference mixes float32 and, on GPU, float16 CLIP
  features); results agree with the float32 goldens to ~1e-6.
* CLIP image preprocessing in :func:`clip_image_features` resizes with
  ``F.interpolate(mode='bicubic', antialias=True)`` instead of PIL (see there).
"""
from __future__ import annotations

import math
import os
import warnings
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "IMAGENET_TEMPLATES",
    "class_embedding",
    "text_direction_from_embeddings",
    "encode_prompt",
    "text_direction",
    "clear_text_cache",
    "relevance",
    "channel_direction",
    "auto_beta",
    "split_to_layers",
    "apply_direction",
    "flatten_styles",
    "split_flat",
    "fs3_from_features",
    "scale_fs3",
    "FS3_NORMALIZATIONS",
    "style_statistics",
    "sample_styles",
    "to_uint8",
    "clip_image_features",
    "reference_fs3_layers",
    "reference_loop_state",
    "fs3_step_codes",
    "compute_fs3",
    "compute_fs3_correlation",
    "fs3_from_samples",
    "load_fs3",
    "save_fs3",
    "as_fs3",
    "relevant_channels",
    "GlobalDirections",
    "GlobalDirectionsOutput",
    "AUTO_BETAS",
]

# ----------------------------------------------------------------------------- text

#: The 79 ImageNet prompt templates of ``global_torch/StyleCLIP.py`` (= ``MapTS.py``), in order
#: (the reference list has 80 lines; ``'a photo of many {}.'`` is commented out there).
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

#: The automatic-β grid of the reference GUI (``Inference.py::StyleCLIP.GetDt2``): 0.10, 0.11, …, 0.29
#: (exact ``np.arange`` float64 values, e.g. 0.2899999999999999).
AUTO_BETAS: np.ndarray = np.arange(0.1, 0.3, 0.01)


def _hi_dtype(device: torch.device | str | None) -> torch.dtype:
    """float64 everywhere except on MPS (no float64 support there)."""
    return torch.float32 if torch.device(device or "cpu").type == "mps" else torch.float64


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    try:
        return torch.as_tensor(x)
    except Exception as e:  # pragma: no cover - message only
        raise TypeError(f"{name}: expected a tensor or array, got {type(x).__name__}") from e


def _check_finite(t: torch.Tensor, name: str) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def class_embedding(template_embeddings: torch.Tensor) -> torch.Tensor:
    """``zeroshot_classifier`` for one prompt: rows (T, D) = ``encode_text`` of every template.

    Each row is L2-normalised, the rows are averaged, the mean is normalised again.
    Returns a float64 (D,) unit vector.
    """
    e = _as_tensor(template_embeddings, "template_embeddings")
    if e.ndim != 2 or e.shape[0] == 0:
        raise ValueError(f"template_embeddings: expected shape (T, D) with T >= 1, got {tuple(e.shape)}")
    e = e.to(_hi_dtype(e.device))
    _check_finite(e, "template_embeddings")
    norms = e.norm(dim=-1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError("template_embeddings: a text embedding has zero norm")
    m = (e / norms).mean(dim=0)
    n = m.norm()
    if n == 0:
        raise ValueError("template_embeddings: the normalised embeddings average to zero")
    return m / n


def _direction_from_class_embeddings(f_target: torch.Tensor, f_neutral: torch.Tensor) -> torch.Tensor:
    d = f_target - f_neutral
    n = d.norm()
    if not bool(torch.isfinite(n)) or n == 0:
        raise ValueError(
            "text direction is undefined: the target and neutral prompts have identical CLIP text features "
            "(target == neutral?); the reference would return NaN here"
        )
    return (d / n).to(torch.float32)


def text_direction_from_embeddings(target_emb: torch.Tensor, neutral_emb: torch.Tensor) -> torch.Tensor:
    """``GetDt`` from template embeddings: ``dt = normalise(f_target − f_neutral)``.

    ``target_emb``/``neutral_emb``: (T, D) ``encode_text`` outputs, one row per
    template (see :func:`class_embedding`).  Returns a float32 (D,) unit vector
    (math in float64).  Raises :class:`ValueError` when the two class embeddings
    coincide (the reference returns NaN).
    """
    ft, fn = class_embedding(target_emb), class_embedding(neutral_emb)
    if ft.shape != fn.shape:
        raise ValueError(f"target/neutral embeddings have different dimensions: {tuple(ft.shape)} vs {tuple(fn.shape)}")
    return _direction_from_class_embeddings(ft, fn.to(ft.device))


_TEXT_CACHE: "OrderedDict[tuple, tuple[Any, torch.Tensor]]" = OrderedDict()
_TEXT_CACHE_SIZE = 128
_TEXT_CACHE_LOCK = threading.Lock()  # the service edits from several threads


def clear_text_cache() -> None:
    """Empty the per-(CLIP model, prompt) text-embedding cache used by :func:`text_direction`."""
    with _TEXT_CACHE_LOCK:
        _TEXT_CACHE.clear()


def _model_device_dtype(model: Any) -> tuple[torch.device, Optional[torch.dtype]]:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device, p.dtype
    return torch.device("cpu"), None


def _check_prompt(prompt: Any, name: str) -> str:
    if not isinstance(prompt, str):
        raise TypeError(f"{name}: expected a string prompt, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError(f"{name}: empty prompt; global directions need a non-empty target and neutral text")
    return prompt


def encode_prompt(clip_model: Any, prompt: str, templates: Sequence[str] = IMAGENET_TEMPLATES, cache: bool = True,
                  tokenizer: Optional[Callable] = None) -> torch.Tensor:
    """CLIP class embedding of ``prompt`` averaged over ``templates`` (float64 (D,) unit vector).

    Calls ``clip_model.encode_text(tokenizer([t.format(prompt) for t in templates]))``
    (``tokenizer`` defaults to :func:`styleclip_lib.tokenizer.tokenize`).  With
    ``cache=True`` the result is kept in a small LRU keyed by the model object (by
    identity, checked through a weak reference, plus its device/dtype), the prompt
    and the templates.
    """
    _check_prompt(prompt, "prompt")
    templates = tuple(templates)
    if not templates:
        raise ValueError("templates: expected at least one template")
    device, dtype = _model_device_dtype(clip_model)
    key = (id(clip_model), str(device), str(dtype), prompt, templates, id(tokenizer) if tokenizer is not None else None)
    if cache:
        with _TEXT_CACHE_LOCK:
            hit = _TEXT_CACHE.get(key)
            if hit is not None:
                ref, value = hit
                if ref is None or ref() is clip_model:
                    _TEXT_CACHE.move_to_end(key)
                    return value.clone()
                del _TEXT_CACHE[key]
    if tokenizer is None:
        from .tokenizer import tokenize as tokenizer  # lazy: written separately
    tokens = tokenizer([t.format(prompt) for t in templates])
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.to(device)
    with torch.no_grad():
        emb = clip_model.encode_text(tokens)
    value = class_embedding(emb.detach().float() if emb.dtype == torch.float16 else emb.detach()).cpu()
    if cache:
        try:
            ref = weakref.ref(clip_model)
        except TypeError:
            ref = None
        with _TEXT_CACHE_LOCK:
            _TEXT_CACHE[key] = (ref, value)
            while len(_TEXT_CACHE) > _TEXT_CACHE_SIZE:
                _TEXT_CACHE.popitem(last=False)
    return value.clone()


def text_direction(clip_model: Any, target: str, neutral: str, templates: Sequence[str] = IMAGENET_TEMPLATES,
                   cache: bool = True, tokenizer: Optional[Callable] = None) -> torch.Tensor:
    """``GetDt([target, neutral], model)``: unit CLIP text direction (float32, (D,), on CPU).

    ``target == neutral`` or an empty prompt raise :class:`ValueError` (the
    reference returns NaN).  Embeddings are cached per (model, prompt), see
    :func:`encode_prompt`.
    """
    _check_prompt(target, "target")
    _check_prompt(neutral, "neutral")
    if target.strip() == neutral.strip():
        raise ValueError(f"target and neutral prompts are identical ({target!r}): the text direction would be 0/0")
    ft = encode_prompt(clip_model, target, templates, cache=cache, tokenizer=tokenizer)
    fn = encode_prompt(clip_model, neutral, templates, cache=cache, tokenizer=tokenizer)
    return _direction_from_class_embeddings(ft, fn)


# ----------------------------------------------------------------------------- relevance and boundary

def _check_fs3_dt(fs3: Any, dt: Any) -> tuple[torch.Tensor, torch.Tensor]:
    fs3 = _as_tensor(fs3, "fs3")
    dt = _as_tensor(dt, "dt")
    if fs3.ndim != 2:
        raise ValueError(f"fs3: expected a 2-D (channels, clip_dim) array, got shape {tuple(fs3.shape)}")
    dt = dt.reshape(-1) if dt.ndim == 2 and 1 in dt.shape else dt
    if dt.ndim != 1 or dt.shape[0] != fs3.shape[1]:
        raise ValueError(f"dt: expected shape ({fs3.shape[1]},) to match fs3 {tuple(fs3.shape)}, got {tuple(dt.shape)}")
    _check_finite(fs3, "fs3")
    _check_finite(dt, "dt")
    return fs3, dt


def relevance(fs3: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """r = fs3 · dt: relevance of every conv channel to the text direction (float64 (C,))."""
    fs3, dt = _check_fs3_dt(fs3, dt)
    hi = _hi_dtype(fs3.device)
    return fs3.to(hi) @ dt.to(device=fs3.device, dtype=hi)


def _check_beta(beta: Any) -> float:
    try:
        b = float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"beta: expected a number in [0, 1], got {beta!r}") from None
    if not (0.0 <= b <= 1.0):  # also rejects NaN
        raise ValueError(f"beta: expected a threshold in [0, 1] (|fs3·dt| <= 1 for unit rows), got {beta!r}")
    return b


def channel_direction(fs3: torch.Tensor, dt: torch.Tensor, beta: float) -> tuple[torch.Tensor, int]:
    """``GetBoundary`` without the layer split: ``(ds, num_channels)``.

    r = fs3·dt; channels with ``|r| < beta`` are zeroed; ``ds = r_kept / max|r_kept|``
    (sign kept, the largest kept |r| becomes ±1).  ``num_channels`` = number of
    channels with ``|r| >= beta`` (the reference's ``num_c``).  ``ds`` is float64 (C,).

    **Deliberate deviation:** when no channel passes ``beta`` the reference computes
    0/0 and the edit turns every conv code into NaN.  Here the direction is all
    zeros, ``num_channels`` is 0 and a :class:`UserWarning` is emitted, so applying
    it leaves the codes unchanged.  ``beta`` outside [0, 1] raises ValueError.
    """
    b = _check_beta(beta)
    r = relevance(fs3, dt)
    keep = r.abs() >= b
    num = int(keep.sum())
    ds = torch.where(keep, r, torch.zeros_like(r))
    m = ds.abs().max() if ds.numel() else torch.zeros((), dtype=r.dtype)
    if num == 0 or m == 0:
        warnings.warn(
            f"global directions: no channel has |relevance| >= beta={b} (max |fs3·dt| = "
            f"{float(r.abs().max()) if r.numel() else 0.0:.4f}); returning a zero direction (the edit is a no-op). "
            "Lower beta.",
            UserWarning,
            stacklevel=2,
        )
        return torch.zeros_like(r), num
    return ds / m, num


def auto_beta(fs3: torch.Tensor, dt: torch.Tensor, c_threshold: int = 20, betas: Any = AUTO_BETAS,
              return_counts: bool = False):
    """The GUI's automatic β (``Inference.py::StyleCLIP.GetDt2``).

    For every β of ``betas`` (default ``np.arange(0.1, 0.3, 0.01)``) count the
    channels with ``|fs3·dt| >= β``; return the **last** β whose count is
    ``> c_threshold`` (20 for FFHQ, 100 for the other datasets in the reference), or
    0.1 when none is.  With ``return_counts=True`` returns ``(beta, counts)``
    (counts: int64 tensor, one per β).  Betas are returned as the exact float64
    grid values (e.g. 0.2899999999999999).
    """
    betas = np.asarray(AUTO_BETAS if betas is None else betas, dtype=np.float64).reshape(-1)
    for b in betas:
        _check_beta(b)
    r = relevance(fs3, dt).abs()
    counts = torch.tensor([int((r >= float(b)).sum()) for b in betas], dtype=torch.int64)
    select = np.flatnonzero(counts.numpy() > c_threshold)
    beta = float(betas[select[-1]]) if len(select) else 0.1
    return (beta, counts) if return_counts else beta


_auto_beta = auto_beta  # the pipeline's keyword argument shadows the name


def _layer_std_list(style_std: Any, style_channels: Sequence[int]) -> list[torch.Tensor]:
    if isinstance(style_std, (list, tuple)):
        if len(style_std) != len(style_channels):
            raise ValueError(f"style_std: expected {len(style_channels)} per-layer tensors, got {len(style_std)}")
        out = [_as_tensor(s, f"style_std[{i}]").reshape(-1) for i, s in enumerate(style_std)]
        for i, (s, c) in enumerate(zip(out, style_channels)):
            if s.numel() != c:
                raise ValueError(f"style_std[{i}]: expected {c} channels, got {s.numel()}")
        return out
    flat = _as_tensor(style_std, "style_std").reshape(-1)
    return split_flat(flat, style_channels)


def split_to_layers(direction: torch.Tensor, style_channels: Sequence[int], conv_indices: Sequence[int],
                    style_std: Any = None) -> list[torch.Tensor]:
    """``SplitS``: conv-channel direction (R,) → one tensor per StyleSpace layer.

    ``style_channels``: channels of every S layer (ToRGB included, reference order);
    ``conv_indices``: S indices of the conv layers in fs3 row order (``mindexs``).
    The conv layers take consecutive slices of ``direction``; ToRGB layers, and conv
    layers past the end of a truncated fs3 (e.g. the 5376-row fs3 of the 1024
    model), get zeros.  ``R`` must end on a conv-layer boundary.  With
    ``style_std`` (per-layer list or flat (sum C,) vector) every slice is multiplied
    by the per-channel std (the reference's ``if_std=True``).  Float64 tensors.
    """
    d = _as_tensor(direction, "direction").reshape(-1)
    channels = [int(c) for c in style_channels]
    conv = [int(i) for i in conv_indices]
    if len(set(conv)) != len(conv) or any(not 0 <= i < len(channels) for i in conv):
        raise ValueError(f"conv_indices: expected distinct S-layer indices in [0, {len(channels)}), got {conv}")
    total = sum(channels[i] for i in conv)
    if d.numel() > total:
        raise ValueError(f"direction has {d.numel()} rows but the generator has only {total} conv channels")
    bounds = np.cumsum([0] + [channels[i] for i in conv])
    if d.numel() not in set(bounds.tolist()):
        k = int(np.searchsorted(bounds, d.numel(), side="right")) - 1
        raise ValueError(
            f"direction/fs3 has {d.numel()} rows, which ends in the middle of conv layer {conv[k]} "
            f"(rows {bounds[k]}–{bounds[k + 1] - 1}); fs3 rows must end on a layer boundary "
            f"(valid counts: {bounds.tolist()[1:]})"
        )
    hi = _hi_dtype(d.device)
    d = d.to(hi)
    stds = _layer_std_list(style_std, channels) if style_std is not None else None
    out = [torch.zeros(c, dtype=hi, device=d.device) for c in channels]
    for j, li in enumerate(conv):
        a, b = int(bounds[j]), int(bounds[j + 1])
        if b > d.numel():
            break
        piece = d[a:b]
        if stds is not None:
            piece = piece * stds[li].to(device=d.device, dtype=hi)
        out[li] = piece.clone()
    return out


def flatten_styles(styles: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-layer tensors along the last axis (the reference's flat S vectors)."""
    return torch.cat([s for s in styles], dim=-1)


def split_flat(flat: torch.Tensor, style_channels: Sequence[int]) -> list[torch.Tensor]:
    """Inverse of :func:`flatten_styles`: split the last axis into per-layer chunks."""
    flat = _as_tensor(flat, "flat")
    total = sum(int(c) for c in style_channels)
    if flat.shape[-1] != total:
        raise ValueError(f"flat StyleSpace vector: expected last dimension {total}, got {tuple(flat.shape)}")
    return list(torch.split(flat, [int(c) for c in style_channels], dim=-1))


def _layer_selection(manipulate_layers: Any, n_layers: int) -> list[int]:
    if manipulate_layers is None:
        return list(range(n_layers))
    if isinstance(manipulate_layers, torch.Tensor):
        manipulate_layers = manipulate_layers.reshape(-1).tolist() if manipulate_layers.ndim else int(manipulate_layers)
    if isinstance(manipulate_layers, np.ndarray):
        manipulate_layers = manipulate_layers.reshape(-1).tolist()
    if isinstance(manipulate_layers, (int, np.integer)) and not isinstance(manipulate_layers, bool):
        sel = [int(manipulate_layers)]
    elif isinstance(manipulate_layers, (list, tuple, set, frozenset, range)):
        sel = [int(i) for i in manipulate_layers]
    else:
        raise ValueError(f"manipulate_layers: expected None, an S-layer index or a list of them, got {manipulate_layers!r}")
    bad = [i for i in sel if not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"manipulate_layers: S-layer indices must be in [0, {n_layers}), got {bad}")
    return sorted(set(sel))


def _alpha_values(alpha: Any) -> tuple[list[float], bool]:
    """(values, is_sequence)."""
    if isinstance(alpha, torch.Tensor):
        alpha = alpha.detach().cpu().numpy()
    if isinstance(alpha, np.ndarray):
        if alpha.ndim == 0:
            return [float(alpha)], False
        return [float(a) for a in alpha.reshape(-1)], True
    if isinstance(alpha, (list, tuple)):
        vals = [float(a) for a in alpha]
        if not vals:
            raise ValueError("alpha: empty sequence")
        return vals, True
    try:
        return [float(alpha)], False
    except (TypeError, ValueError):
        raise ValueError(f"alpha: expected a number or a sequence of numbers, got {alpha!r}") from None


def apply_direction(styles: Sequence[torch.Tensor], boundary_layers: Sequence[torch.Tensor], alpha: Any,
                    manipulate_layers: Any = None) -> list[torch.Tensor]:
    """``MSCode``: ``s'_l = s_l + α · boundary_l`` for the layers in ``manipulate_layers``.

    ``styles``: list of (N, C_l) codes; ``boundary_layers``: list of (C_l,) (from
    :func:`split_to_layers`); ``manipulate_layers``: None (all layers), an S index
    or a list of S indices.  ``alpha``:

    * a number → list of (N, C_l) tensors;
    * a sequence / 1-D tensor of K numbers → list of (N, K, C_l) tensors (step axis,
      as the reference with ``M.alpha = [...]``), even for K = 1.

    The sum is formed in float64 and rounded back to the codes' dtype (the
    reference adds a float64 step to float32 codes); layers not manipulated and
    ``alpha == 0`` give exactly the input values.  Inputs are not modified.
    """
    if len(styles) != len(boundary_layers):
        raise ValueError(f"boundary: expected {len(styles)} per-layer tensors (one per style layer), got {len(boundary_layers)}")
    alphas, seq = _alpha_values(alpha)
    if not all(math.isfinite(a) for a in alphas):
        raise ValueError(f"alpha: expected finite values, got {alpha!r}")
    sel = set(_layer_selection(manipulate_layers, len(styles)))
    out = []
    for i, (s, b) in enumerate(zip(styles, boundary_layers)):
        if s.ndim != 2:
            raise ValueError(f"styles[{i}]: expected shape (N, C), got {tuple(s.shape)}")
        b = _as_tensor(b, f"boundary[{i}]").reshape(-1)
        if b.numel() != s.shape[1]:
            raise ValueError(f"boundary[{i}]: expected {s.shape[1]} channels, got {b.numel()}")
        base = s[:, None, :].expand(-1, len(alphas), -1) if seq else s
        if i not in sel:
            out.append(base.clone())
            continue
        hi = _hi_dtype(s.device)
        a = torch.tensor(alphas, dtype=hi, device=s.device)
        step = a[:, None] * b.to(device=s.device, dtype=hi)[None, :]  # (K, C)
        res = (s.to(hi)[:, None, :] + step[None]).to(s.dtype)
        if not seq:
            res = res[:, 0]
        zero = torch.tensor([x == 0.0 for x in alphas], device=s.device)
        if bool(zero.any()):  # alpha == 0: exactly the input (also if the boundary were non-finite)
            if seq:
                res = torch.where(zero[None, :, None], base, res)
            else:
                res = s.clone()
        out.append(res)
    return out


# ----------------------------------------------------------------------------- fs3

#: fs3 row normalisations (:func:`fs3_from_features`)
FS3_NORMALIZATIONS = ("reference", "magnitude")


def fs3_from_features(features: torch.Tensor, normalize: str = "reference") -> torch.Tensor:
    """``GetFs``: CLIP image features (C, n_images, 2, D) → fs3 (C, D).

    Index 0 of axis 2 is the −ασ image, index 1 the +ασ image.  Every feature is
    L2-normalised and d = f̂[+] − f̂[−].  Math in float64; returned as float32
    (float64 for float64 input).

    * ``normalize='reference'`` (the official code): each d is normalised, averaged
      over the images and normalised again → unit rows.
    * ``normalize='magnitude'``: the plain mean of d, E[ΔI_c] — the paper's relevance
      R_c(Δi) = E[ΔI_c · Δi] (sec. 6) before any rescaling — so a channel that barely
      changes the image gets a short row.  Why: unit rows give a near-inert channel a
      full-length row of noise and generic-change directions; in the toy world (64-dim
      CLIP, most channels weak) that made non-target channels as relevant as the target's
      own (measured: 4.6 of the top 20 channels owned by the prompt's attribute with unit
      rows, 5.7 with magnitude rows, and the kept set at half the top relevance 2-70 channels
      instead of 2-363).  :func:`compute_fs3` then divides the whole matrix by its largest
      row norm so that |fs3·dt| ≤ 1 and β keeps its [0, 1] range; this function returns the
      unscaled means.
    """
    if normalize not in FS3_NORMALIZATIONS:
        raise ValueError(f"normalize: expected one of {FS3_NORMALIZATIONS}, got {normalize!r}")
    f = _as_tensor(features, "features")
    if f.ndim != 4 or f.shape[2] != 2:
        raise ValueError(f"features: expected shape (channels, n_images, 2, D), got {tuple(f.shape)}")
    out_dtype = torch.float64 if f.dtype == torch.float64 else torch.float32
    f = f.to(_hi_dtype(f.device))
    f = f / f.norm(dim=-1, keepdim=True)
    d = f[:, :, 1] - f[:, :, 0]
    if normalize == "magnitude":
        return d.mean(dim=1).to(out_dtype)
    return _unit_rows(_unit_rows(d).mean(dim=1)).to(out_dtype)


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """x / |x| along the last axis; an all-zero row (a constant channel, σ = 0: the reference
    would give NaN) stays zero, so it is never relevant."""
    n = x.norm(dim=-1, keepdim=True)
    return torch.where(n > 0, x / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(x))


def scale_fs3(rows: torch.Tensor) -> torch.Tensor:
    """Magnitude rows (:func:`fs3_from_features` with ``normalize='magnitude'``) divided by the
    largest row norm: the strongest channel gets a unit row, the others keep their relative length."""
    top = rows.norm(dim=-1).max() if rows.numel() else torch.zeros(())
    if not bool(top > 0):
        raise ValueError("fs3: every row is zero (no channel changes the CLIP features); check the generator and alpha")
    return rows / top


def _gen_device(generator: Any) -> torch.device:
    params = getattr(generator, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


def _progress(iterable=None, total=None, desc=None, enabled=True):
    if not enabled:
        return _NullBar(iterable)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc)


class _NullBar:
    def __init__(self, iterable=None):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def update(self, n=1):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _z_batches(n: int, z_dim: int, batch: int, seed: int, z: Optional[torch.Tensor]):
    """Yield z batches: given ``z`` or the reference stream ``np.random.RandomState(seed).randn(n, z_dim)``."""
    if z is not None:
        z = _as_tensor(z, "z")
        if z.ndim != 2 or z.shape[1] != z_dim:
            raise ValueError(f"z: expected shape (n, {z_dim}), got {tuple(z.shape)}")
        for a in range(0, z.shape[0], batch):
            yield z[a:a + batch].float()
        return
    rs = np.random.RandomState(seed)
    done = 0
    while done < n:  # consecutive draws continue one stream: identical to a single (n, z_dim) draw
        k = min(batch, n - done)
        yield torch.from_numpy(rs.randn(k, z_dim)).float()
        done += k


def _styles_from_z(generator: Any, z: torch.Tensor, truncation: float, truncation_cutoff: Optional[int]) -> list[torch.Tensor]:
    w = generator.mapping(z)
    wt = generator.truncate(w, truncation) if truncation != 1.0 else w
    wp = wt[:, None, :].expand(-1, generator.num_ws, -1)
    if truncation_cutoff is not None and truncation != 1.0:
        rows = torch.arange(generator.num_ws, device=w.device)[None, :, None]
        wp = torch.where(rows < truncation_cutoff, wp, w[:, None, :])
    return generator.styles(wp)


@torch.no_grad()
def style_statistics(generator: Any, n: int = 100_000, truncation: float = 0.7, batch: int = 1000, seed: int = 5, *,
                     z: Optional[torch.Tensor] = None, truncation_cutoff: Optional[int] = None,
                     progress: bool = True) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-channel mean and **population** std (ddof=0) of the StyleSpace codes (``GetCodeMS``).

    z: ``np.random.RandomState(seed).randn(n, w_dim)`` (the reference's seed 5) or
    the given ``z`` (n, w_dim); W = mapping(z) truncated toward ``latent_avg`` with
    ``truncation`` (every W+ row, the TF ``GetCode.py`` semantics; pass
    ``truncation_cutoff=8`` for the torch port, whose rows ≥ 8 stay untruncated).
    Computed in batches with a float64 streaming (Chan) update.  Returns two lists
    of float32 (C_l,) tensors, ToRGB layers included.
    """
    dev = _gen_device(generator)
    z_dim = generator.w_dim if hasattr(generator, "w_dim") else generator.style_dim
    count = 0
    mean: Optional[list[torch.Tensor]] = None
    m2: Optional[list[torch.Tensor]] = None
    total = z.shape[0] if z is not None else n
    bar = _progress(total=total, desc="S statistics", enabled=progress)
    hi = _hi_dtype(dev)
    for zb in _z_batches(n, z_dim, batch, seed, z):
        styles = _styles_from_z(generator, zb.to(dev), truncation, truncation_cutoff)
        k = zb.shape[0]
        bm = [s.to(hi).mean(0) for s in styles]
        bv = [((s.to(hi) - m[None]) ** 2).sum(0) for s, m in zip(styles, bm)]
        if mean is None:
            mean, m2 = bm, bv
        else:
            tot = count + k
            for i in range(len(mean)):
                delta = bm[i] - mean[i]
                mean[i] = mean[i] + delta * (k / tot)
                m2[i] = m2[i] + bv[i] + delta ** 2 * (count * k / tot)
        count += k
        bar.update(k)
    bar.close()
    if not count:
        raise ValueError("style_statistics: no samples (n must be >= 1)")
    return [m.float() for m in mean], [(v / count).sqrt().float() for v in m2]


@torch.no_grad()
def sample_styles(generator: Any, n: int, truncation: float = 0.7, seed: int = 5, batch: int = 1000, *,
                  z: Optional[torch.Tensor] = None, truncation_cutoff: Optional[int] = None) -> list[torch.Tensor]:
    """StyleSpace codes of the first ``n`` samples of the stream of :func:`style_statistics`
    (the reference's ``M.dlatents[:n]``): list of (n, C_l)."""
    dev = _gen_device(generator)
    z_dim = generator.w_dim if hasattr(generator, "w_dim") else generator.style_dim
    parts: list[list[torch.Tensor]] = []
    got = 0
    zsrc = z[:n] if z is not None else None
    for zb in _z_batches(n, z_dim, batch, seed, zsrc):
        parts.append(_styles_from_z(generator, zb.to(dev), truncation, truncation_cutoff))
        got += zb.shape[0]
        if got >= n:
            break
    return [torch.cat([p[i] for p in parts])[:n] for i in range(len(parts[0]))]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """The reference ``GenerateImg`` conversion: ``((img + 1)·255/2).clamp(0, 255)`` then truncation
    to uint8 (not rounding), NCHW float → NHWC uint8."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected (N, 3, H, W), got {tuple(images.shape)}")
    x = (images + 1) * (255 / 2)
    return x.permute(0, 2, 3, 1).clamp(0, 255).to(torch.uint8)


def clip_image_features(clip_model: Any, input_resolution: Optional[int] = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Default ``image_features_fn`` for :func:`compute_fs3`: uint8 NHWC images → ``encode_image`` features.

    Mirrors the reference ``GetImgF`` preprocessing (CLIP's ``preprocess``): resize so
    the short side is ``input_resolution`` (default ``clip_model.input_resolution``,
    else 224) with bicubic, center crop, [0, 1], CLIP mean/std normalisation.

    **Deviation:** the resize is ``F.interpolate(mode='bicubic', antialias=True)``
    (PIL-style a = −0.5 kernel with antialiasing) on the float image, rounded and
    clamped back to the 0..255 grid as PIL does, not PIL itself; pixel values can
    differ by a grey level, so the features (and fs3) agree with the reference
    closely but not bit for bit.  Features are returned unnormalised (B, D), float32.
    """
    res = int(input_resolution or getattr(clip_model, "input_resolution", 224) or 224)
    from .models.clip import CLIP_MEAN, CLIP_STD

    def fn(images_uint8: torch.Tensor) -> torch.Tensor:
        if images_uint8.ndim != 4 or images_uint8.shape[-1] != 3:
            raise ValueError(f"images: expected uint8 (N, H, W, 3), got {tuple(images_uint8.shape)}")
        device, dtype = _model_device_dtype(clip_model)
        x = images_uint8.to(device).permute(0, 3, 1, 2).float()
        h, w = x.shape[-2:]
        if (h, w) != (res, res):
            if h <= w:
                size = (res, int(res * w / h))
            else:
                size = (int(res * h / w), res)
            if (h, w) != size:
                x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
                x = x.round().clamp(0, 255)
            hh, ww = x.shape[-2:]
            top, left = int(round((hh - res) / 2.0)), int(round((ww - res) / 2.0))
            x = x[..., top:top + res, left:left + res]
        x = x / 255.0
        mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
        x = (x - mean) / std
        with torch.no_grad():
            f = clip_model.encode_image(x.to(dtype) if dtype is not None else x)
        return f.float()

    return fn


def reference_fs3_layers(generator: Any, max_s_index: int = 16) -> list[int]:
    """Conv S indices that the reference ``SingleChannel.py`` perturbs: ``mindexs <= 16``
    ("below or equal to 128 resolution"; 11 layers, 5376 channels for the 1024 model)."""
    return [i for i in generator.conv_style_indices if i <= max_s_index]


def _loop_layout(codes: Sequence[torch.Tensor], layers: Sequence[int]) -> tuple[list[int], np.ndarray]:
    layers = [int(i) for i in layers]
    if len(set(layers)) != len(layers) or any(not 0 <= i < len(codes) for i in layers):
        raise ValueError(f"layers: expected distinct S-layer indices in [0, {len(codes)}), got {layers}")
    bounds = np.cumsum([0] + [codes[i].shape[-1] for i in layers])
    return layers, bounds


def _step_codes(codes: Sequence[torch.Tensor], mean: Sequence[torch.Tensor], std: Sequence[torch.Tensor],
                layers: Sequence[int], bounds: np.ndarray, ch: torch.Tensor, sign: torch.Tensor, img: torch.Tensor,
                alpha: float, variant: str) -> list[torch.Tensor]:
    """Codes of a batch of (channel, ±, image) items.  ``ch``: fs3 row (loop index), ``sign``: ±1,
    ``img``: image index.  Reference variant: every channel with loop index < ch is at its mean."""
    dev = codes[0].device
    out = []
    pos = {li: p for p, li in enumerate(layers)}
    hi = _hi_dtype(dev)
    for L, c in enumerate(codes):
        base = c[img]
        if L in pos:
            p = pos[L]
            lo = int(bounds[p])
            C = c.shape[1]
            gidx = lo + torch.arange(C, device=dev)
            mu = mean[L].to(device=dev, dtype=c.dtype)
            if variant == "reference":
                mask = gidx[None, :] < ch[:, None]
                base = torch.where(mask, mu[None, :].expand_as(base), base)
            else:
                base = base.clone()
            rows = torch.nonzero((ch >= lo) & (ch < lo + C)).reshape(-1)
            if rows.numel():
                cc = ch[rows] - lo
                val = mean[L].to(device=dev, dtype=hi)[cc] + sign[rows].to(hi) * alpha * std[L].to(device=dev, dtype=hi)[cc]
                base[rows, cc] = val.to(c.dtype)
        out.append(base)
    return out


def _check_codes(codes: Sequence[torch.Tensor], name: str, channels: Optional[Sequence[int]] = None) -> list[torch.Tensor]:
    codes = [_as_tensor(c, f"{name}[{i}]") for i, c in enumerate(codes)]
    if channels is not None and len(codes) != len(channels):
        raise ValueError(f"{name}: expected {len(channels)} per-layer tensors, got {len(codes)}")
    for i, c in enumerate(codes):
        if channels is not None and c.shape[-1] != channels[i]:
            raise ValueError(f"{name}[{i}]: expected {channels[i]} channels, got {tuple(c.shape)}")
    return codes


def reference_loop_state(codes: Sequence[torch.Tensor], style_mean: Sequence[torch.Tensor], layers: Sequence[int],
                         num_visited: int) -> list[torch.Tensor]:
    """Shared codes of the reference ``SingleChannel.py`` loop after ``num_visited`` channels.

    The reference re-copies only the *list* of code arrays, so the
    ``dlatents[l][:, c] = mean`` of every step persists: after step k every channel
    with loop index < k stays at its mean.  ``layers``: S indices in loop order.
    """
    codes = _check_codes(codes, "codes")
    layers, bounds = _loop_layout(codes, layers)
    state = [c.clone() for c in codes]
    for p, L in enumerate(layers):
        gidx = int(bounds[p]) + torch.arange(codes[L].shape[1], device=codes[L].device)
        mu = _as_tensor(style_mean[L], f"style_mean[{L}]").to(codes[L])
        state[L] = torch.where((gidx < int(num_visited))[None, :], mu[None, :], codes[L])
    return state


def fs3_step_codes(codes: Sequence[torch.Tensor], style_mean: Sequence[torch.Tensor], style_std: Sequence[torch.Tensor],
                   layers: Sequence[int], step: int, alpha: float = 5.0, variant: str = "corrected") -> list[torch.Tensor]:
    """Codes rendered at fs3 step ``step`` (loop index = fs3 row): list of (n_images, 2, C_l),
    axis 1 = (−α, +α), channel (l, c) = mean ± α·σ; see :func:`compute_fs3` for ``variant``."""
    if variant not in ("corrected", "reference"):
        raise ValueError(f"variant: expected 'corrected' or 'reference', got {variant!r}")
    codes = _check_codes(codes, "codes")
    layers, bounds = _loop_layout(codes, layers)
    if not 0 <= step < bounds[-1]:
        raise ValueError(f"step: expected 0 <= step < {int(bounds[-1])}, got {step}")
    n = codes[0].shape[0]
    dev = codes[0].device
    img = torch.arange(n, device=dev).repeat(2)
    sign = torch.cat([-torch.ones(n, device=dev), torch.ones(n, device=dev)])
    ch = torch.full((2 * n,), int(step), device=dev, dtype=torch.long)
    out = _step_codes(codes, style_mean, style_std, layers, bounds, ch, sign, img, float(alpha), variant)
    return [o.reshape(2, n, -1).transpose(0, 1) for o in out]


def _fingerprint(codes, mean, std) -> list[float]:
    return [float(sum(c.double().sum() for c in codes)), float(sum(m.double().sum() for m in mean)),
            float(sum(s.double().sum() for s in std))]


def _unit_probe(feats: torch.Tensor) -> torch.Tensor:
    """The unit image feature of a run's first image, kept in an fs3 resume file.

    Why: the settings fingerprint ties a file to the generator and its codes, not to the image-feature
    model; an fs3 run resumed with another CLIP (one retrained next to the same generator) would
    otherwise silently finish rows that mix two feature spaces.  A fresh run takes it from its first
    batch; a resumed one renders that image once more to compare."""
    return F.normalize(torch.as_tensor(feats[:1]).detach().float(), dim=-1).cpu()


def _check_probe(old: Optional[torch.Tensor], new: torch.Tensor, resume_path: str) -> None:
    """A resume file's probe must match to float rounding (5e-3 on a unit feature: another device or
    batch size); files written before probes existed pass."""
    if old is None:
        return
    if old.shape != new.shape or float((old.float() - new).abs().max()) > 5e-3:
        raise ValueError(f"resume file {resume_path!r} was written with a different image-feature model (CLIP): the "
                         "features of the run's first image differ; delete it to start over or pass another resume_path")


def _atomic_save(obj: dict, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def compute_fs3(generator: Any, image_features_fn: Callable[[torch.Tensor], torch.Tensor], n_images: int = 100,
                alpha: float = 5.0, layers: Union[None, str, Sequence[int]] = None, batch_size: int = 32,
                variant: str = "corrected", resume_path: Union[None, str, os.PathLike] = None, progress: bool = True, *,
                codes: Optional[Sequence[torch.Tensor]] = None, style_mean: Optional[Sequence[torch.Tensor]] = None,
                style_std: Optional[Sequence[torch.Tensor]] = None, stats_n: int = 100_000, seed: int = 5,
                truncation: float = 0.7, truncation_cutoff: Optional[int] = None,
                to_images: Optional[Callable[[torch.Tensor], torch.Tensor]] = to_uint8,
                save_path: Union[None, str, os.PathLike] = None, save_every: int = 32,
                noise_mode: str = "const", normalize: str = "reference") -> torch.Tensor:
    """fs3 preprocessing (the reference ``SingleChannel.py``) for any generator.

    For every conv channel (l, c) of ``layers`` (in S order, channel order — the
    fs3 row order) and every one of ``n_images`` codes, render the image with
    channel (l, c) at ``mean − α·σ`` and ``mean + α·σ``; ``image_features_fn``
    maps the images (by default converted with :func:`to_uint8` to uint8 NHWC,
    as the reference's ``GenerateImg``) to features (B, D), e.g.
    :func:`clip_image_features`; the rows are reduced with :func:`fs3_from_features`.
    Returns fs3 (C, D) float32 (and writes it with :func:`save_fs3` to ``save_path``).

    * ``codes`` / ``style_mean`` / ``style_std``: the images' StyleSpace codes (list of
      (≥ n_images, C_l)) and per-channel statistics; by default the first
      ``n_images`` samples and the statistics over ``stats_n`` samples of the
      reference seed-5 stream (:func:`sample_styles`, :func:`style_statistics`).
    * ``layers``: S indices of the conv layers, in order, forming a prefix of the conv
      layers (so the rows line up with :func:`split_to_layers`); ``None`` = every
      conv layer (6048 rows for FFHQ-1024); ``'reference'`` = S index ≤ 16 as in
      ``SingleChannel.py`` (5376 rows for 1024).
    * Batching: ``batch_size`` (image, channel, ±) items per generator call, items
      from consecutive channels share a call.
    * ``resume_path``: progress file (``torch.save``; finished rows + next channel +
      a fingerprint of the settings and of the image-feature model).  It is written every ``save_every`` channels,
      when an exception (e.g. KeyboardInterrupt) stops the loop, and at the end; an
      existing file is continued from its next channel (a file made with other
      settings raises ValueError — delete it to start over).
    * ``variant``:

      - ``'corrected'`` (default): only channel (l, c) differs from the image's own
        code.  This is what the paper describes (the effect of one channel on the
        image), and it makes each row independent of the loop order.
      - ``'reference'``: the original loop's quirk — it re-copies the list of code
        arrays but edits the arrays in place, so every channel visited so far stays
        at its mean for the rest of the loop (channel k is measured on images whose
        channels 0..k−1 are all reset to their means).  Use it to reproduce the
        published ``fs3.npy`` procedure.
    """
    if variant not in ("corrected", "reference"):
        raise ValueError(f"variant: expected 'corrected' or 'reference', got {variant!r}")
    if n_images < 1 or batch_size < 1:
        raise ValueError(f"n_images and batch_size must be >= 1, got {n_images}, {batch_size}")
    channels = list(generator.style_channels)
    layers = _check_layers(generator, layers)
    dev = _gen_device(generator)
    if codes is None:
        codes = sample_styles(generator, n_images, truncation=truncation, seed=seed, truncation_cutoff=truncation_cutoff)
    codes = _check_codes(codes, "codes", channels)
    if codes[0].shape[0] < n_images:
        raise ValueError(f"codes: {codes[0].shape[0]} samples given, n_images={n_images}")
    codes = [c[:n_images].to(dev) for c in codes]
    if style_mean is None or style_std is None:
        m, s = style_statistics(generator, n=stats_n, truncation=truncation, seed=seed,
                                truncation_cutoff=truncation_cutoff, progress=progress)
        style_mean = m if style_mean is None else style_mean
        style_std = s if style_std is None else style_std
    mean = [t.to(dev) for t in _check_codes(style_mean, "style_mean", channels)]
    std = [t.to(dev) for t in _check_codes(style_std, "style_std", channels)]
    layers, bounds = _loop_layout(codes, layers)
    total = int(bounds[-1])
    per = 2 * n_images
    config = {"variant": variant, "alpha": float(alpha), "n_images": int(n_images), "layers": layers,
              "style_channels": channels, "fingerprint": _fingerprint(codes, mean, std),
              "to_images": getattr(to_images, "__name__", repr(to_images)), "noise_mode": noise_mode,
              "normalize": normalize}

    def item_features(item: int, k: int) -> torch.Tensor:
        """Features of the loop's items ``item .. item+k-1`` (item = (channel, ±, image) in that order)."""
        t = torch.arange(item, item + k, device=dev)
        ch, rem = t // per, t % per
        sign = torch.where(rem // n_images == 0, -1.0, 1.0).to(dev)
        batch_codes = _step_codes(codes, mean, std, layers, bounds, ch, sign, rem % n_images, float(alpha), variant)
        images = generator.synthesis_from_styles(batch_codes, noise_mode=noise_mode)
        feats = image_features_fn(to_images(images) if to_images is not None else images)
        if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or feats.shape[0] != k:
            raise ValueError(f"image_features_fn: expected a (B={k}, D) tensor, got "
                             f"{tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__}")
        return feats

    rows: list[torch.Tensor] = []
    start = 0
    probe: Optional[torch.Tensor] = None
    resume_path = os.fspath(resume_path) if resume_path is not None else None
    if resume_path and os.path.exists(resume_path):
        st = torch.load(resume_path, map_location="cpu", weights_only=True)
        old = st.get("config", {})
        # files written before ``normalize`` existed hold reference rows
        same = all(old.get(k, "reference" if k == "normalize" else None) == config[k] for k in config if k != "fingerprint")
        fp_old = old.get("fingerprint", [])
        same = same and len(fp_old) == 3 and all(
            abs(a - b) <= 1e-6 * max(1.0, abs(b)) for a, b in zip(fp_old, config["fingerprint"]))
        if not same:
            raise ValueError(
                f"resume file {resume_path!r} was written with different settings (generator, codes, statistics, "
                "variant, alpha, n_images or layers); delete it to start over or pass another resume_path"
            )
        if st.get("probe") is not None:
            probe = _unit_probe(item_features(0, 1))
            _check_probe(st["probe"], probe, resume_path)
        start = int(st["next_channel"])
        if start:
            rows = [st["fs3"].float()]

    def save_progress(next_channel: int) -> None:
        if resume_path:
            fs = torch.cat(rows) if rows else torch.zeros(0, 0)
            _atomic_save({"version": 1, "config": config, "next_channel": int(next_channel), "fs3": fs,
                          "total_channels": total, "probe": probe}, resume_path)

    bar = _progress(total=total, desc="fs3 channels", enabled=progress)
    bar.update(start)
    pending: list[torch.Tensor] = []  # features of the items of unfinished channels, in item order
    n_pending = 0
    done = start
    last_saved = start
    item = start * per
    end = total * per
    try:
        while item < end:
            k = min(batch_size, end - item)
            feats = item_features(item, k)
            if item == 0:
                probe = _unit_probe(feats)
            pending.append(feats.detach().to("cpu", _hi_dtype("cpu")))
            n_pending += k
            item += k
            if n_pending >= per:
                allf = torch.cat(pending)
                nfin = n_pending // per
                fin = allf[: nfin * per].reshape(nfin, 2, n_images, -1).transpose(1, 2)
                rows.append(fs3_from_features(fin, normalize).float())
                rest = allf[nfin * per:]
                pending = [rest] if rest.numel() else []
                n_pending = rest.shape[0]
                done += nfin
                bar.update(nfin)
                if done - last_saved >= save_every and done < total:
                    save_progress(done)
                    last_saved = done
    except BaseException:
        if done > last_saved:
            save_progress(done)
        bar.close()
        raise
    bar.close()
    fs3 = torch.cat(rows) if rows else torch.zeros(0, 0)
    save_progress(total)  # unscaled rows: a resumed or extended run rescales all of them together
    if normalize == "magnitude":
        fs3 = scale_fs3(fs3)
    if save_path is not None:
        save_fs3(save_path, fs3)
    return fs3


def _check_layers(generator: Any, layers: Union[None, str, Sequence[int]]) -> list[int]:
    conv = list(generator.conv_style_indices)
    if layers is None:
        layers = conv
    elif isinstance(layers, str):
        if layers != "reference":
            raise ValueError(f"layers: expected None, 'reference' or a list of conv S indices, got {layers!r}")
        layers = reference_fs3_layers(generator)
    layers = [int(i) for i in layers]
    if not layers or layers != conv[: len(layers)]:
        raise ValueError(
            f"layers: expected a prefix of the conv S indices {conv} (fs3 rows must follow the conv layers in order "
            f"so that they line up with the boundary split), got {layers}"
        )
    return layers


def fs3_from_samples(z: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Correlational fs3 rows from samples: ``Cov(z_c, f̂)`` (C, D) for standardised StyleSpace
    codes ``z`` (N, C) and the CLIP features (N, D) of the same N images (L2-normalised here).

    Then ``fs3_c · dt = Cov(z_c, f̂ · dt)``: how much channel c co-varies, over the generator's own
    images, with how far each image lies along the text direction.  Math in float64."""
    z = _as_tensor(z, "z")
    f = _as_tensor(features, "features")
    if z.ndim != 2 or f.ndim != 2 or z.shape[0] != f.shape[0] or z.shape[0] < 2:
        raise ValueError(f"z, features: expected (N, C) and (N, D) with the same N >= 2, got "
                         f"{tuple(z.shape)} and {tuple(f.shape)}")
    sums = _CovarianceSums(z.shape[1], f.shape[1])
    sums.add(z, f)
    return sums.covariance()


class _CovarianceSums:
    """Running sums for Cov(z, f̂) (resumable: :meth:`state` / :meth:`from_state`)."""

    def __init__(self, c: int, d: int):
        hi = _hi_dtype("cpu")
        self.n, self.sz, self.sf, self.szf = 0, torch.zeros(c, dtype=hi), torch.zeros(d, dtype=hi), torch.zeros(c, d, dtype=hi)

    def add(self, z: torch.Tensor, f: torch.Tensor) -> None:
        hi = _hi_dtype("cpu")
        z, f = z.detach().to("cpu", hi), f.detach().to("cpu", hi)
        f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self.n += z.shape[0]
        self.sz += z.sum(0)
        self.sf += f.sum(0)
        self.szf += z.T @ f

    def covariance(self) -> torch.Tensor:
        mz, mf = self.sz / self.n, self.sf / self.n
        return (self.szf / self.n - torch.outer(mz, mf)).float()

    def state(self) -> dict:
        return {"n": self.n, "sz": self.sz, "sf": self.sf, "szf": self.szf}

    @classmethod
    def from_state(cls, st: dict) -> "_CovarianceSums":
        out = cls(0, 0)
        out.n, out.sz, out.sf, out.szf = int(st["n"]), st["sz"], st["sf"], st["szf"]
        return out


@torch.no_grad()
def compute_fs3_correlation(generator: Any, image_features_fn: Callable[[torch.Tensor], torch.Tensor],
                            n_images: int = 4000, layers: Union[None, str, Sequence[int]] = None, batch_size: int = 250,
                            resume_path: Union[None, str, os.PathLike] = None, progress: bool = True, *,
                            style_mean: Optional[Sequence[torch.Tensor]] = None,
                            style_std: Optional[Sequence[torch.Tensor]] = None, stats_n: int = 100_000, seed: int = 5,
                            truncation: float = 0.7, truncation_cutoff: Optional[int] = None,
                            to_images: Optional[Callable[[torch.Tensor], torch.Tensor]] = to_uint8,
                            save_path: Union[None, str, os.PathLike] = None, noise_mode: str = "const",
                            normalize: str = "magnitude") -> torch.Tensor:
    """fs3 without the single-channel loop (an addition, not in the reference): render
    ``n_images`` samples of the generator (seed-``seed`` stream, ``truncation``), and let row c be
    ``Cov(z_c, f̂)`` of the standardised conv code ``z_c = (s_c − mean_c)/std_c`` and the unit CLIP
    image features (:func:`fs3_from_samples`).  Same row layout as :func:`compute_fs3` (``layers``),
    ``normalize='magnitude'`` divides by the largest row norm (|fs3·dt| ≤ 1, β keeps its range),
    ``'reference'`` gives unit rows.  One render per image instead of 2·C: for FFHQ-1024 that is
    4000 renders against 1.2 M.

    Why: the reference measures each channel alone, pushed to mean ± 5σ with all others at the image's
    code.  That is the causal effect of one channel where single channels are meaningful and nearly
    independent, as in FFHQ's StyleSpace (Wu et al. 2021).  Where a value of an attribute is a
    *pattern* over many correlated channels, a lone ±5σ channel leaves the codes the generator makes and
    its CLIP change says little about any one value.  Measured on the toy generator (v5, 4000 renders,
    25 edit prompts): the relevance ``fs3·dt`` of the single-channel fs3 has cosine 0.00-0.37 with the
    prompts' class-mean StyleSpace step (the direction that does the edit), the correlational one
    0.74-1.00; global directions success / collateral 0.52 / 0.14 -> 0.64 / 0.09 (α 4.1, β 0.15,
    10 faces per prompt).  On the shipped v6 generator (20 faces per prompt, β 0.15): 0.63 / 0.14 ->
    0.73 / 0.07 at α 4.1, 0.70 / 0.21 -> 0.82 / 0.11 at α 6.

    Caveat: correlation is not causation.  Channels that co-vary with an attribute in the
    generator's distribution are picked up, e.g. on FFHQ whatever goes with age would come along
    with "grey hair"; the toy world samples its attributes independently.

    ``resume_path``: the running sums are saved after every batch and continued (same settings and the
    same image-feature model: another one, e.g. a retrained CLIP, raises ValueError).
    """
    if normalize not in FS3_NORMALIZATIONS:
        raise ValueError(f"normalize: expected one of {FS3_NORMALIZATIONS}, got {normalize!r}")
    if n_images < 2 or batch_size < 1:
        raise ValueError(f"n_images must be >= 2 and batch_size >= 1, got {n_images}, {batch_size}")
    channels = list(generator.style_channels)
    layers = _check_layers(generator, layers)
    if style_mean is None or style_std is None:
        m, s = style_statistics(generator, n=stats_n, truncation=truncation, seed=seed,
                                truncation_cutoff=truncation_cutoff, progress=progress)
        style_mean = m if style_mean is None else style_mean
        style_std = s if style_std is None else style_std
    dev = _gen_device(generator)
    mean = [t.to(dev).reshape(-1) for t in _check_codes(style_mean, "style_mean", channels)]
    std = [t.to(dev).reshape(-1) for t in _check_codes(style_std, "style_std", channels)]
    config = {"kind": "correlation", "n_images": int(n_images), "layers": layers, "style_channels": channels,
              "seed": int(seed), "truncation": float(truncation), "truncation_cutoff": truncation_cutoff,
              "batch_size": int(batch_size), "noise_mode": noise_mode,
              "stats": [float(sum(float(t.double().sum()) for t in mean)), float(sum(float(t.double().sum()) for t in std))]}
    sums: Optional[_CovarianceSums] = None
    probe: Optional[torch.Tensor] = None
    z_dim = generator.w_dim if hasattr(generator, "w_dim") else generator.style_dim
    resume_path = os.fspath(resume_path) if resume_path is not None else None
    if resume_path and os.path.exists(resume_path):
        st = torch.load(resume_path, map_location="cpu", weights_only=True)
        old = st.get("config", {})
        same = all(old.get(k) == v for k, v in config.items() if k != "stats") and all(
            abs(a - b) <= 1e-6 * max(1.0, abs(b)) for a, b in zip(old.get("stats", []), config["stats"]))
        if not same:
            raise ValueError(f"resume file {resume_path!r} was written with different settings (generator statistics, "
                             "n_images, layers, seed, truncation); delete it to start over or pass another resume_path")
        if st.get("probe") is not None:  # the stream's first draw is the run's first image
            first = _styles_from_z(generator, next(_z_batches(1, z_dim, 1, seed, None)).to(dev), truncation, truncation_cutoff)
            images = generator.synthesis_from_styles(first, noise_mode=noise_mode)
            probe = _unit_probe(image_features_fn(to_images(images) if to_images is not None else images))
            _check_probe(st["probe"], probe, resume_path)
        sums = _CovarianceSums.from_state(st["sums"])
    done = sums.n if sums is not None else 0
    bar = _progress(total=n_images, desc="fs3 samples", enabled=progress)
    bar.update(done)
    # the reference seed stream, batch by batch; batches already summed are drawn and skipped
    for k, zb in enumerate(_z_batches(n_images, z_dim, batch_size, seed, None)):
        if k * batch_size < done:
            continue
        styles = _styles_from_z(generator, zb.to(dev), truncation, truncation_cutoff)
        images = generator.synthesis_from_styles(styles, noise_mode=noise_mode)
        feats = image_features_fn(to_images(images) if to_images is not None else images)
        if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or feats.shape[0] != zb.shape[0]:
            raise ValueError(f"image_features_fn: expected a (B={zb.shape[0]}, D) tensor, got "
                             f"{tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__}")
        # a constant channel (σ = 0) is never relevant (zero row), as in fs3_from_features
        z = torch.cat([torch.where(std[i] > 0, (styles[i] - mean[i]) / torch.where(std[i] > 0, std[i], torch.ones_like(std[i])),
                                   torch.zeros_like(styles[i])) for i in layers], 1)
        if sums is None:
            sums = _CovarianceSums(z.shape[1], feats.shape[1])
        if k == 0:
            probe = _unit_probe(feats)
        sums.add(z, feats)
        bar.update(zb.shape[0])
        if resume_path:
            _atomic_save({"version": 1, "config": config, "sums": sums.state(), "probe": probe}, resume_path)
    bar.close()
    rows = sums.covariance()
    fs3 = scale_fs3(rows) if normalize == "magnitude" else _unit_rows(rows)
    if save_path is not None:
        save_fs3(save_path, fs3)
    return fs3


def save_fs3(path: Union[str, os.PathLike], fs3: torch.Tensor, dtype: Any = np.float32) -> str:
    """Write fs3 as the reference does (``np.save``, shape (C, D)).  Returns the path written
    (``np.save`` appends ``.npy`` when missing)."""
    arr = _as_tensor(fs3, "fs3").detach().cpu().numpy().astype(dtype)
    if arr.ndim != 2:
        raise ValueError(f"fs3: expected (channels, clip_dim), got shape {arr.shape}")
    path = os.fspath(path)
    if not path.endswith(".npy"):
        path = path + ".npy"
    np.save(path, arr)
    return path


def load_fs3(path: Union[str, os.PathLike], generator: Any = None, *, style_channels: Optional[Sequence[int]] = None,
             conv_indices: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Load ``fs3.npy`` (the published file or :func:`save_fs3` output) as a float32 tensor (C, D).

    Accepts float16/float32/float64.  Validates a 2-D array; with ``generator`` (or
    ``style_channels`` + ``conv_indices``) also that the row count is at most the
    generator's conv-channel total and ends on a conv-layer boundary (e.g. 5376 or
    6048 rows for FFHQ-1024).
    """
    path = os.fspath(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"{path}: not a numpy .npy array ({e})") from None
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D fs3 array (channels, clip_dim), got shape {arr.shape}")
    if arr.dtype.kind != "f":
        raise ValueError(f"{path}: expected a floating-point fs3 array, got dtype {arr.dtype}")
    fs3 = torch.from_numpy(arr.astype(np.float32))
    _check_finite(fs3, f"{path}: fs3")
    if generator is not None:
        style_channels = list(generator.style_channels)
        conv_indices = list(generator.conv_style_indices)
    if style_channels is not None and conv_indices is not None:
        bounds = np.cumsum([0] + [int(style_channels[i]) for i in conv_indices])
        if arr.shape[0] > bounds[-1] or arr.shape[0] not in set(bounds.tolist()[1:]):
            raise ValueError(
                f"{path}: fs3 has {arr.shape[0]} rows, which does not fit this generator: expected at most "
                f"{int(bounds[-1])} conv channels, ending on a conv-layer boundary (valid row counts: {bounds.tolist()[1:]})"
            )
    return fs3


# ----------------------------------------------------------------------------- pipeline

@dataclass
class GlobalDirectionsOutput:
    """Result of :class:`GlobalDirections`.

    ``images``: (N, 3, H, W) — or (N, K, 3, H, W) for a sequence of K alphas — float
    images as the generator returns them (nominally [-1, 1]; None with
    ``return_images=False``); ``styles``: edited codes, list of (N, C_l) (or (N, K, C_l));
    ``num_channels``: channels with |r| ≥ β; ``direction``: the channel direction ds
    (fs3 rows,); ``boundary``: per-S-layer α=1 step (σ ⊙ ds, zeros on ToRGB); ``beta``: the
    threshold used (after auto-β); ``alpha``; ``dt``: the text direction.
    """

    images: Optional[torch.Tensor]
    styles: list
    num_channels: int
    direction: torch.Tensor
    beta: float
    boundary: list = field(default_factory=list)
    alpha: Any = None
    dt: Optional[torch.Tensor] = None

    def images_uint8(self) -> torch.Tensor:
        """The reference uint8 conversion of :attr:`images` (NHWC; step axis kept)."""
        if self.images is None:
            raise ValueError("no images (called with return_images=False)")
        if self.images.ndim == 5:
            n, k = self.images.shape[:2]
            return to_uint8(self.images.flatten(0, 1)).reshape(n, k, *self.images.shape[3:], 3)
        return to_uint8(self.images)


def as_fs3(fs3: Union[str, os.PathLike, torch.Tensor, np.ndarray], generator: Any) -> torch.Tensor:
    """``fs3`` (path to ``fs3.npy`` or array) as a float (channels, clip_dim) tensor whose rows end on
    a conv-layer boundary of ``generator`` (ValueError otherwise)."""
    if isinstance(fs3, (str, os.PathLike)):
        return load_fs3(fs3, generator)
    fs3 = _as_tensor(fs3, "fs3").float()
    if fs3.ndim != 2:
        raise ValueError(f"fs3: expected (channels, clip_dim), got {tuple(fs3.shape)}")
    split_to_layers(torch.zeros(fs3.shape[0]), generator.style_channels, generator.conv_style_indices)  # validates rows
    return fs3


def relevant_channels(clip_model: Any, generator: Any, fs3: torch.Tensor, target: str, neutral: str, beta: float,
                      templates: Optional[Sequence[str]] = None) -> tuple[list[torch.Tensor], int]:
    """The channel direction of (``target``, ``neutral``) at threshold ``beta``, one ``(C_l,)`` tensor
    per StyleSpace layer of ``generator``: ``ds = fs3·Δt`` where ``|fs3·Δt| ≥ β``, scaled to max
    |ds| = 1, 0 elsewhere and on ToRGB layers (Δt over ``templates``, default the 79 ImageNet
    ones); and the number of channels kept.  What the optimisation's and the mapper's
    ``channel_beta`` restrict themselves to."""
    dt = text_direction(clip_model, target, neutral, IMAGENET_TEMPLATES if templates is None else templates)
    ds, num = channel_direction(fs3, dt.to(fs3.device), _check_beta(beta))
    return split_to_layers(ds, generator.style_channels, generator.conv_style_indices), num


class GlobalDirections:
    """Text-driven StyleSpace editing with a precomputed fs3 (diffusers-style pipeline).

    >>> pipe = GlobalDirections(generator, clip_model, fs3="fs3.npy")   # statistics computed on first use
    >>> out = pipe(w_plus, target="face with blue eyes", neutral="face with eyes", alpha=4.1, beta=0.15)
    >>> out.images, out.num_channels

    ``style_mean``/``style_std``: per-layer lists (or flat vectors); when omitted they
    are computed with :func:`style_statistics` (``stats_n`` samples of the seed-5
    stream, truncation 0.7) on first use.  ``c_threshold``: auto-β channel count
    (20 for FFHQ, 100 for other datasets in the reference GUI).
    """

    def __init__(self, generator: Any, clip_model: Any = None, fs3: Union[None, str, os.PathLike, torch.Tensor] = None,
                 style_mean: Any = None, style_std: Any = None, *, templates: Sequence[str] = IMAGENET_TEMPLATES,
                 c_threshold: int = 20, stats_n: int = 100_000, stats_seed: int = 5, truncation: float = 0.7,
                 render_batch_size: int = 8):
        self.generator = generator
        self.clip_model = clip_model
        channels = list(generator.style_channels)
        self.fs3 = as_fs3(fs3, generator) if fs3 is not None else None
        self.style_mean = _layer_std_list(style_mean, channels) if style_mean is not None else None
        self.style_std = _layer_std_list(style_std, channels) if style_std is not None else None
        self.templates = tuple(templates)
        self.c_threshold = c_threshold
        self.stats_n, self.stats_seed, self.truncation = stats_n, stats_seed, truncation
        self.render_batch_size = render_batch_size

    def ensure_statistics(self, progress: bool = True) -> None:
        if self.style_std is None:
            m, s = style_statistics(self.generator, n=self.stats_n, truncation=self.truncation, seed=self.stats_seed,
                                    progress=progress)
            self.style_mean = self.style_mean or m
            self.style_std = s

    def text_direction(self, target: str, neutral: str) -> torch.Tensor:
        if self.clip_model is None:
            raise ValueError("no clip_model: pass one to GlobalDirections or give text_direction= explicitly")
        return text_direction(self.clip_model, target, neutral, self.templates)

    def to_styles(self, styles_or_w_plus: Any) -> list[torch.Tensor]:
        """W+ latents (N, num_ws, w_dim) / (num_ws, w_dim) or StyleSpace codes (list of (N, C_l)) → codes."""
        g = self.generator
        channels = list(g.style_channels)
        if isinstance(styles_or_w_plus, (list, tuple)):
            styles = list(styles_or_w_plus)
            if len(styles) != len(channels):
                raise ValueError(f"styles: expected {len(channels)} StyleSpace tensors (one per layer), got {len(styles)}")
            out = []
            for i, (s, c) in enumerate(zip(styles, channels)):
                s = _as_tensor(s, f"styles[{i}]")
                if s.ndim == 1:
                    s = s[None]
                if s.ndim != 2 or s.shape[1] != c:
                    raise ValueError(f"styles[{i}]: expected shape (N, {c}), got {tuple(s.shape)}")
                if not bool(torch.isfinite(s).all()):
                    raise ValueError(f"styles[{i}] contains NaN or infinite values")
                out.append(s.to(_gen_device(g)))
            if len({s.shape[0] for s in out}) != 1:
                raise ValueError("styles: all layers must have the same batch size")
            return out
        x = _as_tensor(styles_or_w_plus, "latents")
        expected = f"(N, {g.num_ws}, {g.w_dim}) W+ latents or a single ({g.num_ws}, {g.w_dim}) W+ latent"
        if x.ndim == 2 and tuple(x.shape) == (g.num_ws, g.w_dim):
            x = x[None]
        if x.ndim != 3 or tuple(x.shape[1:]) != (g.num_ws, g.w_dim):
            raise ValueError(f"latents: expected {expected}, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"latents: expected a floating-point tensor, got {x.dtype}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("latents contain NaN or infinite values")
        with torch.no_grad():
            return g.styles(x.to(_gen_device(g), torch.float32))

    def direction(self, dt: torch.Tensor, beta: float) -> tuple[torch.Tensor, int, list[torch.Tensor]]:
        """(ds, num_channels, boundary) for a text direction ``dt``."""
        if self.fs3 is None:
            raise ValueError("no fs3: pass fs3= (array or path to fs3.npy) to GlobalDirections")
        self.ensure_statistics()
        ds, num = channel_direction(self.fs3, dt, beta)
        boundary = split_to_layers(ds, self.generator.style_channels, self.generator.conv_style_indices, self.style_std)
        return ds, num, boundary

    @torch.no_grad()
    def render(self, styles: Sequence[torch.Tensor], noise_mode: str = "const") -> torch.Tensor:
        lead = styles[0].shape[:-1]
        flat = [s.reshape(-1, s.shape[-1]) for s in styles]
        n = flat[0].shape[0]
        parts = []
        for a in range(0, n, self.render_batch_size):
            parts.append(self.generator.synthesis_from_styles([s[a:a + self.render_batch_size] for s in flat],
                                                              noise_mode=noise_mode))
        img = torch.cat(parts)
        return img.reshape(*lead, *img.shape[1:])

    def __call__(self, styles_or_w_plus: Any, target: Optional[str] = None, neutral: Optional[str] = None,
                 alpha: Any = 4.1, beta: float = 0.15, manipulate_layers: Any = None, *, auto_beta: bool = False,
                 text_direction: Optional[torch.Tensor] = None, return_images: bool = True,
                 noise_mode: str = "const") -> GlobalDirectionsOutput:
        """Edit ``styles_or_w_plus`` toward ``target`` (relative to ``neutral``).

        ``alpha``: number or sequence (step axis K, see :func:`apply_direction`);
        ``beta``: relevance threshold in [0, 1]; ``auto_beta=True`` picks β with
        :func:`auto_beta` (``c_threshold`` of the pipeline) instead;
        ``text_direction``: a precomputed dt (then target/neutral are not needed);
        ``manipulate_layers``: None, an S index or a list of S indices.
        """
        styles = self.to_styles(styles_or_w_plus)
        if text_direction is None:
            if target is None or neutral is None:
                raise ValueError("give target and neutral prompts (or text_direction=)")
            dt = self.text_direction(target, neutral)
        else:
            dt = _as_tensor(text_direction, "text_direction").reshape(-1)
        if auto_beta:
            if self.fs3 is None:
                raise ValueError("no fs3: pass fs3= to GlobalDirections")
            beta = _auto_beta(self.fs3, dt, c_threshold=self.c_threshold)
        else:
            beta = _check_beta(beta)
        ds, num, boundary = self.direction(dt, beta)
        edited = apply_direction(styles, boundary, alpha, manipulate_layers)
        images = self.render(edited, noise_mode=noise_mode) if return_images else None
        return GlobalDirectionsOutput(images=images, styles=edited, num_channels=num, direction=ds, beta=float(beta),
                                      boundary=boundary, alpha=alpha, dt=dt)
