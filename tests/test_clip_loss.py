"""StyleCLIP CLIP-loss preprocessing and CLIPLoss against shared/conformance/clip goldens."""
from __future__ import annotations

import hashlib
from math import gcd

import pytest
import torch
from torch import nn

from conftest import conformance_path, load_conformance
from styleclip_lib.losses.clip_loss import CLIPLoss, resize_matrix, styleclip_clip_input
from styleclip_lib.models.clip import clip_normalize, load_clip

TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def resize_golden():
    return load_conformance("clip/styleclip_resize_golden.pt")


@pytest.fixture(scope="module")
def vit_golden():
    return load_conformance("clip/vit_golden.pt")


@pytest.fixture(scope="module")
def vit():
    return load_clip(conformance_path("clip/vit_state_dict.pt"), device="cpu")


def reference_op(x: torch.Tensor, size_out: int) -> torch.Tensor:
    """The literal StyleCLIP op, nearest upsample by u then AvgPool2d(k), with
    u/k = size_out/size_in in lowest terms (u=7, k=S/32 for R=224, S=32m)."""
    s = x.shape[-1]
    g = gcd(size_out, s)
    u, k = size_out // g, s // g
    return nn.AvgPool2d(kernel_size=k)(nn.Upsample(scale_factor=u)(x))


# ----------------------------------------------------------------------------- resize
def test_resize_256_golden(resize_golden):
    x = resize_golden["r256_input_uint8"].to(torch.float32) / 127.5 - 1
    out = styleclip_clip_input(x)
    assert out.shape == (1, 3, 224, 224) and out.dtype == torch.float32
    torch.testing.assert_close(out, resize_golden["r256_output"], **TOL)
    # the reference op itself (u=7, kernel 8) is what the golden holds
    torch.testing.assert_close(reference_op(x, 224), resize_golden["r256_output"], rtol=0, atol=0)


def test_resize_1024_golden(resize_golden):
    g = resize_golden
    idx = torch.arange(3 * 1024 * 1024, dtype=torch.int64)
    u8 = ((idx * g["r1024_hash_mult"]) % 2**32 >> 24).to(torch.uint8)
    assert hashlib.sha256(u8.numpy().tobytes()).hexdigest() == g["r1024_input_uint8_sha256"]
    assert torch.equal(u8[:16], g["r1024_input_uint8_first16"])
    x = (u8.to(torch.float32) / 127.5 - 1).view(1, 3, 1024, 1024)
    assert abs(x.double().sum().item() - g["r1024_input_float_sum"]) < 1e-9
    torch.testing.assert_close(styleclip_clip_input(x, 224), g["r1024_output"], **TOL)


@pytest.mark.parametrize("size_in,size_out", [(32, 224), (64, 224), (512, 224), (32, 32), (64, 32), (32, 64), (48, 32), (96, 64), (160, 224)])
def test_resize_equals_reference_formulation(size_in, size_out):
    x = torch.randn(2, 3, size_in, size_in, generator=torch.Generator().manual_seed(size_in))
    out = styleclip_clip_input(x, size_out)
    assert out.shape == (2, 3, size_out, size_out)
    torch.testing.assert_close(out, reference_op(x, size_out), **TOL)


def test_resize_matrix_properties():
    w = resize_matrix(1024, 224, dtype=torch.float64)
    torch.testing.assert_close(w.sum(1), torch.ones(224, dtype=torch.float64), rtol=0, atol=1e-12)
    # weights are multiples of 1/k = 1/32, each row spans k/u = 32/7 pixels
    assert torch.equal(w * 32, (w * 32).round())
    assert torch.equal(resize_matrix(32, 32), torch.eye(32))
    x = torch.randn(1, 3, 32, 32)
    assert styleclip_clip_input(x, 32) is x
    # non-square inputs: each axis is resized to R
    assert styleclip_clip_input(torch.randn(1, 3, 64, 32), 32).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError):
        styleclip_clip_input(torch.randn(3, 32, 32))


def test_resize_is_differentiable():
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    styleclip_clip_input(x, 224).sum().backward()
    # each input pixel contributes with total weight (224/64)^2
    torch.testing.assert_close(x.grad, torch.full_like(x, (224 / 64) ** 2))


# ----------------------------------------------------------------------------- CLIPLoss
def test_reference_mode_matches_golden(vit, vit_golden):
    g = vit_golden
    loss = CLIPLoss(vit, mode="reference")
    assert loss.input_resolution == 32
    with torch.no_grad():
        m = loss.loss_matrix(g["image_input"], g["tokens"])
        torch.testing.assert_close(m, g["styleclip_clip_loss"], **TOL)
        # one prompt for every image -> per-image loss (N,)
        per = loss(g["image_input"], g["tokens"][4])
        assert per.shape == (4,)
        torch.testing.assert_close(per, g["styleclip_clip_loss"][:, 4], **TOL)
        # one prompt per image -> the diagonal
        torch.testing.assert_close(loss(g["image_input"], g["tokens"][:4]), g["styleclip_clip_loss"].diagonal()[:4], **TOL)
        with pytest.raises(ValueError, match="4 images and 8 texts"):
            loss(g["image_input"], g["tokens"])


def test_cosine_mode(vit, vit_golden):
    g = vit_golden
    loss = CLIPLoss(vit)  # default mode: cosine, no normalisation
    assert loss.mode == "cosine" and loss.normalize is False
    with torch.no_grad():
        m = loss.loss_matrix(g["image_input"], g["text_features"])
    torch.testing.assert_close(m, 1 - g["logits_per_image"] / g["logit_scale_exp"], **TOL)
    # the two modes differ here because exp(logit_scale) = 54.6, not 100
    assert not torch.allclose(m, g["styleclip_clip_loss"], atol=1e-2)
    with pytest.raises(ValueError):
        CLIPLoss(vit, mode="logits")


def test_prompt_strings_and_cache(vit, vit_golden, monkeypatch):
    g = vit_golden
    loss = CLIPLoss(vit, mode="reference")
    prompts = g["prompts"][:6]  # prompt 6 is too long without truncation
    feats = loss.encode_prompt(prompts)
    torch.testing.assert_close(feats, g["text_features"][:6], **TOL)
    calls = []
    orig = vit.encode_text
    monkeypatch.setattr(vit, "encode_text", lambda t: calls.append(t.shape[0]) or orig(t))
    again = loss.encode_prompt(["a person with purple hair", "purple hair", "a new prompt"])
    assert calls == [1]  # only the unseen prompt was encoded
    assert torch.equal(again[:2], feats[[4, 0]])  # served from the cache
    with torch.no_grad():
        per = loss(g["image_input"], "a person with purple hair")
    torch.testing.assert_close(per, g["styleclip_clip_loss"][:, 4], **TOL)
    small = CLIPLoss(vit, cache_size=2)
    small.encode_prompt(["a", "b", "c"])
    assert list(small._text_cache) == ["a", "b", "c"]
    small.encode_prompt("d")
    assert list(small._text_cache) == ["c", "d"]
    small.clear_cache()
    assert not small._text_cache


def test_normalize_flag(vit, vit_golden):
    g = vit_golden
    x = g["image_uint8"].to(torch.float32) / 127.5 - 1  # generator-style [-1, 1]
    loss = CLIPLoss(vit, mode="reference", normalize=True)
    torch.testing.assert_close(loss.preprocess(x), g["image_input"], rtol=0, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(loss.loss_matrix(x, g["tokens"]), g["styleclip_clip_loss"], **TOL)
    raw = CLIPLoss(vit, mode="reference")  # the reference feeds [-1, 1] unnormalised
    assert torch.equal(raw.preprocess(x), x)
    torch.testing.assert_close(clip_normalize((x + 1) / 2), g["image_input"], rtol=0, atol=1e-5)


def test_gradient_reaches_generator_output(vit, vit_golden):
    # a 64x64 "generator" image goes through the 64->32 resize into the toy CLIP
    img = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)).mul(2).sub(1).requires_grad_(True)
    loss = CLIPLoss(vit)
    value = loss(img, "purple hair")
    assert value.shape == (2,) and torch.all((value >= 0) & (value <= 2))
    value.sum().backward()
    assert img.grad is not None and torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0
