"""Shared test helpers.

Conformance goldens live in ``../shared/conformance`` (beside the checkout, in CI
too).  Small ones are copied into ``tests/fixtures/conformance`` so most tests run
from the repo alone; the larger files are read from ``../shared``.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "conformance"
SHARED = Path(os.environ.get("STYLECLIP_CONFORMANCE", HERE.parent.parent / "shared" / "conformance"))

# The test models are tiny: one intra-op thread is faster than two, and far faster when the
# cores are shared with other jobs (OpenMP threads then wait on each other).
torch.set_num_threads(1)

# Tests never touch the network nor the user's weight cache.
os.environ["STYLECLIP_OFFLINE"] = "1"
os.environ.setdefault("STYLECLIP_HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / f"styleclip_test_home_{os.getpid()}"))


def conformance_path(rel: str) -> Path:
    """Path of a conformance file: the repo fixture copy if present, else ../shared."""
    for base in (FIXTURES, SHARED):
        p = base / rel
        if p.exists():
            return p
    raise FileNotFoundError(
        f"conformance file {rel!r} not found in {FIXTURES} nor {SHARED}; "
        "clone the project with ../shared beside it or set STYLECLIP_CONFORMANCE"
    )


def load_conformance(rel: str):
    return torch.load(conformance_path(rel), map_location="cpu", weights_only=True)


def assert_close_ref(actual: torch.Tensor, golden: torch.Tensor, rel: float = 1e-4, what: str = "") -> None:
    """The shared/stylegan2 tolerance: |a-g| <= rel*max(1, max|g|) + rel*|g|."""
    actual = actual.detach().to(torch.float64).cpu()
    golden = golden.detach().to(torch.float64).cpu()
    assert actual.shape == golden.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(golden.shape)}"
    bound = rel * max(1.0, golden.abs().max().item()) + rel * golden.abs()
    err = (actual - golden).abs()
    worst = (err - bound).max().item()
    assert worst <= 0, f"{what}: max abs err {err.max().item():.3e} exceeds tolerance"


@pytest.fixture
def conf():
    return load_conformance
