"""The precision policy: what `auto`/`fp32`/`bf16` choose on each device, explicit fields win, evaluation stays fp32."""

import pytest
import torch

from mmt_ard.training.precision import PrecisionPlan, describe, resolve_precision


class TestResolve:
    @pytest.mark.parametrize(
        "precision, cuda, bf16_ok, expected",
        [
            ("auto", True, True, PrecisionPlan("bf16", True, True, "bf16", True)),
            ("auto", True, False, PrecisionPlan("fp32", False, None, "fp32", False)),  # e.g. a V100
            ("auto", False, False, PrecisionPlan("fp32", False, None, "fp32", False)),  # CPU
            ("fp32", True, True, PrecisionPlan("fp32", False, False, "fp32", False)),  # the authors' fp32: TF32 off
            ("fp32", False, False, PrecisionPlan("fp32", False, None, "fp32", False)),
            ("bf16", True, True, PrecisionPlan("bf16", True, True, "bf16", True)),
            ("bf16", False, False, PrecisionPlan("bf16", True, None, "bf16", True)),  # CPU autocast; no TF32 there
        ],
    )
    def test_table(self, precision, cuda, bf16_ok, expected):
        assert resolve_precision(precision, cuda=cuda, bf16_supported=bf16_ok) == expected

    def test_unknown_policy_names_field_and_choices(self):
        with pytest.raises(ValueError, match=r"`precision`='fp8'.*auto.*fp32.*bf16"):
            resolve_precision("fp8", cuda=True, bf16_supported=True)


class TestConfig:
    def test_auto_on_cpu_is_fp32(self, make_config):
        args = make_config()
        assert (args.precision, args.bf16, args.teacher_dtype, args.attack_autocast) == ("auto", False, "fp32", False)

    def test_bf16_fills_unset_fields_and_explicit_ones_win(self, make_config):
        args = make_config(precision="bf16")
        assert (args.bf16, args.teacher_dtype, args.attack_autocast) == (True, "bf16", True)
        args = make_config(precision="bf16", teacher_dtype="fp32", attack_autocast=False)
        assert (args.bf16, args.teacher_dtype, args.attack_autocast) == (True, "fp32", False)
        args = make_config(precision="fp32", teacher_dtype="bf16")
        assert (args.bf16, args.teacher_dtype, args.attack_autocast) == (False, "bf16", False)

    def test_recorded_in_the_config_json_and_described(self, make_config):
        import json

        args = make_config(precision="bf16")
        saved = json.loads(args.to_json_string())
        assert (saved["precision"], saved["bf16"], saved["teacher_dtype"], saved["attack_autocast"]) == (
            "bf16",
            True,
            "bf16",
            True,
        )
        line = describe(args)
        assert "bf16 autocast of the training attack" in line and line.endswith("evaluation attacks fp32")

    def test_bad_policy_is_a_config_error(self, make_config):
        with pytest.raises(ValueError, match="`precision`"):
            make_config(precision="half")


class TestTrainer:
    def test_bf16_policy_runs_teachers_in_bf16_and_attacks_under_autocast(self, make_trainer, batch, monkeypatch):
        import mmt_ard.training.trainer as trainer_module

        trainer = make_trainer("mmt-ard", precision="bf16")
        assert {m.dtype for m in trainer.teacher_modules} == {torch.bfloat16}
        seen = []
        real_pgd = trainer_module.pgd
        monkeypatch.setattr(
            trainer_module, "pgd", lambda *a, **kw: seen.append(kw.get("autocast_dtype")) or real_pgd(*a, **kw)
        )
        trainer.model.train()
        assert torch.isfinite(trainer.compute_loss(trainer.model, dict(batch)))
        trainer.model.eval()
        trainer.prediction_step(trainer.model, dict(batch), prediction_loss_only=False)
        assert seen == [torch.bfloat16, None]  # training attack in bf16, evaluation attack in fp32

    def test_evaluation_is_fp32_under_the_bf16_policy(self, make_config, student, teacher_specs, digits_small):
        """Same student weights, same seed: `evaluate()` gives the same numbers under `bf16` as under `fp32`."""
        from mmt_ard import MMTARDTrainer

        results = []
        for precision in ("fp32", "bf16"):
            trainer = MMTARDTrainer(
                model=student[0],
                args=make_config(precision=precision, eval_attack_steps=3),
                teachers=[teacher_specs["robust"], teacher_specs["clean"]],
                processing_class=student[1],
                train_dataset=digits_small,
            )
            metrics = trainer.evaluate(digits_small.select(range(32)))
            results.append((metrics["eval_clean_accuracy"], metrics["eval_adv_accuracy"], metrics["eval_loss"]))
        assert results[0] == results[1]


class TestPrecastAttack:
    """The training attack under autocast casts the matmul weights once per attack; the result is bit-identical."""

    def test_pgd_through_precast_weights_equals_plain_autocast(self, student, class_names, batch):
        from mmt_ard.attacks import ce_inner_loss, pgd
        from mmt_ard.models import ZeroShotCLIP
        from mmt_ard.training.precision import PrecastForward, autocast_weight_copies

        model = ZeroShotCLIP(*student)
        model.set_classes(class_names, ["This is a photo of a {}"])
        model.requires_grad_(False)
        x, y = batch["pixel_values"], batch["labels"]
        kw = {"eps": 8 / 255, "step_size": 2 / 255, "steps": 3, "autocast_dtype": torch.bfloat16}
        plain = pgd(model, x, ce_inner_loss(y), generator=torch.Generator().manual_seed(1), **kw)
        precast = pgd(
            PrecastForward(model, torch.bfloat16),
            x,
            ce_inner_loss(y),
            generator=torch.Generator().manual_seed(1),
            **kw,
        )
        assert not torch.equal(plain, x)
        assert torch.equal(plain, precast)
        copies = autocast_weight_copies(model, torch.bfloat16)
        assert copies and all(t.dtype == torch.bfloat16 for t in copies.values())
        assert any(k.endswith("q_proj.weight") for k in copies)
        assert any(k.endswith("patch_embedding.weight") for k in copies)  # the patch conv is cast too
        assert not any(("layer_norm" in k or "position_embedding" in k or "class_embedding" in k) for k in copies)
        assert all(p.dtype == torch.float32 for p in model.parameters())  # the model itself is untouched

    def test_trainer_attacks_through_precast_weights_under_autocast(self, make_trainer, batch, monkeypatch):
        import mmt_ard.training.trainer as trainer_module
        from mmt_ard.training.precision import PrecastForward

        models = []
        real_pgd = trainer_module.pgd
        monkeypatch.setattr(trainer_module, "pgd", lambda m, *a, **kw: models.append(m) or real_pgd(m, *a, **kw))
        for attack_autocast in (True, False):
            trainer = make_trainer("mmt-ard", attack_autocast=attack_autocast)
            trainer.model.train()
            trainer.compute_loss(trainer.model, dict(batch))
        assert [isinstance(m, PrecastForward) for m in models] == [True, False]
