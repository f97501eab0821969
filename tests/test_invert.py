"""GAN inversion (styleclip_lib.invert): encoder wrapper, projection, metrics, stop / resume.

Most tests use the small golden generator (32 px, 8 W+ rows of 64) and a randomly initialised
encoder; the toy-world tests need the trained toy weights and skip without them.
"""

import numpy as np
import pytest
import torch

from conftest import conformance_path
from styleclip_lib.invert import (
    EncoderInversion,
    InversionResult,
    ProjectionInversion,
    image_metrics,
    images_to_tensor,
    invert,
    lpips_like,
    noise_regularize,
)
from styleclip_lib.losses.id_loss import identity_similarity
from styleclip_lib.models.stylegan2 import load_generator
from styleclip_lib.toy.nets import IdentityNet, ToyEncoder
from styleclip_lib.worlds import ModelSet

TOY_WEIGHTS = ("generator.pt", "clip.pt", "judge.pt", "identity.pt", "encoder.pt", "fs3.npy", "style_stats.pt")


def toy_weights_present() -> bool:
    from pathlib import Path

    import styleclip_lib.toy as toy

    d = Path(toy.__file__).resolve().parent / "weights"
    return all((d / f).exists() for f in TOY_WEIGHTS)


needs_toy = pytest.mark.skipif(not toy_weights_present(), reason="toy-world weights not trained yet (python -m styleclip_lib.toy.train)")


@pytest.fixture(scope="module")
def g():
    return load_generator(conformance_path("stylegan2/generator_ckpt.pt"), device="cpu")


@pytest.fixture(scope="module")
def known(g):
    """Two targets generated from known W+ (rows perturbed so they are not in W), clamped like photos."""
    z = torch.randn(2, g.w_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        w = g.to_w_plus(g.mapping(z)).clone()
        w[:, 4:] += 0.3 * torch.randn(2, g.num_ws - 4, g.w_dim, generator=torch.Generator().manual_seed(2))
        img = g.synthesis(w).clamp(-1, 1)
    return w, img


def _encoder(g, image_size=32):
    torch.manual_seed(0)
    enc = ToyEncoder(g.num_ws, g.w_dim, image_size=image_size, width=8).eval()
    enc.latent_avg.copy_(g.latent_avg)
    return enc


@pytest.fixture(scope="module")
def golden_models(g):
    enc = _encoder(g)
    return ModelSet("golden", torch.device("cpu"), {"generator": "-", "encoder": "-", "identity": "", "clip": "-", "fs3": ""},
                    {"generator": g, "encoder": enc})


# --------------------------------------------------------------------------- the LPIPS-like distance
def test_lpips_like_is_a_distance_that_grows_with_corruption():
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.allclose(lpips_like(x, x), torch.zeros(3), atol=1e-6)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    d = [lpips_like((x + s * noise).clamp(-1, 1), x) for s in (0.05, 0.2, 0.6)]
    assert torch.all(d[0] < d[1]) and torch.all(d[1] < d[2])
    y = (x + 0.3 * noise).clamp(-1, 1)
    assert torch.allclose(lpips_like(x, y), lpips_like(y, x), atol=1e-6)  # symmetric
    # large images are judged at 256 px; tiny ones on fewer scales; finite gradients
    big = torch.zeros(1, 3, 300, 300, requires_grad=True)
    lpips_like(big, torch.ones(1, 3, 300, 300)).sum().backward()
    assert torch.isfinite(big.grad).all()
    assert lpips_like(-torch.ones(1, 3, 8, 8), torch.ones(1, 3, 8, 8)).item() > 0.9  # black vs white


def test_noise_regularizer_penalises_spatially_correlated_noise():
    white = [torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))]
    smooth = [torch.nn.functional.interpolate(torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), size=32,
                                              mode="bilinear", align_corners=False)]
    smooth = [(s - s.mean()) / s.std() for s in smooth]
    rw, rs = noise_regularize(white), noise_regularize(smooth)
    assert rw.shape == (2,) and torch.all(rs > 20 * rw)


def test_metrics_are_computed_from_the_images(g, known):
    _, target = known
    rec = (target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(3))).clamp(-1, 1)
    idnet = IdentityNet(4, image_size=32, width=8).eval()
    m = image_metrics(rec, target, idnet)
    mse = ((rec - target) ** 2).flatten(1).mean(1)
    assert torch.allclose(m["mse"], mse)
    assert torch.allclose(m["psnr"], 10 * torch.log10(4 / mse))
    assert torch.allclose(m["perceptual"], lpips_like(rec, target))
    assert torch.allclose(m["id_similarity"], identity_similarity(idnet, rec, target))
    assert image_metrics(target, target)["id_similarity"] is None
    assert torch.all(image_metrics(target, target)["mse"] == 0)


# --------------------------------------------------------------------------- inputs
def test_images_to_tensor_accepts_the_usual_inputs_and_refuses_non_square():
    from PIL import Image

    arr = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    a = images_to_tensor(arr)
    assert a.shape == (1, 3, 48, 48) and a.min() >= -1 and a.max() <= 1
    assert torch.allclose(images_to_tensor(Image.fromarray(arr)), a)
    assert torch.allclose(images_to_tensor(torch.from_numpy(arr).permute(2, 0, 1)), a)  # uint8 CHW
    assert images_to_tensor([arr, arr], 32).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="square"):
        images_to_tensor(np.zeros((40, 60, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        images_to_tensor(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="NaN"):
        images_to_tensor(torch.full((1, 3, 32, 32), float("nan")))


# --------------------------------------------------------------------------- encoder
def test_encoder_inversion_shapes_resizing_and_metrics(g, known):
    _, target = known
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self, enc):
            super().__init__()
            self.enc, self.trunk = enc, enc.trunk

        def forward(self, x):
            seen.append(tuple(x.shape))
            return self.enc(x)

    spy = Spy(_encoder(g, image_size=16))
    big = torch.nn.functional.interpolate(target, size=64, mode="bilinear", align_corners=False)
    res = EncoderInversion(spy, g)(big)
    assert seen == [(2, 3, 16, 16)]  # resized to the encoder's input size
    assert res.w_plus.shape == (2, g.num_ws, g.w_dim)
    assert res.reconstruction.shape == (2, 3, 32, 32) and res.target.shape == (2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(res.reconstruction, g.synthesis(res.w_plus))
    m = image_metrics(res.reconstruction, res.target)
    assert torch.allclose(res.mse, m["mse"]) and torch.allclose(res.psnr, m["psnr"])
    assert res.method == "encoder" and res.noises is None and res.loss_history == {} and res.completed
    assert set(res.metrics()) == {"mse", "psnr", "perceptual"}
    # encoder_images (already at the encoder's size) are used as given
    seen.clear()
    EncoderInversion(spy, g)(target, encoder_images=torch.zeros(2, 3, 16, 16))
    assert seen == [(2, 3, 16, 16)]

    wrong = ToyEncoder(g.num_ws + 1, g.w_dim, image_size=32, width=8).eval()
    with pytest.raises(ValueError, match="encoder trained for this generator"):
        EncoderInversion(wrong, g)(target)


# --------------------------------------------------------------------------- projection
def test_projection_recovers_a_generated_image(g, known):
    _, target = known
    res = ProjectionInversion(g, steps=80, progress=False)(target)
    assert isinstance(res, InversionResult) and res.method == "projection" and res.stopped == "completed"
    assert res.steps_done == res.steps == 80 and len(res.loss_history["total"]) == 80
    start = res.initial_metrics["mse"]
    assert torch.all(res.mse < 0.35 * start), (start, res.mse)  # well below the mean-latent start
    assert np.mean(res.loss_history["total"][-5:]) < 0.5 * np.mean(res.loss_history["total"][:5])
    # the reported figures are those of the returned latent and noise maps
    assert len(res.noises) == g.num_layers and res.noises[0].shape[0] == 2
    with torch.no_grad():
        rec = g.synthesis(res.w_plus, noise=res.noises)
    assert torch.allclose(rec, res.reconstruction, atol=1e-6)
    m = image_metrics(rec, target)
    assert torch.allclose(res.mse, m["mse"]) and torch.allclose(res.perceptual, m["perceptual"])
    assert torch.all(res.psnr > 15)


def test_projection_stops_and_resumes_exactly(g, known):
    _, target = known
    proj = ProjectionInversion(g, steps=30, progress=False, seed=3)
    full = proj(target)

    part = proj(target, callback=lambda step, losses: step < 10)
    assert part.stopped == "callback" and part.steps_done == 10 and not part.completed
    assert len(part.loss_history["total"]) == 10 and part.w_plus.shape == full.w_plus.shape

    def interrupt(step, losses):
        if step == 20:
            raise KeyboardInterrupt

    mid = proj(resume=part.state, callback=interrupt)  # the state holds the target
    assert mid.stopped == "interrupted" and mid.steps_done == 20
    done = proj(resume=mid.state)
    assert done.completed and done.steps_done == 30
    assert torch.equal(done.w_plus, full.w_plus)
    assert all(torch.equal(a, b) for a, b in zip(done.noises, full.noises))
    assert done.loss_history == full.loss_history
    with pytest.raises(ValueError, match="steps > 30"):
        proj(resume=done.state)
    more = proj(resume=done.state, steps=35)  # extend the schedule
    assert more.steps_done == 35
    with pytest.raises(ValueError, match="space"):
        ProjectionInversion(g, space="w", progress=False)(resume=part.state)


def test_projection_options(g, known):
    _, target = known
    res = ProjectionInversion(g, space="w", steps=10, optimize_noise=False, loss="mse", progress=False)(target[:1])
    assert res.noises is None and set(res.loss_history) >= {"mse", "total", "lr"}
    assert torch.allclose(res.w_plus, res.w_plus[:, :1].expand_as(res.w_plus))  # one W row broadcast
    # a custom loss, an L2 pull and the identity term are all used
    idnet = IdentityNet(4, image_size=32, width=8).eval()
    res = ProjectionInversion(g, steps=3, loss=lambda x, y: (x - y).abs().flatten(1).mean(1), l2_lambda=0.01,
                              identity_model=idnet, id_lambda=0.1, progress=False)(target)
    assert {"perceptual", "l2", "id", "noise"} <= set(res.loss_history) and res.id_similarity.shape == (2,)
    with pytest.raises(ValueError, match="loss"):
        ProjectionInversion(g, loss="lpips")
    with pytest.raises(ValueError, match="space"):
        ProjectionInversion(g, space="s")
    with pytest.raises(ValueError, match="encoder="):
        ProjectionInversion(g, init="encoder")
    with pytest.raises(ValueError, match="identity_model"):
        ProjectionInversion(g, id_lambda=1.0)
    with pytest.raises(ValueError, match="images"):
        ProjectionInversion(g, progress=False)()


def test_invert_entry_point_with_a_model_set(g, known, golden_models):
    w, target = known
    enc = invert(target, golden_models, "encoder", identity_model=None)
    assert enc.method == "encoder" and enc.w_plus.shape == (2, g.num_ws, g.w_dim)
    both = invert(target, golden_models, "encoder+projection", steps=40, identity_model=None)
    assert both.method == "encoder+projection"
    assert torch.allclose(both.initial_w_plus, enc.w_plus)  # starts from the encoder's code ...
    assert torch.allclose(both.initial_metrics["mse"], enc.mse, atol=1e-6)  # ... i.e. its reconstruction
    assert torch.all(both.mse < 0.6 * enc.mse)
    proj = invert(target, golden_models, "projection", steps=5, space="w", identity_model=None)
    assert proj.method == "projection" and proj.steps_done == 5
    # a known latent as the start
    exact = ProjectionInversion(g, init=w, steps=1, lr=1e-9, optimize_noise=False, progress=False)(target)
    assert exact.initial_metrics["mse"].max() < 1e-6
    with pytest.raises(ValueError, match="method"):
        invert(target, golden_models, "gan")
    with pytest.raises(ValueError, match="steps"):
        invert(target, golden_models, "encoder", steps=5)


# --------------------------------------------------------------------------- toy world (trained weights)
@pytest.fixture(scope="module")
def toy():
    from styleclip_lib.toy import weights_path
    from styleclip_lib.toy.nets import load_net
    from styleclip_lib.worlds import load_models

    return load_models("toy", "cpu"), load_net(weights_path("toy-judge"), "judge")


def _judge_agrees(judge, images, faces) -> np.ndarray:
    from styleclip_lib.toy import render as R
    from styleclip_lib.toy.evaluate import judge_predictions

    pred = judge_predictions(judge, images)
    visible = R.observable_mask(faces)
    ok = np.ones(len(faces), bool)
    for j, a in enumerate(R.ATTR_NAMES):
        ok &= ~visible[:, j] | (pred[a] == faces.attr(a))
    return ok


@needs_toy
def test_toy_faces_invert_with_their_attributes(toy):
    from styleclip_lib.toy import render as R

    models, judge = toy
    faces = R.sample_params(30, seed=4242)
    images = torch.from_numpy(R.render_batch(faces, 64)).permute(0, 3, 1, 2).float() / 127.5 - 1
    enc = invert(images, models, "encoder")
    assert enc.id_similarity is not None and enc.id_similarity.mean() > 0.5
    assert enc.psnr.mean() > 18
    # a few projection steps from the encoder's code: better pixels, and the judge reads every
    # attribute of the target in the reconstruction for at least 90 % of the faces (the issue's
    # target; measured 0.98 on 60 faces with the shipped weights, encoder alone 0.82).
    ref = invert(images, models, "encoder+projection", steps=25)
    # every face's objective (the perceptual loss, not the pixel MSE) improves, and the pixels on average
    assert torch.all(ref.perceptual <= ref.initial_metrics["perceptual"] + 1e-4) and ref.mse.mean() < 0.9 * enc.mse.mean()
    ok = _judge_agrees(judge, ref.reconstruction, faces)
    assert ok.mean() >= 0.9, (ok.mean(), _judge_agrees(judge, enc.reconstruction, faces).mean())
