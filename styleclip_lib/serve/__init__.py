"""The StyleCLIP web service: a FastAPI app, a job runner and a one-page UI (optional extra ``[serve]``).

::

    pip install 'styleclip_lib[serve]'
    python -m styleclip_lib serve --model toy --port 8000      # then open http://127.0.0.1:8000/

    from styleclip_lib.serve import create_app, Settings
    app = create_app("toy", Settings(max_steps=200))

Only this package imports the web framework; the rest of the library never imports it.
Names are loaded lazily so ``import styleclip_lib.serve`` costs nothing until used.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "create_app": "styleclip_lib.serve.app",
    "Settings": "styleclip_lib.serve.settings",
    "main": "styleclip_lib.serve.cli",
    "open_tunnel": "styleclip_lib.serve.cli",
    "JobManager": "styleclip_lib.serve.jobs",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'styleclip_lib.serve' has no attribute {name!r}")
