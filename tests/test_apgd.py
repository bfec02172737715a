"""Tests for mmt_ard.attacks.auto_pgd on a tiny CNN trained in-process on sklearn's digits (real data)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmt_ard.attacks.auto_pgd import _checkpoints, apgd, apgd_ce, apgd_t, apgd_worst_case

sklearn_datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def digits():
    """(model, x, y): CNN (~97% held-out acc) and 200 held-out images (200, 3, 16, 16) in [0, 1].

    Runs single-threaded: for a model this small, extra threads only spin (and are many
    times slower on a busy CI machine).
    """
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield _train_digits()
    finally:
        torch.set_num_threads(n_threads)


def _train_digits():
    d = sklearn_datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    x = F.interpolate(x, size=16, mode="bilinear", align_corners=False).clamp(0, 1).repeat(1, 3, 1, 1)
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    tr, te = perm[:1400], perm[1400:1600]
    rng_state = torch.get_rng_state()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )
    torch.set_rng_state(rng_state)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(8):
        order = tr[torch.randperm(len(tr), generator=g)]
        for i in range(0, len(order), 64):
            b = order[i : i + 64]
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    acc = correct(model, x[te], y[te]).float().mean().item()
    assert acc > 0.85, acc
    return model, x[te], y[te]


@torch.no_grad()
def correct(model, x, y):
    return model(x).argmax(1) == y  # (B,)


def pgd(model, x, y, eps, steps=10):
    """Plain Linf PGD with CE, no random start, step eps/4 (reference baseline)."""
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), [x_adv])
        x_adv = (x + (x_adv.detach() + eps / 4 * g.sign() - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv


def test_checkpoint_schedule():
    assert _checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert _checkpoints(1) == [1]


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5), ("l2", 2.0)])
def test_budget_and_range(digits, norm, eps):
    model, x, y = digits
    x_adv = apgd(model, x[:64], y[:64], eps=eps, norm=norm, n_iter=20)
    assert x_adv.shape == x[:64].shape and x_adv.dtype == torch.float32
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x[:64]).flatten(1)
    dist = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (dist <= eps * (1 + 1e-5)).all()
    assert dist.max() > 0.5 * eps  # the attack actually moved


def test_eps_zero_returns_input(digits):
    model, x, y = digits
    assert torch.equal(apgd(model, x[:16], y[:16], eps=0.0), x[:16])
    x_adv, robust = apgd_worst_case(model, x[:16], y[:16], eps=0.0, n_iter=5, n_target_classes=2)
    assert torch.equal(x_adv, x[:16]) and torch.equal(robust, correct(model, x[:16], y[:16]))


def test_deterministic_and_global_rng_untouched(digits):
    model, x, y = digits
    state = torch.get_rng_state()
    a = apgd(model, x[:32], y[:32], eps=16 / 255, n_iter=10, seed=3)
    b = apgd(model, x[:32], y[:32], eps=16 / 255, n_iter=10, seed=3)
    c = apgd(model, x[:32], y[:32], eps=16 / 255, n_iter=10, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)


class Recorder(nn.Module):
    """Wraps a model; records the training flag seen by each forward call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.bn, self.seen = model, nn.BatchNorm2d(3), []

    def forward(self, x):
        self.seen.append(self.training)
        return self.model(x)


def test_model_mode_restored_and_param_grads_untouched(digits):
    model, x, y = digits
    wrapped = Recorder(model).train()
    wrapped.bn.eval()  # mixed modes must come back exactly
    before = {n: m.training for n, m in wrapped.named_modules()}
    model[0].weight.grad = torch.ones_like(model[0].weight)
    try:
        apgd_worst_case(wrapped, x[:16], y[:16], eps=16 / 255, n_iter=5, n_target_classes=2)
        assert wrapped.seen and not any(wrapped.seen)  # eval() during the attack
        assert {n: m.training for n, m in wrapped.named_modules()} == before
        assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
        assert all(p.grad is None for n, p in model.named_parameters() if n != "0.weight")
    finally:
        model.eval()
        model[0].weight.grad = None


def test_no_grad_inference_mode_autocast_dtype_and_plain_callable(digits):
    model, x, y = digits
    ref = apgd(model, x[:32], y[:32], eps=16 / 255, n_iter=10)
    with torch.no_grad():
        assert torch.equal(apgd(model, x[:32], y[:32], eps=16 / 255, n_iter=10), ref)
    with torch.inference_mode():
        assert torch.equal(apgd(model, x[:32].clone(), y[:32], eps=16 / 255, n_iter=10), ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(apgd(model, x[:32], y[:32], eps=16 / 255, n_iter=10), ref)
    out = apgd(lambda z: model(z), x[:32].double(), y[:32], eps=16 / 255, n_iter=10)
    assert out.dtype == torch.float32 and torch.allclose(out, ref)


def test_misclassified_inputs_returned_unchanged(digits):
    model, x, y = digits
    wrong = (y + 1) % 10  # labels the model does not predict -> nothing to attack
    assert torch.equal(apgd(model, x[:16], wrong[:16], eps=16 / 255, n_iter=5), x[:16])


def test_validation_errors(digits):
    model, x, y = digits
    with pytest.raises(ValueError, match=r"eps=8\b.*8/255|eps=8\b.*4/255"):
        apgd(model, x[:4], y[:4], eps=8)
    with pytest.raises(ValueError, match="eps"):
        apgd(model, x[:4], y[:4], eps=-0.1)
    with pytest.raises(ValueError, match="eps"):
        apgd(model, x[:4], y[:4], eps=1.5, norm="linf")
    with pytest.raises(ValueError, match="norm"):
        apgd(model, x[:4], y[:4], eps=0.1, norm="l1")
    with pytest.raises(ValueError, match="n_iter"):
        apgd(model, x[:4], y[:4], eps=0.1, n_iter=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        apgd(model, x[:4] * 2 - 0.5, y[:4], eps=0.1)
    with pytest.raises(ValueError, match="attacks"):
        apgd_worst_case(model, x[:4], y[:4], eps=0.1, attacks=("fab",))


def test_apgd_t_needs_four_classes(digits):
    model, x, y = digits
    keep = y < 2
    two_class = lambda z: model(z)[:, :2]  # noqa: E731
    with pytest.raises(ValueError, match=r"n_target_classes.*|.*4 classes"):
        apgd_t(two_class, x[keep][:8], y[keep][:8], eps=8 / 255, n_iter=5)
    with pytest.raises(ValueError, match="4 classes"):
        apgd_worst_case(two_class, x[keep][:8], y[keep][:8], eps=8 / 255, n_iter=5)
    # the caller's fallback: APGD-CE works for 2 classes
    _, robust = apgd_worst_case(two_class, x[keep][:8], y[keep][:8], eps=8 / 255, n_iter=5, attacks=("apgd-ce",))
    assert robust.shape == (8,)
    # 4 classes with n_target_classes=9 -> capped at 3 targets
    keep4 = y < 4
    four_class = lambda z: model(z)[:, :4]  # noqa: E731
    x4, y4 = x[keep4][:24], y[keep4][:24]
    x_adv = apgd_t(four_class, x4, y4, eps=24 / 255, n_iter=10, n_target_classes=9)
    assert (x_adv - x4).abs().max() <= 24 / 255 + 1e-6
    assert correct(four_class, x_adv, y4).sum() <= correct(four_class, x4, y4).sum()


def test_apgd_ce_at_least_as_strong_as_pgd10(digits):
    model, x, y = digits
    eps = 16 / 255
    rob_pgd = correct(model, pgd(model, x, y, eps), y).float().mean().item()
    assert 0.1 < rob_pgd < 0.9, rob_pgd  # regime where the comparison is meaningful
    rob_apgd = correct(model, apgd_ce(model, x, y, eps=eps, n_iter=100), y).float().mean().item()
    assert rob_apgd <= rob_pgd, (rob_apgd, rob_pgd)


def test_worst_case_is_and_of_attacks(digits):
    model, x, y = digits
    x, y = x[:100], y[:100]
    kw = dict(eps=24 / 255, n_iter=20, n_target_classes=3, seed=1)
    ce_ok = correct(model, apgd_ce(model, x, y, **kw), y)
    t_ok = correct(model, apgd_t(model, x, y, **kw), y)
    x_adv, robust = apgd_worst_case(model, x, y, **kw)
    assert 0 < robust.sum() < correct(model, x, y).sum()
    assert torch.equal(robust, ce_ok & t_ok)
    assert torch.equal(robust, correct(model, x_adv, y))  # fooling points are returned
    assert (x_adv - x).abs().max() <= 24 / 255 + 1e-6
