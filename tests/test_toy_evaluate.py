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
