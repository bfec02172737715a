"""Bad input raises a clear error that names the field and the value it got (issue 2 item 11)."""

import time

import pytest
import torch
from conftest import STUDENT_KW
from transformers import CLIPVisionConfig, CLIPVisionModel

from mmt_ard import PRESETS, WEIGHTINGS, MMTARDConfig, MMTARDTrainer, Teacher
from mmt_ard.embedded.tiny import build_tiny_clip


def config(output_dir, **kwargs):
    return MMTARDConfig(output_dir=output_dir, use_cpu=True, report_to="none", **kwargs)


class TestConfigErrors:
    def test_unknown_preset_lists_valid_ones(self, output_dir):
        with pytest.raises(ValueError) as err:
            config(output_dir, preset="mmt_ard")
        message = str(err.value)
        assert "`preset`" in message and "'mmt_ard'" in message
        assert all(name in message for name in PRESETS)

    def test_unknown_weighting_lists_valid_ones(self, output_dir):
        with pytest.raises(ValueError) as err:
            config(output_dir, weighting="entropy")
        message = str(err.value)
        assert "`weighting`" in message and "'entropy'" in message
        assert all(name in message for name in WEIGHTINGS)

    @pytest.mark.parametrize(
        "field, value",
        [
            ("attack_eps", 1.5),
            ("attack_eps", -0.01),
            ("eval_attack_eps", 8.0),
            ("attack_steps", -1),
            ("eval_attack_steps", -3),
            ("attack_step_size", -0.5),
            ("attack_norm", "l1"),
            ("attack_loss", "dlr"),
            ("attack_momentum", 1.0),
            ("temperature", 0.0),
            ("kl_reduction", "mean"),
            ("feature_loss", "dot"),
            ("teacher_dtype", "int8"),
            ("logit_scale", -1.0),
            ("robust_coef", -1.0),
            ("ce_weight", -0.1),
        ],
    )
    def test_out_of_range_field_named_with_value(self, output_dir, field, value):
        with pytest.raises(ValueError) as err:
            config(output_dir, **{field: value})
        assert f"`{field}`" in str(err.value) and str(value) in str(err.value)

    def test_template_without_placeholder(self, output_dir):
        with pytest.raises(ValueError, match="prompt_templates.*a photo of a digit"):
            config(output_dir, prompt_templates=["a photo of a digit"])


class TestTrainerConstructionErrors:
    def test_preset_without_the_teachers_it_needs(self, make_trainer, teacher_specs):
        with pytest.raises(ValueError) as err:
            make_trainer("mmt-ard", teachers=[teacher_specs["robust"]])
        message = str(err.value)
        assert "`preset`='mmt-ard'" in message and "'clean'" in message
        with pytest.raises(ValueError, match="single-teacher.*robust"):
            make_trainer("single-teacher", teachers=[])

    def test_teachers_given_to_a_teacherless_preset(self, make_trainer, teacher_specs):
        with pytest.raises(ValueError, match="`preset`='tecoa'"):
            make_trainer("tecoa", teachers=[teacher_specs["robust"]])

    @pytest.mark.parametrize("names", [[], ["zero", "", "two"], ["zero", "   "]])
    def test_empty_class_names(self, make_config, student, teacher_specs, names):
        with pytest.raises(ValueError, match="`class_names`"):
            MMTARDTrainer(
                model=student[0],
                args=make_config(),
                teachers=list(teacher_specs.values()),
                processing_class=student[1],
                class_names=names,
            )

    def test_no_class_names_and_no_classlabel(self, make_config, student, teacher_specs, digits_small):
        import datasets

        plain = digits_small.cast_column("labels", datasets.Value("int64"))
        with pytest.raises(ValueError, match="`class_names`.*ClassLabel"):
            MMTARDTrainer(
                model=student[0],
                args=make_config(),
                teachers=list(teacher_specs.values()),
                processing_class=student[1],
                train_dataset=plain,
            )

    def test_teacher_without_text_tower(self, make_trainer, teacher_specs, robust_clip):
        vision_only = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=16,
                patch_size=4,
            )
        )
        bad = Teacher(vision_only, role="clean", processor=robust_clip[1])
        with pytest.raises(ValueError) as err:
            make_trainer("mmt-ard", teachers=[teacher_specs["robust"], bad])
        assert "CLIPVisionModel" in str(err.value) and "text tower" in str(err.value)

    def test_student_without_text_tower(self, make_config, student):
        vision_only = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=16,
                patch_size=4,
            )
        )
        with pytest.raises(ValueError, match="CLIPVisionModel.*text tower"):
            MMTARDTrainer(
                model=vision_only,
                args=make_config(preset="tecoa"),
                processing_class=student[1],
                class_names=["a", "b"],
            )

    @pytest.mark.parametrize("path", ["/nonexistent/mmt-ard/teacher", "./no-such-teacher-dir"])
    def test_teacher_path_that_does_not_exist(self, make_trainer, teacher_specs, path):
        start = time.perf_counter()
        with pytest.raises(OSError) as err:
            make_trainer("mmt-ard", teachers=[Teacher(path, role="robust"), teacher_specs["clean"]])
        assert path in str(err.value)
        assert time.perf_counter() - start < 10, "a missing local path must fail fast, without network retries"

    def test_teacher_model_of_wrong_type(self, make_trainer, teacher_specs, robust_clip):
        with pytest.raises(TypeError, match="`model` is a int"):
            bad = Teacher(3, role="robust", processor=robust_clip[1])
            make_trainer("mmt-ard", teachers=[bad, teacher_specs["clean"]])

    def test_missing_processor(self, make_config, student):
        with pytest.raises(ValueError, match="`processing_class`"):
            MMTARDTrainer(model=student[0], args=make_config(preset="tecoa"), class_names=["a", "b"])

    def test_args_of_wrong_type(self, student, output_dir):
        from transformers import TrainingArguments

        with pytest.raises(TypeError, match="MMTARDConfig"):
            MMTARDTrainer(
                model=student[0],
                args=TrainingArguments(output_dir=output_dir),
                processing_class=student[1],
                class_names=["a"],
            )

    def test_attack_target_that_is_no_clean_teacher(self, make_trainer):
        with pytest.raises(ValueError, match="`attack_target`='robust'.*adversarial"):
            make_trainer("mmt-ard", attack_target="robust")
        with pytest.raises(ValueError, match="`attack_target`='nobody'"):
            make_trainer("mmt-ard", attack_target="nobody")


class TestBatchErrors:
    @pytest.fixture
    def trainer(self, make_trainer):
        return make_trainer("mmt-ard", attack_steps=1)

    @pytest.mark.parametrize("bad_label", [10, -1, 12])
    def test_labels_outside_the_class_list(self, trainer, batch, bad_label):
        batch["labels"][3] = bad_label
        with pytest.raises(ValueError) as err:
            trainer.compute_loss(trainer.model, batch)
        assert "`labels`" in str(err.value) and str(bad_label) in str(err.value) and "10 classes" in str(err.value)

    @pytest.mark.parametrize("missing", ["pixel_values", "labels"])
    def test_missing_batch_key(self, trainer, batch, missing):
        del batch[missing]
        with pytest.raises(ValueError, match=f"'{missing}'"):
            trainer.compute_loss(trainer.model, batch)

    def test_pixel_values_of_wrong_shape(self, trainer, batch):
        batch["pixel_values"] = batch["pixel_values"][:, :1]  # grayscale
        with pytest.raises(ValueError, match=r"`pixel_values` has shape \(8, 1, 16, 16\)"):
            trainer.compute_loss(trainer.model, batch)

    def test_bad_labels_in_a_training_dataset(self, make_config, student, teacher_specs, digits_small, class_names):
        import datasets

        bad = digits_small.select(range(8)).cast_column("labels", datasets.Value("int64"))
        bad = bad.map(lambda row: {"labels": 11}).with_format("torch")
        trainer = MMTARDTrainer(
            model=student[0],
            args=make_config(max_steps=1),
            teachers=list(teacher_specs.values()),
            processing_class=student[1],
            train_dataset=bad,
            class_names=class_names,
        )
        with pytest.raises(ValueError, match=r"`labels` holds \[11\]"):
            trainer.train()


def test_student_seeds_are_reproducible():
    """The fixtures' tiny models are seeded: two builds are identical (the suite relies on it)."""
    a, _ = build_tiny_clip(**STUDENT_KW)
    b, _ = build_tiny_clip(**STUDENT_KW)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
