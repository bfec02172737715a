"""Fuzz-style tests: random invalid config values and random malformed batches never surface a traceback from deep
inside torch/transformers, only the library's own `ValueError`/`TypeError`, raised in `mmt_ard` and naming the field.

The cases are drawn from seeded generators (reproducible; a failure prints the case), a few hundred of each.
"""

import math
import os
import random

import numpy as np
import pytest
import torch

from mmt_ard import MMTARDConfig
from mmt_ard.training.config import FIELD_KINDS
from mmt_ard.training.presets import PRESETS

LIBRARY_DIR = os.path.dirname(os.path.abspath(MMTARDConfig.__module__ and __import__("mmt_ard").__file__))


def raised_in_library(err: BaseException) -> bool:
    """Whether the innermost frame of the traceback (where the exception was raised) is `mmt_ard` code."""
    tb = err.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(LIBRARY_DIR + os.sep)


class Opaque:
    def __repr__(self):
        return "<Opaque>"


# ---- config fields ----
def invalid_values(kind: str, rng: random.Random):
    """Values that are wrong for a field of this kind (wrong type, NaN/inf, None where not allowed, ...)."""
    base = kind.rstrip("?")
    pool = [Opaque(), {"a": 1}, torch.tensor(1.0), b"bytes", 1j]
    if base in ("number", "int"):
        pool += ["abc", "", "1e-3", [1.0], True, float("nan"), float("inf"), -float("inf"), -rng.uniform(1e-6, 1e6)]
        if base == "int":
            pool += [2.5, -rng.randint(1, 1000), np.float32(0.5)]
        else:
            pool += [rng.uniform(1.5, 1e9), np.float64("nan")]
    elif base == "bool":
        pool += ["yes", "False", 1, 0.0, [True]]
    elif base == "str":
        pool += [3, 2.5, True, ["mmt-ard"], "", "definitely-not-valid", " cosine"]
    elif base == "str_list":
        pool += [[], [1, 2], ["no placeholder"], ["{} and {}"], ["{name}"], 3, [None]]
    if not kind.endswith("?"):
        pool.append(None)
    return pool


CONFIG_CASES = 300


def test_random_invalid_config_values(tmp_path):
    rng = random.Random(1234)
    fields = sorted(FIELD_KINDS) + ["preset"]
    kinds = {**FIELD_KINDS, "preset": "str"}
    outcomes = {"error": 0, "accepted": 0}
    for case in range(CONFIG_CASES):
        preset = rng.choice(sorted(PRESETS))
        chosen = rng.sample(fields, rng.choice([1, 1, 1, 2, 3]))
        overrides = {name: rng.choice(invalid_values(kinds[name], rng)) for name in chosen}
        kwargs = {"output_dir": str(tmp_path), "use_cpu": True, "report_to": "none", "preset": preset, **overrides}
        label = f"case {case}: preset={preset!r} {overrides!r}"
        try:
            MMTARDConfig(**kwargs)
        except (ValueError, TypeError) as err:
            message = str(err)
            assert raised_in_library(err), f"{label}: raised outside mmt_ard: {type(err).__name__}: {message}"
            assert any(f"`{name}`" in message for name in chosen), f"{label}: the field is not named in {message!r}"
            outcomes["error"] += 1
        except Exception as err:  # anything else is the failure we look for
            pytest.fail(f"{label}: {type(err).__name__} instead of ValueError/TypeError: {err}")
        else:
            outcomes["accepted"] += 1  # some draws are valid (e.g. a large attack budget under the l2 norm)
    assert outcomes["error"] > 0.8 * CONFIG_CASES, outcomes


@pytest.mark.parametrize("name", sorted(FIELD_KINDS))
def test_each_field_rejects_a_wrong_type(tmp_path, name):
    kind = FIELD_KINDS[name].rstrip("?")
    wrong = {"number": "abc", "int": 2.5, "bool": "yes", "str": 3, "str_list": [1]}[kind]
    with pytest.raises((TypeError, ValueError)) as err:
        MMTARDConfig(output_dir=str(tmp_path), report_to="none", **{name: wrong})
    assert f"`{name}`" in str(err.value) and raised_in_library(err.value)


def test_nan_values_are_not_finite(tmp_path):
    for name in ("temperature", "attack_eps", "robust_coef", "logit_scale", "learning_rate", "sigmoid_gamma"):
        with pytest.raises(ValueError, match=f"`{name}`=nan is not a finite number"):
            MMTARDConfig(output_dir=str(tmp_path), report_to="none", **{name: math.nan})


# ---- batches ----
@pytest.fixture(scope="module")
def fuzz_trainer(tmp_path_factory):
    """An mmt-ard trainer with the teacher-output cache on (so `sample_id` is checked too)."""
    from conftest import CLEAN_KW, ROBUST_KW, STUDENT_KW

    from mmt_ard import MMTARDTrainer, Teacher
    from mmt_ard.embedded.tiny import DIGIT_NAMES, build_tiny_clip

    student, processor = build_tiny_clip(**STUDENT_KW)
    teachers = [
        Teacher(*build_tiny_clip(**ROBUST_KW)[:1], role="robust", processor=build_tiny_clip(**ROBUST_KW)[1]),
        Teacher(*build_tiny_clip(**CLEAN_KW)[:1], role="clean", processor=build_tiny_clip(**CLEAN_KW)[1]),
    ]
    args = MMTARDConfig(
        output_dir=str(tmp_path_factory.mktemp("fuzz")),
        use_cpu=True,
        report_to="none",
        attack_steps=1,
        cache_teacher_outputs=True,
    )
    trainer = MMTARDTrainer(
        model=student, args=args, teachers=teachers, processing_class=processor, class_names=DIGIT_NAMES
    )
    trainer.model.train()
    return trainer


def valid_batch(rng: random.Random, size: int = 4):
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    return {
        "pixel_values": torch.rand(size, 3, 16, 16, generator=gen),
        "labels": torch.randint(0, 10, (size,), generator=gen),
        "sample_id": torch.arange(size) + rng.randrange(10**6),
    }


def mutate(batch: dict, rng: random.Random):
    """One random corruption of a valid batch: `(batch_or_other_object, description)`."""
    x, y = batch["pixel_values"], batch["labels"]
    b = x.shape[0]
    choices = {
        # the batch itself
        "not a dict": lambda: rng.choice([[x, y], (x, y), x, "batch", 7]),
        "missing key": lambda: {k: v for k, v in batch.items() if k != rng.choice(["pixel_values", "labels"])},
        "empty dict": dict,
        # pixels
        "pixels wrong type": lambda: {**batch, "pixel_values": rng.choice([x.tolist(), x.numpy(), None, "img", 3.0])},
        "pixels wrong rank": lambda: {**batch, "pixel_values": rng.choice([x[0], x[:, 0], x[None], x.flatten()])},
        "pixels wrong channels": lambda: {**batch, "pixel_values": torch.cat([x, x], 1)[:, : rng.choice([1, 2, 4])]},
        "pixels int dtype": lambda: {**batch, "pixel_values": (x * 255).to(rng.choice([torch.uint8, torch.int64]))},
        "pixels bool/complex": lambda: {**batch, "pixel_values": rng.choice([x > 0.5, x.to(torch.complex64)])},
        "pixels other float": lambda: {**batch, "pixel_values": x.to(rng.choice(LOW_AND_HIGH_PRECISION))},
        "pixels nan/inf": lambda: {**batch, "pixel_values": _poke(x, rng, rng.choice(NON_FINITE))},
        "pixels 0-255": lambda: {**batch, "pixel_values": x * 255},
        "pixels normalised": lambda: {**batch, "pixel_values": (x - 0.5) / 0.25},
        "pixels empty": lambda: {**batch, "pixel_values": x[:0], "labels": y[:0], "sample_id": batch["sample_id"][:0]},
        "pixels zero size": lambda: {**batch, "pixel_values": x[:, :, :0]},
        "pixels tiny": lambda: {**batch, "pixel_values": x[:, :, :1, :1]},
        # labels
        "labels wrong type": lambda: {**batch, "labels": rng.choice([None, "3", ["a"] * b, {"y": 1}, Opaque()])},
        "labels float": lambda: {**batch, "labels": rng.choice([y.float(), y.float() + 0.5, y.float() * math.nan])},
        "labels bool/complex": lambda: {**batch, "labels": rng.choice([y > 4, y.to(torch.complex64)])},
        "labels list": lambda: {**batch, "labels": rng.choice([y.tolist(), [1.5] * b, [[1]] * b])},
        "labels shape": lambda: {
            **batch,
            "labels": rng.choice([y[:, None], y[:-1], torch.cat([y, y]), torch.nn.functional.one_hot(y, 10)]),
        },
        "labels out of range": lambda: {**batch, "labels": _poke(y, rng, rng.choice([-1, 10, 11, 10**12]))},
        # sample ids (the cache is on)
        "ids missing": lambda: {k: v for k, v in batch.items() if k != "sample_id"},
        "ids wrong": lambda: {
            **batch,
            "sample_id": rng.choice(
                [batch["sample_id"].float(), batch["sample_id"][:-1], None, 3.5, [1.5] * b, [str(i) for i in range(b)]]
            ),
        },
    }
    name = rng.choice(sorted(choices))
    return choices[name](), name


def _poke(t: torch.Tensor, rng: random.Random, value) -> torch.Tensor:
    t = t.clone()
    flat = t.view(-1)
    flat[rng.randrange(flat.numel())] = value
    return t


BATCH_CASES = 250
LOW_AND_HIGH_PRECISION = (torch.float16, torch.bfloat16, torch.float64)
NON_FINITE = (math.nan, math.inf, -math.inf)
FIELDS = ("`pixel_values`", "`labels`", "`sample_id`", "The batch")


def test_random_malformed_batches(fuzz_trainer):
    rng = random.Random(99)
    seen = {"error": set(), "accepted": set()}
    for case in range(BATCH_CASES):
        inputs, name = mutate(valid_batch(rng), rng)
        label = f"case {case} ({name})"
        try:
            loss = fuzz_trainer.compute_loss(fuzz_trainer.model, inputs)
        except (ValueError, TypeError) as err:
            message = str(err)
            assert raised_in_library(err), f"{label}: raised outside mmt_ard: {type(err).__name__}: {message}"
            assert any(f in message for f in FIELDS), f"{label}: no field named in {message!r}"
            seen["error"].add(name)
        except Exception as err:
            pytest.fail(f"{label}: {type(err).__name__} instead of ValueError/TypeError: {err}")
        else:
            assert torch.isfinite(loss), f"{label}: accepted but the loss is {loss}"
            seen["accepted"].add(name)
    # conversions that are safe are made (other float dtypes, integral float labels, (B, 1) labels, any image size)
    assert {"pixels other float", "pixels tiny"} <= seen["accepted"], seen
    assert {"not a dict", "pixels nan/inf", "pixels 0-255", "labels out of range", "ids missing"} <= seen["error"]


def test_malformed_batch_through_training_step(fuzz_trainer):
    """The Trainer's own input preparation must not get there first (e.g. an empty dict, a list)."""
    for inputs in ({}, [torch.rand(2, 3, 16, 16)], {"labels": torch.tensor([1, 2])}):
        with pytest.raises((ValueError, TypeError)) as err:
            fuzz_trainer.training_step(fuzz_trainer.model, inputs)
        assert raised_in_library(err.value) and any(f in str(err.value) for f in FIELDS), err.value
