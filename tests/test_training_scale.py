"""Training under 2 CPU processes (DDP, gloo) reports every process: the per-term metrics equal a one-process run
on the same global batch (rank 0's alone do not), the evaluation callback splits its images across the processes and
gets the numbers of an unsharded evaluation, and `auto_find_batch_size` retries on every process at the batch where
one of them ran out of memory. The runs are `ddp_scale_helper.py`'s.
"""

import json
import os

import ddp_scale_helper
import pytest
from _launch import REPO, free_port, launch_two_processes

HELPER = os.path.join(REPO, "tests", "ddp_scale_helper.py")
# the per-term metrics (losses, weights, confidences, accuracies) logged at every step
TERMS = ("loss", "kl_robust_loss", "kl_clean_loss", "weight/", "confidence/", "teacher_accuracy/", "student_")


def per_term(history: list[dict]) -> list[dict]:
    return [
        {k: v for k, v in h.items() if k.startswith(TERMS) and k != "loss"} for h in history if "kl_robust_loss" in h
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    proc = launch_two_processes(free_port(), HELPER, str(out), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    two = {(case, r): json.loads((out / f"{case}-rank{r}.json").read_text()) for case in ("metrics", "auto_batch")
           for r in (0, 1)}  # fmt: skip
    single = ddp_scale_helper.run_metrics(str(tmp_path_factory.mktemp("single")), 1)
    return two, single


@pytest.mark.slow
def test_metrics_of_two_processes_equal_one_process_on_the_same_global_batch(runs):
    two, single = runs
    assert two[("metrics", 0)]["num_processes"] == 2 and single["num_processes"] == 1
    logged, reference = per_term(two[("metrics", 0)]["log_history"]), per_term(single["log_history"])
    assert len(logged) == len(reference) == ddp_scale_helper.MAX_STEPS
    assert {"confidence/robust", "weight/clean", "teacher_accuracy/robust", "student_adv_accuracy"} <= set(logged[0])
    for mine, ref in zip(logged, reference):
        assert mine.keys() == ref.keys()
        for key in ref:
            assert mine[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), key
    assert per_term(two[("metrics", 1)]["log_history"]) == logged  # every process logs the same numbers
    # the control: the main process's own half of the batch (what it logged before) is not the global batch's
    local = [m for m in two[("metrics", 0)]["local_means"] if "kl_robust_loss" in m]
    assert any(abs(local[0][k] - reference[0][k]) > 1e-3 for k in reference[0] if k in local[0])


@pytest.mark.slow
def test_evaluation_callback_splits_its_images_across_processes(runs):
    two, _ = runs
    ranks = [two[("metrics", r)] for r in (0, 1)]
    attacked = [set(r["attacked_positions"]) for r in ranks]
    assert attacked[0].isdisjoint(attacked[1]) and attacked[0] | attacked[1] == set(range(24))
    assert len(attacked[0]) == len(attacked[1]) == 12
    for r in ranks:
        (metrics,) = r["callback"]
        assert metrics["eval_robust_num_samples"] == 24
        assert metrics["eval_robust_clean_accuracy"] == r["alone"]["clean"]  # = the unsharded evaluation
        assert metrics["eval_robust_accuracy_eps8"] == r["alone"]["robust"]
    assert ranks[0]["callback"] == ranks[1]["callback"]
    # called by the main process alone (`all_processes=False`): it does not wait for the others, same numbers
    assert ranks[1]["main_only"] is None
    assert ranks[0]["main_only"]["num_processes"] == 1
    assert ranks[0]["main_only"]["worst_case"] == ranks[0]["alone"]["robust"]


@pytest.mark.slow
def test_auto_find_batch_size_agrees_across_processes(runs):
    """Process 1 alone runs out of memory at 8 images per process: both retry at 4 and train to the end together."""
    two, _ = runs
    for r in (0, 1):
        result = two[("auto_batch", r)]
        assert result["tried"] == [8, 4] and result["batch"] == 4 and result["steps"] == 2, (r, result)
    assert two[("auto_batch", 0)]["checksum"] == pytest.approx(two[("auto_batch", 1)]["checksum"], rel=0, abs=1e-9)
