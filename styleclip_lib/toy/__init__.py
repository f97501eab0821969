"""Toy world: procedural cartoon faces (:mod:`.render`) and their caption /
prompt language (:mod:`.captions`), standing in for FFHQ + real captions.

Names are re-exported lazily, so ``python -m styleclip_lib.toy.render`` runs
cleanly.  The single-face ``render`` function is not re-exported (that name
is the module); use ``render_batch`` or ``from .render import render``."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "render": ("ATTRIBUTES", "IDENTITY", "LATENT_FACTORS", "VECTOR_DIM", "FaceParams",
               "FaceBatch", "sample_params", "params_from_normal", "observable",
               "render_batch", "landmarks"),
    "captions": ("SYNONYMS", "EDIT_PROMPTS", "caption", "prompt_for", "neutral_prompt_for",
                 "parse_prompt", "true_attributes"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- shipped weights

#: registry kind (as the loaders ask for it) -> file in ``toy/weights``
_WEIGHT_FILES = {"generator": "generator.pt", "clip": "clip.pt", "judge": "judge.pt",
                 "arcface": "identity.pt", "identity": "identity.pt", "e4e": "encoder.pt", "encoder": "encoder.pt",
                 "fs3": "fs3.npy", "style-stats": "style_stats.pt"}


def weights_path(name: str = "toy", kind: str | None = None):
    """Path of a shipped toy-world weight file.

    ``name`` is ``'toy'`` (the loader's ``kind`` picks the file: ``load_generator('toy')`` →
    ``generator.pt``) or ``'toy-<part>'`` (``'toy-clip'``, ``'toy-judge'``, ...).  The weights are
    made by ``python -m styleclip_lib.toy.train`` and ship inside the package; the environment
    variable ``STYLECLIP_TOY_WEIGHTS`` points every loader at another folder (e.g. your own
    ``--out`` of the training script) instead.
    """
    import os
    from pathlib import Path

    part = name.lower().replace("_", "-")
    part = part[len("toy-"):] if part.startswith("toy-") else (kind if part == "toy" else None)
    if part not in _WEIGHT_FILES:
        raise FileNotFoundError(
            f"unknown toy-world model {name!r} (kind {kind!r}); expected 'toy' with one of the loaders, "
            f"or one of: {', '.join('toy-' + k for k in _WEIGHT_FILES)}")
    folder = os.environ.get("STYLECLIP_TOY_WEIGHTS") or Path(__file__).resolve().parent / "weights"
    path = Path(folder) / _WEIGHT_FILES[part]
    if not path.exists():
        raise FileNotFoundError(
            f"toy-world weights {path} are missing from this installation; train them with "
            "`python -m styleclip_lib.toy.train` (about 2 h 50 min on 2 CPU cores, resumable)")
    return path


__all__ += ["weights_path"]
