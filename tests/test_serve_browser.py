"""End to end in headless Chromium: the web page picks a sample face, runs edits, shows the result.

Needs Debian's ``chromium`` (``apt-get install chromium``) and the ``playwright`` Python package
(no browser download: Playwright drives ``/usr/bin/chromium``); skipped when either is missing.
The server runs under uvicorn in a thread on 127.0.0.1; the browser must never reach any other host.
"""
from __future__ import annotations

import os
import shutil
import threading
import time

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

from styleclip_lib.serve import Settings, create_app  # noqa: E402
from styleclip_lib.storage import LocalStorage  # noqa: E402
from test_serve_support import png_of, small_models  # noqa: E402,F401

CHROMIUM = os.environ.get("STYLECLIP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser") \
    or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium not installed (apt-get install chromium)")

ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-default-apps", "--disable-extensions", "--disable-sync",
        "--metrics-recording-only", "--no-first-run", "--mute-audio"]


@pytest.fixture()
def base_url(small_models, tmp_path):
    models, mapper_dir = small_models
    app = create_app(models, Settings(mapper_dir=mapper_dir), storage=LocalStorage(tmp_path / "files"))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and thread.is_alive() and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(15)


@pytest.fixture()
def page(base_url):
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            ctx = browser.new_context(viewport={"width": 1100, "height": 800})
            pg = ctx.new_page()
            pg.set_default_timeout(20_000)
            pg.requests_seen, pg.console_errors = [], []
            pg.on("request", lambda r: pg.requests_seen.append(r.url))
            pg.on("console", lambda m: m.type == "error" and pg.console_errors.append(m.text))
            pg.on("pageerror", lambda e: pg.console_errors.append(str(e)))
            yield pg
        finally:
            browser.close()


def wait_js(page, expr: str, timeout: float = 20.0):
    """Poll a JS expression until truthy (``page.wait_for_function`` evaluates strings with eval(),
    which the page's Content-Security-Policy forbids -- as it should)."""
    deadline = time.time() + timeout
    while True:
        value = page.evaluate(expr)
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {expr}; status={page.text_content('#status')!r} "
                                 f"error={page.text_content('#error')!r}")
        time.sleep(0.1)


def _set_range(page, sel: str, value) -> None:
    page.eval_on_selector(sel, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", str(value))


def test_page_sample_global_edit_and_optimize_job(page, base_url, tmp_path):
    page.goto(base_url + "/")
    wait_js(page, "document.getElementById('model-info').textContent.includes('32px')")
    wait_js(page, "document.querySelectorAll('#samples img').length === 8 && "
                           "[...document.querySelectorAll('#samples img')].every(i => i.complete && i.naturalWidth === 32)")
    # pick sample 2, global directions
    page.click("#samples img[data-seed='2']")
    assert page.input_value("#seed") == "2"
    page.select_option("#method", "global")
    page.fill("#prompt", "a face with purple hair")
    _set_range(page, "#beta", 0.05)
    _set_range(page, "#alpha", 5)
    assert page.text_content("#alpha-out") == "5.0"
    page.click("#run")
    wait_js(page, "(document.getElementById('after').src || '').startsWith('data:image/png')")
    assert "StyleSpace channels changed" in page.text_content("#channels")
    assert page.eval_on_selector("#before", "el => el.src.startsWith('data:image/png')")
    assert page.is_hidden("#error")
    page.screenshot(path=str(tmp_path / "global.png"), full_page=True)
    assert (tmp_path / "global.png").stat().st_size > 5000

    # latent optimisation: a job with a progress bar, then the result
    before_after = page.eval_on_selector("#after", "el => el.src")
    page.select_option("#method", "optimize")
    _set_range(page, "#steps", 25)
    page.click("#run")
    wait_js(page, "document.getElementById('status').textContent.includes('step')")
    wait_js(page, "document.getElementById('status').textContent === 'done' || "
                           "document.getElementById('status').textContent.startsWith('succeeded') || "
                           "document.getElementById('progress').hidden", timeout=60)
    wait_js(page, f"document.getElementById('after').src !== {before_after!r}")
    assert page.is_hidden("#error"), page.text_content("#error")
    page.screenshot(path=str(tmp_path / "optimize.png"), full_page=True)

    # a limit violation shows the server's message (naming the limit)
    page.fill("#prompt", "x" * 199 + " " + "y")
    page.eval_on_selector("#prompt", "el => { el.maxLength = 1000; el.value = 'z'.repeat(300); }")
    page.select_option("#method", "global")
    page.click("#run")
    page.wait_for_selector("#error:not([hidden])")
    assert "max_prompt_length" in page.text_content("#error")

    # offline: every request went to this server
    assert page.requests_seen and all(u.startswith(base_url) or u.startswith("data:") or u.startswith("blob:")
                                      for u in page.requests_seen), page.requests_seen
    assert not page.console_errors or all("422" in e or "status of 4" in e for e in page.console_errors), page.console_errors


def test_page_upload_and_cancel(page, base_url, tmp_path):
    page.goto(base_url + "/")
    wait_js(page, "document.getElementById('model-info').textContent.includes('32px')")
    photo = tmp_path / "face.png"
    photo.write_bytes(png_of((48, 48), (180, 140, 120)))
    page.check("#source-upload")
    page.set_input_files("#photo", str(photo))
    page.select_option("#method", "global")
    _set_range(page, "#beta", 0.05)
    page.click("#run")
    wait_js(page, "(document.getElementById('after').src || '').startsWith('data:image/png')")
    assert page.is_hidden("#error"), page.text_content("#error")
    # a long optimisation, cancelled from the page
    page.check("#source-seed")
    page.select_option("#method", "optimize")
    _set_range(page, "#steps", 500)
    page.click("#run")
    page.wait_for_selector("#cancel:not([hidden])")
    wait_js(page, "document.getElementById('status').textContent.includes('step')")
    page.click("#cancel")
    wait_js(page, "document.getElementById('status').textContent === 'cancelled'", timeout=30)
    assert page.is_hidden("#cancel") and page.is_hidden("#progress")
