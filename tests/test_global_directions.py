"""StyleCLIP global directions: conformance with shared/conformance/global_directions goldens,
plus properties (β monotonicity, α = 0 identity, resumable fs3) and input validation."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import conformance_path, load_conformance
from styleclip_lib import global_directions as gd
from styleclip_lib.models.stylegan2 import load_generator

TOL = 1e-5  # README: boundaries, ds, r, codes, dt, fs3


# ----------------------------------------------------------------------------- helpers

def assert_abs(actual, golden, tol=TOL, what=""):
    a = torch.as_tensor(actual).detach().double().cpu()
    g = torch.as_tensor(golden).detach().double().cpu()
    assert a.shape == g.shape, f"{what}: shape {tuple(a.shape)} != {tuple(g.shape)}"
    err = (a - g).abs().max().item() if a.numel() else 0.0
    assert err <= tol, f"{what}: max abs err {err:.3e} > {tol}"


def assert_image(actual, golden, what=""):
    tol = 1e-4 * max(1.0, golden.abs().max().item())
    assert_abs(actual, golden, tol, what)


def assert_uint8(actual, golden, what=""):
    a, g = actual.to(torch.int16), golden.to(torch.int16)
    assert a.shape == g.shape, f"{what}: shape {tuple(a.shape)} != {tuple(g.shape)}"
    d = (a - g).abs()
    assert d.max().item() <= 1, f"{what}: uint8 differs by {d.max().item()}"
    frac = (d > 0).double().mean().item()
    assert frac <= 0.005, f"{what}: {frac:.4%} of uint8 values differ"


@pytest.fixture(scope="module")
def gen():
    return load_generator(conformance_path("stylegan2/generator_ckpt.pt"), device="cpu")


@pytest.fixture(scope="module")
def bs():
    return load_conformance("global_directions/boundary_small.pt")


@pytest.fixture(scope="module")
def small_layout(bs):
    return json.loads(bs["layout_json"])


def render(gen, codes_list):
    """(N, K, C) codes → images (N, K, 3, H, W), in one batch (the reference renders one image at a
    time; batching only flips rare uint8 LSBs, inside the README tolerance)."""
    n, k = codes_list[0].shape[:2]
    with torch.no_grad():
        img = gen.synthesis_from_styles([c.flatten(0, 1) for c in codes_list], noise_mode="const")
    return img.reshape(n, k, *img.shape[1:])


def small_edit(bs, chans, conv, fs3, alpha, beta, layers=None):
    ds, num = gd.channel_direction(fs3, bs["in.dt"], beta)
    boundary = gd.split_to_layers(ds, chans, conv, bs["in.code_std_flat"])
    codes = gd.split_flat(bs["in.codes_flat"], chans)
    return ds, num, boundary, gd.apply_direction(codes, boundary, alpha, layers)


# ----------------------------------------------------------------------------- (a) text direction

def test_templates_match_golden():
    td = load_conformance("global_directions/text_direction.pt")
    assert list(gd.IMAGENET_TEMPLATES) == json.loads(td["templates_json"])
    assert len(gd.IMAGENET_TEMPLATES) == td["num_templates"] == 79


def test_text_direction_golden():
    td = load_conformance("global_directions/text_direction.pt")
    t, n = td["in.target_template_embeddings"], td["in.neutral_template_embeddings"]
    assert_abs(gd.class_embedding(t), td["out.text_feature_target"], what="f_target")
    assert_abs(gd.class_embedding(n), td["out.text_feature_neutral"], what="f_neutral")
    dt = gd.text_direction_from_embeddings(t, n)
    assert dt.dtype == torch.float32
    assert_abs(dt, td["out.dt"], what="dt")
    # fp16 embeddings (GPU CLIP) work too
    assert_abs(gd.text_direction_from_embeddings(t.half(), n.half()), td["out.dt"], tol=5e-3, what="dt fp16")


def test_text_direction_identical_prompts_raise():
    td = load_conformance("global_directions/text_direction.pt")
    t = td["in.target_template_embeddings"]
    with pytest.raises(ValueError, match="identical"):
        gd.text_direction_from_embeddings(t, t.clone())
    fake = _FakeTextCLIP()
    with pytest.raises(ValueError, match="identical"):
        gd.text_direction(fake, "a face", "a face", tokenizer=_fake_tokenize)
    with pytest.raises(ValueError, match="empty"):
        gd.text_direction(fake, "", "a face", tokenizer=_fake_tokenize)
    with pytest.raises(ValueError, match="empty"):
        gd.text_direction(fake, "a face", "   ", tokenizer=_fake_tokenize)


def _fake_tokenize(texts):
    out = torch.zeros(len(texts), 16, dtype=torch.long)
    for i, s in enumerate(texts):
        b = list(s.encode())[:16]
        out[i, : len(b)] = torch.tensor(b)
    return out


class _FakeTextCLIP(torch.nn.Module):
    """encode_text = fixed random projection of the (byte) tokens; counts its calls."""

    def __init__(self, dim=32, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Parameter(torch.randn(16, dim, generator=g), requires_grad=False)
        self.emb = torch.nn.Parameter(torch.randn(50000, 1, generator=g), requires_grad=False)
        self.calls = 0

    def encode_text(self, tokens):
        self.calls += 1
        t = tokens[:, :16]
        x = self.emb[t.clamp(max=49999)][..., 0] + t.float() / 100
        return x @ self.proj


def test_text_direction_glue_and_cache():
    gd.clear_text_cache()
    m = _FakeTextCLIP()
    dt = gd.text_direction(m, "face with blue eyes", "face with eyes", tokenizer=_fake_tokenize)
    assert m.calls == 2
    with torch.no_grad():
        et = m.encode_text(_fake_tokenize([t.format("face with blue eyes") for t in gd.IMAGENET_TEMPLATES]))
        en = m.encode_text(_fake_tokenize([t.format("face with eyes") for t in gd.IMAGENET_TEMPLATES]))
    assert torch.allclose(dt, gd.text_direction_from_embeddings(et, en), atol=1e-6)
    calls = m.calls
    dt2 = gd.text_direction(m, "face with blue eyes", "face with eyes", tokenizer=_fake_tokenize)
    assert m.calls == calls and torch.equal(dt, dt2)  # both prompts cached
    gd.text_direction(m, "face with eyes", "face with green eyes", tokenizer=_fake_tokenize)
    assert m.calls == calls + 1  # only the new prompt is encoded
    m2 = _FakeTextCLIP(seed=1)
    dt3 = gd.text_direction(m2, "face with blue eyes", "face with eyes", tokenizer=_fake_tokenize)
    assert m2.calls == 2 and not torch.allclose(dt, dt3)  # cache is per model
    gd.text_direction(m, "face with blue eyes", "face with eyes", tokenizer=_fake_tokenize, cache=False)
    assert m.calls == calls + 3
    gd.clear_text_cache()


def test_text_direction_default_tokenizer():
    """The default tokenizer path (styleclip_lib.tokenizer.tokenize) with a fake encode_text."""
    gd.clear_text_cache()
    m = _FakeTextCLIP()
    dt = gd.text_direction(m, "face with blue eyes", "face with eyes", templates=gd.IMAGENET_TEMPLATES[:3])
    assert dt.shape == (32,) and torch.isfinite(dt).all()
    assert abs(dt.norm().item() - 1) < 1e-6
    gd.clear_text_cache()


# ----------------------------------------------------------------------------- (b)+(c) boundary, small generator

def test_relevance_golden(bs):
    assert_abs(gd.relevance(bs["in.fs3"], bs["in.dt"]), bs["out.r"], what="r")


@pytest.mark.parametrize("k", range(6))
def test_boundary_small_pairs(gen, bs, small_layout, k):
    chans, conv = small_layout["channels"], small_layout["mindexs"]
    assert chans == gen.style_channels and conv == gen.conv_style_indices
    alpha, beta = bs["pairs"][k].tolist()
    ds, num, boundary, codes = small_edit(bs, chans, conv, bs["in.fs3"], [alpha], beta)
    assert num == bs[f"out.pair{k}.num_c"]
    assert_abs(ds, bs[f"out.pair{k}.ds_imp"], what="ds")
    assert_abs(gd.flatten_styles(boundary), bs[f"out.pair{k}.boundary_flat"], what="boundary")
    assert_abs(gd.flatten_styles(codes), bs[f"out.pair{k}.codes_flat"], what="codes")
    img = render(gen, codes)
    assert_image(img, bs[f"out.pair{k}.image"], what="image")
    u8 = gd.to_uint8(img.flatten(0, 1)).reshape(bs[f"out.pair{k}.image_uint8"].shape)
    assert_uint8(u8, bs[f"out.pair{k}.image_uint8"], what="uint8")
    # one image at a time, like GenerateImg
    with torch.no_grad():
        single = torch.cat([gen.synthesis_from_styles([c[i:i + 1, 0] for c in codes]) for i in range(3)])
    assert_uint8(gd.to_uint8(single)[:, None], bs[f"out.pair{k}.image_uint8"], what="uint8 one at a time")


def test_boundary_small_multi(gen, bs, small_layout):
    chans, conv = small_layout["channels"], small_layout["mindexs"]
    alphas = bs["multi.alphas"]
    ds, num, boundary, codes = small_edit(bs, chans, conv, bs["in.fs3"], alphas, bs["multi.beta"])
    assert num == bs["out.multi.num_c"]
    assert_abs(gd.flatten_styles(boundary), bs["out.multi.boundary_flat"], what="boundary")
    flat = gd.flatten_styles(codes)
    assert flat.shape == (3, 5, 544)
    assert_abs(flat, bs["out.multi.codes_flat"], what="codes")
    assert torch.equal(flat[:, 2], bs["in.codes_flat"])  # alpha = 0 step is the source, exactly
    assert_image(render(gen, codes), bs["out.multi.image"], what="image")


def test_boundary_small_layers(bs, small_layout):
    chans, conv = small_layout["channels"], small_layout["mindexs"]
    ml = bs["layers.manipulate_layers"]
    ds, num, boundary, codes = small_edit(bs, chans, conv, bs["in.fs3"], [bs["layers.alpha"]], bs["layers.beta"], ml)
    assert num == bs["out.layers.num_c"]
    assert_abs(gd.flatten_styles(boundary), bs["out.layers.boundary_flat"], what="boundary")
    assert_abs(gd.flatten_styles(codes), bs["out.layers.codes_flat"], what="codes")
    src = gd.split_flat(bs["in.codes_flat"], chans)
    for i, (c, s) in enumerate(zip(codes, src)):
        if i not in (2, 5):
            assert torch.equal(c[:, 0], s)
    # an int selects one layer, same as [int]
    one = gd.apply_direction(src, boundary, 4.1, 2)
    assert torch.equal(one[2], gd.apply_direction(src, boundary, 4.1, [2])[2]) and torch.equal(one[5], src[5])


def test_boundary_small_partial(bs, small_layout):
    chans, conv = small_layout["channels"], small_layout["mindexs"]
    fs3 = bs["in.fs3"][: bs["partial.rows"]]
    ds, num, boundary, codes = small_edit(bs, chans, conv, fs3, [bs["partial.alpha"]], bs["partial.beta"])
    assert num == bs["out.partial.num_c"]
    assert_abs(gd.flatten_styles(boundary), bs["out.partial.boundary_flat"], what="boundary")
    assert_abs(gd.flatten_styles(codes), bs["out.partial.codes_flat"], what="codes")
    for i in range(6, 11):
        assert not boundary[i].any()


def test_boundary_small_nan_case_is_zero_with_warning(bs, small_layout):
    """Deliberate deviation: the reference gives NaN (0/0) when no channel passes beta;
    we return a zero direction, num_c = 0 and a warning, so the edit is a no-op."""
    chans, conv = small_layout["channels"], small_layout["mindexs"]
    assert bs["out.nan.num_c"] == 0 and torch.isnan(bs["out.nan.codes_flat"]).any()
    with pytest.warns(UserWarning, match="no channel"):
        ds, num, boundary, codes = small_edit(bs, chans, conv, bs["in.fs3"], [bs["nan.alpha"]], bs["nan.beta"])
    assert num == bs["out.nan.num_c"] == 0
    assert not torch.isnan(ds).any() and not ds.any()
    assert not gd.flatten_styles(boundary).any()
    flat = gd.flatten_styles(codes)
    assert torch.equal(flat[:, 0], bs["in.codes_flat"])
    # The golden's NaN positions are exactly the conv entries we leave unchanged.
    nan_pos = torch.isnan(bs["out.nan.boundary_flat"])
    conv_mask = torch.zeros(544, dtype=torch.bool)
    offs = small_layout["offsets_all_layers"]
    for i in conv:
        conv_mask[offs[i]:offs[i + 1]] = True
    assert torch.equal(nan_pos, conv_mask)


def test_autobeta_golden(bs):
    assert np.array_equal(gd.AUTO_BETAS, bs["autobeta.betas"].numpy())
    for c in (20, 100):
        beta, counts = gd.auto_beta(bs["in.fs3"], bs["in.dt"], c_threshold=c, return_counts=True)
        assert beta == bs[f"out.autobeta.c{c}.beta"]  # exact float64 arange value
        assert torch.equal(counts, bs[f"out.autobeta.c{c}.num_cs"])
    assert gd.auto_beta(bs["in.fs3"], bs["in.dt"], c_threshold=10_000) == 0.1


# ----------------------------------------------------------------------------- 1024 layout (no generator)

@pytest.fixture(scope="module")
def b1024():
    return load_conformance("global_directions/boundary_layout1024.pt")


@pytest.mark.parametrize("case", ["pair0", "pair1", "pair2", "partial5376"])
def test_boundary_layout1024(b1024, case):
    lay = json.loads(b1024["layout_json"])
    chans, conv = lay["channels"], lay["mindexs"]
    assert sum(chans) == 9088 and sum(chans[i] for i in conv) == 6048
    if case == "partial5376":
        alpha, beta = b1024["partial5376.alpha"], b1024["partial5376.beta"]
        fs3 = b1024["in.fs3"][:5376]
    else:
        alpha, beta = b1024["pairs"][int(case[-1])].tolist()
        fs3 = b1024["in.fs3"]
    ds, num = gd.channel_direction(fs3, b1024["in.dt"], beta)
    assert num == b1024[f"out.{case}.num_c"]
    boundary = gd.split_to_layers(ds, chans, conv, b1024["in.code_std_flat"])
    assert_abs(gd.flatten_styles(boundary), b1024[f"out.{case}.boundary_flat"], what="boundary")
    codes = gd.apply_direction(gd.split_flat(b1024["in.codes_flat"], chans), boundary, [alpha])
    assert_abs(gd.flatten_styles(codes), b1024[f"out.{case}.codes_flat"], what="codes")
    if case == "partial5376":
        assert all(not boundary[i].any() for i in range(17, 26))


def test_split_to_layers_mid_layer_error(b1024):
    lay = json.loads(b1024["layout_json"])
    with pytest.raises(ValueError, match="middle of conv layer"):
        gd.split_to_layers(torch.ones(5000), lay["channels"], lay["mindexs"])
    with pytest.raises(ValueError, match="only 6048 conv channels"):
        gd.split_to_layers(torch.ones(6049), lay["channels"], lay["mindexs"])


# ----------------------------------------------------------------------------- fs3

def test_fs3_getfs_golden():
    d = load_conformance("global_directions/fs3_getfs.pt")
    fs3 = gd.fs3_from_features(d["in.features"])
    assert fs3.dtype == torch.float32
    assert_abs(fs3, d["out.fs3"], what="fs3")


def test_fs3_magnitude_rows_keep_each_channels_effect():
    """``normalize='magnitude'``: the plain mean of the unit-feature differences (the paper's
    E[ΔI_c]); a channel with a 10x weaker but identical effect gets a 10x shorter row, where the
    reference's unit rows make both the same length."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(1, 5, 1, 16, generator=g, dtype=torch.float64).expand(2, 5, 1, 16).clone()
    step = torch.randn(16, generator=g, dtype=torch.float64)
    feats = torch.cat([base, base.clone()], 2)
    feats[0, :, 1] += 0.1 * step
    feats[1, :, 1] += 0.01 * step
    mag = gd.fs3_from_features(feats, normalize="magnitude")
    ref = gd.fs3_from_features(feats)
    f = feats / feats.norm(dim=-1, keepdim=True)
    assert torch.allclose(mag, (f[:, :, 1] - f[:, :, 0]).mean(1))
    assert torch.allclose(ref.norm(dim=1), torch.ones(2, dtype=torch.float64))
    ratio = float(mag[1].norm() / mag[0].norm())
    assert 0.08 < ratio < 0.12
    scaled = gd.scale_fs3(mag)
    assert float(scaled.norm(dim=1).max()) == pytest.approx(1.0)
    assert torch.allclose(scaled[1] / scaled[0].norm(), mag[1] / mag[0].norm())
    with pytest.raises(ValueError, match="normalize"):
        gd.fs3_from_features(feats, normalize="unit")
    still = torch.cat([base, base.clone()], 2)  # a constant channel (sigma 0): zero row, not NaN
    for norm in gd.FS3_NORMALIZATIONS:
        assert torch.equal(gd.fs3_from_features(still, normalize=norm), torch.zeros(2, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="every row is zero"):
        gd.scale_fs3(torch.zeros(3, 4))


def _interrupt_fs3(path, **kw):
    """Run compute_fs3 with a progress file until Ctrl-C arrives in its 5th feature call."""
    seen = {"n": 0}

    def flaky(images):
        seen["n"] += 1
        if seen["n"] == 5:
            raise KeyboardInterrupt
        return _float_feats(images)

    with pytest.raises(KeyboardInterrupt):
        gd.compute_fs3(_FakeGen(), flaky, resume_path=path, save_every=100, **kw)


def test_compute_fs3_magnitude_is_scaled_and_resumes(tmp_path):
    codes, mean, std = _fake_setup()
    kw = dict(n_images=3, codes=codes, style_mean=mean, style_std=std, progress=False, to_images=None,
              batch_size=6, normalize="magnitude")
    full = gd.compute_fs3(_FakeGen(), _float_feats, **kw)
    assert float(full.norm(dim=1).max()) == pytest.approx(1.0, abs=1e-6)
    assert float(full.norm(dim=1).min()) < 0.999  # rows keep their relative lengths
    path = tmp_path / "p.pt"
    _interrupt_fs3(path, **kw)
    assert torch.allclose(gd.compute_fs3(_FakeGen(), _float_feats, resume_path=path, **kw), full, atol=1e-6)
    with pytest.raises(ValueError, match="different settings"):
        gd.compute_fs3(_FakeGen(), _float_feats, resume_path=path, **{**kw, "normalize": "reference"})


def test_style_statistics_and_samples_golden(gen, bs, small_layout):
    chans = small_layout["channels"]
    mean, std = gd.style_statistics(gen, z=bs["in.stats_z"], truncation=0.7, batch=300, progress=False)
    assert_abs(gd.flatten_styles(mean), bs["in.code_mean_flat"], what="mean")
    assert_abs(gd.flatten_styles(std), bs["in.code_std_flat"], what="std (population)")
    codes = gd.sample_styles(gen, 3, z=bs["in.stats_z"])
    assert_abs(gd.flatten_styles(codes), bs["in.codes_flat"], what="codes")
    # the seed stream: batched draws = one draw
    m1, s1 = gd.style_statistics(gen, n=50, batch=7, progress=False)
    z = torch.from_numpy(np.random.RandomState(5).randn(50, 64)).float()
    m2, s2 = gd.style_statistics(gen, z=z, batch=50, progress=False)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(m1 + s1, m2 + s2))
    assert len(mean) == len(chans)


def _pool_features(images_uint8):
    """README stand-in for CLIP: uint8 → float/255 → NCHW → adaptive_avg_pool2d 8×8 → flatten."""
    x = images_uint8.float() / 255.0
    return F.adaptive_avg_pool2d(x.permute(0, 3, 1, 2), 8).flatten(1)


def test_singlechannel_reference_loop_golden(gen, tmp_path):
    sc = load_conformance("global_directions/singlechannel_small.pt")
    chans, conv = gen.style_channels, gen.conv_style_indices
    n = sc["n_images"]
    codes = gd.split_flat(sc["in.dlatents_first_images_flat_before"], chans)
    mean = gd.split_flat(sc["in.code_mean_flat"], chans)
    std = gd.split_flat(sc["in.code_std_flat"], chans)
    assert sc["alpha"].tolist() == [-5, 5]
    seen = []

    def feats(u8):
        seen.append(u8.clone())
        return _pool_features(u8)

    fs3 = gd.compute_fs3(gen, feats, n_images=n, alpha=5.0, layers="reference", batch_size=128, variant="reference",
                         codes=codes, style_mean=mean, style_std=std, progress=False,
                         save_path=tmp_path / "fs3.npy")
    assert fs3.shape == (sc["num_steps"], 192) == (352, 192)
    imgs = torch.cat(seen).reshape(352, 2, n, 32, 32, 3).transpose(1, 2)  # (step, image, ±, H, W, 3)
    bounds = np.cumsum([0] + [chans[i] for i in conv])
    for step in sc["record_steps"].tolist():
        p = int(np.searchsorted(bounds, step, side="right")) - 1
        assert (conv[p], step - bounds[p]) == (sc[f"out.step{step}.layer"], sc[f"out.step{step}.channel"])
        step_codes = gd.fs3_step_codes(codes, mean, std, conv, step, alpha=5.0, variant="reference")
        assert_abs(gd.flatten_styles(step_codes), sc[f"out.step{step}.codes_flat"], what=f"step{step} codes")
        assert_uint8(imgs[step], sc[f"out.step{step}.image_uint8"], what=f"step{step} uint8")
        f = _pool_features(imgs[step].flatten(0, 1)).reshape(n, 2, -1)
        assert_abs(f, sc[f"out.step{step}.features"], tol=2e-3, what=f"step{step} features")
        # the stand-in itself is exact on the golden images
        fg = _pool_features(sc[f"out.step{step}.image_uint8"].flatten(0, 1)).reshape(n, 2, -1)
        assert_abs(fg, sc[f"out.step{step}.features"], tol=1e-6, what=f"step{step} stand-in")
    assert_abs(fs3, sc["out.fs3_pooled"], tol=1e-3, what="fs3_pooled")
    # Our generator rounds differently from the reference (conv(x·s)·d vs modulated weights), so a few
    # uint8 pixels per step flip by 1 LSB (checked above on the recorded steps: <= 0.01 %); each flip
    # moves one pooled feature by 1/(255·16) and the row by up to ~4e-4.  Rows without a flip agree to
    # ~1e-7, so check max and the rows that agree exactly separately.  How many rows see a flip depends
    # on the CPU kernels (measured: under half on one torch 2.13 CPU build, 53 % on another), while a
    # real error in the loop (wrong channel, wrong step, wrong pairing) moves every row.
    err = (fs3.double() - sc["out.fs3_pooled"].double()).abs().amax(dim=1)
    exact = (err <= 1e-6).double().mean().item()
    assert exact >= 0.25, f"only {exact:.0%} of fs3 rows agree to 1e-6 (median row error {err.median():.2e})"
    # internal consistency: compute_fs3 == GetFs of the features it was given
    all_f = _pool_features(imgs.flatten(0, 2)).reshape(352, n, 2, -1)
    assert torch.allclose(gd.fs3_from_features(all_f), fs3, atol=1e-6)
    after = gd.reference_loop_state(codes, mean, conv, 352)
    assert torch.equal(gd.flatten_styles(after), sc["out.dlatents_o_flat_after"])
    assert torch.allclose(torch.from_numpy(np.load(tmp_path / "fs3.npy")), fs3)


def test_singlechannel_corrected_step_codes_restore(gen):
    sc = load_conformance("global_directions/singlechannel_small.pt")
    chans, conv = gen.style_channels, gen.conv_style_indices
    codes = gd.split_flat(sc["in.dlatents_first_images_flat_before"], chans)
    mean = gd.split_flat(sc["in.code_mean_flat"], chans)
    std = gd.split_flat(sc["in.code_std_flat"], chans)
    src = gd.flatten_styles(codes)
    offs = np.cumsum([0] + chans)
    bounds = np.cumsum([0] + [chans[i] for i in conv])
    for step in (0, 1, 65, 300):
        ref = gd.flatten_styles(gd.fs3_step_codes(codes, mean, std, conv, step, variant="reference"))
        cor = gd.flatten_styles(gd.fs3_step_codes(codes, mean, std, conv, step, variant="corrected"))
        p = int(np.searchsorted(bounds, step, side="right")) - 1
        flat_idx = offs[conv[p]] + step - bounds[p]
        other = torch.ones(544, dtype=torch.bool)
        other[flat_idx] = False
        assert torch.equal(cor[:, :, other], src[:, None, other].expand(-1, 2, -1))  # everything else restored
        assert torch.equal(cor[:, :, flat_idx], ref[:, :, flat_idx])  # channel (l, c) = mean ± 5σ
        if step == 0:
            assert torch.equal(cor, ref)
        else:
            assert not torch.equal(cor, ref)


# ----------------------------------------------------------------------------- compute_fs3 on a cheap fake generator

class _FakeGen:
    """Duck-typed generator: 4 S layers (ToRGB at index 1), image = tanh(linear(codes))."""

    style_channels = [6, 3, 5, 4]
    style_names = ["conv1_resolution_4", "toRGB_resolution_4", "conv0_resolution_8", "conv1_resolution_8"]
    conv_style_indices = [0, 2, 3]

    def __init__(self):
        g = torch.Generator().manual_seed(3)
        self.P = torch.randn(18, 3 * 4 * 4, generator=g)
        self.calls = []

    def synthesis_from_styles(self, styles, noise_mode="const"):
        self.calls.append([s.clone() for s in styles])
        x = torch.cat(styles, dim=1) @ self.P
        return torch.tanh(x).reshape(-1, 3, 4, 4)


def _fake_setup(n=3):
    g = torch.Generator().manual_seed(7)
    chans = _FakeGen.style_channels
    codes = [torch.randn(n, c, generator=g) for c in chans]
    mean = [torch.randn(c, generator=g) * 0.1 for c in chans]
    std = [torch.rand(c, generator=g) + 0.5 for c in chans]
    return codes, mean, std


def _float_feats(images):
    return images.flatten(1)


def test_compute_fs3_corrected_vs_reference_fake():
    codes, mean, std = _fake_setup()
    fake = _FakeGen()
    kw = dict(n_images=3, codes=codes, style_mean=mean, style_std=std, progress=False, to_images=None, batch_size=5)
    ref = gd.compute_fs3(fake, _float_feats, variant="reference", **kw)
    items = torch.cat([torch.cat(c, 1) for c in fake.calls])  # all rendered codes, item order
    fake.calls.clear()
    cor = gd.compute_fs3(fake, _float_feats, variant="corrected", **kw)
    items_c = torch.cat([torch.cat(c, 1) for c in fake.calls])
    assert ref.shape == cor.shape == (15, 48)
    assert torch.allclose(ref[0], cor[0]) and not torch.allclose(ref[1:], cor[1:], atol=1e-4)
    src = torch.cat(codes, 1)
    offs = np.cumsum([0] + _FakeGen.style_channels)
    conv_flat = [offs[L] + c for L in _FakeGen.conv_style_indices for c in range(_FakeGen.style_channels[L])]
    for k, fi in enumerate(conv_flat):
        for s, sign in enumerate((-1, 1)):
            for i in range(3):
                row_c = items_c[k * 6 + s * 3 + i]
                row_r = items[k * 6 + s * 3 + i]
                expect = (mean_flat := torch.cat(mean))[fi].double() + sign * 5 * torch.cat(std)[fi].double()
                assert row_c[fi] == expect.float() and row_r[fi] == expect.float()
                other = torch.ones(18, dtype=torch.bool)
                other[fi] = False
                assert torch.equal(row_c[other], src[i, other])  # corrected: all else untouched
                visited = torch.tensor([f for f in conv_flat[:k]], dtype=torch.long)
                if len(visited):
                    assert torch.equal(row_r[visited], mean_flat[visited])  # reference: visited stay at mean


def test_compute_fs3_resume_equals_uninterrupted(tmp_path):
    codes, mean, std = _fake_setup()
    kw = dict(n_images=3, codes=codes, style_mean=mean, style_std=std, progress=False, to_images=None,
              variant="reference")
    full = gd.compute_fs3(_FakeGen(), _float_feats, batch_size=4, **kw)

    class Stop(Exception):
        pass

    count = {"n": 0}

    def flaky(images):
        count["n"] += images.shape[0]
        if count["n"] > 6 * 7 + 2:  # dies during channel 8 (6 items per channel)
            raise Stop
        return _float_feats(images)

    path = tmp_path / "fs3_progress.pt"
    with pytest.raises(Stop):
        gd.compute_fs3(_FakeGen(), flaky, batch_size=4, resume_path=path, save_every=3, **kw)
    st = torch.load(path, weights_only=True)
    assert 0 < st["next_channel"] < 15 and st["fs3"].shape == (st["next_channel"], 48)
    fake = _FakeGen()
    resumed = gd.compute_fs3(fake, _float_feats, batch_size=4, resume_path=path, **kw)
    n_items = sum(c[0].shape[0] for c in fake.calls)
    assert n_items == 1 + (15 - st["next_channel"]) * 6  # the first image again (the probe), then the remaining channels
    assert torch.allclose(resumed, full, atol=1e-6)
    assert torch.equal(resumed[: st["next_channel"]], st["fs3"])
    # a finished file returns immediately; other settings are refused
    again = _FakeGen()
    assert torch.equal(gd.compute_fs3(again, _float_feats, batch_size=4, resume_path=path, **kw), resumed)
    assert [c[0].shape[0] for c in again.calls] == [1]  # only the probe
    with pytest.raises(ValueError, match="different settings"):
        gd.compute_fs3(_FakeGen(), _float_feats, batch_size=4, resume_path=path, **{**kw, "variant": "corrected"})
    # the same generator and settings with another image-feature model (a retrained CLIP) are refused too
    with pytest.raises(ValueError, match="different image-feature model"):
        gd.compute_fs3(_FakeGen(), lambda images: _float_feats(images).flip(1), batch_size=4, resume_path=path, **kw)


def test_compute_fs3_resume_bit_identical_with_aligned_batches(tmp_path):
    codes, mean, std = _fake_setup()
    kw = dict(n_images=3, codes=codes, style_mean=mean, style_std=std, progress=False, to_images=None,
              batch_size=6, variant="corrected")
    full = gd.compute_fs3(_FakeGen(), _float_feats, **kw)
    path = tmp_path / "p.pt"
    _interrupt_fs3(path, **kw)
    assert torch.load(path, weights_only=True)["next_channel"] == 4  # saved on the interrupt
    assert torch.equal(gd.compute_fs3(_FakeGen(), _float_feats, resume_path=path, **kw), full)


def test_compute_fs3_layers_validation():
    codes, mean, std = _fake_setup()
    kw = dict(n_images=3, codes=codes, style_mean=mean, style_std=std, progress=False, to_images=None)
    part = gd.compute_fs3(_FakeGen(), _float_feats, layers=[0, 2], **kw)
    assert part.shape == (11, 48)
    with pytest.raises(ValueError, match="prefix"):
        gd.compute_fs3(_FakeGen(), _float_feats, layers=[2], **kw)
    with pytest.raises(ValueError, match="variant"):
        gd.compute_fs3(_FakeGen(), _float_feats, variant="fast", **kw)


# ----------------------------------------------------------------------------- properties

def test_larger_beta_never_keeps_more_channels():
    g = torch.Generator().manual_seed(11)
    for trial in range(5):
        fs3 = F.normalize(torch.randn(300, 24, generator=g), dim=1)
        dt = F.normalize(torch.randn(24, generator=g), dim=0)
        betas = np.sort(np.random.RandomState(trial).uniform(0, 1, 40))
        counts = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for b in betas:
                ds, num = gd.channel_direction(fs3, dt, b)
                counts.append(num)
                assert int((ds != 0).sum()) <= num and torch.isfinite(ds).all()
                if num:
                    assert ds.abs().max() == 1.0
        assert all(a >= b for a, b in zip(counts, counts[1:]))


def test_alpha_zero_returns_source_exactly(gen, bs, small_layout):
    chans, conv = small_layout["channels"], small_layout["mindexs"]
    codes = gd.split_flat(bs["in.codes_flat"], chans)
    ds, num = gd.channel_direction(bs["in.fs3"], bs["in.dt"], 0.1)
    boundary = gd.split_to_layers(ds, chans, conv, bs["in.code_std_flat"])
    out = gd.apply_direction(codes, boundary, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(out, codes))
    out = gd.apply_direction(codes, boundary, [0, 0.0])
    assert all(torch.equal(a, b[:, None].expand(-1, 2, -1)) for a, b in zip(out, codes))
    # random codes too, and the inputs are never modified
    g = torch.Generator().manual_seed(5)
    rnd = [torch.randn(4, c, generator=g) * 1e3 for c in chans]
    keep = [r.clone() for r in rnd]
    assert all(torch.equal(a, b) for a, b in zip(gd.apply_direction(rnd, boundary, 0), keep))
    gd.apply_direction(rnd, boundary, 7.0)
    assert all(torch.equal(a, b) for a, b in zip(rnd, keep))
    # through the pipeline: alpha = 0 renders the unedited image
    pipe = gd.GlobalDirections(gen, fs3=bs["in.fs3"], style_mean=bs["in.code_mean_flat"], style_std=bs["in.code_std_flat"])
    res = pipe(codes, text_direction=bs["in.dt"], alpha=0.0, beta=0.1)
    with torch.no_grad():
        plain = gen.synthesis_from_styles(codes)
    assert torch.equal(res.images, plain)
    assert all(torch.equal(a, b) for a, b in zip(res.styles, codes))


def test_apply_direction_shapes_and_errors(bs, small_layout):
    chans = small_layout["channels"]
    codes = gd.split_flat(bs["in.codes_flat"], chans)
    boundary = [torch.ones(c) for c in chans]
    assert gd.apply_direction(codes, boundary, 1.0)[0].shape == (3, 64)
    assert gd.apply_direction(codes, boundary, [1.0])[0].shape == (3, 1, 64)
    assert gd.apply_direction(codes, boundary, torch.tensor([1.0, 2.0]))[0].shape == (3, 2, 64)
    with pytest.raises(ValueError, match="manipulate_layers"):
        gd.apply_direction(codes, boundary, 1.0, [11])
    with pytest.raises(ValueError, match="boundary"):
        gd.apply_direction(codes, boundary[:-1], 1.0)


# ----------------------------------------------------------------------------- validation, io, pipeline

def test_beta_validation(bs):
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="beta"):
            gd.channel_direction(bs["in.fs3"], bs["in.dt"], bad)
    with pytest.raises(ValueError, match="dt"):
        gd.channel_direction(bs["in.fs3"], bs["in.dt"][:10], 0.1)
    with pytest.raises(ValueError, match="NaN"):
        gd.channel_direction(bs["in.fs3"], torch.full((512,), float("nan")), 0.1)


def test_load_save_fs3(tmp_path, gen, bs):
    fs3 = bs["in.fs3"]
    p = gd.save_fs3(tmp_path / "fs3", fs3, dtype=np.float16)
    assert p.endswith("fs3.npy")
    loaded = gd.load_fs3(p, gen)
    assert loaded.dtype == torch.float32 and loaded.shape == (352, 512)
    assert_abs(loaded, fs3, tol=1e-3, what="fp16 roundtrip")
    np.save(tmp_path / "part.npy", fs3[:256].numpy())
    assert gd.load_fs3(tmp_path / "part.npy", gen).shape == (256, 512)
    np.save(tmp_path / "mid.npy", fs3[:100].numpy())
    with pytest.raises(ValueError, match="layer boundary"):
        gd.load_fs3(tmp_path / "mid.npy", gen)
    np.save(tmp_path / "big.npy", np.zeros((400, 512), np.float32))
    with pytest.raises(ValueError, match="at most 352"):
        gd.load_fs3(tmp_path / "big.npy", gen)
    np.save(tmp_path / "flat.npy", np.zeros(512, np.float32))
    with pytest.raises(ValueError, match="2-D"):
        gd.load_fs3(tmp_path / "flat.npy")
    # layout given explicitly (the 1024 model without building it): 5376 and 6048 rows are fine
    lay = json.loads(load_conformance("global_directions/boundary_layout1024.pt")["layout_json"])
    for rows in (5376, 6048):
        np.save(tmp_path / f"r{rows}.npy", np.zeros((rows, 4), np.float16))
        assert gd.load_fs3(tmp_path / f"r{rows}.npy", style_channels=lay["channels"],
                           conv_indices=lay["mindexs"]).shape == (rows, 4)


def test_pipeline_matches_golden_and_validates(gen, bs, small_layout):
    chans = small_layout["channels"]
    pipe = gd.GlobalDirections(gen, fs3=bs["in.fs3"], style_mean=bs["in.code_mean_flat"], style_std=bs["in.code_std_flat"])
    codes = gd.split_flat(bs["in.codes_flat"], chans)
    res = pipe(codes, text_direction=bs["in.dt"], alpha=4.1, beta=0.15)
    assert res.num_channels == bs["out.pair0.num_c"] and res.beta == 0.15
    assert_abs(gd.flatten_styles(res.styles), bs["out.pair0.codes_flat"][:, 0], what="codes")
    assert_image(res.images, bs["out.pair0.image"][:, 0], what="image")
    assert_uint8(res.images_uint8(), bs["out.pair0.image_uint8"][:, 0], what="uint8")
    multi = pipe(codes, text_direction=bs["in.dt"], alpha=bs["multi.alphas"], beta=bs["multi.beta"])
    assert multi.images.shape == (3, 5, 3, 32, 32)
    assert_image(multi.images, bs["out.multi.image"], what="multi image")
    auto = pipe(codes, text_direction=bs["in.dt"], auto_beta=True, return_images=False)
    assert auto.beta == bs["out.autobeta.c20.beta"] and auto.images is None
    # W+ input: (N, num_ws, w_dim) or (num_ws, w_dim)
    wp = torch.randn(2, gen.num_ws, gen.w_dim)
    r2 = pipe(wp, text_direction=bs["in.dt"], beta=0.2)
    r1 = pipe(wp[0], text_direction=bs["in.dt"], beta=0.2)
    assert r2.images.shape == (2, 3, 32, 32) and r1.images.shape == (1, 3, 32, 32)
    assert torch.allclose(r1.images[0], r2.images[0], atol=1e-5)
    for bad in (torch.randn(gen.w_dim), torch.randn(2, gen.w_dim), torch.randn(2, gen.num_ws + 1, gen.w_dim),
                torch.randn(1, 2, gen.num_ws, gen.w_dim)):
        with pytest.raises(ValueError, match=r"expected \(N, 8, 64\)"):
            pipe(bad, text_direction=bs["in.dt"])
    nan = wp.clone()
    nan[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        pipe(nan, text_direction=bs["in.dt"])
    with pytest.raises(ValueError, match="beta"):
        pipe(wp, text_direction=bs["in.dt"], beta=2.0)
    with pytest.raises(ValueError, match="clip_model"):
        pipe(wp, "a", "b")


def test_pipeline_with_fake_clip(gen, bs):
    """text → dt through the glue (fake CLIP text tower of the right width)."""
    gd.clear_text_cache()
    m = _FakeTextCLIP(dim=512)
    pipe = gd.GlobalDirections(gen, m, fs3=bs["in.fs3"], style_mean=bs["in.code_mean_flat"],
                               style_std=bs["in.code_std_flat"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = pipe(torch.zeros(gen.num_ws, gen.w_dim), "face with blue eyes", "face with eyes", beta=0.0, alpha=1.0)
    assert res.num_channels == 352 and torch.isfinite(res.images).all()
    with pytest.raises(ValueError, match="identical"):
        pipe(torch.zeros(gen.num_ws, gen.w_dim), "face", "face")
    gd.clear_text_cache()


class _FakeImageCLIP(torch.nn.Module):
    input_resolution = 24

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1), requires_grad=False)
        self.seen = None

    def encode_image(self, x):
        self.seen = x
        return x.mean(dim=(2, 3))


def test_clip_image_features_preprocessing():
    m = _FakeImageCLIP()
    fn = gd.clip_image_features(m)
    img = torch.full((2, 32, 48, 3), 128, dtype=torch.uint8)
    f = fn(img)
    assert m.seen.shape == (2, 3, 24, 24) and f.shape == (2, 3)
    from styleclip_lib.models.clip import CLIP_MEAN, CLIP_STD
    expect = (128 / 255 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(f, expect.expand(2, 3), atol=1e-5)  # constant image survives resize + crop
    # identity at the input resolution
    x = torch.randint(0, 256, (1, 24, 24, 3), dtype=torch.uint8)
    fn(x)
    ref = (x.permute(0, 3, 1, 2).float() / 255 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    assert torch.allclose(m.seen, ref, atol=1e-6)


def test_to_uint8_truncates():
    img = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    u = gd.to_uint8(img)
    assert u.shape == (1, 1, 6, 3)
    assert u[0, 0, :, 0].tolist() == [0, 0, 127, 254, 255, 255]


# ----------------------------------------------------------------------------- correlational fs3

def test_fs3_from_samples_finds_the_channels_that_move_the_features():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 5, generator=g, dtype=torch.float64)
    e = torch.eye(8, dtype=torch.float64)
    # features: a large constant part (so the L2 normalisation is close to linear) plus channel 0 along
    # e1 and channel 2 against e2; channels 1, 3, 4 do nothing
    f = 10 * e[0] + z[:, :1] * e[1] - 0.5 * z[:, 2:3] * e[2] + 0.01 * torch.randn(4000, 8, generator=g, dtype=torch.float64)
    rows = gd.fs3_from_samples(z, f)
    assert rows.shape == (5, 8)
    assert float(rows[0, 1]) > 0.09 and float(rows[2, 2]) < -0.04
    assert float(rows[[1, 3, 4]].abs().max()) < 0.1 * float(rows[0].norm())
    fn = f / f.norm(dim=1, keepdim=True)  # exactly the covariance of z and the unit features
    expect = (z - z.mean(0)).T @ (fn - fn.mean(0)) / len(z)
    assert torch.allclose(rows.double(), expect, atol=1e-6)
    with pytest.raises(ValueError, match="same N"):
        gd.fs3_from_samples(z[:10], f[:9])


def _pooled_feats(images_uint8):
    return F.avg_pool2d(images_uint8.permute(0, 3, 1, 2).float(), 4).flatten(1)


def test_compute_fs3_correlation_matches_its_samples_and_resumes(gen, tmp_path):
    mean, std = gd.style_statistics(gen, n=300, truncation=0.7, progress=False)
    kw = dict(n_images=12, batch_size=5, style_mean=mean, style_std=std, progress=False)
    fs3 = gd.compute_fs3_correlation(gen, _pooled_feats, **kw)
    conv = list(gen.conv_style_indices)
    codes = gd.sample_styles(gen, 12, truncation=0.7, seed=5)  # the same seed-5 stream
    with torch.no_grad():
        feats = _pooled_feats(gd.to_uint8(gen.synthesis_from_styles(codes, noise_mode="const")))
    z = torch.cat([(codes[i] - mean[i]) / std[i] for i in conv], 1)
    assert fs3.shape == (z.shape[1], feats.shape[1])  # one row per conv channel, layers in S order
    assert torch.allclose(fs3, gd.scale_fs3(gd.fs3_from_samples(z, feats)), atol=1e-5)
    assert float(fs3.norm(dim=1).max()) == pytest.approx(1.0, abs=1e-6)
    unit = gd.compute_fs3_correlation(gen, _pooled_feats, normalize="reference", **kw)
    assert torch.allclose(unit.norm(dim=1), torch.ones(len(unit)), atol=1e-5)

    calls = {"n": 0}

    def flaky(images):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return _pooled_feats(images)

    path = tmp_path / "corr.pt"
    with pytest.raises(KeyboardInterrupt):
        gd.compute_fs3_correlation(gen, flaky, resume_path=path, **kw)
    assert torch.load(path, weights_only=True)["sums"]["n"] == 5  # the first batch was kept
    assert torch.allclose(gd.compute_fs3_correlation(gen, _pooled_feats, resume_path=path, **kw), fs3, atol=1e-6)
    with pytest.raises(ValueError, match="different settings"):
        gd.compute_fs3_correlation(gen, _pooled_feats, resume_path=path, **{**kw, "n_images": 13})
    with pytest.raises(ValueError, match="different image-feature model"):
        gd.compute_fs3_correlation(gen, lambda images: _pooled_feats(images).flip(1), resume_path=path, **kw)
    with pytest.raises(ValueError, match="layers"):
        gd.compute_fs3_correlation(gen, _pooled_feats, layers=conv[1:], **kw)
