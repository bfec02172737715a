"""Shared fixtures: tiny seeded CLIPs, the digits data and `MMTARDConfig` factories. Nothing here touches the network.

The three models differ on purpose so that the per-model pixel pipeline is exercised: the student is 32 wide at 16 px
(the data's size, no resize); the robust teacher is 48 wide with a 40-d joint space at 20 px; the clean teacher is 48
wide with a 44-d joint space at 12 px; each has its own image mean/std.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
# tiny models gain nothing from intra-op threads, and on a shared 2-core machine OpenMP spin-waiting makes
# oversubscribed runs 10-20x slower: one thread per test process
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from mmt_ard import MMTARDConfig, MMTARDTrainer, Teacher
from mmt_ard.embedded.tiny import DIGIT_NAMES, build_tiny_clip, digits_dataset, load_digits_arrays

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

IMAGE_SIZE = 16  # the digits are served at this size
STUDENT_KW = {"hidden": 32, "image_size": 16, "seed": 0}
ROBUST_KW = {
    "hidden": 48,
    "projection_dim": 40,
    "image_size": 20,
    "seed": 1,
    "image_mean": (0.40, 0.45, 0.50),
    "image_std": (0.30, 0.25, 0.20),
}
CLEAN_KW = {
    "hidden": 48,
    "projection_dim": 44,
    "image_size": 12,
    "seed": 2,
    "image_mean": (0.60, 0.50, 0.40),
    "image_std": (0.20, 0.30, 0.25),
}

# teachers each preset needs (the `original` teacher of fare / pmg-aft is built by the trainer)
PRESET_ROLES = {
    "mmt-ard": ("robust", "clean"),
    "mmt-ard-sigmoid": ("robust", "clean"),
    "mtard": ("robust", "clean"),
    "single-teacher": ("robust",),
    "tecoa": (),
    "fare": (),
    "pmg-aft": (),
}


# ---- models ----
@pytest.fixture
def student():
    """`(CLIPModel, CLIPProcessor)` of the tiny student (fresh per test: training mutates it)."""
    return build_tiny_clip(**STUDENT_KW)


@pytest.fixture
def robust_clip():
    return build_tiny_clip(**ROBUST_KW)


@pytest.fixture
def clean_clip():
    return build_tiny_clip(**CLEAN_KW)


@pytest.fixture
def teacher_specs(robust_clip, clean_clip):
    """Role -> `Teacher` spec, for the roles a preset needs."""
    return {
        "robust": Teacher(robust_clip[0], role="robust", processor=robust_clip[1]),
        "clean": Teacher(clean_clip[0], role="clean", processor=clean_clip[1]),
    }


# ---- data ----
@pytest.fixture(scope="session")
def digits_arrays():
    """`(x_train, y_train, x_test, y_test)` at 16 px, images in [0,1]."""
    return load_digits_arrays(IMAGE_SIZE)


@pytest.fixture(scope="session")
def digits_train():
    return digits_dataset(IMAGE_SIZE, "train")


@pytest.fixture(scope="session")
def digits_small(digits_train):
    """64 training rows with a `labels` ClassLabel (the digit names)."""
    return digits_train.select(range(64))


@pytest.fixture
def batch(digits_arrays):
    """A fixed batch of 8 training images as the trainer receives it."""
    x, y = digits_arrays[0][:8], digits_arrays[1][:8]
    return {"pixel_values": x.clone(), "labels": y.clone()}


@pytest.fixture
def class_names():
    return list(DIGIT_NAMES)


# ---- configs and trainers ----
@pytest.fixture
def output_dir(tmp_path):
    return str(tmp_path / "out")


@pytest.fixture
def make_config(output_dir):
    """`make_config(**overrides)` -> a fast CPU `MMTARDConfig` (2 steps, batch 8, PGD-2, no saving, no reporting)."""

    def make(**overrides):
        kwargs = {
            "output_dir": output_dir,
            "use_cpu": True,
            "report_to": "none",
            "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 16,
            "max_steps": 2,
            "attack_steps": 2,
            "logging_steps": 1,
            "save_strategy": "no",
            "disable_tqdm": True,
            "dataloader_num_workers": 0,
            "seed": 0,
        }
        kwargs.update(overrides)
        return MMTARDConfig(**kwargs)

    return make


@pytest.fixture
def make_trainer(make_config, student, teacher_specs, digits_small):
    """`make_trainer(preset, **config_overrides)` -> an `MMTARDTrainer` with the teachers the preset needs."""

    def make(preset="mmt-ard", *, teachers=None, train_dataset=None, **overrides):
        args = make_config(preset=preset, **overrides)
        if teachers is None:
            teachers = [teacher_specs[r] for r in PRESET_ROLES[preset]]
        return MMTARDTrainer(
            model=student[0],
            args=args,
            teachers=teachers,
            processing_class=student[1],
            train_dataset=digits_small if train_dataset is None else train_dataset,
            eval_dataset=digits_small.select(range(32)),
        )

    return make


@pytest.fixture
def fresh_trainer(make_config, digits_small):
    """`fresh_trainer(preset, **overrides)`: a trainer on newly built student and teachers (two trainers of one
    test share nothing, so comparing their weights means something)."""

    def make(preset="mmt-ard", train_dataset=None, **overrides):
        student, processor = build_tiny_clip(**STUDENT_KW)
        kw = {"robust": ROBUST_KW, "clean": CLEAN_KW}
        teachers = []
        for role in PRESET_ROLES[preset]:
            clip, proc = build_tiny_clip(**kw[role])
            teachers.append(Teacher(clip, role=role, processor=proc))
        return MMTARDTrainer(
            model=student,
            args=make_config(preset=preset, **overrides),
            teachers=teachers,
            processing_class=processor,
            train_dataset=digits_small if train_dataset is None else train_dataset,
        )

    return make


def clone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of a module's parameters, by name."""
    return {name: p.detach().clone() for name, p in module.named_parameters()}
