"""The StyleCLIP web service (FastAPI).

::

    from styleclip_lib.serve import create_app
    app = create_app("toy")                      # or a ModelSet, or 'ffhq'
    # uvicorn styleclip_lib.serve.app:app  /  python -m styleclip_lib serve --model toy

Endpoints (JSON in, JSON out; images as base64 data URLs and/or storage URLs):

=====================================  =====================================================================
``GET  /``                             the web page (upload or sample face, prompt, sliders, before/after)
``GET  /healthz``                      liveness + job counters (no model loading, no auth)
``GET  /v1/models``                    the served model set, its methods, mappers and limits
``GET  /v1/samples/{seed}``            a PNG sample face of the generator
``POST /v1/edit/global``               global directions, synchronous (200)
``POST /v1/edit/mapper``               a trained latent mapper, synchronous (200)
``POST /v1/edit/optimize``             latent optimisation: a job (202 + ``job_id``)
``POST /v1/edit/photo``                a photo: align → invert → edit → paste back (200, or a job: 202)
``POST /v1/invert``                    image → W+: encoder (200) or projection (a job, 202)
``POST /v1/mappers/train``             train a latent mapper: a job (202)
``GET  /v1/mappers``                   mapper names usable with ``/v1/edit/mapper``
``GET  /v1/jobs/{id}``                 job progress (``step``/``total``), then ``result`` or ``error``
``DELETE /v1/jobs/{id}``               cancel a job (or forget a finished one)
``GET  /v1/files/{key}?expires&sig``   results of the local storage backend (HMAC-signed, expiring)
``GET  /docs``, ``/openapi.json``      OpenAPI documentation
=====================================  =====================================================================

POST bodies are JSON objects (see :mod:`.schemas`) or ``multipart/form-data`` with the image as
the file part ``image`` and the other fields as form fields (``latent`` as JSON text).
Errors are ``{"error": {"code", "message", "limit"?}}`` with a 4xx status (413 for oversized
uploads, 422 for limits and invalid parameters, 429/503 + ``Retry-After`` when busy).
"""
from __future__ import annotations

import json
import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Optional, Union

from fastapi import APIRouter, Depends, FastAPI, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from .. import __version__
from .engine import Engine
from .errors import LimitError, ServiceError, error_document
from .jobs import JobManager, QueueFull
from .schemas import (ErrorResponse, EditResponse, GlobalEditRequest, InvertRequest, JobAccepted, JobStatus,
                      MapperEditRequest, MapperTrainRequest, OptimizeRequest, PhotoEditRequest)
from .settings import Settings

__all__ = ["create_app"]

log = logging.getLogger("styleclip_lib.serve")
STATIC = Path(__file__).resolve().parent / "static"
#: the page's Content-Security-Policy: everything from this origin, images also inline (data:/blob:)
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob: https: http:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

_ERRORS = {400: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
           429: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}


def _body_schema(model) -> dict:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    form = {k: v for k, v in schema.items() if k != "required"}
    form["properties"] = {**schema["properties"], "image": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": schema},
        "multipart/form-data": {"schema": form},
    }}}


def _load_models(models: Any, settings: Settings):
    from ..worlds import ModelSet, load_models

    if models is None:
        models = "toy"
    if isinstance(models, str):
        return load_models(models, settings.device)
    if isinstance(models, ModelSet) or hasattr(models, "generator"):
        return models
    raise TypeError(f"create_app: models must be None, 'toy', 'ffhq' or a ModelSet, got {type(models).__name__}")


def create_app(models: Union[None, str, Any] = None, settings: Optional[Settings] = None, storage: Any = "env") -> FastAPI:
    """The FastAPI application serving ``models`` (``None`` = the toy world).

    ``settings``: :class:`Settings` (default: ``Settings.from_env()``).  ``storage``: a
    :class:`styleclip_lib.storage.Storage`, ``None`` (no URL outputs) or ``'env'`` (default:
    :func:`styleclip_lib.storage.storage_from_env`).  Model weights load on first use.
    """
    settings = Settings.from_env() if settings is None else settings
    model_set = _load_models(models, settings)
    if isinstance(storage, str) and storage == "env":
        from ..storage import storage_from_env

        storage = storage_from_env()
    engine = Engine(model_set, settings, storage)
    jobs = JobManager(settings.max_workers, settings.max_queue, settings.job_ttl_s, settings.max_jobs,
                      error_mapper=_job_error)
    stop = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        jobs.start()
        stop.clear()
        janitor = threading.Thread(target=_janitor, args=(engine, jobs, stop), name="styleclip-janitor", daemon=True)
        janitor.start()
        try:
            yield
        finally:
            stop.set()
            jobs.shutdown(cancel=True, timeout=5.0)

    app = FastAPI(
        title="StyleCLIP service", version=__version__, lifespan=lifespan,
        description="Text-driven face editing with StyleGAN2 + CLIP: global directions, latent optimisation, "
                    "latent mappers, inversion. Errors: {'error': {'code', 'message', 'limit'?}}.",
        docs_url="/docs" if settings.docs else None, redoc_url=None,
        openapi_url="/openapi.json" if settings.docs else None,
    )
    app.state.engine, app.state.jobs, app.state.settings, app.state.storage = engine, jobs, settings, storage

    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_credentials=settings.cors_allow_credentials,
                           allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                           allow_headers=["Content-Type", "Authorization", "X-API-Key"],
                           expose_headers=["Location", "Retry-After"])

    _install_error_handlers(app)
    body_limit = settings.max_upload_bytes * 4 // 3 + 4 * 1024 * 1024  # base64 + latents + the other fields

    # ------------------------------------------------------------------ helpers
    def check_key(request: Request) -> None:
        if settings.api_key is None:
            return
        import hmac

        got = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if not got and auth.lower().startswith("bearer "):
            got = auth[7:].strip()
        if not hmac.compare_digest(got.encode(), settings.api_key.encode()):
            raise ServiceError(401, "unauthorized", "missing or wrong API key (send 'X-API-Key' or 'Authorization: Bearer')",
                               headers={"WWW-Authenticate": "Bearer"})

    async def parse(request: Request, model) -> tuple[Any, Optional[bytes]]:
        """The request model and, for multipart uploads, the image file's bytes."""
        cl = request.headers.get("content-length")
        if cl is not None and cl.isdigit() and int(cl) > body_limit:
            raise LimitError("max_upload_bytes", f"request body of {int(cl)} bytes is over the limit of {body_limit} bytes "
                             f"(max_upload_bytes={settings.max_upload_bytes} of image data)", value=int(cl),
                             max=settings.max_upload_bytes, status=413)
        chunks, n = [], 0
        try:
            async for chunk in request.stream():
                n += len(chunk)
                if n > body_limit:
                    raise LimitError("max_upload_bytes", f"request body is over the limit of {body_limit} bytes "
                                     f"(max_upload_bytes={settings.max_upload_bytes} of image data)",
                                     max=settings.max_upload_bytes, status=413)
                chunks.append(chunk)
        except ClientDisconnect:  # the client hung up before sending everything: nothing to do
            raise ServiceError(400, "client_disconnected", "the client disconnected before the request was complete") from None
        body = b"".join(chunks)
        request._body = body  # starlette re-reads the cached body for form parsing
        ctype = (request.headers.get("content-type") or "application/json").split(";")[0].strip().lower()
        image_bytes = None
        if ctype == "multipart/form-data" or ctype == "application/x-www-form-urlencoded":
            try:
                form = await request.form(max_files=1, max_fields=64, max_part_size=body_limit)
            except Exception as e:  # malformed multipart
                raise ServiceError(400, "bad_form", f"could not parse the form data: {e}") from None
            data: dict = {}
            try:
                for key, value in form.multi_items():
                    if hasattr(value, "read"):  # UploadFile
                        if key != "image":
                            raise ServiceError(400, "bad_form", f"unexpected file part {key!r}; send the image as 'image'")
                        image_bytes = await value.read(settings.max_upload_bytes + 1)
                        if len(image_bytes) > settings.max_upload_bytes:
                            raise LimitError("max_upload_bytes", f"image: over the limit of max_upload_bytes="
                                             f"{settings.max_upload_bytes}", max=settings.max_upload_bytes, status=413)
                    elif key == "params":
                        extra = _json(value, "params")
                        if not isinstance(extra, dict):
                            raise ServiceError(400, "bad_form", "params: expected a JSON object")
                        data.update(extra)
                    elif key == "latent":
                        data["latent"] = _json(value, "latent")
                    elif value != "":
                        data[key] = value
            finally:
                await form.close()
        elif ctype in ("application/json", "text/plain", ""):
            data = _json(body, "body") if body else {}
            if not isinstance(data, dict):
                raise ServiceError(422, "invalid_request", "the body must be a JSON object")
        else:
            raise ServiceError(415, "unsupported_media_type", f"content type {ctype!r}: send application/json or "
                                                               "multipart/form-data")
        if image_bytes is not None and data.get("image") is not None:
            raise ServiceError(422, "bad_source", "give the image once: either the file part or the 'image' field")
        req = model.model_validate(data)  # ValidationError → 422 (handler)
        return req, image_bytes

    def submit(kind: str, run, params: dict, total: int, request: Request) -> JSONResponse:
        base_url = str(request.base_url)
        try:
            job = jobs.submit(kind, lambda job: run(job, base_url), total=total, params=params)
        except QueueFull as e:
            raise ServiceError(429, "queue_full", f"too many jobs ({e}); retry later",
                               headers={"Retry-After": str(settings.retry_after_s)}) from None
        url = f"/v1/jobs/{job.id}"
        return JSONResponse({"job_id": job.id, "status": job.status, "status_url": url, "kind": kind},
                            status_code=202, headers={"Location": url})

    # ------------------------------------------------------------------ routes
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_key)], responses={401: {"model": ErrorResponse}})

    @v1.get("/models", summary="The served model set, methods, mappers and limits")
    def models_info() -> dict:
        return engine.info()

    @v1.get("/mappers", summary="Names usable as 'mapper' in /v1/edit/mapper")
    def mappers() -> dict:
        return {"model": engine.name, "mappers": engine.mapper_names()}

    @v1.post("/edit/global", summary="Global directions edit (synchronous)", openapi_extra=_body_schema(GlobalEditRequest),
             responses={200: {"model": EditResponse}, **_ERRORS})
    async def edit_global(request: Request):
        req, image = await parse(request, GlobalEditRequest)
        return await run_in_threadpool(engine.edit_global, req, image, str(request.base_url))

    @v1.post("/edit/mapper", summary="Latent mapper edit (synchronous)", openapi_extra=_body_schema(MapperEditRequest),
             responses={200: {"model": EditResponse}, **_ERRORS})
    async def edit_mapper(request: Request):
        req, image = await parse(request, MapperEditRequest)
        return await run_in_threadpool(engine.edit_mapper, req, image, str(request.base_url))

    @v1.post("/edit/optimize", summary="Latent optimisation (a job)", status_code=202,
             openapi_extra=_body_schema(OptimizeRequest), responses={202: {"model": JobAccepted}, **_ERRORS})
    async def edit_optimize(request: Request):
        req, image = await parse(request, OptimizeRequest)
        run, params, total = await run_in_threadpool(engine.prepare_optimize, req, image)
        return submit("optimize", run, params, total, request)

    @v1.post("/invert", summary="Image → W+ latent: encoder (200) or projection (a job, 202)",
             openapi_extra=_body_schema(InvertRequest),
             responses={200: {"model": EditResponse}, 202: {"model": JobAccepted}, **_ERRORS})
    async def invert(request: Request):
        req, image = await parse(request, InvertRequest)
        out = await run_in_threadpool(engine.invert, req, image, str(request.base_url))
        if isinstance(out, dict):
            return out
        run, params, total = out
        return submit("invert", run, params, total, request)

    @v1.post("/edit/photo", summary="Photo pipeline: align → invert → edit → paste back (200, or a job: 202)",
             openapi_extra=_body_schema(PhotoEditRequest),
             responses={200: {"model": EditResponse}, 202: {"model": JobAccepted}, **_ERRORS})
    async def edit_photo(request: Request):
        req, image = await parse(request, PhotoEditRequest)
        out = await run_in_threadpool(engine.photo, req, image, str(request.base_url))
        if isinstance(out, dict):
            return out
        run, params, total = out
        return submit("photo", run, params, total, request)

    @v1.post("/mappers/train", summary="Train a latent mapper (a job)", status_code=202,
             openapi_extra=_body_schema(MapperTrainRequest), responses={202: {"model": JobAccepted}, **_ERRORS})
    async def train_mapper(request: Request):
        req, _ = await parse(request, MapperTrainRequest)
        run, params, total = await run_in_threadpool(engine.prepare_train_mapper, req)
        return submit("train_mapper", run, params, total, request)

    @v1.get("/jobs/{job_id}", summary="Job progress and result", responses={200: {"model": JobStatus}, 404: {"model": ErrorResponse}})
    def job_status(job_id: str = PathParam(..., max_length=64)):
        job = jobs.get(job_id)
        if job is None:
            raise ServiceError(404, "unknown_job", f"job {job_id[:64]!r} does not exist or has expired")
        return job.to_dict()

    @v1.delete("/jobs/{job_id}", summary="Cancel a job (or forget a finished one)",
               responses={200: {"model": JobStatus}, 202: {"model": JobStatus}, 404: {"model": ErrorResponse}})
    def job_cancel(job_id: str = PathParam(..., max_length=64)):
        job = jobs.get(job_id)
        if job is None:
            raise ServiceError(404, "unknown_job", f"job {job_id[:64]!r} does not exist or has expired")
        if job.status in ("succeeded", "failed", "cancelled"):
            jobs.delete(job_id)
            return JSONResponse({**job.to_dict(), "deleted": True}, status_code=200)
        job = jobs.cancel(job_id)
        return JSONResponse(job.to_dict(), status_code=202)

    app.include_router(v1)

    # public (no API key): <img src> cannot send headers; cached and bounded by the compute slots
    @app.get("/v1/samples/{seed}", summary="A sample face of the generator (PNG)",
             responses={200: {"content": {"image/png": {}}}}, response_class=Response)
    def sample(seed: int = PathParam(..., ge=0, le=2 ** 31 - 1), truncation: float = Query(0.7, ge=0.0, le=1.0)):
        png = engine.sample_png(seed, truncation)
        return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/v1/files/{key:path}", summary="A stored result (local storage; signed, expiring URL)",
             response_class=Response, responses={403: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})
    def get_file(key: str, expires: str = Query(..., max_length=20), sig: str = Query(..., max_length=128)):
        from ..storage import InvalidKeyError, LocalStorage

        if not isinstance(storage, LocalStorage):
            raise ServiceError(404, "not_found", "this server's storage hands out its own URLs")
        try:
            path = storage.path(key)
        except InvalidKeyError:
            raise ServiceError(400, "bad_key", "not a valid file key") from None
        if not storage.verify(key, expires, sig):
            raise ServiceError(403, "bad_signature", "the link is invalid or has expired")
        if not path.is_file():
            raise ServiceError(404, "not_found", "no such file (it may have been cleaned up)")
        media = "image/png" if path.suffix == ".png" else "application/octet-stream"
        return FileResponse(path, media_type=media, headers={"Cache-Control": "private, max-age=300",
                                                            "X-Content-Type-Options": "nosniff"})

    @app.get("/healthz", summary="Liveness", tags=["ops"])
    def healthz() -> dict:
        return {"status": "ok", "model": engine.name, "version": __version__, "loaded": engine.loaded(),
                "jobs": jobs.stats()}

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", media_type="text/html",
                            headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff",
                                     "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


# ---------------------------------------------------------------------------- helpers
def _json(raw: Any, what: str) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
        raise ServiceError(400, "bad_json", f"{what}: not valid JSON ({e})") from None
    except RecursionError:
        raise ServiceError(400, "bad_json", f"{what}: JSON nested too deeply") from None


def _job_error(e: BaseException) -> dict:
    if isinstance(e, ServiceError):
        return {"code": e.code, "message": e.message, **e.extra}
    if isinstance(e, ValueError):
        return {"code": "invalid_request", "message": str(e)}
    return {"code": "internal_error", "message": f"the job failed ({type(e).__name__}); see the server log"}


def _janitor(engine: Engine, jobs: JobManager, stop: threading.Event, every_s: float = 30.0) -> None:
    """Expire finished jobs and delete local result files older than their URLs' lifetime."""
    from ..storage import LocalStorage

    while not stop.wait(every_s):
        try:
            jobs.sweep()
            if isinstance(engine.storage, LocalStorage):
                engine.storage.cleanup(engine.settings.file_url_ttl_s + 60)
        except Exception:  # noqa: BLE001 - housekeeping must never die
            log.exception("janitor")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError):
        return JSONResponse(exc.document(), status_code=exc.status, headers=exc.headers)

    def _validation(errors) -> JSONResponse:
        clean = []
        for e in errors:
            item = {"loc": [str(x) for x in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
            clean.append(item)
        fields = ", ".join(".".join(i["loc"]) or "body" for i in clean[:5])
        first = f"{fields}: {clean[0]['msg']}" if clean else "invalid request"
        return JSONResponse(error_document("invalid_request", first, errors=clean), status_code=422)

    @app.exception_handler(ValidationError)
    async def pydantic_error(request: Request, exc: ValidationError):
        return _validation(exc.errors(include_url=False, include_input=False))

    @app.exception_handler(RequestValidationError)
    async def request_validation(request: Request, exc: RequestValidationError):
        return _validation(exc.errors())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        return JSONResponse(error_document(codes.get(exc.status_code, "http_error"), str(exc.detail)),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(error_document("internal_error", "internal server error (see the server log)"),
                            status_code=500)
