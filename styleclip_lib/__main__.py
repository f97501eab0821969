"""Command line: ``python -m styleclip_lib <command> ...``.

Commands
  fetch NAME... / list / path NAME / info NAME / verify NAME
                                     pretrained weights (registry, cache, checksums)
  generate                           sample faces from a generator (default: the toy world)
  edit                               edit a latent with a text: --method optimize | mapper | global
  train-mapper                       train a latent mapper for one prompt (--prompt, --recipe, --resume)
  serve                              HTTP service + web page (--model toy|ffhq, --port 8000)
"""
from __future__ import annotations

import argparse
import sys


def _generate(argv: list[str]) -> int:
    import torch

    from .imageio import save_image
    from .models.stylegan2 import load_generator
    from .worlds import DEFAULT_TRUNCATION

    ap = argparse.ArgumentParser(prog="python -m styleclip_lib generate", description="Sample faces from a StyleGAN2 generator.")
    ap.add_argument("--checkpoint", default="toy", help="checkpoint path or registry name (default: the toy world)")
    ap.add_argument("--n", type=int, default=8, help="number of samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--truncation", type=float, default=None, help=f"default: {DEFAULT_TRUNCATION['toy']} for the toy world, else {DEFAULT_TRUNCATION['ffhq']}")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default="samples.png")
    a = ap.parse_args(argv)
    if a.n < 1:
        ap.error("--n must be >= 1")
    g = load_generator(a.checkpoint, device=a.device)
    if a.truncation is None:
        a.truncation = DEFAULT_TRUNCATION["toy" if a.checkpoint == "toy" else "ffhq"]
    dev = g.latent_avg.device
    z = torch.randn(a.n, g.w_dim, generator=torch.Generator().manual_seed(a.seed)).to(dev)
    with torch.no_grad():
        img = g.synthesis(g.mapping(z, truncation=a.truncation))
    path = save_image(img, a.out)
    print(f"wrote {a.n} samples ({g.resolution}px) to {path}")
    return 0


def _edit(argv: list[str]) -> int:
    if "--image" in argv or any(a.startswith("--image=") for a in argv):
        # a photo: align -> invert -> edit (-> paste back), see styleclip_lib.photo
        from .photo import main as photo_main

        return photo_main(argv)
    import torch

    from .imageio import save_image
    from .latents import check_prompt, load_latents
    from .worlds import load_models

    ap = argparse.ArgumentParser(prog="python -m styleclip_lib edit",
                                 description="Edit a face latent with a text prompt (with --image: a photo, see "
                                             "python -m styleclip_lib.photo --help).")
    ap.add_argument("--method", choices=["optimize", "mapper", "global"], required=True)
    ap.add_argument("--prompt", required=True, help="target text, e.g. 'purple hair'")
    ap.add_argument("--neutral", default=None, help="global directions (default: 'a face') and the optimisation's "
                    "text-pair CLIP losses: the neutral text")
    ap.add_argument("--alpha", type=float, default=4.1, help="global directions: strength")
    ap.add_argument("--beta", type=float, default=0.15, help="global directions: disentanglement threshold")
    ap.add_argument("--steps", type=int, default=None, help="optimisation steps (default 300) / mapper training steps")
    ap.add_argument("--l2-lambda", type=float, default=0.008)
    ap.add_argument("--id-lambda", type=float, default=0.0)
    ap.add_argument("--lr", type=float, default=0.1, help="optimisation: peak learning rate")
    ap.add_argument("--space", default="w+", choices=["w+", "w", "s", "s_std"], help="optimisation space (reference: w+)")
    ap.add_argument("--clip-loss", default="global", choices=["global", "directional", "anchored"],
                    help="optimisation CLIP term (reference: global; the others need --neutral)")
    ap.add_argument("--channel-beta", type=float, default=None,
                    help="optimisation in s/s_std: optimise only the channels global directions keeps for "
                         "(--prompt, --neutral) at this beta (needs a text-pair --clip-loss)")
    ap.add_argument("--start", default="source", choices=["source", "global"],
                    help="optimisation start: the source (reference) or, in s/s_std, its global-direction edit at "
                         "--start-alpha (needs --neutral and a text-pair --clip-loss), refined per image")
    ap.add_argument("--start-alpha", type=float, default=4.1, help="optimisation --start global: the start's strength")
    ap.add_argument("--mapper", default=None, help="mapper checkpoint or registry name (method mapper)")
    ap.add_argument("--strength", type=float, default=0.1, help="mapper: w + strength*M(w)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--latent", default=None, help="W+ latents file (.pt / .npy)")
    src.add_argument("--seed", type=int, default=0, help="random source face (at the model set's truncation, ModelSet.truncation)")
    ap.add_argument("--model", default="toy", choices=["toy", "ffhq"])
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default="edit.png")
    a = ap.parse_args(argv)
    prompt = check_prompt(a.prompt)
    models = load_models(a.model, a.device)
    g = models.generator
    if a.latent:
        w = load_latents(a.latent, g.num_ws, g.w_dim).to(models.device)
    else:
        w = models.sample_w_plus(1, a.seed)
    if a.method == "optimize":
        if a.clip_loss != "global" and not a.neutral:
            ap.error(f"--clip-loss {a.clip_loss} needs --neutral (e.g. --neutral hair for 'purple hair')")
        if a.channel_beta is not None and (a.clip_loss == "global" or a.space not in ("s", "s_std")):
            ap.error("--channel-beta needs --space s or s_std, --neutral and --clip-loss directional or anchored")
        if a.start == "global" and (a.clip_loss == "global" or a.space not in ("s", "s_std")):
            ap.error("--start global needs --space s or s_std, --neutral and --clip-loss directional or anchored")
        res = models.optimizer(with_identity=a.id_lambda > 0)(
            prompt, w, steps=a.steps or 300, lr=a.lr, l2_lambda=a.l2_lambda, id_lambda=a.id_lambda, space=a.space,
            clip_loss=a.clip_loss, neutral=a.neutral if a.clip_loss != "global" else None, channel_beta=a.channel_beta,
            start=a.start, start_alpha=a.start_alpha)
        source, edited = res.source_images, res.images
        if res.num_channels is not None:
            print(f"{res.num_channels} channels optimised (channel_beta={a.channel_beta})")
    elif a.method == "global":
        res = models.global_directions()(w, prompt, a.neutral or "a face", alpha=a.alpha, beta=a.beta)
        with torch.no_grad():
            source = g.synthesis(w)
        edited = res.images
        print(f"{res.num_channels} channels manipulated (beta={res.beta})")
    else:
        from .methods.mapper import LatentMapperEdit

        if not a.mapper:
            ap.error("--mapper is required with --method mapper (a checkpoint path or a registry name such as mapper-purple_hair)")
        res = LatentMapperEdit.from_pretrained(g, a.mapper)(w, strength=a.strength)
        source, edited = res.source_images, res.images
    path = save_image(torch.cat([source, edited.reshape(-1, *source.shape[1:])]), a.out, nrow=source.shape[0])
    print(f"wrote source (top) and edited (bottom) faces to {path}")
    return 0


def _latest_checkpoint(exp_dir) -> "Path | None":
    from pathlib import Path

    found = sorted(Path(exp_dir, "checkpoints").glob("iteration_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return found[-1] if found else None


def _train_mapper(argv: list[str]) -> int:
    from .latents import check_prompt
    from .methods.mapper import MapperTrainer
    from .worlds import load_models

    ap = argparse.ArgumentParser(prog="python -m styleclip_lib train-mapper",
                                 description="Train a StyleCLIP latent mapper for one prompt (checkpoints in the "
                                             "official format; Ctrl-C saves, --resume continues).")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--neutral", default=None,
                    help="neutral side of the text pair (channel_masked recipe; the toy world infers it from the prompt)")
    ap.add_argument("--recipe", default="auto", choices=["auto", "channel_masked", "reference"],
                    help="reference: coach.py's W+ mapper (Ranger 0.5, CLIP 1 + L2 0.8 + ID 0.1); channel_masked: the "
                         "kit's StyleSpace mapper on the channels global directions keeps (beta 0.15, anchored CLIP "
                         "loss, no L2, Adam 0.5; toy world, one per prompt over 25 prompts: 0.84 success, 0.13 "
                         "collateral); auto: channel_masked for the toy world, reference for ffhq")
    ap.add_argument("--model", default="toy", choices=["toy", "ffhq"])
    ap.add_argument("--latents", default=None, help="training W+ latents (.pt / .npy or a registry name); default: sampled")
    ap.add_argument("--steps", type=int, default=None, help="default: 300 (channel_masked), 50000 (reference)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 8 (channel_masked), 2 (reference)")
    ap.add_argument("--exp-dir", default="mapper_run", help="checkpoints, validation grids and metrics")
    ap.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --exp-dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    a = ap.parse_args(argv)
    prompt = check_prompt(a.prompt, name="--prompt")
    for name, v in (("--steps", a.steps), ("--batch-size", a.batch_size)):
        if v is not None and v < 1:
            ap.error(f"{name} must be >= 1")
    recipe = a.recipe if a.recipe != "auto" else ("channel_masked" if a.model == "toy" else "reference")
    models = load_models(a.model, a.device)
    neutral = a.neutral
    if recipe == "channel_masked":
        if neutral is None and a.model == "toy":
            from .toy.captions import neutral_prompt_for, parse_prompt

            asked = parse_prompt(prompt)
            if len(asked) == 1:
                neutral = neutral_prompt_for(asked[0][0])
        if neutral is None:
            ap.error("--neutral is needed with the channel_masked recipe (e.g. --prompt 'purple hair' --neutral hair)")
    knobs = models.mapper_recipe(recipe, neutral)
    knobs.update({k: v for k, v in (("batch_size", a.batch_size), ("max_steps", a.steps)) if v is not None})
    if recipe == "channel_masked":
        knobs["val_interval"] = knobs["max_steps"]
    resume = _latest_checkpoint(a.exp_dir) if a.resume else None
    if a.resume and resume is None:
        ap.error(f"--resume: no iteration_*.pt checkpoint in {a.exp_dir}/checkpoints")
    if not a.resume and _latest_checkpoint(a.exp_dir) is not None:
        ap.error(f"--exp-dir {a.exp_dir} already holds a run: add --resume to continue it, or pick another --exp-dir")
    trainer = MapperTrainer(models.generator, models.clip, description=prompt, latents=a.latents, exp_dir=a.exp_dir,
                            seed=a.seed, resume_from=resume, save_interval=None, **knobs)
    print(f"{recipe} mapper for {prompt!r}" + (f" (neutral {neutral!r}, {trainer.num_channels} channels)" if trainer.num_channels else "")
          + (f", resuming at step {trainer.step}" if resume else ""), flush=True)
    res = trainer.train(progress=True)
    ckpt = res.best_checkpoint or res.last_checkpoint
    print(f"trained {res.step} steps in {res.elapsed:.0f}s; checkpoint {ckpt}\n"
          f"edit with: python -m styleclip_lib edit --method mapper --model {a.model} --mapper {ckpt} --prompt {prompt!r}")
    return 0


def _serve(argv: list[str]) -> int:
    from .serve.cli import main as serve_main

    return serve_main(argv)


COMMANDS = {
    "generate": _generate,
    "edit": _edit,
    "train-mapper": _train_mapper,
    "serve": _serve,
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
    except (ValueError, FileNotFoundError, ImportError) as e:  # clear errors, no traceback, for the CLI user
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
