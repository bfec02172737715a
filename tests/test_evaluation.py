"""Robust evaluation: protocols, data, per-image worst case, APGD vs PGD on a trained tiny CLIP, the training callback.

The attacks themselves (APGD budget, [0,1], seeds) are tested in test_apgd.py / test_attacks.py.
"""

import json
import os
from typing import ClassVar

import numpy as np
import pytest
import torch
from _eval_tiny import TEMPLATES, digits_test, tiny_zero_shot, trained_tiny_clip

from mmt_ard.embedded.tiny import DIGIT_NAMES
from mmt_ard.evaluation import (
    EvalData,
    Protocol,
    RobustEvalCallback,
    ensure_fp32,
    evaluate_on_data,
    get_protocol,
    load_eval_data,
    robust_eval,
    run_attack,
    sample_loop,
    subset_indices,
)
from mmt_ard.evaluation.attack_runner import attacks_for


@pytest.fixture(scope="module")
def zero_shot():
    return tiny_zero_shot()


@pytest.fixture(scope="module")
def digits():
    x, y = digits_test()
    return EvalData("digits", x, y, list(DIGIT_NAMES), TEMPLATES, source="sklearn digits (test)")


# ---- protocols ----
class TestProtocols:
    def test_presets(self):
        rv = get_protocol("robustvlm")
        assert rv.eps == (2 / 255, 4 / 255)
        assert rv.attacks == ("apgd-ce", "apgd-t")
        assert (rv.n_iter, rv.n_restarts, rv.n_target_classes, rv.num_samples) == (100, 1, 9, 1000)
        assert len(rv.datasets) == 14 and "imagenet" in rv.datasets and rv.samples_for("imagenet") == 5000
        assert rv.templates == "ensemble"
        tecoa = get_protocol("tecoa")
        assert tecoa.eps == (1 / 255,) and tecoa.attacks == ("pgd",)
        assert tecoa.pgd_steps == 100 and tecoa.step_size(1 / 255) == pytest.approx(1 / 255)
        quick = get_protocol("quick")
        assert quick.attacks == ("pgd",) and quick.pgd_steps == 10

    def test_every_field_overridable_and_reported(self):
        p = get_protocol("robustvlm", eps=(1 / 255,), n_iter=7, num_samples=5, seed=3)
        assert (p.eps, p.n_iter, p.num_samples, p.seed) == ((1 / 255,), 7, 5, 3)
        assert p.modified == ("eps", "n_iter", "num_samples", "seed")
        summary = p.summary()
        assert "robustvlm (modified: eps, n_iter, num_samples, seed)" in summary and "1/255" in summary
        assert "APGD-T (7 it" in summary and "fp32, eval mode" in summary
        assert get_protocol("robustvlm").fingerprint("cifar10") != p.fingerprint("cifar10")
        # the same values are not a modification; batch size does not change the fingerprint
        same = get_protocol("robustvlm", eps=(4 / 255, 2 / 255), batch_size=8)
        assert same.modified == () and same.fingerprint("pets") == get_protocol("robustvlm").fingerprint("pets")
        assert Protocol.from_dict(p.to_dict()) == p

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            ({"eps": (2,)}, "pixel units"),
            ({"attacks": ("fgsm",)}, "fgsm"),
            ({"norm": "l1"}, "norm"),
            ({"n_iter": 0}, "n_iter"),
            ({"templates": "all"}, "templates"),
            ({"nonsense": 1}, "Unknown protocol fields"),
        ],
    )
    def test_bad_fields_raise(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            get_protocol("quick", **kwargs)
        with pytest.raises(ValueError, match="not a preset"):
            get_protocol("autoattack")

    def test_apgd_t_skipped_below_four_classes(self):
        p = get_protocol("robustvlm")
        assert attacks_for(p, 10) == (["apgd-ce", "apgd-t"], [])
        assert attacks_for(p, 2) == (["apgd-ce"], ["apgd-t"])
        assert attacks_for(get_protocol("quick", attacks=("apgd-t",)), 3) == (["apgd-ce"], ["apgd-t"])


# ---- data ----
class TestData:
    def test_seeded_subset_is_deterministic(self):
        a = subset_indices(1000, 100, seed=0)
        assert a == subset_indices(1000, 100, seed=0) and len(set(a)) == 100
        assert a != subset_indices(1000, 100, seed=1)
        assert sorted(subset_indices(10, None, 0)) == list(range(10))
        assert subset_indices(10, 50, 0) == subset_indices(10, None, 0)  # more than there is: all of them

    def test_parquet_and_imagefolder_and_user_json(self, tmp_path):
        import datasets
        from PIL import Image

        x, y = digits_test(40)
        images = [Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for img in x]
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=DIGIT_NAMES)})
        datasets.Dataset.from_dict({"image": images, "label": y.tolist()}, features=features).to_parquet(
            str(tmp_path / "digits.parquet")
        )
        for i, (img, label) in enumerate(zip(images, y.tolist())):
            folder = tmp_path / "folder" / "test" / DIGIT_NAMES[label]
            folder.mkdir(parents=True, exist_ok=True)
            img.resize((24, 20)).save(folder / f"{i}.png")  # another size: resized + centre-cropped to 16
        meta = {"digits": {"templates": ["a photo of the digit {c}"]}}

        pq = load_eval_data(str(tmp_path / "digits.parquet"), image_size=16, num_samples=30, seed=0, user_meta=meta)
        assert (pq.name, len(pq), pq.dataset_size, pq.class_names) == ("digits", 30, 40, list(DIGIT_NAMES))
        assert pq.templates == ["a photo of the digit {}"] and pq.meta["templates_source"] == "user json"
        idx = subset_indices(40, 30, 0)
        assert torch.equal(pq.labels, y[idx])
        assert torch.allclose(pq.pixels(), x[idx], atol=0.5 / 255 + 1e-6)  # PNG round trip: 8-bit quantisation

        folder = load_eval_data(str(tmp_path / "folder"), image_size=16, num_samples=None, seed=0)
        assert folder.images.shape == (40, 3, 16, 16) and folder.images.dtype == torch.uint8
        assert folder.class_names == sorted(DIGIT_NAMES)  # folder names, sorted
        assert folder.meta["classnames_source"] == "folder names" and folder.templates == ["a photo of a {}."]
        # labels follow the folder names
        assert sorted(folder.class_names[i] for i in folder.labels.tolist()) == sorted(DIGIT_NAMES[i] for i in y)

    def test_known_name_gets_its_prompt_ensemble(self, tmp_path):
        import datasets

        x, y = digits_test(6)
        features = datasets.Features(
            {"pixel_values": datasets.Array3D((3, 16, 16), "float32"), "label": datasets.ClassLabel(names=DIGIT_NAMES)}
        )
        datasets.Dataset.from_dict({"pixel_values": x.numpy(), "label": y.tolist()}, features=features).to_parquet(
            str(tmp_path / "cifar10.parquet")
        )
        data = load_eval_data(str(tmp_path / "cifar10.parquet"), image_size=16, num_samples=4)
        assert data.name == "cifar10" and len(data.templates) == 18  # OpenAI's CIFAR ensemble
        assert data.class_names == list(DIGIT_NAMES)  # local data keep their own names
        assert data.images.dtype == torch.float32 and torch.equal(data.pixels(), x[subset_indices(6, 4, 0)])
        single = load_eval_data(str(tmp_path / "cifar10.parquet"), image_size=16, num_samples=4, templates="single")
        assert single.templates == ["This is a photo of a {}"]
        # in-memory data keep their own templates
        mem = load_eval_data(EvalData("cifar10", x, y, list(DIGIT_NAMES), ["{}"]), image_size=16, num_samples=5)
        assert len(mem) == 5 and mem.templates == ["{}"]
        from mmt_ard.data.known_datasets import CLASS_NAMES
        from mmt_ard.data.known_datasets import TEMPLATES as BUILTIN

        assert len(BUILTIN["imagenet"]) == 80 and len(CLASS_NAMES["cifar100"]) == 100

    def test_save_to_disk_folder(self, tmp_path, digits_train):
        digits_train.select(range(20)).save_to_disk(str(tmp_path / "saved"))
        data = load_eval_data(str(tmp_path / "saved"), image_size=16, num_samples=8, split="train")
        assert (len(data), data.dataset_size, data.class_names) == (8, 20, list(DIGIT_NAMES))
        assert data.meta["format"] == "arrow" and data.images.shape == (8, 3, 16, 16)

    def test_bad_data_raise(self, tmp_path):
        x, _y = digits_test(4)
        with pytest.raises(ValueError, match="outside"):
            EvalData("d", x, torch.tensor([0, 1, 2, 11]), list(DIGIT_NAMES), TEMPLATES)
        with pytest.raises(ValueError, match="neither a local path"):
            load_eval_data("no_such_dataset", image_size=16, num_samples=4)
        (tmp_path / "empty").mkdir()
        with pytest.raises(ValueError, match="no parquet file"):
            load_eval_data(str(tmp_path / "empty"), image_size=16, num_samples=4)


# ---- per-image worst case ----
class TestWorstCase:
    """Attacks replaced by a table of which image each attack fools: the aggregation alone is under test."""

    N = 12
    clean_correct = torch.tensor([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0], dtype=torch.bool)
    survives: ClassVar[dict[str, torch.Tensor]] = {  # per attack: images it fails to fool
        "pgd": torch.tensor([1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1], dtype=torch.bool),
        "apgd-ce": torch.tensor([1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0], dtype=torch.bool),
        "apgd-t": torch.tensor([1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1], dtype=torch.bool),
    }

    @pytest.fixture
    def patched(self, monkeypatch):
        calls = []

        def fake_attack(model, x, y, attack, eps, protocol, active=None, seed=0, **kw):
            ids = (x[:, 0, 0, 0] * 255).round().long().cpu()  # each image carries its index
            calls.append((attack, int(active.sum())))
            return (active.cpu() & self.survives[attack][ids]).to(active.device)

        def fake_clean(model, x, batch_size, device):
            ids = (x[:, 0, 0, 0] * 255).round().long().cpu()
            labels = ids % 10
            return torch.where(self.clean_correct[ids], labels, (labels + 1) % 10)

        monkeypatch.setattr(sample_loop, "attack_batch", fake_attack)
        monkeypatch.setattr(sample_loop, "clean_predictions", fake_clean)
        x = torch.zeros(self.N, 3, 4, 4)
        x[:, 0, 0, 0] = torch.arange(self.N) / 255
        data = EvalData("table", x, torch.arange(self.N) % 10, list(DIGIT_NAMES), TEMPLATES)
        return data, calls

    @pytest.mark.parametrize("cascade", [True, False])
    def test_robust_only_if_every_attack_fails(self, patched, zero_shot, cascade):
        data, calls = patched
        protocol = get_protocol(
            "quick", attacks=("pgd", "apgd-ce", "apgd-t"), eps=(2 / 255,), cascade=cascade, checks=False, batch_size=5
        )
        result = evaluate_on_data(zero_shot, data, protocol, progress=False, return_masks=True)
        expected = self.clean_correct & self.survives["pgd"] & self.survives["apgd-ce"] & self.survives["apgd-t"]
        assert torch.equal(result["_masks"]["2/255"], expected)
        r = result["robust_accuracy"]["2/255"]
        assert r["num_robust"] == int(expected.sum()) == 4 and r["worst_case"] == pytest.approx(4 / 12)
        assert result["clean_accuracy"] == pytest.approx(10 / 12) and result["num_samples"] == 12
        per = r["per_attack"]
        if cascade:  # cumulative, and each attack only sees the images every earlier attack failed on
            assert per == pytest.approx({"pgd": 8 / 12, "apgd-ce": 6 / 12, "apgd-t": 4 / 12})
            assert [sum(n for a, n in calls if a == att) for att in ("pgd", "apgd-ce", "apgd-t")] == [10, 8, 6]
        else:
            assert per == pytest.approx({"pgd": 8 / 12, "apgd-ce": 7 / 12, "apgd-t": 8 / 12})
            assert all(sum(n for a, n in calls if a == att) == 10 for att in self.survives)


# ---- real attacks on a tiny CLIP trained on the digits ----
def test_apgd_at_least_as_strong_as_pgd_on_trained_tiny_clip(zero_shot, digits):
    """Per-image worst case of APGD-CE + APGD-T vs PGD-10 (and PGD-40) on 100 held-out digits."""
    data = load_eval_data(digits, image_size=16, num_samples=100, seed=0)
    x, y = data.pixels(), data.labels
    with torch.no_grad():
        clean = (zero_shot(x).logits.argmax(-1) == y).float().mean().item()
    assert clean > 0.75  # the model did learn the digits
    eps = 4 / 255
    protocol = get_protocol("robustvlm", n_iter=20, batch_size=100)
    pgd10 = run_attack(zero_shot, x, y, "pgd", eps, protocol, pgd_steps=10, pgd_step_size=eps / 4).float().mean()
    pgd40 = run_attack(zero_shot, x, y, "pgd", eps, protocol, pgd_steps=40, pgd_step_size=eps / 10).float().mean()
    ce = run_attack(zero_shot, x, y, "apgd-ce", eps, protocol)
    worst = ce & run_attack(zero_shot, x, y, "apgd-t", eps, protocol)
    assert 0.1 < pgd10 < clean  # the budget is in the interesting range
    assert ce.float().mean() <= min(pgd10, pgd40) + 1 / 100
    assert worst.float().mean() <= min(pgd10, pgd40)
    # the benchmark path gives the same worst case (same seeds, same batch)
    result = evaluate_on_data(
        zero_shot, data, protocol.replace(eps=(eps,), checks=False), progress=False, return_masks=True
    )
    assert result["robust_accuracy"]["4/255"]["worst_case"] <= worst.float().mean().item() + 2 / 100
    assert result["robust_accuracy"]["4/255"]["worst_case"] <= result["clean_accuracy"]


def test_two_class_dataset_runs_apgd_ce_only(zero_shot, digits):
    keep = digits.labels < 2
    data = EvalData("zero-vs-one", digits.images[keep][:20], digits.labels[keep][:20], ["zero", "one"], TEMPLATES)
    protocol = get_protocol("robustvlm", eps=(2 / 255,), n_iter=5, num_samples=20, checks=False)
    result = evaluate_on_data(zero_shot, data, protocol, progress=False)
    assert result["attacks"] == ["apgd-ce"] and result["skipped_attacks"] == ["apgd-t"]
    assert result["num_classes"] == 2 and result["num_samples"] == 20


def test_fp32_only(zero_shot):
    clip, processor = trained_tiny_clip()
    import copy

    from mmt_ard.models import ZeroShotCLIP

    half = ZeroShotCLIP(copy.deepcopy(clip).to(torch.bfloat16), processor)
    with pytest.raises(ValueError, match="fp32"):
        ensure_fp32(half, allow_cast=False)
    with pytest.warns(UserWarning, match="fp32 copy"):
        cast = ensure_fp32(half)
    assert cast is not half and all(p.dtype == torch.float32 for p in cast.parameters())
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())  # the caller's model is left alone
    assert ensure_fp32(zero_shot) is zero_shot


def test_model_mode_and_grads_untouched(digits):
    import copy

    from mmt_ard.models import ZeroShotCLIP

    clip, processor = trained_tiny_clip()
    zs = ZeroShotCLIP(copy.deepcopy(clip), processor)
    zs.train()
    zs.requires_grad_(True)
    protocol = get_protocol(
        "quick",
        attacks=("pgd", "apgd-ce"),
        eps=(2 / 255,),
        n_iter=3,
        pgd_steps=2,
        num_samples=16,
        check_samples=16,
        check_steps=1,
        noise_draws=1,
    )
    result = evaluate_on_data(zs, load_eval_data(digits, image_size=16, num_samples=16), protocol, progress=False)
    assert zs.training and all(m.training for m in zs.modules())
    assert all(p.grad is None for p in zs.parameters())
    assert set(result["checks"]) == {
        "eps_zero_equals_clean",
        "monotone_in_steps",
        "monotone_in_eps",
        "apgd_at_least_as_strong_as_pgd",
        "noise_far_weaker_than_attack",
        "nonzero_gradients",
    }
    json.dumps(result)  # JSON-ready


# ---- during training ----
def test_callback_logs_eval_metrics_with_mmtard_trainer(tmp_path, digits_train):
    from mmt_ard import MMTARDConfig, MMTARDTrainer
    from mmt_ard.embedded.tiny import build_tiny_clip, digits_dataset

    clip, processor = build_tiny_clip(hidden=32, image_size=16, seed=0)
    args = MMTARDConfig(
        output_dir=str(tmp_path / "run"),
        preset="tecoa",
        use_cpu=True,
        report_to="none",
        max_steps=4,
        per_device_train_batch_size=8,
        attack_steps=0,
        logging_steps=1,
        eval_steps=2,
        save_strategy="no",
        disable_tqdm=True,
        learning_rate=1e-3,
        seed=0,
    )
    trainer = MMTARDTrainer(
        model=clip, args=args, processing_class=processor, train_dataset=digits_train.select(range(64))
    )
    callback = RobustEvalCallback(
        digits_dataset(16, "test"), trainer=trainer, num_samples=24, eps=(2 / 255,), pgd_steps=2, batch_size=24
    )
    trainer.add_callback(callback)
    head = trainer.model.student.text_head.clone()
    trainer.train()
    logged = [h for h in trainer.state.log_history if "eval_robust_accuracy_eps2" in h]
    assert [h["step"] for h in logged] == [2, 4]
    for h in logged:
        assert 0 <= h["eval_robust_accuracy_eps2"] <= h["eval_robust_clean_accuracy"] <= 1
        assert h["eval_robust_num_samples"] == 24
    assert torch.equal(trainer.model.student.text_head, head)  # the training head is restored
    assert callback._data.templates == list(args.prompt_templates)  # the training prompt by default
    assert trainer.model.training


def test_callback_needs_eval_prefix():
    with pytest.raises(ValueError, match="eval_"):
        RobustEvalCallback(None, prefix="robust")


def test_text_heads_cached_on_disk(tmp_path, zero_shot, digits, monkeypatch):
    path = os.path.join(tmp_path, "model")
    clip, processor = trained_tiny_clip()
    clip.save_pretrained(path)
    processor.save_pretrained(path)
    data = load_eval_data(digits, image_size=16, num_samples=8)
    kwargs = {
        "datasets": {"digits": data},
        "protocol": "quick",
        "checks": False,
        "pgd_steps": 1,
        "output_dir": str(tmp_path / "out"),
        "progress": False,
        "verbose": False,
    }
    robust_eval.evaluate_robustness(path, **kwargs)
    assert len(os.listdir(tmp_path / "out" / "text_heads")) == 1
    from mmt_ard.models import zero_shot

    def fail(*a, **k):
        raise AssertionError("text head recomputed")

    monkeypatch.setattr(zero_shot, "build_text_head", fail)
    robust_eval.evaluate_robustness(path, resume=False, **kwargs)  # recomputes the numbers, not the head
