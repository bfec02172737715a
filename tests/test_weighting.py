"""Teacher weighting strategies: fixed, confidence, sigmoid (with EMA state) and MTARD loss balancing."""

import json

import pytest
import torch
import torch.nn.functional as F

from mmt_ard.models import ZeroShotCLIP
from mmt_ard.training.weighting import WEIGHTINGS, make_weighting

TEMPLATE = "This is a photo of a {}"


def confidences(seed, k=2, b=16, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(k, b, generator=g) * 2 - 1) * spread + torch.tensor([0.2, -0.1])[:k].view(-1, 1)


class TestFixed:
    def test_weights_are_the_coefficients(self):
        w = make_weighting("fixed").weights(confidences(0), torch.tensor([50.0, 5.0]))
        assert w.shape == (2, 16)
        assert torch.equal(w, torch.tensor([[50.0], [5.0]]).expand(2, 16))
        assert make_weighting("fixed").state_dict() == {}


class TestConfidence:
    def test_weights_are_coefficient_times_raw_cosine(self):
        c = confidences(0)
        w = make_weighting("confidence").weights(c, torch.tensor([50.0, 5.0]))
        assert torch.allclose(w, torch.tensor([[50.0], [5.0]]) * c)

    def test_confidence_is_cosine_to_the_true_class_text_embedding(self, robust_clip, class_names, batch):
        """The teacher's confidence, recomputed from its raw CLIPModel, feeds `beta * cos`."""
        clip, processor = robust_clip
        module = ZeroShotCLIP(clip, processor)
        module.set_classes(class_names, [TEMPLATE])
        x, y = batch["pixel_values"], batch["labels"]

        # independent: own resize + normalisation, vision tower + projection, text tower + projection
        size = clip.config.vision_config.image_size
        mean = torch.tensor(processor.image_processor.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(processor.image_processor.image_std).view(1, 3, 1, 1)
        pixels = (F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) - mean) / std
        with torch.no_grad():
            img = clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output)
            tok = processor.tokenizer([TEMPLATE.format(n) for n in class_names], padding=True, return_tensors="pt")
            txt = clip.text_projection(
                clip.text_model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).pooler_output
            )
        cos = F.cosine_similarity(img, txt[y], dim=-1)  # (B,)

        with torch.no_grad():
            conf = module.confidence(module(x).image_embeds, y)
        assert torch.allclose(conf, cos, atol=1e-5)
        w = make_weighting("confidence").weights(conf.view(1, -1), torch.tensor([50.0]))
        assert torch.allclose(w[0], 50 * cos, atol=5e-4)


class TestSigmoid:
    def test_bounded_in_open_interval(self):
        strategy = make_weighting("sigmoid")
        coefs = torch.tensor([50.0, 5.0])
        for seed in range(5):
            c = confidences(seed)
            w = strategy.weights(c, coefs)
            assert (w > 0).all() and (w < 2 * coefs.view(-1, 1)).all()
            strategy.update(c, torch.ones(2))
        # far outside the running statistics the weights saturate but never leave [0, 2 beta]
        w = strategy.weights(torch.tensor([[5.0, -5.0], [5.0, -5.0]]), coefs)
        assert (w >= 0).all() and (w <= 2 * coefs.view(-1, 1)).all()

    def test_first_batch_centres_the_weights(self):
        strategy = make_weighting("sigmoid", gamma=1.0)
        c = confidences(0)
        w = strategy.weights(c, torch.tensor([1.0, 1.0]))
        z = (c - c.mean(1, keepdim=True)) / (c.std(1, unbiased=False, keepdim=True) + 1e-6)
        assert torch.allclose(w, 2 * torch.sigmoid(z), atol=1e-6)
        # monotone in the confidence: the more confident sample gets more weight
        order = c[0].argsort()
        assert (w[0][order].diff() >= 0).all()

    def test_ema_statistics_by_hand(self):
        strategy = make_weighting("sigmoid", momentum=0.9, gamma=2.0)
        batches = [confidences(s) for s in range(4)]
        strategy.weights(batches[0], torch.ones(2))
        mean, std = batches[0].mean(1), batches[0].std(1, unbiased=False)
        strategy.update(batches[0], torch.ones(2))
        mean, std = 0.9 * mean + 0.1 * batches[0].mean(1), 0.9 * std + 0.1 * batches[0].std(1, unbiased=False)
        for c in batches[1:]:
            strategy.update(c, torch.ones(2))
            mean = 0.9 * mean + 0.1 * c.mean(1)
            std = 0.9 * std + 0.1 * c.std(1, unbiased=False)
        assert torch.allclose(strategy.mean, mean, atol=1e-6)
        assert torch.allclose(strategy.std, std, atol=1e-6)
        probe = confidences(9)
        expected = (
            torch.tensor([[3.0], [0.5]])
            * 2
            * torch.sigmoid(2.0 * (probe - mean.view(-1, 1)) / (std.view(-1, 1) + 1e-6))
        )
        assert torch.allclose(strategy.weights(probe, torch.tensor([3.0, 0.5])), expected, atol=1e-5)

    def test_state_round_trips_through_state_dict(self):
        strategy = make_weighting("sigmoid", gamma=1.5, momentum=0.95)
        for s in range(3):
            c = confidences(s)
            strategy.weights(c, torch.ones(2))
            strategy.update(c, torch.ones(2))
        state = json.loads(json.dumps(strategy.state_dict()))  # JSON-safe: it lives in the checkpoint
        restored = make_weighting("sigmoid")
        restored.load_state_dict(state)
        assert restored.gamma == 1.5 and restored.momentum == 0.95 and restored.steps == strategy.steps
        assert torch.allclose(restored.mean, strategy.mean) and torch.allclose(restored.std, strategy.std)
        probe, coefs = confidences(7), torch.tensor([50.0, 5.0])
        assert torch.allclose(restored.weights(probe, coefs), strategy.weights(probe, coefs))


class TestMTARD:
    def test_update_rule_by_hand(self):
        """method.md section 4: w_nat <- w_nat - 0.025 (w_nat - r_nat / (r_adv + r_nat)), r = L_t / L_0."""
        strategy = make_weighting("mtard", lr=0.025)
        c = confidences(0)
        coefs = torch.tensor([1.0, 1.0])  # teachers: [robust (adv), clean (nat)]
        assert torch.allclose(strategy.weights(c, coefs), torch.full((2, 16), 0.5))
        losses = [torch.tensor([2.0, 0.5]), torch.tensor([1.0, 0.4]), torch.tensor([0.5, 0.45])]
        strategy.update(c, losses[0])  # records L_0
        w_adv, w_nat = 0.5, 0.5
        for loss in losses[1:]:
            strategy.update(c, loss)
            r_adv, r_nat = loss[0].item() / 2.0, loss[1].item() / 0.5
            w_nat = w_nat - 0.025 * (w_nat - r_nat / (r_adv + r_nat))
            w_adv = 1 - w_nat
        w = strategy.weights(c, coefs)
        assert w[0].allclose(torch.full((16,), w_adv), atol=1e-6)
        assert w[1].allclose(torch.full((16,), w_nat), atol=1e-6)
        assert abs(w_nat - 0.5) > 1e-3  # the rule moved the balance
        # the teacher whose loss fell less (relative to its start) gains weight
        assert w_nat > w_adv
        # coefficients multiply the balance
        assert torch.allclose(strategy.weights(c, torch.tensor([2.0, 4.0])), w * torch.tensor([[2.0], [4.0]]))

    def test_state_round_trips(self):
        strategy = make_weighting("mtard")
        c = confidences(0)
        strategy.weights(c, torch.ones(2))
        for loss in ([1.0, 1.0], [0.5, 0.9], [0.2, 0.8]):
            strategy.update(c, torch.tensor(loss))
        restored = make_weighting("mtard")
        restored.load_state_dict(json.loads(json.dumps(strategy.state_dict())))
        assert torch.allclose(restored.balance, strategy.balance)
        assert torch.allclose(restored.initial_losses, strategy.initial_losses)
        assert torch.allclose(restored.weights(c, torch.ones(2)), strategy.weights(c, torch.ones(2)))


class TestFactory:
    def test_unknown_name_lists_the_valid_ones(self):
        with pytest.raises(ValueError) as err:
            make_weighting("softmax")
        message = str(err.value)
        assert "`weighting`" in message and "'softmax'" in message
        assert all(name in message for name in WEIGHTINGS)

    def test_irrelevant_kwargs_are_dropped(self):
        assert make_weighting("mtard", gamma=3.0, momentum=0.5, lr=0.1).lr == 0.1
        assert make_weighting("sigmoid", gamma=3.0, lr=0.1).gamma == 3.0
