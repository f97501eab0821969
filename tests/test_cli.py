"""``python -m styleclip_lib``: command dispatch, generate, registry commands, clear errors."""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import conformance_path
from styleclip_lib.__main__ import main


def test_generate_writes_a_grid(tmp_path):
    out = tmp_path / "s.png"
    rc = main(["generate", "--checkpoint", str(conformance_path("stylegan2/generator_ckpt.pt")), "--n", "4", "--seed", "3", "--out", str(out)])
    assert rc == 0
    img = np.asarray(Image.open(out))
    assert img.shape == (2 + 2 * 34, 2 + 2 * 34, 3)  # 2x2 grid of 32 px faces with 2 px padding
    assert img.std() > 5  # not a blank canvas


def test_generate_is_seeded(tmp_path):
    ck = str(conformance_path("stylegan2/generator_ckpt.pt"))
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        main(["generate", "--checkpoint", ck, "--n", "2", "--seed", str(seed), "--out", str(tmp_path / f"{name}.png")])
    a, b, c = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_errors_are_clear(tmp_path, capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    missing = tmp_path / "nope.pt"
    assert main(["generate", "--checkpoint", str(missing), "--out", str(tmp_path / "x.png")]) != 0
    assert "nope.pt" in capsys.readouterr().err


def test_registry_commands_through_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "styleclip_lib", "list"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for name in ("stylegan2-ffhq-config-f", "ViT-B/32", "model_ir_se50", "e4e_ffhq_encode"):
        assert name in r.stdout
    r = subprocess.run([sys.executable, "-m", "styleclip_lib", "fetch", "ViT-B/32"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "STYLECLIP_OFFLINE" in r.stderr  # offline in tests: no network, clear message


def test_readme_main_job_edits_offline(tmp_path, capsys):
    """The README's main command: a global-directions edit in the shipped toy world."""
    out = tmp_path / "edit.png"
    rc = main(["edit", "--method", "global", "--prompt", "blue hair", "--neutral", "hair", "--seed", "1", "--out", str(out)])
    assert rc == 0 and "channels manipulated" in capsys.readouterr().out
    img = np.asarray(Image.open(out))
    source, edited = img[2:66, 2:66].astype(int), img[68:132, 2:66].astype(int)
    assert np.abs(source - edited).mean() > 2  # the edit changed the face
    assert main(["edit", "--method", "global", "--prompt", "  ", "--out", str(out)]) == 1  # empty prompt: clear error


def test_edit_optimize_kit_losses(tmp_path, capsys):
    """``edit --method optimize`` passes the space / CLIP-loss knobs through; a text-pair loss
    without ``--neutral`` is a usage error, not a crash."""
    out = tmp_path / "opt.png"
    rc = main(["edit", "--method", "optimize", "--prompt", "blue hair", "--neutral", "hair", "--clip-loss", "anchored",
               "--space", "s_std", "--lr", "0.2", "--l2-lambda", "0.002", "--steps", "3", "--seed", "2", "--out", str(out)])
    assert rc == 0
    img = np.asarray(Image.open(out))
    assert np.abs(img[2:66, 2:66].astype(int) - img[68:132, 2:66].astype(int)).mean() > 0.1
    with pytest.raises(SystemExit):
        main(["edit", "--method", "optimize", "--prompt", "blue hair", "--clip-loss", "anchored", "--out", str(out)])
    assert "--neutral" in capsys.readouterr().err


def test_edit_optimize_channel_beta(tmp_path, capsys):
    """``--channel-beta`` optimises only the channels the toy fs3 keeps for the text pair and
    says how many; outside StyleSpace or with the global CLIP loss it is a usage error."""
    out = tmp_path / "opt.png"
    rc = main(["edit", "--method", "optimize", "--prompt", "a face with a beard", "--neutral", "a face", "--clip-loss",
               "anchored", "--space", "s_std", "--lr", "0.5", "--l2-lambda", "0", "--channel-beta", "0.15", "--steps", "3",
               "--seed", "2", "--out", str(out)])
    assert rc == 0
    n = int(capsys.readouterr().out.split(" channels optimised")[0].split()[-1])
    assert n > 0
    for extra in (["--space", "w+", "--neutral", "a face", "--clip-loss", "anchored"], ["--space", "s_std"]):
        with pytest.raises(SystemExit):
            main(["edit", "--method", "optimize", "--prompt", "a face with a beard", "--channel-beta", "0.15", *extra,
                  "--out", str(out)])
        assert "--channel-beta" in capsys.readouterr().err
    # --start global: the run starts from global directions' edit; 2 steps at lr 0 leave exactly it
    rc = main(["edit", "--method", "optimize", "--prompt", "a face with a beard", "--neutral", "a face", "--clip-loss",
               "anchored", "--space", "s_std", "--lr", "0", "--start", "global", "--start-alpha", "6", "--steps", "2",
               "--seed", "2", "--out", str(tmp_path / "warm.png")])
    assert rc == 0
    grid = np.asarray(Image.open(tmp_path / "warm.png").convert("RGB")).astype(int)
    h = grid.shape[0] // 2
    assert np.abs(grid[:h] - grid[h:2 * h]).mean() > 1.0  # source (top) and edit (bottom) differ
    with pytest.raises(SystemExit):
        main(["edit", "--method", "optimize", "--prompt", "a face with a beard", "--start", "global", "--out", str(out)])
    assert "--start global" in capsys.readouterr().err


def test_train_mapper_trains_resumes_and_feeds_edit(tmp_path, capsys):
    """``train-mapper`` (toy world: the channel-masked recipe, neutral inferred from the prompt) writes an
    official-format checkpoint that ``edit --method mapper`` takes; a second run needs ``--resume``."""
    import torch

    exp = str(tmp_path / "run")
    base = ["train-mapper", "--prompt", "purple hair", "--exp-dir", exp, "--batch-size", "2"]
    assert main([*base, "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "channel_masked mapper for 'purple hair' (neutral 'hair'" in out and "edit with:" in out
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "iteration_2.pt", weights_only=False)
    assert ckpt["opts"]["description"] == "purple hair" and ckpt["opts"]["channel_beta"] == 0.15 and ckpt["step"] == 2
    with pytest.raises(SystemExit) as e:
        main([*base, "--steps", "3"])
    assert e.value.code == 2 and "--resume" in capsys.readouterr().err
    assert main([*base, "--steps", "3", "--resume"]) == 0
    assert "resuming at step 2" in capsys.readouterr().out
    assert (tmp_path / "run" / "checkpoints" / "iteration_3.pt").exists()
    png = tmp_path / "e.png"
    assert main(["edit", "--method", "mapper", "--mapper", str(tmp_path / "run" / "checkpoints" / "iteration_3.pt"),
                 "--prompt", "purple hair", "--seed", "1", "--out", str(png)]) == 0
    assert np.asarray(Image.open(png)).std() > 5
    with pytest.raises(SystemExit):
        main(["train-mapper", "--prompt", "a face", "--exp-dir", str(tmp_path / "x")])
    assert "--neutral is needed" in capsys.readouterr().err


def test_mapper_recipes_are_named_and_checked():
    import styleclip_lib as sc

    models = sc.load_models("toy", "cpu")
    knobs = models.mapper_recipe("auto", neutral="hair")
    assert knobs["work_in_stylespace"] and knobs["channel_beta"] == 0.15 and knobs["latent_l2_lambda"] == 0.0
    ref = models.mapper_recipe("reference")
    assert ref["max_steps"] == 50000 and ref["identity_model"] is models.identity and "channel_beta" not in ref
    for recipe, neutral, says in (("bogus", "hair", "expected 'auto'"), ("channel_masked", None, "needs neutral")):
        with pytest.raises(ValueError, match=says):
            models.mapper_recipe(recipe, neutral)
