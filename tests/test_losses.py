"""Loss functions as pure tensor functions: properties, not snapshots."""

import math

import pytest
import torch
import torch.nn.functional as F

from mmt_ard.training.losses import TeacherTerm, feature_loss_per_sample, fused_distillation_loss, kl_per_sample


def logits(seed, shape=(6, 10), scale=3.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def textbook_kl(p_logits, q_logits, tau=1.0):
    p = F.softmax(p_logits / tau, -1)
    return (p * (p.log() - F.log_softmax(q_logits / tau, -1))).sum(-1)


class TestKLPerSample:
    @pytest.mark.parametrize("reduction", ["class_mean", "sum"])
    def test_zero_for_identical_inputs(self, reduction):
        z = logits(0)
        assert torch.allclose(kl_per_sample(z, z.clone(), reduction=reduction), torch.zeros(6), atol=1e-6)

    @pytest.mark.parametrize("reduction", ["class_mean", "sum"])
    def test_non_negative_and_per_sample_shape(self, reduction):
        kl = kl_per_sample(logits(0), logits(1), reduction=reduction)
        assert kl.shape == (6,)
        assert (kl >= 0).all() and (kl > 0).any()

    def test_sum_is_textbook_kl_and_direction(self):
        p, q = logits(0), logits(1)
        assert torch.allclose(kl_per_sample(p, q, reduction="sum"), textbook_kl(p, q), rtol=1e-5, atol=1e-6)
        # KL(p || q) != KL(q || p): the first argument is the target distribution
        assert not torch.allclose(kl_per_sample(p, q, reduction="sum"), kl_per_sample(q, p, reduction="sum"))

    def test_class_mean_is_sum_over_classes(self):
        p, q = logits(0, (4, 7)), logits(1, (4, 7))
        assert torch.allclose(
            kl_per_sample(p, q, reduction="class_mean"), kl_per_sample(p, q, reduction="sum") / 7, rtol=1e-6
        )
        # the authors' reduction: mean of the elementwise KL over the (B, C) tensor
        elementwise = F.kl_div(F.log_softmax(q, -1), F.log_softmax(p, -1), reduction="none", log_target=True)
        assert torch.allclose(kl_per_sample(p, q, reduction="class_mean").mean(), elementwise.mean(), rtol=1e-5)

    @pytest.mark.parametrize("tau", [0.5, 2.0, 4.0])
    def test_temperature_softens_and_scales_by_tau_squared(self, tau):
        p, q = logits(0), logits(1)
        expected = textbook_kl(p, q, tau) * tau**2
        assert torch.allclose(kl_per_sample(p, q, temperature=tau, reduction="sum"), expected, rtol=1e-5)

    def test_gradient_reaches_student_only_logits(self):
        p, q = logits(0).requires_grad_(True), logits(1).requires_grad_(True)
        kl_per_sample(p.detach(), q).sum().backward()
        assert q.grad is not None and q.grad.abs().sum() > 0
        assert p.grad is None

    def test_unknown_reduction_raises(self):
        with pytest.raises(ValueError, match="kl_reduction.*'mean'.*class_mean"):
            kl_per_sample(logits(0), logits(1), reduction="mean")


class TestFeatureLoss:
    def test_cosine_is_one_minus_cosine_and_scale_free(self):
        s, t = logits(0, (5, 8)), logits(1, (5, 8))
        expected = 1 - (F.normalize(s, dim=-1) * F.normalize(t, dim=-1)).sum(-1)
        assert torch.allclose(feature_loss_per_sample(s, t, "cosine"), expected, atol=1e-6)
        assert torch.allclose(feature_loss_per_sample(3 * s, t, "cosine"), expected, atol=1e-6)
        assert torch.allclose(feature_loss_per_sample(t, t, "cosine"), torch.zeros(5), atol=1e-6)

    def test_l2_is_squared_distance_of_unnormalised_embeddings(self):
        s, t = logits(0, (5, 8)), logits(1, (5, 8))
        assert torch.allclose(feature_loss_per_sample(s, t, "l2"), ((s - t) ** 2).sum(-1), rtol=1e-6)
        assert torch.allclose(feature_loss_per_sample(t, t, "l2"), torch.zeros(5))

    def test_unknown_kind_raises(self):
        with pytest.raises(ValueError, match="feature_loss.*'dot'"):
            feature_loss_per_sample(logits(0), logits(1), "dot")


def two_teacher_terms(b=6, c=10, feature=True):
    s_adv, s_cln = logits(10, (b, c)), logits(11, (b, c))
    return (
        [
            TeacherTerm(
                "robust",
                logits(1, (b, c)),
                s_adv,
                torch.linspace(0.5, 2.0, b),
                teacher_feats=logits(3, (b, 8)),
                student_feats=logits(4, (b, 8)),
                feature_weight=0.7 if feature else 0.0,
            ),
            TeacherTerm("clean", logits(2, (b, c)), s_cln, torch.full((b,), 0.25)),
        ],
        s_adv,
        s_cln,
    )


class TestFusedLoss:
    def test_terms_sum_to_loss(self):
        terms, s_adv, s_cln = two_teacher_terms()
        labels = torch.arange(6) % 10
        out = fused_distillation_loss(
            terms,
            labels=labels,
            student_adv_logits=s_adv,
            student_clean_logits=s_cln,
            ce_weight=0.3,
            self_kl_weight=0.2,
            kl_reduction="sum",
        )
        keys = sorted(k for k in out if k.endswith("_loss"))
        assert keys == ["ce_loss", "feat_robust_loss", "kl_clean_loss", "kl_robust_loss", "self_kl_loss"]
        assert torch.allclose(out["loss"], sum(out[k] for k in keys), rtol=1e-6)
        assert out["loss"].dim() == 0

    def test_each_term_matches_its_definition(self):
        terms, s_adv, s_cln = two_teacher_terms()
        labels = torch.arange(6) % 10
        out = fused_distillation_loss(
            terms,
            labels=labels,
            student_adv_logits=s_adv,
            student_clean_logits=s_cln,
            ce_weight=0.3,
            self_kl_weight=0.2,
            kl_reduction="class_mean",
            temperature=2.0,
        )
        r, c = terms
        kl_r = textbook_kl(r.teacher_logits, r.student_logits, 2.0) * 4 / 10
        assert torch.allclose(out["kl_robust_loss"], (r.weights * kl_r).mean(), rtol=1e-5)
        kl_c = textbook_kl(c.teacher_logits, c.student_logits, 2.0) * 4 / 10
        assert torch.allclose(out["kl_clean_loss"], (c.weights * kl_c).mean(), rtol=1e-5)
        cos = F.cosine_similarity(r.student_feats, r.teacher_feats, dim=-1)
        assert torch.allclose(out["feat_robust_loss"], 0.7 * (1 - cos).mean(), rtol=1e-5)
        assert torch.allclose(out["ce_loss"], 0.3 * F.cross_entropy(s_adv, labels), rtol=1e-5)
        self_kl = textbook_kl(s_adv, s_cln, 2.0) * 4 / 10
        assert torch.allclose(out["self_kl_loss"], 0.2 * self_kl.mean(), rtol=1e-5)
        # per_teacher_kl: unweighted batch-mean KL per teacher, detached (read by the mtard weighting)
        assert torch.allclose(out["per_teacher_kl"], torch.stack([kl_r.mean(), kl_c.mean()]), rtol=1e-5)
        assert not out["per_teacher_kl"].requires_grad

    def test_normalizer_divides_the_per_sample_sum(self):
        terms, _, _ = two_teacher_terms(feature=False)
        by_batch = fused_distillation_loss(terms)
        by_16 = fused_distillation_loss(terms, normalizer=16)
        assert torch.allclose(by_16["loss"], by_batch["loss"] * 6 / 16, rtol=1e-6)
        for key in ("kl_robust_loss", "kl_clean_loss"):
            assert torch.allclose(by_16[key], by_batch[key] * 6 / 16, rtol=1e-6)

    def test_halves_with_total_normalizer_add_up_to_full_batch(self):
        terms, _, _ = two_teacher_terms(feature=True)
        full = fused_distillation_loss(terms)["loss"]
        halves = []
        for sl in (slice(0, 3), slice(3, 6)):
            part = [
                TeacherTerm(
                    t.name,
                    t.teacher_logits[sl],
                    t.student_logits[sl],
                    t.weights[sl],
                    teacher_feats=None if t.teacher_feats is None else t.teacher_feats[sl],
                    student_feats=None if t.student_feats is None else t.student_feats[sl],
                    feature_weight=t.feature_weight,
                )
                for t in terms
            ]
            halves.append(fused_distillation_loss(part, normalizer=6)["loss"])
        assert torch.allclose(halves[0] + halves[1], full, rtol=1e-6)

    def test_kl_direction_student_teacher(self):
        t, s = logits(0), logits(1)
        out = fused_distillation_loss(
            [TeacherTerm("o", t, s, None, kl_direction="student_teacher")], kl_reduction="sum"
        )
        assert torch.allclose(out["kl_o_loss"], textbook_kl(s, t).mean(), rtol=1e-5)

    def test_zero_weights_zero_loss_and_gradients_flow(self):
        s = logits(1).requires_grad_(True)
        out = fused_distillation_loss([TeacherTerm("r", logits(0), s, torch.zeros(6))])
        assert out["loss"].item() == 0.0
        s2 = logits(1).requires_grad_(True)
        fused_distillation_loss([TeacherTerm("r", logits(0), s2, torch.ones(6))])["loss"].backward()
        assert s2.grad is not None and torch.isfinite(s2.grad).all() and s2.grad.abs().sum() > 0

    def test_no_term_raises(self):
        with pytest.raises(ValueError, match="no term"):
            fused_distillation_loss([TeacherTerm("r", None, None, None)])

    def test_ce_without_labels_raises(self):
        with pytest.raises(ValueError, match="ce_weight"):
            fused_distillation_loss([], ce_weight=1.0)

    def test_values_finite_for_confident_logits(self):
        t, s = logits(0) * 100, logits(1) * 100  # CLIP-scale logits (s = 100)
        out = fused_distillation_loss([TeacherTerm("r", t, s, torch.ones(6))])
        assert math.isfinite(out["loss"].item()) and out["loss"].item() >= 0
