"""LevelsMapper against the reference goldens (shared/conformance/mapper)."""
import json

import pytest
import torch

from conftest import assert_close_ref, conformance_path, load_conformance
from styleclip_lib import CheckpointError, load_mapper
from styleclip_lib.models.mapper import LevelsMapper, mapper_checkpoint


@pytest.fixture(scope="module")
def cases():
    return load_conformance("mapper/cases.pt")


@pytest.mark.parametrize("variant", ["default", "no_fine_mapper"])
def test_golden_delta_and_edit(cases, variant):
    m = load_mapper(conformance_path(f"mapper/mapper_{variant}.pt"), device="cpu")
    w = cases["in.w"]
    assert m.enabled["fine"] is (variant == "default")
    assert_close_ref(m(w), cases[f"out.{variant}.delta"], what="delta")
    assert_close_ref(m.edit(w), cases[f"out.{variant}.w_hat"], what="w_hat")
    if variant == "no_fine_mapper":
        assert torch.count_nonzero(m(w)[:, 8:]) == 0


def test_row_pixelnorm_is_over_rows_not_features(cases):
    """Normalising over the feature axis (the obvious 'fix') must not reproduce the goldens."""
    m = load_mapper(conformance_path("mapper/mapper_default.pt"))
    w = cases["in.w"]
    x = w[:, 0:4]
    x_feat = x * torch.rsqrt(torch.mean(x * x, dim=2, keepdim=True) + 1e-8)
    wrong = m.course_mapping.mapping[1:](x_feat)
    assert (wrong - cases["out.default.delta"][:, 0:4]).abs().max() > 1e-2


def test_full_size_manifest_keys():
    manifest = json.load(open(conformance_path("mapper/full_size_manifest.json")))
    for variant, spec in manifest["mapper_variants"].items():
        flags = {f: variant == f for f in ("no_coarse_mapper", "no_medium_mapper", "no_fine_mapper")}
        with torch.device("meta"):
            m = LevelsMapper(512, 18, **flags)
        got = [(f"mapper.{k}", list(v.shape)) for k, v in m.state_dict().items()]
        assert got == [(e["key"], e["shape"]) for e in spec["keys"]], variant
        assert sum(p.numel() for p in m.parameters()) == spec["num_parameters"]


def test_style_space_mapper_has_the_reference_layout_at_1024_px():
    from styleclip_lib.models.mapper import StyleSpaceMapper
    from styleclip_lib.models.stylegan2 import Generator

    # the reference's STYLESPACE_DIMENSIONS and its WithoutToRGBStyleSpaceMapper keys
    dims = [512] * 15 + [256] * 3 + [128] * 3 + [64] * 3 + [32] * 2
    with torch.device("meta"):
        g = Generator(1024)
        m = StyleSpaceMapper(g.style_channels, g.conv_style_indices)
    assert g.style_channels == dims
    assert m.conv_indices == [i for i in range(26) if i not in range(1, 26, 3)]
    keys = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert keys["mapper_0.mapping.1.weight"] == (512, 512) and keys["mapper_24.mapping.4.weight"] == (32, 32)
    assert not any(k.startswith(("mapper_1.", "mapper_25.")) for k in keys)  # ToRGB layers have no mapper
    assert len(keys) == 17 * 4 * 2


def test_checkpoint_round_trip_and_small_generators(tmp_path):
    torch.manual_seed(0)
    m = LevelsMapper(32, num_ws=10)  # 64 px toy generator: fine = rows 8..9
    assert m.rows == {"coarse": (0, 4), "medium": (4, 8), "fine": (8, 10)}
    p = tmp_path / "m.pt"
    torch.save(mapper_checkpoint(m, {"description": "purple hair"}), p)
    m2 = load_mapper(p)
    w = torch.randn(3, 10, 32)
    torch.testing.assert_close(m2(w), m(w))
    m8 = LevelsMapper(32, num_ws=8)  # 32 px: no fine rows
    assert not m8.enabled["fine"] and m8(torch.randn(2, 8, 32)).shape == (2, 8, 32)


def test_errors(tmp_path, cases):
    m = load_mapper(conformance_path("mapper/mapper_default.pt"))
    with pytest.raises(ValueError, match=r"expected shape \(N, 18, 128\)"):
        m(torch.zeros(18, 128))
    wrong = tmp_path / "gen.pt"
    torch.save({"g_ema": {"style.1.weight": torch.zeros(2, 2)}}, wrong)
    with pytest.raises(CheckpointError, match="gen.pt.*expected a StyleCLIP mapper"):
        load_mapper(wrong)
    ck = torch.load(conformance_path("mapper/mapper_default.pt"), weights_only=True)
    ck["state_dict"]["mapper.fine_mapping.mapping.2.weight"] = torch.zeros(128, 7)
    bad = tmp_path / "bad.pt"
    torch.save(ck, bad)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_mapper(bad)
