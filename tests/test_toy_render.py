"""Toy world: renderer determinism / attribute effects / sampling, captions."""
from __future__ import annotations

import numpy as np
import pytest

from styleclip_lib.toy import captions as C
from styleclip_lib.toy import render as R
from styleclip_lib.toy.render import ATTRIBUTES, IDENTITY, FaceBatch, FaceParams

BASE = FaceParams(hair_color="brown", hair_style="short", skin_tone="light", eye_color="blue",
                  mouth="neutral", glasses="no", beard="no", background="white")
S = 64


def _changed(img_a: np.ndarray, img_b: np.ndarray) -> np.ndarray:
    """bool (H, W): pixels that differ noticeably."""
    return np.abs(img_a.astype(int) - img_b.astype(int)).max(-1) > 8


def _box(img, x, y, r):
    x, y = int(round(x)), int(round(y))
    return img[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1]


def _eye_rows():
    lm = R.landmarks(BASE, S)
    return lm["left_eye"][1], lm


# --------------------------------------------------------------------------
# determinism, sizes, API
# --------------------------------------------------------------------------

def test_deterministic_and_batch_independent():
    a = R.render_batch(R.sample_params(24, seed=0), S)
    b = R.render_batch(R.sample_params(24, seed=0), S, threads=2, chunk=5)
    c = R.render_batch(R.sample_params(24, seed=1), S)
    assert a.dtype == np.uint8 and a.shape == (24, S, S, 3)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()
    batch = R.sample_params(24, seed=0)
    for i in (0, 7, 23):
        assert R.render(batch[i], S).tobytes() == a[i].tobytes()
    # lists of FaceParams / dicts are accepted too
    assert R.render_batch([p.to_dict() for p in batch[:4]], S).tobytes() == a[:4].tobytes()


@pytest.mark.parametrize("size", [32, 64, 128])
def test_sizes(size):
    batch = R.sample_params(6, seed=3)
    imgs = R.render_batch(batch, size)
    assert imgs.shape == (6, size, size, 3) and imgs.dtype == np.uint8
    assert imgs.std() > 20                                  # not blank
    if size != 64:                                          # same layout at every size
        big, small = (imgs, R.render_batch(batch, 64)) if size > 64 else (R.render_batch(batch, 64), imgs)
        f = big.shape[1] // small.shape[1]
        n = small.shape[1]
        down = big.astype(np.float32).reshape(6, n, f, n, f, 3).mean((2, 4))
        # (32 px draws outlines relatively thicker, >= ~1 px, to stay readable)
        assert np.abs(down - small).mean() < (12 if size == 32 else 3)


def test_supersample_close_to_analytic_aa():
    """The analytic (signed-distance) anti-aliasing matches 4x supersampling."""
    batch = R.sample_params(4, seed=4)
    a = R.render_batch(batch, 64).astype(np.float32)
    b = R.render_batch(batch, 64, supersample=4).astype(np.float32)
    assert np.abs(a - b).mean() < 2


def test_smooth_edges():
    """Anti-aliased: the background/shirt/head boundaries contain intermediate values."""
    img = R.render(BASE, S).astype(int)
    bg = img[0, 0]
    far = np.abs(img - bg).max(-1)
    assert ((far > 15) & (far < 120)).sum() > 40


# --------------------------------------------------------------------------
# every attribute value changes the image where it should
# --------------------------------------------------------------------------

def test_each_attribute_value_changes_expected_region():
    base = R.render(BASE, S)
    ey, lm = _eye_rows()
    my = lm["mouth_left"][1]
    for attr, values in ATTRIBUTES.items():
        for v in values:
            if v == BASE.value(attr):
                continue
            img = R.render(BASE.replace(**{attr: v}), S)
            ch = _changed(base, img)
            assert ch.sum() >= 4, (attr, v)
            rows = np.nonzero(ch.any(1))[0]
            if attr == "hair_color":
                for eye in ("left_eye", "right_eye"):                  # eyes untouched
                    assert (_box(img, *lm[eye], 1) == _box(base, *lm[eye], 1)).all()
                assert rows.min() < ey - 8                             # the hair on top changed
            elif attr == "eye_color":
                cols = np.nonzero(ch.any(0))[0]
                assert rows.min() >= ey - 5 and rows.max() <= ey + 5
                assert cols.min() >= lm["left_eye"][0] - 5 and cols.max() <= lm["right_eye"][0] + 5
            elif attr == "mouth":
                assert rows.min() > ey + 6 and rows.max() <= my + 7
            elif attr == "glasses":
                assert rows.min() >= ey - 8 and rows.max() <= ey + 8
            elif attr == "beard":
                assert rows.min() > ey
                assert not ch[: int(ey)].any()
            elif attr == "background":
                assert ch[0, 0] and ch[0, -1]
                assert not _changed(_box(base, *lm["nose_tip"], 2), _box(img, *lm["nose_tip"], 2)).any()
            elif attr == "skin_tone":
                cheek = (lm["left_eye"][0], (ey + my) / 2)
                assert _changed(_box(base, *cheek, 1), _box(img, *cheek, 1)).all()
                assert not ch[0].any()                                 # background untouched
            elif attr == "hair_style":
                assert rows.min() < ey - 6
                assert not ch[int(my) + 3:, 28:36].any()               # chin untouched


def _nearest(rgb, palette) -> int:
    return int(np.argmin(((palette * 255 - rgb) ** 2).sum(-1)))


@pytest.mark.parametrize("pname", IDENTITY)
def test_identity_changes_geometry_not_classes(pname):
    """Identity parameters move shapes but keep colour classes (hair cap probe,
    skin probe, iris probe) for every hair colour and skin tone."""
    for hc in range(len(ATTRIBUTES["hair_color"])):
        p = BASE.replace(hair_color=hc, skin_tone=hc % 4, eye_color=hc % 3)
        imgs = R.render_batch([p.replace(**{pname: 0.0}), p.replace(**{pname: 1.0})], S)
        assert _changed(imgs[0], imgs[1]).sum() >= 3, pname
        for img, t in zip(imgs, (0.0, 1.0)):
            q = p.replace(**{pname: t})
            lm = R.landmarks(q, S)
            hair = img[11:16, 29:36].reshape(-1, 3).mean(0)
            assert _nearest(hair, R.HAIR_RGB) == hc, (pname, t, hc)
            cheek = img[int(lm["nose_tip"][1]) - 1, int(lm["left_eye"][0]) - 1]
            assert _nearest(cheek, R.SKIN_RGB) == hc % 4, (pname, t)
            ex, ey = lm["left_eye"]
            iris = img[int(round(ey)), int(round(ex)) + 2]             # beside the pupil
            assert _nearest(iris, R.EYE_RGB) == hc % 3, (pname, t)


# --------------------------------------------------------------------------
# parameters and sampling
# --------------------------------------------------------------------------

def test_params_from_normal_uniform():
    u = np.random.default_rng(0).standard_normal((20000, R.LATENT_FACTORS))
    b = R.params_from_normal(u)
    assert len(b) == 20000
    for attr, values in ATTRIBUTES.items():
        counts = np.bincount(b.attr(attr), minlength=len(values))
        expected = 20000 / len(values)
        assert np.all(np.abs(counts - expected) < 0.08 * expected), (attr, counts)
    for p in IDENTITY:
        x = b.attr(p)
        assert x.min() >= 0 and x.max() <= 1
        hist = np.histogram(x, bins=10, range=(0, 1))[0]
        assert np.all(np.abs(hist - 2000) < 200), (p, hist)
    b2 = R.params_from_normal(u)
    assert (b.disc == b2.disc).all() and (b.cont == b2.cont).all()
    # monotone, with bin edges at the normal quantiles
    z = np.zeros((3, R.LATENT_FACTORS))
    z[:, 0] = [-3.0, 0.0, 3.0]
    assert list(R.params_from_normal(z).attr("hair_color")) == [0, 3, 6]
    assert np.allclose(R.normal_cdf(np.array([-1.0, 0.0, 1.96])), [0.158655, 0.5, 0.975002], atol=1e-6)


def test_faces_from_z_reads_the_pixel_normalised_latent():
    import torch

    from styleclip_lib.models.stylegan2 import PixelNorm

    z = torch.randn(500, 128, generator=torch.Generator().manual_seed(3))
    faces = R.faces_from_z(z)
    # the mapping network sees PixelNorm(z): scaling z must not change the face ...
    again = R.faces_from_z(z * 1.7)
    assert (faces.disc == again.disc).all() and np.allclose(faces.cont, again.cont, atol=1e-6)
    # ... and the face is params_from_normal of the normalised numbers, not of the raw ones
    u = PixelNorm()(z).double().numpy()[:, : R.LATENT_FACTORS]
    assert (R.params_from_normal(u).disc == faces.disc).all()
    assert (R.params_from_normal(z.double().numpy()[:, : R.LATENT_FACTORS]).disc != faces.disc).any()
    with pytest.raises(ValueError, match="expected latents"):
        R.faces_from_z(np.zeros((2, R.LATENT_FACTORS - 1)))


def test_sample_params_uniform_and_seeded():
    b = R.sample_params(7000, seed=5)
    for attr, values in ATTRIBUTES.items():
        counts = np.bincount(b.attr(attr), minlength=len(values))
        assert counts.min() > 0.8 * 7000 / len(values)
    assert (R.sample_params(10, 1).disc == R.sample_params(10, 1).disc).all()


def test_round_trips():
    b = R.sample_params(50, seed=2)
    v = b.to_vectors()
    assert v.shape == (50, R.VECTOR_DIM) and v.dtype == np.float32
    b2 = FaceBatch.from_vectors(v)
    assert (b2.disc == b.disc).all() and np.allclose(b2.cont, b.cont)
    for p in b[:10]:
        assert FaceParams.from_vector(p.to_vector()) == p
        assert FaceParams.from_dict(p.to_dict()) == p
        assert FaceParams.from_dict(p.to_dict(names=False)) == p
        assert p.to_vector().sum() == pytest.approx(len(ATTRIBUTES) + sum(p.to_dict()[q] for q in IDENTITY))
    assert FaceBatch.from_list(b.to_list()).disc.tolist() == b.disc.tolist()
    assert BASE.replace(hair_color="purple").value("hair_color") == "purple"
    with pytest.raises(ValueError):
        FaceParams(hair_color="green")
    with pytest.raises(ValueError):
        FaceParams(face_width=1.5)


def test_observable():
    bald = BASE.replace(hair_style="bald")
    assert not R.observable("hair_color", bald)
    assert R.observable("hair_color", bald.replace(beard="yes"))
    assert R.observable("hair_color", BASE)
    assert all(R.observable(a, bald) for a in ATTRIBUTES if a != "hair_color")
    b = R.sample_params(200, seed=9)
    m = R.observable_mask(b)
    assert m.shape == (200, len(ATTRIBUTES))
    assert all(m[i, 0] == R.observable("hair_color", b[i]) for i in range(200))
    # a bald, beardless face's hair colour only shows in the (small) eyebrows
    imgs = R.render_batch([bald.replace(hair_color=c) for c in (0, 5)], S)
    ch = _changed(imgs[0], imgs[1])
    ey = R.landmarks(bald, S)["left_eye"][1]
    assert 0 < ch.sum() < 100 and not ch[int(ey) - 1:].any() and not ch[: int(ey) - 12].any()


# --------------------------------------------------------------------------
# landmarks
# --------------------------------------------------------------------------

def test_landmarks():
    b = R.sample_params(64, seed=11)
    imgs = R.render_batch(b, S)
    for p, img in zip(b, imgs):
        lm = R.landmarks(p, S)
        (lx, ly), (rx, ry) = lm["left_eye"], lm["right_eye"]
        assert lx < rx and ly == pytest.approx(ry)
        assert abs(ly - (R.EYE_Y + 1) * S / 2 + 0.5) < 1e-6        # aligned eye line
        assert abs((lx + rx) / 2 - (S - 1) / 2) < 1e-6             # centred
        mouth_y = (lm["mouth_left"][1] + lm["mouth_right"][1]) / 2
        assert ly < lm["nose_tip"][1] < mouth_y
        assert lm["mouth_left"][0] < lm["mouth_right"][0]
        bg = R.BG_RGB[p.background] * 255
        for name, (x, y) in lm.items():
            assert 0 <= x < S and 0 <= y < S
            assert np.abs(img[int(round(y)), int(round(x))] - bg).max() > 25, name   # on the face
    # pupils: the eye landmark is dark at 128 px
    big = R.render_batch(b[:8], 128)
    for p, img in zip(b[:8], big):
        for eye in ("left_eye", "right_eye"):
            x, y = R.landmarks(p, 128)[eye]
            assert img[int(round(y)), int(round(x))].sum() < 250
    l64, l128 = R.landmarks(b[0], 64), R.landmarks(b[0], 128)
    assert np.allclose(np.array(l128["nose_tip"]), (np.array(l64["nose_tip"]) + 0.5) * 2 - 0.5)


# --------------------------------------------------------------------------
# captions and prompts
# --------------------------------------------------------------------------

def test_captions_true_and_parseable():
    rng = np.random.default_rng(0)
    b = R.sample_params(500, seed=12)
    seen_bald_colour = False
    for p in b:
        text, stated = C.caption(p, rng, return_attrs=True)
        parsed = set(C.parse_prompt(text))
        assert parsed <= C.true_attributes(p), (text, p.to_dict())
        assert parsed == stated, text
        assert parsed, text
        if p.value("hair_style") == "bald" and ("hair_color", p.value("hair_color")) in parsed:
            seen_bald_colour = True
            assert p.value("beard") == "yes" and "beard" in text
    assert seen_bald_colour
    # n_attrs and the unobservable hair colour of a bald, beardless face
    bald = BASE.replace(hair_style="bald", hair_color="purple")
    for s in range(50):
        t = C.caption(bald, s, n_attrs=8)
        assert ("hair_color", "purple") not in C.parse_prompt(t)
        assert len(C.parse_prompt(t)) == 7
    assert len(C.parse_prompt(C.caption(BASE, 0, n_attrs=2))) == 2


def test_edit_prompts_parse_back():
    assert len(C.EDIT_PROMPTS) >= 20
    covered = {(a, v) for _, a, v in C.EDIT_PROMPTS}
    for attr, values in ATTRIBUTES.items():
        for v in values:
            if v != R.DEFAULT_VALUES[attr]:
                assert (attr, v) in covered
    for prompt, attr, value in C.EDIT_PROMPTS + C.EDIT_PROMPT_SYNONYMS:
        assert C.parse_prompt(prompt) == [(attr, value)], prompt
    for attr in ATTRIBUTES:
        assert C.parse_prompt(C.neutral_prompt_for(attr)) == []
    assert C.prompt_for("hair_color", "purple") == "purple hair"
    assert C.prompt_for("mouth", "smile") == "a smiling face"
    assert C.prompt_for("glasses", "yes") == "a face with glasses"
    assert C.prompt_for("hair_style", "bald") == "a bald person"
    assert C.prompt_for("hair_color", "purple", synonym=1) == "violet hair"


def test_parse_prompt_synonyms():
    P = C.parse_prompt
    assert P("Violet hair") == [("hair_color", "purple")]
    assert P("a face WITH blond hair") == [("hair_color", "blonde")]
    assert P("without glasses") == [("glasses", "no")]
    assert P("a shocked person with spectacles") == [("mouth", "open"), ("glasses", "yes")]
    assert set(P("long golden hair")) == {("hair_color", "blonde"), ("hair_style", "long")}
    assert set(P("a bald man with a red beard")) == {("hair_style", "bald"), ("hair_color", "red"),
                                                     ("beard", "yes")}
    assert P("clean-shaven") == [("beard", "no")]
    assert P("a face on a pink background") == [("background", "pink")]
    assert set(P("brown eyes, brown skin")) == {("eye_color", "brown"), ("skin_tone", "brown")}
    assert P("a face") == [] and P("hair") == []
    for (attr, value), phrases in C.SYNONYMS.items():
        for ph in phrases:
            assert (attr, value) in P(ph), ph
