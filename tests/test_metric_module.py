"""The `evaluate` metric module `mmt_ard/metrics/robust_accuracy` loads by path, offline, and computes robust
accuracy as the evaluation does (per-image worst case over attacks)."""

import os

import pytest
import torch
from _eval_tiny import digits_test, tiny_zero_shot

from mmt_ard.evaluation import METRIC_PATH, get_protocol
from mmt_ard.evaluation.attack_runner import LogitsModel

evaluate = pytest.importorskip("evaluate")


@pytest.fixture(scope="module")
def metric():
    return evaluate.load(METRIC_PATH)


def test_loads_by_directory_and_by_file():
    assert os.path.isfile(os.path.join(METRIC_PATH, "robust_accuracy.py"))
    by_file = evaluate.load(os.path.join(METRIC_PATH, "robust_accuracy.py"))
    assert by_file.compute(predictions=[1, 2], references=[1, 1])["robust_accuracy"] == 0.5
    assert "worst case" in by_file.description


def test_one_attack(metric):
    out = metric.compute(predictions=[0, 1, 1, 3], references=[0, 1, 2, 3])
    assert out == {"robust_accuracy": 0.75, "num_samples": 4, "per_attack_accuracy": {"attack_0": 0.75}}


def test_worst_case_over_attacks_and_clean(metric):
    out = metric.compute(
        predictions=[[0, 0], [1, 2], [5, 2], [3, 3]],  # per image: APGD-CE, APGD-T
        references=[0, 2, 2, 3],
        clean_predictions=[0, 2, 2, 1],  # image 3 is wrong without attack: never robust
        attack_names=["apgd-ce", "apgd-t"],
    )
    assert out["robust_accuracy"] == 0.25 and out["num_samples"] == 4 and out["clean_accuracy"] == 0.75
    assert out["per_attack_accuracy"] == {"apgd-ce": 0.25, "apgd-t": 0.75}


def test_batches_accumulate(metric):
    metric.add_batch(predictions=[1, 1], references=[1, 0])
    metric.add_batch(predictions=[2], references=[2])
    assert metric.compute()["robust_accuracy"] == pytest.approx(2 / 3)


def test_bad_inputs_raise(metric):
    with pytest.raises(ValueError, match="clean_predictions"):
        metric.compute(predictions=[1, 2], references=[1, 2], clean_predictions=[1])
    with pytest.raises(ValueError, match="attack_names"):
        metric.compute(predictions=[[1, 2]], references=[1], attack_names=["a"])


def test_matches_the_evaluation_on_a_trained_tiny_clip(metric):
    """Predictions on PGD and APGD-CE images of 60 held-out digits: the metric gives the evaluation's worst case."""
    from _eval_tiny import TEMPLATES

    from mmt_ard.embedded.tiny import DIGIT_NAMES
    from mmt_ard.evaluation import EvalData, evaluate_on_data

    model = tiny_zero_shot()
    x, y = digits_test(60)
    protocol = get_protocol(
        "quick",
        attacks=("pgd", "apgd-ce"),
        eps=(4 / 255,),
        n_iter=10,
        cascade=False,
        checks=False,
        batch_size=60,
        num_samples=60,
    )
    result = evaluate_on_data(model, EvalData("digits", x, y, list(DIGIT_NAMES), TEMPLATES), protocol, progress=False)
    # the same attacks by hand, keeping the adversarial images this time
    from mmt_ard.attacks import ce_inner_loss, pgd
    from mmt_ard.attacks.auto_pgd import apgd_ce

    eps = 4 / 255
    logits = LogitsModel(model)
    with torch.no_grad():
        clean = logits(x).argmax(-1)
    x_pgd = pgd(
        model, x, ce_inner_loss(y), eps=eps, step_size=eps / 4, steps=10, generator=torch.Generator().manual_seed(0)
    )
    x_apgd = apgd_ce(logits, x, y, eps=eps, n_iter=10, seed=0)
    with torch.no_grad():
        preds = torch.stack([logits(x_pgd).argmax(-1), logits(x_apgd).argmax(-1)], dim=1)  # (N, 2)
    out = metric.compute(
        predictions=preds.tolist(),
        references=y.tolist(),
        clean_predictions=clean.tolist(),
        attack_names=["pgd", "apgd-ce"],
    )
    assert out["clean_accuracy"] == pytest.approx(result["clean_accuracy"])
    assert out["num_samples"] == result["num_samples"] == 60
    # PGD's random start depends on which images are attacked (the evaluation attacks the clean-correct ones only),
    # so allow one image of difference; APGD's start does not
    reported = result["robust_accuracy"]["4/255"]
    assert out["per_attack_accuracy"]["apgd-ce"] == pytest.approx(reported["per_attack"]["apgd-ce"])
    assert abs(out["robust_accuracy"] - reported["worst_case"]) <= 1 / 60 + 1e-9
