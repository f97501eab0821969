"""The shipped toy world: loaders return the trained models, and they are good enough to edit with.

Floors a little under what the shipped weights measure on these small samples (the full figures
come from ``python -m styleclip_lib.toy.evaluate``): a broken or truncated checkpoint, a renderer
that drifted from what the models learnt, or a regression in a retrained world fails here.
"""
import numpy as np
import pytest
import torch

import styleclip_lib as sc
from styleclip_lib.toy import render as R
from styleclip_lib.toy import evaluate as E
from styleclip_lib.toy.nets import IdentityNet, ToyEncoder, load_net
from styleclip_lib.toy import weights_path
from styleclip_lib.toy.train import load_toy_embed


@pytest.fixture(scope="module")
def world():
    return {"g": sc.load_generator("toy"), "clip": sc.load_clip("toy"), "judge": load_net(weights_path("toy-judge"), "judge")}


def test_loaders_return_the_shipped_models(world):
    g = world["g"]
    assert (g.resolution, g.w_dim, g.num_ws) == (64, 128, 10)
    assert world["clip"].input_resolution == 64
    assert isinstance(sc.load_arcface("toy"), IdentityNet)
    assert isinstance(sc.load_e4e("toy"), ToyEncoder)
    assert weights_path("toy-fs3").exists()


def test_judge_reads_fresh_renders(world):
    res = E.evaluate_judge(world["judge"], 96, seed=99)
    assert min(v for k, v in res["accuracy"].items() if k != "all_attributes") >= 0.97, res  # measured 1.0


def test_generator_samples_look_like_renders(world):
    res = E.evaluate_generator(world["g"], world["judge"], 96, seed=98)
    assert res["confident_all_attributes"] >= 0.75, res  # measured 0.87 (issue target 0.9, see the note)
    # the intended (renderer) attributes of z are what the judge sees
    agree = res["agreement_with_intended"]
    assert np.mean([agree[a] for a in R.ATTR_NAMES]) >= 0.95, agree  # measured 0.99


def test_generator_from_exact_codes_scores_the_synthesis_alone(world):
    """The same faces drawn from their exact codes (the W the synthesis network learnt) and through the
    mapping: the gap is the mapping's; codes built from the wrong faces would draw faces the judge
    reads as other values, and codes in the wrong dtype or order would fail to draw faces at all."""
    embed = load_toy_embed(weights_path("toy-generator"))
    res = E.evaluate_generator(world["g"], world["judge"], 96, seed=98, embed=embed)
    assert res["confident_exact_codes"] >= 0.85, res  # measured 0.96 (the mapping: 0.92 on these)
    assert res["confident_exact_codes"] >= res["confident_all_attributes"] - 0.05, res
    assert set(res["unsure_share"]) == set(R.ATTR_NAMES) and max(res["unsure_share"].values()) <= 0.2, res
    # a truncated sample is not the exact code's distribution: no synthesis-alone figure then
    assert "confident_exact_codes" not in E.evaluate_generator(world["g"], world["judge"], 8, seed=98, truncation=0.7, embed=embed)


def test_clip_retrieves_single_attributes(world):
    res = E.evaluate_clip(world["clip"], 96, seed=97)
    assert res["image_to_text_mean"] >= 0.9 and res["text_to_image_mean"] >= 0.9, res  # measured 0.99 / 1.0
    # every attribute, the few-pixel ones (eye colour, mouth: 0.94) included
    assert min(res["image_to_text_top1"].values()) >= 0.8, res
    # each attribute is scored on the renders that show it: all 96 show the mouth, fewer the hair colour (bald)
    assert res["image_to_text_n"]["mouth"] == 96 and 0 < res["image_to_text_n"]["hair_color"] < 96, res["image_to_text_n"]
    # text changes point where image changes do (what global directions assume), every prompt
    align = res["edit_alignment"]
    assert len(align["per_prompt"]) == 25 and align["mean"] >= 0.7 and align["min"] >= 0.3, align


def test_global_directions_edit_the_hair_colour(world):
    models = sc.load_models("toy", "cpu")
    w = models.sample_w_plus(16, seed=5)
    out = models.global_directions()(w, "blue hair", "hair", alpha=4.1, beta=0.15)
    assert out.num_channels > 0
    pred = E.judge_predictions(world["judge"], out.images)
    blue = R.ATTRIBUTES["hair_color"].index("blue")
    bald = pred["hair_style"] == R.ATTRIBUTES["hair_style"].index("bald")
    assert (pred["hair_color"][~bald] == blue).mean() >= 0.5, pred["hair_color"]


def test_shipped_fs3_ranks_each_prompts_own_channel_first(world):
    """The toy fs3 is scaled so that its longest row is a unit vector (``normalize='magnitude'``), and
    for every edit prompt the most relevant channel is one that the prompt's attribute owns
    (``toy.train.own_styles``): the relevance finds the attribute's channels, not its neighbours'."""
    from styleclip_lib.toy.captions import EDIT_PROMPTS, neutral_prompt_for
    from styleclip_lib.toy.train import group_slices

    models = sc.load_models("toy", "cpu")
    assert models.fs3_normalize == "magnitude"
    gd = models.global_directions()
    g, fs3 = models.generator, gd.fs3.double()
    norms = fs3.norm(dim=1)
    assert abs(float(norms.max()) - 1) < 1e-3
    owner = np.concatenate([[k for k, s in group_slices(g.style_channels[i]).items() for _ in range(s.stop - s.start)]
                            for i in g.conv_style_indices])
    misses = [p for p, attr, _ in EDIT_PROMPTS
              if owner[int((fs3 @ gd.text_direction(p, neutral_prompt_for(attr)).double()).abs().argmax())] != attr]
    assert len(misses) <= 2, misses


def test_shipped_fs3_is_the_correlational_fs3_of_the_shipped_models():
    """The toy fs3 is ``compute_fs3_correlation`` of the shipped generator and CLIP: recomputed on the
    first 500 of its 4000 samples (the same seed-5 stream), every edit prompt's relevance points
    the same way as the shipped one's.  A generator, CLIP or fs3 shipped out of step fails here."""
    from styleclip_lib import global_directions as GD
    from styleclip_lib.toy.captions import EDIT_PROMPTS, neutral_prompt_for

    models = sc.load_models("toy", "cpu")
    assert models.fs3_method == "correlation"
    gd = models.global_directions()
    mean, std = models.style_statistics()
    fs3 = GD.compute_fs3_correlation(models.generator, GD.clip_image_features(models.clip), n_images=500,
                                     truncation=models.truncation, style_mean=mean, style_std=std, progress=False,
                                     normalize=models.fs3_normalize)
    cos = [float(torch.nn.functional.cosine_similarity(fs3.double() @ dt, gd.fs3.double() @ dt, dim=0))
           for dt in (gd.text_direction(p, neutral_prompt_for(a)).double() for p, a, _ in EDIT_PROMPTS)]
    assert min(cos) >= 0.85, cos


def test_encoder_inverts_renders(world):
    res = E.evaluate_encoder(world["g"], sc.load_e4e("toy"), world["judge"], 48, seed=96)
    agree = res["judge_agreement"]
    assert np.mean([agree[a] for a in R.ATTR_NAMES]) >= 0.95, agree  # measured 0.99
    assert res["mse"] < 0.02, res  # measured 0.007


def test_method_evaluator_scores_edits(world):
    """The per-method evaluator runs end to end and its figures are computed from the judge."""
    from styleclip_lib.toy.captions import EDIT_PROMPTS
    from styleclip_lib.toy.evaluate_methods import evaluate_global, evaluate_optimization, source_faces

    models = sc.load_models("toy", "cpu")
    w, _, pred = source_faces(models.generator, world["judge"], 24, 11)
    prompts = [p for p in EDIT_PROMPTS if p[0] in ("blue hair", "a face with glasses")]
    res = evaluate_global(models, world["judge"], w, pred, 6, prompts=prompts)
    assert res["edits"] > 0 and 0 <= res["success_rate"] <= 1 and set(res["per_prompt"]) <= {p[0] for p in prompts}
    assert res["per_prompt"]["blue hair"]["success"] >= 0.3  # measured 0.7 in the closing note
    res = evaluate_optimization(models, world["judge"], w, pred, 2, steps=2, prompts=prompts[:1])
    assert res["edits"] == 2 and res["steps"] == 2


def test_mapper_evaluator_trains_and_scores_held_out_faces(world):
    from styleclip_lib.toy.evaluate_methods import evaluate_mapper

    models = sc.load_models("toy", "cpu")
    res = evaluate_mapper(models, world["judge"], 4, steps=2)
    assert res["method"] == "latent_mapper" and res["train_steps"] == 2 and res["prompt"] == "purple hair"
    assert 0 < res["edits"] <= 4 and 0 <= res["success_rate"] <= 1 and res["identity_drift"] >= 0


def test_toy_clip_ships_only_its_vocabulary_rows(world):
    """clip.pt stores the token embedding sparsely (the ~120 rows the caption language uses); the
    loader densifies it, and every caption-language token has a trained (non-zero) row."""
    from styleclip_lib.toy.train import caption_vocabulary

    sd = torch.load(weights_path("toy-clip"), weights_only=True)
    assert sd["token_embedding.weight"].is_sparse
    emb = world["clip"].token_embedding.weight
    assert emb.shape == (49408, 64 * 2) and not emb.is_sparse
    used = torch.tensor(caption_vocabulary(n_faces=2000))
    assert (emb[used].norm(dim=1) > 0).all()
    assert int((emb.norm(dim=1) > 0).sum()) < 200


def test_shipped_generator_keeps_style_ownership(world):
    """Every conv style channel of the shipped generator reads only the W dimensions of its owner
    (``toy.train.own_styles``): moving the hair-colour block of W moves hair-colour channels only.
    The ToRGB styles read nothing (``toy.train.constant_torgb_styles``)."""
    from styleclip_lib.toy import train as T

    g = world["g"]
    w_groups = T.group_slices(g.w_dim)
    w = g.mapping(torch.randn(4, g.w_dim, generator=torch.Generator().manual_seed(3)))
    w2 = w.clone()
    w2[:, w_groups["hair_color"]] += torch.randn_like(w2[:, w_groups["hair_color"]])
    for _, conv, _, is_rgb in g.style_layers():
        if is_rgb:
            assert torch.equal(conv.modulation(w2), conv.modulation(w))
            continue
        moved = (conv.modulation(w2) - conv.modulation(w)).abs().amax(0)
        own = T.group_slices(moved.numel())["hair_color"]
        assert moved[own].min() > 0
        moved[own] = 0
        assert moved.max() < 1e-3 * (conv.modulation(w2) - conv.modulation(w)).abs().max()


def test_shipped_generator_draws_global_edit_codes_as_their_target(world):
    """``toy.train.global_edit_codes``: the exact code of a face plus one global step k·E(e_t - mean)
    is drawn with value t.  Skin tone is the clearest case: measured 0.97 for the shipped generator
    at k = 2, 0.76 for one trained on exact codes only (it blends neighbouring tones)."""
    from styleclip_lib.toy import train as T

    embed = T.load_toy_embed(weights_path("toy-generator"))
    cols = T.description_slices()["skin_tone"]
    faces = R.sample_params(64, seed=21)
    a = R.ATTR_NAMES.index("skin_tone")
    rng = np.random.default_rng(0)
    target = np.array([rng.choice([v for v in range(4) if v != s]) for s in faces.disc[:, a]])
    v = faces.to_vectors()
    v[:, cols] += 2.0 * (np.eye(4, dtype=np.float32)[target] - 0.25)
    with torch.no_grad():
        pred = E.judge_predictions(world["judge"], world["g"].synthesis(embed(torch.from_numpy(v))))
    assert (pred["skin_tone"] == target).mean() >= 0.85  # 0.66 for the v3 generator (exact codes only)
