"""The `mmt-ard` preset's loss equals method.md section 2, recomputed here from the raw `CLIPModel`s.

`L = 1/(B*C) * sum_b [ 50 c_R[b] KL(z_R[b] || z_S_adv[b]) + 5 c_C[b] KL(z_C[b] || z_S_cln[b]) ]`

Everything on the reference side is written independently of the library: our own resize + normalisation, the vision
tower's pooled output through `visual_projection`, text embeddings of "This is a photo of a {}" through
`text_projection`, logit scale 100, raw cosine confidences, the textbook KL, and (for eps > 0) the authors'
sign-momentum PGD maximising KL to the clean teacher's clean prediction.
"""

import pytest
import torch
import torch.nn.functional as F

import mmt_ard.training.trainer as trainer_module

TEMPLATE = "This is a photo of a {}"
SCALE = 100.0


class RawZeroShot:
    """A zero-shot classifier written from the raw CLIPModel, independent of `mmt_ard.models`."""

    def __init__(self, clip, processor, class_names):
        self.clip = clip
        self.size = clip.config.vision_config.image_size
        self.mean = torch.tensor(processor.image_processor.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(processor.image_processor.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        tokens = processor.tokenizer([TEMPLATE.format(n) for n in class_names], padding=True, return_tensors="pt")
        with torch.no_grad():
            text = clip.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            self.head = F.normalize(clip.text_projection(text.pooler_output), dim=-1)  # (C, D)

    def embed(self, x):
        """(B, 3, H, W) in [0,1] -> (B, D) unnormalised image embeddings."""
        pixels = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        pixels = (pixels - self.mean) / self.std
        return self.clip.visual_projection(self.clip.vision_model(pixel_values=pixels).pooler_output)

    def logits(self, embeds):
        return SCALE * F.normalize(embeds, dim=-1) @ self.head.t()

    def confidence(self, embeds, y):
        return F.cosine_similarity(embeds, self.head[y], dim=-1)


def textbook_kl(p_logits, q_logits):
    """KL(softmax(p) || softmax(q)) per sample, summed over classes."""
    log_p, log_q = F.log_softmax(p_logits, -1), F.log_softmax(q_logits, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def section2_terms(student, robust, clean, x, x_adv, y):
    """(robust term, clean term) of the section 2 loss, each already divided by B*C."""
    with torch.no_grad():
        f_r, f_c = robust.embed(x_adv), clean.embed(x)
        z_r, z_c = robust.logits(f_r), clean.logits(f_c)
        c_r, c_c = robust.confidence(f_r, y), clean.confidence(f_c, y)
        z_s_adv, z_s_cln = student.logits(student.embed(x_adv)), student.logits(student.embed(x))
    b, c = z_r.shape
    robust_term = (50 * c_r * textbook_kl(z_r, z_s_adv)).sum() / (b * c)
    clean_term = (5 * c_c * textbook_kl(z_c, z_s_cln)).sum() / (b * c)
    return robust_term, clean_term


def reference_momentum_pgd(student, clean, x, eps, alpha, steps, delta0):
    """Section 2 step 1: sign-momentum PGD maximising KL(p_C(x) || p_S(x + delta)), from `delta0`."""
    with torch.no_grad():
        target = clean.logits(clean.embed(x))
    delta = ((x + delta0).clamp(0, 1) - x).detach()
    v = torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = textbook_kl(target, student.logits(student.embed(x + delta))).sum()
        (g,) = torch.autograd.grad(loss, delta)
        v = (0.9 * v + g.sign()).sign()
        delta = ((x + (delta.detach() + alpha * v).clamp(-eps, eps)).clamp(0, 1) - x).detach()
    return x + delta


@pytest.fixture
def raw_models(student, robust_clip, clean_clip, class_names):
    return tuple(RawZeroShot(clip, proc, class_names) for clip, proc in (student, robust_clip, clean_clip))


@pytest.fixture
def capture_pgd(monkeypatch):
    """Record every `(x, x_adv)` the trainer's PGD call produces."""
    calls = []
    original = trainer_module.pgd

    def recording_pgd(model, x, *args, **kwargs):
        x_adv = original(model, x, *args, **kwargs)
        calls.append((x.detach().clone(), x_adv.detach().clone()))
        return x_adv

    monkeypatch.setattr(trainer_module, "pgd", recording_pgd)
    return calls


class TestSection2Formula:
    def test_preset_is_the_released_recipe(self, make_config):
        args = make_config(preset="mmt-ard", attack_steps=None)
        assert args.attack_eps == pytest.approx(2 / 255) and args.attack_step_size == pytest.approx(1 / 255)
        assert args.attack_steps == 10 and args.attack_norm == "linf" and args.attack_momentum == 0.9
        assert args.attack_random_init and args.attack_loss == "kl" and args.attack_target == "clean"
        assert args.weighting == "confidence" and args.robust_coef == 50 and args.clean_coef == 5
        assert args.kl_reduction == "class_mean" and args.temperature == 1.0 and args.logit_scale == 100
        assert args.prompt_templates == [TEMPLATE]
        assert args.feature_weight == 0 and args.ce_weight == 0 and args.self_kl_weight == 0

    def test_eps_zero_loss_equals_formula(self, make_trainer, raw_models, batch):
        trainer = make_trainer("mmt-ard", attack_eps=0.0)
        loss = trainer.compute_loss(trainer.model, dict(batch))
        robust_term, clean_term = section2_terms(
            *raw_models, batch["pixel_values"], batch["pixel_values"], batch["labels"]
        )
        expected = robust_term + clean_term
        assert expected > 0
        torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=0)
        # the logged per-term losses are the two halves of the formula
        metrics = trainer._metrics["train"]
        assert metrics["kl_robust_loss"][-1][0] == pytest.approx(robust_term.item(), rel=1e-5)
        assert metrics["kl_clean_loss"][-1][0] == pytest.approx(clean_term.item(), rel=1e-5)

    def test_eps_zero_gradient_accumulation_normaliser(self, make_trainer, raw_models, batch):
        """With `num_items_in_batch` = 2B (two micro-batches) the per-sample sum is divided by 2B, not B."""
        trainer = make_trainer("mmt-ard", attack_eps=0.0)
        loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=torch.tensor(16))
        expected = sum(section2_terms(*raw_models, batch["pixel_values"], batch["pixel_values"], batch["labels"]))
        torch.testing.assert_close(loss.detach(), expected * 8 / 16, rtol=1e-5, atol=0)

    def test_adversarial_loss_equals_formula_on_the_trainers_x_adv(self, make_trainer, raw_models, batch, capture_pgd):
        trainer = make_trainer("mmt-ard", attack_steps=None)  # the preset's PGD-10 at 2/255, momentum 0.9
        torch.manual_seed(1234)
        loss = trainer.compute_loss(trainer.model, dict(batch))
        assert len(capture_pgd) == 1
        x_seen, x_adv = capture_pgd[0]
        x, y = batch["pixel_values"], batch["labels"]
        assert torch.equal(x_seen, x)
        assert 0 < (x_adv - x).abs().max() <= 2 / 255 + 1e-6
        expected = sum(section2_terms(*raw_models, x, x_adv, y))
        torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=0)
        # and that differs from the clean-input value: the attack changed the robust term
        clean_value = sum(section2_terms(*raw_models, x, x, y))
        assert not torch.isclose(expected, clean_value, rtol=1e-4)

    def test_trainers_x_adv_is_the_authors_momentum_pgd(self, make_trainer, raw_models, batch, capture_pgd):
        """Same random start (global RNG, uniform in the ball) -> the same x_adv as an independent PGD."""
        eps, alpha, steps = 2 / 255, 1 / 255, 10
        trainer = make_trainer("mmt-ard", attack_steps=None)
        x = batch["pixel_values"]
        torch.manual_seed(99)
        delta0 = (torch.rand(x.shape) * 2 - 1) * eps
        torch.manual_seed(99)
        trainer.compute_loss(trainer.model, dict(batch))
        x_adv = capture_pgd[0][1]
        student, _, clean = raw_models
        reference = reference_momentum_pgd(student, clean, x, eps, alpha, steps, delta0)
        # sign steps: allow rare float-level sign flips of near-zero gradient components
        agree = ((x_adv - reference).abs() < 1e-6).float().mean()
        assert agree > 0.99, f"only {agree:.4f} of the pixels agree with the reference momentum PGD"
        with torch.no_grad():
            target = F.softmax(clean.logits(clean.embed(x)), -1)

            def kl(images):
                return textbook_kl(target.log(), student.logits(student.embed(images))).sum()

            assert kl(x_adv) > kl(x) and kl(x_adv) >= 0.99 * kl(reference)


def ce(logits, y):
    return F.cross_entropy(logits, y, reduction="none")


class TestBaselineFormulas:
    """Every other preset's loss, recomputed from the raw models on the x_adv the trainer produced (method.md sec. 4)."""

    @pytest.mark.parametrize("preset", ["single-teacher", "tecoa", "fare", "pmg-aft", "mtard", "mmt-ard-sigmoid"])
    def test_loss_equals_the_table(self, preset, make_trainer, raw_models, batch, capture_pgd):
        trainer = make_trainer(preset, attack_eps=8 / 255, attack_step_size=2 / 255, attack_steps=3)
        torch.manual_seed(0)
        loss = trainer.compute_loss(trainer.model, dict(batch)).detach()
        x, y = batch["pixel_values"], batch["labels"]
        x_adv = capture_pgd[0][1]
        assert not torch.equal(x_adv, x)
        student, robust, clean = raw_models
        original = student  # fare / pmg-aft: a frozen copy of the (not yet trained) student
        with torch.no_grad():
            f_s_adv, f_s_cln = student.embed(x_adv), student.embed(x)
            z_s_adv, z_s_cln = student.logits(f_s_adv), student.logits(f_s_cln)
            if preset == "single-teacher":
                expected = textbook_kl(robust.logits(robust.embed(x)), z_s_adv).mean()
            elif preset == "tecoa":
                expected = ce(z_s_adv, y).mean()
            elif preset == "fare":
                expected = (f_s_adv - original.embed(x)).pow(2).sum(-1).mean()
            elif preset == "pmg-aft":
                z_orig_adv = original.logits(original.embed(x_adv))
                expected = (ce(z_s_adv, y) + textbook_kl(z_s_adv, z_orig_adv) + textbook_kl(z_s_adv, z_s_cln)).mean()
            elif preset == "mtard":  # first step: balance 1/2, 1/2
                kl_r = textbook_kl(robust.logits(robust.embed(x_adv)), z_s_adv)
                kl_c = textbook_kl(clean.logits(clean.embed(x)), z_s_cln)
                expected = (0.5 * kl_r + 0.5 * kl_c).mean()
            else:  # mmt-ard-sigmoid, first batch: statistics of this batch, w = beta * 2 sigmoid((c - mu) / (sigma + 1e-6))
                f_r, f_c = robust.embed(x_adv), clean.embed(x)
                terms = []
                for beta, model, f, z_s in ((50, robust, f_r, z_s_adv), (5, clean, f_c, z_s_cln)):
                    c = model.confidence(f, y)
                    w = beta * 2 * torch.sigmoid((c - c.mean()) / (c.std(unbiased=False) + 1e-6))
                    terms.append(w * textbook_kl(model.logits(f), z_s))
                expected = sum(terms).sum() / (len(y) * 10)
        assert expected.abs() > 0
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
