"""e4e encoder (styleclip_lib.models.e4e): structure vs the manifest, forward math, checkpoint loading."""
from __future__ import annotations

import json
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import styleclip_lib.models as models_pkg
from conftest import conformance_path
from styleclip_lib.checkpoint import CheckpointError
from styleclip_lib.models import arcface
from styleclip_lib.models.e4e import (
    E4EInverter,
    Encoder4Editing,
    EqualLinear,
    GradualStyleBlock,
    encoder_from_state_dict,
    load_e4e,
    num_styles_for_size,
)

SMALL = dict(channels=(16, 32, 48, 64), units=(1, 2, 2, 1), style_dim=24)




def manifest():
    return json.loads(conformance_path("manifests/e4e_ffhq_encode_checkpoint.json").read_text())


def randomize(module, seed):
    """Non-trivial BN statistics and conv biases (eval mode)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, EqualLinear):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return module.eval()


def small_encoder(seed=0, **kw):
    torch.manual_seed(seed)
    return randomize(Encoder4Editing(**{**SMALL, **kw}), seed + 1)


# ---------------------------------------------------------------- structure vs manifest


def test_full_size_encoder_matches_manifest_exactly():
    m = manifest()
    enc_entries = [e for e in m["entries"] if e["key"].startswith("encoder.")]
    assert len(enc_entries) == m["n_encoder_entries"] == 621
    with torch.device("meta"):
        enc = Encoder4Editing(50, "ir_se", stylegan_size=1024)
    got = [("encoder." + k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in enc.state_dict().items()]
    want = [(e["key"], e["shape"], e["dtype"]) for e in enc_entries]
    assert got == want
    n = sum(v.numel() for k, v in enc.state_dict().items() if not k.endswith("num_batches_tracked"))
    assert n == m["n_encoder_params_excluding_num_batches_tracked"]
    assert enc.num_ws == 18 and enc.taps == (6, 20, 23)
    # the IR-SE body is the arcface one (reused, same key names)
    assert all(type(u) is arcface.BottleneckIRSE for u in enc.body)
    assert [len(s.convs) // 2 for s in enc.styles] == [4] * 3 + [5] * 4 + [6] * 11
    with torch.device("meta"):
        out = enc(torch.empty(2, 3, 256, 256))
    assert out.shape == (2, 18, 512)
    assert m["top_level"]["latent_avg"]["shape"] == [18, 512]


@pytest.mark.parametrize("skip_nbt", [False, True])
def test_manifest_shaped_encoder_dict_accepted(skip_nbt):
    dt = {"float32": torch.float32, "int64": torch.int64}
    state = {
        e["key"][len("encoder."):]: torch.empty(e["shape"], dtype=dt[e["dtype"]], device="meta")
        for e in manifest()["entries"]
        if e["key"].startswith("encoder.") and not (skip_nbt and e["key"].endswith("num_batches_tracked"))
    }
    enc = encoder_from_state_dict(state, 1024)
    assert enc.num_ws == 18 and enc.style_dim == 512 and enc.taps == (6, 20, 23)
    assert enc.state_dict()["latlayer2.weight"].shape == (512, 128, 1, 1)
    enc2 = encoder_from_state_dict(state)  # stylegan size inferred from the 18 style blocks
    assert enc2.stylegan_size == 1024


def test_num_styles_for_size():
    assert [num_styles_for_size(s) for s in (256, 512, 1024)] == [14, 16, 18]
    with pytest.raises(ValueError):
        num_styles_for_size(1000)
    assert Encoder4Editing(**SMALL, stylegan_size=256).num_ws == 14


# ---------------------------------------------------------------- functional math


def test_equal_linear_scale():
    lin = EqualLinear(16, 8)
    with torch.no_grad():
        lin.bias.normal_()
    x = torch.randn(3, 16)
    torch.testing.assert_close(lin(x), x @ (lin.weight / 4.0).T + lin.bias)


def test_gradual_style_block_matches_hand_written():
    torch.manual_seed(0)
    blk = randomize(GradualStyleBlock(12, 20, 8), 1)
    assert [type(m).__name__ for m in blk.convs] == ["Conv2d", "LeakyReLU"] * 3
    assert all(m.negative_slope == 0.01 for m in blk.convs[1::2])
    x = torch.randn(2, 12, 8, 8)
    sd = blk.state_dict()
    h = x
    for i in (0, 2, 4):
        h = F.conv2d(h, sd[f"convs.{i}.weight"], sd[f"convs.{i}.bias"], stride=2, padding=1)
        h = torch.where(h > 0, h, 0.01 * h)
    want = h.reshape(2, 20) @ (sd["linear.weight"] / math.sqrt(20)).T + sd["linear.bias"]
    with torch.no_grad():
        torch.testing.assert_close(blk(x), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="1x1"):
        blk(torch.randn(1, 12, 16, 16))


def _interp_matrix(n_in, n_out):
    """Bilinear interpolation with align_corners=True: output i samples input i*(n_in-1)/(n_out-1)."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        s = i * (n_in - 1) / (n_out - 1)
        a = min(int(math.floor(s)), n_in - 2)
        t = s - a
        m[i, a] += 1 - t
        m[i, a + 1] += t
    return m


def test_encoder_fpn_forward_matches_hand_written():
    enc = small_encoder()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        got = enc(x)
        # the pyramid taps are the ends of stages 2, 3, 4
        h = enc.input_layer(x)
        outs = []
        for u in enc.body:
            h = u(h)
            outs.append(h)
    assert enc.taps == (2, 4, 5)
    c1, c2, c3 = outs[2], outs[4], outs[5]
    for c, shape in [(c1, (32, 64, 64)), (c2, (48, 32, 32)), (c3, (64, 16, 16))]:
        assert c.shape[1:] == shape
    sd = enc.state_dict()

    def lat(c, name):
        return F.conv2d(c, sd[f"{name}.weight"], sd[f"{name}.bias"]).double()

    up32, up64 = _interp_matrix(16, 32), _interp_matrix(32, 64)
    p2 = up32 @ c3.double() @ up32.T + lat(c2, "latlayer1")
    p1 = up64 @ p2 @ up64.T + lat(c1, "latlayer2")
    with torch.no_grad():
        w0 = enc.styles[0](c3)
        want = [w0]
        for i in range(1, 18):
            f = c3 if i < 3 else p2 if i < 7 else p1
            want.append(w0 + enc.styles[i](f.float()))
    want = torch.stack(want, 1)
    assert got.shape == (1, 18, SMALL["style_dim"])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # every style really differs (deltas are applied)
    assert (got[:, 1:] - got[:, :1]).abs().amax(dim=(0, 2)).min() > 1e-4


class FakeEncoder(torch.nn.Module):
    """Stands in for Encoder4Editing in inverter tests: records its input, cheap deterministic output."""

    num_ws, style_dim = 18, 5

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Parameter(torch.randn(3, 18 * 5))
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        return (x.mean(dim=(2, 3)) @ self.proj + x[:, :1, :7, :7].sum(dim=(1, 2, 3))[:, None]).view(-1, 18, 5)


def test_inverter_adds_latent_avg_and_resizes():
    enc = FakeEncoder()
    la = torch.randn(18, 5)
    inv = E4EInverter(enc, la).eval()
    assert inv.num_ws == 18 and inv.style_dim == 5
    torch.testing.assert_close(inv.latent_avg, la)
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        codes = enc(x)
        torch.testing.assert_close(inv(x), codes + la)
        torch.testing.assert_close(E4EInverter(enc, la, start_from_latent_avg=False)(x), codes)
        enc.seen.clear()
        big = torch.rand(1, 3, 1024, 1024) * 2 - 1
        small = F.interpolate(big, size=(256, 256), mode="bilinear", align_corners=False, antialias=True)
        torch.testing.assert_close(inv(big), inv(small))
        assert enc.seen == [(1, 3, 256, 256)] * 2
        inv(torch.rand(1, 3, 200, 300))
        assert enc.seen[-1] == (1, 3, 256, 256)
    with pytest.raises(ValueError):
        E4EInverter(enc, torch.zeros(17, 5))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        inv(torch.rand(3, 256, 256))


# ---------------------------------------------------------------- checkpoint files


def _official_dict(enc, latent_avg, opts=None, drop_nbt=False, decoder=None):
    sd = {"encoder." + k: v for k, v in enc.state_dict().items() if not (drop_nbt and k.endswith("num_batches_tracked"))}
    dec = decoder if decoder is not None else {"style.1.weight": torch.randn(4, 4), "noises.noise_0": torch.randn(1, 1, 4, 4)}
    sd.update({"decoder." + k: v for k, v in dec.items()})
    o = {"encoder_type": "Encoder4Editing", "stylegan_size": 1024, "start_from_latent_avg": True,
         "dataset_type": "ffhq_encode", "checkpoint_path": "x.pt", "device": "cuda:0", "lpips_lambda": 0.8}
    o.update(opts or {})
    return {"state_dict": sd, "latent_avg": latent_avg, "opts": o}


@pytest.fixture
def ckpt(tmp_path):
    enc = small_encoder(seed=7)
    la = torch.randn(18, SMALL["style_dim"])
    path = tmp_path / "e4e_ffhq_encode.pt"
    torch.save(_official_dict(enc, la), path)
    return enc, la, path


def test_load_round_trip(ckpt):
    enc, la, path = ckpt
    inv = load_e4e(path, device="cpu")
    assert isinstance(inv, E4EInverter) and not inv.training and not inv.encoder.training
    assert all(not p.requires_grad for p in inv.parameters())
    assert inv.num_ws == 18 and inv.latent_avg.shape == (18, SMALL["style_dim"])
    torch.testing.assert_close(inv.latent_avg, la, rtol=0, atol=0)
    assert inv.opts["encoder_type"] == "Encoder4Editing"
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(inv(x), enc(x) + la, rtol=0, atol=0)
    assert inv.has_decoder


def test_load_variants(tmp_path):
    enc = small_encoder(seed=3)
    mean_w = torch.randn(SMALL["style_dim"])
    p = tmp_path / "a.pt"
    torch.save(_official_dict(enc, mean_w, drop_nbt=True), p)  # [D] latent_avg, no num_batches_tracked
    inv = load_e4e(p, device="cpu", keep_decoder=False)
    torch.testing.assert_close(inv.latent_avg, mean_w.expand(18, -1))
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        ref = enc(x)
        torch.testing.assert_close(inv(x), ref + mean_w, rtol=0, atol=0)
    assert not inv.has_decoder
    with pytest.raises(RuntimeError, match="no decoder"):
        inv.decoder
    # start_from_latent_avg False: no latent_avg needed, nothing added
    d = _official_dict(enc, None, opts={"start_from_latent_avg": False})
    del d["latent_avg"]
    torch.save(d, tmp_path / "b.pt")
    with torch.no_grad():
        torch.testing.assert_close(load_e4e(tmp_path / "b.pt", device="cpu")(x), ref, rtol=0, atol=0)
    # a smaller generator: 14 styles
    enc256 = small_encoder(seed=4, stylegan_size=256)
    torch.save(_official_dict(enc256, torch.zeros(14, SMALL["style_dim"]), opts={"stylegan_size": 256}), tmp_path / "c.pt")
    assert load_e4e(tmp_path / "c.pt", device="cpu").num_ws == 14


def test_decoder_is_built_lazily(ckpt, monkeypatch):
    _, _, path = ckpt
    calls = []

    def fake_builder(state):
        calls.append(dict(state))
        return torch.nn.Linear(4, 4)

    fake = types.ModuleType("styleclip_lib.models.stylegan2")
    fake.generator_from_state_dict = fake_builder
    monkeypatch.setitem(sys.modules, "styleclip_lib.models.stylegan2", fake)
    monkeypatch.setattr(models_pkg, "stylegan2", fake, raising=False)
    inv = load_e4e(path, device="cpu")
    assert calls == []
    dec = inv.decoder
    assert len(calls) == 1 and sorted(calls[0]) == ["noises.noise_0", "style.1.weight"]
    assert inv.decoder is dec and len(calls) == 1
    assert "decoder.weight" in inv.state_dict() and not dec.training
    assert all(not p.requires_grad for p in dec.parameters())


def test_decoder_with_real_generator_if_available(tmp_path):
    try:
        from styleclip_lib.models import stylegan2
    except ImportError:
        pytest.skip("styleclip_lib.models.stylegan2 not available")
    if not any(hasattr(stylegan2, n) for n in ("generator_from_state_dict", "build_generator_from_state_dict")):
        pytest.skip("stylegan2 has no generator_from_state_dict")
    g = torch.load(conformance_path("stylegan2/generator_ckpt.pt"), map_location="cpu", weights_only=True)
    g_ema = g["g_ema"]
    style_dim = g_ema["style.1.weight"].shape[0]
    n_noises = sum(k.startswith("noises.") for k in g_ema)
    size = 2 ** ((n_noises + 1) // 2 + 1)
    enc = small_encoder(stylegan_size=size, style_dim=style_dim)
    la = torch.randn(style_dim).expand(enc.num_ws, -1).clone()
    torch.save(_official_dict(enc, la, opts={"stylegan_size": size}, decoder=g_ema), tmp_path / "e.pt")
    inv = load_e4e(tmp_path / "e.pt", device="cpu")
    dec = inv.decoder
    assert isinstance(dec, torch.nn.Module) and inv.decoder is dec
    if hasattr(dec, "latent_avg"):  # the generator's mean W is e4e's
        torch.testing.assert_close(dec.latent_avg.reshape(-1), la[0])
    sd = dec.state_dict()
    for k, v in g_ema.items():
        if k in sd:
            assert torch.equal(sd[k], v), k


def test_truncated_file(ckpt, tmp_path):
    _, _, path = ckpt
    data = path.read_bytes()
    bad = tmp_path / "t.pt"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated|corrupt|cannot read"):
        load_e4e(bad, device="cpu")


def test_wrong_kind_files(ckpt, tmp_path):
    enc, la, _ = ckpt
    torch.save({"g_ema": {"style.1.weight": torch.zeros(2, 2)}, "latent_avg": torch.zeros(2)}, tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match="StyleGAN2 generator checkpoint") as ei:
        load_e4e(tmp_path / "g.pt", device="cpu")
    assert "g_ema" in str(ei.value) and "e4e" in str(ei.value)
    torch.save({k: v for k, v in enc.state_dict().items()}, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="bare IR-SE state dict"):
        load_e4e(tmp_path / "bare.pt", device="cpu")
    torch.save(_official_dict(enc, la, opts={"encoder_type": "GradualStyleEncoder"}), tmp_path / "psp.pt")
    with pytest.raises(CheckpointError, match="GradualStyleEncoder.*Encoder4Editing"):
        load_e4e(tmp_path / "psp.pt", device="cpu")


def test_wrong_shapes_and_keys(ckpt, tmp_path):
    enc, la, _ = ckpt

    def save(d, name):
        torch.save(d, tmp_path / name)
        return tmp_path / name

    d = _official_dict(enc, la)
    d["state_dict"]["encoder.styles.5.linear.weight"] = torch.zeros(SMALL["style_dim"], SMALL["style_dim"] + 1)
    with pytest.raises(CheckpointError, match=r"wrong shape.*styles\.5\.linear\.weight"):
        load_e4e(save(d, "a.pt"), device="cpu")
    d = _official_dict(enc, la)
    d["state_dict"]["encoder.latlayer1.weight"] = torch.zeros(64, 47, 1, 1)
    with pytest.raises(CheckpointError, match="latlayer1.weight"):
        load_e4e(save(d, "b.pt"), device="cpu")
    d = _official_dict(enc, la)
    del d["state_dict"]["encoder.latlayer2.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys.*latlayer2\.bias"):
        load_e4e(save(d, "c.pt"), device="cpu")
    d = _official_dict(enc, la)
    d["state_dict"]["encoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unexpected keys.*extra\.weight"):
        load_e4e(save(d, "d.pt"), device="cpu")
    d = _official_dict(enc, la)
    d["state_dict"]["discriminator.w"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="discriminator.w"):
        load_e4e(save(d, "e.pt"), device="cpu")
    with pytest.raises(CheckpointError, match=r"'latent_avg' of shape \[17, 24\]"):
        load_e4e(save(_official_dict(enc, torch.zeros(17, 24)), "f.pt"), device="cpu")
    d = _official_dict(enc, la)
    del d["latent_avg"]
    with pytest.raises(CheckpointError, match="no 'latent_avg'"):
        load_e4e(save(d, "g.pt"), device="cpu")
    with pytest.raises(CheckpointError, match="14 style blocks"):
        load_e4e(save(_official_dict(enc, la, opts={"stylegan_size": 256}), "h.pt"), device="cpu")
    d = _official_dict(enc, la)
    d["state_dict"] = {k: v for k, v in d["state_dict"].items() if k.startswith("decoder.")}
    with pytest.raises(CheckpointError, match="no 'encoder"):
        load_e4e(save(d, "i.pt"), device="cpu")
