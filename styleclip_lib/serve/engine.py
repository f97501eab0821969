"""What the service computes, without any web framework: sources, edits, inversion, mapper training.

:class:`Engine` wraps one :class:`~styleclip_lib.worlds.ModelSet` and the service
:class:`~styleclip_lib.serve.settings.Settings`; the FastAPI layer (:mod:`.app`) only parses HTTP
and calls it.  Every user mistake becomes a :class:`~styleclip_lib.serve.errors.ServiceError`
(4xx); model weights that cannot be loaded become 503.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .codec import data_url, decode_base64, load_rgb, parse_latent, png_bytes, rgb_to_tensor
from .errors import LimitError, ServiceError
from .jobs import Job
from .settings import Settings

__all__ = ["Engine"]

log = logging.getLogger("styleclip_lib.serve")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: prompts are wrapped in CLIP templates ("a jpeg corrupted photo of the {}.") before tokenizing
_MAX_PROMPT_TOKENS = 60


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 2)


@contextlib.contextmanager
def user_errors(what: str = "request"):
    """Library ``ValueError`` / ``TypeError`` (bad input) → 400; missing weights → 503."""
    try:
        yield
    except ServiceError:
        raise
    except FileNotFoundError as e:
        raise ServiceError(503, "model_unavailable", f"model weights are not available: {e}") from None
    except (ValueError, TypeError) as e:
        raise ServiceError(400, "invalid_request", f"{what}: {e}") from None


class Engine:
    def __init__(self, models, settings: Settings, storage=None):
        self.models = models
        self.settings = settings
        self.storage = storage
        self._load_lock = threading.RLock()
        self._slots = threading.BoundedSemaphore(settings.max_concurrent_requests)
        self._mappers: "OrderedDict[str, Any]" = OrderedDict()
        self._samples: "OrderedDict[tuple, bytes]" = OrderedDict()
        self._cache_lock = threading.Lock()
        if settings.mapper_dir:
            self.mapper_dir = Path(settings.mapper_dir).expanduser()
        else:
            home = os.environ.get("STYLECLIP_HOME")
            base = Path(home).expanduser() if home else Path.home() / ".cache" / "styleclip"
            self.mapper_dir = base / "serve" / "mappers" / _safe_name(models.name)

    # ------------------------------------------------------------------ models
    @property
    def name(self) -> str:
        return self.models.name

    def has(self, part: str) -> bool:
        return part in self.models.parts and bool(self.models.parts[part])

    def _part(self, getter: Callable[[], Any], what: str):
        with self._load_lock, user_errors(f"loading the {what}"):
            try:
                return getter()
            except KeyError as e:
                raise ServiceError(400, "unsupported", f"the model set {self.name!r} has no {what} ({e})") from None

    @property
    def generator(self):
        return self._part(lambda: self.models.generator, "generator")

    def loaded(self) -> list[str]:
        cache = getattr(self.models, "_cache", {})
        return sorted(k for k in cache if k in ("generator", "clip", "identity", "encoder", "global_directions"))

    @contextlib.contextmanager
    def slot(self):
        """One of ``max_concurrent_requests`` compute slots, or 503 after ``request_wait_s``."""
        if not self._slots.acquire(timeout=self.settings.request_wait_s):
            raise ServiceError(503, "busy", "the server is busy with other edits; retry shortly",
                               headers={"Retry-After": str(self.settings.retry_after_s)})
        try:
            yield
        finally:
            self._slots.release()

    def info(self) -> dict:
        g = self.generator
        return {
            "model": self.name,
            "device": str(self.models.device),
            "resolution": int(g.resolution),
            "num_ws": int(g.num_ws),
            "w_dim": int(g.w_dim),
            "methods": {
                "global": self.has("fs3"),
                "optimize": self.has("clip"),
                "mapper": True,
                "train_mapper": self.has("clip"),
                "invert": {"encoder": self.has("encoder"), "projection": True},
                "photo": True,
                "identity_loss": self.has("identity"),
            },
            "mappers": self.mapper_names(),
            "loaded": self.loaded(),
            "limits": self.settings.limits(),
            "storage": self.storage.kind if self.storage is not None else None,
        }

    # ------------------------------------------------------------------ validation
    def check_model(self, model: Optional[str]) -> None:
        if model is not None and model != self.name:
            raise ServiceError(400, "unknown_model", f"model {model!r}: this server serves the model set {self.name!r} "
                                                     "(see GET /v1/models)", available=[self.name])

    def check_prompt(self, text: Any, field: str = "prompt") -> str:
        from ..latents import check_prompt

        limit = self.settings.max_prompt_length
        if isinstance(text, str) and len(text.strip()) > limit:
            raise LimitError("max_prompt_length", f"{field}: {len(text.strip())} characters, over the limit of "
                             f"max_prompt_length={limit}", value=len(text.strip()), max=limit)
        try:
            text = check_prompt(text, name=field, max_length=limit)
        except ValueError as e:
            raise ServiceError(422, "invalid_prompt", str(e)) from None
        from ..tokenizer import get_tokenizer

        n = len(get_tokenizer().encode(text))
        if n > _MAX_PROMPT_TOKENS:
            raise LimitError("max_prompt_tokens", f"{field}: {n} CLIP tokens, over the limit of {_MAX_PROMPT_TOKENS} "
                             "(CLIP reads at most 77 tokens, templates included)", value=n, max=_MAX_PROMPT_TOKENS)
        return text

    def check_steps(self, steps: int, limit_name: str) -> int:
        limit = getattr(self.settings, limit_name)
        if steps > limit:
            raise LimitError(limit_name, f"steps: {steps}, over the limit of {limit_name}={limit}", value=steps, max=limit)
        return steps

    def check_abs(self, value: float, field: str, limit_name: str) -> float:
        limit = getattr(self.settings, limit_name)
        if abs(value) > limit:
            raise LimitError(limit_name, f"{field}: {value}, over the limit of {limit_name}={limit} (absolute value)",
                             value=value, max=limit)
        return value

    def output_mode(self, output: Optional[str]) -> str:
        return output or self.settings.default_output

    # ------------------------------------------------------------------ sources
    def image_tensor(self, image_b64: Optional[str], image_bytes: Optional[bytes], align: bool) -> torch.Tensor:
        """The uploaded image as (1, 3, R, R) in [-1, 1] at the generator's resolution."""
        s = self.settings
        data = image_bytes if image_bytes is not None else decode_base64(image_b64, s.max_upload_bytes)
        if len(data) > s.max_upload_bytes:
            raise LimitError("max_upload_bytes", f"image: {len(data)} bytes, over the limit of max_upload_bytes="
                             f"{s.max_upload_bytes}", value=len(data), max=s.max_upload_bytes, status=413)
        rgb = load_rgb(data, s.max_upload_bytes, s.max_image_pixels)
        res = int(self.generator.resolution)
        if align:
            try:
                if self.name == "toy":  # toy faces have their own frame (see styleclip_lib.photo)
                    from ..photo import toy_frame_face

                    face = toy_frame_face(rgb, res)
                else:
                    from ..align import align_face

                    face = align_face(rgb, output_size=res, max_pixels=s.max_image_pixels, max_bytes=s.max_upload_bytes)
            except ImportError as e:
                raise ServiceError(501, "align_unavailable", f"face alignment needs the landmark extra "
                                   f"(pip install 'styleclip_lib[photo]'): {e}") from None
            except (ValueError, RuntimeError) as e:
                raise ServiceError(400, "align_failed", f"image: could not align a face: {e}") from None
            import numpy as np

            rgb = np.asarray(face.image.convert("RGB"))
        return rgb_to_tensor(rgb, res)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """W+ of images with the model set's encoder (e4e, or the toy encoder)."""
        from ..latents import as_w_plus

        if not self.has("encoder"):
            raise ServiceError(400, "no_encoder", f"the model set {self.name!r} has no encoder: invert the photo with "
                                                  "POST /v1/invert (method 'projection', a job) and send its latent")
        enc = self._part(lambda: self.models.encoder, "encoder")
        g = self.generator
        with torch.no_grad(), user_errors("encoder"):
            try:
                from ..invert import EncoderInversion
            except ImportError:  # older library: call the encoder directly (images at the generator's size)
                w = enc(x.to(self.models.device))
            else:
                w = EncoderInversion(enc, g).encode(x)
            return as_w_plus(w, g.num_ws, g.w_dim, name="encoder output")

    def source(self, req, image_bytes: Optional[bytes] = None) -> tuple[torch.Tensor, dict, dict]:
        """(W+, source description, timings) from exactly one of image / latent / seed."""
        from ..latents import as_w_plus

        given = [n for n, v in (("image", req.image if image_bytes is None else image_bytes), ("latent", req.latent),
                                ("seed", req.seed)) if v is not None]
        if len(given) != 1:
            raise ServiceError(422, "bad_source", "give exactly one source: 'image' (base64 or a multipart file), "
                                                  f"'latent' (W+ nested lists) or 'seed' (got {given or 'none'})")
        g = self.generator
        timings: dict = {}
        t0 = time.perf_counter()
        kind = given[0]
        if kind == "seed":
            z = torch.randn(1, g.w_dim, generator=torch.Generator().manual_seed(int(req.seed)))
            with torch.no_grad():
                w = as_w_plus(g.mapping(z.to(self.models.device), truncation=req.truncation), g.num_ws, g.w_dim, allow_w=True)
            desc = {"source": "seed", "seed": req.seed, "truncation": req.truncation}
        elif kind == "latent":
            w = parse_latent(req.latent, g.num_ws, g.w_dim, self.settings.max_batch).to(self.models.device)
            desc = {"source": "latent", "batch": int(w.shape[0])}
        else:
            x = self.image_tensor(req.image, image_bytes, getattr(req, "align", False))
            timings["decode_ms"] = _ms(t0)
            t0 = time.perf_counter()
            w = self.encode(x)
            timings["invert_ms"] = _ms(t0)
            desc = {"source": "image", "inversion": "encoder", "align": bool(getattr(req, "align", False))}
            return w, desc, timings
        timings["source_ms"] = _ms(t0)
        return w, desc, timings

    def synth(self, w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.generator.synthesis(w, noise_mode="const")

    def sample_png(self, seed: int, truncation: float = 0.7) -> bytes:
        key = (int(seed), round(float(truncation), 4))
        with self._cache_lock:
            if key in self._samples:
                self._samples.move_to_end(key)
                return self._samples[key]
        from ..latents import as_w_plus

        g = self.generator
        z = torch.randn(1, g.w_dim, generator=torch.Generator().manual_seed(key[0]))
        with self.slot(), torch.no_grad():
            w = as_w_plus(g.mapping(z.to(self.models.device), truncation=key[1]), g.num_ws, g.w_dim, allow_w=True)
            png = png_bytes(self.synth(w)[0])
        with self._cache_lock:
            self._samples[key] = png
            while len(self._samples) > 64:
                self._samples.popitem(last=False)
        return png

    # ------------------------------------------------------------------ outputs
    def outputs(self, source: Optional[torch.Tensor], edited: torch.Tensor, output: str, base_url: str) -> list[dict]:
        """One dict per image: data URLs and/or storage URLs of the source and edited faces."""
        items = []
        for i in range(edited.shape[0]):
            item: dict = {}
            for name, imgs in (("source", source), ("edited", edited)):
                if imgs is None:
                    continue
                png = png_bytes(imgs[i])
                if output in ("base64", "both"):
                    item[name] = data_url(png)
                if output in ("url", "both"):
                    item[f"{name}_url"] = self.store(png, base_url)
            items.append(item)
        return items

    def store(self, png: bytes, base_url: str) -> str:
        from ..storage import StorageError

        if self.storage is None:
            raise ServiceError(400, "no_storage", "this server has no result storage; ask for output='base64'")
        try:
            key = self.storage.put_bytes(png, suffix=".png", content_type="image/png")
            url = self.storage.url(key, expires_in=self.settings.file_url_ttl_s)
        except StorageError as e:
            raise ServiceError(502, "storage_error", str(e)) from None
        if url.startswith("/"):
            url = (self.settings.public_base_url or base_url).rstrip("/") + url
        return url

    def _response(self, method: str, source, edited, w_out, req, params: dict, timings: dict, base_url: str,
                  t_start: float, **extra) -> dict:
        t0 = time.perf_counter()
        images = self.outputs(source, edited, self.output_mode(req.output), base_url)
        timings["encode_ms"] = _ms(t0)
        timings["total_ms"] = _ms(t_start)
        out = {"model": self.name, "method": method, "images": images, **extra, "params": params, "timings": timings}
        if req.return_latent and w_out is not None:
            out["latent"] = w_out.detach().float().cpu().tolist()
        return out

    # ------------------------------------------------------------------ global directions
    def global_directions(self):
        if not self.has("fs3"):
            raise ServiceError(400, "unsupported", f"the model set {self.name!r} has no global-direction matrix "
                                                   "(fs3): use method 'optimize' or 'mapper'")
        return self._part(self.models.global_directions, "global directions (fs3, style statistics)")

    def edit_global(self, req, image_bytes: Optional[bytes] = None, base_url: str = "") -> dict:
        t_start = time.perf_counter()
        self.check_model(req.model)
        prompt = self.check_prompt(req.prompt)
        neutral = self.check_prompt(req.neutral if req.neutral is not None else "a face", "neutral")
        alpha = self.check_abs(req.alpha, "alpha", "max_abs_alpha")
        gd = self.global_directions()
        with self.slot():
            w, desc, timings = self.source(req, image_bytes)
            t0 = time.perf_counter()
            with torch.no_grad(), user_errors("global directions"):
                res = gd(w, prompt, neutral, alpha=alpha, beta=req.beta)
                source = self.synth(w)
            timings["edit_ms"] = _ms(t0)
            params = {**desc, "prompt": prompt, "neutral": neutral, "alpha": alpha, "beta": float(res.beta)}
            extra = {"num_channels": int(res.num_channels)}
            if res.num_channels == 0:
                extra["note"] = f"no StyleSpace channel passed beta={res.beta}: the image is unchanged; lower beta"
            w_out = None
            return self._response("global", source, res.images, w_out, req, params, timings, base_url, t_start, **extra)

    # ------------------------------------------------------------------ mapper
    def mapper_names(self) -> list[str]:
        names = []
        if self.mapper_dir.is_dir():
            names = sorted(p.stem for p in self.mapper_dir.glob("*.pt") if _NAME.match(p.stem))
        return names + [n for n in self._registry_mappers() if n not in names]

    def _registry_mappers(self) -> list[str]:
        if self.name != "ffhq":
            return []
        from ..pretrained import list_artifacts

        return [s.name for s in list_artifacts("mapper") if s.kind == "mapper"]

    def mapper_source(self, name: Any):
        """The checkpoint path (mapper folder) or registry name of mapper ``name``, or 400."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ServiceError(400, "unknown_mapper", f"mapper {str(name)[:80]!r}: not a mapper name (see GET /v1/mappers)")
        path = self.mapper_dir / f"{name}.pt"
        if path.is_file():
            return path
        if name in self._registry_mappers():
            return name
        raise ServiceError(400, "unknown_mapper", f"mapper {name!r} is not available; available: "
                                                  f"{', '.join(self.mapper_names()) or 'none (train one with POST /v1/mappers/train)'}",
                           available=self.mapper_names())

    def mapper(self, name: str):
        from ..methods.mapper import LatentMapperEdit

        if not isinstance(name, str) or not _NAME.match(name):
            raise ServiceError(400, "unknown_mapper", f"mapper {str(name)[:80]!r}: not a mapper name (see GET /v1/models)")
        with self._cache_lock:
            if name in self._mappers:
                self._mappers.move_to_end(name)
                return self._mappers[name]
        source = self.mapper_source(name)
        g = self.generator
        with self._load_lock, user_errors(f"mapper {name!r}"):
            edit = LatentMapperEdit.from_pretrained(g, source)
        with self._cache_lock:
            self._mappers[name] = edit
            while len(self._mappers) > 8:
                self._mappers.popitem(last=False)
        return edit

    def edit_mapper(self, req, image_bytes: Optional[bytes] = None, base_url: str = "") -> dict:
        t_start = time.perf_counter()
        self.check_model(req.model)
        strength = self.check_abs(req.strength, "strength", "max_abs_strength")
        edit = self.mapper(req.mapper)
        with self.slot():
            w, desc, timings = self.source(req, image_bytes)
            t0 = time.perf_counter()
            with user_errors("mapper"):
                res = edit(w, strength=strength)
            timings["edit_ms"] = _ms(t0)
            params = {**desc, "mapper": req.mapper, "strength": strength}
            return self._response("mapper", res.source_images, res.images, res.w_plus, req, params, timings, base_url,
                                  t_start)

    # ------------------------------------------------------------------ optimisation (job)
    def prepare_optimize(self, req, image_bytes: Optional[bytes] = None) -> tuple[Callable[[Job], Any], dict, int]:
        """Validate now (4xx before a job exists); returns (job function, params, total steps)."""
        self.check_model(req.model)
        prompt = self.check_prompt(req.prompt)
        steps = self.check_steps(req.steps, "max_steps")
        if not self.has("clip"):
            raise ServiceError(400, "unsupported", f"the model set {self.name!r} has no CLIP model")
        if req.id_lambda > 0 and not self.has("identity"):
            raise ServiceError(400, "unsupported", f"id_lambda > 0 needs an identity network, which the model set "
                                                   f"{self.name!r} does not have; use id_lambda=0")
        with self.slot():
            w, desc, timings = self.source(req, image_bytes)
        params = {**desc, "prompt": prompt, "steps": steps, "l2_lambda": req.l2_lambda, "id_lambda": req.id_lambda,
                  "lr": req.lr}
        opt = self._part(lambda: self.models.optimizer(with_identity=req.id_lambda > 0), "optimizer (CLIP)")

        def run(job: Job, base_url: str = "") -> Optional[dict]:
            t_start = time.perf_counter()

            def cb(step, losses, frame):
                return job.update(step, losses={k: round(float(v), 6) for k, v in losses.items()})

            with user_errors("optimisation"):
                res = opt(prompt, w, steps=steps, l2_lambda=req.l2_lambda, id_lambda=req.id_lambda, lr=req.lr,
                          progress=False, callback=cb)
            if job.cancelled:
                return None
            t = dict(timings, optimize_ms=_ms(t_start))
            return self._response("optimize", res.source_images, res.images, res.w_plus, req,
                                  {**params, "steps_done": int(res.steps_done)}, t, base_url, t_start)

        return run, params, steps

    # ------------------------------------------------------------------ inversion
    def invert(self, req, image_bytes: Optional[bytes] = None, base_url: str = ""):
        """Encoder inversion → response dict; projection → (job function, params, total)."""
        self.check_model(req.model)
        if req.image is None and image_bytes is None:
            raise ServiceError(422, "bad_source", "invert needs an image: 'image' (base64) or a multipart file part 'image'")
        method = req.method
        if method == "auto":
            method = "encoder" if self.has("encoder") else "projection"
        if method in ("encoder", "encoder+projection") and not self.has("encoder"):
            raise ServiceError(400, "no_encoder", f"the model set {self.name!r} has no encoder: use method 'projection'")
        if method != "encoder":
            steps = self.check_steps(req.steps, "max_projection_steps")
        t_start = time.perf_counter()
        x = self.image_tensor(req.image, image_bytes, req.align)
        timings = {"decode_ms": _ms(t_start)}
        if method == "encoder":
            with self.slot():
                t0 = time.perf_counter()
                w = self.encode(x)
                recon = self.synth(w)
                timings["invert_ms"] = _ms(t0)
                params = {"source": "image", "method": "encoder", "align": req.align}
                return self._response("invert", x, recon, w, req, params, timings, base_url, t_start)
        params = {"source": "image", "method": method, "steps": steps, "lr": req.lr, "align": req.align,
                  "init": "encoder" if method == "encoder+projection" else "mean latent"}

        def run(job: Job, base_url: str = "") -> Optional[dict]:
            t0 = time.perf_counter()
            w, recon, metrics = self.project(x, method, steps, req.lr, lambda s, losses: job.update(s, losses=losses))
            if job.cancelled:
                return None
            t = dict(timings, invert_ms=_ms(t0))
            return self._response("invert", x, recon, w, req, params, t, base_url, t0, metrics=metrics)

        return run, params, steps

    def project(self, x: torch.Tensor, method: str, steps: int, lr: float,
                progress: Callable[[int, dict], bool]) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Inversion by projection (:func:`styleclip_lib.invert.invert`, noise maps kept constant so the
        latent alone reproduces the reconstruction); (W+, reconstruction, metrics)."""
        def cb(step, losses, *rest):
            return progress(step, {k: round(float(v), 6) for k, v in losses.items()})

        try:
            from ..invert import invert as library_invert
        except ImportError:
            library_invert = None
        if library_invert is not None:
            with user_errors("projection"):
                res = library_invert(x, self.models, method, steps=steps, callback=cb, identity_model=None,
                                     progress=False, lr=lr, optimize_noise=False)
            return res.w_plus, res.reconstruction, {k: round(v, 6) for k, v in res.metrics().items()}
        start = self.encode(x) if method == "encoder+projection" else None
        return (*self._project_fallback(x, steps, lr, start, cb), {})

    def _project_fallback(self, x: torch.Tensor, steps: int, lr: float, start: Optional[torch.Tensor],
                          cb: Callable) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel-MSE projection with the optimisation loop (for libraries without :mod:`styleclip_lib.invert`)."""
        from ..methods.optimization import optimize_latent

        g = self.generator
        target = x.to(self.models.device)
        if start is None:
            with torch.no_grad():
                avg = g.latent_avg.reshape(1, 1, -1).to(target)
                if not bool(avg.abs().sum() > 0):  # checkpoint without a mean latent
                    z = torch.randn(2048, g.w_dim, generator=torch.Generator().manual_seed(0)).to(target)
                    avg = g.mapping(z).mean(0).reshape(1, 1, -1)
            start = avg.expand(1, g.num_ws, g.w_dim).contiguous()

        def loss(images):
            return {"mse": ((images - target) ** 2).mean(dim=(1, 2, 3))}

        with user_errors("projection"):
            res = optimize_latent(g, start, loss, steps=steps, lr=lr, l2_lambda=0.0, progress=False, callback=cb)
        return res.w_plus, res.images

    # ------------------------------------------------------------------ photo pipeline
    def photo(self, req, image_bytes: Optional[bytes] = None, base_url: str = ""):
        """:func:`styleclip_lib.photo.edit_photo` behind the service: a response dict, or (job function,
        params, total) when the edit or the inversion is an optimisation."""
        return prepare_photo(self, req, image_bytes, base_url)

    # ------------------------------------------------------------------ mapper training (job)
    def prepare_train_mapper(self, req) -> tuple[Callable[[Job], Any], dict, int]:
        self.check_model(req.model)
        prompt = self.check_prompt(req.prompt)
        steps = self.check_steps(req.steps, "max_mapper_steps")
        if not self.has("clip"):
            raise ServiceError(400, "unsupported", f"the model set {self.name!r} has no CLIP model")
        if req.id_lambda > 0 and not self.has("identity"):
            raise ServiceError(400, "unsupported", f"id_lambda > 0 needs an identity network, which the model set "
                                                   f"{self.name!r} does not have; use id_lambda=0")
        name = req.name or (_safe_name(prompt)[:48] or "mapper")
        if name in self._registry_mappers():
            raise ServiceError(409, "name_taken", f"mapper name {name!r} is a pretrained mapper; choose another name")
        params = {"prompt": prompt, "name": name, "steps": steps, "batch_size": req.batch_size,
                  "learning_rate": req.learning_rate, "latent_l2_lambda": req.latent_l2_lambda,
                  "id_lambda": req.id_lambda, "seed": req.seed}
        g = self.generator
        clip = self._part(lambda: self.models.clip, "CLIP model")
        identity = self._part(lambda: self.models.identity, "identity network") if req.id_lambda > 0 else None

        def run(job: Job, base_url: str = "") -> Optional[dict]:
            from ..methods.mapper import MapperTrainer
            from ..models.mapper import mapper_checkpoint

            t0 = time.perf_counter()
            last: dict = {}

            def cb(step, logs):
                last.clear()
                last.update({k: round(float(v), 6) for k, v in logs.items() if isinstance(v, (int, float))})
                return not job.update(step, losses=dict(last))

            with user_errors("mapper training"):
                trainer = MapperTrainer(
                    g, clip, identity, description=prompt, num_samples=min(5000, max(64, steps * req.batch_size)),
                    num_val_samples=16, batch_size=req.batch_size, max_steps=steps, val_interval=steps,
                    save_interval=None, image_interval=None, board_interval=steps, val_batch_size=4,
                    val_max_samples=16, num_val_images=0, exp_dir=None, validate_at_start=False,
                    learning_rate=req.learning_rate, latent_l2_lambda=req.latent_l2_lambda, id_lambda=req.id_lambda,
                    clip_lambda=1.0, seed=req.seed, device=self.models.device)
                trainer.train(progress=False, callback=cb)
            if job.cancelled:
                return None
            self.mapper_dir.mkdir(parents=True, exist_ok=True)
            path = self.mapper_dir / f"{name}.pt"
            tmp = path.with_name(f".{name}.{secrets.token_hex(4)}.tmp")
            torch.save(mapper_checkpoint(trainer.mapper, opts={"description": prompt}), tmp)
            os.replace(tmp, path)
            with self._cache_lock:
                self._mappers.pop(name, None)
            return {"mapper": name, "steps_done": int(trainer.step), "losses": last,
                    "timings": {"train_ms": _ms(t0)}, "params": params}

        return run, params, steps


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "model"


# ---------------------------------------------------------------------------- photo pipeline
_MAX_PASTED_PIXELS = 4_000_000


def _json_safe(x: Any) -> Any:
    """Parameters of the library (tuples, numpy / torch scalars, paths) as JSON values."""
    import numpy as np

    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items() if not callable(v)}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, torch.Tensor) and x.numel() <= 64:
        return x.tolist()
    return str(x)


def _pil_png(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def prepare_photo(engine: Engine, req, image_bytes: Optional[bytes] = None, base_url: str = ""):
    """Validate a photo-pipeline request; returns a response dict (synchronous cases, computed now)
    or ``(job function, params, total steps)``."""
    s = engine.settings
    engine.check_model(req.model)
    prompt = engine.check_prompt(req.prompt)
    method = req.method
    kwargs: dict = {}
    extra: dict = {}
    if method == "global":
        extra["neutral"] = engine.check_prompt(req.neutral if req.neutral is not None else "a face", "neutral")
        kwargs = {"alpha": engine.check_abs(req.alpha, "alpha", "max_abs_alpha"), "beta": req.beta}
        engine.global_directions()
    elif method == "mapper":
        if req.mapper is None:
            raise ServiceError(422, "invalid_request", "mapper: required with method 'mapper' (see GET /v1/mappers)")
        extra["mapper"] = engine.mapper_source(req.mapper)
        kwargs = {"strength": engine.check_abs(req.strength, "strength", "max_abs_strength")}
    else:
        kwargs = {"steps": engine.check_steps(req.steps, "max_steps"), "l2_lambda": req.l2_lambda}
    inv = req.invert
    if inv == "auto":
        inv = "encoder" if engine.has("encoder") else "projection"
    if inv != "encoder":
        engine.check_steps(req.invert_steps, "max_projection_steps")
    if inv in ("encoder", "encoder+projection"):
        if not engine.has("encoder"):
            raise ServiceError(400, "no_encoder", f"the model set {engine.name!r} has no encoder: use invert 'projection'")
        engine._part(lambda: engine.models.encoder, "encoder")
    if req.image is None and image_bytes is None:
        raise ServiceError(422, "bad_source", "the photo pipeline needs an image: 'image' (base64) or a multipart file part 'image'")
    data = image_bytes if image_bytes is not None else decode_base64(req.image, s.max_upload_bytes)
    rgb = load_rgb(data, s.max_upload_bytes, s.max_image_pixels)
    engine._part(lambda: engine.models.generator, "generator")
    if method != "mapper":
        engine._part(lambda: engine.models.clip, "CLIP model")
    inv_steps = req.invert_steps if inv != "encoder" else 0
    total = inv_steps + (kwargs["steps"] if method == "optimize" else 0)
    params = {"prompt": prompt, "method": method, "invert": inv, **({"invert_steps": inv_steps} if inv_steps else {}),
              **{k: v for k, v in kwargs.items()}, "paste_back": req.paste_back}
    if method == "mapper":
        params["mapper"] = req.mapper

    def work(job: Optional[Job], base_url: str) -> Optional[dict]:
        from ..photo import edit_photo

        t_start = time.perf_counter()
        invert_options = {}
        mk = dict(kwargs)
        if job is not None:
            if inv != "encoder":
                invert_options["callback"] = lambda step, losses: job.update(step, stage="invert")
            if method == "optimize":
                mk["callback"] = lambda step, losses, frame=None: job.update(
                    inv_steps + step, stage="edit", losses={k: round(float(v), 6) for k, v in losses.items()})
        if inv_steps:
            invert_options["steps"] = inv_steps
        try:
            with user_errors("photo"):
                res = edit_photo(rgb, prompt, method, models=engine.models, paste_back=req.paste_back, invert=inv,
                                 face_index=req.face_index, landmarks=req.landmarks, invert_options=invert_options,
                                 max_pixels=None, max_bytes=None, progress=False, **extra, **mk)
        except ImportError as e:  # the landmark backend (dlib) is not installed
            raise ServiceError(501, "align_unavailable", f"face alignment needs a landmark backend: {e}; "
                               "pass 'landmarks' or pip install 'styleclip_lib[photo]'") from None
        if job is not None and job.cancelled:
            return None
        t0 = time.perf_counter()
        pasted = res.pasted
        if pasted is not None and pasted.width * pasted.height > _MAX_PASTED_PIXELS:
            from PIL import Image

            f = (_MAX_PASTED_PIXELS / (pasted.width * pasted.height)) ** 0.5
            pasted = pasted.resize((max(1, int(pasted.width * f)), max(1, int(pasted.height * f))), Image.LANCZOS)
        mode = engine.output_mode(req.output)
        item: dict = {}
        for name, img in (("source", res.aligned), ("reconstruction", res.reconstruction), ("edited", res.edited),
                          ("pasted", pasted)):
            if img is None:
                continue
            png = _pil_png(img)
            if mode in ("base64", "both"):
                item[name] = data_url(png)
            if mode in ("url", "both"):
                item[f"{name}_url"] = engine.store(png, base_url)
        timings = {f"{k}_ms": round(v * 1000.0, 2) for k, v in res.timings.items() if k != "total"}
        timings["encode_ms"] = _ms(t0)
        timings["total_ms"] = _ms(t_start)
        out = {"model": engine.name, "method": "photo", "images": [item],
               "params": {**params, **_json_safe(res.parameters)}, "timings": timings}
        opts = res.parameters.get("method_options", {})
        if "num_channels" in opts:
            out["num_channels"] = int(opts["num_channels"])
        if req.return_latent:
            w = res.w_plus_edited if res.w_plus_edited is not None else res.w_plus_source
            out["latent"] = w.detach().float().cpu().tolist()
        return out

    if method != "optimize" and inv == "encoder":
        with engine.slot():
            return work(None, base_url)
    return (lambda job, base_url="": work(job, base_url)), params, total

