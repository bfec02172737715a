"""Images/s of one training step: the MMT-ARD presets side by side, and a bare PyTorch loop doing the `mmt-ard` step.

Every contender trains the same student (same seed) with the same teachers and the same attack (eps, step size,
steps, sign momentum and random start are overridden to the same values for every preset; only each preset's inner
loss differs, as in method.md section 4). Contenders run in separate subprocesses (so each one's peak memory is its
own), one after another within a round, in a rotated order, over several rounds; every ratio is taken within a round
and the median over rounds is reported, which keeps the comparison fair when the machine is shared.

Per step it reports: images/s (batch / wall time between consecutive optimizer steps, data loading included), the
split into data / teachers / attack / student forward+loss / backward (+grad-norm) / optimizer / rest, and peak
memory (CUDA: `max_memory_allocated`; CPU: `ru_maxrss` of the subprocess, absolute and its growth during training).

    python benchmarks/throughput.py --size tiny --rounds 3 --out benchmarks/results/throughput_tiny.json
    python benchmarks/throughput.py --size vit-b32 --batch-size 64 --rounds 3   # GPU: ViT-B/32 + two ViT-L/14

Contenders: `bare` (hand-written loop, the mmt-ard computation), `mmt-ard`, `single-teacher`, `tecoa`, `fare`,
`pmg-aft`. Teachers: `mmt-ard` runs a robust and a clean teacher (teacher size), `single-teacher` the robust one,
`fare`/`pmg-aft` a frozen copy of the student (student size), `tecoa` none.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SIZES, TensorImageDataset, build_clip, count_params, machine_info, maxrss_mib, sync

CONTENDERS = ["bare", "mmt-ard", "single-teacher", "tecoa", "fare", "pmg-aft"]
EXTRA_CONTENDERS = ["mtard", "mmt-ard-sigmoid"]  # selectable with --contenders
DUAL = ("bare", "mmt-ard", "mmt-ard-sigmoid", "mtard")
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PHASES = ["data", "teachers", "attack", "student", "backward", "optimizer", "rest"]


# ---------------------------------------------------------------- worker: one contender, one process
def _models(cfg: dict, name: str, device: str = "cpu"):
    size = SIZES[cfg["size"]]
    student = build_clip(size["student"], seed=1, words=CLASS_NAMES, device=device)
    teachers = {}
    if name in DUAL + ("single-teacher",):
        teachers["robust"] = build_clip(size["teacher"], seed=2, words=CLASS_NAMES, device=device)
    if name in DUAL:
        teachers["clean"] = build_clip(size["teacher"], seed=3, words=CLASS_NAMES, device=device)
    return student, teachers


def _data(cfg: dict, device: str):
    image = SIZES[cfg["size"]]["student"]["vision"]["image"]
    n = cfg["batch_size"] * (cfg["warmup"] + cfg["steps"] + 1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, image, image, generator=g)
    y = torch.randint(0, len(CLASS_NAMES), (n,), generator=g)
    return TensorImageDataset(x, y)


class _StepTimer:
    """Trainer callback: wall time of each step and of its optimizer call, plus the trainer's own phase timers."""

    def __init__(self, warmup: int):
        from transformers import TrainerCallback

        outer = self

        class CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                sync()
                outer.t_begin = time.perf_counter()

            def on_pre_optimizer_step(self, args, state, control, **kw):
                sync()
                outer.t_pre_opt = time.perf_counter()

            def on_optimizer_step(self, args, state, control, **kw):
                sync()
                outer.t_opt = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                sync()
                outer.step_end(time.perf_counter(), time.process_time())

        self.callback = CB()
        self.warmup = warmup
        self.trainer = None
        self.t_prev_end = None
        self.cpu_prev_end = None
        self.seen = {}
        self.rows = []

    def _phase(self, key: str) -> float:
        values = self.trainer._metrics["train"].get(f"time/{key}_s", [])  # one or more entries per step
        start = self.seen.get(key, 0)
        self.seen[key] = len(values)
        return sum(float(v) for v in values[start:])  # floats, or CUDA-event spans read here

    def step_end(self, now: float, cpu_now: float) -> None:
        phases = {k: self._phase(k) for k in ("teachers", "attack", "student")}
        if self.t_prev_end is not None:
            total = now - self.t_prev_end
            in_step = self.t_pre_opt - self.t_begin  # compute_loss + backward + grad norm/clip
            row = dict(
                step=total,
                cpu_step=cpu_now - self.cpu_prev_end,
                data=self.t_begin - self.t_prev_end,
                **phases,
                backward=in_step - sum(phases.values()),
                optimizer=self.t_opt - self.t_pre_opt,
            )
            row["rest"] = total - row["data"] - in_step - row["optimizer"]
            self.rows.append(row)
        self.t_prev_end, self.cpu_prev_end = now, cpu_now


def _trainer(cfg: dict, preset: str, device: str, out: str, student, specs, max_steps: int, callback):
    """An `MMTARDTrainer` with the benchmark's shared attack and batch settings (no logging, no saving)."""
    from mmt_ard import MMTARDConfig, MMTARDTrainer

    args = MMTARDConfig(
        output_dir=out,
        preset=preset,
        attack_eps=cfg["eps"],
        attack_step_size=cfg["step_size"],
        attack_steps=cfg["attack_steps"],
        attack_momentum=cfg["momentum"],
        attack_random_init=True,
        per_device_train_batch_size=cfg["batch_size"],
        max_steps=max_steps,
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=device == "cpu",
        seed=0,
        precision=cfg.get("precision", "auto"),
    )
    return MMTARDTrainer(
        model=student[0],
        args=args,
        teachers=specs,
        class_names=CLASS_NAMES,
        processing_class=student[1],
        train_dataset=_data(cfg, device),
        callbacks=[callback],
    )


def run_trainer(cfg: dict, name: str, device: str) -> dict:
    from mmt_ard import Teacher

    student, teachers = _models(cfg, name, device)
    specs = [Teacher(model=m, processor=p, role=r) for r, (m, p) in teachers.items()]
    timer = _StepTimer(cfg["warmup"])
    with tempfile.TemporaryDirectory() as out:
        trainer = _trainer(cfg, name, device, out, student, specs, cfg["warmup"] + cfg["steps"] + 1, timer.callback)
        timer.trainer = trainer
        rss0 = maxrss_mib()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        rss1 = maxrss_mib()
    rows = timer.rows[cfg["warmup"] :]  # the first interval of rows already excludes step 1 (no previous end)
    return _summary(rows, cfg, rss0, rss1, device, student[0], teachers)


class BareMMTARD:
    """The `mmt-ard` step written out by hand: no Trainer, no mmt_ard losses/attacks/weighting, same models.

    `step()` runs one training step on the next batch and returns its timings (wall per phase, CPU for the step).
    """

    def __init__(self, cfg: dict, device: str):
        from transformers import get_cosine_schedule_with_warmup

        from mmt_ard.models import ZeroShotCLIP

        (s_clip, s_proc), teachers = _models(cfg, "bare")
        self.s_clip, self.teachers = s_clip, teachers
        template = ["This is a photo of a {}"]
        torch.manual_seed(0)
        self.student = student = ZeroShotCLIP(s_clip, s_proc, logit_scale=100.0).to(device)
        for part in (s_clip.text_model, s_clip.text_projection):
            part.requires_grad_(False)
        s_clip.logit_scale.requires_grad_(False)
        student.set_classes(CLASS_NAMES, template)
        frozen = {}
        for role, (m, p) in teachers.items():
            m.requires_grad_(False)
            t = ZeroShotCLIP(m.eval(), p, logit_scale=100.0).to(device).eval()
            t.set_classes(CLASS_NAMES, template)
            frozen[role] = t
        self.robust, self.clean = frozen["robust"], frozen["clean"]
        self.params = [p for p in student.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in self.params if p.ndim >= 2], "weight_decay": 1e-4},
            {"params": [p for p in self.params if p.ndim < 2], "weight_decay": 0.0},
        ]
        self.opt = torch.optim.AdamW(groups, lr=2e-5, betas=(0.9, 0.999), eps=1e-8, fused=True)
        self.total_steps = cfg["warmup"] + cfg["steps"] + 1
        self.sched = get_cosine_schedule_with_warmup(self.opt, math.ceil(0.07 * self.total_steps), self.total_steps)
        loader = torch.utils.data.DataLoader(_data(cfg, device), batch_size=cfg["batch_size"], shuffle=True)
        self.batches = iter(loader)
        self.cfg, self.device = cfg, device
        student.train()

    def step(self) -> dict:
        cfg, device, student, robust, clean = self.cfg, self.device, self.student, self.robust, self.clean
        eps, alpha, steps, mom = cfg["eps"], cfg["step_size"], cfg["attack_steps"], cfg["momentum"]

        def clock():
            sync()
            return time.perf_counter()

        t0, cpu0 = clock(), time.process_time()
        batch = next(self.batches)
        x = batch["pixel_values"].to(device).float()
        y = batch["labels"].to(device).long()
        t1 = clock()
        with torch.no_grad():  # clean teacher on x: the attack's target and a distillation target
            tc = clean(x)
            p_clean = F.softmax(tc.logits, -1)  # (B, C)
        t2 = clock()
        # PGD, L-inf, uniform start, sign momentum, maximising KL(p_clean || p_S(x + delta)); student in eval mode
        student.eval()
        delta = ((torch.rand(x.shape) * 2 - 1) * eps).to(device)
        delta = (x + delta).clamp(0, 1) - x
        velocity = torch.zeros_like(x)
        with torch.enable_grad():
            for _k in range(steps):
                delta.requires_grad_(True)
                log_q = F.log_softmax(student(x + delta).logits, -1)
                inner = (p_clean * (p_clean.clamp_min(1e-12).log() - log_q)).sum()
                (grad,) = torch.autograd.grad(inner, delta)
                with torch.no_grad():  # the authors' update keeps the signed velocity: v <- sign(m v + sign(g))
                    velocity = (mom * velocity + grad.sign()).sign()
                    delta = (delta.detach() + alpha * velocity).clamp(-eps, eps)
                    delta = (x + delta).clamp(0, 1) - x
        x_adv = (x + delta).detach()
        student.train()
        t3 = clock()
        with torch.no_grad():  # robust teacher on x_adv
            tr = robust(x_adv)
        t4 = clock()
        out = student(torch.cat([x, x_adv]))
        b, c = x.shape[0], out.logits.shape[-1]
        s_cln, s_adv = out.logits[:b], out.logits[b:]
        with torch.no_grad():  # confidence: cosine of each teacher's embedding to the true class's text embedding
            c_r = (F.normalize(tr.image_embeds, dim=-1) * robust.text_head[y]).sum(-1)
            c_c = (F.normalize(tc.image_embeds, dim=-1) * clean.text_head[y]).sum(-1)
        log_pr, log_pc = F.log_softmax(tr.logits, -1), F.log_softmax(tc.logits, -1)
        kl_r = (log_pr.exp() * (log_pr - F.log_softmax(s_adv, -1))).sum(-1) / c  # (B,) class-mean KL
        kl_c = (log_pc.exp() * (log_pc - F.log_softmax(s_cln, -1))).sum(-1) / c
        loss = (50.0 * c_r * kl_r + 5.0 * c_c * kl_c).sum() / b
        t5 = clock()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        t6 = clock()
        self.opt.step()
        t7 = clock()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        t8 = clock()
        return {
            "step": t8 - t0,
            "cpu_step": time.process_time() - cpu0,
            "data": t1 - t0,
            "teachers": (t2 - t1) + (t4 - t3),
            "attack": t3 - t2,
            "student": t5 - t4,
            "backward": t6 - t5,
            "optimizer": t7 - t6,
            "rest": t8 - t7,
        }


def run_bare(cfg: dict, device: str) -> dict:
    bare = BareMMTARD(cfg, device)
    rss0 = maxrss_mib()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rows = [bare.step() for _ in range(bare.total_steps)][1 + cfg["warmup"] :]
    return _summary(rows, cfg, rss0, maxrss_mib(), device, bare.s_clip, bare.teachers)


def run_paired(cfg: dict, device: str) -> dict:
    """`mmt-ard` through the Trainer and the bare loop in one process, alternating step by step.

    A Trainer callback runs one bare step at every `on_step_end`; the Trainer's own step is timed from the end of
    that bare step to the next `on_step_end`. Both see the same machine state, step for step, so their ratio is far
    less noisy on a shared machine than separate processes.
    """
    from transformers import TrainerCallback

    from mmt_ard import Teacher

    bare = BareMMTARD(cfg, device)
    student, teachers = _models(cfg, "mmt-ard")
    specs = [Teacher(model=m, processor=p, role=r) for r, (m, p) in teachers.items()]
    pairs = []
    state = {}

    class Pair(TrainerCallback):
        def on_step_end(self, args, st, control, **kw):
            sync()
            now, cpu = time.perf_counter(), time.process_time()
            if "t" in state:
                trainer_row = {"step": now - state["t"], "cpu_step": cpu - state["cpu"]}
                pairs.append((trainer_row, bare.step()))
            else:
                bare.step()
            sync()
            state["t"], state["cpu"] = time.perf_counter(), time.process_time()

    with tempfile.TemporaryDirectory() as out:
        trainer = _trainer(cfg, "mmt-ard", device, out, student, specs, bare.total_steps - 1, Pair())
        trainer.train()
    pairs = pairs[cfg["warmup"] :]
    ratio = {k: statistics.median(b[k] / t[k] for t, b in pairs) for k in ("step", "cpu_step")}
    return {
        "pairs": len(pairs),
        "trainer_step_s": statistics.median(t["step"] for t, _ in pairs),
        "bare_step_s": statistics.median(b["step"] for _, b in pairs),
        "trainer_cpu_step_s": statistics.median(t["cpu_step"] for t, _ in pairs),
        "bare_cpu_step_s": statistics.median(b["cpu_step"] for _, b in pairs),
        "trainer_over_bare_wall": 1 / ratio["step"] - 1,  # median over pairs of (trainer / bare) - 1
        "trainer_over_bare_cpu": 1 / ratio["cpu_step"] - 1,
        "per_pair": [{"trainer": t, "bare": b} for t, b in pairs],
    }


def _summary(rows, cfg, rss0, rss1, device, student, teachers) -> dict:
    med = {k: statistics.median(r[k] for r in rows) for k in ["step", "cpu_step"] + PHASES}
    out = {
        "images_per_s": cfg["batch_size"] / med["step"],
        "images_per_cpu_s": cfg["batch_size"] / med["cpu_step"],
        "step_s_median": med["step"],
        "cpu_step_s_median": med["cpu_step"],
        "phases_s_median": {k: med[k] for k in PHASES},
        "steps_measured": len(rows),
        "maxrss_mib": rss1,
        "maxrss_growth_mib": rss1 - rss0,
        "student_vision_params": count_params(student),
        "teacher_vision_params": {r: count_params(m) for r, (m, _) in teachers.items()},
    }
    if device == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def worker(name: str, cfg: dict) -> None:
    device = "cuda" if torch.cuda.is_available() and not cfg.get("cpu") else "cpu"
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    if name == "paired":
        result = run_paired(cfg, device)
    else:
        result = run_bare(cfg, device) if name == "bare" else run_trainer(cfg, name, device)
    result["device"] = device
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- parent: rounds of subprocesses
def _run_one(name: str, cfg: dict) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if cfg.get("threads"):
        env["OMP_NUM_THREADS"] = str(cfg["threads"])
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", name, "--cfg", json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )  # failure: raised below
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"contender {name} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")


def _fmt_table(summary: dict, order: list[str]) -> str:
    """Markdown table; on CPU the ratios use CPU time (robust to other users of the machine), wall ratios beside."""
    cpu = summary[order[0]]["device"] == "cpu"
    mem_head = "CUDA peak MiB" if summary[order[0]].get("cuda_peak_mib") is not None else "peak RSS MiB (growth)"
    rate = "img/s wall | img per CPU-s" if cpu else "img/s"
    ratio = "x bare (CPU / wall) | x single-teacher (CPU / wall)" if cpu else "x bare | x single-teacher"
    head = f"| contender | {rate} | {ratio} | step ms | " + " | ".join(PHASES) + f" | {mem_head} |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def r(s, key):
        if s.get(key) is None:
            return "-"
        return f"{s[key + '_cpu']:.3f} / {s[key]:.3f}" if cpu else f"{s[key]:.3f}"

    for name in order:
        s = summary[name]
        ph = " | ".join(f"{1000 * s['phases_s'][k]:.0f}" for k in PHASES)
        mem = (
            f"{s['cuda_peak_mib']:.0f}"
            if s.get("cuda_peak_mib") is not None
            else f"{s['maxrss_mib']:.0f} (+{s['maxrss_growth_mib']:.0f})"
        )
        rates = f"{s['images_per_s']:.1f} | {s['images_per_cpu_s']:.1f}" if cpu else f"{s['images_per_s']:.1f}"
        lines.append(
            f"| {name} | {rates} | {r(s, 'ratio_vs_bare')} | {r(s, 'ratio_vs_single_teacher')} | "
            f"{1000 * s['step_s']:.0f} | {ph} | {mem} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--contenders", nargs="+", default=CONTENDERS, choices=CONTENDERS + EXTRA_CONTENDERS)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the size's (tiny 32, vit-b32 64)")
    ap.add_argument("--steps", type=int, default=12, help="measured steps per contender per round")
    ap.add_argument("--warmup", type=int, default=3, help="unmeasured steps first")
    ap.add_argument("--rounds", type=int, default=3, help="0: only the paired run")
    ap.add_argument("--eps", type=float, default=2 / 255)
    ap.add_argument("--step-size", type=float, default=1 / 255)
    ap.add_argument("--attack-steps", type=int, default=10)
    ap.add_argument("--momentum", type=float, default=0.9, help="sign momentum, same for every preset")
    ap.add_argument("--cpu", action="store_true", help="stay on CPU even with a GPU")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads per worker (0: torch's default). 1 by default: on a shared CPU, 2 OpenMP threads "
        "that wait on each other run ~10x slower than one",
    )
    ap.add_argument(
        "--paired-steps",
        type=int,
        default=30,
        help="steps of the paired run (Trainer mmt-ard and bare loop alternating in one process; 0: skip)",
    )
    ap.add_argument("--paired-runs", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/throughput.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--cfg", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(a.worker, json.loads(a.cfg))
        return
    cfg = {
        "size": a.size,
        "batch_size": a.batch_size or SIZES[a.size]["batch_size"],
        "steps": a.steps,
        "warmup": a.warmup,
        "eps": a.eps,
        "step_size": a.step_size,
        "attack_steps": a.attack_steps,
        "momentum": a.momentum,
        "cpu": a.cpu,
        "threads": a.threads,
    }
    names = list(a.contenders)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    t_start = time.time()
    for r in range(a.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate: nobody always runs first
        for name in order:
            res = _run_one(name, cfg)
            runs[name].append(res)
            print(
                f"round {r + 1}/{a.rounds} {name:15s} {res['images_per_s']:8.1f} img/s wall "
                f"{res['images_per_cpu_s']:8.1f} img/CPU-s  step {1000 * res['step_s_median']:.0f} ms",
                flush=True,
            )
    summary = {}
    for name in names if a.rounds else []:
        rs = runs[name]
        summary[name] = {
            "images_per_s": statistics.median(x["images_per_s"] for x in rs),
            "images_per_cpu_s": statistics.median(x["images_per_cpu_s"] for x in rs),
            "images_per_s_rounds": [x["images_per_s"] for x in rs],
            "images_per_cpu_s_rounds": [x["images_per_cpu_s"] for x in rs],
            "step_s": statistics.median(x["step_s_median"] for x in rs),
            "phases_s": {k: statistics.median(x["phases_s_median"][k] for x in rs) for k in PHASES},
            "maxrss_mib": statistics.median(x["maxrss_mib"] for x in rs),
            "maxrss_growth_mib": statistics.median(x["maxrss_growth_mib"] for x in rs),
            "cuda_peak_mib": max(x["cuda_peak_mib"] for x in rs) if "cuda_peak_mib" in rs[0] else None,
            "device": rs[0]["device"],
            "student_vision_params": rs[0]["student_vision_params"],
            "teacher_vision_params": rs[0]["teacher_vision_params"],
        }
        for ref, key in (("bare", "ratio_vs_bare"), ("single-teacher", "ratio_vs_single_teacher")):
            if ref not in runs:
                continue
            for metric, suffix in (("images_per_s", ""), ("images_per_cpu_s", "_cpu")):
                # ratio within each round (same machine state), median over rounds
                ratios = [x[metric] / y[metric] for x, y in zip(rs, runs[ref])]
                summary[name][key + suffix] = statistics.median(ratios)
                summary[name][key + suffix + "_rounds"] = ratios
    table = ""
    if a.rounds:
        table = _fmt_table(summary, names)
        print()
        print(
            f"size {a.size}, batch {cfg['batch_size']}, PGD-{a.attack_steps} eps {a.eps:.5f} step {a.step_size:.5f} "
            f"momentum {a.momentum}; medians over {a.rounds} rounds of {a.steps} steps; phases: wall ms per step"
        )
        print(table)
        key = "_cpu" if summary[names[0]]["device"] == "cpu" else ""
        clock = "CPU time" if key else "wall time"
        if "mmt-ard" in summary and "single-teacher" in summary:
            print(
                f"\nmmt-ard / single-teacher images/s ({clock}): "
                f"{summary['mmt-ard']['ratio_vs_single_teacher' + key]:.3f} (target >= 0.85)"
            )
        if "mmt-ard" in summary and "bare" in summary:
            over = 1 / summary["mmt-ard"]["ratio_vs_bare" + key] - 1
            print(f"Trainer overhead (mmt-ard step {clock} over the bare loop's): {100 * over:+.1f} % (target <= 5 %)")
    paired = []
    for _ in range(a.paired_runs if a.paired_steps else 0):
        paired.append(_run_one("paired", dict(cfg, steps=a.paired_steps)))
        p = paired[-1]
        print(
            f"paired run ({p['pairs']} alternating step pairs): Trainer mmt-ard step over the bare loop's: "
            f"CPU {100 * p['trainer_over_bare_cpu']:+.1f} %, wall {100 * p['trainer_over_bare_wall']:+.1f} % "
            f"(trainer {1000 * p['trainer_cpu_step_s']:.0f} ms CPU, bare {1000 * p['bare_cpu_step_s']:.0f} ms CPU)"
        )
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(
            {
                "config": cfg,
                "machine": machine_info(),
                "wall_s": time.time() - t_start,
                "summary": summary,
                "runs": runs,
                "paired": paired,
                "table_markdown": table,
            },
            f,
            indent=2,
        )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
