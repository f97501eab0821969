"""CLIP text encoding: padding trim vs the full 77-token context, ViT-B/32 text-tower size.

``CLIP.encode_text`` drops the tokens after the last EOT before the causal text transformer (exact:
no EOT feature can attend to them).  This prints the time for the 79 ImageNet templates of one
prompt (what global directions encode per text) both ways, the ratio, and the largest difference.

    python benchmarks/bench_clip_text.py [--threads 2] [--repeat 3]
"""
from __future__ import annotations

import argparse
import time

import torch

from styleclip_lib.global_directions import IMAGENET_TEMPLATES
from styleclip_lib.models.clip import CLIP
from styleclip_lib.tokenizer import tokenize


def full_context(model: CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """The untrimmed computation (the reference's ``encode_text``)."""
    x = model.ln_final(model.transformer(model.text_embed(tokens)))
    return x[torch.arange(len(tokens)), tokens.argmax(-1)] @ model.text_projection


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--prompt", default="purple hair")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = CLIP(embed_dim=512, image_resolution=224, vision_layers=1, vision_width=64, vision_patch_size=32,
                 context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12).eval()
    tokens = tokenize([t.format(a.prompt) for t in IMAGENET_TEMPLATES])
    with torch.no_grad():
        trimmed, full = model.encode_text(tokens), full_context(model, tokens)
        t_trim = best_of(lambda: model.encode_text(tokens), a.repeat)
        t_full = best_of(lambda: full_context(model, tokens), a.repeat)
    print(f"{'variant':<22} {'seconds':>8}")
    print(f"{'full 77 tokens':<22} {t_full:>8.3f}")
    print(f"{'trimmed to ' + str(int(tokens.argmax(-1).max()) + 1) + ' tokens':<22} {t_trim:>8.3f}")
    print(f"speed-up x{t_full / t_trim:.2f}; max |difference| {(trimmed - full).abs().max().item():.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
