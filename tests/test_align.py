"""FFHQ alignment (styleclip_lib.align) and the landmark backends (styleclip_lib.landmarks).

Math tests need only numpy / PIL / OpenCV.  Photo tests use scikit-image's bundled
``astronaut`` portrait (shipped inside the wheel, no download) and dlib's 68-point model from
the ``[photo]`` extra (dlib-bin + face-recognition-models); they skip when those are absent.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from PIL import Image

from styleclip_lib.align import AlignedFace, FaceIndexError, align_face, ffhq_quad, paste_back
from styleclip_lib.landmarks import (
    BackendUnavailableError,
    DlibBackend,
    FaceLandmarks,
    NoFaceError,
    ffhq_keypoints,
    get_backend,
)

# Eye centres and mouth corners of the astronaut (skimage.data.astronaut, 512×512) as dlib's
# 68-point model finds them; used where a test wants landmarks without running a detector.
ASTRONAUT_KP = np.array([[203.17, 101.5], [246.83, 104.0], [201.0, 140.0], [245.0, 141.0]])


def _astronaut() -> np.ndarray:
    data = pytest.importorskip("skimage.data", reason="scikit-image (test extra) ships the astronaut photo")
    return data.astronaut()


@pytest.fixture(scope="module")
def dlib_backend():
    pytest.importorskip("dlib", reason='dlib backend: pip install "styleclip_lib[photo]"')
    try:
        return get_backend("dlib")
    except BackendUnavailableError as e:  # dlib present but no 68-point model
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def astronaut_face(dlib_backend):
    img = _astronaut()
    faces = dlib_backend.detect_faces(img)
    return img, faces


def _rot(points, deg, centre):
    t = math.radians(deg)
    r = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return (np.asarray(points, float) - centre) @ r.T + centre


# --------------------------------------------------------------------------- quad math
def test_ffhq_quad_hand_computed():
    # eyes (40, 50) & (60, 50), mouth corners (42, 80) & (58, 80):
    # eye_avg (50, 50), eye_to_eye (20, 0), mouth_avg (50, 80), eye_to_mouth (0, 30)
    # x = (20, 0) - flipud((0, 30)) * [-1, 1] = (20, 0) - (-30, 0) = (50, 0) -> unit (1, 0)
    # x *= max(20 * 2.0, 30 * 1.8) = 54 -> (54, 0);  y = flipud(x) * [-1, 1] = (0, 54)
    # c = (50, 50) + 0.1 * (0, 30) = (50, 53);  qsize = 108
    kp = np.array([[40.0, 50.0], [60.0, 50.0], [42.0, 80.0], [58.0, 80.0]])
    quad, qsize = ffhq_quad(kp)
    expected = np.array([[-4.0, -1.0], [-4.0, 107.0], [104.0, 107.0], [104.0, -1.0]])
    np.testing.assert_allclose(quad, expected, atol=1e-12)
    assert qsize == pytest.approx(108.0)

    # wide-set eyes: the eye term wins: x *= max(60 * 2.0, 20 * 1.8) = 120
    kp2 = np.array([[20.0, 50.0], [80.0, 50.0], [45.0, 70.0], [55.0, 70.0]])
    quad2, qsize2 = ffhq_quad(kp2)
    np.testing.assert_allclose(quad2[0], [50 - 120, 52 - 120], atol=1e-12)
    assert qsize2 == pytest.approx(240.0)


def test_ffhq_quad_follows_rotation_and_landmark_formats():
    kp = np.array([[40.0, 50.0], [60.0, 50.0], [42.0, 80.0], [58.0, 80.0]])
    centre = np.array([17.0, -3.0])
    quad, qsize = ffhq_quad(kp)
    quad_r, qsize_r = ffhq_quad(_rot(kp, 30, centre))
    np.testing.assert_allclose(quad_r, _rot(quad, 30, centre), atol=1e-9)
    assert qsize_r == pytest.approx(qsize)

    # 68-point set: eyes are the means of 36-41 / 42-47, mouth corners are 48 and 54
    rng = np.random.default_rng(0)
    lm68 = rng.uniform(0, 100, size=(68, 2))
    lm68[36:42] = kp[0] + rng.normal(size=(6, 2))
    lm68[36:42] += kp[0] - lm68[36:42].mean(0)
    lm68[42:48] = kp[1] + rng.normal(size=(6, 2))
    lm68[42:48] += kp[1] - lm68[42:48].mean(0)
    lm68[48], lm68[54] = kp[2], kp[3]
    np.testing.assert_allclose(ffhq_keypoints(lm68), kp, atol=1e-12)
    np.testing.assert_allclose(ffhq_quad(lm68)[0], quad, atol=1e-9)
    # 5-point (eyes, nose, mouth corners) and FaceLandmarks
    five = np.insert(kp, 2, [50.0, 65.0], axis=0)
    np.testing.assert_allclose(ffhq_quad(five)[0], quad, atol=1e-12)
    np.testing.assert_allclose(ffhq_quad(FaceLandmarks.from_points(lm68))[0], quad, atol=1e-9)
    with pytest.raises(ValueError, match="points"):
        ffhq_keypoints(np.zeros((7, 2)))


def _dots_image(kp, size, radius):
    """White image with a red / green / blue / black disc centred on each keypoint (pixel-index
    coordinates: pixel (i, j) is the point x = i, y = j)."""
    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for (x, y), col in zip(kp, [(255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0)]):
        img[(xx - x) ** 2 + (yy - y) ** 2 <= radius**2] = col
    return img


def _dot_centroids(arr):
    a = arr.astype(int)
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    masks = [
        (r > 160) & (g < 90) & (b < 90),
        (g > 160) & (r < 90) & (b < 90),
        (b > 160) & (r < 90) & (g < 90),
        (r < 60) & (g < 60) & (b < 60),
    ]
    out = []
    for m in masks:
        ys, xs = np.nonzero(m)
        assert len(xs) > 0, "a landmark dot is missing from the aligned crop"
        out.append([xs.mean(), ys.mean()])
    return np.array(out)


@pytest.mark.parametrize(
    "size, kp_scale, angle, output_size",
    [
        ((400, 300), 1.0, 25.0, 128),   # tilted head, upsampled crop
        ((1600, 1400), 8.0, -12.0, 64),  # shrink > 1 (the recipe's integer downscale)
        ((220, 160), 1.0, 0.0, 64),      # quad leaves the photo: reflect padding
    ],
)
def test_aligned_pixels_sit_where_the_transform_says(size, kp_scale, angle, output_size):
    base = np.array([[-11.0, -8.0], [11.0, -8.0], [-9.0, 17.0], [9.0, 17.0]]) * kp_scale
    centre = np.array(size, float) / 2
    if size == (220, 160):
        centre = np.array([110.0, 30.0])  # face near the top edge
    kp = _rot(base + centre, angle, centre)
    img = _dots_image(kp, size, radius=4.0 * kp_scale)
    face = align_face(img, output_size=output_size, landmarks=kp)
    assert isinstance(face, AlignedFace)
    assert face.image.size == (output_size, output_size)
    # the dots' centroids in the crop are where `matrix` sends the keypoints ...
    found = _dot_centroids(face.array)
    np.testing.assert_allclose(found, face.to_aligned(kp), atol=0.6)
    # ... and the inverse sends them back onto the landmarks (in photo pixels)
    np.testing.assert_allclose(face.to_original(found), kp, atol=0.6 * face.qsize / output_size)
    # FFHQ geometry: level eyes at the same height, mouth below, centred
    ak = face.aligned_keypoints / output_size
    assert abs(ak[0, 1] - ak[1, 1]) < 1e-6
    assert ak[2, 1] > ak[0, 1] + 0.1
    assert abs((ak[0, 0] + ak[1, 0]) / 2 - 0.5) < 0.02
    np.testing.assert_allclose(face.matrix @ face.inverse, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(face.affine, face.matrix[:2])


def test_matches_e4e_reference_pixel_for_pixel():
    """transform_size=output_size must reproduce e4e/StyleCLIP utils/alignment.py (scipy blur)."""
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    img = _astronaut()
    kp = ASTRONAUT_KP

    def reference(pil, kp, output_size, transform_size):
        # verbatim recipe (recreate_aligned_images / e4e align_face), from the 4 keypoints
        eye_left, eye_right, mouth_left, mouth_right = kp
        eye_avg = (eye_left + eye_right) * 0.5
        eye_to_eye = eye_right - eye_left
        mouth_avg = (mouth_left + mouth_right) * 0.5
        eye_to_mouth = mouth_avg - eye_avg
        x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
        x /= np.hypot(*x)
        x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
        y = np.flipud(x) * [-1, 1]
        c = eye_avg + eye_to_mouth * 0.1
        quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
        qsize = np.hypot(*x) * 2
        img = pil
        shrink = int(np.floor(qsize / output_size * 0.5))
        if shrink > 1:
            rsize = (int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink)))
            img = img.resize(rsize, Image.LANCZOS)
            quad /= shrink
            qsize /= shrink
        border = max(int(np.rint(qsize * 0.1)), 3)
        crop = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))), int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
        crop = (max(crop[0] - border, 0), max(crop[1] - border, 0), min(crop[2] + border, img.size[0]), min(crop[3] + border, img.size[1]))
        if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
            img = img.crop(crop)
            quad -= crop[0:2]
        pad = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))), int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
        pad = (max(-pad[0] + border, 0), max(-pad[1] + border, 0), max(pad[2] - img.size[0] + border, 0), max(pad[3] - img.size[1] + border, 0))
        if max(pad) > border - 4:
            pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
            img = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
            h, w, _ = img.shape
            y, x, _ = np.ogrid[:h, :w, :1]
            mask = np.maximum(1.0 - np.minimum(np.float32(x) / pad[0], np.float32(w - 1 - x) / pad[2]), 1.0 - np.minimum(np.float32(y) / pad[1], np.float32(h - 1 - y) / pad[3]))
            blur = qsize * 0.02
            img += (scipy_ndimage.gaussian_filter(img, [blur, blur, 0]) - img) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
            img += (np.median(img, axis=(0, 1)) - img) * np.clip(mask, 0.0, 1.0)
            img = Image.fromarray(np.uint8(np.clip(np.rint(img), 0, 255)), "RGB")
            quad += pad[:2]
        img = img.transform((transform_size, transform_size), Image.QUAD, (quad + 0.5).flatten(), Image.BILINEAR)
        if output_size < transform_size:
            img = img.resize((output_size, output_size), Image.LANCZOS)
        return np.asarray(img).astype(int)

    big = np.asarray(Image.fromarray(img).resize((1536, 1536), Image.LANCZOS))
    cases = [
        (img, kp, 256, 256),                     # plain crop
        (img[60:, 150:400], kp - [150, 60], 256, 256),  # padded (face at the top edge)
        (big, kp * 3 + 1.0, 64, 64),             # shrink = 5
        (img, kp, 128, 512),                     # supersampled
    ]
    for arr, k, s, t in cases:
        ours = align_face(arr, output_size=s, transform_size=t, landmarks=k).array.astype(int)
        ref = reference(Image.fromarray(arr), k.astype(float).copy(), s, t)
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() <= 1, (arr.shape, s, t)


# --------------------------------------------------------------------------- real photo (dlib)
def test_astronaut_landmarks_are_plausible(astronaut_face):
    img, faces = astronaut_face
    assert len(faces) == 1
    f = faces[0]
    assert f.points.shape == (68, 2) and f.backend == "dlib"
    l, t, r, b = f.box
    assert 150 < l < r < 300 and 50 < t < b < 200  # her face, not the mission patch
    eye_l, eye_r, mouth_l, mouth_r = f.keypoints()
    assert eye_l[0] < eye_r[0] and mouth_l[0] < mouth_r[0]
    assert max(eye_l[1], eye_r[1]) + 15 < min(mouth_l[1], mouth_r[1])  # eyes above the mouth
    for p in (eye_l, eye_r, mouth_l, mouth_r):
        assert l <= p[0] <= r and t <= p[1] <= b
    np.testing.assert_allclose(f.keypoints(), ASTRONAUT_KP, atol=4.0)


def test_align_astronaut_and_map_eyes_back(astronaut_face, dlib_backend):
    img, faces = astronaut_face
    face = align_face(img, output_size=256)  # detection through the default backend
    assert face.image.size == (256, 256) and face.image.mode == "RGB"
    assert face.num_faces == 1 and face.face_index == 0
    assert face.box == pytest.approx(faces[0].box)
    assert face.quad.shape == (4, 2) and face.qsize > 100
    # landmarks found *in the aligned crop* map back onto the photo's landmarks
    again = dlib_backend.detect_faces(face.array)
    assert len(again) >= 1
    back = face.to_original(again[0].keypoints())
    np.testing.assert_allclose(back[:2], faces[0].keypoints()[:2], atol=3.0)  # eyes
    np.testing.assert_allclose(back, faces[0].keypoints(), atol=5.0)
    for size in (64, 32):
        small = align_face(img, output_size=size, landmarks=faces[0])
        assert small.image.size == (size, size)


def test_several_faces_largest_first_and_face_index(dlib_backend):
    img = _astronaut()
    small = np.asarray(Image.fromarray(img).resize((384, 384), Image.LANCZOS))
    canvas = np.full((512, 512 + 384, 3), 255, np.uint8)
    canvas[:, :512] = img
    canvas[128:, 512:] = small
    faces = dlib_backend.detect_faces(canvas)
    faces = [f for f in faces if f.box[1] < 260]  # ignore any hit on the suit patches
    assert len(faces) >= 2
    assert faces[0].area > faces[1].area
    assert faces[0].box[0] < 512 <= faces[1].box[0]

    default = align_face(canvas, output_size=64)
    assert default.box[0] < 512  # the larger face
    second = align_face(canvas, output_size=64, face_index=1)
    assert second.box[0] >= 512 and second.face_index == 1
    with pytest.raises(FaceIndexError, match=r"face_index=7 is out of range: \d faces found"):
        align_face(canvas, output_size=64, face_index=7)

    # landmarks given as a list: default is the largest, face_index counts in the given order
    lms = [faces[1], faces[0]]
    assert align_face(canvas, output_size=32, landmarks=lms).box == pytest.approx(faces[0].box)
    assert align_face(canvas, output_size=32, landmarks=lms, face_index=0).box == pytest.approx(faces[1].box)


def test_no_face_raises_no_face_error(dlib_backend):
    data = pytest.importorskip("skimage.data")
    for img in (np.full((240, 320, 3), 128, np.uint8), data.rocket()):
        with pytest.raises(NoFaceError, match="no face was found"):
            align_face(img)
    assert issubclass(NoFaceError, ValueError)


def test_no_face_with_empty_landmarks_needs_no_backend():
    with pytest.raises(NoFaceError, match="no face was found"):
        align_face(np.zeros((50, 60, 3), np.uint8), landmarks=[])


# --------------------------------------------------------------------------- paste back
def test_paste_back_roundtrip_and_untouched_far_pixels():
    img = _astronaut()
    face = align_face(img, output_size=256, landmarks=ASTRONAUT_KP)
    out = paste_back(img, face.image, face, feather=0.1)
    assert out.shape == img.shape and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - img.astype(int))
    l, t, r, b = (int(v) for v in face.box)
    assert diff[t:b, l:r].mean() < 6.0  # resampled twice, no visible change
    x0, y0 = np.floor(face.quad.min(0)).astype(int) - 2
    x1, y1 = np.ceil(face.quad.max(0)).astype(int) + 3
    outside = np.ones(img.shape[:2], bool)
    outside[max(y0, 0):y1, max(x0, 0):x1] = False
    assert np.array_equal(out[outside], img[outside])  # far pixels bit-identical
    # PIL in -> PIL out
    pil_out = paste_back(Image.fromarray(img), face.image, face)
    assert isinstance(pil_out, Image.Image) and np.array_equal(np.asarray(pil_out), out)


def test_paste_back_edit_at_another_resolution_and_masks():
    img = _astronaut()
    face = align_face(img, output_size=64, landmarks=ASTRONAUT_KP)
    # a "1024 generator output": the 64 crop upsampled, with a red square on the nose
    edited = np.asarray(face.image.resize((1024, 1024), Image.BICUBIC)).copy()
    edited[560:660, 462:562] = (255, 0, 0)
    nose = face.to_original([(512 - 0.5) / 16, (610 - 0.5) / 16])  # edit px -> aligned px -> photo
    for mask in ("ellipse", "quad", np.pad(np.ones((40, 40)), 12)):
        out = paste_back(img, edited, face, mask=mask)
        x, y = np.round(nose).astype(int)
        assert tuple(out[y, x]) == pytest.approx((255, 0, 0), abs=12), mask if isinstance(mask, str) else "array"
        assert np.array_equal(out[450:, :100], img[450:, :100])
    # a torch generator tensor in [-1, 1] is accepted too
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(edited).permute(2, 0, 1)[None].float() / 127.5 - 1
    out_t = paste_back(img, t, face)
    assert np.abs(out_t.astype(int) - paste_back(img, edited, face).astype(int)).max() <= 1
    with pytest.raises(ValueError, match="same photo"):
        paste_back(img[:100], edited, face)


# --------------------------------------------------------------------------- backends
def test_backend_registry_and_missing_package_errors(monkeypatch):
    with pytest.raises(KeyError, match="unknown landmark backend 'nope'"):
        get_backend("nope")
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` fail
    with pytest.raises(BackendUnavailableError, match=r"styleclip_lib\[photo\]") as ei:
        DlibBackend()
    assert isinstance(ei.value, ImportError)
    monkeypatch.setitem(sys.modules, "mediapipe", None)
    with pytest.raises(ImportError, match="mediapipe==0.10.14"):
        get_backend("mediapipe")

    class Fixed:
        name = "fixed"

        def detect_faces(self, image):
            return [FaceLandmarks.from_points(ASTRONAUT_KP / 512 * image.shape[1])]

    face = align_face(np.zeros((100, 100, 3), np.uint8), output_size=32, backend=Fixed())
    assert face.landmarks.backend == "given" and face.image.size == (32, 32)


def test_mediapipe_backend_if_installed():
    pytest.importorskip("mediapipe")
    img = _astronaut()
    try:
        faces = get_backend("mediapipe").detect_faces(img)
    except BackendUnavailableError as e:
        pytest.skip(str(e))
    assert len(faces) >= 1 and faces[0].points.shape[0] in (468, 478)
    np.testing.assert_allclose(faces[0].keypoints(), ASTRONAUT_KP, atol=6.0)
