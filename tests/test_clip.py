"""CLIP model against the openai-clip 1.0.1 goldens (shared/conformance/clip) and the
ViT-B/32 manifest; loading paths and error reporting."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from conftest import conformance_path, load_conformance
from styleclip_lib.checkpoint import CheckpointError, load_state
from styleclip_lib.models.clip import (
    CLIP_MEAN,
    CLIP_STD,
    CLIP,
    ModifiedResNet,
    VisionTransformer,
    build_model,
    build_visual,
    clip_normalize,
    infer_config,
    load_clip,
)

TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def vit_sd():
    return load_conformance("clip/vit_state_dict.pt")


@pytest.fixture(scope="module")
def vit_golden():
    return load_conformance("clip/vit_golden.pt")


@pytest.fixture(scope="module")
def rn_sd():
    return load_conformance("clip/rn_visual_state_dict.pt")


@pytest.fixture(scope="module")
def rn_golden():
    return load_conformance("clip/rn_golden.pt")


@pytest.fixture(scope="module")
def vit(vit_sd):
    return load_clip(conformance_path("clip/vit_state_dict.pt"), device="cpu")


def _capture(model):
    """Forward hooks recording the README's intermediates (batch-first)."""
    acts, handles = {}, []

    def pre(name):
        return lambda mod, inp: acts.__setitem__(name, inp[0].detach())

    def post(name):
        return lambda mod, inp, out: acts.__setitem__(name, out.detach())

    handles.append(model.visual.ln_pre.register_forward_pre_hook(pre("vis_ln_pre_in")))
    handles.append(model.visual.transformer.register_forward_hook(post("vis_transformer_out")))
    handles.append(model.visual.ln_post.register_forward_hook(post("vis_ln_post_out")))
    handles.append(model.transformer.register_forward_pre_hook(pre("txt_transformer_in")))
    handles.append(model.ln_final.register_forward_hook(post("txt_ln_final_out")))
    return acts, handles


# ----------------------------------------------------------------------------- ViT
def test_vit_config_inferred(vit_sd, vit_golden, vit):
    cfg = infer_config(vit_sd)
    gcfg = dict(vit_golden["config"])
    assert cfg.vision_heads == gcfg.pop("vision_heads") == 2
    assert {k: getattr(cfg, k) for k in gcfg} == gcfg
    assert cfg.transformer_heads == 1
    assert isinstance(vit.visual, VisionTransformer)
    assert vit.visual.transformer.resblocks[0].attn.num_heads == 2
    assert vit.transformer.resblocks[0].attn.num_heads == 1
    assert (vit.input_resolution, vit.context_length, vit.embed_dim, vit.vocab_size) == (32, 77, 64, 49408)
    assert not vit.training
    assert all(p.dtype == torch.float32 for p in vit.parameters())
    assert "input_resolution" not in vit.state_dict()


def test_vit_goldens(vit, vit_golden):
    g = vit_golden
    assert torch.equal(g["tokens"].argmax(-1), g["eot_index"])
    acts, handles = _capture(vit)
    try:
        with torch.no_grad():
            img = vit.encode_image(g["image_input"])
            txt = vit.encode_text(g["tokens"])
            lpi, lpt = vit(g["image_input"], g["tokens"])
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(img, g["image_features"], **TOL)
    torch.testing.assert_close(txt, g["text_features"], **TOL)
    torch.testing.assert_close(lpi, g["logits_per_image"], **TOL)
    torch.testing.assert_close(lpt, g["logits_per_text"], **TOL)
    torch.testing.assert_close(vit.logit_scale.exp().detach(), g["logit_scale_exp"], **TOL)
    torch.testing.assert_close(1 - lpi / 100, g["styleclip_clip_loss"], **TOL)
    for name in ["vis_ln_pre_in", "vis_transformer_out", "vis_ln_post_out", "txt_transformer_in", "txt_ln_final_out"]:
        torch.testing.assert_close(acts[name], g[name], **TOL, msg=lambda m, n=name: f"{n}: {m}")


def test_int32_tokens_and_image_normalisation(vit, vit_golden):
    g = vit_golden
    with torch.no_grad():
        txt = vit.encode_text(g["tokens"].to(torch.int32))
    torch.testing.assert_close(txt, g["text_features"], **TOL)
    assert torch.equal(torch.tensor(CLIP_MEAN), g["clip_mean"]) and torch.equal(torch.tensor(CLIP_STD), g["clip_std"])
    torch.testing.assert_close(clip_normalize(g["image_uint8"].float() / 255), g["image_input"], rtol=0, atol=1e-6)


def test_text_is_causal(vit, vit_golden):
    # tokens after the EOT (here: replacing padding) must not change the features
    tokens = vit_golden["tokens"][:2].clone()
    tokens[:, 30:] = 1234
    with torch.no_grad():
        torch.testing.assert_close(vit.encode_text(tokens), vit_golden["text_features"][:2], **TOL)


def test_padding_trim_equals_the_full_context(vit, vit_golden):
    """encode_text runs the text tower only up to the last EOT of the batch; the reference runs all
    77 positions.  Same features, for a batch of prompts of different lengths."""
    tokens = vit_golden["tokens"]
    tokens = tokens[tokens.argmax(-1) < 70]  # the goldens also hold one full-length prompt
    eot = tokens.argmax(-1)
    assert len(tokens) >= 4 and len(set(eot.tolist())) > 1
    with torch.no_grad():
        x = vit.ln_final(vit.transformer(vit.text_embed(tokens)))
        full = x[torch.arange(len(tokens)), eot] @ vit.text_projection
        torch.testing.assert_close(vit.encode_text(tokens), full, **TOL)


def test_half_precision_runs(vit_sd, vit_golden):
    m = build_model(vit_sd, dtype=torch.float16)
    assert m.dtype == torch.float16
    with torch.no_grad():
        f = m.encode_image(vit_golden["image_input"])
    assert f.dtype == torch.float16
    torch.testing.assert_close(f.float(), vit_golden["image_features"], rtol=0, atol=2e-2)


def test_build_model_does_not_alias_input(vit_sd):
    m = build_model(vit_sd)
    with torch.no_grad():
        m.positional_embedding.add_(1.0)
    assert not torch.equal(m.positional_embedding, vit_sd["positional_embedding"])


# ----------------------------------------------------------------------------- RN
def test_rn_visual_goldens(rn_sd, rn_golden):
    visual = build_visual(rn_sd)
    assert isinstance(visual, ModifiedResNet) and not visual.training
    assert visual.input_resolution == 64 and visual.attnpool.num_heads == 8
    assert [len(getattr(visual, f"layer{i}")) for i in range(1, 5)] == [1, 2, 1, 1]
    x = rn_golden["image_input"]
    with torch.no_grad():
        torch.testing.assert_close(visual(x), rn_golden["image_features"], **TOL)
        h = visual.stem(x[:1])
        torch.testing.assert_close(h, rn_golden["rn_stem_out"], **TOL)
        for i in range(1, 5):
            h = getattr(visual, f"layer{i}")(h)
            torch.testing.assert_close(h, rn_golden[f"rn_layer{i}_out"], **TOL, msg=lambda m, i=i: f"layer{i}: {m}")


def test_full_rn_clip_from_shapes(rn_sd, vit_sd, rn_golden):
    # the RN visual keys + the (64-dim) text side of the ViT dict form a full RN CLIP
    sd = dict(rn_sd)
    sd.update({k: v for k, v in vit_sd.items() if not k.startswith("visual.")})
    sd["input_resolution"] = torch.tensor(64)
    cfg = infer_config(sd)
    assert cfg.vision_layers == (1, 2, 1, 1) and cfg.vision_width == 16 and cfg.image_resolution == 64
    assert cfg.vision_heads == 8 and cfg.vision_patch_size is None
    m = build_model(sd)
    with torch.no_grad():
        torch.testing.assert_close(m.encode_image(rn_golden["image_input"]), rn_golden["image_features"], **TOL)
    # old checkpoints without BatchNorm counters still load
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    build_model(old)


def test_rn_visual_only_dict_is_not_a_full_clip(rn_sd):
    with pytest.raises(CheckpointError, match="CLIP"):
        build_model(rn_sd)


# ----------------------------------------------------------------------------- manifest
def test_vit_b32_manifest_on_meta_device():
    with open(conformance_path("manifests/openai_clip_vit_b32_state_dict.json")) as f:
        manifest = json.load(f)
    extras = set(manifest["extra_entries"])
    sd = {
        e["key"]: torch.empty(e["shape"], dtype=getattr(torch, e["dtype"]), device="meta")
        for e in manifest["entries"]
    }
    assert len(sd) == manifest["n_entries"] == 305
    cfg = infer_config(sd)
    assert {k: getattr(cfg, k) for k in manifest["config"]} == manifest["config"]
    assert cfg.vision_heads == 12 and cfg.transformer_heads == 8
    model = build_model(sd)
    assert model.visual.transformer.resblocks[0].attn.num_heads == 12
    assert model.transformer.resblocks[0].attn.num_heads == 8
    assert model.input_resolution == 224 and model.embed_dim == 512
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    want = [(e["key"], e["shape"]) for e in manifest["entries"] if e["key"] not in extras]
    assert got == want  # same keys, same order, same shapes: the real file loads strictly
    assert sum(p.numel() for p in model.parameters()) == manifest["n_params_excluding_extras"]
    assert all(p.is_meta and p.dtype == torch.float32 for p in model.parameters())


# ----------------------------------------------------------------------------- file formats
def _scripted_archive(sd, path):
    """A TorchScript archive whose state_dict() is ``sd`` (like OpenAI's ViT-B-32.pt)."""
    root = nn.Module()
    for key, value in sd.items():
        *parents, name = key.split(".")
        mod = root
        for p in parents:
            if not hasattr(mod, p):
                mod.add_module(p, nn.Module())
            mod = getattr(mod, p)
        if value.is_floating_point():
            mod.register_parameter(name, nn.Parameter(value.clone(), requires_grad=False))
        else:
            mod.register_buffer(name, value.clone())
    torch.jit.save(torch.jit.script(root), str(path))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_torchscript_archive_round_trip(vit_sd, vit_golden, tmp_path):
    path = tmp_path / "ViT-tiny.pt"
    _scripted_archive(vit_sd, path)
    raw = load_state(path, expected="CLIP", allow_torchscript=True)
    assert list(raw) == list(vit_sd)
    assert all(raw[k].dtype == v.dtype and torch.equal(raw[k], v) for k, v in vit_sd.items())
    model = load_clip(path, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(vit_golden["image_input"]), vit_golden["image_features"], **TOL)
        torch.testing.assert_close(model.encode_text(vit_golden["tokens"]), vit_golden["text_features"], **TOL)


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module.", None])
def test_wrapped_state_dicts(vit_sd, vit_golden, tmp_path, wrap):
    if wrap == "module.":
        obj = {"module." + k: v for k, v in vit_sd.items()}
    elif wrap:
        obj = {wrap: dict(vit_sd), "epoch": 3}
    else:
        obj = dict(vit_sd)
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    model = load_clip(str(path), device="cpu", dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(vit_golden["tokens"][:2]), vit_golden["text_features"][:2], **TOL)
    assert isinstance(load_clip(obj, device="cpu"), CLIP)


# ----------------------------------------------------------------------------- errors
def test_truncated_file(vit_sd, tmp_path):
    full = tmp_path / "full.pt"
    torch.save(vit_sd, full)
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(full.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as exc:
        load_clip(bad, device="cpu")
    assert "truncated" in str(exc.value) and "CLIP" in str(exc.value) and "truncated.pt" in str(exc.value)


def test_random_bytes(tmp_path):
    bad = tmp_path / "noise.pt"
    bad.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).tolist()))
    with pytest.raises(CheckpointError) as exc:
        load_clip(bad, device="cpu")
    assert "noise.pt" in str(exc.value) and "CLIP" in str(exc.value)


def test_stylegan_checkpoint_is_rejected():
    path = conformance_path("stylegan2/generator_ckpt.pt")
    with pytest.raises(CheckpointError) as exc:
        load_clip(path, device="cpu")
    msg = str(exc.value)
    assert "expected an OpenAI CLIP state dict" in msg and "'g_ema'" in msg


def test_missing_and_misshapen_keys(vit_sd):
    sd = dict(vit_sd)
    del sd["visual.ln_post.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys.*visual\.ln_post\.bias"):
        build_model(sd)
    sd = dict(vit_sd)
    sd["transformer.resblocks.0.mlp.c_fc.weight"] = torch.zeros(10, 64)
    with pytest.raises(CheckpointError, match="wrong shape"):
        build_model(sd)
    sd = dict(vit_sd)
    sd["input_resolution"] = torch.tensor(224)
    with pytest.raises(CheckpointError, match="input_resolution=224"):
        build_model(sd)
    sd = dict(vit_sd)
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unexpected"):
        build_model(sd)
    with pytest.raises(CheckpointError):
        build_model({"a": 1})
    with pytest.raises(CheckpointError):
        build_model([1, 2])


def test_quickgelu_not_gelu():
    from styleclip_lib.models.clip import QuickGELU

    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(QuickGELU()(x), x * torch.sigmoid(1.702 * x))
    assert math.isclose(float(QuickGELU()(torch.tensor(1.0))), 1 / (1 + math.exp(-1.702)), rel_tol=1e-6)


def test_bf16_autocast_attention_matches_fp32(vit, vit_golden):
    """Under CPU bf16 autocast the attention itself runs in fp32 (PyTorch's bf16 CPU attention
    backward is slow); the features stay close to fp32 and gradients flow."""
    image = vit_golden["image_input"].clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f = vit.encode_image(image)
    assert f.dtype == torch.bfloat16
    torch.testing.assert_close(f.float(), vit_golden["image_features"], rtol=0, atol=5e-2)
    f.float().sum().backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0
