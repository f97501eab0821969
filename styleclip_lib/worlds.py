"""Model sets: everything one editing session needs, by name.

``'toy'`` is the offline default (shipped with the package); ``'ffhq'`` is the real
StyleCLIP set (fetched through :mod:`styleclip_lib.pretrained`).  The CLI, the notebooks
and the service all go through :func:`load_models` so that "which weights" is decided in
one place.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .device import resolve_device

__all__ = ["ModelSet", "load_models", "MODEL_SETS"]

#: names of each part per model set (registry names or 'toy')
#: truncation for random source faces.  The reference samples with 0.7; the toy generator's W is an
#: affine image of discrete attributes, where truncation blends them (half-purple hair), so 1.0.
DEFAULT_TRUNCATION = {"toy": 1.0, "ffhq": 0.7}
#: prompt templates for global directions' text embeddings.  The reference averages OpenAI CLIP over
#: the 79 ImageNet templates ("a bad photo of a {}."); the toy CLIP only knows its caption language,
#: in which those sentences are noise, so the toy prompt is embedded as it is.
TEXT_TEMPLATES = {"toy": ("{}",)}
#: fs3 row normalisation of each set's fs3 (``compute_fs3(normalize=)``).  FFHQ's published fs3 has the
#: reference's unit rows; the toy fs3 keeps each channel's mean effect, because unit rows gave the
#: toy generator's many near-inert channels as much relevance as the target's own channels
#: (see :func:`styleclip_lib.global_directions.fs3_from_features`).
FS3_NORMALIZATION = {"toy": "magnitude", "ffhq": "reference"}
#: how each set's fs3 is computed: "single_channel" (the reference loop, ``compute_fs3``) or
#: "correlation" (``compute_fs3_correlation``).  The toy StyleSpace writes each attribute value as a
#: pattern over many channels, where a lone channel's effect misleads; see that function.
FS3_METHOD = {"toy": "correlation", "ffhq": "single_channel"}

MODEL_SETS: dict[str, dict[str, str]] = {
    "toy": {"generator": "toy", "clip": "toy", "identity": "toy", "encoder": "toy", "fs3": "toy-fs3"},
    "ffhq": {"generator": "stylegan2-ffhq-config-f", "clip": "ViT-B/32", "identity": "model_ir_se50",
             "encoder": "e4e_ffhq_encode", "fs3": "ffhq-fs3"},
}


@dataclass
class ModelSet:
    """Generator + CLIP (+ identity model, encoder, fs3) of one domain; parts load on first use."""

    name: str
    device: torch.device
    parts: dict[str, str]
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def truncation(self) -> float:
        """Truncation used for random source faces of this model set."""
        return DEFAULT_TRUNCATION.get(self.name, 0.7)

    @property
    def fs3_normalize(self) -> str:
        """How this set's fs3 rows are normalised (pass it to ``compute_fs3`` to recompute it)."""
        return FS3_NORMALIZATION.get(self.name, "reference")

    @property
    def fs3_method(self) -> str:
        """How this set's fs3 is computed: ``'single_channel'`` (:func:`~styleclip_lib.global_directions.compute_fs3`)
        or ``'correlation'`` (:func:`~styleclip_lib.global_directions.compute_fs3_correlation`)."""
        return FS3_METHOD.get(self.name, "single_channel")

    def sample_w_plus(self, n: int = 1, seed: int = 0) -> torch.Tensor:
        """``n`` random source latents (W+), seeded, at this set's truncation."""
        g = self.generator
        z = torch.randn(n, g.w_dim, generator=torch.Generator().manual_seed(seed)).to(self.device)
        with torch.no_grad():
            return g.to_w_plus(g.mapping(z, truncation=self.truncation)).contiguous()

    def _get(self, key: str, loader):
        if key not in self._cache:
            self._cache[key] = loader()
        return self._cache[key]

    @property
    def generator(self):
        from .models.stylegan2 import load_generator

        return self._get("generator", lambda: load_generator(self.parts["generator"], device=self.device))

    @property
    def clip(self):
        from .models.clip import load_clip

        return self._get("clip", lambda: load_clip(self.parts["clip"], device=self.device))

    @property
    def identity(self):
        from .models.arcface import load_arcface

        return self._get("identity", lambda: load_arcface(self.parts["identity"], device=self.device))

    @property
    def encoder(self):
        from .models.e4e import load_e4e

        return self._get("encoder", lambda: load_e4e(self.parts["encoder"], device=self.device))

    def fs3_path(self) -> Path:
        if self.parts["fs3"] == "toy-fs3":
            from .toy import weights_path

            return weights_path("toy-fs3")
        from .pretrained import resolve

        return resolve(self.parts["fs3"], kind="fs3")

    def style_statistics(self):
        """(mean, std) StyleSpace statistics: shipped for the toy world, else computed (and cached)."""
        if "style_stats" not in self._cache:
            if self.name == "toy":
                from .toy import weights_path

                st = torch.load(weights_path("toy-style-stats"), weights_only=True)
                self._cache["style_stats"] = ([m.to(self.device) for m in st["style_mean"]], [s.to(self.device) for s in st["style_std"]])
            else:
                from .global_directions import style_statistics

                self._cache["style_stats"] = style_statistics(self.generator)
        return self._cache["style_stats"]

    def global_directions(self):
        from .global_directions import GlobalDirections

        def build():
            mean, std = self.style_statistics()
            extra = {"templates": TEXT_TEMPLATES[self.name]} if self.name in TEXT_TEMPLATES else {}
            return GlobalDirections(self.generator, self.clip, fs3=self.fs3_path(), style_mean=mean, style_std=std, **extra)

        return self._get("global_directions", build)

    def optimizer(self, with_identity: bool = False):
        from .methods.optimization import LatentOptimization

        return LatentOptimization(self.generator, self.clip, self.identity if with_identity else None,
                                  **self._channel_sources())

    def _channel_sources(self) -> dict:
        """fs3, style std and text templates, loaded on first use: what ``channel_beta`` needs."""
        from .global_directions import IMAGENET_TEMPLATES

        return {"fs3": self.fs3_path, "style_std": lambda: self.style_statistics()[1],
                "templates": TEXT_TEMPLATES.get(self.name, IMAGENET_TEMPLATES)}

    def mapper_channel_options(self, channel_beta=None, channel_sign: bool = True, with_mean: bool = False) -> dict:
        """``MapperTrainer`` keywords that restrict a StyleSpace mapper to the channels global
        directions keeps at ``channel_beta`` (this set's fs3, style std and templates; ``{}`` for None),
        and with ``with_mean`` this set's style mean and std, what ``range_lambda`` needs."""
        opts = {}
        if with_mean:
            opts.update(style_mean=lambda: self.style_statistics()[0], style_std=lambda: self.style_statistics()[1])
        if channel_beta is None:
            return opts
        return {"channel_beta": channel_beta, "channel_sign": channel_sign, **self._channel_sources(), **opts}


    def mapper_recipe(self, recipe: str = "auto", neutral: str | None = None) -> dict:
        """``MapperTrainer`` keywords of a named recipe (``'auto'``: ``'channel_masked'`` for the toy world,
        ``'reference'`` otherwise):

        * ``'reference'``: coach.py's W+ mapper (Ranger 0.5, CLIP 1 + latent L2 0.8 + ID 0.1 with this
          set's identity model), batch 2, 50000 steps;
        * ``'channel_masked'``: the kit's StyleSpace mapper on the channels global directions keeps for
          (description, ``neutral``) at β 0.15, anchored CLIP loss, no latent L2, Adam 0.5, batch 8, 300
          steps (toy world, one per prompt over the 25 edit prompts: 0.84 success, 0.13 collateral).
        """
        if recipe == "auto":
            recipe = "channel_masked" if self.name == "toy" else "reference"
        if recipe == "reference":
            return dict(identity_model=self.identity, batch_size=2, max_steps=50000, num_samples=5000, num_val_samples=200)
        if recipe != "channel_masked":
            raise ValueError(f"recipe: expected 'auto', 'channel_masked' or 'reference', got {recipe!r}")
        if not neutral:
            raise ValueError("recipe 'channel_masked': needs neutral= (e.g. 'hair' for 'purple hair')")
        return dict(work_in_stylespace=True, neutral=neutral, clip_loss="anchored", latent_l2_lambda=0.0, id_lambda=0.0,
                    optimizer="adam", learning_rate=0.5, batch_size=8, max_steps=300, num_samples=2000,
                    num_val_samples=64, **self.mapper_channel_options(channel_beta=0.15))


def load_models(name: str = "toy", device: str | torch.device | None = None) -> ModelSet:
    """The model set ``name`` ('toy' or 'ffhq') on ``device`` (parts load lazily)."""
    if name not in MODEL_SETS:
        raise ValueError(f"model set: expected one of {sorted(MODEL_SETS)}, got {name!r}")
    return ModelSet(name, resolve_device(device), dict(MODEL_SETS[name]))
