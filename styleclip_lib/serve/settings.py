"""Service settings: limits, worker pool, CORS, storage; every field configurable by environment.

``Settings()`` holds the defaults; ``Settings.from_env()`` reads ``STYLECLIP_SERVE_<FIELD>``
(upper case, e.g. ``STYLECLIP_SERVE_MAX_STEPS=200``, ``STYLECLIP_SERVE_CORS_ORIGINS=https://a.example,https://b.example``)
on top of them.  No web framework is imported here.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional

__all__ = ["Settings", "ENV_PREFIX"]

ENV_PREFIX = "STYLECLIP_SERVE_"


@dataclass(frozen=True)
class Settings:
    """Limits and knobs of the web service (see the field comments; env: ``STYLECLIP_SERVE_<NAME>``)."""

    # ---- request limits (violations: 4xx JSON errors naming the limit)
    max_upload_bytes: int = 10 * 1024 * 1024      #: decoded image bytes per upload (413)
    max_image_pixels: int = 25_000_000            #: width × height of an uploaded image (413)
    max_prompt_length: int = 200                  #: characters of a prompt (422)
    max_steps: int = 500                          #: optimisation steps (422)
    max_projection_steps: int = 1000              #: inversion-by-projection steps (422)
    max_mapper_steps: int = 2000                  #: mapper-training steps (422)
    max_batch: int = 8                            #: latents per request (422)
    max_abs_alpha: float = 20.0                   #: |alpha| of global directions (422)
    max_abs_strength: float = 2.0                 #: |strength| of a mapper edit (422)
    # ---- compute
    max_workers: int = 1                          #: job threads (optimisation / projection / mapper training)
    max_queue: int = 8                            #: jobs waiting for a worker; beyond: 429 + Retry-After
    max_concurrent_requests: int = 2              #: synchronous edits computing at once
    request_wait_s: float = 10.0                  #: a synchronous edit waits this long for a slot, else 503
    retry_after_s: int = 5                        #: Retry-After of 429 / 503 answers
    job_ttl_s: float = 3600.0                     #: finished jobs are forgotten after this (GET → 404)
    max_jobs: int = 256                           #: finished jobs kept at most (oldest dropped first)
    device: Optional[str] = None                  #: torch device for 'toy' / 'ffhq' (default: auto)
    # ---- outputs
    default_output: str = "base64"                #: 'base64' | 'url' | 'both' when a request names none
    file_url_ttl_s: int = 3600                    #: lifetime of result URLs (signed / presigned)
    public_base_url: Optional[str] = None         #: absolute URL prefix for local-storage links (else the request's)
    mapper_dir: Optional[str] = None              #: folder of mapper checkpoints '<name>.pt' (trained ones go here)
    # ---- HTTP
    cors_origins: tuple = ()                      #: allowed cross-origin sites; empty = same-origin only
    cors_allow_credentials: bool = False          #: never together with '*'
    api_key: Optional[str] = field(default=None, repr=False)  #: if set, /v1/* needs 'X-API-Key' or 'Authorization: Bearer'
    docs: bool = True                             #: OpenAPI UI at /docs (and /openapi.json)

    def __post_init__(self):
        for name in ("max_upload_bytes", "max_image_pixels", "max_prompt_length", "max_steps", "max_projection_steps",
                     "max_mapper_steps", "max_batch", "max_workers", "max_concurrent_requests", "max_jobs",
                     "file_url_ttl_s"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Settings.{name}: expected an int >= 1, got {v!r}")
        if not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ValueError(f"Settings.max_queue: expected an int >= 0, got {self.max_queue!r}")
        for name in ("request_wait_s", "job_ttl_s", "max_abs_alpha", "max_abs_strength"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"Settings.{name}: expected a number >= 0, got {getattr(self, name)!r}")
        if self.default_output not in ("base64", "url", "both"):
            raise ValueError(f"Settings.default_output: expected 'base64', 'url' or 'both', got {self.default_output!r}")
        origins = self.cors_origins
        if isinstance(origins, str):
            origins = tuple(o.strip() for o in origins.split(",") if o.strip())
        object.__setattr__(self, "cors_origins", tuple(origins))
        if self.cors_allow_credentials and "*" in self.cors_origins:
            raise ValueError("Settings: cors_origins='*' together with cors_allow_credentials=True would let any site "
                             "make credentialed requests; list the allowed origins explicitly")

    # ------------------------------------------------------------------ env
    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None, **overrides: Any) -> "Settings":
        """Defaults, then ``STYLECLIP_SERVE_*`` variables, then ``overrides``."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f, raw)
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def limits(self) -> dict:
        """The request limits, as published by ``GET /v1/models``."""
        names = ("max_upload_bytes", "max_image_pixels", "max_prompt_length", "max_steps", "max_projection_steps",
                 "max_mapper_steps", "max_batch", "max_abs_alpha", "max_abs_strength")
        return {n: getattr(self, n) for n in names}


def _parse(f: dataclasses.Field, raw: str) -> Any:
    name = ENV_PREFIX + f.name.upper()
    default = f.default
    try:
        if isinstance(default, bool):
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(o.strip() for o in raw.split(",") if o.strip())
        return raw
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a value of type {type(default).__name__}") from None
