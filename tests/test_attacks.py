"""PGD in pixel space: threat model, side effects, argument checks, and strength against a reference PGD."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmt_ard.attacks import ce_inner_loss, embedding_l2_inner_loss, kl_inner_loss, pgd
from mmt_ard.models import ZeroShotCLIP, ZeroShotOutput

EPS = 8 / 255
INNER_LOSSES = ("kl", "ce", "embedding-l2")


@pytest.fixture
def zs_student(student, class_names):
    model = ZeroShotCLIP(*student)
    model.set_classes(class_names, ["This is a photo of a {}"])
    return model


@pytest.fixture
def zs_clean_teacher(clean_clip, class_names):
    model = ZeroShotCLIP(*clean_clip)
    model.set_classes(class_names, ["This is a photo of a {}"])
    return model


def make_inner_loss(kind, model, teacher, x, y):
    if kind == "ce":
        return ce_inner_loss(y)
    with torch.no_grad():
        if kind == "kl":
            return kl_inner_loss(F.softmax(teacher(x).logits, -1))
        return embedding_l2_inner_loss(model(x).image_embeds)


def perturbation_norm(x_adv, x, norm):
    d = (x_adv - x).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


class TestPGDThreatModel:
    @pytest.mark.parametrize("norm", ["linf", "l2"])
    @pytest.mark.parametrize("momentum", [None, 0.9])
    @pytest.mark.parametrize("kind", INNER_LOSSES)
    def test_budget_box_and_loss_increase(self, zs_student, zs_clean_teacher, batch, norm, momentum, kind):
        x, y = batch["pixel_values"], batch["labels"]
        eps = EPS if norm == "linf" else 0.5
        inner = make_inner_loss(kind, zs_student, zs_clean_teacher, x, y)
        x_adv = pgd(
            zs_student,
            x,
            inner,
            eps=eps,
            step_size=eps / 4,
            steps=5,
            norm=norm,
            momentum=momentum,
            generator=torch.Generator().manual_seed(0),
        )
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
        assert not x_adv.requires_grad
        assert (perturbation_norm(x_adv, x, norm) <= eps * (1 + 1e-5) + 1e-7).all()
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert not torch.equal(x_adv, x)
        with torch.no_grad():
            assert inner(zs_student(x_adv)).sum() > inner(zs_student(x)).sum()

    @pytest.mark.parametrize("norm", ["linf", "l2"])
    @pytest.mark.parametrize("random_init", [True, False])
    def test_eps_zero_returns_input_exactly(self, zs_student, batch, norm, random_init):
        x, y = batch["pixel_values"], batch["labels"]
        x_adv = pgd(
            zs_student, x, ce_inner_loss(y), eps=0.0, step_size=1 / 255, steps=3, norm=norm, random_init=random_init
        )
        assert torch.equal(x_adv, x)
        assert x_adv.data_ptr() != x.data_ptr()  # a copy: the caller may modify it

    def test_zero_steps_returns_input(self, zs_student, batch):
        x, y = batch["pixel_values"], batch["labels"]
        assert torch.equal(pgd(zs_student, x, ce_inner_loss(y), eps=EPS, step_size=EPS, steps=0), x)

    def test_seeded_generator_is_deterministic(self, zs_student, batch):
        x, y = batch["pixel_values"], batch["labels"]
        runs = [
            pgd(
                zs_student,
                x,
                ce_inner_loss(y),
                eps=EPS,
                step_size=EPS / 4,
                steps=2,
                generator=torch.Generator().manual_seed(3),
            )
            for _ in range(2)
        ]
        assert torch.equal(*runs)


class TestMomentumRule:
    """The authors' (FARE's `pgd_train.py`) update: `v <- normalise(m v + normalise(g))`, the velocity itself is
    replaced by its normalised value (method.md section 2: `v <- 0.9 v + sign(g); v <- sign(v)`)."""

    @pytest.mark.parametrize("norm", ["linf", "l2"])
    def test_velocity_is_replaced_by_its_normalised_value(self, norm):
        # one-dimensional toy: the loss peaks at 1.5 steps along +u, so the gradient flips sign at step 3
        x = torch.full((1, 3, 2, 2), 0.5)
        alpha = 0.01
        u = torch.ones_like(x) if norm == "linf" else torch.ones_like(x) / x.numel() ** 0.5  # one step's direction
        peak = x + 1.5 * alpha * u

        def inner(out):
            return -((out - peak) ** 2).flatten(1).sum(1)

        x_adv = pgd(
            lambda images: images,
            x,
            inner,
            eps=0.5,
            step_size=alpha,
            steps=3,
            norm=norm,
            random_init=False,
            momentum=0.9,
        )
        # steps: +u, +u, then the authors' rule turns back (sign(0.9 * 1 - 1) = -1): net one step along +u.
        # Accumulating the raw velocity instead would give 0.9 * 1.9 - 1 > 0: a third step forward.
        torch.testing.assert_close(x_adv - x, alpha * u, rtol=1e-4, atol=1e-6)

    def test_matches_the_authors_rule_on_a_clip(self, zs_student, zs_clean_teacher, batch):
        x, y = batch["pixel_values"], batch["labels"]
        eps, alpha, steps = 16 / 255, 4 / 255, 8
        inner = make_inner_loss("kl", zs_student, zs_clean_teacher, x, y)
        delta, v = torch.zeros_like(x), torch.zeros_like(x)
        for _ in range(steps):
            delta.requires_grad_(True)
            (g,) = torch.autograd.grad(inner(zs_student(x + delta)).sum(), delta)
            v = (0.9 * v + g.sign()).sign()
            delta = ((x + (delta.detach() + alpha * v).clamp(-eps, eps)).clamp(0, 1) - x).detach()
        x_adv = pgd(zs_student, x, inner, eps=eps, step_size=alpha, steps=steps, random_init=False, momentum=0.9)
        agree = ((x_adv - (x + delta)).abs() < 1e-6).float().mean()
        assert agree > 0.99, f"only {agree:.4f} of the pixels follow the authors' momentum rule"


class TestPGDSideEffects:
    def test_mode_restored_including_submodule_flags(self, zs_student, batch):
        x, y = batch["pixel_values"], batch["labels"]
        zs_student.train()
        zs_student.clip.text_model.eval()  # a mixed state must come back as it was
        before = {name: m.training for name, m in zs_student.named_modules()}
        seen = []
        handle = zs_student.clip.vision_model.register_forward_pre_hook(lambda m, a: seen.append(m.training))
        pgd(zs_student, x, ce_inner_loss(y), eps=EPS, step_size=EPS / 4, steps=2)
        handle.remove()
        assert seen and not any(seen), "the attacked model must run in eval mode"
        assert {name: m.training for name, m in zs_student.named_modules()} == before

    def test_no_parameter_grad_created(self, zs_student, batch):
        x, y = batch["pixel_values"], batch["labels"]
        pgd(zs_student, x, ce_inner_loss(y), eps=EPS, step_size=EPS / 4, steps=2)
        assert all(p.grad is None for p in zs_student.parameters())

    def test_existing_parameter_grad_untouched(self, zs_student, batch):
        x, y = batch["pixel_values"], batch["labels"]
        params = list(zs_student.parameters())
        for p in params:
            p.grad = torch.full_like(p, 0.5)
        pgd(zs_student, x, ce_inner_loss(y), eps=EPS, step_size=EPS / 4, steps=2)
        assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in params)

    @pytest.mark.parametrize("norm", ["linf", "l2"])
    def test_works_under_no_grad(self, zs_student, batch, norm):
        x, y = batch["pixel_values"], batch["labels"]
        eps = EPS if norm == "linf" else 0.5
        with torch.no_grad():
            x_adv = pgd(zs_student, x, ce_inner_loss(y), eps=eps, step_size=eps / 4, steps=3, norm=norm)
        assert not torch.equal(x_adv, x)
        assert (perturbation_norm(x_adv, x, norm) <= eps * (1 + 1e-5) + 1e-7).all()
        with torch.no_grad():
            assert F.cross_entropy(zs_student(x_adv).logits, y) > F.cross_entropy(zs_student(x).logits, y)

    def test_input_not_modified_and_parameters_unchanged(self, zs_student, batch):
        x, y = batch["pixel_values"], batch["labels"]
        x_before = x.clone()
        params_before = [p.detach().clone() for p in zs_student.parameters()]
        pgd(zs_student, x, ce_inner_loss(y), eps=EPS, step_size=EPS / 4, steps=2)
        assert torch.equal(x, x_before)
        assert all(torch.equal(a, b) for a, b in zip(params_before, zs_student.parameters()))


class TestPGDArguments:
    @pytest.mark.parametrize(
        "kwargs, field",
        [
            ({"eps": -0.1}, "attack_eps"),
            ({"eps": 1.5}, "attack_eps"),
            ({"steps": -1}, "attack_steps"),
            ({"step_size": -0.01}, "attack_step_size"),
            ({"norm": "l3"}, "attack_norm"),
        ],
    )
    def test_bad_arguments_raise_naming_the_field(self, zs_student, batch, kwargs, field):
        args = {"eps": EPS, "step_size": EPS / 4, "steps": 2, "norm": "linf"}
        args.update(kwargs)
        value = next(iter(kwargs.values()))
        with pytest.raises(ValueError) as err:
            pgd(zs_student, batch["pixel_values"], ce_inner_loss(batch["labels"]), **args)
        assert f"`{field}`" in str(err.value) and str(value) in str(err.value)

    def test_l2_eps_above_one_is_allowed(self, zs_student, batch):
        x, y = batch["pixel_values"], batch["labels"]
        x_adv = pgd(zs_student, x, ce_inner_loss(y), eps=2.0, step_size=0.5, steps=1, norm="l2")
        assert (perturbation_norm(x_adv, x, "l2") <= 2.0 + 1e-5).all()


# ---- strength against a standard PGD ----
class _DigitsMLP(nn.Module):
    """A small classifier with the zero-shot output interface."""

    def __init__(self, in_features):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_features, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        emb = self.body(x)
        return ZeroShotOutput(logits=self.head(emb), image_embeds=emb)


def reference_pgd(model, x, y, eps, alpha, steps, generator):
    """Madry et al. PGD as torchattacks writes it: uniform random start, signed CE-gradient step, project, clamp."""
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps, generator=generator)).clamp(0, 1).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv).logits, y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1).detach()
    return x_adv


@pytest.fixture(scope="module")
def trained_digits_classifier():
    """An MLP trained on the 8 px digits (about 97 % clean test accuracy), with the test split."""
    from mmt_ard.embedded.tiny import load_digits_arrays

    x_tr, y_tr, x_te, y_te = load_digits_arrays(8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _DigitsMLP(x_tr[0].numel())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = F.cross_entropy(model(x_tr).logits, y_tr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().requires_grad_(False)
    return model, x_te, y_te


class TestPGDStrength:
    def test_at_least_as_strong_as_reference_pgd(self, trained_digits_classifier):
        model, x, y = trained_digits_classifier

        def correct(images):
            return int((model(images).logits.argmax(-1) == y).sum())

        clean = correct(x)
        assert clean >= 0.9 * len(y), "the classifier must be accurate for robust accuracy to mean anything"
        eps, alpha, steps = 16 / 255, 4 / 255, 10
        for seed in (0, 1):
            ref = correct(reference_pgd(model, x, y, eps, alpha, steps, torch.Generator().manual_seed(seed)))
            lib = correct(
                pgd(
                    model,
                    x,
                    ce_inner_loss(y),
                    eps=eps,
                    step_size=alpha,
                    steps=steps,
                    generator=torch.Generator().manual_seed(seed),
                )
            )
            assert ref < 0.8 * clean, "the budget must make the attack matter"
            assert lib <= ref + 1, f"library PGD leaves {lib} correct, the reference {ref} (of {len(y)})"
        # random noise of the same budget hurts far less than the attack
        noise = (x + torch.empty_like(x).uniform_(-eps, eps, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
        assert correct(noise) > lib + 0.1 * len(y)


class TestOutputConvention:
    """`pgd` and `apgd` take the same models: ones returning an object with `.logits`, or plain `(B, C)` logits."""

    def test_pgd_on_plain_logits_equals_pgd_on_the_zero_shot_output(self, zs_student, batch):
        x, y = batch["pixel_values"], batch["labels"]
        kwargs = {"eps": EPS, "step_size": EPS / 4, "steps": 3}
        with_output = pgd(zs_student, x, ce_inner_loss(y), generator=torch.Generator().manual_seed(0), **kwargs)
        plain = pgd(
            lambda px: zs_student(px).logits, x, ce_inner_loss(y), generator=torch.Generator().manual_seed(0), **kwargs
        )
        assert not torch.equal(with_output, x)  # the attack moved the images
        assert torch.equal(with_output, plain)

    def test_apgd_on_the_zero_shot_output_equals_apgd_on_plain_logits(self, zs_student, batch):
        from mmt_ard.attacks.auto_pgd import apgd_ce

        x, y = batch["pixel_values"], batch["labels"]
        kwargs = {"eps": EPS, "n_iter": 3, "seed": 0}
        direct = apgd_ce(zs_student, x, y, **kwargs)
        plain = apgd_ce(lambda px: zs_student(px).logits, x, y, **kwargs)
        assert not torch.equal(direct, x)  # the attack moved some images
        assert torch.equal(direct, plain)

    def test_output_without_logits_is_a_clear_error(self, batch):
        x, y = batch["pixel_values"], batch["labels"]
        with pytest.raises(TypeError, match="must return `\\(B, C\\)` logits"):
            pgd(lambda px: {"scores": px}, x, ce_inner_loss(y), eps=EPS, step_size=EPS, steps=1)

    def test_embedding_loss_on_plain_logits_says_what_it_needs(self, zs_student, batch):
        x = batch["pixel_values"]
        with torch.no_grad():
            target = zs_student(x).image_embeds
        with pytest.raises(TypeError, match="image_embeds"):
            pgd(lambda px: zs_student(px).logits, x, embedding_l2_inner_loss(target), eps=EPS, step_size=EPS, steps=1)


class TestRandomStartDevice:
    def test_drawn_on_the_generator_device_and_seeded(self, batch):
        from mmt_ard.attacks import random_start

        x = batch["pixel_values"]
        first = random_start(x, EPS, "linf", torch.Generator(device=x.device).manual_seed(5))
        again = random_start(x, EPS, "linf", torch.Generator(device=x.device).manual_seed(5))
        other = random_start(x, EPS, "linf", torch.Generator(device=x.device).manual_seed(6))
        assert torch.equal(first, again) and not torch.equal(first, other)
        assert first.abs().max() <= EPS + 1e-7 and first.device == x.device

    def test_global_rng_of_the_device_without_generator(self, batch):
        """Without a generator the start comes from `x`'s device RNG, which the Trainer seeds and checkpoints."""
        from mmt_ard.attacks import random_start

        x = batch["pixel_values"]
        torch.manual_seed(11)
        first = random_start(x, EPS, "l2", None)
        torch.manual_seed(11)
        assert torch.equal(first, random_start(x, EPS, "l2", None))
