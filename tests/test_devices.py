"""The models and the three methods on an accelerator compute what they compute on the CPU.

The accelerator is CUDA if present, else Apple MPS, or ``STYLECLIP_TEST_DEVICE`` (``cpu`` checks
the tests themselves); skipped where there is none (CI has none).  Tolerances allow for cuDNN's TF32
convolutions (on by default in PyTorch), not for a wrong device placement, a lost buffer or a
CPU-only op, which fail loudly or differ by O(1).  The optimisation trajectory is compared with
TF32 off: with it, Adam's sign-like first steps amplify the 1e-3 differences (measured on an H200:
a 4% loss difference after two steps).
"""
from __future__ import annotations

import os

import pytest
import torch

import styleclip_lib as sc
from styleclip_lib.device import default_device


def _accelerator() -> str | None:
    if os.environ.get("STYLECLIP_TEST_DEVICE"):
        return os.environ["STYLECLIP_TEST_DEVICE"]
    dev = default_device()
    return None if dev.type == "cpu" else dev.type


ACCEL = _accelerator()
pytestmark = pytest.mark.skipif(ACCEL is None, reason="needs a CUDA or MPS device (or STYLECLIP_TEST_DEVICE)")


@pytest.fixture(scope="module")
def both():
    return {"cpu": sc.load_models("toy", "cpu"), "accel": sc.load_models("toy", ACCEL)}


def _close(accel_tensor, cpu_tensor, atol, what):
    diff = (accel_tensor.detach().float().cpu() - cpu_tensor.detach().float()).abs().max().item()
    print(f"{what}: max |{ACCEL} - cpu| = {diff:.2e}")
    assert diff <= atol, f"{what}: {ACCEL} and CPU differ by {diff:.3g} (> {atol})"


def test_generator_clip_and_encoder_match_the_cpu(both):
    cpu, gpu = both["cpu"], both["accel"]
    assert gpu.generator.latent_avg.device.type == torch.device(ACCEL).type
    w_cpu, w_gpu = cpu.sample_w_plus(4, seed=3), gpu.sample_w_plus(4, seed=3)
    _close(w_gpu, w_cpu, 1e-3, "mapping")
    with torch.no_grad():
        x_cpu, x_gpu = cpu.generator.synthesis(w_cpu), gpu.generator.synthesis(w_cpu.to(ACCEL))
        _close(x_gpu, x_cpu, 2e-2, "synthesis")
        _close(gpu.clip.encode_image(x_cpu.to(ACCEL)), cpu.clip.encode_image(x_cpu), 2e-2, "clip image")
        tok = sc.tokenize(["purple hair"])
        _close(gpu.clip.encode_text(tok.to(ACCEL)), cpu.clip.encode_text(tok), 1e-3, "clip text")
        _close(gpu.encoder(x_cpu.to(ACCEL)), cpu.encoder(x_cpu), 2e-2, "encoder")


def test_global_directions_edit_matches_the_cpu(both):
    outs = {}
    for d, m in both.items():
        w = m.sample_w_plus(4, seed=5)
        outs[d] = m.global_directions()(w, "purple hair", "hair", alpha=6, beta=0.15)
    assert outs["accel"].num_channels == outs["cpu"].num_channels > 0
    assert outs["accel"].images.device.type == torch.device(ACCEL).type
    _close(outs["accel"].direction, outs["cpu"].direction, 1e-4, "global direction")
    _close(outs["accel"].images, outs["cpu"].images, 3e-2, "edited images")


@pytest.fixture
def no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_optimisation_follows_the_cpu_trajectory(both, no_tf32):
    res = {}
    w = both["cpu"].sample_w_plus(2, seed=7)
    for d, m in both.items():
        res[d] = m.optimizer()("purple hair", w.to(m.device), steps=5, lr=0.1, l2_lambda=0.008, progress=False)
    assert res["accel"].w_plus.device.type == torch.device(ACCEL).type
    for term in ("clip", "l2", "total"):
        torch.testing.assert_close(torch.tensor(res["accel"].loss_history[term]), torch.tensor(res["cpu"].loss_history[term]),
                                   rtol=2e-2, atol=2e-3)
    # the same edit: the two runs' latents differ by a small part of how far the edit moved them
    moved = (res["cpu"].w_plus - w).norm()
    gap = (res["accel"].w_plus.cpu() - res["cpu"].w_plus).norm()
    print(f"optimised W+: |{ACCEL} - cpu| / |cpu - source| = {gap / moved:.2e}")
    assert moved > 0 and gap <= 0.05 * moved, (gap, moved)


def test_mapper_trains_on_the_accelerator_and_its_checkpoint_loads_on_the_cpu(both, tmp_path):
    from styleclip_lib.methods.mapper import LatentMapperEdit, MapperTrainer

    gpu, cpu = both["accel"], both["cpu"]
    trainer = MapperTrainer(gpu.generator, gpu.clip, gpu.identity, description="purple hair", batch_size=4, max_steps=3,
                            save_interval=3, val_interval=3, image_interval=3, num_samples=16, num_val_samples=4,
                            exp_dir=tmp_path, seed=0)
    result = trainer.train(progress=False)
    assert next(result.mapper.parameters()).device.type == torch.device(ACCEL).type
    ckpt = sorted((tmp_path / "checkpoints").glob("*.pt"))
    assert ckpt, list(tmp_path.rglob("*"))
    edit_cpu = LatentMapperEdit.from_pretrained(cpu.generator, ckpt[-1], device="cpu")
    w = cpu.sample_w_plus(2, seed=9)
    with torch.no_grad():
        out_gpu = LatentMapperEdit(gpu.generator, result.mapper)(w.to(ACCEL))
        out_cpu = edit_cpu(w)
    _close(out_gpu.w_plus, out_cpu.w_plus, 1e-3, "mapper edit")
