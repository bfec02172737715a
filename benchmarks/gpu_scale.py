"""The paper's recipe at its real shapes on one GPU: images/s, model FLOPs utilisation, phases, memory, hours.

For each preset (`mmt-ard`, `single-teacher`, `tecoa`) and batch size (256, 512) it trains random-init CLIPs of the
paper's shapes (ViT-B/32 student, ViT-L/14 teachers; `harness.SIZES["vit-b32"]`) through `MMTARDTrainer` exactly as a
user builds it, with the library's default settings (`precision="auto"`: bf16 on a bf16-capable GPU), PGD-10 at 2/255
with sign momentum. Each (preset, batch) runs in its own subprocess (`throughput.py`'s worker), so peak memory is its
own. Per run it reports:

* images/s (median step after warm-up) and the projected hours for the paper's 5000 steps x 512 images;
* model FLOPs utilisation: the analytic FLOPs of a step (method.md section 7, computed from the tower shapes below)
  per second, over the peak bf16 matmul rate measured on the same device at the start of the run;
* the phase split (teachers / attack / student forward + loss / backward / optimizer / data / rest) and CUDA peak
  memory.

It then prints the issue's targets as measured ratios: mmt-ard >= 600 images/s at batch 256; batch 512 >= batch 256;
mmt-ard >= 0.85x single-teacher, in the same run.

    python benchmarks/gpu_scale.py --out benchmarks/results/gpu_scale_h200.json        # GPU, ~4 min on an H200
    python benchmarks/gpu_scale.py --size tiny --batch-sizes 16 32 --steps 2 --cpu      # the same code on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SIZES, machine_info
from throughput import PHASES, _run_one

PRESETS = ("mmt-ard", "single-teacher", "tecoa")
PAPER_IMAGES = 5000 * 512


# ---- analytic cost (method.md section 7) ----
def vision_forward_macs(vision: dict) -> float:
    """Multiply-adds of one image through a ViT image tower: patch embedding, then per layer the q/k/v/out
    projections (4 N d^2), the MLP (2 N d m) and attention scores and weighted sum (2 N^2 d)."""
    d, m, layers = vision["hidden"], vision["mlp"], vision["layers"]
    patches = (vision["image"] // vision["patch"]) ** 2
    n = patches + 1  # + CLS token
    per_layer = 4 * n * d * d + 2 * n * d * m + 2 * n * n * d
    return patches * 3 * vision["patch"] ** 2 * d + layers * per_layer


def step_flops_per_image(preset: str, size: str, attack_steps: int) -> float:
    """FLOPs (2 per multiply-add) of one training step per image.

    An attack step is a forward plus an input-gradient backward (~2 forwards); a student forward + backward with
    weight gradients is ~3 forwards; frozen teachers run forward only. `mmt-ard`: two teachers, student on x and
    x_adv; `single-teacher`: one teacher, student on x_adv; `tecoa`: no teacher, student on x_adv.
    """
    s = vision_forward_macs(SIZES[size]["student"]["vision"])
    t = vision_forward_macs(SIZES[size]["teacher"]["vision"])
    teachers = {"mmt-ard": 2, "single-teacher": 1, "tecoa": 0}[preset]
    student_passes = 2 if preset == "mmt-ard" else 1
    macs = attack_steps * 2 * s + student_passes * 3 * s + teachers * t
    return 2 * macs


def peak_matmul_flops(device: str, dtype: torch.dtype, n: int = 8192, reps: int = 20) -> float:
    """Measured dense matmul FLOP/s of the device in `dtype` (the MFU denominator)."""
    if device == "cpu":
        n, reps = 1024, 3
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="vit-b32")
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[256, 512])
    ap.add_argument("--steps", type=int, default=4, help="measured steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured steps first")
    ap.add_argument("--attack-steps", type=int, default=10)
    ap.add_argument("--precision", default="auto", help="MMTARDConfig.precision (default: the library's default)")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU even with a GPU (a dry run of the code)")
    ap.add_argument("--out", default="benchmarks/results/gpu_scale.json")
    a = ap.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() and not a.cpu else "cpu"
    peak_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    peak = peak_matmul_flops(device, peak_dtype)
    print(f"device {device}: measured peak {peak / 1e12:.1f} TFLOP/s ({str(peak_dtype).split('.')[-1]} matmul)")
    rows = []
    t_start = time.time()
    for batch in a.batch_sizes:
        for preset in a.presets:
            cfg = {
                "size": a.size,
                "batch_size": batch,
                "steps": a.steps,
                "warmup": a.warmup,
                "eps": 2 / 255,
                "step_size": 1 / 255,
                "attack_steps": a.attack_steps,
                "momentum": 0.9,
                "cpu": device == "cpu",
                "threads": 0 if device == "cuda" else 1,
                "precision": a.precision,
            }
            try:
                res = _run_one(preset, cfg)
            except RuntimeError as err:  # e.g. out of memory at batch 512: report it, keep going
                print(f"{preset} batch {batch}: FAILED\n{err}", flush=True)
                rows.append({"preset": preset, "batch": batch, "error": str(err)[-2000:]})
                continue
            ips = res["images_per_s"]
            flops = step_flops_per_image(preset, a.size, a.attack_steps)
            row = {
                "preset": preset,
                "batch": batch,
                "images_per_s": ips,
                "step_s": res["step_s_median"],
                "phases_s": res["phases_s_median"],
                "flops_per_image": flops,
                "mfu": ips * flops / peak,
                "hours_5000x512": PAPER_IMAGES / ips / 3600,
                "cuda_peak_mib": res.get("cuda_peak_mib"),
                "maxrss_mib": res["maxrss_mib"],
            }
            rows.append(row)
            print(
                f"{preset:15s} batch {batch:4d}: {ips:7.1f} img/s  MFU {100 * row['mfu']:5.1f} %  "
                f"{row['hours_5000x512']:6.2f} h for 5000x512",
                flush=True,
            )
    table = format_table(rows)
    checks = target_checks(rows)
    print()
    print(
        f"{a.size}, PGD-{a.attack_steps} at 2/255 with sign momentum, precision={a.precision}, {device}; "
        f"median of {a.steps} steps after {a.warmup}; peak {peak / 1e12:.1f} TFLOP/s"
    )
    print(table)
    print()
    for line in checks:
        print(line)
    result = {
        "config": vars(a),
        "device": device,
        "peak_flops": peak,
        "machine": machine_info(),
        "wall_s": time.time() - t_start,
        "rows": rows,
        "table_markdown": table,
        "targets": checks,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {a.out}")
    return result


def format_table(rows: list[dict]) -> str:
    head = (
        "| preset | batch | img/s | MFU | 5000x512 h | step ms | "
        + " | ".join(f"{p} ms" for p in PHASES)
        + " | peak MiB |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['preset']} | {r['batch']} | failed | | | | " + " | " * len(PHASES) + " |")
            continue
        mem = r["cuda_peak_mib"] if r["cuda_peak_mib"] is not None else r["maxrss_mib"]
        phases = " | ".join(f"{1000 * r['phases_s'][p]:.0f}" for p in PHASES)
        lines.append(
            f"| {r['preset']} | {r['batch']} | {r['images_per_s']:.1f} | {100 * r['mfu']:.1f} % | "
            f"{r['hours_5000x512']:.2f} | {1000 * r['step_s']:.0f} | {phases} | {mem:.0f} |"
        )
    return "\n".join(lines)


def target_checks(rows: list[dict]) -> list[str]:
    """The issue's targets, each as `PASS`/`FAIL` with the measured numbers (missing runs are skipped)."""
    ok = {(r["preset"], r["batch"]): r for r in rows if "error" not in r}
    out = []
    mmt = ok.get(("mmt-ard", 256))
    if mmt:
        ips = mmt["images_per_s"]
        out.append(f"{'PASS' if ips >= 600 else 'FAIL'} mmt-ard batch 256: {ips:.1f} img/s (target >= 600)")
        out.append(
            f"{'PASS' if mmt['mfu'] >= 0.40 else 'FAIL'} mmt-ard batch 256 MFU {100 * mmt['mfu']:.1f} % "
            "(stretch >= 40 %)"
        )
    for preset in ("mmt-ard", "single-teacher", "tecoa"):
        small, big = ok.get((preset, 256)), ok.get((preset, 512))
        if small and big:
            ratio = big["images_per_s"] / small["images_per_s"]
            out.append(
                f"{'PASS' if ratio >= 1.0 else 'FAIL'} {preset} batch 512 / batch 256 img/s: {ratio:.3f} (target >= 1)"
            )
    for batch in sorted({b for _, b in ok}):
        m, s = ok.get(("mmt-ard", batch)), ok.get(("single-teacher", batch))
        if m and s:
            ratio = m["images_per_s"] / s["images_per_s"]
            out.append(
                f"{'PASS' if ratio >= 0.85 else 'FAIL'} mmt-ard / single-teacher img/s at batch {batch}: "
                f"{ratio:.3f} (target >= 0.85)"
            )
    return out


if __name__ == "__main__":
    main()
