"""Time per edit for each method, and G's FLOPs and achieved FLOP/s.

    python benchmarks/bench_methods.py [--sizes toy,ffhq] [--device cpu|cuda|mps] [--repeat 3]

Two model sets: the shipped toy world (64 px) and FFHQ-shaped *random* weights at 1024 px
(StyleGAN2 config-f + CLIP ViT-B/32 built from their configs: same shapes and FLOPs as the
real files, no download).  Every time is also reported as a ratio to the generator's forward
pass measured in the same run (the baseline), so numbers from different machines compare.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def timeit(fn, device, repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def flops_of(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def build(size: str, device):
    from styleclip_lib.models.clip import CLIP
    from styleclip_lib.models.stylegan2 import Generator

    if size == "toy":
        from styleclip_lib import load_clip, load_generator

        return load_generator("toy", device=device), load_clip("toy", device=device)
    torch.manual_seed(0)
    g = Generator(1024, 512, 8, channel_multiplier=2).eval().requires_grad_(False).to(device)
    clip = CLIP(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                transformer_layers=12).eval().requires_grad_(False).to(device)
    return g, clip


def bench(size: str, device, repeat: int) -> dict:
    from styleclip_lib.global_directions import apply_direction
    from styleclip_lib.losses.clip_loss import CLIPLoss
    from styleclip_lib.models.mapper import LevelsMapper

    g, clip = build(size, device)
    w = g.to_w_plus(g.mapping(torch.randn(1, g.w_dim, device=device))).detach()
    forward = lambda: g.synthesis(w)  # noqa: E731
    with torch.no_grad():
        g_flops = flops_of(forward)
        t_g = timeit(lambda: forward(), device, repeat)

    loss = CLIPLoss(clip, normalize=True)
    text = loss.encode_prompt("purple hair")
    latent = w.clone().requires_grad_(True)
    adam = torch.optim.Adam([latent], lr=0.01)

    def opt_step():
        img = g.synthesis(latent)
        val = loss(img, text).sum() + 0.008 * ((latent - w) ** 2).sum()
        adam.zero_grad()
        val.backward()
        adam.step()

    t_opt = timeit(opt_step, device, repeat)

    styles = [s.detach() for s in g.styles(w)]
    boundary = [torch.randn_like(s) * 0.01 for s in styles]
    with torch.no_grad():
        t_global = timeit(lambda: g.synthesis_from_styles(apply_direction(styles, boundary, 4.1)), device, repeat)
        mapper = LevelsMapper(g.w_dim, g.num_ws).to(device).eval()
        t_mapper = timeit(lambda: g.synthesis(mapper.edit(w)), device, repeat)
    res = {
        "model": size, "device": str(device), "resolution": g.resolution,
        "G_forward_s": t_g, "G_forward_GFLOP": g_flops / 1e9, "G_achieved_GFLOPs": g_flops / 1e9 / t_g,
        "optimization_step_s": t_opt, "optimization_300_steps_s": 300 * t_opt,
        "global_edit_s": t_global, "mapper_edit_s": t_mapper,
    }
    res["ratios_to_G_forward"] = {k: res[k] / t_g for k in ("optimization_step_s", "global_edit_s", "mapper_edit_s")}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="toy,ffhq")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    rows = [bench(s, device, a.repeat) for s in a.sizes.split(",") if s]
    print(f"{'model':<6} {'px':>5} {'G fwd s':>9} {'GFLOP':>8} {'GFLOP/s':>8} {'opt step s':>10} {'x G':>6} "
          f"{'global s':>9} {'x G':>6} {'mapper s':>9} {'x G':>6}")
    for r in rows:
        q = r["ratios_to_G_forward"]
        print(f"{r['model']:<6} {r['resolution']:>5} {r['G_forward_s']:>9.4f} {r['G_forward_GFLOP']:>8.2f} "
              f"{r['G_achieved_GFLOPs']:>8.1f} {r['optimization_step_s']:>10.4f} {q['optimization_step_s']:>6.2f} "
              f"{r['global_edit_s']:>9.4f} {q['global_edit_s']:>6.2f} {r['mapper_edit_s']:>9.4f} {q['mapper_edit_s']:>6.2f}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
