"""Helpers shared by the web-service tests (no tests here): a small model set built from the goldens.

The small golden generator (32 px, W+ 8×64, 352 conv channels) and the small ViT CLIP stand in
for the real models; the set also gets a random fs3 (352, 64) with quickly computed style
statistics (global directions), a random toy-style encoder (inversion) and a random mapper
checkpoint.  None of it is trained: the tests check the service, not edit quality.
"""
from __future__ import annotations

import base64
import io

import numpy as np
import torch

import pytest

from conftest import conformance_path
from styleclip_lib.worlds import ModelSet

pytest.importorskip("fastapi")
pytest.importorskip("httpx")


class SmallModelSet(ModelSet):
    """Style statistics from 200 samples instead of 100k (the golden generator is tiny)."""

    def style_statistics(self):
        if "style_stats" not in self._cache:
            from styleclip_lib.global_directions import style_statistics

            self._cache["style_stats"] = style_statistics(self.generator, n=200, progress=False)
        return self._cache["style_stats"]


def build_small_models(folder) -> tuple[SmallModelSet, str]:
    """(model set, mapper folder) for the golden generator + small CLIP, files written to ``folder``."""
    from styleclip_lib.global_directions import save_fs3
    from styleclip_lib.models.mapper import LevelsMapper, mapper_checkpoint
    from styleclip_lib.toy.nets import ToyEncoder, save_net

    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    fs3 = torch.randn(352, 64, generator=gen)
    fs3 = fs3 / fs3.norm(dim=1, keepdim=True)
    fs3_path = save_fs3(folder / "fs3.npy", fs3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        enc = ToyEncoder(num_ws=8, w_dim=64, image_size=32, width=8)
        mapper = LevelsMapper(64, 8)
    enc_path = folder / "encoder.pt"
    save_net(enc, "encoder", enc_path, half=False)
    mapper_dir = folder / "mappers"
    mapper_dir.mkdir(exist_ok=True)
    torch.save(mapper_checkpoint(mapper), mapper_dir / "random_edit.pt")
    parts = {"generator": str(conformance_path("stylegan2/generator_ckpt.pt")),
             "clip": str(conformance_path("clip/vit_state_dict.pt")),
             "encoder": str(enc_path), "fs3": str(fs3_path)}
    return SmallModelSet("test", torch.device("cpu"), parts), str(mapper_dir)


def png_of(size=(40, 30), color=(200, 120, 40)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes, data_url: bool = False) -> str:
    s = base64.b64encode(data).decode()
    return "data:image/png;base64," + s if data_url else s


def decode_png(data_url: str) -> np.ndarray:
    from PIL import Image

    assert data_url.startswith("data:image/png;base64,"), data_url[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    """(model set, mapper folder), shared by the tests of one module (weights load once)."""
    models, mapper_dir = build_small_models(tmp_path_factory.mktemp("small_models"))
    _ = models.generator, models.clip  # load now, outside the timed tests
    return models, mapper_dir
