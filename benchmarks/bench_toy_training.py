"""Toy-world training: seconds per step of the main stages in fp32 and in bf16 autocast.

``python -m styleclip_lib.toy.train --precision auto`` trains under bf16 autocast where the CPU has
bf16 units (AMX, or AVX-512 BF16 as on AMD Zen 4).  This times the real stage functions of ``styleclip_lib.toy.train`` (judge, the
generator's synthesis regression, the encoder, CLIP) both ways on this machine and prints the
ratio.  Each stage first runs ``--warmup`` steps (model set-up, first-call costs), then resumes for
``--steps`` timed steps from its checkpoint, as a stopped training run would.

    python benchmarks/bench_toy_training.py [--steps 10] [--threads 2] [--stages judge,generator,encoder,clip] [--device auto]

``--device`` as ``toy.train --device`` (default: the CPU, where the shipped recipe was timed).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from styleclip_lib.toy import train as T


def _stage(name: str, workdir: Path, steps: int):
    if name == "judge":
        return T.train_judge(workdir, steps, 0, True)
    if name == "generator":
        return T.train_generator(workdir, steps, 0, True, map_steps=1)
    if name == "encoder":
        from styleclip_lib.models.stylegan2 import load_generator

        g = load_generator(T.WEIGHTS_DIR / "generator.pt", device=T.DEVICE)
        return T.train_encoder(g, T.load_toy_embed(T.WEIGHTS_DIR / "generator.pt").to(T.DEVICE), workdir, steps, 0, True)
    if name == "clip":
        return T.train_clip(workdir, steps, 0, True)
    raise ValueError(f"--stages: unknown stage {name!r}; expected judge, generator, encoder or clip")


def seconds_per_step(name: str, precision: str, steps: int, warmup: int) -> float:
    T.PRECISION = precision
    with tempfile.TemporaryDirectory() as tmp:
        _stage(name, Path(tmp), warmup)
        _sync()
        t = time.perf_counter()
        _stage(name, Path(tmp), warmup + steps)  # resumes: only the timed steps run
        _sync()
        return (time.perf_counter() - t) / steps


def _sync():
    if T.DEVICE.type == "cuda":
        torch.cuda.synchronize(T.DEVICE)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--stages", default="judge,generator,encoder,clip")
    ap.add_argument("--device", default="cpu", help="'cpu' (default), 'auto', 'cuda', 'cuda:N' or 'mps'")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        T.DEVICE = T.training_device(a.device)
    except ValueError as e:
        ap.error(str(e))
    units = "yes" if T.has_bf16_units() else "no (--precision auto keeps fp32)"
    where = f"device {T.DEVICE}" + (f" ({torch.cuda.get_device_name(T.DEVICE)})" if T.DEVICE.type == "cuda" else "")
    print(f"{where}, threads {torch.get_num_threads()}, bf16 units (AMX or AVX-512 BF16): {units}")
    print(f"{'stage':10s} {'batch':>5s} {'fp32 s/step':>12s} {'bf16 s/step':>12s} {'fp32/bf16':>10s}")
    for name in filter(None, a.stages.split(",")):
        fp32 = seconds_per_step(name, "fp32", a.steps, a.warmup)
        low = seconds_per_step(name, "bf16", a.steps, a.warmup)
        print(f"{name:10s} {T.BATCH[name]:5d} {fp32:12.3f} {low:12.3f} {fp32 / low:10.2f}", flush=True)
    T.PRECISION, T.DEVICE = "auto", torch.device("cpu")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
