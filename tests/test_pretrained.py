"""Tests of the pretrained-artifact registry and downloader.

Everything runs against a local HTTP server on 127.0.0.1 (random port, one
thread per request, shut down by the fixture); a guard makes any attempt to
open a connection elsewhere fail the test, so nothing touches the network.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import re
import socket
import sys
import threading
import time
import types
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from styleclip_lib import pretrained as P

DATA = random.Random(1234).randbytes(300_000)
DATA_SHA = hashlib.sha256(DATA).hexdigest()
OTHER = random.Random(99).randbytes(300_000)
HALF = len(DATA) // 2

QUOTA_PAGE = b"""<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head>
<body><p>Sorry, you can't view or download this file at this time.</p>
<p>Too many users have viewed or downloaded this file recently. Please try accessing the file again
later.</p></body></html>"""

PERMISSION_PAGE = b"""<!DOCTYPE html><html><head><title>Google Drive</title></head>
<body>You need access. Request access, or switch to an account with access.
<a href="https://accounts.google.com/ServiceLogin">Sign in</a></body></html>"""

CONFIRM_PAGE = b"""<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
<p>Google Drive can't scan this file for viruses.</p>
<form id="download-form" action="/drive" method="get">
<input type="submit" id="uc-download-link" value="Download anyway"/>
<input type="hidden" name="id" value="CONFIRM_ID">
<input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t">
<input type="hidden" name="uuid" value="abc-123">
</form></body></html>"""


# --------------------------------------------------------------------------- local server


class _Handler(BaseHTTPRequestHandler):
    timeout = 5  # a stuck client connection ends quickly

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, status, body=b"", headers=None):
        self.send_response(status)
        hdrs = {"Content-Type": "application/octet-stream", "Content-Length": str(len(body))}
        hdrs.update(headers or {})
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _serve_bytes(self, data, honour_range=True):
        rng = self.headers.get("Range")
        if rng and honour_range:
            m = re.match(r"bytes=(\d+)-$", rng)
            start = int(m.group(1))
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            body = data[start:]
            return self._send(206, body, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
        return self._send(200, data)

    def do_GET(self):
        srv = self.server
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        with srv.lock:
            srv.log.append((url.path, query, dict(self.headers)))
            if len(srv.log) > 50:  # bounded: a runaway retry loop fails loudly
                return self._send(500, b"too many requests")
        path = url.path
        if path == "/good.bin":
            return self._serve_bytes(DATA)
        if path == "/other.bin":  # serves bytes that do not match DATA_SHA
            return self._serve_bytes(OTHER)
        if path == "/slow.bin":
            time.sleep(0.3)
            return self._serve_bytes(DATA)
        if path == "/norange.bin":
            return self._serve_bytes(DATA, honour_range=False)
        if path == "/truncated.bin":
            if "Range" in self.headers:
                return self._serve_bytes(DATA)
            # announce the full length, send half, close (HTTP/1.0 closes after the handler)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(DATA)))
            self.end_headers()
            self.wfile.write(DATA[:HALF])
            self.wfile.flush()
            return None
        if path == "/forbidden.bin":
            return self._send(403, b"forbidden", {"Content-Type": "text/plain"})
        if path == "/missing.bin":
            return self._send(404, b"not found", {"Content-Type": "text/plain"})
        if path == "/html.bin":
            return self._send(200, b"<html><head><title>Login</title></head><body>hi</body></html>",
                              {"Content-Type": "text/html; charset=utf-8"})
        if path == "/drive":
            fid = query.get("id")
            if fid == "QUOTA_ID":
                return self._send(200, QUOTA_PAGE, {"Content-Type": "text/html; charset=utf-8"})
            if fid == "PRIVATE_ID":
                return self._send(200, PERMISSION_PAGE, {"Content-Type": "text/html; charset=utf-8"})
            if fid == "CONFIRM_ID":
                if query.get("uuid") == "abc-123":
                    return self._serve_bytes(DATA)
                return self._send(200, CONFIRM_PAGE, {"Content-Type": "text/html; charset=utf-8"})
            if fid == "GOOD_ID":
                return self._serve_bytes(DATA)
            return self._send(404, b"", {"Content-Type": "text/html"})
        return self._send(404, b"no such route")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def server():
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.log = []
    srv.lock = threading.Lock()
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    srv.hits = lambda p: [e for e in srv.log if e[0] == p]
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=5)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Private cache dir, no offline flag, no proxies, and no connection outside 127.0.0.1."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("STYLECLIP_HOME", str(cache))
    monkeypatch.delenv("STYLECLIP_OFFLINE", raising=False)
    monkeypatch.setenv("STYLECLIP_NO_GDOWN", "1")
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setattr(P, "GDRIVE_ENDPOINT", "http://127.0.0.1:9/drive")  # overridden per test

    real = socket.create_connection

    def guarded(address, *args, **kwargs):
        host = address[0]
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise AssertionError(f"test tried to reach the network: {address}")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
    P._HASH_MEMO.clear()
    return cache


def spec(url=None, *, name="test-artifact", sha256=DATA_SHA, gdrive_id=None, filename="sub/test.bin",
         **kw):
    return P.ArtifactSpec(name=name, kind="generator", filename=filename, url=url, gdrive_id=gdrive_id,
                          sha256=sha256, **kw)


def leftovers(target: Path):
    return sorted(p.name for p in target.parent.glob(target.name + ".part*"))


# --------------------------------------------------------------------------- registry


REQUIRED = ["stylegan2-ffhq-config-f", "ViT-B/32", "ViT-B/16", "RN50", "model_ir_se50", "e4e_ffhq_encode",
            "ffhq-fs3", "celeba-hq-test-latents"]
MAPPERS = ["afro", "angry", "beyonce", "bobcut", "bowlcut", "curly_hair", "depp", "hilary_clinton",
           "mohawk", "purple_hair", "surprised", "taylor_swift", "trump", "zuckerberg"]


def test_registry_has_every_official_artifact():
    for name in REQUIRED + [f"mapper-{m}" for m in MAPPERS]:
        s = P.ARTIFACTS[name]
        assert s.kind in P.KINDS
        assert s.sources(), name
        assert s.description and s.license and s.citation and s.reference, name
        assert s.filename and not Path(s.filename).is_absolute()
    assert len(P.list_artifacts("mapper")) == 14 and len({s.gdrive_id for s in P.list_artifacts("mapper")}) == 14
    filenames = [s.filename for s in P.ARTIFACTS.values()]
    assert len(filenames) == len(set(filenames))
    for s in P.list_artifacts("clip"):  # OpenAI embeds the sha256 in the URL
        assert s.url.split("/")[-2] == s.sha256 and re.fullmatch(r"[0-9a-f]{64}", s.sha256)
    assert P.info("ViT-B/32").url == ("https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312"
                                      "b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt")
    assert P.info("stylegan2-ffhq-config-f").gdrive_id == "1EM87UquaoQmk17Q8d5kYIAHqu0dkYqdT"


@pytest.mark.parametrize("alias,name", [("ViT-B-32", "ViT-B/32"), ("vit-b/32", "ViT-B/32"), ("afro", "mapper-afro"),
                                        ("curly-hair", "mapper-curly_hair"), ("test_faces", "celeba-hq-test-latents"),
                                        ("fs3", "ffhq-fs3"), ("model-ir-se50", "model_ir_se50"), ("RN50.pt", "RN50")])
def test_aliases(alias, name):
    assert P.info(alias).name == name


def test_cache_dir_precedence(tmp_path, monkeypatch, isolated):
    assert P.get_cache_dir() == isolated
    assert P.get_cache_dir(tmp_path / "x") == tmp_path / "x"
    assert P.path_for("ViT-B/32") == isolated / "clip" / "ViT-B-32.pt"
    monkeypatch.delenv("STYLECLIP_HOME")
    repo = tmp_path / "repo" / "pretrained"
    repo.mkdir(parents=True)
    monkeypatch.setattr(P, "_REPO_PRETRAINED", repo)
    assert P.get_cache_dir() == repo
    monkeypatch.setattr(P, "_REPO_PRETRAINED", tmp_path / "not-a-checkout" / "pretrained")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert P.get_cache_dir() == Path.home() / ".cache" / "styleclip_lib"


# --------------------------------------------------------------------------- downloads


def test_good_download_is_verified_atomic_and_cached(server, isolated):
    s = spec(server.base + "/good.bin")
    path = P.fetch(s, progress=False, timeout=5)
    assert path == isolated / "sub" / "test.bin"
    assert path.read_bytes() == DATA
    assert leftovers(path) == []
    assert P._read_sidecar(path) == DATA_SHA
    assert P.is_cached(s)
    n = len(server.log)
    assert P.fetch(s, progress=False) == path  # cached: no request
    assert len(server.log) == n
    P.fetch(s, progress=False, force=True, timeout=5)  # force: downloads again
    assert len(server.log) == n + 1 and path.read_bytes() == DATA


def test_progress_bar_path_works(server, capsys):
    P.fetch(spec(server.base + "/good.bin"), progress=True, timeout=5)
    assert "downloading test-artifact" in capsys.readouterr().err


def test_corrupt_download_raises_checksum_error_and_leaves_nothing(server, isolated):
    s = spec(server.base + "/other.bin")
    with pytest.raises(P.ChecksumError) as ei:
        P.fetch(s, progress=False, timeout=5)
    msg = str(ei.value)
    target = isolated / "sub" / "test.bin"
    assert DATA_SHA in msg and hashlib.sha256(OTHER).hexdigest() in msg and str(target) in msg
    assert ei.value.expected == DATA_SHA and ei.value.actual == hashlib.sha256(OTHER).hexdigest()
    assert not target.exists() and leftovers(target) == []


def test_truncated_transfer_keeps_part_then_resumes(server, isolated):
    s = spec(server.base + "/truncated.bin")
    target = isolated / "sub" / "test.bin"
    with pytest.raises(P.DownloadError) as ei:
        P.fetch(s, progress=False, timeout=5)
    msg = str(ei.value)
    assert f"received {HALF} of {len(DATA)} bytes" in msg and "resume" in msg and str(target) in msg
    assert not target.exists()
    part = target.with_name("test.bin.part")
    assert part.read_bytes() == DATA[:HALF]
    path = P.fetch(s, progress=False, timeout=5)
    assert path.read_bytes() == DATA and leftovers(target) == []
    assert server.hits("/truncated.bin")[-1][2].get("Range") == f"bytes={HALF}-"


def test_resume_sends_range_header(server, isolated):
    s = spec(server.base + "/good.bin")
    target = P.path_for(s)
    target.parent.mkdir(parents=True)
    target.with_name("test.bin.part").write_bytes(DATA[:1000])
    assert P.fetch(s, progress=False, timeout=5).read_bytes() == DATA
    (only,) = server.hits("/good.bin")
    assert only[2].get("Range") == "bytes=1000-"
    assert leftovers(target) == []


def test_complete_part_answered_416_is_accepted(server, isolated):
    s = spec(server.base + "/good.bin")
    target = P.path_for(s)
    target.parent.mkdir(parents=True)
    target.with_name("test.bin.part").write_bytes(DATA)
    assert P.fetch(s, progress=False, timeout=5).read_bytes() == DATA
    assert server.hits("/good.bin")[0][2].get("Range") == f"bytes={len(DATA)}-"


def test_server_ignoring_range_restarts(server, isolated):
    s = spec(server.base + "/norange.bin")
    target = P.path_for(s)
    target.parent.mkdir(parents=True)
    target.with_name("test.bin.part").write_bytes(b"garbage that must not survive" * 10)
    path = P.fetch(s, progress=False, timeout=5)
    assert path.read_bytes() == DATA and leftovers(target) == []
    assert "Range" in server.hits("/norange.bin")[0][2]


@pytest.mark.parametrize("route,status", [("/forbidden.bin", "403"), ("/missing.bin", "404")])
def test_http_error_names_status_url_and_target(server, isolated, route, status):
    s = spec(server.base + route)
    with pytest.raises(P.DownloadError) as ei:
        P.fetch(s, progress=False, timeout=5)
    msg = str(ei.value)
    target = isolated / "sub" / "test.bin"
    assert f"HTTP {status}" in msg and server.base + route in msg and str(target) in msg
    assert "STYLECLIP_HOME" in msg and "Download it manually" in msg
    assert not target.exists() and not target.parent.exists()  # no .part, no empty folder left


def test_html_instead_of_file(server):
    with pytest.raises(P.DownloadError, match=r"HTML page instead of the file.*Login"):
        P.fetch(spec(server.base + "/html.bin"), progress=False, timeout=5)


def test_drive_quota_page_is_a_clear_error(server, monkeypatch, isolated):
    monkeypatch.setattr(P, "GDRIVE_ENDPOINT", server.base + "/drive")
    s = spec(gdrive_id="QUOTA_ID")
    with pytest.raises(P.DownloadError) as ei:
        P.fetch(s, progress=False, timeout=5)
    msg = str(ei.value)
    target = isolated / "sub" / "test.bin"
    assert "quota" in msg and "https://drive.google.com/file/d/QUOTA_ID/view" in msg and str(target) in msg
    assert not target.exists() and leftovers(target) == []
    (hit,) = server.hits("/drive")
    assert hit[1] == {"id": "QUOTA_ID", "export": "download", "confirm": "t"}


def test_drive_permission_page(server, monkeypatch):
    monkeypatch.setattr(P, "GDRIVE_ENDPOINT", server.base + "/drive")
    with pytest.raises(P.DownloadError, match="permission denied"):
        P.fetch(spec(gdrive_id="PRIVATE_ID"), progress=False, timeout=5)


def test_drive_confirm_form_is_followed(server, monkeypatch):
    monkeypatch.setattr(P, "GDRIVE_ENDPOINT", server.base + "/drive")
    path = P.fetch(spec(gdrive_id="CONFIRM_ID"), progress=False, timeout=5)
    assert path.read_bytes() == DATA
    assert [h[1].get("uuid") for h in server.hits("/drive")] == [None, "abc-123"]


def test_mirror_used_when_primary_fails(server, monkeypatch):
    monkeypatch.setattr(P, "GDRIVE_ENDPOINT", server.base + "/drive")
    s = spec(gdrive_id="QUOTA_ID", mirrors=("gdrive:GOOD_ID",))
    assert P.fetch(s, progress=False, timeout=5).read_bytes() == DATA


def test_gdown_fallback_when_installed(server, monkeypatch):
    monkeypatch.setattr(P, "GDRIVE_ENDPOINT", server.base + "/drive")
    monkeypatch.delenv("STYLECLIP_NO_GDOWN")
    calls = []

    def download(id=None, output=None, quiet=False, **kw):
        calls.append(id)
        Path(output).write_bytes(DATA)
        return output

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=download))
    assert P.fetch(spec(gdrive_id="QUOTA_ID"), progress=False, timeout=5).read_bytes() == DATA
    assert calls == ["QUOTA_ID"]


def test_unknown_sha_is_recorded_then_enforced(server, isolated):
    s = spec(server.base + "/good.bin", sha256=None)
    path = P.fetch(s, progress=False, timeout=5)
    side = path.with_name("test.bin.sha256")
    assert side.read_text().split() == [DATA_SHA, "test.bin"]
    assert P.fetch(s, progress=False) == path  # stamp is newer: trusted without re-hashing
    time.sleep(0.01)
    path.write_bytes(OTHER)  # the file changes behind our back
    os.utime(path, ns=(side.stat().st_mtime_ns + 10**9,) * 2)
    with pytest.raises(P.ChecksumError, match="recorded when it was first fetched"):
        P.fetch(s, progress=False)
    with pytest.raises(P.ChecksumError):
        P.verify(s)


def test_offline_env_never_touches_network(server, monkeypatch, isolated):
    monkeypatch.setenv("STYLECLIP_OFFLINE", "1")
    s = spec(server.base + "/good.bin")
    with pytest.raises(P.DownloadError) as ei:
        P.fetch(s, progress=False)
    msg = str(ei.value)
    assert "STYLECLIP_OFFLINE" in msg and server.base + "/good.bin" in msg and str(P.path_for(s)) in msg
    assert server.log == []
    # a cached file (here placed by hand) is still served offline, and its hash is checked
    target = P.path_for(s)
    target.parent.mkdir(parents=True)
    target.write_bytes(DATA)
    assert P.resolve(s) == target
    assert server.log == []


def test_manually_placed_wrong_file_is_rejected(isolated, monkeypatch):
    monkeypatch.setenv("STYLECLIP_OFFLINE", "1")
    s = spec("http://127.0.0.1:9/never")
    target = P.path_for(s)
    target.parent.mkdir(parents=True)
    target.write_bytes(OTHER)
    with pytest.raises(P.ChecksumError, match="published sha256"):
        P.fetch(s)
    assert target.exists()  # a user's file is never deleted


def test_connection_refused_and_timeout(isolated):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(P.DownloadError, match=r"could not download test-artifact \(network error"):
        P.fetch(spec(f"http://127.0.0.1:{port}/x.bin"), progress=False, timeout=2)
    silent = socket.socket()  # accepts connections (backlog) but never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        t0 = time.monotonic()
        with pytest.raises(P.DownloadError, match="timed out"):
            P.fetch(spec(f"http://127.0.0.1:{silent.getsockname()[1]}/x.bin"), progress=False, timeout=0.5)
        assert time.monotonic() - t0 < 5
    finally:
        silent.close()


def test_concurrent_fetches_download_once(server):
    s = spec(server.base + "/slow.bin")
    results, errors = [], []

    def run():
        try:
            results.append(P.fetch(s, progress=False, timeout=5))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors and len(results) == 3 and len(set(results)) == 1
    assert results[0].read_bytes() == DATA
    assert len(server.hits("/slow.bin")) == 1


# --------------------------------------------------------------------------- resolve


def test_resolve_path_passthrough(tmp_path):
    f = tmp_path / "weights.pt"
    f.write_bytes(b"x")
    assert P.resolve(f) == f
    assert P.resolve(str(f)) == f
    assert P.resolve(str(f), kind="clip") == f  # kind does not apply to paths
    with pytest.raises(FileNotFoundError, match="no such file"):
        P.resolve(str(tmp_path / "missing" / "weights.pt"))


def test_unknown_name_lists_close_matches():
    with pytest.raises(P.UnknownArtifactError) as ei:
        P.resolve("stylegan2-ffhq-config")
    assert "stylegan2-ffhq-config-f" in str(ei.value)
    assert isinstance(ei.value, FileNotFoundError)
    with pytest.raises(P.UnknownArtifactError, match="ViT-B/32"):
        P.info("ViT-B/23")
    with pytest.raises(P.UnknownArtifactError, match="mapper-mohawk"):
        P.resolve("mohwak")


def test_resolve_registry_name_fetches(server, monkeypatch, isolated):
    monkeypatch.setitem(P.ARTIFACTS, "test-artifact", spec(server.base + "/good.bin"))
    path = P.resolve("Test_Artifact", kind="generator")
    assert path == isolated / "sub" / "test.bin" and path.read_bytes() == DATA


def test_resolve_kind(monkeypatch):
    monkeypatch.setenv("STYLECLIP_OFFLINE", "1")
    with pytest.raises(P.KindMismatchError, match="clip artifact"):
        P.resolve("ViT-B/32", kind="generator")
    # an e4e checkpoint also provides a generator: allowed (offline -> download error, not kind error)
    with pytest.raises(P.DownloadError):
        P.resolve("e4e_ffhq_encode", kind="generator")


def test_toy_names(monkeypatch, tmp_path):
    # without the toy world: a clear error (simulated by an empty styleclip_lib.toy module)
    monkeypatch.setitem(sys.modules, "styleclip_lib.toy", types.ModuleType("styleclip_lib.toy"))
    with pytest.raises(P.UnknownArtifactError, match="toy world is not available"):
        P.resolve("toy-generator")
    fake = types.ModuleType("styleclip_lib.toy")
    fake.weights_path = lambda name, kind=None: tmp_path / f"{name}.pt"
    monkeypatch.setitem(sys.modules, "styleclip_lib.toy", fake)
    assert P.resolve("toy-generator") == tmp_path / "toy-generator.pt"
    assert P.resolve("toy") == tmp_path / "toy.pt"


# --------------------------------------------------------------------------- CLI


def test_cli_list(capsys, isolated):
    assert P.main(["list"]) == 0
    out = capsys.readouterr().out
    assert str(isolated) in out
    for name in ("stylegan2-ffhq-config-f", "ViT-B/32", "mapper-zuckerberg", "ffhq-fs3"):
        assert name in out
    assert re.search(r"^ViT-B/32\s+clip\s+no\s", out, re.M)
    assert P.main(["list", "--kind", "mapper"]) == 0
    assert "ViT-B/32" not in capsys.readouterr().out


def test_cli_fetch_path_and_exit_codes(server, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(P.ARTIFACTS, "test-artifact", spec(server.base + "/good.bin"))
    monkeypatch.setitem(P.ARTIFACTS, "test-forbidden", spec(server.base + "/forbidden.bin",
                                                             name="test-forbidden", filename="f.bin"))
    alt = tmp_path / "alt"
    assert P.main(["path", "test-artifact", "--cache-dir", str(alt)]) == 1  # not cached yet
    capsys.readouterr()
    assert P.main(["fetch", "test-artifact", "--cache-dir", str(alt), "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(alt / "sub" / "test.bin")
    assert P.main(["path", "test-artifact", "--cache-dir", str(alt)]) == 0
    capsys.readouterr()
    assert P.main(["list", "--cache-dir", str(alt)]) == 0
    assert re.search(r"^test-artifact\s+generator\s+yes\s", capsys.readouterr().out, re.M)

    assert P.main(["fetch", "test-forbidden", "-q"]) == 1
    err = capsys.readouterr().err
    assert "HTTP 403" in err and "Traceback" not in err
    assert P.main(["fetch", "no-such-thing"]) == 2
    assert "nor a known pretrained name" in capsys.readouterr().err
    assert P.main(["fetch", "test-artifact", "test-forbidden", "-q"]) == 1  # partial failure
    assert P.main([]) == 2
    assert P.main(["bogus-command"]) == 2
    assert P.main(["info", "afro"]) == 0
    assert "1i5vAqo4z0I-Yon3FNft_YZOq7ClWayQJ" in capsys.readouterr().out
    assert P.main(["verify", "test-artifact", "--cache-dir", str(alt)]) == 0
