"""The toy-world training script runs end to end on a tiny schedule, exports loadable weights and resumes."""
import numpy as np
import pytest
import torch

from styleclip_lib import load_arcface, load_clip, load_e4e, load_generator
from styleclip_lib.toy import render as R
from styleclip_lib.toy import train
from styleclip_lib.toy.nets import load_net


def test_tiny_training_exports_loadable_models(tmp_path):
    out, work = tmp_path / "weights", tmp_path / "work"
    rc = train.main(["--tiny", "--quiet", "--jobs", "1", "--workdir", str(work), "--out", str(out), "--batch", "4",
                     "--stages", "generator,judge,identity,encoder,clip,clip_align,fs3"])
    assert rc == 0
    g = load_generator(out / "generator.pt")
    assert (g.resolution, g.w_dim, g.num_ws) == (64, 128, 10)
    # the synthesis polish stage (hard cases oversampled) ran between synthesis and mapping
    assert torch.load(work / "polish.ckpt", weights_only=False)["step"] == train.TINY_STEPS["polish"]
    assert torch.load(work / "blend.ckpt", weights_only=False)["step"] == train.TINY_STEPS["blend"]
    img = g.synthesis(g.mapping(torch.randn(2, 128)))
    assert img.shape == (2, 3, 64, 64) and torch.isfinite(img).all()
    clip = load_clip(out / "clip.pt")
    assert clip.input_resolution == 64 and clip.context_length == 77
    judge = load_net(out / "judge.pt", "judge")
    pred = judge.predict(img)
    assert set(pred) >= {"hair_color", "mouth", "identity"}
    enc = load_net(out / "encoder.pt", "encoder")
    assert enc(img).shape == (2, 10, 128)
    ident = load_net(out / "identity.pt", "identity")
    emb = ident(img)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    # the normal loaders dispatch toy checkpoints to the toy nets (same call contracts)
    torch.testing.assert_close(load_arcface(out / "identity.pt")(img), emb)
    torch.testing.assert_close(load_e4e(out / "encoder.pt")(img), enc(img))
    from styleclip_lib.global_directions import load_fs3

    # the polish stage made every ToRGB style a constant; the conv styles still follow W
    styles = g.styles(g.to_w_plus(g.mapping(torch.randn(4, 128))))
    for i, s in enumerate(styles):
        assert (float(s.std(0).max()) == 0.0) == (i not in g.conv_style_indices), i
    fs3 = load_fs3(out / "fs3.npy", g)
    assert fs3.shape == (g.style_channels[g.conv_style_indices[0]], 64)  # --tiny: first conv layer only
    assert torch.isfinite(fs3).all()
    # fs3 again in the same workdir, from the exported (fp16) generator: the finished progress file holds
    # the in-memory generator's statistics, so the stage starts over instead of stopping
    again = ["--tiny", "--quiet", "--jobs", "1", "--workdir", str(work), "--out", str(out), "--batch", "4"]
    assert train.main([*again, "--stages", "fs3"]) == 0
    fs3 = load_fs3(out / "fs3.npy", g)
    # then another CLIP (retrained elsewhere), same generator: fs3 must not be resumed from the old CLIP's sums
    assert train.main([*again, "--workdir", str(tmp_path / "other"), "--seed", "1", "--stages", "clip"]) == 0
    assert train.main([*again, "--stages", "fs3"]) == 0
    assert not torch.allclose(load_fs3(out / "fs3.npy", g), fs3, atol=1e-3)


def test_generator_stage_resumes_exactly(tmp_path):
    """Stopped after 2 of 3 steps, then resumed == 3 steps straight (model, optimiser, RNG restored)."""
    def run(work, *extra):
        train.main(["--quiet", "--workdir", str(work), "--no-export", "--batch", "2", "--stages", "generator",
                    "--steps", "generator=3,polish=2,blend=0,mapping=3", *extra])
        return torch.load(work / "generator.ckpt", weights_only=False)

    straight = run(tmp_path / "a")
    assert run(tmp_path / "b", "--stop-after", "2")["step"] == 2
    resumed = run(tmp_path / "b")
    assert resumed["step"] == 3
    for k, v in straight["modules"]["g"].items():
        torch.testing.assert_close(resumed["modules"]["g"][k], v, msg=k)
    polished = torch.load(tmp_path / "b" / "polish.ckpt", weights_only=False)
    assert polished["step"] == 2
    assert any(not torch.equal(polished["modules"]["g"][k], v) for k, v in resumed["modules"]["g"].items())


def test_hard_negative_captions_differ_in_what_they_state():
    """Each face gets a true caption and a counterfactual one; the truth matrix, not the strings,
    says which caption fits which face, so the contrastive targets are never wrong."""
    import numpy as np

    from styleclip_lib.toy import captions as C
    from styleclip_lib.toy import render as R
    from styleclip_lib.toy.train import caption_truth, captions_with_hard_negatives, multi_positive_clip_loss

    faces = R.sample_params(40, seed=1)
    texts, stated = captions_with_hard_negatives(faces, np.random.default_rng(0))
    assert len(texts) == len(stated) == 80
    pos = caption_truth(stated, faces)
    assert pos[:40].diagonal().all()                       # every true caption fits its face
    # most counterfactuals contradict their own face (the rest re-drew which attributes to state
    # and left the swapped one out: about 12 %; the truth matrix then counts them as positives)
    assert pos[40:].diagonal().float().mean() <= 0.25
    for t, s, f in zip(texts, stated, list(faces) * 2):     # the stated sets are what the text says
        assert set(C.parse_prompt(t)) == s
        assert C.is_true_of(t, f) == (s <= C.true_attributes(f))
    # a caption true of no face in the batch adds no text→image term (no NaN)
    logits = torch.randn(80, 40, requires_grad=True)
    loss = multi_positive_clip_loss(logits, pos)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert (logits.grad[40:][pos[40:].sum(1) == 0] != 0).any()  # still negatives for the images


def test_style_ownership_confines_each_group_to_its_own_channels():
    """With :func:`train.own_styles`, the W dimensions and style channels of one part of the face
    description depend on that part only (and stay so through training and export)."""
    from styleclip_lib.models.stylegan2 import Generator
    from styleclip_lib.toy import render as R

    torch.manual_seed(0)
    g = Generator(**train.GENERATOR_CONFIG)
    embed = torch.nn.Linear(R.VECTOR_DIM, g.w_dim)
    owned = train.own_styles(g, embed)
    opt = torch.optim.Adam([p for m in owned for p in m.parameters()], lr=0.1)
    loss = sum(m(torch.randn(3, m.weight.shape[1])).square().mean() for m in owned)
    loss.backward()
    opt.step()  # dense gradients, yet the masked entries stay zero
    train.release_styles(owned)
    assert "weight" in dict(embed.named_parameters()) and not any("parametrizations" in k for k in g.state_dict())

    cols, w_groups = train.description_slices(), train.group_slices(g.w_dim)
    assert sorted(cols) == sorted(w_groups) == sorted(train.STYLE_GROUPS)
    v = torch.rand(1, R.VECTOR_DIM, requires_grad=True)
    w = embed(v)
    for name, rows in w_groups.items():
        (grad,) = torch.autograd.grad(w[0, rows].sum(), v, retain_graph=True)
        assert grad[0, cols[name]].abs().sum() > 0
        outside = torch.ones(R.VECTOR_DIM, dtype=torch.bool)
        outside[cols[name]] = False
        assert grad[0, outside].abs().max() == 0, name

    w = torch.randn(1, g.w_dim, requires_grad=True)
    for _, conv, _, _ in g.style_layers():
        s = conv.modulation(w)
        for name, chans in train.group_slices(s.shape[1]).items():
            (grad,) = torch.autograd.grad(s[0, chans].sum(), w, retain_graph=True)
            outside = torch.ones(g.w_dim, dtype=torch.bool)
            outside[w_groups[name]] = False
            assert grad[0, outside].abs().max() == 0 and grad[0, w_groups[name]].abs().sum() > 0, name


def test_value_ownership_gives_each_value_its_own_channels():
    """With value ownership (:data:`train.VALUE_OWNERSHIP`, an option of the recipe), inside an
    attribute's block each value's one-hot column drives only its own W sub-block, and those W dimensions only its own channel sub-block of every
    layer that has a channel per value (in layers with fewer channels the block reads no W)."""
    from styleclip_lib.models.stylegan2 import Generator
    from styleclip_lib.toy import render as R

    torch.manual_seed(1)
    g = Generator(**train.GENERATOR_CONFIG)
    embed = torch.nn.Linear(R.VECTOR_DIM, g.w_dim)
    owned = train.own_styles(g, embed, by_value=True)
    train.release_styles(owned)
    cols, w_groups = train.description_slices(), train.group_slices(g.w_dim)
    n_split = 0
    for attr, values in R.ATTRIBUTES.items():
        w_sub = train.value_slices(w_groups[attr], len(values))
        assert w_sub is not None and len(w_sub) == len(values)
        for k in range(len(values)):
            v = torch.zeros(1, R.VECTOR_DIM)
            v[0, cols[attr].start + k] = 1.0
            dw = (embed(v) - embed(torch.zeros(1, R.VECTOR_DIM)))[0]
            inside = torch.zeros(g.w_dim, dtype=torch.bool)
            inside[w_sub[k]] = True
            assert dw[inside].abs().sum() > 0 and dw[~inside].abs().max() == 0, (attr, values[k])
            w = torch.randn(1, g.w_dim)
            w2 = w.clone()
            w2[0, w_sub[k]] += 1.0
            for _, conv, _, _ in g.style_layers():
                ds = (conv.modulation(w2) - conv.modulation(w))[0].abs()
                block = train.group_slices(ds.numel())[attr]
                sub = train.value_slices(block, len(values))
                if sub is None:  # fewer channels than values: constant styles, no owner
                    assert ds.max() == 0, (attr, values[k], ds.numel())
                    continue
                own = torch.zeros(ds.numel(), dtype=torch.bool)
                own[sub[k]] = True
                n_split += 1
                assert ds[own].sum() > 0 and ds[~own].max() == 0, (attr, values[k], ds.numel())
    assert n_split > 0
    assert train.value_slices(slice(10, 13), 4) is None
    assert train.value_slices(slice(10, 17), 3) == [slice(10, 13), slice(13, 15), slice(15, 17)]


def test_group_slices_partition_every_layer():
    for n in (32, 64, 96, 128):
        sl = train.group_slices(n)
        sizes = [s.stop - s.start for s in sl.values()]
        assert sum(sizes) == n and min(sizes) >= 1 and list(sl.values())[-1].stop == n
        assert [s.start for s in sl.values()][1:] == [s.stop for s in sl.values()][:-1]


def test_global_edit_codes_move_one_attribute_to_its_argmax():
    import numpy as np

    from styleclip_lib.toy import render as R

    faces = R.sample_params(200, seed=4)
    rng = np.random.default_rng(0)
    vectors, shown = train.global_edit_codes(faces, rng, p=0.5, strength=(1.25, 4.0))
    cols = train.description_slices()
    changed = (shown.disc != faces.disc).sum(1)
    assert set(np.unique(changed)) == {0, 1}          # one attribute per edited face, at most
    assert 0.3 < changed.mean() < 0.7                 # about p of the faces
    np.testing.assert_array_equal(R.FaceBatch.from_vectors(vectors).disc, shown.disc)  # the code's argmax is the shown value
    assert np.allclose(shown.cont, faces.cont)
    for i in np.nonzero(changed)[0]:
        a = int(np.nonzero(shown.disc[i] != faces.disc[i])[0][0])
        name = R.ATTR_NAMES[a]
        code = vectors[i, cols[name]]
        s, t = faces.disc[i, a], shown.disc[i, a]
        step = (code - np.eye(len(code))[s])
        k = step[t] / (1 - 1 / len(code))
        assert 1.25 - 1e-5 <= k <= 4.0 + 1e-5
        # the same step from every source: k·(e_t - 1/V)
        np.testing.assert_allclose(step, k * (np.eye(len(code))[t] - 1 / len(code)), atol=1e-5)
    untouched = changed == 0
    np.testing.assert_array_equal(vectors[untouched], faces.to_vectors()[untouched])



def test_edit_alignment_loss_scores_the_direction_of_changes():
    img = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)  # 3 bases, then their 3 twins
    d = img[3:] - img[:3]
    src = torch.randn(3, 8)
    keep = torch.tensor([True, True, True])
    aligned = torch.cat([src, src + 2.5 * d])  # the text moves as the image does (any length)
    assert train.edit_alignment_loss(img, aligned, keep).item() < 1e-5
    opposed = torch.cat([src, src - d])
    torch.testing.assert_close(train.edit_alignment_loss(img, opposed, keep), torch.tensor(2.0))
    mixed = torch.cat([src, torch.stack([src[0] + d[0], src[1] - d[1], src[2] - d[2]])])
    only_first = torch.tensor([True, False, False])  # unobservable pairs do not count
    assert train.edit_alignment_loss(img, mixed, only_first).item() < 1e-5


def test_edit_text_pairs_name_the_twins_values():
    import numpy as np
    from styleclip_lib.toy import captions as C, render as R

    rng = np.random.default_rng(0)
    base = R.sample_params(40, seed=1)
    focus = [list(R.ATTRIBUTES)[i % len(R.ATTRIBUTES)] for i in range(40)]
    twins = [p.replace(**{a: train._other_value(p, a, rng)}) for p, a in zip(base, focus)]
    faces = R.FaceBatch.concat([base, R.FaceBatch.from_list(twins)])
    texts, keep = train.edit_text_pairs(faces, focus * 2, rng)
    src, tgt = texts[:40], texts[40:]
    for j, a in enumerate(focus):
        assert set(C.parse_prompt(tgt[j])) == {(a, twins[j].value(a))}, tgt[j]
        assert src[j] == C.neutral_prompt_for(a) or set(C.parse_prompt(src[j])) == {(a, base[j].value(a))}, src[j]
        assert keep[j] == (R.observable(a, base[j]) and R.observable(a, twins[j]))
    assert 5 < sum(s in {C.neutral_prompt_for(a) for a in R.ATTRIBUTES} for s in src) < 35


def test_constant_torgb_styles_keep_their_mean_and_stay_constant_while_training():
    from styleclip_lib.models.stylegan2 import Generator
    from styleclip_lib.toy import render as R

    torch.manual_seed(0)
    g = Generator(**{**train.GENERATOR_CONFIG, "size": 16, "channels": {4: 16, 8: 16, 16: 16}, "n_mlp": 1})
    embed = torch.nn.Linear(R.VECTOR_DIM, g.w_dim)
    train.own_styles(g, embed)
    rgb = [conv.modulation for _, conv, _, is_rgb in g.style_layers() if is_rgb]
    with torch.no_grad():
        w = embed(torch.from_numpy(R.sample_params(256, seed=3).to_vectors()))
        mean_before = [m(w).mean(0) for m in rgb]
        conv_before = g.conv1.conv.modulation(w[:2])
    train.constant_torgb_styles(g, embed, n=256, seed=3)
    with torch.no_grad():
        for m, before in zip(rgb, mean_before):  # the constant is the mean style over the faces
            torch.testing.assert_close(m(torch.randn(3, g.w_dim)), before.expand(3, -1))
        torch.testing.assert_close(g.conv1.conv.modulation(w[:2]), conv_before)  # conv styles untouched
    opt = torch.optim.Adam(g.parameters(), lr=0.1)
    for _ in range(2):  # training moves everything it can; the ToRGB styles must still ignore W
        opt.zero_grad()
        g.synthesis(w[:4, None].expand(-1, g.num_ws, -1)).square().mean().backward()
        opt.step()
    with torch.no_grad():
        for m in rgb:
            out = m(torch.randn(5, g.w_dim))
            assert float((out - out[:1]).abs().max()) == 0.0


def test_blend_weights_cross_fade_the_two_leading_values():
    import numpy as np

    e = np.eye(4, dtype=np.float32)
    for lam in (0.2, 0.4, 0.8):  # on the segment between one-hots: the pixel cross-fade
        top, second, w = train.blend_weights((1 - lam) * e[1] + lam * e[3])
        assert {top, second} == {1, 3}
        assert np.isclose(w, max(lam, 1 - lam)) and (top == 3) == (lam > 0.5)
    for v in (0, 2):  # a one-hot is its own value, unblended
        assert train.blend_weights(e[v])[0::2] == (v, 1.0)
    for k, expect in ((0.5, 0.75), (1.5, 0.75), (2.0, 1.0), (3.0, 1.0)):  # global step: pure target from k = 2
        top, second, w = train.blend_weights(e[1] + k * (e[3] - 0.25))
        assert np.isclose(w, expect) and (top == 3) == (k > 1)


def test_blended_edit_codes_and_render_blend():
    import numpy as np

    from styleclip_lib.toy import render as R

    faces = R.sample_params(120, seed=5)
    vectors, top, second, weight = train.blended_edit_codes(faces, np.random.default_rng(1), p=0.5)
    cols = train.description_slices()
    moved = (vectors != faces.to_vectors()).any(1)
    assert 0.3 < moved.mean() < 0.7 and (weight[~moved] == 1).all()
    assert (weight >= 0.5).all() and (weight <= 1).all() and (weight[moved] < 1).any()
    for i in np.nonzero(moved)[0]:  # one attribute per face; top/second are its two largest coefficients
        diff = [a for a in R.ATTR_NAMES if not np.array_equal(vectors[i, cols[a]], faces[i:i + 1].to_vectors()[0, cols[a]])]
        assert len(diff) == 1
        a = R.ATTR_NAMES.index(diff[0])
        code = vectors[i, cols[diff[0]]]
        assert train.blend_weights(code) == (top.disc[i, a], second.disc[i, a], weight[i])
        others = [j for j in range(len(R.ATTR_NAMES)) if j != a]
        assert (top.disc[i, others] == faces.disc[i, others]).all() and (second.disc[i, others] == faces.disc[i, others]).all()
    idx = np.nonzero((weight > 0.55) & (weight < 0.95))[0][:3]
    img = train.render_blend(top[idx], second[idx], weight[idx])
    w = torch.from_numpy(weight[idx]).view(-1, 1, 1, 1)
    expect = w * train.render_tensor(top[idx]) + (1 - w) * train.render_tensor(second[idx])
    torch.testing.assert_close(img, expect)


def test_blend_stage_keeps_w_and_the_torgb_styles_fixed(tmp_path):
    from styleclip_lib.models.stylegan2 import Generator
    from styleclip_lib.toy import render as R

    torch.manual_seed(0)
    g = Generator(**{**train.GENERATOR_CONFIG, "channels": {4: 8, 8: 8, 16: 8, 32: 8, 64: 8}, "n_mlp": 1})
    embed = torch.nn.Linear(R.VECTOR_DIM, g.w_dim)
    train.own_styles(g, embed)
    train.constant_torgb_styles(g, embed, n=64)
    before = {k: v.clone() for k, v in g.state_dict().items()}
    embed_before = embed.weight.detach().clone()
    train.train_blend(g, embed, tmp_path, steps=2, seed=0, quiet=True, batch=2)
    after = g.state_dict()
    assert torch.equal(embed.weight, embed_before)
    for k, v in before.items():
        if k.startswith("style."):  # the mapping is not the blend stage's
            assert torch.equal(after[k], v), k
    rgb = [conv.modulation for _, conv, _, is_rgb in g.style_layers() if is_rgb]
    with torch.no_grad():
        for m in rgb:
            out = m(torch.randn(5, g.w_dim))
            assert float((out - out[:1]).abs().max()) == 0.0
    assert any(not torch.equal(after[k], v) for k, v in before.items() if "convs" in k or "conv1" in k)
    assert torch.load(tmp_path / "blend.ckpt", weights_only=False)["step"] == 2


def test_blend_stage_alone_fine_tunes_the_exported_generator(tmp_path):
    out = tmp_path / "weights"
    common = ["--tiny", "--quiet", "--out", str(out), "--batch", "2"]
    assert train.main([*common, "--workdir", str(tmp_path / "a"), "--stages", "generator", "--steps", "blend=0"]) == 0
    before = torch.load(out / "generator.pt", weights_only=False)
    assert train.main([*common, "--workdir", str(tmp_path / "b"), "--stages", "blend"]) == 0
    after = torch.load(out / "generator.pt", weights_only=False)
    assert torch.load(tmp_path / "b" / "blend.ckpt", weights_only=False)["step"] == train.TINY_STEPS["blend"]
    for k, v in before["g_ema"].items():
        if k.startswith("style."):
            assert torch.equal(after["g_ema"][k], v), k   # the mapping is kept
    assert any(not torch.equal(after["g_ema"][k], v) for k, v in before["g_ema"].items() if not k.startswith("style."))
    for k, v in before["toy_embed"].items():
        assert torch.equal(after["toy_embed"][k], v), k   # and so is W
    torch.testing.assert_close(after["latent_avg"], before["latent_avg"])
    g = load_generator(out / "generator.pt")
    assert torch.isfinite(g.synthesis(g.mapping(torch.randn(2, 128)))).all()


def test_training_device_is_validated(capsys):
    assert train.training_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert train.training_device("cpu") == torch.device("cpu")
    before = train.DEVICE
    for bad, says in [("gpu0", "expected 'cpu', 'cuda'"), *([("cuda", "CUDA is not available")] if not torch.cuda.is_available() else [])]:
        try:
            train.main(["--tiny", "--quiet", "--no-export", "--stages", "judge", "--device", bad])
        except SystemExit as e:
            assert e.code == 2
        else:
            raise AssertionError(f"--device {bad} was accepted")
        assert says in capsys.readouterr().err
        assert train.DEVICE == before  # a refused device leaves the module's setting alone


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tiny_training_on_cuda_exports_cpu_weights(tmp_path):
    out = tmp_path / "weights"
    try:
        assert train.main(["--tiny", "--quiet", "--jobs", "1", "--device", "cuda", "--workdir", str(tmp_path / "work"), "--out", str(out),
                           "--batch", "4", "--stages", "generator,judge,identity,encoder,clip,clip_pairs,clip_align,fs3"]) == 0
        assert train.DEVICE.type == "cuda"
    finally:
        train.DEVICE = torch.device("cpu")
    for f in ("generator.pt", "clip.pt", "judge.pt", "identity.pt", "encoder.pt", "style_stats.pt"):
        tensors = []
        def walk(o):
            if isinstance(o, torch.Tensor):
                tensors.append(o)
            elif isinstance(o, dict):
                [walk(v) for v in o.values()]
            elif isinstance(o, (list, tuple)):
                [walk(v) for v in o]
        walk(torch.load(out / f, weights_only=False))
        assert tensors and all(t.device.type == "cpu" for t in tensors), f
    g = load_generator(out / "generator.pt", device="cpu")
    assert torch.isfinite(g.synthesis(g.mapping(torch.randn(2, 128)))).all()


def test_two_jobs_train_what_one_process_trains(tmp_path):
    """``--jobs 2``: the two stage chains in two processes, then fs3, give the weights of one process
    (each stage keeps the seed of its place in the run), and a chain stopped by ``--stop-after``
    holds fs3 back until a rerun finishes it."""
    common = ["--tiny", "--quiet", "--batch", "4", "--threads", "1", "--stages", "generator,judge,encoder,clip,fs3"]
    saved = torch.get_num_threads()
    try:
        assert train.main([*common, "--jobs", "1", "--workdir", str(tmp_path / "one"), "--out", str(tmp_path / "w1")]) == 0
        two = [*common, "--jobs", "2", "--workdir", str(tmp_path / "two"), "--out", str(tmp_path / "w2")]
        assert train.main([*two, "--stop-after", "1"]) == 0
        assert not (tmp_path / "w2" / "fs3.npy").exists()
        assert torch.load(tmp_path / "two" / "judge.ckpt", weights_only=False)["step"] == 1
        assert train.main(two) == 0
    finally:
        torch.set_num_threads(saved)
    for name in ("generator.pt", "judge.pt", "encoder.pt", "clip.pt"):
        a, b = (torch.load(tmp_path / w / name, weights_only=False) for w in ("w1", "w2"))
        sa, sb = (x.get("state_dict", x.get("g_ema", x)) if isinstance(x, dict) else x for x in (a, b))
        flat = lambda d: {k: v for k, v in d.items() if torch.is_tensor(v)} if isinstance(d, dict) else {}
        ta, tb = flat(sa), flat(sb)
        assert ta and ta.keys() == tb.keys(), name
        for k in ta:
            torch.testing.assert_close(ta[k], tb[k], msg=f"{name}: {k}")
    import numpy as np

    # one process computes fs3 from the models in memory, --jobs from the exported fp16 files
    f1, f2 = (np.load(tmp_path / w / "fs3.npy") for w in ("w1", "w2"))
    np.testing.assert_allclose(f2, f1, rtol=0, atol=5e-2 * np.abs(f1).max())  # measured 2 %


def test_bf16_units_include_avx512_bf16(monkeypatch):
    """``--precision auto`` takes bf16 on a CPU with AVX-512 BF16 as well as on one with AMX, fp32 without either."""
    monkeypatch.setattr(train, "DEVICE", torch.device("cpu"))
    monkeypatch.setattr(train, "PRECISION", "auto")
    for amx, avx512_bf16, expected in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        assert train.has_bf16_units() is expected and train.use_bf16() is expected, (amx, avx512_bf16)
    monkeypatch.setattr(train, "PRECISION", "fp32")
    assert not train.use_bf16()


def test_fused_adam_takes_the_same_steps_as_the_loop(monkeypatch):
    """The stages' fused Adam(W) computes the reference update; MPS keeps the loop."""
    torch.manual_seed(0)
    ref = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    mine = [p.detach().clone().requires_grad_(True) for p in ref]
    monkeypatch.setattr(train, "DEVICE", torch.device("cpu"))
    fused = train.adam(mine, 1e-2, adamw=True, weight_decay=0.05, betas=(0.9, 0.98))
    assert fused.defaults["fused"] and isinstance(fused, torch.optim.AdamW)
    loop = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.05, betas=(0.9, 0.98))
    for _ in range(3):
        for params, opt in ((ref, loop), (mine, fused)):
            opt.zero_grad()
            sum((p ** 3).sum() for p in params).backward()
            opt.step()
    for a, b in zip(ref, mine):
        torch.testing.assert_close(b, a)
    assert not (ref[0] == mine[0].new_zeros(())).all()
    monkeypatch.setattr(train, "DEVICE", torch.device("mps"))
    assert not train.adam([torch.zeros(2, requires_grad=True)], 1e-3).defaults.get("fused")


def test_boundary_biased_z_sits_next_to_bin_edges():
    """A share p_edge of the rows has one attribute factor within a few hundredths of an inner bin edge."""
    import numpy as np
    from statistics import NormalDist

    from styleclip_lib.toy import render as R

    z = train.boundary_biased_normal(4000, np.random.default_rng(0), p_edge=0.5)
    assert z.shape == (4000, R.LATENT_FACTORS)
    np.testing.assert_array_equal(z, train.boundary_biased_normal(4000, np.random.default_rng(0), p_edge=0.5))
    counts = [len(v) for v in R.ATTRIBUTES.values()]
    edges = [np.array([NormalDist().inv_cdf(k / c) for k in range(1, c)]) for c in counts]
    near_edge = lambda z: np.stack([np.abs(z[:, a, None] - edges[a][None]).min(1) < 0.1 for a in range(len(counts))], 1)
    near = near_edge(z)
    # half the rows were moved next to an edge; the others land that close by chance as often as plain draws
    by_chance = near_edge(train.boundary_biased_normal(4000, np.random.default_rng(1), p_edge=0.0)).any(1).mean()
    assert abs(near.any(1).mean() - (by_chance + 0.5 * (1 - by_chance))) < 0.03, (near.any(1).mean(), by_chance)
    every_edge = {(a, int(np.abs(z[i, a] - edges[a]).argmin())) for i, a in zip(*np.nonzero(near))}
    assert len(every_edge) == sum(c - 1 for c in counts)  # every inner edge of every attribute is visited


def test_recipes_name_every_stage_and_the_hour_is_shorter_than_full():
    for name, steps in train.RECIPES.items():
        assert set(steps) == set(train.FULL_STEPS), name
    hour, full = train.RECIPES["hour"], train.FULL_STEPS
    assert all(hour[k] <= full[k] for k in full) and sum(hour.values()) < sum(full.values())


def test_each_recipe_trains_its_own_main_synthesis_stage(tmp_path, monkeypatch):
    """The hour recipe's main synthesis stage oversamples smiles in beards and weighs the mouth more;
    the full recipe keeps the settings that made the shipped weights."""
    assert set(train.MAIN_STAGE) == set(train.RECIPES)
    assert train.MAIN_STAGE["full"] == dict(focus_share=0.0, mouth_weight=4.0)
    seen = {}

    def fake(workdir, steps, seed, quiet, **kw):
        seen.update(kw)
        raise train.Paused("stop here")

    monkeypatch.setattr(train, "train_generator", fake)
    for recipe in ("hour", "full"):
        assert train.main(["--tiny", "--recipe", recipe, "--stages", "generator", "--jobs", "1", "--no-export", "--quiet",
                           "--workdir", str(tmp_path)]) == 0
        assert {k: seen[k] for k in ("focus_share", "mouth_weight")} == train.MAIN_STAGE[recipe]
        assert seen["batch"] == 8  # --tiny's batch overrides the recipe's
        assert train.main(["--recipe", recipe, "--stages", "generator", "--jobs", "1", "--no-export", "--quiet",
                           "--workdir", str(tmp_path)]) == 0
        assert seen["batch"] == train.SYNTHESIS_BATCH[recipe]
    assert train.SYNTHESIS_BATCH["hour"] == 16 and train.SYNTHESIS_BATCH["full"] == train.BATCH["generator"] == 32
    # and the focus reaches the batches: a share of the faces shows the POLISH values
    def smile_in_beard(share):
        faces = train.sample_focused(4000, np.random.default_rng(0), share)
        return np.mean((faces.disc[:, R.ATTR_NAMES.index("mouth")] == R.ATTRIBUTES["mouth"].index("smile"))
                       & (faces.disc[:, R.ATTR_NAMES.index("beard")] == R.ATTRIBUTES["beard"].index("yes")))

    share, plain = train.MAIN_STAGE["hour"]["focus_share"], smile_in_beard(0.0)
    assert abs(smile_in_beard(share) - (share + (1 - share) * plain)) < 0.03, (smile_in_beard(share), plain)


def test_each_recipe_trains_its_own_clip_phases(tmp_path, monkeypatch):
    """The hour's later CLIP phases both carry the edit-alignment term (what teaches its CLIP the mouth), the
    full recipe's keep the settings that made the shipped CLIP."""
    assert set(train.RECIPE_CLIP_PHASES) == set(train.RECIPES) and train.RECIPE_CLIP_PHASES["full"] == train.CLIP_PHASES
    seen = {}

    def fake(workdir, steps, seed, quiet, name="clip", **kw):
        seen[name] = kw
        return torch.nn.Linear(1, 1)

    monkeypatch.setattr(train, "train_clip", fake)
    for recipe in ("hour", "full"):
        seen.clear()
        assert train.main(["--tiny", "--recipe", recipe, "--stages", "clip_pairs,clip_align", "--jobs", "1", "--no-export",
                           "--quiet", "--workdir", str(tmp_path)]) == 0
        for phase in ("clip_pairs", "clip_align"):
            expected = {"lr": train.LATER_CLIP_LR, **train.RECIPE_CLIP_PHASES[recipe][phase]}
            assert {k: v for k, v in seen[phase].items() if k in ("pairs", "align", "lr")} == expected, (recipe, phase)
            assert seen[phase]["lr"] == (6e-4 if recipe == "hour" else 3e-4)
    assert "align" not in train.CLIP_PHASES["clip_pairs"] and train.HOUR_CLIP_PHASES["clip_pairs"]["align"] > 0
    assert train.HOUR_CLIP_PHASES["clip_align"]["pairs"]["mouth"] > train.ALIGN_PAIR_WEIGHT["mouth"]
    assert set(train.HOUR_CLIP_PHASES["clip_align"]["pairs"]) == set(R.ATTRIBUTES)  # every attribute keeps aligning


def test_a_finished_chain_hands_its_threads_to_the_other(tmp_path, monkeypatch):
    """--jobs 2: when one chain exits well, the one still running is told (SIGUSR1) to use every thread."""
    import signal
    import subprocess
    import sys

    if not hasattr(signal, "SIGUSR1"):
        pytest.skip("no SIGUSR1 on this platform")
    flag = tmp_path / "threads"
    waiter = ("import os, signal, sys, time, torch\n"
              "from styleclip_lib.toy import train\n"
              "torch.set_num_threads(1)\n"
              "def on(*a):\n"
              "    train._take_all_threads()\n"
              f"    open({str(flag)!r}, 'w').write(str(torch.get_num_threads()))\n"
              "signal.signal(signal.SIGUSR1, on)\n"
              "open(sys.argv[1], 'w').close()\n"
              f"t = time.time()\nwhile not os.path.exists({str(flag)!r}) and time.time() - t < 60:\n    time.sleep(0.05)\n")
    ready = tmp_path / "ready"
    env = {**__import__("os").environ, train.THREADS_ENV: "2"}
    slow = subprocess.Popen([sys.executable, "-c", waiter, str(ready)], env=env)
    import time

    t = time.time()
    while not ready.exists() and time.time() - t < 60:  # the handler is installed
        time.sleep(0.05)
    quick = subprocess.Popen([sys.executable, "-c", "pass"])
    assert train._wait_handing_over_threads([slow, quick]) == [0, 0]
    assert flag.read_text() == "2"


def test_auto_recipe_and_jobs_fit_the_machine(monkeypatch):
    """--recipe auto: full on CUDA, the hour recipe elsewhere; --jobs auto: two chains only where both
    chains run, export, and there are threads (or a GPU) to share."""
    import argparse

    assert train.resolve_recipe("auto", torch.device("cuda")) == "full"
    assert train.resolve_recipe("auto", torch.device("cpu")) == "hour"
    assert train.resolve_recipe("quick", torch.device("cuda")) == "quick"
    every = ["generator", "judge", "identity", "encoder", "clip", "fs3"]
    args = lambda **k: argparse.Namespace(**{"threads": 2, "no_export": False, "stage_indices": "", **k})
    monkeypatch.setattr(train, "DEVICE", torch.device("cpu"))
    assert train.resolve_jobs("auto", every, args()) == 2
    assert train.resolve_jobs("auto", every, args(threads=1)) == 1
    assert train.resolve_jobs("auto", every, args(no_export=True)) == 1
    assert train.resolve_jobs("auto", every, args(stage_indices="0,2")) == 1  # a chain's own process
    assert train.resolve_jobs("auto", ["generator", "encoder"], args()) == 1
    assert train.resolve_jobs("2", ["generator"], args()) == 2
    monkeypatch.setattr(train, "DEVICE", torch.device("mps"))
    assert train.resolve_jobs("auto", every, args()) == 1


def test_a_run_says_when_the_hour_recipe_will_not_fit_the_hour(monkeypatch):
    """Without bf16 units a CPU trains in fp32, half as long again as the hour: the first line says so."""
    monkeypatch.setattr(train, "DEVICE", torch.device("cpu"))
    monkeypatch.setattr(train, "PRECISION", "fp32")
    line = train.run_plan("hour", 2)
    assert line.startswith("[train] recipe hour on cpu, fp32, 2 processes") and "about 95 min" in line
    assert "about 95 min" not in train.run_plan("full", 1)  # the full recipe makes no claim of an hour
    monkeypatch.setattr(train, "PRECISION", "bf16")
    assert train.run_plan("hour", 2) == "[train] recipe hour on cpu, bf16 autocast, 2 processes"


@pytest.mark.parametrize("bad", ["generator", "genrator=5", "clip=-3", "clip=many"])
def test_steps_override_is_checked(bad, capsys):
    with pytest.raises(SystemExit):
        train.main(["--tiny", "--quiet", "--no-export", "--stages", "judge", "--steps", bad])
    assert "--steps" in capsys.readouterr().err
