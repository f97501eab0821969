"""StyleCLIP latent optimisation: conformance goldens (shared/conformance/stylegan2 case (vi))
and behaviour of the pipeline on the small generator + small random-weight ViT CLIP."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_close_ref, conformance_path, load_conformance
from styleclip_lib.losses.clip_loss import CLIPLoss, styleclip_clip_input
from styleclip_lib.methods.optimization import (
    LatentOptimization,
    OptimizationResult,
    kit_lr_schedule,
    lr_schedule,
    optimize_latent,
    reference_lr_schedule,
    schedule_lrs,
)
from styleclip_lib.models.clip import load_clip
from styleclip_lib.models.stylegan2 import load_generator

PROMPT = "a person with purple hair"



@pytest.fixture(scope="module")
def cases():
    return load_conformance("stylegan2/cases.pt")


@pytest.fixture(scope="module")
def gen():
    return load_generator(conformance_path("stylegan2/generator_ckpt.pt"), device="cpu")


@pytest.fixture(scope="module")
def clip_model():
    return load_clip(conformance_path("clip/vit_state_dict.pt"), device="cpu")


class TinyIdentity(nn.Module):
    """Stand-in identity net: fixed random conv, pooled, unit embeddings."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 4, stride=4)
        with torch.no_grad():
            rng = torch.Generator().manual_seed(7)
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=rng) * 0.2)
            self.conv.bias.zero_()
        self.requires_grad_(False)

    def forward(self, x):
        return F.normalize(F.adaptive_avg_pool2d(F.leaky_relu(self.conv(x), 0.2), 2).flatten(1), dim=1)


@pytest.fixture(scope="module")
def pipe(gen, clip_model):
    return LatentOptimization(gen, clip_model, TinyIdentity())


@pytest.fixture(scope="module")
def w_start(pipe):
    return pipe.initial_latent("edit", seed=3)


# ----------------------------------------------------------------------------- goldens
@pytest.mark.parametrize("steps", [300, 40])
def test_lr_schedule_golden(cases, steps):
    golden = cases[f"out.optim.lr_schedule_{steps}"]
    ours = torch.tensor(reference_lr_schedule(steps, 0.1), dtype=torch.float64)
    assert ours.shape == golden.shape
    torch.testing.assert_close(ours, golden, rtol=0, atol=1e-8)
    assert ours[0] == 0.0  # the reference's wasted first step
    assert lr_schedule(0.5, 0.1) == 0.1


def test_kit_schedule():
    kit = kit_lr_schedule(300, 0.1)
    assert len(kit) == 300 and min(kit) > 0 and max(kit) <= 0.1
    assert kit[100] == 0.1
    # kit honours lr_rampup, reference ignores it (as run_optimization.py)
    assert kit_lr_schedule(100, 0.1, rampup=0.2)[5] < kit[5 * 3]
    assert schedule_lrs(40, 0.1, "reference", lr_rampup=0.5) == reference_lr_schedule(40, 0.1)
    assert kit_lr_schedule(1, 0.1) == [0.1]


def test_clip_input_golden(cases):
    x = styleclip_clip_input(cases["out.wplus.image"][:1], 224)
    assert_close_ref(x, cases["out.optim.clip_input"], what="clip_input")


def test_adam_trajectory_golden(cases, gen):
    R = cases["in.grad.R"]
    res = optimize_latent(gen, cases["in.wplus.latent"], lambda img: (img * R).mean(), steps=5, lr=0.1,
                          l2_lambda=0.008, schedule="reference", keep_latent_history=True)
    assert_close_ref(torch.stack(res.latent_history), cases["out.optim.traj_latents"], what="traj_latents")
    assert_close_ref(torch.tensor(res.loss_history["total"]), cases["out.optim.traj_losses"], what="traj_losses")
    assert res.loss_history["l2"][0] == 0.0
    assert torch.equal(res.latent_history[0], cases["in.wplus.latent"])  # lr 0 at step 0
    assert res.steps_done == 5 and res.stopped == "completed"


# ----------------------------------------------------------------------------- pipeline behaviour
def test_edit_wplus_lowers_clip_loss(pipe, gen, clip_model, w_start):
    res = pipe(PROMPT, w_start, steps=15, progress=False)
    assert isinstance(res, OptimizationResult)
    h = res.loss_history
    assert set(h) == {"clip", "l2", "total"} and all(len(v) == 15 for v in h.values())
    assert h["clip"][-1] < h["clip"][0] - 1e-3
    assert h["l2"][0] == 0.0 and h["l2"][-1] > 0
    assert h["total"][3] == pytest.approx(h["clip"][3] + 0.008 * h["l2"][3], rel=1e-5)
    assert res.w_plus.shape == w_start.shape and res.styles is None
    assert torch.allclose(res.source_images, gen.synthesis(w_start))
    assert torch.allclose(res.images, gen.synthesis(res.w_plus))
    assert res.images.shape == (1, 3, 32, 32) and res.steps_done == 15
    # no model parameter received gradients
    assert all(p.grad is None for p in list(gen.parameters()) + list(clip_model.parameters()))


def test_edit_stylespace(pipe, gen, w_start):
    res = pipe(PROMPT, w_start, space="s", steps=15, progress=False)
    assert res.w_plus is None and len(res.styles) == len(gen.style_channels)
    src = gen.styles(w_start)
    conv = set(gen.conv_style_indices)
    for i, (s0, s1) in enumerate(zip(src, res.styles)):
        if i in conv:
            assert not torch.allclose(s0, s1), f"conv style {i} unchanged"
        else:
            assert torch.equal(s0, s1), f"ToRGB style {i} changed"
    h = res.loss_history
    assert h["clip"][-1] < h["clip"][0] - 1e-3 and h["l2"][0] == 0.0
    assert torch.allclose(res.images, gen.synthesis_from_styles(res.styles))


def test_edit_shared_w_offset(pipe, gen, w_start):
    w_mixed = w_start + 0.1 * torch.randn(w_start.shape, generator=torch.Generator().manual_seed(1))  # rows differ
    res = pipe(PROMPT, w_mixed, space="w", steps=10, progress=False)
    offset = res.w_plus - w_mixed
    assert float(offset.abs().max()) > 1e-3
    torch.testing.assert_close(offset, offset[:, :1].expand_as(offset), rtol=0, atol=1e-6)  # one offset, every row
    h = res.loss_history
    assert h["clip"][-1] < h["clip"][0] - 1e-3 and h["l2"][0] == 0.0
    assert torch.allclose(res.images, gen.synthesis(res.w_plus), atol=1e-5)
    # the L2 term keeps its meaning, the distance in W+ (measured before the last step's update)
    part = pipe(PROMPT, w_mixed, space="w", steps=10, progress=False, callback=lambda step, losses, img: step < 4)
    d = float(((part.w_plus - w_mixed) ** 2).sum())
    assert h["l2"][4] == pytest.approx(d, rel=1e-4)
    rest = pipe(PROMPT, space="w", steps=10, progress=False, resume=part.state)
    torch.testing.assert_close(rest.w_plus, res.w_plus, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="space"):
        pipe(PROMPT, space="w+", steps=10, progress=False, resume=part.state)


def test_edit_standardised_stylespace(gen, clip_model, w_start):
    """``space='s_std'``: s = s_src + σ·δ.  With σ = 1 it is ``space='s'`` step for step; with a
    per-channel σ every conv channel moves in σ units (a σ = 0 channel never moves), the L2 term
    is ‖δ‖², ToRGB codes stay, and a stopped run resumes onto the uninterrupted one."""
    ones = [torch.ones(c) for c in gen.style_channels]
    raw = LatentOptimization(gen, clip_model)(PROMPT, w_start, space="s", steps=6, progress=False)
    unit = LatentOptimization(gen, clip_model, style_std=ones)(PROMPT, w_start, space="s_std", steps=6, progress=False)
    for a, b in zip(raw.styles, unit.styles):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert unit.loss_history["total"] == pytest.approx(raw.loss_history["total"], abs=1e-5)

    rng = torch.Generator().manual_seed(4)
    std = [0.1 + 2 * torch.rand(c, generator=rng) for c in gen.style_channels]
    conv = list(gen.conv_style_indices)
    std[conv[0]][:3] = 0.0
    pipe_std = LatentOptimization(gen, clip_model, style_std=std)
    res = pipe_std(PROMPT, w_start, space="s_std", steps=6, progress=False)
    src = gen.styles(w_start)
    delta = [(res.styles[i] - src[i]) / std[i].clamp_min(1e-30) for i in conv]
    assert torch.equal(res.styles[conv[0]][:, :3], src[conv[0]][:, :3])
    for i in set(range(len(src))) - set(conv):
        assert torch.equal(res.styles[i], src[i]), f"ToRGB style {i} changed"
    # Adam's first step moves every parameter by ~lr: in σ units here, for channels of any σ
    first = pipe_std(PROMPT, w_start, space="s_std", steps=1, progress=False)
    moved = torch.cat([((first.styles[i] - src[i]) / std[i].clamp_min(1e-30))[:, std[i] > 0].abs().flatten() for i in conv])
    lr1 = kit_lr_schedule(1, 0.1)[0]
    assert float(moved.median()) == pytest.approx(lr1, rel=0.05)
    part = pipe_std(PROMPT, w_start, space="s_std", steps=6, progress=False, callback=lambda step, losses, img: step < 3)
    d2 = sum(float(((part.styles[i] - src[i]) / std[i].clamp_min(1e-30)).square().sum()) for i in conv)
    assert res.loss_history["l2"][3] == pytest.approx(d2, rel=1e-4)
    rest = pipe_std(PROMPT, space="s_std", steps=6, progress=False, resume=part.state)
    for a, b in zip(rest.styles, res.styles):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert torch.allclose(res.images, gen.synthesis_from_styles(res.styles), atol=1e-5)
    assert all(torch.isfinite(d).all() for d in delta)
    with pytest.raises(ValueError, match="style_std"):
        optimize_latent(gen, w_start, lambda x: x.mean(), space="s_std", steps=1)
    with pytest.raises(ValueError, match="style_std"):
        optimize_latent(gen, w_start, lambda x: x.mean(), space="s_std", steps=1, style_std=std[:-1])
    with pytest.raises(ValueError, match="style_std"):
        optimize_latent(gen, w_start, lambda x: x.mean(), space="s", steps=1, style_std=std)


def test_anchored_clip_loss(pipe, gen, w_start):
    """``clip_loss='anchored'``: the target is the source's own CLIP embedding moved along Δt:
    at the source the loss is 1 − cos(f_s, unit(f_s + step·Δt)); step 0 makes the source the
    optimum (zero loss); the optimisation lowers it."""
    loss = pipe.clip_loss
    d = loss.text_direction(PROMPT, "a person")
    with torch.no_grad():
        src = loss.image_features(gen.synthesis(w_start))
    target = F.normalize(src + 0.7 * d, dim=-1)
    res = pipe(PROMPT, w_start, neutral="a person", clip_loss="anchored", anchor_step=0.7, steps=12, progress=False)
    h = res.loss_history
    assert h["clip"][0] == pytest.approx(float(1 - (src * target).sum()), abs=1e-5)
    assert min(h["clip"][1:]) < h["clip"][0] - 1e-3
    with torch.no_grad():
        final = 1 - (loss.image_features(res.images) * target).sum()
    assert float(final) < h["clip"][0]
    still = pipe(PROMPT, w_start, neutral="a person", clip_loss="anchored", anchor_step=0.0, steps=1, progress=False)
    assert still.loss_history["clip"][0] == pytest.approx(0.0, abs=1e-5)


def test_free_generation(pipe, gen):
    res = pipe(PROMPT, mode="free_generation", seed=1, steps=6, progress=False)
    start = pipe.initial_latent("free_generation", seed=1)
    assert torch.equal(start[0, 0], start[0, -1])  # mean latent repeated
    assert torch.allclose(res.source_images, gen.synthesis(start))
    h = res.loss_history
    assert h["total"] == pytest.approx(h["clip"], rel=1e-6)  # CLIP only
    assert res.seed == 1 and res.prompt == PROMPT


def test_random_start_seeded(pipe):
    a = pipe(PROMPT, seed=5, steps=2, progress=False)
    b = pipe(PROMPT, seed=5, steps=2, progress=False)
    assert torch.equal(a.w_plus, b.w_plus)
    w = pipe.initial_latent("edit", seed=5)
    assert torch.equal(w[:, 0], w[:, -1])  # one truncated W broadcast to every row


def test_id_loss_term(pipe, w_start):
    res = pipe(PROMPT, w_start, id_lambda=0.5, steps=4, progress=False)
    h = res.loss_history
    assert "id" in h and len(h["id"]) == 4
    assert abs(h["id"][0]) < 1e-5  # same image at step 0
    assert h["id"][-1] > 0
    assert h["total"][-1] == pytest.approx(h["clip"][-1] + 0.008 * h["l2"][-1] + 0.5 * h["id"][-1], rel=1e-5)


def test_reference_modes(gen, clip_model, w_start):
    ref = LatentOptimization(gen, clip_model, clip_loss_mode="reference", clip_normalize=False)
    res = ref(PROMPT, w_start, steps=1, schedule="reference", progress=False)
    loss = CLIPLoss(clip_model, mode="reference", normalize=False)(gen.synthesis(w_start), PROMPT)
    assert res.loss_history["clip"][0] == pytest.approx(loss.item(), rel=1e-5)
    assert torch.equal(res.w_plus, w_start)  # reference schedule: first step has lr 0


def test_frames_and_gif(pipe, w_start, tmp_path):
    res = pipe(PROMPT, w_start, steps=5, save_intermediate_every=2, progress=False)
    assert len(res.frames) == 3 and res.frame_steps == [1, 3, 5]
    assert res.frames[0].shape == (1, 3, 32, 32)
    assert torch.allclose(res.frames[-1], res.images)
    from PIL import Image

    path = res.save_gif(tmp_path / "opt.gif")
    with Image.open(path) as im:
        assert im.n_frames >= 3
    pil = res.to_pil()
    assert len(pil) == 1 and pil[0].size == (32, 32)


def test_resume_equals_uninterrupted(pipe, w_start):
    full = pipe(PROMPT, w_start, steps=6, progress=False)
    part = pipe(PROMPT, w_start, steps=6, progress=False, callback=lambda step, losses, img: step < 3)
    assert part.stopped == "callback" and part.steps_done == 3 and len(part.loss_history["clip"]) == 3
    rest = pipe(PROMPT, steps=6, progress=False, resume=part.state)
    assert rest.steps_done == 6 and rest.stopped == "completed"
    torch.testing.assert_close(rest.w_plus, full.w_plus, rtol=0, atol=1e-6)
    assert rest.loss_history["total"] == pytest.approx(full.loss_history["total"], abs=1e-6)
    # a finished run cannot be resumed with the same length
    with pytest.raises(ValueError, match="steps"):
        pipe(PROMPT, steps=6, progress=False, resume=rest.state)


def test_keyboard_interrupt_returns_partial_state(pipe, w_start):
    full = pipe(PROMPT, w_start, space="s", steps=4, progress=False)

    def interrupt(step, losses, img):
        if step == 2:
            raise KeyboardInterrupt

    part = pipe(PROMPT, w_start, space="s", steps=4, progress=False, callback=interrupt)
    assert part.interrupted and part.steps_done == 2 and len(part.loss_history["total"]) == 2
    rest = pipe(PROMPT, space="s", steps=4, progress=False, resume=part.state)
    for a, b in zip(rest.styles, full.styles):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_batch_independent_samples(pipe, gen):
    w = torch.cat([pipe.initial_latent("edit", seed=11), pipe.initial_latent("edit", seed=12)])
    both = pipe(PROMPT, w, steps=4, progress=False)
    one = pipe(PROMPT, w[1:], steps=4, progress=False)
    assert both.images.shape[0] == 2
    torch.testing.assert_close(both.w_plus[1:], one.w_plus, rtol=0, atol=1e-4)
    per = both.sample_loss_history["clip"]
    assert len(per) == 4 and len(per[0]) == 2
    assert sum(per[-1]) == pytest.approx(both.loss_history["clip"][-1], rel=1e-5)
    assert per[-1][1] == pytest.approx(one.loss_history["clip"][-1], abs=1e-4)


def test_directional_clip_loss(pipe, gen, w_start):
    """``neutral=``: the CLIP term is 1 − cos(f(G(w)) − f(G(w_s)), Δt): exactly 1 at the source
    (no change yet), finite, and lowered by the optimisation."""
    res = pipe(PROMPT, w_start, neutral="a person", steps=12, progress=False)
    h = res.loss_history
    assert h["clip"][0] == pytest.approx(1.0, abs=1e-6) and h["l2"][0] == 0.0
    assert all(math.isfinite(v) for v in h["total"]) and torch.isfinite(res.w_plus).all()
    assert min(h["clip"][1:]) < 0.9
    loss = pipe.clip_loss
    d = loss.text_direction(PROMPT, "a person")
    with torch.no_grad():
        src = loss.image_features(gen.synthesis(w_start))
        final = loss.directional(res.images, src, d)
        delta = loss.image_features(res.images) - src
    cos = float((delta * d).sum() / (delta.square().sum() + 0.02 ** 2).sqrt())
    assert float(final) == pytest.approx(1 - cos, abs=1e-5)
    # the start (Δf = 0) has a bounded gradient: the first Adam step does not swamp the rest, so
    # the L2 weight still matters (with an unbounded one both runs ended on the same latent)
    far = pipe(PROMPT, w_start, neutral="a person", steps=12, l2_lambda=0.0, progress=False)
    near = pipe(PROMPT, w_start, neutral="a person", steps=12, l2_lambda=50.0, progress=False)
    assert (near.w_plus - w_start).norm() < 0.5 * (far.w_plus - w_start).norm()


def test_single_latent_gets_batch_axis(pipe, gen, w_start):
    res = pipe(PROMPT, w_start[0], steps=1, progress=False)
    assert res.w_plus.shape == (1, gen.num_ws, gen.w_dim) and res.images.shape[0] == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompt="   "), "prompt"),
    (dict(latent="bad_shape"), "latent"),
    (dict(latent="w_only"), "latent"),
    (dict(latent="nan"), "NaN"),
    (dict(steps=0), "steps"),
    (dict(steps=2.5), "steps"),
    (dict(mode="invert"), "mode"),
    (dict(space="z"), "space"),
    (dict(schedule="linear"), "schedule"),
    (dict(id_lambda=0.1, no_id=True), "id_lambda"),
    (dict(lr=-1.0), "lr"),
    (dict(neutral="  "), "neutral"),
    (dict(neutral="hair", mode="free_generation"), "neutral"),
    (dict(neutral=PROMPT), "identical CLIP text features"),
    (dict(clip_loss="anchored"), "neutral"),
    (dict(clip_loss="directional"), "neutral"),
    (dict(neutral="hair", clip_loss="global"), "neutral"),
    (dict(clip_loss="nada"), "clip_loss"),
    (dict(neutral="hair", clip_loss="anchored", anchor_step=-1.0), "anchor_step"),
])
def test_errors(gen, clip_model, pipe, w_start, kwargs, match):
    kwargs = dict(kwargs)
    p = LatentOptimization(gen, clip_model) if kwargs.pop("no_id", False) else pipe
    prompt = kwargs.pop("prompt", PROMPT)
    latent = {"bad_shape": torch.zeros(gen.num_ws + 1, gen.w_dim), "w_only": torch.zeros(2, gen.w_dim),
              "nan": w_start.clone().fill_(float("nan"))}.get(kwargs.pop("latent", None), w_start)
    with pytest.raises(ValueError, match=match):
        p(prompt, latent, steps=kwargs.pop("steps", 1), progress=False, **kwargs)


def _random_mask(gen, seed=5):
    """Per-S-layer weights: about half the channels 0, the rest in (0.2, 1]."""
    rng = torch.Generator().manual_seed(seed)
    out = []
    for c in gen.style_channels:
        w = 0.2 + 0.8 * torch.rand(c, generator=rng)
        out.append(torch.where(torch.rand(c, generator=rng) < 0.5, torch.zeros(c), w))
    return out


def test_channel_mask(gen, clip_model, w_start):
    """``channel_mask``: weight-0 channels never leave the source (in ``'s'`` and ``'s_std'``);
    in ``'s_std'`` a weight w makes Adam's first step w·σ·lr instead of σ·lr; a stopped run
    resumes with the state's mask onto the uninterrupted run; an all-zero mask returns the
    source; bad masks are refused with the argument named."""
    rng = torch.Generator().manual_seed(4)
    std = [0.1 + 2 * torch.rand(c, generator=rng) for c in gen.style_channels]
    mask = _random_mask(gen)
    conv = list(gen.conv_style_indices)
    src = gen.styles(w_start)
    for space in ("s", "s_std"):
        full = optimize_latent(gen, w_start, lambda x: 1 - x.mean(), space=space, steps=5, progress=False,
                               channel_mask=mask, style_std=std if space == "s_std" else None)
        for i in conv:
            off = mask[i] == 0
            assert torch.equal(full.styles[i][:, off], src[i][:, off]), f"{space}: masked channel of layer {i} moved"
            assert bool((full.styles[i][:, ~off] != src[i][:, ~off]).all()), f"{space}: kept channel did not move"
    # first Adam step: |Δs| = lr·w·σ for every kept channel
    first = optimize_latent(gen, w_start, lambda x: 1 - x.mean(), space="s_std", steps=1, progress=False,
                            channel_mask=mask, style_std=std, lr=0.1)
    lr1 = kit_lr_schedule(1, 0.1)[0]
    ratio = torch.cat([((first.styles[i] - src[i]).abs() / (std[i] * mask[i]))[:, mask[i] > 0].flatten() for i in conv])
    assert float(ratio.median()) == pytest.approx(lr1, rel=0.05)
    # resume keeps the mask (none is passed the second time)
    fn = lambda x: 1 - x.mean()
    whole = optimize_latent(gen, w_start, fn, space="s_std", steps=6, progress=False, channel_mask=mask, style_std=std)
    part = optimize_latent(gen, w_start, fn, space="s_std", steps=6, progress=False, channel_mask=mask, style_std=std,
                           callback=lambda step, losses, img: step < 3)
    rest = optimize_latent(gen, None, fn, space="s_std", steps=6, progress=False, resume=part.state)
    for a, b in zip(rest.styles, whole.styles):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # channel_signs: a ±1 channel never crosses to the other side of its source value; 0 is free
    rng = torch.Generator().manual_seed(6)
    signs = [torch.randint(-1, 2, (c,), generator=rng).float() for c in gen.style_channels]
    for space in ("s", "s_std"):
        kw = dict(space=space, progress=False, style_std=std if space == "s_std" else None, channel_signs=signs)
        signed = optimize_latent(gen, w_start, fn, steps=5, **kw)
        free = optimize_latent(gen, w_start, fn, steps=5, **dict(kw, channel_signs=None))
        for i in conv:
            d, fd = signed.styles[i] - src[i], free.styles[i] - src[i]
            assert bool((d * signs[i] >= 0).all()), f"{space}: layer {i} moved against its sign"
            assert bool((fd * signs[i] < 0).any()), f"{space}: the free run should cross somewhere in layer {i}"
            assert bool((d[:, signs[i] == 0] != 0).any()), f"{space}: sign-0 channels of layer {i} should be free"
        part = optimize_latent(gen, w_start, fn, steps=5, callback=lambda step, losses, img: step < 2, **kw)
        rest = optimize_latent(gen, None, fn, steps=5, space=space, progress=False, resume=part.state)
        for a, b in zip(rest.styles, signed.styles):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    bad_sign = [m.clone() for m in signs]
    bad_sign[conv[0]][0] = 0.5
    for space, m, match in (("w+", signs, "channel_signs"), ("s", signs[:-1], "channel_signs"), ("s", bad_sign, "-1, 0 or")):
        with pytest.raises(ValueError, match=match):
            optimize_latent(gen, w_start, fn, space=space, steps=1, progress=False, channel_signs=m)
    # nothing selected: the source comes back
    zeros = [torch.zeros(c) for c in gen.style_channels]
    none = optimize_latent(gen, w_start, fn, space="s_std", steps=3, progress=False, channel_mask=zeros, style_std=std)
    for a, b in zip(none.styles, src):
        assert torch.equal(a, b)
    bad_value = [m.clone() for m in mask]
    bad_value[conv[0]][0] = 1.5
    nan_value = [m.clone() for m in mask]
    nan_value[conv[1]][1] = float("nan")
    for space, m, match in (("w+", mask, "space"), ("s", mask[:-1], "per-layer"), ("s", [m[:-1] for m in mask], r"channel_mask\[0\]"),
                            ("s", bad_value, r"\[0, 1\]"), ("s_std", nan_value, r"\[0, 1\]")):
        with pytest.raises(ValueError, match=match):
            optimize_latent(gen, w_start, fn, space=space, steps=1, progress=False, channel_mask=m,
                            style_std=std if space == "s_std" else None)


@pytest.fixture(scope="module")
def random_fs3(gen, clip_model):
    dim = LatentOptimization(gen, clip_model).clip_loss.text_direction(PROMPT, "a person").shape[-1]
    rows = sum(gen.style_channels[i] for i in gen.conv_style_indices)
    return F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(9)), dim=1)


def test_channel_beta(gen, clip_model, w_start, random_fs3, tmp_path):
    """``channel_beta``: the channels global directions keeps for (prompt, neutral) at that beta
    are the only ones optimised, each stepping by its relevance |ds|; a larger beta never keeps
    more; no surviving channel warns and returns the source; fs3 may be an array, a path or a
    callable; misuse names the argument."""
    from styleclip_lib import global_directions as GD

    std = [torch.ones(c) for c in gen.style_channels]
    pipe = LatentOptimization(gen, clip_model, style_std=std, fs3=random_fs3)
    weights, num = pipe.relevant_channels(PROMPT, "a person", 0.1)
    ds, n_ref = GD.channel_direction(random_fs3, GD.text_direction(clip_model, PROMPT, "a person"), 0.1)
    assert num == n_ref and 0 < num < random_fs3.shape[0]
    flat = torch.cat([weights[i] for i in gen.conv_style_indices])
    torch.testing.assert_close(flat, ds)
    assert float(flat.abs().max()) == pytest.approx(1.0)
    res = pipe(PROMPT, w_start, neutral="a person", clip_loss="directional", space="s_std", channel_beta=0.1, steps=4, progress=False)
    assert res.num_channels == num
    src = gen.styles(w_start)
    change = torch.cat([(res.styles[i] - src[i])[0] for i in gen.conv_style_indices])
    assert not bool((change[flat == 0] != 0).any()), "a channel global directions drops was optimised"
    # channel_sign (default): a kept channel moves the way the global direction moves it, or stays
    assert bool((change * flat >= 0).all()) and bool((change != 0).any())
    free = pipe(PROMPT, w_start, neutral="a person", clip_loss="directional", space="s_std", channel_beta=0.1, steps=4,
                progress=False, channel_sign=False)
    free_change = torch.cat([(free.styles[i] - src[i])[0] for i in gen.conv_style_indices])
    assert torch.equal(free_change != 0, flat != 0)
    assert bool((free_change * flat < 0).any()), "without channel_sign some channel should move against ds"
    counts = [pipe.relevant_channels(PROMPT, "a person", b)[1] for b in (0.0, 0.05, 0.1, 0.2)]
    assert counts == sorted(counts, reverse=True)
    # resumed: the state's mask, and the count comes back
    part = pipe(PROMPT, w_start, neutral="a person", space="s_std", channel_beta=0.1, steps=4, progress=False,
                clip_loss="directional", callback=lambda step, losses, img: step < 2)
    rest = pipe(PROMPT, neutral="a person", space="s_std", steps=4, progress=False, clip_loss="directional", resume=part.state)
    assert rest.num_channels == num
    for a, b in zip(rest.styles, res.styles):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with pytest.warns(UserWarning, match="no channel"):
        none = pipe(PROMPT, w_start, neutral="a person", space="s_std", channel_beta=1.0, steps=2, progress=False, clip_loss="directional")
    assert none.num_channels == 0
    for a, b in zip(none.styles, src):
        assert torch.equal(a, b)
    # fs3 from a file or a callable gives the same selection
    path = GD.save_fs3(tmp_path / "fs3.npy", random_fs3)
    for source in (path, lambda: random_fs3.numpy()):
        w2, n2 = LatentOptimization(gen, clip_model, fs3=source).relevant_channels(PROMPT, "a person", 0.1)
        assert n2 == num and all(torch.allclose(a.double(), b.double(), atol=1e-6) for a, b in zip(w2, weights))
    for p, kwargs, match in (
        (pipe, dict(space="w+"), "space"),
        (pipe, dict(space="s_std", neutral=None), "neutral"),
        (pipe, dict(space="s_std", channel_beta=1.5), "beta"),
        (LatentOptimization(gen, clip_model), dict(space="s"), "fs3"),
        (LatentOptimization(gen, clip_model, fs3=random_fs3[:-3]), dict(space="s"), "rows"),
    ):
        kw = dict(dict(neutral="a person", clip_loss="directional", channel_beta=0.1), **kwargs)
        if kw["neutral"] is None:
            kw.pop("clip_loss")
        with pytest.raises(ValueError, match=match):
            p(PROMPT, w_start, steps=1, progress=False, **kw)


def test_start_from_the_global_direction(gen, clip_model, w_start, random_fs3):
    """``start='global'``: the run starts at global directions' edit of the source (same fs3,
    std, templates), while the L2 term and the text-pair target stay anchored at the source."""
    from styleclip_lib.global_directions import GlobalDirections, IMAGENET_TEMPLATES

    std = [0.5 + 0.1 * torch.arange(c, dtype=torch.float32) % 1.0 for c in gen.style_channels]
    pipe = LatentOptimization(gen, clip_model, style_std=std, fs3=random_fs3)
    gd = GlobalDirections(gen, clip_model, fs3=random_fs3, style_mean=[torch.zeros(c) for c in gen.style_channels],
                          style_std=std, templates=IMAGENET_TEMPLATES)
    want = gd(w_start, PROMPT, "a person", alpha=2.0, beta=0.1)
    kw = dict(neutral="a person", clip_loss="anchored", space="s_std", start="global", start_alpha=2.0,
              start_beta=0.1, progress=False)
    still = pipe(PROMPT, w_start, lr=0.0, l2_lambda=0.01, steps=2, **kw)  # lr 0: the run stays at its start
    for a, b in zip(still.styles, want.styles):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert still.loss_history["l2"][0] > 0  # measured from the source, not from the start
    moved = pipe(PROMPT, w_start, lr=0.5, l2_lambda=0.0, steps=3, **kw)
    assert any(not torch.allclose(a, b) for a, b in zip(moved.styles, want.styles))
    for kwargs, match in ((dict(space="w+"), "StyleSpace"), (dict(neutral=None, clip_loss="global"), "neutral"),
                          (dict(start="gd"), "start"), (dict(start_alpha=float("nan")), "start_alpha")):
        with pytest.raises(ValueError, match=match):
            pipe(PROMPT, w_start, steps=1, **{**kw, **kwargs})
