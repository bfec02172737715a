"""Micro-benchmark behind two trainer choices: is the training attack faster when the student's parameters do not
require grad during it, and are frozen teachers faster under `inference_mode` than under `no_grad`?

Both variants of each pair run alternately in one process (interleaved, many repeats) and the medians of CPU time
(`time.process_time`, insensitive to other users of a shared CPU) and wall time are compared.

    python benchmarks/attack_flags.py --size tiny --repeats 15 --out benchmarks/results/attack_flags_tiny.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SIZES, attack_setup, machine_info, sync

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _timed(fn):
    sync()
    w, c = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - w, time.process_time() - c


def main(argv=None) -> None:
    from mmt_ard.attacks import kl_inner_loss, pgd

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--attack-steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/attack_flags.json")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    student, teacher, x, target = attack_setup(a.size, a.batch_size, device, NAMES)
    b = x.shape[0]
    params = [p for p in student.parameters() if p.requires_grad]

    def attack(freeze: bool):
        def run():
            if freeze:
                for p in params:
                    p.requires_grad_(False)
            try:
                pgd(
                    student,
                    x,
                    kl_inner_loss(target),
                    eps=2 / 255,
                    step_size=1 / 255,
                    steps=a.attack_steps,
                    momentum=0.9,
                )
            finally:
                if freeze:
                    for p in params:
                        p.requires_grad_(True)

        return run

    def teacher_fwd(mode):
        def run():
            with mode():
                for _ in range(5):
                    teacher(x)

        return run

    pairs = {
        "attack: params require grad": attack(False),
        "attack: params frozen during attack": attack(True),
        "teacher x5: no_grad": teacher_fwd(torch.no_grad),
        "teacher x5: inference_mode": teacher_fwd(torch.inference_mode),
    }
    for fn in pairs.values():  # warm-up
        fn()
    times = {k: [] for k in pairs}
    for r in range(a.repeats):
        keys = list(pairs) if r % 2 == 0 else list(reversed(pairs))
        for k in keys:
            times[k].append(_timed(pairs[k]))
    summary = {
        k: {"wall_ms": 1000 * statistics.median(t[0] for t in v), "cpu_ms": 1000 * statistics.median(t[1] for t in v)}
        for k, v in times.items()
    }
    for k, v in summary.items():
        print(f"{k:40s} wall {v['wall_ms']:8.1f} ms   cpu {v['cpu_ms']:8.1f} ms")
    ks = list(summary)
    for base, alt in ((ks[0], ks[1]), (ks[2], ks[3])):
        print(
            f"{alt} / {base}: cpu {summary[alt]['cpu_ms'] / summary[base]['cpu_ms']:.3f}, "
            f"wall {summary[alt]['wall_ms'] / summary[base]['wall_ms']:.3f}"
        )
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(
            {
                "size": a.size,
                "batch_size": b,
                "attack_steps": a.attack_steps,
                "repeats": a.repeats,
                "device": device,
                "machine": machine_info(),
                "summary": summary,
                "raw_s": {k: v for k, v in times.items()},
            },
            f,
            indent=2,
        )


if __name__ == "__main__":
    main()
