"""Compare mmt_ard.attacks.auto_pgd with the torchattacks reference APGD on a tiny digits CNN.

Run by hand (not a test, not in CI); needs scikit-learn and torchattacks, which is NOT a
package dependency. torchattacks declares torchvision as a requirement but never imports
it, so install it without dependencies:

    pip install --no-deps torchattacks==3.5.1
    python benchmarks/apgd_reference.py [--n 397] [--n-iter 100] [--threads 1]

Prints clean accuracy and robust accuracy (fraction of samples the attack did not fool)
for ours vs the reference, APGD-CE and APGD-T (9 target classes, 1 restart each), with
the same eps, iterations and samples, for Linf and L2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from mmt_ard.attacks.auto_pgd import apgd_ce, apgd_t, apgd_worst_case


def digits_model(seed: int = 0):
    """Train a small CNN on sklearn digits (16x16, 3 channels, pixels in [0, 1])."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    x = F.interpolate(x, size=16, mode="bilinear", align_corners=False).clamp(0, 1).repeat(1, 3, 1, 1)
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    tr, te = perm[:1400], perm[1400:]
    torch.manual_seed(seed)
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
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(8):
        order = tr[torch.randperm(len(tr), generator=g)]
        for i in range(0, len(order), 64):
            b = order[i : i + 64]
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), x[te], y[te]


@torch.no_grad()
def robust_acc(model, x_adv, y):
    return (model(x_adv).argmax(1) == y).float().mean().item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=397, help="number of held-out samples")
    ap.add_argument("--n-iter", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import torchattacks

    model, x, y = digits_model()
    x, y = x[: args.n], y[: args.n]
    print(
        f"torchattacks {torchattacks.__version__}; n={len(x)}; n_iter={args.n_iter}; "
        f"clean acc {robust_acc(model, x, y):.4f}"
    )
    print(
        f"{'norm':5} {'eps':>8} | {'CE ours':>8} {'CE ref':>8} | {'T ours':>8} {'T ref':>8} "
        f"| {'CE+T ours':>9} | time CE+T ours/ref (s)"
    )
    for norm, ref_norm, eps_list in [("linf", "Linf", [8 / 255, 16 / 255, 24 / 255]), ("l2", "L2", [0.5, 1.0, 1.5])]:
        for eps in eps_list:
            t0 = time.time()
            ce = robust_acc(model, apgd_ce(model, x, y, eps=eps, norm=norm, n_iter=args.n_iter), y)
            tt = robust_acc(model, apgd_t(model, x, y, eps=eps, norm=norm, n_iter=args.n_iter), y)
            t1 = time.time()
            _, mask = apgd_worst_case(model, x, y, eps=eps, norm=norm, n_iter=args.n_iter)
            t1b = time.time()
            ref_ce = torchattacks.APGD(
                model, norm=ref_norm, eps=eps, steps=args.n_iter, n_restarts=1, seed=0, loss="ce", rho=0.75
            )
            ref_t = torchattacks.APGDT(
                model, norm=ref_norm, eps=eps, steps=args.n_iter, n_restarts=1, seed=0, rho=0.75, n_classes=10
            )
            rce = robust_acc(model, ref_ce(x, y), y)
            rt = robust_acc(model, ref_t(x, y), y)
            t2 = time.time()
            label = f"{eps * 255:.0f}/255" if norm == "linf" else f"{eps:.2f}"
            print(
                f"{norm:5} {label:>8} | {ce:8.4f} {rce:8.4f} | {tt:8.4f} {rt:8.4f} "
                f"| {mask.float().mean().item():9.4f} | {t1 - t0:.1f}/{t2 - t1b:.1f}"
            )


if __name__ == "__main__":
    main()
