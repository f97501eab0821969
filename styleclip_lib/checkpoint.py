"""Safe checkpoint loading shared by every model loader.

Every loader goes through :func:`load_state` so that a truncated, corrupt or
wrong-kind file produces one :class:`CheckpointError` naming the file, what was
found and what was expected, instead of a pickle traceback.  Pickles are read
with ``weights_only=True`` (no arbitrary code execution); TorchScript is only
accepted where the caller allows it (OpenAI CLIP archives).
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

__all__ = ["CheckpointError", "load_state", "check_state_dict", "strip_prefix", "describe"]


class CheckpointError(ValueError):
    """A checkpoint file could not be used: names the file, what was found, what was expected."""

    def __init__(self, path: Any, found: str, expected: str):
        self.path = str(path)
        self.found = found
        self.expected = expected
        super().__init__(f"checkpoint {self.path!r}: found {found}; expected {expected}")


def describe(obj: Any, limit: int = 6) -> str:
    """Short human description of a loaded object, for error messages."""
    if isinstance(obj, Mapping):
        keys = list(obj.keys())
        shown = ", ".join(repr(k) for k in keys[:limit])
        more = f", ... ({len(keys)} keys)" if len(keys) > limit else ""
        return f"a dict with keys [{shown}{more}]"
    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    return f"an object of type {type(obj).__name__}"


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_state(path: str | os.PathLike, *, expected: str, allow_torchscript: bool = False) -> Any:
    """Load a checkpoint safely.

    ``expected`` is a phrase describing what the caller needs (used in errors).
    Returns whatever ``torch.load(weights_only=True)`` returns, or, for a
    TorchScript archive when ``allow_torchscript``, its ``state_dict()``.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(p, "no such file", expected)
    if p.is_dir():
        raise CheckpointError(p, "a directory", expected)
    size = p.stat().st_size
    if size == 0:
        raise CheckpointError(p, "an empty file (0 bytes)", expected)
    if _is_torchscript(p):
        if not allow_torchscript:
            raise CheckpointError(p, "a TorchScript archive", expected + " (a plain state-dict file)")
        try:
            module = torch.jit.load(str(p), map_location="cpu")
        except Exception as e:  # noqa: BLE001 - any failure means an unusable archive
            raise CheckpointError(p, f"an unreadable TorchScript archive ({type(e).__name__}: {e})", expected) from None
        return dict(module.state_dict())
    with open(p, "rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(p) as zf:
                zf.namelist()
        except (zipfile.BadZipFile, OSError):
            raise CheckpointError(p, f"a truncated or corrupt zip checkpoint ({size} bytes: its central directory is unreadable)", expected) from None
    elif not head.startswith(b"\x80"):
        raise CheckpointError(p, f"a file that is not a PyTorch checkpoint ({size} bytes starting with {head!r})", expected)
    try:
        return torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means an unusable file
        text = str(e)
        msg = text.splitlines()[0] if text else type(e).__name__
        if "weights_only" in text or "Unsupported global" in text:
            what = "a pickle that needs arbitrary code to load (refused: weights_only=True)"
        elif isinstance(e, (EOFError, RuntimeError, OSError)):
            what = f"a truncated or corrupt file ({size} bytes: {type(e).__name__}: {msg})"
        else:
            what = f"a file torch cannot read ({size} bytes: {type(e).__name__}: {msg})"
        raise CheckpointError(p, what, expected) from None


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys starting with ``prefix`` with the prefix removed (pSp/StyleCLIP ``get_keys``)."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def check_state_dict(
    path: Any,
    state: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor] | Mapping[str, tuple],
    *,
    expected: str,
    optional: Iterable[str] = (),
) -> None:
    """Raise CheckpointError unless ``state`` has exactly the keys and shapes of ``reference``.

    ``reference`` maps key -> tensor or shape.  Keys ending with any suffix in
    ``optional`` may be missing (e.g. ``num_batches_tracked`` in old files).
    """
    optional = tuple(optional)
    ref_shapes = {k: tuple(v.shape) if hasattr(v, "shape") else tuple(v) for k, v in reference.items()}
    missing = [k for k in ref_shapes if k not in state and not k.endswith(optional)]
    unexpected = [k for k in state if k not in ref_shapes]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        raise CheckpointError(path, "a state dict with " + " and ".join(parts), expected)
    bad = [(k, tuple(state[k].shape), s) for k, s in ref_shapes.items() if k in state and tuple(state[k].shape) != s]
    if bad:
        k, got, want = bad[0]
        raise CheckpointError(path, f"{len(bad)} tensors of the wrong shape (e.g. {k!r}: {got} instead of {want})", expected)


def is_toy_checkpoint(path: str | os.PathLike) -> bool:
    """True for the toy world's small-net files (``{'kind', 'config', 'state_dict'}``)."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not readable here: let the real loader report it
        return False
    return isinstance(obj, dict) and isinstance(obj.get("kind"), str) and "config" in obj
