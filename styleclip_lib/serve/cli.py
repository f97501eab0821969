"""``python -m styleclip_lib serve``: run the web service with uvicorn (and optionally an ngrok tunnel).

::

    python -m styleclip_lib serve                                  # toy world on http://127.0.0.1:8000/
    python -m styleclip_lib serve --model ffhq --device cuda --port 8080
    python -m styleclip_lib serve --tunnel                          # + a public ngrok URL (Colab); set an API key!

Limits and other settings come from ``STYLECLIP_SERVE_*`` variables (see
:class:`~styleclip_lib.serve.settings.Settings`), storage from ``STYLECLIP_STORAGE*`` (see
:mod:`styleclip_lib.storage`).
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from typing import Optional

__all__ = ["main", "open_tunnel", "build_parser"]


def open_tunnel(port: int, authtoken: Optional[str] = None, region: Optional[str] = None) -> str:
    """Open an ngrok HTTP tunnel to ``127.0.0.1:port``; returns the public URL.

    Needs ``pyngrok`` (``pip install pyngrok``, part of the ``[serve]`` extra) and, for ngrok's
    current service, an auth token (``authtoken=`` or ``NGROK_AUTHTOKEN``).  Anyone with the URL
    reaches the service: set ``STYLECLIP_SERVE_API_KEY`` first.
    """
    try:
        from pyngrok import conf, ngrok
    except ImportError:
        raise RuntimeError("open_tunnel needs pyngrok: pip install pyngrok (or pip install 'styleclip_lib[serve]')") from None
    token = authtoken or os.environ.get("NGROK_AUTHTOKEN")
    if token:
        ngrok.set_auth_token(token)
    if region:
        conf.get_default().region = region
    tunnel = ngrok.connect(addr=f"127.0.0.1:{int(port)}", proto="http", bind_tls=True)
    return tunnel.public_url


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m styleclip_lib serve", description="Run the StyleCLIP web service.")
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model", default="toy", choices=["toy", "ffhq"], help="model set (default: the toy world)")
    ap.add_argument("--device", default=None, help="torch device (default: cuda, mps or cpu)")
    ap.add_argument("--workers", type=int, default=None, help="job threads (default: STYLECLIP_SERVE_MAX_WORKERS or 1)")
    ap.add_argument("--preload", action="store_true", help="load the generator and CLIP before serving")
    ap.add_argument("--tunnel", action="store_true", help="also open a public ngrok tunnel (needs pyngrok)")
    ap.add_argument("--limit-concurrency", type=int, default=200,
                    help="uvicorn: connections beyond this get 503 at once (default 200)")
    ap.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return ap


def main(argv: Optional[list] = None) -> int:
    """Entry point of ``python -m styleclip_lib serve``; returns the exit status."""
    ap = build_parser()
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import uvicorn  # noqa: F401
        import fastapi  # noqa: F401
    except ImportError as e:
        print(f"error: the web service needs fastapi and uvicorn ({e.name} is missing): "
              "pip install 'styleclip_lib[serve]'", file=sys.stderr)
        return 1
    if not (0 < a.port < 65536):
        ap.error("--port must be in 1..65535")
    from .app import create_app
    from .settings import Settings

    overrides = {}
    if a.device:
        overrides["device"] = a.device
    if a.workers is not None:
        overrides["max_workers"] = a.workers
    try:
        settings = Settings.from_env(**overrides)
        app = create_app(a.model, settings)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not _is_loopback(a.host) and settings.api_key is None:
        print(f"warning: serving on {a.host} without an API key: anyone who can reach this port can use it "
              "(set STYLECLIP_SERVE_API_KEY)", file=sys.stderr)
    if a.preload:
        eng = app.state.engine
        try:
            _ = eng.generator, eng.models.clip
        except Exception as e:  # noqa: BLE001 - report and stop
            print(f"error: could not load the {a.model} models: {e}", file=sys.stderr)
            return 1
    if a.tunnel:
        if settings.api_key is None:
            print("warning: the tunnel makes the service public and no API key is set (STYLECLIP_SERVE_API_KEY)",
                  file=sys.stderr)
        try:
            print(f"public URL: {open_tunnel(a.port)}", file=sys.stderr)
        except Exception as e:  # noqa: BLE001
            print(f"error: could not open the tunnel: {e}", file=sys.stderr)
            return 1
    import uvicorn

    print(f"StyleCLIP service ({a.model}) on http://{a.host}:{a.port}/  (API docs: /docs)", file=sys.stderr)
    uvicorn.run(app, host=a.host, port=a.port, log_level=a.log_level, limit_concurrency=a.limit_concurrency,
                timeout_graceful_shutdown=10)
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
