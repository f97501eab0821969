"""ArcFace IR-SE50 (styleclip_lib.models.arcface) and the identity loss (styleclip_lib.losses.id_loss)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import conformance_path
from styleclip_lib.checkpoint import CheckpointError, check_state_dict
from styleclip_lib.losses.id_loss import IDLoss, identity_similarity
from styleclip_lib.models.arcface import (
    ArcFaceID,
    Backbone,
    BottleneckIR,
    BottleneckIRSE,
    IdentityEncoder,
    SEModule,
    backbone_from_state_dict,
    get_blocks,
    infer_body_config,
    load_arcface,
)

SMALL = dict(channels=(16, 32, 48, 64), units=(2, 1, 2, 1), embedding_size=24)




def manifest(name):
    return json.loads(conformance_path(f"manifests/{name}").read_text())


def meta_state_from_manifest(entries, skip_nbt=False):
    dt = {"float32": torch.float32, "int64": torch.int64}
    return {
        e["key"]: torch.empty(e["shape"], dtype=dt[e["dtype"]], device="meta")
        for e in entries
        if not (skip_nbt and e["key"].endswith("num_batches_tracked"))
    }


def randomize_bn(module, gen):
    """Give every BatchNorm non-trivial running stats and affine params (eval mode uses them)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            if isinstance(m, torch.nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.5)
    return module


def small_backbone(seed=0):
    torch.manual_seed(seed)
    return randomize_bn(Backbone(**SMALL), torch.Generator().manual_seed(seed + 1)).eval()


# ---------------------------------------------------------------- structure vs manifest


def test_full_size_state_dict_matches_manifest_exactly():
    m = manifest("arcface_ir_se50_state_dict.json")
    with torch.device("meta"):
        net = Backbone(num_layers=50, mode="ir_se", drop_ratio=0.6, affine=True)
    got = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in net.state_dict().items()]
    want = [(e["key"], e["shape"], e["dtype"]) for e in m["entries"]]
    assert got == want
    n = sum(v.numel() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked"))
    assert n == m["n_params_excluding_num_batches_tracked"] == 43_824_064
    assert net.output_layer[1].p == 0.6


def test_blocks_of_ir50():
    stages = get_blocks(50)
    assert [len(s) for s in stages] == [3, 4, 14, 3]
    assert [s[0].stride for s in stages] == [2, 2, 2, 2]
    assert all(b.stride == 1 for s in stages for b in s[1:])
    assert [(s[0].in_channel, s[0].depth) for s in stages] == [(64, 64), (64, 128), (128, 256), (256, 512)]
    assert [len(s) for s in get_blocks(100)] == [3, 13, 30, 3]
    assert [len(s) for s in get_blocks(152)] == [3, 8, 36, 3]
    with pytest.raises(ValueError):
        get_blocks(34)


@pytest.mark.parametrize("skip_nbt", [False, True])
def test_manifest_shaped_dict_accepted_with_or_without_num_batches_tracked(skip_nbt):
    entries = manifest("arcface_ir_se50_state_dict.json")["entries"]
    state = meta_state_from_manifest(entries, skip_nbt=skip_nbt)
    assert any(k.endswith("num_batches_tracked") for k in state) is not skip_nbt
    with torch.device("meta"):
        ref = Backbone().state_dict()
    check_state_dict("manifest", state, ref, expected="IR-SE50", optional=("num_batches_tracked",))
    assert infer_body_config(state) == {"channels": (64, 128, 256, 512), "units": (3, 4, 14, 3), "mode": "ir_se"}
    net = backbone_from_state_dict(state)  # meta tensors: structure only
    assert list(net.state_dict()) == [e["key"] for e in entries]
    # without num_batches_tracked, plain strict loading would fail: the checker must be what allows it
    if skip_nbt:
        with pytest.raises(CheckpointError):
            check_state_dict("manifest", state, ref, expected="IR-SE50")


# ---------------------------------------------------------------- functional math


def _bn(x, sd, p, eps=1e-5):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - sd[p + "running_mean"].view(shape)) / torch.sqrt(sd[p + "running_var"].view(shape) + eps) * sd[
        p + "weight"
    ].view(shape) + sd[p + "bias"].view(shape)


def _prelu(x, a):
    return torch.where(x > 0, x, a.view(1, -1, 1, 1) * x)


def _unit_ref(x, sd, p, stride, se=True):
    """Hand-written IR(-SE) unit from raw tensors."""
    r = _bn(x, sd, p + "res_layer.0.")
    r = F.conv2d(r, sd[p + "res_layer.1.weight"], padding=1)
    r = _prelu(r, sd[p + "res_layer.2.weight"])
    r = F.conv2d(r, sd[p + "res_layer.3.weight"], stride=stride, padding=1)
    r = _bn(r, sd, p + "res_layer.4.")
    if se:
        s = r.mean(dim=(2, 3))  # squeeze
        s = torch.relu(s @ sd[p + "res_layer.5.fc1.weight"][:, :, 0, 0].T)
        s = torch.sigmoid(s @ sd[p + "res_layer.5.fc2.weight"][:, :, 0, 0].T)
        r = r * s[:, :, None, None]
    if p + "shortcut_layer.0.weight" in sd:
        sc = _bn(F.conv2d(x, sd[p + "shortcut_layer.0.weight"], stride=stride), sd, p + "shortcut_layer.1.")
    else:
        sc = x[:, :, ::stride, ::stride]
    return r + sc  # no activation after the sum


@pytest.mark.parametrize("cls,se", [(BottleneckIRSE, True), (BottleneckIR, False)])
@pytest.mark.parametrize("in_c,depth,stride", [(16, 32, 2), (32, 32, 2), (32, 32, 1)])
def test_ir_unit_matches_hand_written(cls, se, in_c, depth, stride):
    torch.manual_seed(0)
    unit = randomize_bn(cls(in_c, depth, stride), torch.Generator().manual_seed(1)).eval()
    assert isinstance(unit.res_layer[-1], SEModule) is se
    assert len(unit.res_layer) == (6 if se else 5)
    x = torch.randn(2, in_c, 9, 9)
    sd = unit.state_dict()
    with torch.no_grad():
        got = unit(x)
    want = _unit_ref(x, sd, "", stride, se)
    assert got.shape == (2, depth, math.ceil(9 / stride), math.ceil(9 / stride))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_se_module_reduction_and_gate():
    se = SEModule(64, 16)
    assert se.fc1.weight.shape == (4, 64, 1, 1) and se.fc2.weight.shape == (64, 4, 1, 1)
    assert se.fc1.bias is None and se.fc2.bias is None
    with torch.no_grad():
        se.fc2.weight.fill_(0.0)  # gate = sigmoid(0) = 0.5 everywhere
    x = torch.randn(2, 64, 5, 5)
    torch.testing.assert_close(se(x), 0.5 * x)


def test_backbone_matches_hand_written_forward_and_is_unit_norm():
    net = small_backbone()
    sd = net.state_dict()
    x = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        got = net(x)
    # independent forward from the raw tensors
    h = _prelu(_bn(F.conv2d(x, sd["input_layer.0.weight"], padding=1), sd, "input_layer.1."), sd["input_layer.2.weight"])
    i = 0
    for stage in get_blocks(channels=SMALL["channels"], units=SMALL["units"]):
        for b in stage:
            h = _unit_ref(h, sd, f"body.{i}.", b.stride)
            i += 1
    h = _bn(h, sd, "output_layer.0.")
    assert h.shape[-2:] == (7, 7)
    h = h.reshape(h.shape[0], -1) @ sd["output_layer.3.weight"].T + sd["output_layer.3.bias"]  # C,H,W flatten
    h = _bn(h, sd, "output_layer.4.")
    want = h / h.norm(dim=1, keepdim=True)
    assert got.shape == (3, SMALL["embedding_size"])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(3))
    # the un-normalised features are not unit: normalisation is really done by the network
    assert not torch.allclose(h.norm(dim=1), torch.ones(3), atol=1e-3)


# ---------------------------------------------------------------- StyleCLIP preprocessing


def _adaptive_matrix(n_in, n_out):
    """Row i averages inputs floor(n_in*i/n_out) .. ceil(n_in*(i+1)/n_out)-1."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        a, b = (n_in * i) // n_out, -(-(n_in * (i + 1)) // n_out)
        m[i, a:b] = 1.0 / (b - a)
    return m


def test_preprocess_crop_marker_pixels():
    enc = IdentityEncoder(small_backbone())
    x = torch.zeros(1, 3, 256, 256)
    x[0, :, 35, 32] = 1.0  # top-left corner of the crop -> only output (0, 0), bin 2x2
    out = enc.preprocess(x)
    assert out.shape == (1, 3, 112, 112)
    nz = out[0, 0].nonzero().tolist()
    assert nz == [[0, 0]] and out[0, 0, 0, 0].item() == pytest.approx(0.25)
    x = torch.zeros(1, 3, 256, 256)
    x[0, :, 222, 219] = 1.0  # bottom-right corner of the crop
    assert enc.preprocess(x)[0, 0].nonzero().tolist() == [[111, 111]]
    for r, c in [(34, 32), (35, 31), (223, 219), (222, 220)]:  # just outside the crop
        x = torch.zeros(1, 3, 256, 256)
        x[0, :, r, c] = 1.0
        assert enc.preprocess(x).abs().max().item() == 0.0, (r, c)


def test_preprocess_1024_pools_4x4_then_crops():
    enc = IdentityEncoder(small_backbone())
    x = torch.zeros(1, 3, 1024, 1024)
    x[0, :, 4 * 35 + 3, 4 * 32] = 1.0  # inside the 4x4 cell of 256-pixel (35, 32)
    out = enc.preprocess(x)
    assert out[0, 0].nonzero().tolist() == [[0, 0]]
    assert out[0, 0, 0, 0].item() == pytest.approx(1 / 16 / 4)
    x = torch.zeros(1, 3, 1024, 1024)
    x[0, :, 4 * 35 - 1, 4 * 32] = 1.0  # in 256-pixel (34, 32): cropped away
    assert enc.preprocess(x).abs().max().item() == 0.0


def test_preprocess_equals_independent_pool_crop_pool():
    enc = IdentityEncoder(small_backbone())
    x = torch.randn(2, 3, 1024, 1024)
    x256 = x.double().reshape(2, 3, 256, 4, 256, 4).mean(dim=(3, 5))
    crop = x256[:, :, 35:223, 32:220]
    p = _adaptive_matrix(188, 112)
    want = p @ crop @ p.T
    torch.testing.assert_close(enc.preprocess(x).double(), want, rtol=1e-5, atol=1e-5)
    # 256 input is not pooled first
    y = torch.randn(1, 3, 256, 256)
    torch.testing.assert_close(enc.preprocess(y).double(), p @ y.double()[:, :, 35:223, 32:220] @ p.T, rtol=1e-5, atol=1e-5)


def test_identity_encoder_output_and_eval_is_kept():
    enc = ArcFaceID(small_backbone())
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        e1 = enc(x)
        enc.train()  # a parent's train() must not switch BatchNorm to batch statistics
        assert not enc.facenet.training
        e2 = enc(x)
    torch.testing.assert_close(e1, e2)
    torch.testing.assert_close(e1.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(e1, enc.facenet(enc.preprocess(x)))


# ---------------------------------------------------------------- identity loss


def test_id_loss_values_and_gradient_flow():
    enc = IdentityEncoder(small_backbone()).requires_grad_(False)
    loss_fn = IDLoss(enc)
    torch.manual_seed(3)
    y = torch.rand(3, 3, 256, 256) * 2 - 1
    same = loss_fn(y, y.clone())
    assert isinstance(same, torch.Tensor) and same.ndim == 0
    assert abs(same.item()) < 1e-5
    y_hat = (torch.rand(3, 3, 256, 256) * 2 - 1).requires_grad_(True)
    y_src = y.clone().requires_grad_(True)
    loss = loss_fn(y_hat, y_src)
    with torch.no_grad():
        fa, fb = enc(y_hat), enc(y)
    want = sum(1 - fa[i].dot(fb[i]) for i in range(3)) / 3  # the reference's loop
    assert loss.item() == pytest.approx(want.item(), abs=1e-6)
    assert loss.item() > 1e-4
    loss.backward()
    assert y_hat.grad is not None and y_hat.grad.abs().sum() > 0
    assert y_src.grad is None  # target features are detached
    sim = identity_similarity(enc, y_hat.detach(), y)
    assert sim.shape == (3,)
    torch.testing.assert_close(1 - sim.mean(), loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(identity_similarity(enc, y, y), torch.ones(3), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- checkpoint files


@pytest.fixture
def small_ckpt(tmp_path):
    net = small_backbone(seed=5)
    path = tmp_path / "model_ir_se50.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_load_round_trip(small_ckpt):
    net, path = small_ckpt
    model = load_arcface(path, device="cpu")
    assert isinstance(model, IdentityEncoder) and not model.training and not model.facenet.training
    assert all(not p.requires_grad for p in model.parameters())
    x = torch.rand(2, 3, 1024, 1024) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(x), IdentityEncoder(net)(x), rtol=0, atol=0)
    # the loaded tensors are the file's
    for k, v in net.state_dict().items():
        assert torch.equal(model.facenet.state_dict()[k], v), k


def test_load_without_num_batches_tracked_and_legacy_format(small_ckpt, tmp_path):
    net, _ = small_ckpt
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(sd) < len(net.state_dict())
    p = tmp_path / "old.pth"
    torch.save(sd, p, _use_new_zipfile_serialization=False)
    model = load_arcface(p, device="cpu")
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(model(x), IdentityEncoder(net)(x), rtol=0, atol=0)
    p2 = tmp_path / "dp.pth"
    torch.save({"module." + k: v for k, v in sd.items()}, p2)
    with torch.no_grad():
        torch.testing.assert_close(load_arcface(p2, device="cpu")(x), model(x), rtol=0, atol=0)


def test_truncated_and_empty_files(small_ckpt, tmp_path):
    _, path = small_ckpt
    data = path.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|corrupt|cannot read"):
        load_arcface(bad, device="cpu")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_arcface(empty, device="cpu")


def test_wrong_kind_dict(tmp_path):
    p = tmp_path / "g.pt"
    torch.save({"g_ema": {"style.1.weight": torch.zeros(2, 2)}, "latent_avg": torch.zeros(2)}, p)
    with pytest.raises(CheckpointError, match="g_ema") as ei:
        load_arcface(p, device="cpu")
    assert "ArcFace" in str(ei.value)
    p2 = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, p2)
    with pytest.raises(CheckpointError, match="not an IR backbone"):
        load_arcface(p2, device="cpu")


def test_wrong_shape_missing_and_unexpected_keys(small_ckpt, tmp_path):
    net, _ = small_ckpt
    sd = dict(net.state_dict())
    key = "output_layer.3.weight"
    bad = dict(sd, **{key: torch.zeros(sd[key].shape[0], sd[key].shape[1] + 1)})
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match="wrong shape.*output_layer.3.weight"):
        load_arcface(tmp_path / "shape.pth", device="cpu")
    key = "body.1.res_layer.3.weight"
    bad = dict(sd, **{key: torch.zeros(3, 3, 3, 3)})
    torch.save(bad, tmp_path / "shape2.pth")
    with pytest.raises(CheckpointError, match="body.1.res_layer.3.weight"):
        load_arcface(tmp_path / "shape2.pth", device="cpu")
    missing = {k: v for k, v in sd.items() if k != "body.2.res_layer.5.fc2.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing keys.*body\.2\.res_layer\.5\.fc2\.weight"):
        load_arcface(tmp_path / "missing.pth", device="cpu")
    extra = dict(sd, **{"head.kernel": torch.zeros(4, 4)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys.*head\.kernel"):
        load_arcface(tmp_path / "extra.pth", device="cpu")
