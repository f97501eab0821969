"""The web service through FastAPI's TestClient, with the small golden model set injected.

Every endpoint's happy path, the job lifecycle (progress, result, cancel, expiry, queue
limits), request limits (413 / 422 naming the limit), bad inputs (4xx JSON, never 500), CORS,
the API key, the web page and the "library never imports web code" rule.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

warnings.filterwarnings("ignore", message=".*httpx2.*")  # starlette's TestClient notice

from fastapi.testclient import TestClient  # noqa: E402

from styleclip_lib.serve import Settings, create_app  # noqa: E402
from styleclip_lib.storage import LocalStorage  # noqa: E402
from test_serve_support import b64, decode_png, png_of, small_models  # noqa: E402,F401

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]


def make_client(small_models, tmp_path, **settings):
    models, mapper_dir = small_models
    settings.setdefault("mapper_dir", mapper_dir)
    app = create_app(models, Settings(**settings), storage=LocalStorage(tmp_path / "files"))
    return TestClient(app)


@pytest.fixture()
def client(small_models, tmp_path):
    with make_client(small_models, tmp_path) as c:
        yield c


def wait_job(c, job_id, timeout=30.0, until=("succeeded", "failed", "cancelled")):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = c.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        s = r.json()
        if s["status"] in until:
            return s
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {s['status']} after {timeout} s")


def assert_error(r, status, code=None, limit=None):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["message"]
    if code:
        assert err["code"] == code, err
    if limit:
        assert err["limit"] == limit, err
        assert limit in err["message"], err
    return err


# ----------------------------------------------------------------------------- happy paths
def test_healthz_models_docs(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["model"] == "test"
    info = client.get("/v1/models").json()
    assert (info["resolution"], info["num_ws"], info["w_dim"]) == (32, 8, 64)
    assert info["methods"]["global"] and info["methods"]["invert"]["encoder"]
    assert "random_edit" in info["mappers"]
    assert info["limits"]["max_steps"] == 500
    assert client.get("/v1/mappers").json()["mappers"] == ["random_edit"]
    spec = client.get("/openapi.json").json()
    for path in ("/v1/edit/global", "/v1/edit/optimize", "/v1/edit/mapper", "/v1/invert", "/v1/jobs/{job_id}",
                 "/v1/models", "/healthz"):
        assert path in spec["paths"], path
    body = spec["paths"]["/v1/edit/global"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(body)
    assert client.get("/docs").status_code == 200


def test_global_edit_from_seed(client):
    r = client.post("/v1/edit/global", json={"seed": 3, "prompt": "a face with purple hair", "beta": 0.05})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["method"] == "global" and out["model"] == "test"
    assert isinstance(out["num_channels"], int) and out["num_channels"] > 0
    assert out["params"] == {"source": "seed", "seed": 3, "truncation": 0.7, "prompt": "a face with purple hair",
                             "neutral": "a face", "alpha": 4.1, "beta": 0.05}
    assert set(out["timings"]) >= {"edit_ms", "total_ms"}
    (img,) = out["images"]
    src, dst = decode_png(img["source"]), decode_png(img["edited"])
    assert src.shape == dst.shape == (32, 32, 3)
    assert (src != dst).any()
    assert "latent" not in out


def test_global_edit_latent_batch_returns_latents(client):
    import torch

    w = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(1)) * 0.5
    r = client.post("/v1/edit/global", json={"latent": w.tolist(), "prompt": "smile", "neutral": "face",
                                             "alpha": -2.0, "beta": 0.1, "return_latent": True})
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["images"]) == 2 and out["params"]["batch"] == 2
    # a single (num_ws, w_dim) latent gets the batch axis
    r = client.post("/v1/edit/global", json={"latent": w[0].tolist(), "prompt": "smile", "beta": 0.1})
    assert r.status_code == 200 and len(r.json()["images"]) == 1


def test_global_edit_from_uploaded_image_json_and_multipart(client):
    png = png_of((48, 36))
    r = client.post("/v1/edit/global", json={"image": b64(png, data_url=True), "prompt": "blue eyes", "beta": 0.05})
    assert r.status_code == 200, r.text
    assert r.json()["params"]["source"] == "image" and "invert_ms" in r.json()["timings"]
    assert decode_png(r.json()["images"][0]["source"]).shape == (32, 32, 3)
    # multipart: the file part + form fields, or a JSON 'params' field
    r = client.post("/v1/edit/global", files={"image": ("me.png", png, "image/png")},
                    data={"prompt": "blue eyes", "alpha": "3", "beta": "0.05"})
    assert r.status_code == 200, r.text
    assert r.json()["params"]["alpha"] == 3.0
    r = client.post("/v1/edit/global", files={"image": ("me.png", png, "image/png")},
                    data={"params": json.dumps({"prompt": "blue eyes", "beta": 0.05})})
    assert r.status_code == 200, r.text
    # align=True looks for a face (none in a flat colour): a clean 4xx either way
    r = client.post("/v1/edit/global", json={"image": b64(png), "prompt": "blue eyes", "align": True})
    assert r.status_code in (400, 501) and r.json()["error"]["code"] in ("align_failed", "align_unavailable"), r.text


def test_mapper_edit(client):
    r = client.post("/v1/edit/mapper", json={"seed": 1, "mapper": "random_edit", "strength": 0.1, "return_latent": True})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["method"] == "mapper" and out["params"]["strength"] == 0.1
    assert len(out["latent"]) == 1 and len(out["latent"][0]) == 8 and len(out["latent"][0][0]) == 64
    err = assert_error(client.post("/v1/edit/mapper", json={"seed": 1, "mapper": "nope"}), 400, "unknown_mapper")
    assert "random_edit" in err["message"]
    assert_error(client.post("/v1/edit/mapper", json={"seed": 1, "mapper": "../../etc/passwd"}), 400, "unknown_mapper")


def test_url_output_is_signed_and_expires(client):
    r = client.post("/v1/edit/global", json={"seed": 2, "prompt": "grey hair", "beta": 0.05, "output": "url"})
    assert r.status_code == 200, r.text
    img = r.json()["images"][0]
    assert "edited" not in img and img["edited_url"].startswith("http://testserver/v1/files/")
    got = client.get(img["edited_url"])
    assert got.status_code == 200 and got.headers["content-type"] == "image/png" and got.content[:4] == b"\x89PNG"
    url = img["source_url"]
    tampered = url[:-1] + ("0" if url[-1] != "0" else "1")
    assert_error(client.get(tampered), 403, "bad_signature")
    path, query = url.split("?")
    expired = path + "?" + "&".join(("expires=1" if q.startswith("expires=") else q) for q in query.split("&"))
    assert_error(client.get(expired), 403, "bad_signature")
    assert client.get("/v1/files/..%2F..%2Fetc%2Fpasswd?expires=9999999999&sig=00").status_code in (400, 403, 404)
    r = client.post("/v1/edit/global", json={"seed": 2, "prompt": "grey hair", "beta": 0.05, "output": "both"})
    assert set(r.json()["images"][0]) == {"source", "edited", "source_url", "edited_url"}


def test_samples_and_page(client):
    r = client.get("/v1/samples/5")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert client.get("/v1/samples/-1").status_code == 422
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    js = client.get("/static/app.js")
    assert js.status_code == 200
    for text in (page.text, js.text, client.get("/static/style.css").text):  # offline: nothing from elsewhere
        assert "http://" not in text and "https://" not in text and "//cdn" not in text


# ----------------------------------------------------------------------------- jobs
def test_optimize_job_lifecycle(client):
    r = client.post("/v1/edit/optimize", json={"seed": 0, "prompt": "purple hair", "steps": 12, "return_latent": True})
    assert r.status_code == 202, r.text
    acc = r.json()
    assert acc["status"] == "queued" and r.headers["location"] == acc["status_url"] == f"/v1/jobs/{acc['job_id']}"
    seen_steps = set()
    deadline = time.time() + 30
    while time.time() < deadline:
        s = client.get(acc["status_url"]).json()
        seen_steps.add(s["step"])
        if s["status"] == "succeeded":
            break
        assert s["status"] in ("queued", "running"), s
        time.sleep(0.02)
    assert s["status"] == "succeeded" and s["step"] == s["total"] == 12 and s["progress"] == 1.0
    assert "losses" in s["info"] and "clip" in s["info"]["losses"]
    res = s["result"]
    assert res["method"] == "optimize" and res["params"]["steps_done"] == 12
    assert decode_png(res["images"][0]["edited"]).shape == (32, 32, 3)
    assert len(res["latent"][0]) == 8
    # a finished job can be deleted (freed) and is then gone
    assert client.delete(acc["status_url"]).json()["deleted"] is True
    assert_error(client.get(acc["status_url"]), 404, "unknown_job")


def test_cancel_running_and_queued_jobs(small_models, tmp_path):
    with make_client(small_models, tmp_path, max_workers=1, max_queue=2) as c:
        first = c.post("/v1/edit/optimize", json={"seed": 0, "prompt": "purple hair", "steps": 500}).json()
        second = c.post("/v1/edit/optimize", json={"seed": 1, "prompt": "purple hair", "steps": 500}).json()
        wait_job(c, first["job_id"], until=("running",))
        # queued: cancelled at once
        r = c.delete(second["status_url"])
        assert r.status_code == 202 and r.json()["status"] == "cancelled"
        # running: the optimisation callback returns False at its next step
        r = c.delete(first["status_url"])
        assert r.status_code == 202 and r.json()["status"] in ("cancelling", "cancelled")
        s = wait_job(c, first["job_id"], timeout=10)
        assert s["status"] == "cancelled" and s["step"] < 500 and "result" not in s
        assert c.get("/healthz").json()["jobs"]["running"] == 0
        assert_error(c.delete("/v1/jobs/does-not-exist"), 404, "unknown_job")


def test_queue_full_is_429_with_retry_after(small_models, tmp_path):
    with make_client(small_models, tmp_path, max_workers=1, max_queue=1, retry_after_s=7) as c:
        body = {"seed": 0, "prompt": "purple hair", "steps": 500}
        ids = [c.post("/v1/edit/optimize", json=body).json()["job_id"] for _ in range(2)]
        r = c.post("/v1/edit/optimize", json=body)
        assert_error(r, 429, "queue_full")
        assert r.headers["retry-after"] == "7"
        for j in ids:
            c.delete(f"/v1/jobs/{j}")


def test_busy_synchronous_edits_are_503_with_retry_after(small_models, tmp_path):
    with make_client(small_models, tmp_path, max_concurrent_requests=1, request_wait_s=0.05, retry_after_s=3) as c:
        slots = c.app.state.engine._slots
        assert slots.acquire(timeout=5)  # another edit holds the only compute slot
        try:
            r = c.post("/v1/edit/global", json={"seed": 0, "prompt": "smile", "beta": 0.05})
            assert_error(r, 503, "busy")
            assert r.headers["retry-after"] == "3"
        finally:
            slots.release()
        assert c.post("/v1/edit/global", json={"seed": 0, "prompt": "smile", "beta": 0.05}).status_code == 200


def test_finished_jobs_expire_and_are_capped(small_models, tmp_path):
    """A client that never comes back (disconnected mid-job) leaks nothing: the job expires."""
    with make_client(small_models, tmp_path, job_ttl_s=0.5, max_jobs=2) as c:
        jobs = c.app.state.jobs
        ids = [c.post("/v1/edit/optimize", json={"seed": i, "prompt": "smile", "steps": 2}).json()["job_id"]
               for i in range(4)]
        deadline = time.time() + 20
        while jobs.stats()["running"] + jobs.stats()["queued"] and time.time() < deadline:
            time.sleep(0.05)
        assert jobs.stats()["stored"] <= 2  # only the newest finished jobs are kept
        time.sleep(0.6)
        assert jobs.stats()["stored"] == 0
        for j in ids:
            assert_error(c.get(f"/v1/jobs/{j}"), 404, "unknown_job")


def test_invert_encoder_and_projection(client):
    png = png_of((32, 32), (90, 160, 220))
    r = client.post("/v1/invert", json={"image": b64(png)})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["params"]["method"] == "encoder" and len(out["latent"][0]) == 8
    r = client.post("/v1/invert", json={"image": b64(png), "method": "projection", "steps": 5})
    assert r.status_code == 202, r.text
    s = wait_job(client, r.json()["job_id"])
    assert s["status"] == "succeeded", s
    assert s["result"]["params"]["init"] == "mean latent" and s["step"] == s["total"] == 5
    assert "perceptual" in s["info"]["losses"] or "mse" in s["info"]["losses"]
    r = client.post("/v1/invert", json={"image": b64(png), "method": "encoder+projection", "steps": 8})
    assert r.status_code == 202, r.text
    s = wait_job(client, r.json()["job_id"])
    assert s["status"] == "succeeded", s
    assert s["result"]["params"]["init"] == "encoder" and s["step"] == 8
    assert s["result"]["metrics"]["psnr"] > 0
    # the returned latent edits like any other
    r = client.post("/v1/edit/global", json={"latent": s["result"]["latent"], "prompt": "smile", "beta": 0.05})
    assert r.status_code == 200, r.text
    assert_error(client.post("/v1/invert", json={"method": "encoder"}), 422, "bad_source")


def test_train_mapper_job_then_use_it(client):
    r = client.post("/v1/mappers/train", json={"prompt": "purple hair", "name": "purple", "steps": 3})
    assert r.status_code == 202, r.text
    s = wait_job(client, r.json()["job_id"], timeout=60)
    assert s["status"] == "succeeded", s
    assert s["result"]["mapper"] == "purple" and s["result"]["steps_done"] == 3
    assert "purple" in client.get("/v1/mappers").json()["mappers"]
    r = client.post("/v1/edit/mapper", json={"seed": 4, "mapper": "purple"})
    assert r.status_code == 200, r.text
    assert_error(client.post("/v1/mappers/train", json={"prompt": "x", "name": "../evil"}), 422)


def _photo_with_face() -> tuple[bytes, list]:
    """A 120×100 JPEG-ish photo and 4 landmarks (eye centres, mouth corners) of a face in it."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    arr = (rng.random((100, 120, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue(), [[50.0, 40.0], [72.0, 41.0], [52.0, 70.0], [70.0, 70.0]]


def test_photo_pipeline_sync_and_jobs(client):
    photo, landmarks = _photo_with_face()
    r = client.post("/v1/edit/photo", json={"image": b64(photo), "prompt": "purple hair", "beta": 0.05,
                                            "landmarks": landmarks})
    assert r.status_code == 200, r.text
    out = r.json()
    item = out["images"][0]
    assert set(item) == {"source", "reconstruction", "edited", "pasted"}
    assert decode_png(item["edited"]).shape == (32, 32, 3)
    assert decode_png(item["pasted"]).shape == (100, 120, 3)  # the photo, with the face blended back
    assert out["params"]["alignment"] == "ffhq" and out["params"]["invert"] == "encoder"
    assert isinstance(out["num_channels"], int) and "align_ms" in out["timings"]
    # multipart, optimisation edit: a job whose steps are the optimisation's
    r = client.post("/v1/edit/photo", files={"image": ("p.png", photo, "image/png")},
                    data={"params": json.dumps({"prompt": "smile", "method": "optimize", "steps": 3,
                                                "landmarks": landmarks, "paste_back": False})})
    assert r.status_code == 202, r.text
    s = wait_job(client, r.json()["job_id"])
    assert s["status"] == "succeeded", s
    assert s["total"] == s["step"] == 3 and "pasted" not in s["result"]["images"][0]
    # projection inversion + mapper: the job counts the projection steps
    r = client.post("/v1/edit/photo", json={"image": b64(photo), "prompt": "x", "method": "mapper", "mapper": "random_edit",
                                            "invert": "projection", "invert_steps": 4, "landmarks": landmarks})
    assert r.status_code == 202, r.text
    s = wait_job(client, r.json()["job_id"])
    assert s["status"] == "succeeded", s
    assert s["total"] == s["step"] == 4 and s["result"]["params"]["invert"] == "projection"
    # refusals
    assert_error(client.post("/v1/edit/photo", json={"image": b64(photo), "prompt": "x", "method": "mapper"}), 422)
    assert_error(client.post("/v1/edit/photo", json={"image": b64(photo), "prompt": "x", "landmarks": [[1, 2]]}), 400)
    assert_error(client.post("/v1/edit/photo", json={"prompt": "x", "landmarks": landmarks}), 422, "bad_source")
    r = client.post("/v1/edit/photo", json={"image": b64(photo), "prompt": "x"})  # no face / no landmark backend
    assert r.status_code in (400, 501), r.text


# ----------------------------------------------------------------------------- limits
def test_oversized_upload_is_413_naming_the_limit(small_models, tmp_path):
    with make_client(small_models, tmp_path, max_upload_bytes=2000, max_image_pixels=64 * 64) as c:
        big = os.urandom(3000)
        assert_error(c.post("/v1/edit/global", json={"image": b64(big), "prompt": "x"}), 413, limit="max_upload_bytes")
        assert_error(c.post("/v1/edit/global", files={"image": ("a.png", big, "image/png")}, data={"prompt": "x"}),
                     413, limit="max_upload_bytes")
        huge = b"{" + b" " * 10_000_000 + b"}"
        assert_error(c.post("/v1/edit/global", content=huge, headers={"content-type": "application/json"}),
                     413, limit="max_upload_bytes")
        # small file, too many pixels: refused from the header, before decoding
        assert_error(c.post("/v1/edit/global", json={"image": b64(png_of((100, 100))), "prompt": "x"}),
                     413, limit="max_image_pixels")


def test_parameter_limits_are_422_naming_the_limit(small_models, tmp_path):
    with make_client(small_models, tmp_path, max_steps=50, max_prompt_length=40, max_batch=2) as c:
        assert_error(c.post("/v1/edit/optimize", json={"seed": 0, "prompt": "x", "steps": 51}), 422, limit="max_steps")
        assert_error(c.post("/v1/edit/global", json={"seed": 0, "prompt": "a" * 41}), 422, limit="max_prompt_length")
        assert_error(c.post("/v1/edit/global", json={"seed": 0, "prompt": "x", "neutral": "n" * 41}), 422,
                     limit="max_prompt_length")
        assert_error(c.post("/v1/edit/global", json={"latent": [[[0.0] * 64] * 8] * 3, "prompt": "x"}), 422,
                     limit="max_batch")
        assert_error(c.post("/v1/edit/global", json={"seed": 0, "prompt": "x", "alpha": 1e6}), 422,
                     limit="max_abs_alpha")
        assert_error(c.post("/v1/invert", json={"image": b64(png_of()), "method": "projection", "steps": 10 ** 6}),
                     422, limit="max_projection_steps")
        assert_error(c.post("/v1/mappers/train", json={"prompt": "x", "steps": 10 ** 6}), 422, limit="max_mapper_steps")
        assert_error(c.post("/v1/edit/optimize", json={"seed": 0, "prompt": "x", "steps": 0}), 422)
        assert_error(c.post("/v1/edit/global", json={"seed": 0, "prompt": "   "}), 422, "invalid_prompt")


# ----------------------------------------------------------------------------- bad inputs: 4xx, never 500
@pytest.mark.parametrize("body,status,code", [
    ({"image": "not base64!!", "prompt": "x"}, 400, "bad_base64"),
    ({"image": "data:image/png;base64,@@@@", "prompt": "x"}, 400, "bad_base64"),
    ({"image": b64(b"hello, this is text, not an image"), "prompt": "x"}, 400, "bad_image"),
    ({"image": b64(png_of())[:60], "prompt": "x"}, 400, "bad_image"),           # truncated PNG
    ({"image": 12, "prompt": "x"}, 422, "invalid_request"),
    ({"seed": 0, "prompt": "x", "model": "ffhq"}, 400, "unknown_model"),
    ({"latent": [[0.0] * 64] * 18, "prompt": "x"}, 400, "bad_latent"),           # (18, 512)-style wrong shape
    ({"latent": [[[0.0] * 64] * 8, [[0.0] * 63] * 8], "prompt": "x"}, 400, "bad_latent"),  # ragged
    ({"latent": [[["a"] * 64] * 8], "prompt": "x"}, 400, "bad_latent"),
    ({"latent": 5, "prompt": "x"}, 422, "invalid_request"),
    ({"prompt": "x"}, 422, "bad_source"),
    ({"seed": 1, "latent": [[0.0] * 64] * 8, "prompt": "x"}, 422, "bad_source"),
    ({"seed": 1, "prompt": "x", "unknown_field": 1}, 422, "invalid_request"),
    ({"seed": 1, "prompt": "x", "beta": 2}, 422, "invalid_request"),
    ({"seed": -1, "prompt": "x"}, 422, "invalid_request"),
    ({"seed": 1}, 422, "invalid_request"),
    ({"seed": 1, "prompt": "face", "neutral": "face"}, 400, "invalid_request"),  # target == neutral
])
def test_bad_requests_are_clean_4xx(client, body, status, code):
    assert_error(client.post("/v1/edit/global", json=body), status, code)


def test_nan_and_malformed_json_are_4xx(client):
    nan_latent = '{"prompt": "x", "latent": [' + ",".join(["[" + ",".join(["NaN"] * 64) + "]"] * 8) + "]}"
    assert_error(client.post("/v1/edit/global", content=nan_latent, headers={"content-type": "application/json"}),
                 400, "bad_latent")
    assert_error(client.post("/v1/edit/global", content='{"seed": 0, "prompt": "x", "alpha": NaN}',
                             headers={"content-type": "application/json"}), 422)
    assert_error(client.post("/v1/edit/global", content="{not json", headers={"content-type": "application/json"}),
                 400, "bad_json")
    assert_error(client.post("/v1/edit/global", content="[1, 2]", headers={"content-type": "application/json"}), 422)
    deep = '{"seed": 0, "prompt": "x", "latent": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert_error(client.post("/v1/edit/global", content=deep, headers={"content-type": "application/json"}), 400)
    deep3 = {"seed": None, "prompt": "x", "latent": [[[[0.0]]]]}
    assert_error(client.post("/v1/edit/global", json=deep3), 400, "bad_latent")
    assert_error(client.post("/v1/edit/global", content="x", headers={"content-type": "application/xml"}), 415)
    assert_error(client.post("/v1/edit/global", files={"other": ("a.bin", b"xx")}, data={"prompt": "x"}), 400,
                 "bad_form")
    assert_error(client.post("/v1/edit/mapper", files={"image": ("a.png", png_of(), "image/png")},
                             data={"mapper": "random_edit", "latent": "[[1,2"}), 400, "bad_json")
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(client.get("/v1/jobs/" + "x" * 65), 422)


def test_unsupported_options_are_4xx(client):
    # the small set has no identity network
    assert_error(client.post("/v1/edit/optimize", json={"seed": 0, "prompt": "x", "id_lambda": 0.1}), 400, "unsupported")


# ----------------------------------------------------------------------------- HTTP policy
def test_cors_default_is_same_origin_only(client):
    r = client.get("/v1/models", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    pre = client.options("/v1/edit/global", headers={"Origin": "https://evil.example",
                                                      "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers


def test_cors_configured_origins(small_models, tmp_path):
    with make_client(small_models, tmp_path, cors_origins="https://app.example") as c:
        ok = c.options("/v1/edit/global", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                                                   "Access-Control-Request-Headers": "content-type"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example"
        assert "access-control-allow-credentials" not in ok.headers
        r = c.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
    with pytest.raises(ValueError, match="credentials"):
        Settings(cors_origins=("*",), cors_allow_credentials=True)


def test_api_key(small_models, tmp_path):
    with make_client(small_models, tmp_path, api_key="s3cret-key-123") as c:
        assert_error(c.get("/v1/models"), 401, "unauthorized")
        assert_error(c.get("/v1/models", headers={"X-API-Key": "wrong"}), 401)
        assert c.get("/v1/models", headers={"X-API-Key": "s3cret-key-123"}).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret-key-123"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200
        assert "s3cret" not in repr(c.app.state.settings)


def test_settings_from_env():
    env = {"STYLECLIP_SERVE_MAX_STEPS": "42", "STYLECLIP_SERVE_CORS_ORIGINS": "https://a.example, https://b.example",
           "STYLECLIP_SERVE_REQUEST_WAIT_S": "1.5", "STYLECLIP_SERVE_DOCS": "false"}
    s = Settings.from_env(env, max_batch=3)
    assert (s.max_steps, s.request_wait_s, s.docs, s.max_batch) == (42, 1.5, False, 3)
    assert s.cors_origins == ("https://a.example", "https://b.example")
    with pytest.raises(ValueError, match="STYLECLIP_SERVE_MAX_STEPS"):
        Settings.from_env({"STYLECLIP_SERVE_MAX_STEPS": "lots"})
    with pytest.raises(ValueError, match="max_workers"):
        Settings(max_workers=0)


def test_cli_parser():
    from styleclip_lib.serve.cli import _is_loopback, build_parser

    a = build_parser().parse_args(["--port", "8123", "--model", "ffhq"])
    assert (a.host, a.port, a.model) == ("127.0.0.1", 8123, "ffhq")
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and not _is_loopback("0.0.0.0")


def test_library_never_imports_web_code():
    code = ("import sys, styleclip_lib, styleclip_lib.worlds, styleclip_lib.storage, styleclip_lib.photo_io, "
            "styleclip_lib.latents, styleclip_lib.serve; "
            "bad = [m for m in ('fastapi', 'starlette', 'uvicorn', 'pydantic', 'torchvision') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)
    offenders = []
    for p in (ROOT / "styleclip_lib").rglob("*.py"):
        if "serve" in p.relative_to(ROOT / "styleclip_lib").parts:
            continue
        text = p.read_text(encoding="utf-8")
        if any(f"import {m}" in text or f"from {m}" in text for m in ("fastapi", "starlette", "uvicorn")):
            offenders.append(str(p))
    assert not offenders


# ----------------------------------------------------------------------------- the shipped toy world
def _toy_weights_present() -> bool:
    w = ROOT / "styleclip_lib" / "toy" / "weights"
    return all((w / f).exists() for f in ("generator.pt", "clip.pt", "encoder.pt", "fs3.npy", "style_stats.pt"))


@pytest.mark.skipif(not _toy_weights_present(), reason="toy-world weights not trained yet (python -m styleclip_lib.toy.train)")
def test_toy_world_app(tmp_path):
    app = create_app("toy", Settings(mapper_dir=str(tmp_path / "mappers")), storage=LocalStorage(tmp_path / "files"))
    with TestClient(app) as c:
        info = c.get("/v1/models").json()
        assert info["model"] == "toy" and info["resolution"] == 64 and info["methods"]["global"]
        r = c.post("/v1/edit/global", json={"seed": 0, "prompt": "a face with purple hair", "neutral": "a face"})
        assert r.status_code == 200, r.text
        assert decode_png(r.json()["images"][0]["edited"]).shape == (64, 64, 3)
        face = r.json()["images"][0]["source"]
        r = c.post("/v1/edit/global", json={"image": face, "prompt": "a face with a smile"})
        assert r.status_code == 200, r.text
        r = c.post("/v1/edit/photo", json={"image": face, "prompt": "a face with a smile"})  # the toy frame
        assert r.status_code == 200, r.text
        assert r.json()["params"]["alignment"] == "toy-frame"
        r = c.post("/v1/edit/optimize", json={"seed": 1, "prompt": "a face with purple hair", "steps": 5})
        assert wait_job(c, r.json()["job_id"], timeout=60)["status"] == "succeeded"


def test_job_manager_failures_and_restart():
    from styleclip_lib.serve.jobs import JobManager, QueueFull

    m = JobManager(workers=1, max_queue=1, ttl_s=60)

    def wait(job):
        deadline = time.time() + 10
        while m.get(job.id).status in ("queued", "running") and time.time() < deadline:
            time.sleep(0.01)
        return m.get(job.id)

    def bad_input(job):
        raise ValueError("prompt: bad thing")

    def bug(job):
        return 1 / 0

    j = wait(m.submit("x", bad_input))
    assert j.status == "failed" and j.error == {"code": "invalid_request", "message": "prompt: bad thing"}
    j = wait(m.submit("x", bug))
    assert j.status == "failed" and j.error["code"] == "internal_error" and "division" not in j.error["message"]
    j = wait(m.submit("x", lambda job: [job.update(s) for s in range(1, 4)] and {"ok": True}, total=3))
    assert j.status == "succeeded" and j.to_dict()["progress"] == 1.0 and j.result == {"ok": True}
    m.shutdown()
    with pytest.raises(QueueFull):
        m.submit("x", lambda job: None)
    m.start()
    assert wait(m.submit("x", lambda job: 5)).result == 5
    m.shutdown()
