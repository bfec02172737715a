"""`MMTARDTrainer` end to end on tiny models: presets, freezing, checkpoints, resume, accumulation, evaluation."""

import copy
import json
import os

import pytest
import torch
from conftest import PRESET_ROLES, STUDENT_KW, clone_state
from transformers import CLIPModel, CLIPProcessor, TrainerCallback

from mmt_ard import PRESETS, MMTARDConfig, MMTARDTrainer, Teacher, ZeroShotCLIP
from mmt_ard.embedded.tiny import DIGIT_NAMES, build_tiny_clip

TEMPLATE = "This is a photo of a {}"
FAST_TRAIN = {"learning_rate": 1e-3, "warmup_steps": 0, "lr_scheduler_type": "constant"}

# what each preset logs beyond the common keys: its loss terms, and the teachers it distils from
EXPECTED_TERMS = {
    "mmt-ard": ["kl_robust_loss", "kl_clean_loss"],
    "mmt-ard-sigmoid": ["kl_robust_loss", "kl_clean_loss"],
    "mtard": ["kl_robust_loss", "kl_clean_loss"],
    "single-teacher": ["kl_robust_loss"],
    "tecoa": ["ce_loss"],
    "fare": ["feat_original_loss"],
    "pmg-aft": ["kl_original_loss", "ce_loss", "self_kl_loss"],
}
EXPECTED_TEACHERS = {
    "mmt-ard": ["robust", "clean"],
    "mmt-ard-sigmoid": ["robust", "clean"],
    "mtard": ["robust", "clean"],
    "single-teacher": ["robust"],
    "tecoa": [],
    "fare": ["original"],
    "pmg-aft": ["original"],
}
STUDENT_SEES_CLEAN = {"mmt-ard", "mmt-ard-sigmoid", "mtard", "pmg-aft"}


def split_params(clip):
    """(vision-side, text-side) parameter names of a CLIPModel (logit_scale counts as text side: frozen)."""
    vision, text = [], []
    for name, _ in clip.named_parameters():
        (vision if name.startswith(("vision_model.", "visual_projection.")) else text).append(name)
    return vision, text


def optimizer_param_ids(trainer):
    return {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}


class StateAtTrainBegin(TrainerCallback):
    """Captures the trainer's weighting state, student weights and feature projections when `train()` starts (after
    any resume)."""

    def __init__(self):
        self.trainer = None
        self.weighting_state = None
        self.student_state = None
        self.projections_state = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.weighting_state = copy.deepcopy(self.trainer.weighting.state_dict())
        self.student_state = clone_state(self.trainer.model.student.base)
        self.projections_state = {k: v.clone() for k, v in self.trainer.model.projections.state_dict().items()}


class TestPresetSmoke:
    @pytest.mark.parametrize("preset", sorted(PRESETS))
    def test_few_steps(self, preset, make_trainer, output_dir):
        assert set(PRESET_ROLES) == set(PRESETS) == set(EXPECTED_TERMS)
        trainer = make_trainer(preset, max_steps=2, save_strategy="steps", save_steps=2, **FAST_TRAIN)
        clip = trainer.model.student.base
        vision, text = split_params(clip)
        before = clone_state(clip)
        teachers_before = [clone_state(m) for m in trainer.teacher_modules]
        assert [s.name for s in trainer.teacher_specs] == EXPECTED_TEACHERS[preset]

        trainer.train()

        after = clone_state(clip)
        changed = [n for n in vision if not torch.equal(before[n], after[n])]
        assert len(changed) >= 0.8 * len(vision), f"only {len(changed)}/{len(vision)} vision tensors moved"
        assert all(torch.equal(before[n], after[n]) for n in text), "the text tower must stay frozen"
        assert all(not clip.get_parameter(n).requires_grad for n in text)

        opt_ids = optimizer_param_ids(trainer)
        assert {id(clip.get_parameter(n)) for n in vision} <= opt_ids
        assert not {id(clip.get_parameter(n)) for n in text} & opt_ids
        for module, snapshot in zip(trainer.teacher_modules, teachers_before):
            assert not module.training
            assert all(not p.requires_grad for p in module.parameters())
            assert not {id(p) for p in module.parameters()} & opt_ids
            assert all(torch.equal(p, snapshot[n]) for n, p in module.named_parameters())
            assert all(p.grad is None for p in module.parameters())

        # logged keys: every loss term, the total, per-teacher weights and accuracies, student accuracies, timings
        logs = trainer.state.log_history[0]
        expected = {"loss", "grad_norm", "learning_rate", "student_adv_accuracy"}
        expected |= set(EXPECTED_TERMS[preset])
        expected |= {f"time/{k}_s" for k in ("attack", "teachers", "student")}
        for name in EXPECTED_TEACHERS[preset]:
            expected |= {f"weight/{name}", f"teacher_accuracy/{name}"}
        if preset in STUDENT_SEES_CLEAN:
            expected.add("student_clean_accuracy")
        assert expected <= set(logs), f"missing {sorted(expected - set(logs))}"
        assert logs["time/attack_s"] > 0
        assert all(0 <= logs[k] <= 1 for k in logs if "accuracy" in k)
        terms = sum(logs[k] for k in EXPECTED_TERMS[preset])
        assert logs["loss"] == pytest.approx(terms, rel=1e-4)  # the `*_loss` entries sum to the loss

        # the checkpoint holds a plain CLIPModel with the trained weights, and the trainer's own state
        ckpt = os.path.join(output_dir, "checkpoint-2")
        assert os.path.isfile(os.path.join(ckpt, "model.safetensors"))
        assert os.path.isfile(os.path.join(ckpt, "mmt_ard_state.json"))
        loaded = CLIPModel.from_pretrained(ckpt)
        assert all(torch.equal(p, after[n]) for n, p in loaded.named_parameters())


def fresh_student_trainer(make_config, teacher_specs, dataset, preset, callbacks=(), **overrides):
    model, processor = build_tiny_clip(**STUDENT_KW)
    return MMTARDTrainer(
        model=model,
        args=make_config(preset=preset, **overrides),
        teachers=[teacher_specs[r] for r in PRESET_ROLES[preset]],
        processing_class=processor,
        train_dataset=dataset,
        callbacks=list(callbacks),
    )


class TestResume:
    @pytest.mark.parametrize("preset, fields", [("mmt-ard-sigmoid", ("mean", "std")), ("mtard", ("balance",))])
    def test_weighting_state_restored(self, preset, fields, make_config, teacher_specs, digits_small, output_dir):
        first = fresh_student_trainer(
            make_config,
            teacher_specs,
            digits_small,
            preset,
            max_steps=3,
            save_strategy="steps",
            save_steps=3,
            **FAST_TRAIN,
        )
        first.train()
        saved = first.weighting.state_dict()
        fresh = type(first.weighting)().state_dict()
        for field in fields:
            assert saved[field] is not None and saved[field] != fresh[field], f"{field} never moved: a weak test"
        if preset == "mtard":
            assert saved["balance"] != [0.5, 0.5]
        ckpt = os.path.join(output_dir, "checkpoint-3")
        with open(os.path.join(ckpt, "mmt_ard_state.json")) as f:
            assert json.load(f)["weighting"] == saved

        probe = StateAtTrainBegin()
        second = fresh_student_trainer(
            make_config, teacher_specs, digits_small, preset, callbacks=[probe], max_steps=4, **FAST_TRAIN
        )
        probe.trainer = second
        assert second.weighting.state_dict() != saved
        second.train(resume_from_checkpoint=ckpt)
        assert probe.weighting_state == saved
        trained = clone_state(first.model.student.base)
        assert all(torch.equal(v, trained[n]) for n, v in probe.student_state.items())
        assert second.state.global_step == 4


class TestLoadBestModelAtEnd:
    def test_best_checkpoint_is_loaded_into_the_student(self, make_config, student, digits_small):
        """`load_best_model_at_end`: the checkpoint holds a plain CLIPModel, not the bundle's state dict."""
        scores = iter([1.0, 0.0])  # the first evaluation (step 2) is the best

        def compute_metrics(eval_pred):
            return {"score": next(scores)}

        trainer = MMTARDTrainer(
            model=student[0],
            args=make_config(
                preset="tecoa",
                max_steps=4,
                save_strategy="steps",
                save_steps=2,
                eval_strategy="steps",
                eval_steps=2,
                load_best_model_at_end=True,
                metric_for_best_model="score",
                eval_attack_steps=0,
                **FAST_TRAIN,
            ),
            processing_class=student[1],
            train_dataset=digits_small,
            eval_dataset=digits_small.select(range(8)),
            compute_metrics=compute_metrics,
        )
        trainer.train()
        assert trainer.state.best_model_checkpoint.endswith("checkpoint-2")
        best = CLIPModel.from_pretrained(trainer.state.best_model_checkpoint)
        last = CLIPModel.from_pretrained(trainer.state.best_model_checkpoint.replace("checkpoint-2", "checkpoint-4"))
        now = clone_state(trainer.model.student.base)
        assert not all(torch.equal(p, now[n]) for n, p in last.named_parameters())
        assert all(torch.equal(p, now[n]) for n, p in best.named_parameters())


class TestFeatureProjections:
    def test_projections_train_save_resume_and_stay_out_of_the_export(
        self, make_config, teacher_specs, digits_small, output_dir
    ):
        import safetensors.torch

        first = fresh_student_trainer(
            make_config,
            teacher_specs,
            digits_small,
            "mmt-ard",
            feature_weight=0.5,
            max_steps=2,
            save_strategy="steps",
            save_steps=2,
            **FAST_TRAIN,
        )
        projections = first.model.projections
        # P_k maps the student's 32-d space to each teacher's (robust 40-d, clean 44-d)
        assert {k: tuple(v.weight.shape) for k, v in projections.items()} == {"robust": (40, 32), "clean": (44, 32)}
        before = {k: v.clone() for k, v in projections.state_dict().items()}
        first.train()
        assert {id(p) for p in projections.parameters()} <= optimizer_param_ids(first)
        after = {k: v.clone() for k, v in projections.state_dict().items()}
        assert all(not torch.equal(before[k], after[k]) for k in before)
        logs = first.state.log_history[0]
        assert {"feat_robust_loss", "feat_clean_loss"} <= set(logs)
        assert logs["loss"] == pytest.approx(
            sum(logs[k] for k in ("kl_robust_loss", "kl_clean_loss", "feat_robust_loss", "feat_clean_loss")), rel=1e-4
        )

        ckpt = os.path.join(output_dir, "checkpoint-2")
        exported = safetensors.torch.load_file(os.path.join(ckpt, "model.safetensors"))
        assert set(exported) == set(CLIPModel(first.model.student.base.config).state_dict())  # a plain CLIPModel
        second = fresh_student_trainer(
            make_config, teacher_specs, digits_small, "mmt-ard", feature_weight=0.5, max_steps=3, **FAST_TRAIN
        )
        probe = StateAtTrainBegin()
        probe.trainer = second
        second.add_callback(probe)
        second.train(resume_from_checkpoint=ckpt)
        assert probe.projections_state.keys() == after.keys()
        assert all(torch.equal(probe.projections_state[k], after[k]) for k in after)


class TestTextTower:
    def test_train_text_tower_trains_it(self, make_trainer):
        trainer = make_trainer("mmt-ard", train_text_tower=True, max_steps=2, **FAST_TRAIN)
        text = trainer.model.student.base.text_model
        before = clone_state(text)
        trainer.train()
        assert any(not torch.equal(before[n], p) for n, p in text.named_parameters())


class TestGradientAccumulation:
    def test_two_half_batches_equal_one_full_batch(self, make_config, teacher_specs, digits_small):
        data = digits_small.select(range(16))
        # plain SGD without clipping: the update is lr * gradient, so a mis-scaled loss shows (Adam's first step
        # and gradient clipping would both hide it); a deterministic attack splits identically across micro-batches
        common = {
            "max_steps": 1,
            "optim": "sgd",
            "learning_rate": 0.5,
            "warmup_steps": 0,
            "lr_scheduler_type": "constant",
            "weight_decay": 0.0,
            "max_grad_norm": 0.0,
            "attack_random_init": False,
            "attack_steps": 2,
            "attack_eps": 8 / 255,
            "attack_step_size": 2 / 255,
        }
        runs = {}
        for name, (batch_size, accumulation) in {"full": (16, 1), "accumulated": (8, 2)}.items():
            trainer = fresh_student_trainer(
                make_config,
                teacher_specs,
                data,
                "mmt-ard",
                per_device_train_batch_size=batch_size,
                gradient_accumulation_steps=accumulation,
                **common,
            )
            before = clone_state(trainer.model.student.base)
            trainer.train()
            after = clone_state(trainer.model.student.base)
            runs[name] = ({n: after[n] - before[n] for n in before}, trainer.state.log_history[0])
        (full_delta, full_log), (acc_delta, acc_log) = runs["full"], runs["accumulated"]
        assert sum(d.abs().sum() for d in full_delta.values()) > 0
        for name in full_delta:
            torch.testing.assert_close(acc_delta[name], full_delta[name], rtol=1e-4, atol=1e-6, msg=name)
        for key in ("loss", "kl_robust_loss", "kl_clean_loss", "student_adv_accuracy"):
            assert acc_log[key] == pytest.approx(full_log[key], rel=1e-5), key


class TestComputeLossAndEvaluate:
    @pytest.mark.parametrize("preset", ["mmt-ard", "single-teacher", "fare"])
    def test_attack_steps_zero_trains_on_clean_images(self, preset, make_trainer, batch):
        """`attack_steps=0` means no attack (docs): the step runs, and the adversarial inputs are the clean ones."""
        trainer = make_trainer(preset, attack_steps=0, **FAST_TRAIN)
        seen = []
        original = trainer._teachers_on
        trainer._teachers_on = lambda kind, px, *a: seen.append((kind, px)) or original(kind, px, *a)
        loss = trainer.compute_loss(trainer.model, dict(batch))
        assert torch.isfinite(loss)
        assert all(torch.equal(px, batch["pixel_values"]) for _, px in seen)
        trainer.train()  # and a whole run
        assert trainer.state.global_step == 2

    def test_return_outputs_gives_logits(self, make_trainer, batch):
        trainer = make_trainer("mmt-ard", attack_eps=0.0)
        loss, outputs = trainer.compute_loss(trainer.model, dict(batch), return_outputs=True)
        assert loss.dim() == 0 and loss.requires_grad
        assert outputs["logits"].shape == (8, 10)
        assert outputs["clean_logits"].shape == (8, 10)
        with torch.no_grad():
            expected = trainer.model.student(batch["pixel_values"]).logits
        torch.testing.assert_close(outputs["logits"].detach(), expected, rtol=1e-5, atol=1e-5)

    def test_evaluate_reports_clean_and_adversarial_accuracy(self, make_trainer):
        trainer = make_trainer("mmt-ard", eval_attack_eps=8 / 255, eval_attack_steps=3, eval_attack_step_size=2 / 255)
        metrics = trainer.evaluate()
        assert {"eval_clean_accuracy", "eval_adv_accuracy", "eval_loss"} <= set(metrics)
        assert metrics["eval_num_samples"] == 32
        assert 0 <= metrics["eval_adv_accuracy"] <= metrics["eval_clean_accuracy"] <= 1
        again = trainer.evaluate()  # the evaluation attack is seeded: same numbers twice
        assert all(again[k] == metrics[k] for k in ("eval_clean_accuracy", "eval_adv_accuracy", "eval_loss"))
        assert all(p.grad is None for p in trainer.model.parameters())

    def test_evaluate_at_eps_zero_adv_equals_clean(self, make_trainer):
        trainer = make_trainer("mmt-ard", eval_attack_eps=0.0)
        metrics = trainer.evaluate()
        assert metrics["eval_adv_accuracy"] == metrics["eval_clean_accuracy"]

    def test_class_names_from_classlabel(self, make_trainer):
        trainer = make_trainer("mmt-ard")
        assert trainer.class_names == DIGIT_NAMES
        assert trainer.model.student.text_head.shape == (10, 32)
        assert [m.text_head.shape for m in trainer.teacher_modules] == [(10, 40), (10, 44)]


class TestConfidenceFloor:
    """Negative raw-cosine confidences are logged, warned about, and clamped by `confidence_floor`."""

    def _weights(self, trainer, batch):
        # a robust teacher whose cosine to the true class is negative on half the batch
        trainer.teacher_modules[0].confidence = lambda embeds, labels: torch.linspace(-0.5, 0.5, len(labels))
        captured = {}
        original = trainer.weighting.weights

        def spy(conf, coefs):
            captured["conf"] = conf.clone()
            captured["weights"] = original(conf, coefs)
            return captured["weights"]

        trainer.weighting.weights = spy
        trainer.model.train()
        trainer.compute_loss(trainer.model, dict(batch))
        return captured

    def test_raw_cosines_by_default_and_negative_fraction_logged(self, make_trainer, batch):
        trainer = make_trainer("mmt-ard", attack_eps=0.0)
        captured = self._weights(trainer, batch)
        assert float((captured["conf"][0] < 0).float().mean()) == 0.5
        logged = trainer._metrics["train"]["negative_weight_fraction/robust"][-1][0]
        assert logged == pytest.approx(float((captured["weights"][0] < 0).float().mean()))
        assert trainer._warned_negative_weights

    def test_floor_clamps_confidences_before_weighting(self, make_trainer, batch):
        trainer = make_trainer("mmt-ard", attack_eps=0.0, confidence_floor=0.0)
        captured = self._weights(trainer, batch)
        assert float(captured["conf"].min()) >= 0.0
        assert float(captured["weights"].min()) >= 0.0
        assert trainer._metrics["train"]["negative_weight_fraction/robust"][-1][0] == 0.0
        assert not trainer._warned_negative_weights

    def test_floor_outside_cosine_range_is_an_error(self, make_config):
        with pytest.raises(ValueError, match="confidence_floor"):
            make_config(preset="mmt-ard", confidence_floor=2.0)


class TestPresetDefaults:
    def test_preset_fills_defaults_and_explicit_fields_win(self, output_dir):
        args = MMTARDConfig(output_dir=output_dir, preset="mmt-ard", attack_steps=3, report_to="none", use_cpu=True)
        assert args.attack_steps == 3
        assert args.learning_rate == 2e-5 and args.weight_decay == 1e-4 and args.lr_scheduler_type == "cosine"
        assert args.warmup_steps == pytest.approx(0.07) and args.get_warmup_steps(1000) == 70
        assert args.eval_attack_steps == 3 and args.eval_attack_eps == args.attack_eps

        explicit = MMTARDConfig(
            output_dir=output_dir,
            preset="mmt-ard",
            report_to="none",
            use_cpu=True,
            learning_rate=1e-3,
            attack_momentum=0.0,
            attack_random_init=False,
            robust_coef=0.0,
            kl_reduction="sum",
            attack_eps=0.0,
            eval_attack_steps=7,
        )
        assert explicit.learning_rate == 1e-3
        assert explicit.attack_momentum == 0.0 and explicit.attack_random_init is False  # falsy values still win
        assert explicit.robust_coef == 0.0 and explicit.clean_coef == 5.0 and explicit.attack_eps == 0.0
        assert explicit.kl_reduction == "sum" and explicit.eval_attack_steps == 7

    @pytest.mark.parametrize("preset", sorted(PRESETS))
    def test_every_preset_leaves_no_field_unset(self, preset, output_dir):
        args = MMTARDConfig(output_dir=output_dir, preset=preset, report_to="none", use_cpu=True)
        for key in PRESETS[preset]:
            if hasattr(args, key) and key not in ("attack_target",):
                assert getattr(args, key) is not None, key


class TestSaveModel:
    def test_save_model_is_a_plain_clip_with_processor(self, make_trainer, tmp_path, batch):
        trainer = make_trainer("mmt-ard", max_steps=1, **FAST_TRAIN)
        trainer.train()
        out = str(tmp_path / "exported")
        trainer.save_model(out)
        model = CLIPModel.from_pretrained(out)
        processor = CLIPProcessor.from_pretrained(out)
        trained = clone_state(trainer.model.student.base)
        assert all(torch.equal(p, trained[n]) for n, p in model.named_parameters())
        original, _ = build_tiny_clip(**STUDENT_KW)
        _, text = split_params(model)
        assert all(torch.equal(model.get_parameter(n), original.get_parameter(n)) for n in text)
        # the exported model + processor reproduce the trained student's zero-shot logits
        exported = ZeroShotCLIP(model, processor)
        exported.set_classes(DIGIT_NAMES, [TEMPLATE])
        with torch.no_grad():
            torch.testing.assert_close(
                exported(batch["pixel_values"]).logits, trainer.model.student(batch["pixel_values"]).logits
            )


class TestTeacherFromPath:
    def test_teachers_given_as_local_paths_are_loaded(self, tmp_path, robust_clip, clean_clip, make_trainer):
        robust_dir, clean_model_dir, clean_proc_dir = (str(tmp_path / d) for d in ("robust", "clean", "clean-proc"))
        robust_clip[0].save_pretrained(robust_dir)
        robust_clip[1].save_pretrained(robust_dir)
        clean_clip[0].save_pretrained(clean_model_dir)  # no processor files here, like LEAF-CLIP/CLIP-ViT-L-FARE2
        clean_clip[1].save_pretrained(clean_proc_dir)
        trainer = make_trainer(
            "mmt-ard",
            teachers=[
                Teacher(robust_dir, role="robust"),
                Teacher(clean_model_dir, role="clean", processor=clean_proc_dir),
            ],
            max_steps=1,
        )
        for module, (clip, processor) in zip(trainer.teacher_modules, (robust_clip, clean_clip)):
            assert module.clip is not clip
            saved = clone_state(clip)
            assert all(torch.equal(p, saved[n]) for n, p in module.clip.named_parameters())
            assert all(not p.requires_grad for p in module.parameters())
            assert module.image_size == clip.config.vision_config.image_size
            assert module.mean.flatten().tolist() == pytest.approx(list(processor.image_processor.image_mean))
        trainer.train()
        assert trainer.state.global_step == 1
