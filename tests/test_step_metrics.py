"""Step metrics without device syncs: values kept as tensors until `log()`, phases timed into one entry per step."""

import time

import pytest
import torch

from mmt_ard.training.step_metrics import means, timed_phase, weighted_sums


def test_means_of_floats_and_tensors_in_order():
    store = {"a": [1.0, torch.tensor(3.0)], "b": [torch.tensor(0.25), torch.tensor(0.75)], "empty": []}
    assert means(store) == {"a": 2.0, "b": 0.5}


def test_weighted_values_average_over_samples():
    """A batch of 3 with mean 1.0 and a batch of 1 with mean 5.0: 2.0 over the 4 samples (not 3.0 over the steps)."""
    store = {"kl": [(torch.tensor(1.0), 3), (5.0, 1)], "time": [0.5, 1.5]}
    assert weighted_sums(store) == {"kl": (8.0, 4.0), "time": (2.0, 2.0)}
    assert means(store) == {"kl": 2.0, "time": 1.0}


def test_timed_phase_appends_then_adds_to_the_last_entry():
    store = []
    with timed_phase(store):
        time.sleep(0.01)
    with timed_phase(store, add_to_last=True):
        time.sleep(0.01)
    assert len(store) == 1 and store[0] >= 0.02
    with timed_phase(store):
        pass
    assert len(store) == 2


def test_trainer_logs_means_and_warns_from_the_logged_fraction(make_trainer, batch, caplog):
    """The negative-weight warning also comes from `log()` (the GPU path, where the step does not check it)."""
    trainer = make_trainer("mmt-ard", attack_eps=0.0)
    # a robust teacher whose cosine to the true class is negative on half the batch
    trainer.teacher_modules[0].confidence = lambda embeds, labels: torch.linspace(-0.5, 0.5, len(labels))
    trainer.model.train()
    trainer.compute_loss(trainer.model, dict(batch))
    trainer.compute_loss(trainer.model, dict(batch))
    metrics = trainer._metrics["train"]
    assert all(torch.is_tensor(v) for v, _ in metrics["kl_robust_loss"])  # no host copy during the step
    assert [n for _, n in metrics["kl_robust_loss"]] == [len(batch["labels"])] * 2  # weighted by samples
    expected = (float(metrics["kl_robust_loss"][0][0]) + float(metrics["kl_robust_loss"][1][0])) / 2
    trainer._warned_negative_weights = False  # as if on a GPU, where the step does not look
    logs = {}
    trainer.log(logs)
    assert logs["kl_robust_loss"] == pytest.approx(expected)
    assert logs["time/attack_s"] >= 0 and logs["negative_weight_fraction/robust"] == 0.5
    assert trainer._warned_negative_weights and not trainer._metrics["train"]
