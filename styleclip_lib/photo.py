"""Edit the face in a photo with a text prompt, end to end.

:func:`edit_photo` chains the kit's parts::

    load_image  →  align  →  invert  →  edit (global directions | optimisation | mapper)  →  paste back

    res = edit_photo("me.jpg", "purple hair", models="ffhq", paste_back=True)
    res.aligned, res.reconstruction, res.edited     # PIL crops (generator resolution)
    res.pasted                                      # the photo with the edited face blended in
    res.timings, res.parameters, res.inversion.metrics()

**Alignment** depends on the model set:

* ``'ffhq'`` (and any model set other than ``'toy'``): FFHQ alignment
  (:func:`~styleclip_lib.align.align_face`) with dlib's 68 landmarks (or ``landmarks=``), to the
  generator's resolution (1024), plus a second crop from the same landmarks at the encoder's input
  size when it differs (256 for e4e), so the encoder never sees a resampled 1024 crop.
* ``'toy'``: the toy world draws its faces in a fixed frame (eyes on a fixed row, symmetric about
  the centre), which is *not* FFHQ's crop (FFHQ scales by eye/mouth distances that vary with the
  toy identity).  With ``landmarks=`` (eye centres and mouth corners: 4, 5 or 68 points, e.g. from
  :func:`styleclip_lib.toy.render.landmarks` scaled into the photo) the face is mapped into that
  frame by a similarity: the eye midpoint goes where the renderer puts it, the eye line becomes
  horizontal and the scale is the geometric mean of the eye-spacing and eye-to-mouth ratios to the
  average toy face (:func:`align_toy_face`; exact for an average face, within ~7 % in scale
  otherwise, since those distances vary with identity).  Without landmarks the image *is* an
  aligned toy face: it must be square and is resized to 64 px (the whole image is the crop).

**Noise maps**: when the inversion optimised them (projection), the reconstruction and the edit are
both rendered with them, so the edit keeps the reconstructed detail.

Errors are the kit's: :class:`~styleclip_lib.photo_io.ImageError` subclasses for unusable inputs
(not an image, truncated, empty, too large), :class:`~styleclip_lib.landmarks.NoFaceError` when no
face is found, ``ValueError`` for an empty prompt, an unknown method or option.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .photo_io import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

__all__ = ["edit_photo", "PhotoEditResult", "align_toy_face", "toy_frame_face", "EDIT_METHODS", "main"]

#: edit methods of :func:`edit_photo`
EDIT_METHODS = ("global", "optimize", "mapper")
#: options each edit method accepts as ``**method_kwargs``
_METHOD_OPTIONS = {
    "global": ("alpha", "beta", "manipulate_layers", "auto_beta"),
    "optimize": ("steps", "lr", "lr_rampup", "lr_rampdown", "l2_lambda", "id_lambda", "space", "schedule",
                 "callback", "save_intermediate_every"),
    "mapper": ("strength",),
}
DEFAULT_NEUTRAL = "a face"


# ----------------------------------------------------------------------------- result
@dataclass
class PhotoEditResult:
    """What :func:`edit_photo` returns.

    Attributes:
        prompt, neutral, method: the edit asked for (``neutral`` only for ``'global'``).
        original: the photo as loaded (EXIF-uprighted RGB ``PIL.Image``).
        aligned: the aligned face crop at the generator's resolution (``PIL.Image``).
        reconstruction: the inversion's rendering of ``aligned`` (``PIL.Image``).
        edited: the edited face crop (``PIL.Image``).
        pasted: ``original`` with the edited face blended back (``paste_back=True``), else ``None``.
        w_plus_source: (1, num_ws, w_dim) the inverted latent.
        w_plus_edited: (1, num_ws, w_dim) the edited latent; ``None`` for global directions, which
            edit StyleSpace (see ``styles_edited``).
        styles_edited: the edited StyleSpace codes (global directions, optimisation in S, a StyleSpace mapper).
        edited_tensor: (1, 3, H, W) the edited image in generator range.
        inversion: the :class:`~styleclip_lib.invert.InversionResult` (metrics, noise maps).
        face: the :class:`~styleclip_lib.align.AlignedFace` (crop ↔ photo maps).
        edit_output: the edit method's own result object.
        timings: seconds per stage (``load``, ``models``, ``align``, ``invert``, ``edit``,
            ``paste``) and ``total``.
        parameters: everything used: model set, device, alignment recipe, sizes, inversion and
            method options (defaults filled in).
    """

    prompt: str
    neutral: Optional[str]
    method: str
    original: Any
    aligned: Any
    reconstruction: Any
    edited: Any
    pasted: Any
    w_plus_source: torch.Tensor
    w_plus_edited: Optional[torch.Tensor]
    styles_edited: Optional[list]
    edited_tensor: torch.Tensor
    inversion: Any
    face: Any
    edit_output: Any = field(default=None, repr=False)
    timings: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)

    def comparison(self, scale: int = 1):
        """One ``PIL.Image``: aligned | reconstruction | edited, side by side."""
        from PIL import Image

        tiles = [self.aligned, self.reconstruction, self.edited]
        w, h = tiles[0].size
        grid = Image.new("RGB", (3 * w + 4, h), (255, 255, 255))
        for i, t in enumerate(tiles):
            grid.paste(t.convert("RGB").resize((w, h)), (i * (w + 2), 0))
        if scale > 1:
            grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
        return grid

    def save(self, directory: Any, stem: str = "edit") -> dict:
        """Write ``<stem>_aligned|reconstruction|edited|comparison.png`` (and ``_pasted.png``) into
        ``directory``; returns ``{name: path}``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        out = {}
        items = {"aligned": self.aligned, "reconstruction": self.reconstruction, "edited": self.edited,
                 "comparison": self.comparison()}
        if self.pasted is not None:
            items["pasted"] = self.pasted
        for name, img in items.items():
            p = d / f"{stem}_{name}.png"
            img.save(p)
            out[name] = p
        return out


# ----------------------------------------------------------------------------- toy alignment
def _toy_template(size: int) -> np.ndarray:
    """(4, 2) eye centres and mouth corners of the average toy face in a ``size``-px render."""
    from .toy import render as R

    avg = R.FaceParams.from_dict({**{a: R.ATTRIBUTES[a][0] for a in R.ATTR_NAMES}, **{p: 0.5 for p in R.IDENTITY}})
    lm = R.landmarks(avg, size)
    return np.array([lm["left_eye"], lm["right_eye"], lm["mouth_left"], lm["mouth_right"]], dtype=np.float64)


def _similarity_fit(src: np.ndarray, dst: np.ndarray) -> tuple[complex, complex]:
    """Least-squares similarity ``z ↦ a·z + b`` (points as complex numbers) from src to dst."""
    s = src[:, 0] + 1j * src[:, 1]
    d = dst[:, 0] + 1j * dst[:, 1]
    sm, dm = s.mean(), d.mean()
    a = np.vdot(s - sm, d - dm) / np.vdot(s - sm, s - sm)
    return complex(a), complex(dm - a * sm)


def _apply_sim(a: complex, b: complex, p: np.ndarray) -> np.ndarray:
    z = a * (p[:, 0] + 1j * p[:, 1]) + b
    return np.stack([z.real, z.imag], 1)


def _pick_face(landmarks: Any, face_index: Optional[int]):
    from .align import FaceIndexError
    from .landmarks import NoFaceError, as_face_landmarks

    faces = as_face_landmarks(landmarks)
    if not faces:
        raise NoFaceError("landmarks: an empty list of faces was given")
    if face_index is None:
        return faces[int(np.argmax([f.area for f in faces]))], len(faces)
    if isinstance(face_index, bool) or not isinstance(face_index, (int, np.integer)):
        raise TypeError(f"face_index must be an int or None, got {type(face_index).__name__}")
    if not -len(faces) <= face_index < len(faces):
        raise FaceIndexError(f"face_index={face_index} is out of range: {len(faces)} face(s) given "
                             f"(valid indices 0..{len(faces) - 1})")
    return faces[int(face_index)], len(faces)


def align_toy_face(image: Any, landmarks: Any, size: int = 64, face_index: Optional[int] = None):
    """Map a toy face in ``image`` into the toy renderer's frame (see the module docstring).

    ``landmarks``: one face's points (4: eye centres + mouth corners; 5: eyes, nose, mouth
    corners; 68: dlib) in the image's pixels, or a list of faces (``face_index`` picks one;
    default the largest).  Returns an :class:`~styleclip_lib.align.AlignedFace` (``size`` px) whose
    ``matrix`` / ``inverse`` map between the photo and the crop, so ``paste_back`` works.
    """
    from .align import align_face, ffhq_quad

    face, n_faces = _pick_face(landmarks, face_index)
    k = face.keypoints()                                           # (4, 2) in the photo
    k0 = _toy_template(size)                                       # (4, 2) in the toy frame
    eye_l, eye_r, m_l, m_r = k
    eye_mid, mouth_mid = (eye_l + eye_r) / 2, (m_l + m_r) / 2
    t_eye_mid, t_mouth_mid = (k0[0] + k0[1]) / 2, (k0[2] + k0[3]) / 2
    d_eye, d_em = np.hypot(*(eye_r - eye_l)), np.hypot(*(mouth_mid - eye_mid))
    if d_eye < 1e-6 or d_em < 1e-6:
        raise ValueError("landmarks are degenerate (eyes and mouth coincide): cannot align the face")
    scale = float(np.sqrt((np.hypot(*(k0[1] - k0[0])) / d_eye) * (np.hypot(*(t_mouth_mid - t_eye_mid)) / d_em)))
    angle = float(np.arctan2(*(eye_r - eye_l)[::-1]))
    a = scale * np.exp(-1j * angle)                                # photo → toy frame: z ↦ a (z − eye_mid) + t_eye_mid
    b = complex(*t_eye_mid) - a * complex(*eye_mid)
    # Virtual keypoints whose FFHQ quad is exactly the toy frame's square pulled back into the photo
    # (the FFHQ quad is equivariant under similarities), so align_face does the warping.
    q0, _ = ffhq_quad(k0)
    frame = np.array([[-0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5], [size - 0.5, -0.5]])
    ua, ub = _similarity_fit(q0, frame)                            # FFHQ quad of the template → frame
    virtual = _apply_sim(1 / a, -b / a, _apply_sim(ua, ub, k0))    # toy frame → photo
    aligned = align_face(image, output_size=size, landmarks=virtual, max_pixels=None, max_bytes=None)
    aligned.landmarks = face
    aligned.box = tuple(face.box)
    aligned.num_faces = n_faces
    aligned.face_index = 0 if face_index is None else int(face_index)
    aligned.extra["recipe"] = "toy"
    return aligned


def toy_frame_face(image: Any, size: int = 64, tolerance: float = 0.02):
    """An already aligned toy face (the whole, square image) as an
    :class:`~styleclip_lib.align.AlignedFace` of ``size`` px (a plain resize; ``paste_back``
    then maps the crop onto the whole image)."""
    from PIL import Image

    from .align import AlignedFace
    from .landmarks import FaceLandmarks
    from .photo_io import load_image

    rgb = load_image(image, max_pixels=None, max_bytes=None)
    h, w = rgb.shape[:2]
    if abs(w - h) > tolerance * max(w, h):
        raise ValueError(
            f"image: a {w}×{h} photo is not an aligned toy face (those are square); pass landmarks= "
            "(eye centres and mouth corners) to find the face in it, or crop it to the face")
    pil = Image.fromarray(rgb)
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.LANCZOS)
    # aligned pixel (u, v) → original pixel ((u + 0.5)·W/S − 0.5, (v + 0.5)·H/S − 0.5)
    sx, sy = w / size, h / size
    inverse = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    nominal = _apply_sim(complex(sx), 0j, _toy_template(size))  # the average face's keypoints (nominal)
    nominal[:, 1] = nominal[:, 1] * (sy / sx)
    quad = np.array([[-0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5], [w - 0.5, -0.5]])
    face = FaceLandmarks(box=(0.0, 0.0, float(w), float(h)), points=nominal, backend="toy-frame")
    return AlignedFace(image=pil, quad=quad, matrix=np.linalg.inv(inverse), inverse=inverse, landmarks=face,
                       box=(0.0, 0.0, float(w), float(h)), output_size=size, source_size=(w, h), qsize=float(w),
                       transform_size=size, extra={"recipe": "toy-frame"})


# ----------------------------------------------------------------------------- helpers
def _check_method_kwargs(method: str, kwargs: dict) -> None:
    allowed = _METHOD_OPTIONS[method]
    bad = sorted(set(kwargs) - set(allowed))
    if bad:
        other = [m for m, opts in _METHOD_OPTIONS.items() if m != method and set(bad) <= set(opts)]
        hint = f" (those are options of method={other[0]!r})" if other else ""
        raise ValueError(f"{', '.join(bad)}: not an option of method={method!r}{hint}; "
                         f"it accepts {', '.join(allowed)}")
    if method == "global" and "alpha" in kwargs:
        a = kwargs["alpha"]
        if isinstance(a, bool) or not isinstance(a, (int, float, np.floating, np.integer)):
            raise ValueError(f"alpha: expected one number for a photo edit, got {a!r}")


def _mapper_pipeline(generator: Any, mapper: Any):
    from .methods.mapper import LatentMapperEdit
    from .models.mapper import LevelsMapper, StyleSpaceMapper

    if isinstance(mapper, LatentMapperEdit):
        if mapper.generator is not generator:
            raise ValueError("mapper: this LatentMapperEdit was built for another generator than the model set's")
        return mapper
    if isinstance(mapper, (LevelsMapper, StyleSpaceMapper)):
        return LatentMapperEdit(generator, mapper)
    return LatentMapperEdit.from_pretrained(generator, mapper)


def _to_pil(x: torch.Tensor):
    from .imageio import tensor_to_pil

    return tensor_to_pil(x[:1])


# ----------------------------------------------------------------------------- the pipeline
def edit_photo(image: Any, prompt: str, method: str = "global", *, models: Any = "toy", neutral: Optional[str] = None,
               paste_back: bool = False, invert: Any = "encoder", face_index: Optional[int] = None, device: Any = None,
               landmarks: Any = None, backend: Any = None, mapper: Any = None, invert_options: Optional[dict] = None,
               paste_options: Optional[dict] = None, max_pixels: Optional[float] = DEFAULT_MAX_PIXELS,
               max_bytes: Optional[int] = DEFAULT_MAX_BYTES, progress: bool = False, **method_kwargs) -> PhotoEditResult:
    """Edit the face in a photo with a text prompt.

    Args:
        image: the photo: path, bytes, file, ``PIL.Image`` or array (see
            :func:`~styleclip_lib.photo_io.load_image`).
        prompt: the target text, e.g. ``'purple hair'``.
        method: ``'global'`` (global directions; ``alpha`` 4.1, ``beta`` 0.15), ``'optimize'``
            (latent optimisation; ``steps``, ``l2_lambda``, ``id_lambda``, ...) or ``'mapper'``
            (needs ``mapper=``; ``strength``).  Options go in ``**method_kwargs``.
        models: ``'toy'`` (default), ``'ffhq'`` or a :class:`~styleclip_lib.worlds.ModelSet`.
        neutral: global directions' neutral text (default ``'a face'``).
        paste_back: also blend the edited face back into the photo (``result.pasted``), with
            :func:`~styleclip_lib.align.paste_back` (``paste_options``: ``feather``, ``mask``).
        invert: ``'encoder'`` (default), ``'projection'`` or ``'encoder+projection'`` (see
            :func:`~styleclip_lib.invert.invert`; ``invert_options`` e.g. ``{'steps': 100}``), or an
            :class:`~styleclip_lib.invert.InversionResult` of this face to reuse (several prompts,
            one inversion).  Ctrl-C during a projection stops it and the edit goes on from the
            partial inversion (``parameters['inversion_stopped'] == 'interrupted'``).
        face_index: which face when several (default the largest).
        device: where to load a model set given by name.
        landmarks: the face's landmarks in the photo (skips detection; required to find a toy
            face inside a larger image).
        backend: landmark backend (default dlib) for model sets other than ``'toy'``.
        mapper: for ``method='mapper'``: a checkpoint path / registry name, a ``LevelsMapper`` or a
            ``LatentMapperEdit``.
        max_pixels, max_bytes: input limits (see ``load_image``).
        progress: progress bars of the optimisation methods.

    Raises:
        ValueError: empty prompt, unknown method / invert method / option, ``mapper`` missing.
        styleclip_lib.photo_io.ImageError: the input is not a usable image (a ``ValueError``).
        styleclip_lib.landmarks.NoFaceError: no face found (a ``ValueError``).
        styleclip_lib.landmarks.BackendUnavailableError: the landmark backend is not installed.
    """
    from PIL import Image

    from .invert import METHODS as INVERT_METHODS, InversionResult, _as_model_set, encoder_input_size
    from .invert import invert as run_inversion
    from .latents import check_prompt
    from .photo_io import load_image

    t_start = time.perf_counter()
    timings: dict = {}
    # ---- validate everything cheap first
    text = check_prompt(prompt)
    if method not in EDIT_METHODS:
        raise ValueError(f"method: expected one of {EDIT_METHODS}, got {method!r}")
    _check_method_kwargs(method, method_kwargs)
    if method == "mapper" and mapper is None:
        raise ValueError("method='mapper' needs mapper= (a mapper checkpoint path or registry name such as "
                         "'mapper-purple_hair', a LevelsMapper or a LatentMapperEdit)")
    if method != "mapper" and mapper is not None:
        raise ValueError(f"mapper= is only used with method='mapper' (got method={method!r})")
    if method == "global":
        neutral = check_prompt(DEFAULT_NEUTRAL if neutral is None else neutral, name="neutral")
    elif neutral is not None:
        raise ValueError(f"neutral= is only used with method='global' (got method={method!r})")
    reuse = isinstance(invert, InversionResult)
    if not reuse and invert not in INVERT_METHODS:
        raise ValueError(f"invert: expected one of {INVERT_METHODS} or an InversionResult, got {invert!r}")
    invert_options = dict(invert_options or {})
    if invert == "encoder" and invert_options:
        raise ValueError(f"invert_options {sorted(invert_options)}: only for invert='projection' or 'encoder+projection'")
    paste_options = dict(paste_options or {})
    bad_paste = sorted(set(paste_options) - {"feather", "mask"})
    if bad_paste:
        raise ValueError(f"paste_options: unknown {', '.join(bad_paste)} (expected feather, mask)")
    if not isinstance(models, str) and device is not None:
        raise ValueError("device= is for a model set given by name; a ModelSet already has its device")

    # ---- load the photo (clear ImageError subclasses)
    t = time.perf_counter()
    rgb = load_image(image, max_pixels=max_pixels, max_bytes=max_bytes)
    timings["load"] = time.perf_counter() - t

    t = time.perf_counter()
    ms = _as_model_set(models, device)
    g = ms.generator
    size = int(g.resolution)
    timings["models"] = time.perf_counter() - t

    # ---- align
    t = time.perf_counter()
    encoder_image = None
    enc_size = None
    needs_encoder = not reuse and invert in ("encoder", "encoder+projection")
    if needs_encoder:
        enc_size = encoder_input_size(ms.encoder)
    if ms.name == "toy":
        if landmarks is not None:
            face = align_toy_face(rgb, landmarks, size, face_index)
            recipe = "toy-landmarks"
            if enc_size and enc_size != size:
                encoder_image = align_toy_face(rgb, face.landmarks, enc_size).image
        else:
            if face_index not in (None, 0):
                raise ValueError("face_index: without landmarks a toy image holds exactly one face")
            face = toy_frame_face(rgb, size)
            recipe = "toy-frame"
    else:
        from .align import align_face

        face = align_face(rgb, output_size=size, face_index=face_index, backend=backend, landmarks=landmarks,
                          max_pixels=None, max_bytes=None)
        recipe = "ffhq"
        if enc_size and enc_size != size:
            encoder_image = align_face(rgb, output_size=enc_size, landmarks=face.landmarks, max_pixels=None,
                                       max_bytes=None).image
    timings["align"] = time.perf_counter() - t

    # ---- invert
    t = time.perf_counter()
    if reuse:
        inversion = invert
        g_shape = (g.num_ws, g.w_dim)
        if tuple(inversion.w_plus.shape[1:]) != g_shape or inversion.w_plus.shape[0] != 1:
            raise ValueError(f"invert: the InversionResult holds latents of shape {tuple(inversion.w_plus.shape)}, "
                             f"expected (1, {g_shape[0]}, {g_shape[1]}) for this model set")
    else:
        inversion = run_inversion(face, ms, invert, encoder_image=encoder_image, progress=progress, **invert_options)
    timings["invert"] = time.perf_counter() - t
    w_src = inversion.w_plus.detach()

    # ---- edit
    t = time.perf_counter()
    used = dict(method_kwargs)
    if method == "global":
        used = {"alpha": 4.1, "beta": 0.15, **used}
        gd = ms.global_directions()
        out = gd(w_src, text, neutral, **used)
        used.update(num_channels=int(out.num_channels), beta=float(out.beta))
    elif method == "optimize":
        used = {"progress": progress, **used}
        opt = ms.optimizer(with_identity=float(used.get("id_lambda", 0.0) or 0.0) > 0)
        out = opt(text, w_src, **used)
        used.pop("progress")
        used.pop("callback", None)
        sig = inspect.signature(type(opt).__call__).parameters
        used = {**{k: sig[k].default for k in _METHOD_OPTIONS["optimize"] if k in sig and k != "callback"}, **used}
        used["stopped"] = out.stopped
    else:
        pipe = _mapper_pipeline(g, mapper)
        used = {"strength": 0.1, **used}
        out = pipe(w_src, **used)
        used["mapper"] = str(mapper) if isinstance(mapper, (str, Path)) else type(mapper).__name__
    # every method's output is either an edited W+ or edited StyleSpace codes (global directions,
    # optimisation in S, a StyleSpace mapper); both render with the inversion's noise maps
    w_edited = getattr(out, "w_plus", None)
    styles_edited = None
    if w_edited is not None:
        w_edited = w_edited.detach()
        edited = inversion.render(g, w_plus=w_edited) if inversion.noises is not None else out.images
    else:
        styles_edited = out.styles
        edited = inversion.render(g, styles=styles_edited) if inversion.noises is not None else out.images
    edited = edited.detach()
    timings["edit"] = time.perf_counter() - t

    # ---- paste back
    pasted = None
    if paste_back:
        from .align import paste_back as _paste_back

        t = time.perf_counter()
        pasted = Image.fromarray(_paste_back(rgb, edited[:1], face, **paste_options))
        timings["paste"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start

    parameters = {
        "prompt": text, "neutral": neutral, "method": method, "method_options": used,
        "models": ms.name, "device": str(ms.device), "alignment": recipe, "output_size": size,
        "encoder_input_size": enc_size if encoder_image is not None else None,
        "face_index": face.face_index, "num_faces": face.num_faces,
        "invert": inversion.method if reuse else invert, "invert_options": invert_options,
        "inversion_stopped": inversion.stopped,
        "inversion_metrics": inversion.metrics(), "paste_back": bool(paste_back), "paste_options": paste_options,
        "image_size": (int(rgb.shape[1]), int(rgb.shape[0])),
    }
    return PhotoEditResult(
        prompt=text, neutral=neutral, method=method, original=Image.fromarray(rgb), aligned=face.image.convert("RGB"),
        reconstruction=_to_pil(inversion.reconstruction), edited=_to_pil(edited), pasted=pasted,
        w_plus_source=w_src, w_plus_edited=w_edited, styles_edited=styles_edited, edited_tensor=edited,
        inversion=inversion, face=face, edit_output=out, timings=timings, parameters=parameters,
    )


# ----------------------------------------------------------------------------- command line
def main(argv: Optional[list] = None) -> int:
    """``python -m styleclip_lib.photo --image photo.jpg --prompt 'purple hair' [...]``."""
    import argparse
    import json
    import sys

    ap = argparse.ArgumentParser(prog="python -m styleclip_lib.photo", description="Edit the face in a photo with a text prompt.")
    ap.add_argument("--image", required=True, help="the photo (JPEG, PNG, ...)")
    ap.add_argument("--prompt", required=True, help="target text, e.g. 'purple hair'")
    ap.add_argument("--method", choices=EDIT_METHODS, default="global")
    ap.add_argument("--model", "--models", dest="models", default="toy", choices=["toy", "ffhq"])
    ap.add_argument("--neutral", default=None, help="global directions: the neutral text (default: 'a face')")
    ap.add_argument("--alpha", type=float, default=None, help="global directions: strength (4.1)")
    ap.add_argument("--beta", type=float, default=None, help="global directions: threshold (0.15)")
    ap.add_argument("--steps", type=int, default=None, help="optimisation steps (300)")
    ap.add_argument("--l2-lambda", type=float, default=None)
    ap.add_argument("--id-lambda", type=float, default=None)
    ap.add_argument("--mapper", default=None, help="mapper checkpoint or registry name (method mapper)")
    ap.add_argument("--strength", type=float, default=None, help="mapper strength (0.1)")
    ap.add_argument("--invert", default="encoder", choices=["encoder", "projection", "encoder+projection"])
    ap.add_argument("--invert-steps", type=int, default=None, help="projection steps")
    ap.add_argument("--paste-back", action="store_true", help="blend the edited face back into the photo")
    ap.add_argument("--face-index", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default="photo_edit.png", help="aligned | reconstruction | edited strip (PNG)")
    ap.add_argument("--json", default=None, help="also write timings and parameters here")
    a = ap.parse_args(argv)
    kw = {k: v for k, v in {"alpha": a.alpha, "beta": a.beta, "steps": a.steps, "l2_lambda": a.l2_lambda,
                            "id_lambda": a.id_lambda, "strength": a.strength}.items() if v is not None}
    try:
        res = edit_photo(a.image, a.prompt, a.method, models=a.models, neutral=a.neutral, paste_back=a.paste_back,
                         invert=a.invert, face_index=a.face_index, device=a.device, mapper=a.mapper,
                         invert_options={"steps": a.invert_steps} if a.invert_steps else None, progress=True, **kw)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    res.comparison(scale=max(1, 256 // res.aligned.width)).save(out)
    print(f"wrote aligned | reconstruction | edited to {out}")
    if res.pasted is not None:
        p = out.with_name(out.stem + "_pasted.png")
        res.pasted.save(p)
        print(f"wrote the photo with the edited face to {p}")
    info = {"timings": res.timings, "parameters": res.parameters}
    print(json.dumps({"timings": {k: round(v, 3) for k, v in res.timings.items()},
                      "inversion": res.parameters["inversion_metrics"]}))
    if a.json:
        Path(a.json).write_text(json.dumps(info, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
