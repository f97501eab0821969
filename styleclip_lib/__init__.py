"""styleclip_lib: text-driven face editing with StyleGAN2 + CLIP (the StyleCLIP family).

Top-level names are imported lazily so that ``import styleclip_lib`` stays fast and
optional parts (serving, notebooks) never load unless used.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_generator": "styleclip_lib.models.stylegan2",
    "Generator": "styleclip_lib.models.stylegan2",
    "load_clip": "styleclip_lib.models.clip",
    "tokenize": "styleclip_lib.tokenizer",
    "load_arcface": "styleclip_lib.models.arcface",
    "load_e4e": "styleclip_lib.models.e4e",
    "load_mapper": "styleclip_lib.models.mapper",
    "CheckpointError": "styleclip_lib.checkpoint",
    "load_models": "styleclip_lib.worlds",
    "LatentOptimization": "styleclip_lib.methods.optimization",
    "MapperTrainer": "styleclip_lib.methods.mapper",
    "LatentMapperEdit": "styleclip_lib.methods.mapper",
    "GlobalDirections": "styleclip_lib.global_directions",
    "align_face": "styleclip_lib.align",
    "load_image": "styleclip_lib.photo_io",
    "edit_photo": "styleclip_lib.photo",
    "PhotoEditResult": "styleclip_lib.photo",
    "InversionResult": "styleclip_lib.invert",
    "EncoderInversion": "styleclip_lib.invert",
    "ProjectionInversion": "styleclip_lib.invert",
}

__all__ = sorted(_LAZY) + ["pretrained", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in {"pretrained", "models", "toy", "losses", "global_directions", "methods", "align", "invert", "photo", "worlds", "serve", "storage"}:
        return importlib.import_module(f"styleclip_lib.{name}")
    raise AttributeError(f"module 'styleclip_lib' has no attribute {name!r}")


def __dir__():
    return __all__
