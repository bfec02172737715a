"""The training attack alone, in the ways it could run: which is fastest on this device?

PGD-10 (2/255, step 1/255, sign momentum, KL to a teacher's clean prediction) on the student of `--size`, parameters
frozen as in the trainer, variants run interleaved in one process (many repeats, medians of wall and CPU time):

* `fp32`: no autocast (the `fp32` precision policy);
* `autocast, start on CPU`: bf16 autocast, random start drawn on the CPU and copied (the library before the device
  start: a pageable host-to-device copy of the whole batch every step);
* `autocast`: bf16 autocast, random start on the device, every weight cast to bf16 at every forward;
* `autocast + precast`: the same, with the matmul weights cast once per attack (`precision.PrecastForward`, what the
  trainer does under `attack_autocast`);
* `... + compile`: the precast model under `torch.compile` (default mode), and on CUDA `mode="reduce-overhead"`
  (CUDA graphs), which takes the launch overhead out of a launch-bound attack.

It also counts the operators each variant dispatches (the profiler), which does not depend on the machine's load.
The library uses `autocast + precast`; a compiled variant is worth making the default only where this benchmark shows
it faster on the GPU in question.

    python benchmarks/attack_variants.py --size vit-b32 --batch-size 256     # GPU
    python benchmarks/attack_variants.py --size tiny --repeats 5             # CPU
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


def _timed(fn) -> tuple[float, float]:
    sync()
    w, c = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - w, time.process_time() - c


def _op_count(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def main(argv=None) -> dict:
    from mmt_ard.attacks import kl_inner_loss, pgd
    from mmt_ard.training.precision import PrecastForward

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--attack-steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    ap.add_argument("--out", default="benchmarks/results/attack_variants.json")
    a = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)
    student, teacher, x, target = attack_setup(a.size, a.batch_size, device, NAMES)
    del teacher  # only its target is needed: free its memory
    student.requires_grad_(False)  # as during the trainer's attack
    b = x.shape[0]

    def attack(model_fn, autocast: bool, cpu_start: bool = False):
        def run():
            pgd(
                model_fn(),
                x,
                kl_inner_loss(target),
                eps=2 / 255,
                step_size=1 / 255,
                steps=a.attack_steps,
                momentum=0.9,
                generator=torch.Generator() if cpu_start else None,
                autocast_dtype=torch.bfloat16 if autocast else None,
            )

        return run

    variants = {
        "fp32": attack(lambda: student, False),
        "autocast, start on CPU": attack(lambda: student, True, cpu_start=True),
        "autocast": attack(lambda: student, True),
        "autocast + precast": attack(lambda: PrecastForward(student, torch.bfloat16), True),
    }
    if not a.no_compile:
        compiled = torch.compile(student)
        variants["autocast + precast + compile"] = attack(lambda: PrecastForward(compiled, torch.bfloat16), True)
        if device == "cuda":
            graphed = torch.compile(student, mode="reduce-overhead")
            variants["autocast + precast + compile(reduce-overhead)"] = attack(
                lambda: PrecastForward(graphed, torch.bfloat16), True
            )
    failed = {}
    for name, fn in list(variants.items()):  # warm-up (and compilation)
        try:
            fn()
            fn()
        except Exception as err:  # noqa: BLE001 - a variant that cannot run here is reported, not fatal
            failed[name] = f"{type(err).__name__}: {err}"[:500]
            del variants[name]
    ops = {name: _op_count(fn) for name, fn in variants.items()}
    times = {name: [] for name in variants}
    for r in range(a.repeats):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            times[name].append(_timed(variants[name]))
    summary = {
        name: {
            "wall_ms": 1000 * statistics.median(t[0] for t in v),
            "cpu_ms": 1000 * statistics.median(t[1] for t in v),
            "aten_ops": ops[name],
        }
        for name, v in times.items()
    }
    base = summary.get("autocast, start on CPU")
    print(f"{a.size}, batch {b}, PGD-{a.attack_steps}, {device}; medians of {a.repeats} interleaved repeats")
    print("| variant | wall ms | CPU ms | aten ops | wall vs start-on-CPU |")
    print("|---|---|---|---|---|")
    for name, s in summary.items():
        ratio = f"{s['wall_ms'] / base['wall_ms']:.3f}" if base else "-"
        print(f"| {name} | {s['wall_ms']:.1f} | {s['cpu_ms']:.1f} | {s['aten_ops']} | {ratio} |")
    for name, why in failed.items():
        print(f"| {name} | failed: {why.splitlines()[0] if why else ''} | | | |")
    result = {
        "size": a.size,
        "batch_size": b,
        "attack_steps": a.attack_steps,
        "device": device,
        "machine": machine_info(),
        "summary": summary,
        "failed": failed,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
