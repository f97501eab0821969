"""Command line: ``python -m styleclip_lib <command> ...``.

Commands
  fetch NAME... / list / path NAME / info NAME / verify NAME
                                     pretrained weights (registry, cache, checksums)
  generate                           sample faces from a generator checkpoint
"""
from __future__ import annotations

import argparse
import sys


def _generate(argv: list[str]) -> int:
    import torch

    from .imageio import save_image
    from .models.stylegan2 import load_generator

    ap = argparse.ArgumentParser(prog="python -m styleclip_lib generate", description="Sample faces from a StyleGAN2 generator.")
    ap.add_argument("--checkpoint", default="toy", help="checkpoint path or registry name (default: the toy world)")
    ap.add_argument("--n", type=int, default=8, help="number of samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--truncation", type=float, default=0.7)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default="samples.png")
    a = ap.parse_args(argv)
    if a.n < 1:
        ap.error("--n must be >= 1")
    g = load_generator(a.checkpoint, device=a.device)
    dev = g.latent_avg.device
    z = torch.randn(a.n, g.w_dim, generator=torch.Generator().manual_seed(a.seed)).to(dev)
    with torch.no_grad():
        img = g.synthesis(g.mapping(z, truncation=a.truncation))
    path = save_image(img, a.out)
    print(f"wrote {a.n} samples ({g.resolution}px) to {path}")
    return 0


COMMANDS = {
    "generate": _generate,
}
PRETRAINED = {"fetch", "list", "path", "info", "verify"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = sorted(set(COMMANDS) | PRETRAINED)
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__.strip())
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd in PRETRAINED:
        from . import pretrained

        return pretrained.main([cmd, *rest])
    if cmd not in COMMANDS:
        print(f"unknown command {cmd!r}; expected one of: {', '.join(names)}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[cmd](rest)
    except (ValueError, FileNotFoundError) as e:  # clear errors, no traceback, for the CLI user
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
