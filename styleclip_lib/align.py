"""FFHQ-style face alignment, and pasting an edited aligned face back into the photo.

The crop is FFHQ's, computed exactly as NVlabs' ``ffhq-dataset`` ``recreate_aligned_images``
(which e4e / StyleCLIP / PTI ``utils/alignment.py`` copy)::

    eye_avg, eye_to_eye       from the two eye centres
    mouth_avg, eye_to_mouth   from the two mouth corners
    x  = eye_to_eye - flipud(eye_to_mouth) * [-1, 1];  x /= hypot(x)
    x *= max(hypot(eye_to_eye) * 2.0, hypot(eye_to_mouth) * 1.8)
    y  = flipud(x) * [-1, 1];   c = eye_avg + eye_to_mouth * 0.1
    quad = [c - x - y, c - x + y, c + x + y, c + x - y];   qsize = hypot(x) * 2

then the same shrink (integer LANCZOS downscale when the quad is over 4× the output), crop with
a 10 % border, reflection padding with the blur / median blend when the quad leaves the photo,
and ``PIL.Image.transform(QUAD, BILINEAR)`` to ``transform_size``, LANCZOS-resized to
``output_size``.  The only substitution is the blur: OpenCV's Gaussian (same σ, same 4σ
truncation, same ``reflect`` border) instead of ``scipy.ndimage.gaussian_filter``, so scipy is
not needed; the result differs by at most a grey level in the padded margin.

``transform_size`` defaults to ``4 × output_size`` (FFHQ renders 4096 → 1024; the supersampling
removes the aliasing of bilinear sampling when the face is larger than the output).
``transform_size=output_size`` reproduces e4e / StyleCLIP's ``align_face`` pixel for pixel
(up to that blur).

Coordinates are pixel indices (pixel ``(i, j)`` has its centre at ``x = i, y = j``, as dlib
landmarks and ``cv2.warpAffine`` use).  :class:`AlignedFace` carries the exact affine maps of
the produced crop (``matrix``: original → aligned, ``inverse``: aligned → original), including
the shrink / crop / pad steps, so the aligned eye points map back onto the landmarks.

API::

    face = align_face("me.jpg", output_size=256)           # dlib 68-point landmarks
    face = align_face(img, landmarks=pts68)                  # landmarks given: no backend
    face.image                                               # PIL RGB, 256×256
    face.to_original(points_in_crop), face.to_aligned(points_in_photo)
    out = paste_back(img, edited_crop, face, feather=0.1)    # uint8 photo with the edit
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .landmarks import (
    BackendUnavailableError,
    FaceLandmarks,
    NoFaceError,
    as_face_landmarks,
    ffhq_keypoints,
    get_backend,
)
from .photo_io import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, load_image

__all__ = [
    "AlignedFace",
    "align_face",
    "ffhq_quad",
    "paste_back",
    "NoFaceError",
    "FaceIndexError",
    "BackendUnavailableError",
]


class FaceIndexError(ValueError, IndexError):
    """``face_index`` does not name one of the faces found."""


# --------------------------------------------------------------------------- quad math
def ffhq_quad(landmarks: Any) -> tuple[np.ndarray, float]:
    """FFHQ's oriented crop: ``(quad, qsize)`` from landmarks (see :func:`ffhq_keypoints`).

    ``quad`` is (4, 2) float64 in the landmarks' pixel coordinates, ordered as the recipe
    (and ``PIL``'s ``QUAD`` transform) wants: top-left, bottom-left, bottom-right, top-right of
    the aligned image.  ``qsize`` is its side length.
    """
    eye_left, eye_right, mouth_left, mouth_right = ffhq_keypoints(landmarks)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (mouth_left + mouth_right) * 0.5
    eye_to_mouth = mouth_avg - eye_avg

    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    norm = np.hypot(*x)
    if not np.isfinite(norm) or norm < 1e-9:
        raise ValueError("landmarks are degenerate (eyes and mouth coincide): cannot orient a crop")
    x /= norm
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    qsize = float(np.hypot(*x) * 2)
    return quad, qsize


def _translate(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _apply(m: np.ndarray, points: Any) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    single = p.ndim == 1
    p = p.reshape(-1, 2)
    out = p @ m[:2, :2].T + m[:2, 2]
    return out[0] if single else out


def _grid_to_pixels(width: float, height: float, out_w: float, out_h: float) -> np.ndarray:
    """Pixel-index map from an (out_w × out_h) resampling of a (width × height) image back to it."""
    sx, sy = width / out_w, height / out_h
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(img, [s, s, 0])`` (truncate=4, mode='reflect') via OpenCV."""
    import cv2

    if sigma <= 0:
        return img.copy()
    radius = int(4.0 * sigma + 0.5)
    k = 2 * radius + 1
    return cv2.GaussianBlur(img, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def _ffhq_warp(
    img, quad: np.ndarray, qsize: float, output_size: int, transform_size: int, enable_padding: bool
):
    """The recipe's shrink / crop / pad / QUAD transform.  Returns (PIL image, aligned→original 3×3)."""
    from PIL import Image

    quad = quad.copy()
    src_w, src_h = img.size
    to_orig = np.eye(3)  # working-image pixel → original pixel

    # Shrink.
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink)))
        img = img.resize(rsize, Image.LANCZOS)
        quad /= shrink
        qsize /= shrink
        to_orig = _grid_to_pixels(src_w, src_h, rsize[0], rsize[1])

    # Crop.
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))), int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0), min(crop[2] + border, img.size[0]), min(crop[3] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]
        to_orig = to_orig @ _translate(crop[0], crop[1])

    # Pad.
    pad = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))), int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
    pad = (max(-pad[0] + border, 0), max(-pad[1] + border, 0), max(pad[2] - img.size[0] + border, 0), max(pad[3] - img.size[1] + border, 0))
    if enable_padding and max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        arr = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
        h, w, _ = arr.shape
        y, x, _ = np.ogrid[:h, :w, :1]
        mask = np.maximum(
            1.0 - np.minimum(np.float32(x) / pad[0], np.float32(w - 1 - x) / pad[2]),
            1.0 - np.minimum(np.float32(y) / pad[1], np.float32(h - 1 - y) / pad[3]),
        )
        blur = qsize * 0.02
        arr += (_gaussian_blur(arr, blur) - arr) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)), "RGB")
        quad += pad[:2]
        to_orig = to_orig @ _translate(-float(pad[0]), -float(pad[1]))

    # Transform.
    img = img.transform((transform_size, transform_size), Image.QUAD, (quad + 0.5).flatten(), Image.BILINEAR)
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.LANCZOS)
    elif output_size > transform_size:
        img = img.resize((output_size, output_size), Image.BICUBIC)

    # Aligned pixel (u, v) of the output ↔ working pixel: PIL's QUAD samples output pixel u of
    # a T-wide image at nw + (ne - nw) (u + 0.5) / T (+ the same along sw - nw), and resizing
    # keeps (u + 0.5) / size, so the map is the same for any output size.
    nw, sw, ne = quad[0], quad[1], quad[3]
    ex, ey = (ne - nw) / output_size, (sw - nw) / output_size
    aligned_to_work = np.array(
        [[ex[0], ey[0], nw[0] + 0.5 * (ex[0] + ey[0])], [ex[1], ey[1], nw[1] + 0.5 * (ex[1] + ey[1])], [0.0, 0.0, 1.0]]
    )
    return img, to_orig @ aligned_to_work


# --------------------------------------------------------------------------- result
@dataclass
class AlignedFace:
    """An FFHQ-aligned crop and how it sits in the original photo.

    Attributes:
        image: the aligned crop, ``PIL.Image`` RGB, ``output_size`` square.
        quad: (4, 2) FFHQ quad in original pixel coordinates (top-left, bottom-left,
            bottom-right, top-right of the crop), as the recipe computes it.
        matrix: 3×3 affine, original pixel (x, y, 1) → aligned pixel.
        inverse: 3×3 affine, aligned pixel → original pixel (exact for the produced crop,
            i.e. including the recipe's integer shrink; equals ``quad`` up to < shrink/2 px).
        landmarks: the :class:`FaceLandmarks` used (original coordinates).
        box: the face box (left, top, right, bottom) in original pixels.
        output_size, source_size: crop side; original (width, height).
        face_index, num_faces: which face (largest first for detected faces) of how many.
    """

    image: Any
    quad: np.ndarray
    matrix: np.ndarray
    inverse: np.ndarray
    landmarks: FaceLandmarks
    box: tuple[float, float, float, float]
    output_size: int
    source_size: tuple[int, int]
    qsize: float = 0.0
    face_index: int = 0
    num_faces: int = 1
    transform_size: int = 0
    extra: dict = field(default_factory=dict, repr=False)

    @property
    def array(self) -> np.ndarray:
        """The aligned crop as an (S, S, 3) uint8 array."""
        return np.asarray(self.image.convert("RGB"))

    @property
    def affine(self) -> np.ndarray:
        """2×3 original → aligned (``cv2.warpAffine`` convention)."""
        return self.matrix[:2].copy()

    @property
    def inverse_affine(self) -> np.ndarray:
        """2×3 aligned → original."""
        return self.inverse[:2].copy()

    def to_aligned(self, points: Any) -> np.ndarray:
        """Map (x, y) point(s) from the original photo into the aligned crop."""
        return _apply(self.matrix, points)

    def to_original(self, points: Any) -> np.ndarray:
        """Map (x, y) point(s) from the aligned crop back into the original photo."""
        return _apply(self.inverse, points)

    @property
    def aligned_keypoints(self) -> np.ndarray:
        """(4, 2) eye centres and mouth corners in aligned-crop pixels."""
        return self.to_aligned(self.landmarks.keypoints())

    def paste_back(self, original_image: Any, edited_aligned_image: Any, **kwargs: Any):
        """Shortcut for :func:`paste_back` ``(original_image, edited_aligned_image, self, ...)``."""
        return paste_back(original_image, edited_aligned_image, self, **kwargs)


# --------------------------------------------------------------------------- align
def _select_face(faces: list[FaceLandmarks], face_index: int | None, detected: bool) -> int:
    if face_index is None:
        if detected:
            return 0  # backends return the largest first
        areas = [f.area for f in faces]
        return int(np.argmax(areas))
    if not isinstance(face_index, (int, np.integer)) or isinstance(face_index, bool):
        raise TypeError(f"face_index must be an int or None, got {type(face_index).__name__}")
    n = len(faces)
    if not -n <= face_index < n:
        order = "largest first" if detected else "in the order given"
        raise FaceIndexError(
            f"face_index={face_index} is out of range: {n} face{'s' if n != 1 else ''} found "
            f"(valid indices 0..{n - 1}, {order})"
        )
    return int(face_index) % n


def align_face(
    image: Any,
    output_size: int = 256,
    face_index: int | None = None,
    backend: str | Any | None = None,
    landmarks: Any = None,
    *,
    transform_size: int | None = None,
    enable_padding: bool = True,
    max_pixels: float | None = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> AlignedFace:
    """FFHQ-align the face in ``image`` to an ``output_size`` square.

    Args:
        image: anything :func:`styleclip_lib.photo_io.load_image` accepts (path, bytes,
            file-like, PIL, numpy); EXIF orientation is applied first.
        output_size: side of the crop (1024 FFHQ, 256 e4e, 64 / 32 toy).
        face_index: which face when several: ``None`` = the largest; otherwise an index into
            the detected faces sorted largest first (or into ``landmarks`` in the given order).
        backend: landmark backend name or object (see :mod:`styleclip_lib.landmarks`); unused
            when ``landmarks`` is given.
        landmarks: landmarks in the (uprighted) image's pixels: one face ((68|478|5|4, 2) array
            or :class:`FaceLandmarks`) or a list of faces.
        transform_size: resolution of the QUAD warp before the LANCZOS resize; default
            ``4 * output_size`` (FFHQ's 4096 → 1024); ``output_size`` reproduces e4e exactly.
        enable_padding: the recipe's reflect padding when the quad leaves the photo.
        max_pixels, max_bytes: limits passed to :func:`load_image`.

    Raises:
        NoFaceError: no face found (a ``ValueError``).
        FaceIndexError: ``face_index`` out of range (a ``ValueError`` and ``IndexError``).
        BackendUnavailableError: the landmark backend is not installed (an ``ImportError``).
        styleclip_lib.imageio.ImageError: the image could not be loaded.
    """
    from PIL import Image

    output_size = int(output_size)
    if output_size < 4:
        raise ValueError(f"output_size must be >= 4, got {output_size}")
    transform_size = int(transform_size) if transform_size is not None else 4 * output_size
    if transform_size < 1:
        raise ValueError(f"transform_size must be positive, got {transform_size}")

    rgb = load_image(image, max_pixels=max_pixels, max_bytes=max_bytes)
    h, w = rgb.shape[:2]

    detected = landmarks is None
    if detected:
        be = get_backend(backend)
        faces = list(be.detect_faces(rgb))
        source = f"the {getattr(be, 'name', type(be).__name__)!r} landmark backend"
    else:
        faces = as_face_landmarks(landmarks)
        source = "the landmarks given"
    if not faces:
        raise NoFaceError(
            f"no face was found in the image ({w}×{h} pixels) by {source}; use a clear, roughly "
            "frontal portrait where the face is at least ~80 pixels wide, or pass landmarks=..."
        )
    idx = _select_face(faces, face_index, detected)
    face = faces[idx]

    quad, qsize = ffhq_quad(face)
    pil = Image.fromarray(rgb)
    aligned, inverse = _ffhq_warp(pil, quad, qsize, output_size, transform_size, enable_padding)
    return AlignedFace(
        image=aligned,
        quad=quad,
        matrix=np.linalg.inv(inverse),
        inverse=inverse,
        landmarks=face,
        box=tuple(face.box),
        output_size=output_size,
        source_size=(w, h),
        qsize=qsize,
        face_index=idx,
        num_faces=len(faces),
        transform_size=transform_size,
    )


# --------------------------------------------------------------------------- paste back
def _edited_to_uint8(edited: Any) -> np.ndarray:
    if hasattr(edited, "detach") and hasattr(edited, "ndim"):  # a torch tensor in [-1, 1]
        from .imageio import to_uint8

        arr = to_uint8(edited)
        if arr.shape[0] != 1:
            raise ValueError(f"edited_aligned_image: expected one image, got a batch of {arr.shape[0]}")
        return arr[0]
    return load_image(edited, max_pixels=None, max_bytes=None)


def _soft_mask(kind: Any, h: int, w: int, feather: float) -> np.ndarray:
    """Blend weights in [0, 1] on the (h × w) edited crop."""
    import cv2

    f = max(float(feather), 0.0) * min(h, w)
    if isinstance(kind, str):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        if kind == "ellipse":
            # ellipse inscribed in the crop; weight 1 inside, falling to 0 on its rim
            nx = (xx + 0.5 - w / 2) / (w / 2)
            ny = (yy + 0.5 - h / 2) / (h / 2)
            dist = (1.0 - np.sqrt(nx * nx + ny * ny)) * (min(h, w) / 2)  # ~pixels inside the rim
        elif kind == "quad":
            dist = np.minimum(np.minimum(xx + 0.5, w - 0.5 - xx), np.minimum(yy + 0.5, h - 0.5 - yy))
        else:
            raise ValueError(f"mask: expected 'ellipse', 'quad' or an array, got {kind!r}")
        m = np.clip(dist / f, 0.0, 1.0) if f > 0 else (dist > 0).astype(np.float32)
        return (m * m * (3.0 - 2.0 * m)).astype(np.float32)  # smoothstep
    m = np.asarray(kind)
    if m.ndim == 3:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"mask array: expected (H, W), got shape {m.shape}")
    m = m.astype(np.float32)
    if m.max(initial=0) > 1.0:
        m = m / 255.0
    if m.shape != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
    if f > 0:
        sigma = f / 2.0
        k = 2 * int(3 * sigma + 0.5) + 1
        m = cv2.GaussianBlur(m, (k, k), sigma, borderType=cv2.BORDER_CONSTANT)
    return np.clip(m, 0.0, 1.0)


def paste_back(
    original_image: Any,
    edited_aligned_image: Any,
    aligned_face: AlignedFace,
    feather: float = 0.1,
    mask: Any = "ellipse",
):
    """Warp an edited aligned crop back into the original photo and blend it in softly.

    Args:
        original_image: the photo ``aligned_face`` was made from (anything ``load_image``
            accepts; same size as then).
        edited_aligned_image: the edited crop: PIL, uint8 array or a generator tensor
            ((1, 3, H, W) in [-1, 1]); any resolution (e.g. a 1024 edit of a 256 alignment).
        aligned_face: the :class:`AlignedFace` from :func:`align_face`.
        feather: width of the soft edge as a fraction of the crop side (0 = hard edge).
        mask: ``"ellipse"`` (inscribed in the crop: face and front hair, hides the generator's
            background), ``"quad"`` (the whole crop with feathered edges, for edits that reach
            the crop's border) or an (H, W) array of weights in crop space (e.g. a face-parsing
            mask; bool, [0, 1] or [0, 255]), feathered by a Gaussian of ``feather``.

    Returns:
        The blended photo: a ``PIL.Image`` if ``original_image`` is one, else (H, W, 3) uint8.
        Pixels where the mask weight is 0 (everything outside the crop's quad) are untouched.
    """
    import cv2
    from PIL import Image

    want_pil = isinstance(original_image, Image.Image)
    orig = load_image(original_image, max_pixels=None, max_bytes=None)
    H, W = orig.shape[:2]
    if (W, H) != tuple(aligned_face.source_size):
        raise ValueError(
            f"paste_back: original image is {W}×{H} but the face was aligned from a "
            f"{aligned_face.source_size[0]}×{aligned_face.source_size[1]} image; pass the same photo"
        )
    edited = _edited_to_uint8(edited_aligned_image)
    eh, ew = edited.shape[:2]
    S = aligned_face.output_size
    # edited pixel → aligned pixel (resampling keeps (u + 0.5) / size) → original pixel
    edit_to_orig = aligned_face.inverse @ _grid_to_pixels(S, S, ew, eh)
    weights = _soft_mask(mask, eh, ew, feather)

    # Where the crop lands in the photo (bounding box of its corners, clipped).
    corners = _apply(edit_to_orig, [[-0.5, -0.5], [ew - 0.5, -0.5], [ew - 0.5, eh - 0.5], [-0.5, eh - 0.5]])
    x0, y0 = np.floor(corners.min(0)).astype(int) - 1
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    out = orig.copy()
    if x1 <= x0 or y1 <= y0:
        return Image.fromarray(out) if want_pil else out

    # Downscale the edit first when it is much larger than its footprint (warpAffine does not
    # antialias); the mask follows the same path.
    scale = 1.25 * float(np.hypot(*(corners[1] - corners[0]))) / ew  # footprint / edit size, with margin
    if scale < 0.75:
        nw_, nh_ = max(2, int(round(ew * scale))), max(2, int(round(eh * scale)))
        edited = cv2.resize(edited, (nw_, nh_), interpolation=cv2.INTER_AREA)
        weights = cv2.resize(weights, (nw_, nh_), interpolation=cv2.INTER_AREA)
        edit_to_orig = edit_to_orig @ _grid_to_pixels(ew, eh, nw_, nh_)
    # ROI pixel → edited pixel
    roi_to_edit = np.linalg.inv(edit_to_orig) @ _translate(x0, y0)
    dsize = (x1 - x0, y1 - y0)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(edited, roi_to_edit[:2], dsize, flags=flags, borderMode=cv2.BORDER_REPLICATE)
    wmask = cv2.warpAffine(weights, roi_to_edit[:2], dsize, flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    wmask = np.clip(wmask, 0.0, 1.0)[..., None]
    roi = out[y0:y1, x0:x1].astype(np.float32)
    blended = roi + (warped.astype(np.float32) - roi) * wmask
    out[y0:y1, x0:x1] = np.where(wmask > 0, np.clip(np.rint(blended), 0, 255), roi).astype(np.uint8)
    return Image.fromarray(out) if want_pil else out
