"""Photo → aligned face → inversion → edit → paste back (styleclip_lib.photo.edit_photo).

The FFHQ-recipe path runs on the astronaut photo with the small golden generator (32 px), the
golden CLIP and a randomly initialised encoder standing in for the real weights: the edit is
meaningless but every stage (alignment, encoder input crop, inversion, edit, paste) runs for
real.  The toy-world tests need the trained toy weights and skip without them.
"""
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import conformance_path
from styleclip_lib.invert import InversionResult
from styleclip_lib.landmarks import NoFaceError
from styleclip_lib.models.mapper import LevelsMapper
from styleclip_lib.models.stylegan2 import load_generator
from styleclip_lib.photo import PhotoEditResult, align_toy_face, edit_photo, toy_frame_face
from styleclip_lib.photo_io import ImageError, ImageTooLargeError, NotAnImageError, TruncatedImageError
from styleclip_lib.toy import render as R
from styleclip_lib.toy.nets import ToyEncoder
from styleclip_lib.worlds import ModelSet

TOY_WEIGHTS = ("generator.pt", "clip.pt", "judge.pt", "identity.pt", "encoder.pt", "fs3.npy", "style_stats.pt")


def toy_weights_present() -> bool:
    from pathlib import Path

    import styleclip_lib.toy as toy

    d = Path(toy.__file__).resolve().parent / "weights"
    return all((d / f).exists() for f in TOY_WEIGHTS)


needs_toy = pytest.mark.skipif(not toy_weights_present(), reason="toy-world weights not trained yet (python -m styleclip_lib.toy.train)")

# Eye centres and mouth corners of the astronaut as dlib finds them (tests/test_align.py).
ASTRONAUT_KP = np.array([[203.17, 101.5], [246.83, 104.0], [201.0, 140.0], [245.0, 141.0]])


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def astronaut():
    data = pytest.importorskip("skimage.data", reason="scikit-image ships the astronaut photo")
    return data.astronaut()


@pytest.fixture(scope="module")
def g():
    return load_generator(conformance_path("stylegan2/generator_ckpt.pt"), device="cpu")


class SpyEncoder(torch.nn.Module):
    """A random toy-encoder net that records the size of what it is given."""

    def __init__(self, g, image_size):
        super().__init__()
        torch.manual_seed(0)
        self.net = ToyEncoder(g.num_ws, g.w_dim, image_size=image_size, width=8).eval()
        self.net.latent_avg.copy_(g.latent_avg)
        self.trunk = self.net.trunk
        self.sizes = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        return self.net(x)


def _model_set(g, encoder, clip=None):
    cache = {"generator": g, "encoder": encoder}
    if clip is not None:
        cache["clip"] = clip
    return ModelSet("golden", torch.device("cpu"), {"generator": "-", "encoder": "-", "clip": "-", "identity": "", "fs3": ""},
                    cache)


@pytest.fixture(scope="module")
def golden(g):
    from styleclip_lib import load_clip

    clip = load_clip(conformance_path("clip/vit_state_dict.pt"), device="cpu")
    return _model_set(g, SpyEncoder(g, 32), clip)


def _astronaut_landmarks(img):
    """dlib's landmarks when the backend is installed, else the recorded keypoints."""
    try:
        from styleclip_lib.landmarks import get_backend

        faces = get_backend("dlib").detect_faces(img)
        return faces[0].points if faces else ASTRONAUT_KP
    except ImportError:
        return ASTRONAUT_KP


def _outside_crop(face, shape) -> np.ndarray:
    """Pixels of the photo that the aligned crop does not cover (with a 1 px margin)."""
    h, w = shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    uv = face.to_aligned(np.stack([xx.ravel(), yy.ravel()], 1)).reshape(h, w, 2)
    s = face.output_size
    return (uv < -1.5).any(-1) | (uv > s + 0.5).any(-1)


# --------------------------------------------------------------------------- clear errors
@pytest.mark.parametrize("data, error, match", [
    (b"%PDF-1.4 this is not a picture at all" * 4, NotAnImageError, "not a recognised image"),
    (b"", ImageError, "empty"),
    (_png_header_only(0, 10), ImageError, "zero size"),
    (_png_header_only(100_000, 100_000), ImageTooLargeError, "100000×100000"),
])
def test_unusable_inputs_are_refused(data, error, match):
    with pytest.raises(error, match=match):
        edit_photo(data, "purple hair")


def test_truncated_jpeg_is_refused():
    arr = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    data = _jpeg(arr)
    with pytest.raises(TruncatedImageError, match="truncated"):
        edit_photo(data[: len(data) // 2], "purple hair")


def test_prompt_method_and_option_errors(g):
    ms = _model_set(g, SpyEncoder(g, 32))
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="non-empty"):
        edit_photo(img, "   ", models=ms)
    with pytest.raises(ValueError, match="method"):
        edit_photo(img, "purple hair", "styleflow", models=ms)
    with pytest.raises(ValueError, match="mapper="):
        edit_photo(img, "purple hair", "mapper", models=ms)
    with pytest.raises(ValueError, match="steps: not an option of method='global'.*'optimize'"):
        edit_photo(img, "purple hair", "global", models=ms, steps=10)
    with pytest.raises(ValueError, match="neutral"):
        edit_photo(img, "purple hair", "optimize", models=ms, neutral="a face")
    with pytest.raises(ValueError, match="invert"):
        edit_photo(img, "purple hair", models=ms, invert="pti")
    with pytest.raises(ValueError, match="paste_options"):
        edit_photo(img, "purple hair", models=ms, paste_options={"blend": 1})
    with pytest.raises(ValueError, match="device"):
        edit_photo(img, "purple hair", models=ms, device="cpu")
    with pytest.raises(ValueError, match="alpha"):
        edit_photo(img, "purple hair", models=ms, alpha=[1, 2])
    with pytest.raises(ValueError, match="model set"):
        edit_photo(img, "purple hair", models="celeba")


def test_no_face_is_reported(g):
    ms = _model_set(g, SpyEncoder(g, 32))
    with pytest.raises(NoFaceError):
        edit_photo(np.zeros((64, 64, 3), np.uint8), "purple hair", "mapper", models=ms, landmarks=[],
                   mapper=LevelsMapper(g.w_dim, g.num_ws))
    pytest.importorskip("dlib")
    from styleclip_lib.landmarks import BackendUnavailableError

    try:
        with pytest.raises(NoFaceError, match="no face was found"):
            edit_photo(np.full((120, 160, 3), 128, np.uint8), "purple hair", "mapper", models=ms,
                       mapper=LevelsMapper(g.w_dim, g.num_ws))
    except BackendUnavailableError as e:
        pytest.skip(str(e))


# --------------------------------------------------------------------------- the FFHQ recipe, end to end
def test_photo_edit_with_paste_back_on_the_astronaut(astronaut, golden, g):
    lm = _astronaut_landmarks(astronaut)
    golden.encoder.sizes.clear()
    res = edit_photo(astronaut, "purple hair", "optimize", models=golden, landmarks=lm, paste_back=True, steps=3)
    assert isinstance(res, PhotoEditResult)
    assert res.aligned.size == res.reconstruction.size == res.edited.size == (32, 32)
    assert res.original.size == res.pasted.size == (512, 512)
    assert res.parameters["alignment"] == "ffhq" and res.parameters["models"] == "golden"
    assert res.parameters["method_options"]["steps"] == 3 and res.parameters["method_options"]["l2_lambda"] == 0.008
    assert {"load", "align", "invert", "edit", "paste", "total"} <= set(res.timings)
    assert golden.encoder.sizes == [(32, 32)]
    assert res.w_plus_source.shape == res.w_plus_edited.shape == (1, g.num_ws, g.w_dim)
    assert not torch.equal(res.w_plus_source, res.w_plus_edited)
    with torch.no_grad():
        assert torch.allclose(res.edited_tensor, g.synthesis(res.w_plus_edited), atol=1e-5)
    assert isinstance(res.inversion, InversionResult) and res.inversion.method == "encoder"

    pasted, orig = np.asarray(res.pasted), astronaut
    outside = _outside_crop(res.face, orig.shape)
    assert outside.mean() > 0.5
    assert np.array_equal(pasted[outside], orig[outside])  # the rest of the photo is untouched
    cx, cy = res.face.to_original([15.5, 15.5]).round().astype(int)
    assert np.abs(pasted[cy - 3:cy + 4, cx - 3:cx + 4].astype(int) - orig[cy - 3:cy + 4, cx - 3:cx + 4]).mean() > 5
    # the crop's centre shows the edited face (feathered ellipse: weight 1 at the centre)
    edited_centre = np.asarray(res.edited)[14:18, 14:18].astype(int)
    assert np.abs(pasted[cy - 1:cy + 2, cx - 1:cx + 2].astype(int).mean((0, 1)) - edited_centre.mean((0, 1))).max() < 40

    # the same inversion reused with another method; strength 0 = the reconstruction
    again = edit_photo(astronaut, "purple hair", "mapper", models=golden, landmarks=lm, invert=res.inversion,
                       mapper=LevelsMapper(g.w_dim, g.num_ws), strength=0.0)
    assert torch.equal(again.w_plus_source, res.w_plus_source)
    assert torch.allclose(again.edited_tensor, res.inversion.reconstruction, atol=1e-6)
    assert again.pasted is None and again.parameters["invert"] == "encoder"
    # a StyleSpace mapper edits the codes: the result carries them instead of a W+ latent
    from styleclip_lib.models.mapper import StyleSpaceMapper

    torch.manual_seed(0)
    ss = edit_photo(astronaut, "purple hair", "mapper", models=golden, landmarks=lm, invert=res.inversion,
                    mapper=StyleSpaceMapper(g.style_channels, g.conv_style_indices))
    assert ss.w_plus_edited is None and len(ss.styles_edited) == len(g.style_channels)
    with torch.no_grad():
        torch.testing.assert_close(ss.edited_tensor, g.synthesis_from_styles(ss.styles_edited))
    assert not torch.allclose(ss.edited_tensor, res.inversion.reconstruction, atol=1e-3)


def test_encoder_gets_its_own_crop_and_projection_noise_is_kept(astronaut, g):
    enc = SpyEncoder(g, 64)  # an encoder trained at 64 px for a 32 px generator (e4e: 256 for 1024)
    ms = _model_set(g, enc)
    res = edit_photo(astronaut, "purple hair", "mapper", models=ms, landmarks=ASTRONAUT_KP, strength=0.0,
                     mapper=LevelsMapper(g.w_dim, g.num_ws), invert="encoder+projection",
                     invert_options={"steps": 6})
    assert enc.sizes == [(64, 64)]  # a 64 px alignment, not an upsampled 32 px crop
    assert res.parameters["encoder_input_size"] == 64
    inv = res.inversion
    assert inv.method == "encoder+projection" and inv.steps_done == 6 and inv.noises is not None
    # edits are rendered with the projection's noise maps: strength 0 gives back the reconstruction
    assert torch.allclose(res.edited_tensor, inv.reconstruction, atol=1e-6)
    with torch.no_grad():
        assert not torch.allclose(g.synthesis(res.w_plus_edited), inv.reconstruction, atol=1e-3)


def test_toy_alignment_maps_a_face_into_the_toy_frame():
    faces = R.sample_params(3, seed=11)
    big = R.render_batch(faces, 160)
    small = R.render_batch(faces, 64)
    names = ("left_eye", "right_eye", "nose_tip", "mouth_left", "mouth_right")
    eye_row = R.landmarks(faces[0], 64)["left_eye"][1]
    for i, f in enumerate(faces):
        canvas = np.full((300, 420, 3), 90, np.uint8)
        canvas[60:220, 200:360] = big[i]
        pts = np.array([R.landmarks(f, 160)[k] for k in names]) + [200, 60]
        face = align_toy_face(canvas, pts, 64)
        eyes = face.to_aligned(pts[:2])
        assert np.allclose(eyes[:, 1], eye_row, atol=0.05)             # the renderer's eye row
        assert abs(eyes.mean(0)[0] - 31.5) < 0.05                       # centred
        assert np.allclose(face.to_original(eyes), pts[:2], atol=1e-6)
        assert np.abs(face.array.astype(int) - small[i]).mean() < 40    # roughly the same face
    frame = toy_frame_face(small[0])
    assert np.array_equal(frame.array, small[0]) and frame.extra["recipe"] == "toy-frame"
    with pytest.raises(ValueError, match="landmarks="):
        toy_frame_face(np.zeros((64, 100, 3), np.uint8))


# --------------------------------------------------------------------------- toy world (trained weights)
@pytest.fixture(scope="module")
def toy():
    from styleclip_lib.toy import weights_path
    from styleclip_lib.toy.nets import load_net
    from styleclip_lib.worlds import load_models

    return load_models("toy", "cpu"), load_net(weights_path("toy-judge"), "judge")


def _hair_faces(n, seed):
    """Faces with visible, non-purple hair."""
    faces = R.sample_params(4 * n, seed=seed)
    hc, hs = faces.attr("hair_color"), faces.attr("hair_style")
    keep = (hc != R.ATTRIBUTES["hair_color"].index("purple")) & (hs != R.ATTRIBUTES["hair_style"].index("bald"))
    return faces[np.nonzero(keep)[0][:n]]


def _is_purple(judge, images) -> np.ndarray:
    from styleclip_lib.toy.evaluate import judge_predictions

    return judge_predictions(judge, images)["hair_color"] == R.ATTRIBUTES["hair_color"].index("purple")


@needs_toy
@pytest.mark.parametrize("method, kwargs, n", [("global", {}, 6), ("optimize", {"steps": 30}, 3)])
def test_toy_photo_edit_moves_toward_the_prompt(toy, method, kwargs, n):
    """The one call edits toward the text: the toy CLIP finds every edited face closer to
    "purple hair" than its reconstruction.  (How often the *judge* then sees purple hair is a
    measured figure of ``python -m styleclip_lib.toy.evaluate --methods``, below the issue's
    target for the v0 toy weights; see the closing note.)"""
    from styleclip_lib.losses.clip_loss import CLIPLoss

    models, judge = toy
    faces = _hair_faces(n, seed=77)
    images = R.render_batch(faces, 64)
    loss = CLIPLoss(models.clip, normalize=True)
    for img in images:
        res = edit_photo(img, "purple hair", method, models=models, **kwargs)
        assert res.parameters["alignment"] == "toy-frame"
        with torch.no_grad():
            rec = models.generator.synthesis(res.w_plus_source)
            before, after = loss(rec, "purple hair"), loss(res.edited_tensor, "purple hair")
        assert after.item() < before.item() - 1e-3, (method, before.item(), after.item())


@needs_toy
def test_toy_photo_hair_colour_edit_is_seen_by_the_judge(toy):
    """Render → align → invert → global-directions edit "blue hair": the judge (never used by the
    pipeline) reads blue hair on most edited faces (measured 6 of 6 at the reference alpha 4.1, beta
    0.15 with the v5 world, whose aligned CLIP overshoots at alpha 8: 1 of 6; per-prompt rates
    for every method are in ``python -m styleclip_lib.toy.evaluate --methods``)."""
    from styleclip_lib.toy.evaluate import judge_predictions

    models, judge = toy
    blue = R.ATTRIBUTES["hair_color"].index("blue")
    faces = R.sample_params(40, seed=77)
    keep = (faces.attr("hair_color") != blue) & (faces.attr("hair_style") != R.ATTRIBUTES["hair_style"].index("bald"))
    faces = faces[np.nonzero(keep)[0][:6]]
    hits = 0
    for img in R.render_batch(faces, 64):
        res = edit_photo(img, "blue hair", "global", models=models, alpha=4.1, beta=0.15)
        hits += int(judge_predictions(judge, res.edited_tensor)["hair_color"][0] == blue)
    assert hits >= 4, hits


@needs_toy
def test_toy_face_on_a_canvas_is_edited_and_pasted_back(toy):
    """align (toy recipe, given landmarks) → invert → edit → paste, on a face inside a larger photo."""
    models, judge = toy
    faces = _hair_faces(3, seed=5)
    big = R.render_batch(faces, 128)
    names = ("left_eye", "right_eye", "nose_tip", "mouth_left", "mouth_right")
    for i, f in enumerate(faces):
        canvas = np.full((256, 320, 3), 200, np.uint8)
        canvas[70:198, 150:278] = big[i]
        pts = np.array([R.landmarks(f, 128)[k] for k in names]) + [150, 70]
        res = edit_photo(canvas, "purple hair", "global", models=models, landmarks=pts, paste_back=True)
        assert res.parameters["alignment"] == "toy-landmarks"
        assert res.aligned.size == res.edited.size == (64, 64)
        pasted = np.asarray(res.pasted)
        assert pasted.shape == canvas.shape
        outside = _outside_crop(res.face, canvas.shape)
        assert np.array_equal(pasted[outside], canvas[outside])  # the rest of the photo is untouched
        # inside, the photo now shows the edited crop (feathered ellipse: weight 1 at the centre)
        cx, cy = res.face.to_original([31.5, 31.5]).round().astype(int)
        centre = pasted[cy - 2:cy + 3, cx - 2:cx + 3].astype(int).mean((0, 1))
        edited = np.asarray(res.edited)[30:34, 30:34].astype(int).mean((0, 1))
        assert np.abs(centre - edited).max() < 25


def test_command_line_reports_bad_input(tmp_path, capsys):
    from styleclip_lib.photo import main

    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"these are not pixels" * 10)
    assert main(["--image", str(bad), "--prompt", "purple hair", "--out", str(tmp_path / "o.png")]) == 1
    assert "not a recognised image" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


@needs_toy
def test_command_line_edits_a_toy_face(tmp_path, capsys):
    from styleclip_lib.photo import main

    face = tmp_path / "face.png"
    Image.fromarray(R.render_batch(R.sample_params(1, seed=3), 64)[0]).save(face)
    out = tmp_path / "edit.png"
    assert main(["--image", str(face), "--prompt", "purple hair", "--paste-back", "--out", str(out),
                 "--json", str(tmp_path / "info.json")]) == 0
    assert Image.open(out).size == (3 * 64 * 4 + 16, 64 * 4)
    assert Image.open(tmp_path / "edit_pasted.png").size == (64, 64)
    assert "timings" in (tmp_path / "info.json").read_text()
