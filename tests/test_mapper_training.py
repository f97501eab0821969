"""Ranger optimiser, StyleCLIP latent-mapper training (MapperTrainer) and inference (LatentMapperEdit).

Runs on the small conformance generator (32 px, w_dim 64, 8 W+ rows: no fine group)
and the small random ViT CLIP (32 px); a few dozen steps in total.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from conftest import conformance_path
from styleclip_lib.checkpoint import CheckpointError
from styleclip_lib.methods.mapper import LatentMapperEdit, MapperEdit, MapperResult, MapperTrainer
from styleclip_lib.models.clip import load_clip
from styleclip_lib.models.mapper import LevelsMapper, load_mapper
from styleclip_lib.models.stylegan2 import load_generator
from styleclip_lib.optim import Ranger, radam_step_size


# ============================================================================ Ranger
def _naive_ranger(p0: torch.Tensor, grads: list[torch.Tensor], lr=0.1, alpha=0.5, k=6, thr=5, b1=0.95, b2=0.999,
                  eps=1e-5, wd=0.0, gc=True) -> torch.Tensor:
    """The reference Ranger update written out literally, float64, one tensor."""
    p, slow = p0.clone().double(), p0.clone().double()
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g.double()
        if gc and g.dim() > 1:
            g = g - g.mean(dim=tuple(range(1, g.dim())), keepdim=True)
        v = b2 * v + (1 - b2) * g * g
        m = b1 * m + (1 - b1) * g
        rho_inf = 2 / (1 - b2) - 1
        rho = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
        p = p - wd * lr * p
        if rho > thr:
            r = math.sqrt((1 - b2 ** t) * (rho - 4) / (rho_inf - 4) * (rho - 2) / rho * rho_inf / (rho_inf - 2)) / (1 - b1 ** t)
            p = p - lr * r * m / (v.sqrt() + eps)
        else:
            p = p - lr / (1 - b1 ** t) * m
        if t % k == 0:
            slow = slow + alpha * (p - slow)
            p = slow.clone()
    return p


def test_ranger_matches_the_reference_update_rule():
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    grads = [torch.randn(5, 3, generator=gen, dtype=torch.float64) for _ in range(14)]  # rectification at t=6, lookahead at 6, 12
    for wd, gc in ((0.0, True), (0.01, False)):
        p = nn.Parameter(p0.clone())
        opt = Ranger([p], lr=0.1, weight_decay=wd, use_gc=gc)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        torch.testing.assert_close(p.detach(), _naive_ranger(p0, grads, wd=wd, gc=gc), rtol=1e-10, atol=1e-12)
    # first step: bias-corrected momentum SGD on the centralised gradient
    p = nn.Parameter(p0.clone())
    opt = Ranger([p], lr=0.1)
    p.grad = grads[0].clone()
    opt.step()
    torch.testing.assert_close(p.detach(), p0 - 0.1 * (grads[0] - grads[0].mean(1, keepdim=True)))
    assert radam_step_size(5, 0.95, 0.999, 5)[1] is False and radam_step_size(6, 0.95, 0.999, 5)[1] is True


def test_ranger_minimises_a_quadratic():
    torch.manual_seed(0)
    scales = torch.tensor([1.0, 3.0, 10.0, 0.3])
    target = torch.tensor([1.0, -2.0, 0.5, 3.0])
    x = nn.Parameter(torch.zeros(4))
    opt = Ranger([x], lr=0.1)
    f = lambda: (scales * (x - target) ** 2).sum()  # noqa: E731
    f0 = f().item()
    for _ in range(400):
        opt.zero_grad()
        loss = f()
        loss.backward()
        opt.step()
    assert f().item() < 1e-3 * f0
    torch.testing.assert_close(x.detach(), target, atol=0.05, rtol=0)
    # closure form
    loss = opt.step(lambda: (opt.zero_grad(), f().backward(), f())[-1])
    assert loss is not None and loss.item() < 1e-2


def test_ranger_state_dict_round_trip(tmp_path):
    torch.manual_seed(1)
    w0, b0 = torch.randn(4, 3), torch.randn(4)
    data = [torch.randn(8, 3) for _ in range(16)]

    def loss_fn(w, b, x):
        return ((x @ w.t() + b).tanh() - 0.3).pow(2).mean()

    def run(w, b, opt, batches):
        for x in batches:
            opt.zero_grad()
            loss_fn(w, b, x).backward()
            opt.step()

    wa, ba = nn.Parameter(w0.clone()), nn.Parameter(b0.clone())
    opt_a = Ranger([wa, ba], lr=0.05)
    run(wa, ba, opt_a, data[:7])  # mid Lookahead period (k=6)
    torch.save({"opt": opt_a.state_dict(), "w": wa.detach(), "b": ba.detach()}, tmp_path / "s.pt")
    run(wa, ba, opt_a, data[7:])

    saved = torch.load(tmp_path / "s.pt", weights_only=True)
    wb, bb = nn.Parameter(saved["w"].clone()), nn.Parameter(saved["b"].clone())
    opt_b = Ranger([wb, bb], lr=0.05)
    opt_b.load_state_dict(saved["opt"])
    assert opt_b.state[wb]["step"] == 7 and "slow_buffer" in opt_b.state[wb]
    run(wb, bb, opt_b, data[7:])
    assert torch.equal(wa, wb) and torch.equal(ba, bb)
    with pytest.raises(ValueError):
        Ranger([wb], lr=0.1, alpha=1.5)
    with pytest.raises(ValueError):
        Ranger([wb], lr=-1)


# ============================================================================ mapper fixtures
@pytest.fixture(scope="module")
def G():
    return load_generator(conformance_path("stylegan2/generator_ckpt.pt"), device="cpu")


@pytest.fixture(scope="module")
def C():
    return load_clip(conformance_path("clip/vit_state_dict.pt"), device="cpu")


@pytest.fixture(scope="module")
def latents(G):
    with torch.no_grad():
        z = torch.randn(10, G.w_dim, generator=torch.Generator().manual_seed(3))
        return G.to_w_plus(G.mapping(z, truncation=0.7)).clone()


@pytest.fixture(scope="module")
def trained(G, C, latents, tmp_path_factory):
    """One short run: 8 training + 2 held-out latents, Adam (the reference Ranger's RAdam
    warm-up makes its first few dozen steps tiny at lr 0.5)."""
    exp = tmp_path_factory.mktemp("mapper_run")
    trainer = MapperTrainer(G, C, description="purple hair", latents=latents, val_fraction=0.2, id_lambda=0,
                            optimizer="adam", learning_rate=2.0, batch_size=2, max_steps=24, val_interval=8,
                            save_interval=12, image_interval=12, exp_dir=exp, seed=1)
    result = trainer.train(progress=False)
    return trainer, result, exp


# ============================================================================ training
def test_training_lowers_the_loss(trained):
    trainer, result, _ = trained
    assert result.step == 24 and len(result.history["loss"]) == 24 and result.history["step"] == list(range(1, 25))
    assert set(result.history) == {"step", "loss", "loss_clip", "loss_l2_latent"}  # id_lambda=0: no ID term
    assert trainer.train_latents.shape[0] == 8 and trainer.val_latents.shape[0] == 2
    vals = result.val_history
    assert [v["step"] for v in vals] == [0, 8, 16, 24]
    print("validation losses", [round(v["loss"], 5) for v in vals])
    assert vals[-1]["loss"] < vals[0]["loss"] - 0.005 and vals[-1]["loss_clip"] < vals[0]["loss_clip"] - 0.005
    h = result.history["loss_clip"]
    assert sum(h[-6:]) / 6 < sum(h[:6]) / 6
    # total = clip + 0.8 * l2, the reference weights; l2 = mean squared (0.1 * delta)
    for tot, c, l2 in zip(result.history["loss"], h, result.history["loss_l2_latent"]):
        assert tot == pytest.approx(c + 0.8 * l2, rel=1e-5)
    w = trainer.val_latents
    with torch.no_grad():
        l2 = torch.mean((0.1 * trainer.mapper(w)) ** 2).item()
    assert vals[-1]["loss_l2_latent"] == pytest.approx(l2, rel=1e-4)


def test_best_model_checkpoints_and_grids(trained, G, tmp_path):
    trainer, result, exp = trained
    ck = exp / "checkpoints"
    assert {p.name for p in ck.glob("*.pt")} == {"iteration_12.pt", "iteration_24.pt", "best_model.pt"}
    assert result.last_checkpoint == ck / "iteration_24.pt" and result.best_checkpoint == ck / "best_model.pt"
    non_baseline = [v for v in result.val_history if v["step"] > 0]
    best = min(non_baseline, key=lambda v: v["loss"])
    assert result.best_step == best["step"] and result.best_val_loss == best["loss"]
    assert torch.load(ck / "best_model.pt", weights_only=True)["step"] == best["step"]
    assert (ck / "timestamp.txt").read_text().count("**Best**") >= 1

    from PIL import Image

    for step in (0, 8, 16, 24):
        img = Image.open(exp / "logs" / "images_val" / f"{step:05d}.png")
        assert img.size == (2 * 34 + 2, 2 * 34 + 2)  # 2 held-out samples: sources over edits, 32 px + 2 px pad
    assert (exp / "logs" / "images_train" / "00012.png").exists()
    lines = [json.loads(s) for s in (exp / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert any(r["split"] == "test" and r["step"] == 24 for r in lines)


def test_checkpoint_is_official_format_and_round_trips(trained, G, latents):
    trainer, result, exp = trained
    path = exp / "checkpoints" / "iteration_24.pt"
    ckpt = torch.load(path, weights_only=True)
    mapper_keys = {k for k in ckpt["state_dict"] if k.startswith("mapper.")}
    assert mapper_keys == {f"mapper.{k}" for k in trainer.mapper.state_dict()}
    assert any(k.startswith("mapper.course_mapping.") for k in mapper_keys)
    assert not any(k.startswith("mapper.fine_mapping.") for k in mapper_keys)  # 8 rows: no fine group
    assert any(k.startswith("decoder.") for k in ckpt["state_dict"])
    manifest = json.loads(conformance_path("mapper/full_size_manifest.json").read_text())
    assert set(manifest["opts_keys"]) <= set(ckpt["opts"])
    assert ckpt["opts"]["description"] == "purple hair" and ckpt["opts"]["optim_name"] == "adam"
    assert ckpt["step"] == 24 and {"optimizer", "rng"} <= set(ckpt)

    loaded = load_mapper(path, device="cpu")
    assert (loaded.num_ws, loaded.latent_dim) == (G.num_ws, G.w_dim)
    with torch.no_grad():
        torch.testing.assert_close(loaded(latents), trainer.mapper(latents), rtol=0, atol=0)
    # the embedded generator is loadable and identical
    g2 = load_generator(path, device="cpu")
    torch.testing.assert_close(g2.latent_avg, G.latent_avg)
    with torch.no_grad():
        torch.testing.assert_close(g2.synthesis(latents[:2]), G.synthesis(latents[:2]))


def test_resume_continues_exactly_with_ranger(G, C, latents, tmp_path):
    kw = dict(description="a smiling face", latents=latents[:6], val_latents=latents[6:8], id_lambda=0,
              optimizer="ranger", learning_rate=20.0, batch_size=2, val_interval=5, save_interval=5,
              image_interval=None, seed=4, validate_at_start=False)
    straight = MapperTrainer(G, C, max_steps=10, exp_dir=tmp_path / "a", **kw)
    init = {k: v.clone() for k, v in straight.mapper.state_dict().items()}
    ra = straight.train(progress=False)

    MapperTrainer(G, C, max_steps=5, exp_dir=tmp_path / "b", **kw).train(progress=False)
    resumed = MapperTrainer(G, C, max_steps=10, exp_dir=tmp_path / "b",
                            resume_from=tmp_path / "b" / "checkpoints" / "iteration_5.pt", **kw)
    assert resumed.step == 5
    rb = resumed.train(progress=False)

    assert rb.step == 10 and rb.history["step"] == list(range(1, 11))
    moved = max((straight.mapper.state_dict()[k] - init[k]).abs().max().item() for k in init)
    diff = max((straight.mapper.state_dict()[k] - resumed.mapper.state_dict()[k]).abs().max().item() for k in init)
    print("resume: weights moved", moved, "straight vs resumed", diff)
    assert moved > 0.1 and diff <= 1e-5 * moved
    for k in ra.history:
        assert ra.history[k] == pytest.approx(rb.history[k], rel=1e-6, abs=1e-9)
    assert [v["step"] for v in rb.val_history] == [5, 10]
    assert rb.val_history[-1]["loss"] == pytest.approx(ra.val_history[-1]["loss"], rel=1e-6)
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for i in sa:
        assert sa[i]["step"] == sb[i]["step"] == 10
        torch.testing.assert_close(sa[i]["slow_buffer"], sb[i]["slow_buffer"], rtol=1e-5, atol=1e-6)


def test_keyboard_interrupt_saves_then_resumes(G, C, latents, tmp_path):
    kw = dict(description="purple hair", latents=latents[:6], val_latents=latents[6:8], id_lambda=0, max_steps=4,
              save_interval=100, image_interval=None, validate_at_start=False, exp_dir=tmp_path)

    def interrupt(step, logs):
        if step == 2:
            raise KeyboardInterrupt

    trainer = MapperTrainer(G, C, **kw)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(progress=False, callback=interrupt)
    path = tmp_path / "checkpoints" / "iteration_2.pt"
    assert path.exists() and torch.load(path, weights_only=True)["step"] == 2
    resumed = MapperTrainer(G, C, resume_from=path, **kw)
    stop_at = []
    res = resumed.train(progress=False, callback=lambda step, logs: stop_at.append(step) or step == 3)
    assert res.stopped_early and res.step == 3 and stop_at == [3] and len(res.history["loss"]) == 3
    assert (tmp_path / "checkpoints" / "iteration_3.pt").exists()


def test_ctrl_c_is_deferred_during_the_optimizer_update():
    import os
    import signal

    from styleclip_lib.methods.mapper import _defer_sigint

    done = []
    with pytest.raises(KeyboardInterrupt):
        with _defer_sigint():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the signal is handled here and must not interrupt the block
                pass
            done.append(True)
    assert done == [True] and signal.getsignal(signal.SIGINT) is signal.default_int_handler


class _TinyIdentity(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(8), nn.Flatten(), nn.Linear(3 * 64, 16))

    def forward(self, x):
        return nn.functional.normalize(self.net(x), dim=1)


def test_identity_loss_term(G, C, latents):
    ident = _TinyIdentity()
    trainer = MapperTrainer(G, C, ident, description="purple hair", latents=latents[:4], val_latents=latents[4:6],
                            max_steps=2, validate_at_start=False, image_interval=None)
    res = trainer.train(progress=False)
    h = res.history
    assert set(h) == {"step", "loss", "loss_id", "loss_clip", "loss_l2_latent"}
    for tot, i, c, l2 in zip(h["loss"], h["loss_id"], h["loss_clip"], h["loss_l2_latent"]):
        assert 0 <= i < 1 and tot == pytest.approx(0.1 * i + c + 0.8 * l2, rel=1e-5)
    assert all(not p.requires_grad for p in G.parameters())  # frozen state restored as found
    assert all(p.requires_grad for p in ident.parameters())


def test_directional_clip_term(G, C, latents):
    """``neutral=``: the CLIP term is the directional loss against the source images, computed by
    ``CLIPLoss.directional`` from the mapper's own edit; recorded in the checkpoint options."""
    trainer = MapperTrainer(G, C, description="purple hair", neutral="hair", latents=latents[:4],
                            val_latents=latents[4:6], id_lambda=0, max_steps=2, validate_at_start=False,
                            image_interval=None)
    res = trainer.train(progress=False)
    assert all(0 <= c <= 2 and math.isfinite(c) for c in res.history["loss_clip"])
    w = latents[4:6]
    with torch.no_grad():
        x, w_hat, x_hat = trainer._forward(w, need_source=False)
        direction = trainer.clip_loss.text_direction("purple hair", "hair")
        expect = trainer.clip_loss.directional(x_hat, trainer.clip_loss.image_features(x), direction).mean()
        _, logs = trainer.calc_loss(w, x, w_hat, x_hat)
    assert logs["loss_clip"] == pytest.approx(float(expect), rel=1e-5)
    assert trainer.checkpoint_dict()["opts"]["neutral"] == "hair"
    with pytest.raises(ValueError, match="neutral"):
        MapperTrainer(G, C, description="purple hair", neutral=" ", latents=latents[:4], id_lambda=0)


def test_anchored_clip_term(G, C, latents):
    """``clip_loss='anchored'``: each edit is scored against its source's CLIP embedding moved
    ``anchor_step`` along the text direction; the options record the loss; a text-pair loss
    without a neutral text is refused."""
    trainer = MapperTrainer(G, C, description="purple hair", neutral="hair", clip_loss="anchored", anchor_step=0.5,
                            latents=latents[:4], val_latents=latents[4:6], id_lambda=0, max_steps=2,
                            validate_at_start=False, image_interval=None)
    trainer.train(progress=False)
    w = latents[4:6]
    with torch.no_grad():
        x, w_hat, x_hat = trainer._forward(w, need_source=False)
        direction = trainer.clip_loss.text_direction("purple hair", "hair")
        target = torch.nn.functional.normalize(trainer.clip_loss.image_features(x) + 0.5 * direction, dim=-1)
        expect = (1 - (trainer.clip_loss.image_features(x_hat) * target).sum(-1)).mean()
        _, logs = trainer.calc_loss(w, x, w_hat, x_hat)
    assert logs["loss_clip"] == pytest.approx(float(expect), rel=1e-5)
    opts = trainer.checkpoint_dict()["opts"]
    assert opts["clip_loss"] == "anchored" and opts["anchor_step"] == 0.5
    for kw in (dict(clip_loss="anchored"), dict(clip_loss="global", neutral="hair"), dict(clip_loss="cosine")):
        with pytest.raises(ValueError, match="neutral|clip_loss"):
            MapperTrainer(G, C, description="purple hair", latents=latents[:4], id_lambda=0, **kw)


# ============================================================================ inference pipeline
def test_pipeline_strength_zero_is_exact_and_default_edit(trained, G, latents):
    trainer, _, exp = trained
    pipe = LatentMapperEdit(G, trainer.mapper)
    out = pipe(latents[:3], strength=0.0)
    assert isinstance(out, MapperResult)
    assert torch.equal(out.w_plus, latents[:3]) and torch.equal(out.images, out.source_images)
    with torch.no_grad():
        assert torch.equal(out.source_images, G.synthesis(latents[:3]))
    out = pipe(latents[0])  # single (num_ws, w_dim) latent, reference strength 0.1
    assert out.images.shape == (1, 3, 32, 32) and out.strength == 0.1
    with torch.no_grad():
        delta = trainer.mapper(latents[:1])
    torch.testing.assert_close(out.delta, delta)
    torch.testing.assert_close(out.w_plus, latents[:1] + 0.1 * delta)
    with torch.no_grad():
        torch.testing.assert_close(out.images, G.synthesis(out.w_plus))
    lat_only = pipe(latents[:2], return_images=False)
    assert lat_only.images is None and lat_only.source_images is None
    pre = MapperEdit.from_pretrained(G, exp / "checkpoints" / "best_model.pt")
    assert pre(latents[:2], return_images=False).w_plus.shape == (2, G.num_ws, G.w_dim)


# ============================================================================ errors
def test_errors(G, C, latents, tmp_path):
    base = dict(latents=latents[:4], val_latents=latents[4:6], id_lambda=0, max_steps=1)
    for bad in ("", "   "):
        with pytest.raises(ValueError, match="description"):
            MapperTrainer(G, C, description=bad, **base)
    with pytest.raises(ValueError, match="identity"):
        MapperTrainer(G, C, description="purple hair", latents=latents[:4], id_lambda=0.1)
    for bad in (torch.zeros(18, 512, 1), torch.zeros(4, 18, 512), torch.zeros(G.num_ws, G.w_dim + 1)):
        with pytest.raises(ValueError, match="expected W\\+ of shape"):
            MapperTrainer(G, C, description="purple hair", **{**base, "latents": bad})
    nan = latents[:4].clone()
    nan[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        MapperTrainer(G, C, description="purple hair", **{**base, "latents": nan})
    with pytest.raises(ValueError, match="batch_size"):
        MapperTrainer(G, C, description="purple hair", **{**base, "batch_size": 5})
    with pytest.raises(ValueError, match="optimizer"):
        MapperTrainer(G, C, description="purple hair", **base, optimizer="sgd")
    with pytest.raises(ValueError, match="all 0"):
        MapperTrainer(G, C, description="x", **base, clip_lambda=0, latent_l2_lambda=0)
    with pytest.raises(ValueError, match="disabled"):
        MapperTrainer(G, C, description="x", **base, no_coarse_mapper=True, no_medium_mapper=True)
    # an official mapper file is not resumable (no optimizer / step / rng)
    with pytest.raises(CheckpointError, match="resume"):
        MapperTrainer(G, C, description="x", **base, resume_from=conformance_path("mapper/mapper_default.pt"))

    # pipeline: mapper / generator size mismatch, latent shape, strength
    with pytest.raises(ValueError, match="does not fit the generator"):
        LatentMapperEdit(G, LevelsMapper(128, 18))
    with pytest.raises(ValueError, match="does not fit the generator"):
        LatentMapperEdit.from_pretrained(G, conformance_path("mapper/mapper_default.pt"))
    pipe = LatentMapperEdit(G, LevelsMapper(G.w_dim, G.num_ws))
    with pytest.raises(ValueError, match="expected W\\+ of shape"):
        pipe(torch.zeros(18, 512, 1))
    with pytest.raises(ValueError, match="NaN"):
        pipe(torch.full((G.num_ws, G.w_dim), float("nan")))
    with pytest.raises(ValueError, match="strength"):
        pipe(latents[:1], strength=float("nan"))


# ============================================================================ StyleSpace mapper
def test_style_space_mapper_trains_round_trips_and_edits_conv_layers_only(G, C, latents, tmp_path):
    from styleclip_lib.models.mapper import StyleSpaceMapper

    # a low latent L2: the untrained per-layer mappers start with large deltas, which the reference
    # weight 0.8 would spend these few steps shrinking
    trainer = MapperTrainer(G, C, description="purple hair", latents=latents, val_fraction=0.2, id_lambda=0,
                            latent_l2_lambda=0.05, optimizer="adam", learning_rate=2.0, batch_size=2, max_steps=16,
                            val_interval=8, save_interval=16, image_interval=None, exp_dir=tmp_path, seed=1,
                            work_in_stylespace=True)
    assert isinstance(trainer.mapper, StyleSpaceMapper)
    assert trainer.mapper.conv_indices == G.conv_style_indices  # reference: no mapper on the ToRGB layers
    result = trainer.train(progress=False)
    vals = result.val_history
    assert vals[-1]["loss_clip"] < vals[0]["loss_clip"] - 0.005
    # latent L2: the reference's sum over style layers of each layer's MSE of 0.1·delta
    w = trainer.val_latents
    with torch.no_grad():
        deltas = trainer.mapper(G.styles(w))
        l2 = sum(torch.mean((0.1 * d) ** 2) for d in deltas).item()
        per_row = torch.mean((0.1 * torch.cat(deltas, 1)) ** 2).item()
    assert vals[-1]["loss_l2_latent"] == pytest.approx(l2, rel=1e-4) and l2 > 2 * per_row

    path = tmp_path / "checkpoints" / "iteration_16.pt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["opts"]["work_in_stylespace"] is True
    assert {k.split(".")[1] for k in ckpt["state_dict"] if k.startswith("mapper.")} == \
        {f"mapper_{i}" for i in G.conv_style_indices}
    loaded = load_mapper(path, device="cpu")
    assert isinstance(loaded, StyleSpaceMapper) and loaded.style_channels == G.style_channels
    # without the kit's style_channels option the widths are inferred from the keys alone
    bare = {"state_dict": {k: v for k, v in ckpt["state_dict"].items() if k.startswith("mapper.")},
            "opts": {"work_in_stylespace": True}}
    torch.save(bare, tmp_path / "bare.pt")
    assert load_mapper(tmp_path / "bare.pt").style_channels == G.style_channels

    pipe = LatentMapperEdit.from_pretrained(G, path)
    out = pipe(latents[:3])
    assert out.w_plus is None and len(out.styles) == len(G.style_channels)
    with torch.no_grad():
        src = G.styles(latents[:3])
        torch.testing.assert_close(out.images, G.synthesis_from_styles(out.styles))
    for i, (a, b) in enumerate(zip(out.styles, src)):
        moved = (a - b).abs().max().item()
        assert (moved > 0) == (i in G.conv_style_indices), i
    zero = pipe(latents[:3], strength=0.0)
    assert torch.equal(zero.images, zero.source_images)
    # a StyleSpace mapper of another generator is refused with the layer widths
    other = StyleSpaceMapper([c * 2 for c in G.style_channels])
    with pytest.raises(ValueError, match="StyleSpace mapper edits"):
        LatentMapperEdit(G, other)


def test_channel_masked_style_space_mapper(G, C, latents, tmp_path):
    """``channel_beta``: only the channels global directions keeps move, each only the way the
    direction moves it (``channel_sign``), by steps of its std; the mask survives a checkpoint."""
    import torch.nn.functional as F

    from styleclip_lib import global_directions as GD

    from styleclip_lib.losses.clip_loss import CLIPLoss

    dim = CLIPLoss(C).text_direction("purple hair", "hair").shape[-1]
    rows = sum(G.style_channels[i] for i in G.conv_style_indices)
    fs3 = F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(9)), dim=1)
    std = [0.5 + 0.25 * (torch.arange(c) % 3).float() for c in G.style_channels]
    kw = dict(description="purple hair", neutral="hair", clip_loss="anchored", latents=latents, val_fraction=0.2,
              id_lambda=0, optimizer="adam", learning_rate=1.0, batch_size=2, max_steps=6, val_interval=6,
              save_interval=6, image_interval=None, seed=1, work_in_stylespace=True, fs3=fs3, style_std=std)
    trainer = MapperTrainer(G, C, channel_beta=0.1, exp_dir=tmp_path, **kw)
    ds, num = GD.relevant_channels(C, G, fs3, "purple hair", "hair", 0.1)
    assert trainer.num_channels == num and 0 < num < rows
    trainer.train(progress=False)
    out = LatentMapperEdit(G, trainer.mapper)(latents[:4])
    for i, (a, b) in enumerate(zip(out.styles, out.source_styles)):
        step = a - b
        assert bool((step[:, ds[i] == 0] == 0).all()), f"layer {i}: a dropped channel moved"
        assert bool((step * torch.sign(ds[i]) >= 0).all()), f"layer {i}: a channel moved against ds"
    assert any(bool((a != b).any()) for a, b in zip(out.styles, out.source_styles))
    loaded = load_mapper(tmp_path / "checkpoints" / "iteration_6.pt")
    assert loaded.masked and loaded.signed
    again = LatentMapperEdit(G, loaded)(latents[:4])
    for a, b in zip(again.styles, out.styles):
        torch.testing.assert_close(a, b)
    free = MapperTrainer(G, C, channel_beta=0.1, channel_sign=False, **kw)
    d = free.mapper(G.styles(latents[:4]))
    assert any(bool((d[i] * torch.sign(ds[i]) < 0).any()) for i in G.conv_style_indices)
    for kwargs, match in ((dict(work_in_stylespace=False), "work_in_stylespace"), (dict(fs3=None), "fs3"),
                          (dict(neutral=None, clip_loss="global"), "neutral")):
        with pytest.raises(ValueError, match=match):
            MapperTrainer(G, C, **{**kw, "channel_beta": 0.1, **kwargs})
    with pytest.warns(UserWarning, match="no channel"), pytest.raises(ValueError, match="lower channel_beta"):
        MapperTrainer(G, C, **{**kw, "channel_beta": 1.0})


def test_range_loss_counts_only_what_leaves_the_channel_spread(G, C, latents, tmp_path):
    """``range_lambda``: squared excess (in stds) past ``range_sigma`` of the mean, or past the source's
    own distance when the source is already outside; nothing for an edit inside the spread."""
    mean = [torch.zeros(c) for c in G.style_channels]
    std = [torch.full((c,), 0.5) for c in G.style_channels]
    kw = dict(description="purple hair", latents=latents, val_fraction=0.2, id_lambda=0, work_in_stylespace=True,
              max_steps=2, range_lambda=2.0, range_sigma=2.0, style_mean=mean, style_std=std, batch_size=2,
              val_interval=2, save_interval=2, image_interval=None, optimizer="adam", learning_rate=1.0, seed=1)
    trainer = MapperTrainer(G, C, exp_dir=tmp_path, **kw)
    w = latents[:2]
    with torch.no_grad():
        src = G.styles(w)
    assert float(trainer._range_loss(src, src)) == 0.0
    i, j = G.conv_style_indices[1], G.conv_style_indices[-1]
    hat = [s.clone() for s in src]
    z_src = src[i][:, 0] / 0.5
    hat[i][:, 0] = torch.sign(z_src) * (z_src.abs().clamp_min(2.0) + 3.0) * 0.5  # 3 stds past its bound
    hat[i][:, 1] = 0.0  # towards the mean: free
    hat[j][:, 2] = torch.sign(src[j][:, 2]) * torch.maximum(src[j][:, 2].abs(), torch.tensor(1.0))  # within 2 stds or the source's own
    torch.testing.assert_close(trainer._range_loss(hat, src), torch.tensor(9.0))
    loss, logs = trainer.calc_loss(w, None, hat, G.synthesis_from_styles(hat, noise_mode="const"))
    assert logs["loss_range"] == pytest.approx(9.0) and logs["loss"] == pytest.approx(logs["loss_clip"] + 0.8 * logs["loss_l2_latent"] + 2.0 * 9.0, rel=1e-5)
    trainer.train(progress=False)
    assert "loss_range" in trainer.history and len(trainer.history["loss_range"]) == 2
    ckpt = torch.load(tmp_path / "checkpoints" / "iteration_2.pt", weights_only=False)
    assert ckpt["opts"]["range_lambda"] == 2.0 and ckpt["opts"]["range_sigma"] == 2.0
    for bad, match in ((dict(work_in_stylespace=False), "work_in_stylespace"), (dict(range_sigma=0), "range_sigma"),
                       (dict(range_lambda=-1.0), "range_lambda")):
        with pytest.raises(ValueError, match=match):
            MapperTrainer(G, C, **{**kw, **bad})
