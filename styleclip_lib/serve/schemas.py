"""Request / response models of the HTTP API (pydantic, as FastAPI uses it).

Requests are flat JSON objects (no nested models, so the same fields also work as multipart form
fields).  Where the face comes from is one of:

* ``image``: base64 of a JPEG/PNG/WebP/... file (a ``data:image/...;base64,`` prefix is fine);
  in multipart requests the file part ``image`` instead;
* ``latent``: W+ as nested lists, ``(N, num_ws, w_dim)`` or a single ``(num_ws, w_dim)``;
* ``seed``: a random face of the model (``z ~ N(0, I)`` seeded, truncation ``truncation``).

Limits that depend on the server's settings (steps, prompt length, batch, upload size) are
checked after parsing and answered with a 4xx naming the limit (see ``GET /v1/models``).
"""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["GlobalEditRequest", "OptimizeRequest", "MapperEditRequest", "InvertRequest", "MapperTrainRequest",
           "PhotoEditRequest",
           "EditResponse", "JobAccepted", "JobStatus", "ErrorResponse", "REQUEST_MODELS"]

Output = Literal["base64", "url", "both"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, str_max_length=50_000_000)

    model: Optional[str] = Field(None, description="model set the request is meant for; must be the served one if given")
    output: Optional[Output] = Field(None, description="'base64' (inline PNG data URLs), 'url' (storage links) or 'both'; "
                                                       "default: the server's setting")
    return_latent: bool = Field(False, description="also return the resulting W+ latents as nested lists")


class _SourceRequest(_Request):
    image: Optional[str] = Field(None, description="base64 image file (data-URL prefix tolerated); inverted with the "
                                                   "model's encoder")
    latent: Optional[list] = Field(None, description="W+ latents, nested lists (N, num_ws, w_dim) or (num_ws, w_dim)")
    seed: Optional[int] = Field(None, ge=0, le=2 ** 31 - 1, description="random face of the generator")
    truncation: float = Field(0.7, ge=0.0, le=1.0, description="truncation psi for 'seed' faces")
    align: bool = Field(False, description="FFHQ-align the uploaded photo first (needs the face-landmark extra)")


class GlobalEditRequest(_SourceRequest):
    """StyleCLIP global directions: edit toward ``prompt`` relative to ``neutral`` (synchronous)."""

    prompt: str = Field(..., description="target text, e.g. 'a face with purple hair'")
    neutral: Optional[str] = Field(None, description="neutral text (default 'a face')")
    alpha: float = Field(4.1, description="manipulation strength (negative reverses the edit)")
    beta: float = Field(0.15, ge=0.0, le=1.0, description="disentanglement threshold: channels with |relevance| < beta stay")


class OptimizeRequest(_SourceRequest):
    """StyleCLIP latent optimisation (a job)."""

    prompt: str = Field(..., description="target text")
    steps: int = Field(100, ge=1, description="Adam steps (at most the server's max_steps)")
    l2_lambda: float = Field(0.008, ge=0.0, description="weight of the L2 distance to the start latent")
    id_lambda: float = Field(0.0, ge=0.0, description="identity-loss weight (needs the model set's identity network)")
    lr: float = Field(0.1, gt=0.0, le=10.0, description="peak learning rate")


class MapperEditRequest(_SourceRequest):
    """Apply a trained latent mapper (synchronous)."""

    mapper: str = Field(..., description="mapper name, see GET /v1/models")
    strength: float = Field(0.1, description="w + strength * M(w); 0.1 is the trained edit")


class InvertRequest(_Request):
    """Find the W+ latent of a photo: 'encoder' (synchronous) or 'projection' (a job)."""

    image: Optional[str] = Field(None, description="base64 image file (or the multipart file part 'image')")
    align: bool = Field(False, description="FFHQ-align the photo first")
    method: Literal["auto", "encoder", "projection", "encoder+projection"] = Field(
        "auto", description="'auto': the encoder when the model set has one, else projection; "
                            "'encoder+projection' refines the encoder's code")
    steps: int = Field(200, ge=1, description="projection steps (at most max_projection_steps)")
    lr: float = Field(0.1, gt=0.0, le=10.0, description="projection learning rate")
    return_latent: bool = Field(True, description="return the W+ latent (default true)")


class MapperTrainRequest(_Request):
    """Train a latent mapper for ``prompt`` (a job); the result is usable as ``mapper=name``."""

    prompt: str = Field(..., description="the edit the mapper learns, e.g. 'purple hair'")
    name: Optional[str] = Field(None, pattern=NAME_PATTERN, description="mapper name (default: from the prompt)")
    steps: int = Field(200, ge=1, description="training steps (at most max_mapper_steps)")
    batch_size: int = Field(2, ge=1, le=16)
    learning_rate: float = Field(0.5, gt=0.0, le=10.0)
    latent_l2_lambda: float = Field(0.8, ge=0.0)
    id_lambda: float = Field(0.0, ge=0.0, description="identity-loss weight (needs the identity network)")
    seed: int = Field(0, ge=0, le=2 ** 31 - 1)


class PhotoEditRequest(_Request):
    """The whole photo pipeline (:func:`styleclip_lib.photo.edit_photo`): align → invert → edit → paste back.

    Synchronous for ``global`` / ``mapper`` edits with the encoder; a job when the edit is
    ``optimize`` or the inversion is a projection."""

    image: Optional[str] = Field(None, description="base64 photo (or the multipart file part 'image')")
    prompt: str = Field(..., description="target text")
    method: Literal["global", "optimize", "mapper"] = Field("global")
    neutral: Optional[str] = Field(None, description="global: neutral text (default 'a face')")
    alpha: float = Field(4.1, description="global: strength")
    beta: float = Field(0.15, ge=0.0, le=1.0, description="global: disentanglement threshold")
    strength: float = Field(0.1, description="mapper: w + strength * M(w)")
    mapper: Optional[str] = Field(None, description="mapper: its name (GET /v1/mappers)")
    steps: int = Field(100, ge=1, description="optimize: steps (at most max_steps)")
    l2_lambda: float = Field(0.008, ge=0.0, description="optimize: L2 weight")
    invert: Literal["auto", "encoder", "projection", "encoder+projection"] = Field(
        "auto", description="inversion: 'auto' = the encoder when there is one, else projection")
    invert_steps: int = Field(100, ge=1, description="projection steps (at most max_projection_steps)")
    landmarks: Optional[list] = Field(None, description="the face's landmarks in photo pixels ((K, 2): 4 eye/mouth "
                                                         "points, 5 or 68); skips landmark detection")
    face_index: Optional[int] = Field(None, ge=0, description="which face when several (default: the largest)")
    paste_back: bool = Field(True, description="also return the photo with the edited face blended back")


REQUEST_MODELS = {"global": GlobalEditRequest, "optimize": OptimizeRequest, "mapper": MapperEditRequest,
                  "invert": InvertRequest, "train_mapper": MapperTrainRequest, "photo": PhotoEditRequest}


# ----------------------------------------------------------------------------- responses (documentation)
class ImagePair(BaseModel):
    source: Optional[str] = Field(None, description="data:image/png;base64,... of the source face")
    edited: Optional[str] = Field(None, description="data:image/png;base64,... of the result")
    source_url: Optional[str] = None
    edited_url: Optional[str] = None


class EditResponse(BaseModel):
    model: str
    method: str
    images: list[ImagePair]
    latent: Optional[list] = None
    num_channels: Optional[int] = Field(None, description="global directions: StyleSpace channels changed")
    params: dict[str, Any]
    timings: dict[str, float] = Field(..., description="milliseconds per stage")


class JobAccepted(BaseModel):
    job_id: str
    status: str
    status_url: str
    kind: str


class JobStatus(BaseModel):
    id: str
    kind: str
    status: Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
    step: int
    total: int
    progress: float
    params: dict[str, Any]
    info: dict[str, Any]
    result: Optional[dict[str, Any]] = None
    error: Optional[dict[str, Any]] = None
    created_at: float
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    expires_at: Optional[float] = None


class _ErrorBody(BaseModel):
    code: str
    message: str
    limit: Optional[str] = None


class ErrorResponse(BaseModel):
    error: _ErrorBody
