"""Evaluation at any scale, in one process: per-sample random streams (the same outcome for any batch size, order or
subset), per-sample records (resume inside a dataset, preemption, refusal of another protocol's file), and the
statistics of results.md (Wilson intervals, McNemar, paired intervals).

The 2-process runs (torchrun / accelerate launch) are in test_eval_distributed.py.
"""

import json
import math
import os

import pytest
import torch
from _eval_tiny import TEMPLATES, digits_test, tiny_zero_shot

from mmt_ard.attacks import random_start
from mmt_ard.attacks.auto_pgd import apgd
from mmt_ard.attacks.random_streams import generators, stable_seed
from mmt_ard.embedded.tiny import DIGIT_NAMES
from mmt_ard.evaluation import (
    EvalData,
    EvaluationPreempted,
    SampleFile,
    SampleKeys,
    evaluate_on_data,
    evaluate_robustness,
    get_protocol,
    load_eval_data,
    read_records,
    sample_loop,
)
from mmt_ard.evaluation.attack_runner import LogitsModel, attack_batch
from mmt_ard.evaluation.checks import check_measurements
from mmt_ard.evaluation.stats import mcnemar_exact, paired_difference_interval, wilson_interval

# the measurement: PGD, one step from a random start, L-inf 48/255 (the random start decides a lot)
ONE_STEP = {"attacks": ("pgd",), "eps": (48 / 255,), "pgd_steps": 1, "checks": False}


@pytest.fixture(scope="module")
def zero_shot():
    return tiny_zero_shot()


@pytest.fixture(scope="module")
def data():
    x, y = digits_test()
    full = EvalData("digits", x, y, list(DIGIT_NAMES), TEMPLATES)
    return load_eval_data(full, image_size=16, num_samples=150, seed=0)


def by_index(result) -> dict[int, dict]:
    return {r["index"]: r for r in result["_records"]}


# ---- random streams ----
def test_stable_seed_is_the_same_in_every_process():
    """Not Python's salted `hash`: a pinned value (the same in every interpreter, run and machine)."""
    key = (0, "cifar10", 1234, "apgd-t", "2/255")
    assert stable_seed(*key) == 3715942754110613084
    assert stable_seed(*key) != stable_seed(0, "cifar10", 1235, "apgd-t", "2/255")
    assert 0 <= stable_seed(*key) < 2**63


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_samples_random_start_does_not_depend_on_its_batch(norm):
    x = torch.rand(5, 3, 8, 8)
    seeds = [stable_seed("k", i) for i in range(5)]
    whole = random_start(x, 0.1, norm, generators(seeds))
    for part in ([0, 1], [4], [3, 1, 2]):  # other batches, other orders
        alone = random_start(x[part], 0.1, norm, generators([seeds[i] for i in part]))
        torch.testing.assert_close(alone, whole[part], rtol=0, atol=0)
    # one generator for the batch (what training uses) draws differently: the start of sample 0 follows its batch
    one = random_start(x, 0.1, norm, torch.Generator().manual_seed(0))
    assert not torch.equal(one[1:2], random_start(x[1:2], 0.1, norm, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="one per sample"):
        random_start(x, 0.1, norm, generators(seeds[:2]))


def test_apgd_with_sample_seeds_gives_each_image_its_own_result(zero_shot, data):
    model, x, y = LogitsModel(zero_shot), data.pixels(0, 12), data.labels[:12]
    seeds = [stable_seed(0, "digits", i) for i in range(12)]
    kw = {"eps": 4 / 255, "n_iter": 5, "n_restarts": 2}
    whole = apgd(model, x, y, sample_seeds=seeds, **kw)
    part = [7, 2, 9]
    alone = apgd(model, x[part], y[part], sample_seeds=[seeds[i] for i in part], **kw)
    torch.testing.assert_close(alone, whole[part], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="one per image"):
        apgd(model, x, y, sample_seeds=seeds[:3], **kw)


# ---- the same outcomes for any batch size ----
def test_per_sample_outcomes_do_not_depend_on_the_batch_size(zero_shot, data):
    """Batch sizes 64, 7 and 13 give identical records, image by image (the issue's setting: PGD-1 at 48/255)."""
    results = {
        bs: evaluate_on_data(zero_shot, data, get_protocol("quick", batch_size=bs, **ONE_STEP), progress=False)
        for bs in (64, 7, 13)
    }
    reference = by_index(results[64])
    assert 0 < results[64]["robust_accuracy"]["48/255"]["num_robust"] < results[64]["num_clean_correct"]
    for bs in (7, 13):
        assert by_index(results[bs]) == reference, bs
        assert results[bs]["robust_accuracy"] == results[64]["robust_accuracy"]


def test_control_batch_seeded_starts_change_with_the_batch_size(zero_shot, data):
    """The bug the test above catches: one random stream per batch (`seed + batch index`) gives other counts."""
    protocol = get_protocol("quick", **ONE_STEP)
    x, y = data.pixels(), data.labels
    counts = []
    for bs in (64, 7, 13):
        masks = [
            attack_batch(zero_shot, x[s : s + bs], y[s : s + bs], "pgd", 48 / 255, protocol, seed=protocol.seed + b)
            for b, s in enumerate(range(0, len(y), bs))
        ]
        counts.append(int(torch.cat(masks).sum()))
    assert len(set(counts)) > 1, counts


def test_order_and_subset_do_not_change_an_images_outcome(zero_shot, data):
    protocol = get_protocol("quick", batch_size=16, attacks=("pgd", "apgd-ce"), eps=(8 / 255,), n_iter=5, checks=False)
    reference = by_index(evaluate_on_data(zero_shot, data, protocol, progress=False))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(1))[:40].tolist()
    shuffled = by_index(evaluate_on_data(zero_shot, data.subset(order), protocol, progress=False))
    assert len(shuffled) == 40 and all(shuffled[i] == reference[i] for i in shuffled)


def test_check_measurements_split_in_any_way_are_the_same(zero_shot, data):
    protocol = get_protocol("quick", eps=(4 / 255,), n_iter=5, check_steps=2, batch_size=8)
    keys = SampleKeys.of(0, "digits", data.indices[:20])
    x, y = data.pixels(0, 20), data.labels[:20]
    whole = check_measurements(zero_shot, x, y, protocol=protocol, keys=keys)
    first = check_measurements(zero_shot, x[:7], y[:7], protocol=protocol, keys=keys.subset(range(7)))
    rest = check_measurements(zero_shot, x[7:], y[7:], protocol=protocol, keys=keys.subset(range(7, 20)))
    for name, values in whole.items():
        torch.testing.assert_close(torch.cat([first[name], rest[name]]), values, rtol=0, atol=0, msg=name)


# ---- per-sample records, resume, preemption ----
def test_a_stopped_evaluation_resumes_to_the_same_records(zero_shot, data, tmp_path, monkeypatch):
    protocol = get_protocol("quick", batch_size=20, attacks=("pgd", "apgd-ce"), eps=(8 / 255,), n_iter=5, checks=True,
                            check_samples=30, check_steps=2)  # fmt: skip
    full = evaluate_on_data(zero_shot, data, protocol, progress=False)

    sample_file = SampleFile(str(tmp_path / "s.jsonl"), "m", "digits", protocol.fingerprint("digits"))
    sample_file.start()
    rounds = []
    with pytest.raises(EvaluationPreempted) as info:  # the signal arrives during the third batch
        evaluate_on_data(zero_shot, data, protocol, progress=False, on_records=sample_file.append,
                         stop=lambda: rounds.append(1) or ("SIGTERM" if len(rounds) == 3 else None))  # fmt: skip
    assert info.value.code == 75 and (info.value.done, info.value.total) == (60, 150)
    done = sample_file.read()
    assert len(done) == 60

    evaluated = []
    real = sample_loop.evaluate_batch
    monkeypatch.setattr(sample_loop, "evaluate_batch", lambda *a, **k: evaluated.extend(a[2]) or real(*a, **k))
    resumed = evaluate_on_data(zero_shot, data, protocol, progress=False, done=done, on_records=sample_file.append)
    assert len(evaluated) == 90  # only the missing images
    assert by_index(resumed) == by_index(full)
    assert {k: v for k, v in resumed.items() if k not in ("time_s", "_records")} == {
        k: v for k, v in full.items() if k not in ("time_s", "_records")
    }
    assert len(sample_file.read()) == 150


def test_sample_file_refuses_another_protocol_and_drops_a_cut_line(tmp_path):
    path = str(tmp_path / "s.jsonl")
    mine = SampleFile(path, "m", "d", "aaaa1111", "protocol=quick ...")
    mine.start()
    mine.append([{"index": 3, "label": 1}, {"index": 5, "label": 2}])
    with open(path, "a") as f:
        f.write('{"index": 9, "lab')  # a crash in the middle of a write
    assert set(mine.read()) == {3, 5}
    with open(path) as f:
        assert f.read().endswith('"label": 2}\n')  # the cut line is gone, the next append starts clean
    other = SampleFile(path, "m", "d", "bbbb2222", "protocol=robustvlm ...")
    with pytest.raises(ValueError, match="aaaa1111") as info:
        other.read()
    assert "bbbb2222" in str(info.value) and "--no-resume" in str(info.value)
    with pytest.raises(ValueError, match="model 'm'"):
        SampleFile(path, "other-model", "d", "aaaa1111").read()
    with open(path, "a") as f:
        f.write("not json\n{}\n")
    with pytest.raises(ValueError, match="Line 4 .* damaged"):
        mine.read()


def test_evaluate_robustness_writes_and_resumes_per_sample_files(tmp_path, data, monkeypatch):
    out = str(tmp_path / "out")
    models = [tiny_zero_shot(), tiny_zero_shot(["a blurry photo of the digit {}"])]
    kwargs = {"datasets": {"digits": data.subset(range(60))}, "protocol": "quick", "batch_size": 16,
              "model_names": ["a", "b"], "output_dir": out, "progress": False, "verbose": False, **ONE_STEP}  # fmt: skip
    report = evaluate_robustness(models, **kwargs)
    assert report["num_processes"] == 1
    for r in report["results"]:
        header, records = read_records(os.path.join(out, r["samples_file"]))
        assert header["protocol_fingerprint"] == r["protocol_fingerprint"] and len(records) == 60
        assert (
            sum(rec["eps"]["48/255"]["robust"] for rec in records.values())
            == r["robust_accuracy"]["48/255"]["num_robust"]
        )
        assert r["num_processes"] == 1 and r["batch_size"] == 16
    with open(os.path.join(out, "results.json")) as f:
        saved = json.load(f)
    assert saved["num_processes"] == 1
    pairs = saved["paired_comparisons"]
    assert {p["eps"] for p in pairs} == {"clean", "48/255"} and all(p["num_samples"] == 60 for p in pairs)
    with open(os.path.join(out, "results.md")) as f:
        md = f.read()
    assert "## Paired comparisons" in md and "| digits | 48/255 | a | b | 60 |" in md
    n_clean = report["results"][0]["num_clean_correct"]
    low, high = wilson_interval(n_clean, 60)
    assert f"{100 * n_clean / 60:.1f} [{100 * low:.1f}, {100 * high:.1f}]" in md

    # a pair cut off mid-dataset (its result not in results.json, half its records on disk) continues from its file
    sample_path = os.path.join(out, report["results"][1]["samples_file"])
    uninterrupted = read_records(sample_path)[1]
    with open(sample_path) as f:
        lines = f.readlines()
    with open(sample_path, "w") as f:
        f.writelines(lines[:31])  # header + 30 images
    saved["results"] = saved["results"][:1]
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(saved, f)
    evaluated = []
    real = sample_loop.evaluate_batch
    monkeypatch.setattr(sample_loop, "evaluate_batch", lambda *a, **k: evaluated.extend(a[2]) or real(*a, **k))
    again = evaluate_robustness(models, **kwargs)
    assert len(evaluated) == 30
    assert again["results"][1]["robust_accuracy"] == report["results"][1]["robust_accuracy"]
    assert read_records(sample_path)[1] == uninterrupted and len(uninterrupted) == 60

    # a file of another protocol under this pair's name is refused, its fingerprint shown
    saved["results"] = saved["results"][:1]
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(saved, f)
    header, _ = read_records(sample_path)
    with open(sample_path) as f:
        text = f.read().replace(header["protocol_fingerprint"], "0123456789ab", 1)
    with open(sample_path, "w") as f:
        f.write(text)
    with pytest.raises(ValueError, match="0123456789ab"):
        evaluate_robustness(models, **kwargs)


def test_eval_data_indices_must_name_each_sample_once():
    x, y = digits_test(4)
    assert EvalData("d", x, y, list(DIGIT_NAMES), TEMPLATES).indices == [0, 1, 2, 3]
    assert EvalData("d", x, y, list(DIGIT_NAMES), TEMPLATES, indices=[7, 3, 9, 1]).subset([2, 0]).indices == [9, 7]
    with pytest.raises(ValueError, match="indices"):
        EvalData("d", x, y, list(DIGIT_NAMES), TEMPLATES, indices=[1, 1, 2, 3])


# ---- statistics ----
def test_wilson_interval():
    low, high = wilson_interval(81, 263)  # Newcombe (1998)'s example: 0.2553 to 0.3662
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_mcnemar_exact_is_the_two_sided_binomial_test():
    for b, c in [(1, 9), (0, 0), (5, 5), (3, 12), (40, 20)]:
        n = b + c
        tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n if n else 0.5
        assert mcnemar_exact(b, c) == pytest.approx(min(1.0, 2 * tail), rel=1e-9)
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)
    assert mcnemar_exact(2000, 2100) == pytest.approx(mcnemar_exact(2100, 2000)) and mcnemar_exact(0, 3000) < 1e-300


def test_paired_interval_is_narrower_than_unpaired_when_the_models_agree():
    diff, low, high = paired_difference_interval(80, 14, 2, 4)  # 100 images, the models agree on 84
    assert diff == pytest.approx(0.12) and 0 < low < diff < high  # A is better, as McNemar says too
    assert mcnemar_exact(14, 2) < 0.05
    # treating the two accuracies as independent (Newcombe's unpaired interval) is wider
    (l1, u1), (l2, u2) = wilson_interval(94, 100), wilson_interval(82, 100)
    unpaired = (diff - math.hypot(0.94 - l1, u2 - 0.82), diff + math.hypot(u1 - 0.94, 0.82 - l2))
    assert high - low < unpaired[1] - unpaired[0]
    assert paired_difference_interval(50, 0, 0, 50)[0] == 0.0
    assert paired_difference_interval(0, 0, 0, 0) == (0.0, -1.0, 1.0)
    d, lo, hi = paired_difference_interval(4, 6, 1, 9)  # symmetry: swapping the models mirrors the interval
    assert paired_difference_interval(4, 1, 6, 9) == pytest.approx((-d, -hi, -lo))
