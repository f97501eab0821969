"""The evaluator computes its figures from the models it is given (tiny weights, loose sanity checks)."""
import pytest
import torch

from styleclip_lib.toy import evaluate as E
from styleclip_lib.toy import render as R
from styleclip_lib.toy import weights_path


class PerfectJudge(torch.nn.Module):
    """Reads the ground truth back from a side channel: evaluates the evaluator."""

    def __init__(self, faces):
        super().__init__()
        self.faces = faces

    def predict(self, x):
        n = len(x)
        out = {a: (torch.from_numpy(self.faces.attr(a)[:n]), torch.ones(n)) for a in R.ATTR_NAMES}
        out["identity"] = torch.from_numpy(self.faces.cont[:n])
        return out


def test_judge_metrics_are_computed_not_assumed():
    faces = R.sample_params(40, seed=7)
    res = E.evaluate_judge(PerfectJudge(faces), 40, seed=7)
    assert res["accuracy"]["all_attributes"] == 1.0 and res["identity_mae"] < 1e-6
    wrong = R.sample_params(40, seed=8)  # a judge that answers for other faces
    res = E.evaluate_judge(PerfectJudge(wrong), 40, seed=7)
    assert res["accuracy"]["all_attributes"] < 0.2


def test_weights_path_errors():
    with pytest.raises(FileNotFoundError, match="toy-foo"):
        weights_path("toy-foo")


def test_toy_weights_folder_can_be_overridden(tmp_path, monkeypatch):
    """``STYLECLIP_TOY_WEIGHTS`` points every toy loader at a retrained folder (``train --out``)."""
    import shutil

    import styleclip_lib as sc

    shutil.copy(weights_path("toy-generator"), tmp_path / "generator.pt")
    monkeypatch.setenv("STYLECLIP_TOY_WEIGHTS", str(tmp_path))
    assert weights_path("toy", kind="generator") == tmp_path / "generator.pt"
    assert sc.load_generator("toy").size == 64
    with pytest.raises(FileNotFoundError, match="clip.pt"):  # not in the override folder
        weights_path("toy-clip")


def test_evaluate_refuses_a_missing_device_before_any_work(capsys):
    """``--device`` (where the method edits run) is checked up front, with the argument named."""
    for device, says in [("gpu0", "expected 'cpu', 'cuda'"), *([("cuda", "CUDA is not available")] if not torch.cuda.is_available() else [])]:
        with pytest.raises(SystemExit) as e:
            E.main(["--n", "1", "--methods", "global", "--device", device])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "--device" in err and says in err, err


def test_mapper_figures_pool_over_prompts_by_edits(monkeypatch):
    """``--mapper-prompt all``: one mapper per prompt, pooled over edits (not averaged over prompts)."""
    from styleclip_lib.toy import evaluate_methods as EM

    fake = {"a": dict(edits=10, success_rate=1.0, collateral_rate=0.0, clean_success_rate=1.0, identity_drift=0.1,
                      seconds_per_edit=0.01, train_seconds=5.0),
            "b": dict(edits=30, success_rate=0.0, collateral_rate=0.5, clean_success_rate=0.0, identity_drift=0.3,
                      seconds_per_edit=0.03, train_seconds=7.0)}

    def one(models, judge, n_faces, prompt, attr, value, **kw):
        assert kw == {"steps": 3}
        return {"method": "latent_mapper", "prompt": prompt, "train_steps": 3, **fake[prompt]}

    monkeypatch.setattr(EM, "evaluate_mapper", one)
    res = EM.evaluate_mappers(None, None, 20, prompts=[("a", "hair_color", "red"), ("b", "mouth", "smile")], steps=3)
    assert res["prompt"] == "all" and res["prompts"] == 2 and res["edits"] == 40 and res["train_seconds"] == 12.0
    assert res["success_rate"] == pytest.approx(0.25) and res["collateral_rate"] == pytest.approx(0.375)
    assert res["identity_drift"] == pytest.approx(0.25) and res["per_prompt"]["b"] == {"n": 30, "success": 0.0, "collateral": 0.5}


def test_table_marks_figures_within_sampling_noise_of_their_target():
    """Wilson intervals: exact at the ends, shrinking with n; the table's verdict says when a share is
    met or missed by less than its own sampling error."""
    lo, hi = E.wilson_interval(0.9, 500)
    assert 0.86 < lo < 0.88 and 0.92 < hi < 0.935
    assert E.wilson_interval(1.0, 500)[1] == pytest.approx(1.0) and 0.99 < E.wilson_interval(1.0, 500)[0] < 1.0
    assert E.wilson_interval(0.0, 500)[0] == pytest.approx(0.0, abs=1e-12)
    assert E.wilson_interval(0.9, 5000)[0] > lo
    assert E.verdict(0.90, 0.90, 500) == "ok (noise)" and E.verdict(0.96, 0.90, 500) == "ok"
    assert E.verdict(0.89, 0.90, 500) == "BELOW (noise)" and E.verdict(0.80, 0.90, 500) == "BELOW"
    assert E.verdict(0.89, 0.90, None) == "BELOW" and E.verdict(0.5, None, 500) == ""
    clip = {"text_to_image_top1": {"mouth": 1.0, "beard": 1.0}, "image_to_text_top1": {"mouth": 0.7, "beard": 1.0, "x": float("nan")}}
    report = {"n": 500, "clip": {**clip, "text_to_image_mean": 1.0, "image_to_text_mean": 0.85, "image_to_text_n": {"mouth": 500}},
              "generator": {"confident_all_attributes": 0.9, "confident_exact_codes": 0.95, "every_value_appears": True},
              "encoder": {"judge_agreement": {"all_attributes": 0.956}},
              "methods": {"global": {"edits": 40, "success_rate": 0.85, "collateral_rate": 0.1, "clean_success_rate": 0.8}}}
    lines = {line[:48].strip(): line for line in E.table(report).splitlines()[1:]}
    assert lines["generator: judge confident on every attribute"].endswith("0.871-0.923    0.90 ok (noise)")
    assert lines["encoder: judge agrees on every attribute"].endswith(" ok")
    # the synthesis network alone: an interval (a share of the same samples), no target of its own
    assert lines["generator from exact codes (synthesis alone)"].split()[-2:] == ["0.927-0.966", "-"]
    assert lines["generator: every attribute value appears"].split()[-3:] == ["-", "1.00", "ok"]
    assert lines["CLIP image→text top-1 (worst: mouth)"].endswith("0.658-0.739    0.90 BELOW")  # the target read per attribute
    assert lines["CLIP text→image top-1 (worst: mouth)"].split()[-3:] == ["-", "0.90", "ok"]  # a share of 3 prompts: no interval
    report["clip"]["image_to_text_top1"]["mouth"] = 0.89  # within 500 renders' noise of the target
    assert [line for line in E.table(report).splitlines() if "worst: mouth" in line][1].endswith("BELOW (noise)")
    assert "(noise)" in lines["global: success rate"]  # 40 edits: 0.85 is not known to be above 0.80
