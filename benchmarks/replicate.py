"""Small-scale replication of MMT-ARD against its baselines on real images, every contender in one run.

Protocol (method.md sections 2, 4 and 8, shrunk to a CPU):

1. split the images into a training and a held-out part (seeded, class-balanced);
2. train a clean teacher (CE on clean images), then the robust teacher the way real ones are made: a copy of the
   clean teacher fine-tuned with CE on PGD examples (the `tecoa` preset). Both teachers are wider than the student;
3. pretrain the student briefly on clean images: this is the one initialisation every preset starts from;
4. train that initialisation with each preset (`mmt-ard`, `single-teacher`, `tecoa`, `fare`, `pmg-aft`, `mtard`)
   for the same number of steps, batch size, learning rate and training attack (eps, step, steps), evaluating clean
   accuracy and PGD robust accuracy on the held-out part every `--eval-every` steps;
5. at the end, evaluate clean, PGD-10 and APGD-CE (`mmt_ard.attacks.auto_pgd`) accuracy on the whole held-out part, and report
   the steps and the training wall-clock each preset needs to reach the `single-teacher` preset's final robust
   accuracy (from the periodic evaluations).

Every model is trained by `MMTARDTrainer` (clean pretraining = `tecoa` with `attack_steps=0`). Models are tiny CLIPs at
random init with frozen random text towers, so their "zero-shot" heads are fixed random class embeddings: this is
supervised classification through a CLIP head, not zero-shot transfer.

    python benchmarks/replicate.py --data data/cifar10_test.parquet --seeds 0 \
        --out benchmarks/results/replicate_seed0.json
    python benchmarks/replicate.py --merge benchmarks/results/replicate_seed*.json \
        --out benchmarks/results/replicate.json --plot docs/replicate_robust_vs_steps.png
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (
    TensorImageDataset,
    balanced_split,
    build_clip,
    count_params,
    load_image_table,
    machine_info,
    spec_from_args,
)

PRESETS_ALL = ["mmt-ard", "single-teacher", "tecoa", "fare", "pmg-aft", "mtard"]
TEMPLATES = ["This is a photo of a {}"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- evaluation
def _zero_shot(clip, processor, class_names):
    from mmt_ard.models import ZeroShotCLIP

    zs = ZeroShotCLIP(clip, processor, logit_scale=100.0)
    zs.set_classes(class_names, TEMPLATES)
    return zs


@torch.no_grad()
def _clean_acc(zs, x, y, batch: int) -> float:
    hits = sum(
        int((zs(x[i : i + batch]).logits.argmax(-1) == y[i : i + batch]).sum()) for i in range(0, len(y), batch)
    )
    return hits / len(y)


def evaluate(zs, x, y, cfg: dict, robust_n: int, apgd_iters: int = 0, seed: int = 0) -> dict:
    """Clean accuracy on all of `x`; PGD (and optionally APGD-CE) robust accuracy on the first `robust_n` images."""
    from mmt_ard.attacks import ce_inner_loss, pgd

    batch = cfg["eval_batch"]
    flags = {m: m.training for m in zs.modules()}
    zs.eval()
    try:
        out = {"clean": _clean_acc(zs, x, y, batch), "n_clean": len(y)}
        xr, yr = x[:robust_n], y[:robust_n]
        gen = torch.Generator().manual_seed(seed)
        hits = 0
        for i in range(0, len(yr), batch):
            xb, yb = xr[i : i + batch], yr[i : i + batch]
            adv = pgd(
                zs,
                xb,
                ce_inner_loss(yb),
                eps=cfg["eps"],
                step_size=cfg["eval_step_size"],
                steps=cfg["eval_steps"],
                random_init=True,
                generator=gen,
            )
            with torch.no_grad():
                hits += int((zs(adv).logits.argmax(-1) == yb).sum())
        out["pgd"] = hits / len(yr)
        out["n_robust"] = len(yr)
        if apgd_iters:
            from mmt_ard.attacks.auto_pgd import apgd_ce

            hits = 0
            for i in range(0, len(yr), batch):
                xb, yb = xr[i : i + batch], yr[i : i + batch]
                adv = apgd_ce(lambda t: zs(t).logits, xb, yb, eps=cfg["eps"], n_iter=apgd_iters, seed=seed + i)
                with torch.no_grad():
                    hits += int((zs(adv).logits.argmax(-1) == yb).sum())
            out["apgd_ce"] = hits / len(yr)
            out["apgd_iters"] = apgd_iters
    finally:
        for m, flag in flags.items():
            m.training = flag
    return out


@torch.no_grad()
def confidence_stats(zs, x, y, batch: int = 250) -> dict:
    """The released code's per-sample confidence (raw cosine of a teacher's image embedding to the true class's text
    embedding) on clean images: mean, std and the fraction that is negative (a negative confidence flips that
    sample's distillation term)."""
    flags = {m: m.training for m in zs.modules()}
    zs.eval()
    try:
        c = torch.cat(
            [zs.confidence(zs(x[i : i + batch]).image_embeds, y[i : i + batch]) for i in range(0, len(y), batch)]
        )
    finally:
        for m, flag in flags.items():
            m.training = flag
    return {
        "mean": c.mean().item(),
        "std": c.std().item(),
        "frac_negative": (c < 0).float().mean().item(),
        "n": len(y),
    }


# ---------------------------------------------------------------- training
def _eval_callback(trainer_ref: dict, every: int, eval_fn, curve: list, timing: dict):
    from transformers import TrainerCallback

    class PeriodicEval(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            t0 = time.perf_counter()
            res = eval_fn(trainer_ref["trainer"].model.student)  # step 0: the shared initialisation
            curve.append({"step": 0, "train_s": 0.0, "train_cpu_s": 0.0, **res})
            timing["start"], timing["cpu_start"] = time.perf_counter(), time.process_time()
            timing["eval_s"] = timing["eval_cpu_s"] = 0.0
            timing["eval0_s"] = timing["start"] - t0

        def on_step_end(self, args, state, control, **kw):
            if state.global_step % every and state.global_step != state.max_steps:
                return
            t0, c0 = time.perf_counter(), time.process_time()
            train_s = t0 - timing["start"] - timing["eval_s"]
            train_cpu_s = c0 - timing["cpu_start"] - timing["eval_cpu_s"]
            res = eval_fn(trainer_ref["trainer"].model.student)
            timing["eval_s"] += time.perf_counter() - t0
            timing["eval_cpu_s"] += time.process_time() - c0
            curve.append({"step": state.global_step, "train_s": train_s, "train_cpu_s": train_cpu_s, **res})
            log(
                f"    step {state.global_step:4d}  clean {res['clean']:.3f}  pgd {res['pgd']:.3f}  "
                f"train {train_s:.0f}s"
            )

        def on_train_end(self, args, state, control, **kw):
            timing["train_s"] = time.perf_counter() - timing["start"] - timing["eval_s"]
            timing["train_cpu_s"] = time.process_time() - timing["cpu_start"] - timing["eval_cpu_s"]

    return PeriodicEval()


def train(
    clip,
    processor,
    class_names,
    data,
    *,
    preset: str,
    steps: int,
    lr: float,
    cfg: dict,
    seed: int,
    teachers=(),
    attack_steps: int | None = None,
    eval_every: int = 0,
    eval_fn=None,
    extra: dict | None = None,
):
    """Train `clip` in place with `MMTARDTrainer`; returns (periodic curve, timing, last logged metrics)."""
    from mmt_ard import MMTARDConfig, MMTARDTrainer

    curve, timing, ref = [], {}, {}
    callbacks = [_eval_callback(ref, eval_every, eval_fn, curve, timing)] if eval_every else []
    with tempfile.TemporaryDirectory() as out:
        args = MMTARDConfig(
            output_dir=out,
            preset=preset,
            attack_eps=cfg["eps"],
            attack_step_size=cfg["step_size"],
            attack_steps=cfg["attack_steps"] if attack_steps is None else attack_steps,
            learning_rate=lr,
            per_device_train_batch_size=cfg["batch_size"],
            max_steps=steps,
            logging_steps=max(1, steps // 4),
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            use_cpu=True,
            seed=seed,
            **(extra or {}),
        )
        trainer = MMTARDTrainer(
            model=clip,
            args=args,
            teachers=list(teachers),
            class_names=class_names,
            processing_class=processor,
            train_dataset=data,
            callbacks=callbacks,
        )
        ref["trainer"] = trainer
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
    logged = [h for h in trainer.state.log_history if "loss" in h or "kl_robust_loss" in h or "ce_loss" in h]
    timing.setdefault("train_s", wall)
    return curve, timing, (logged[-1] if logged else {})


# ---------------------------------------------------------------- one seed
def run_seed(seed: int, cfg: dict, x, y, class_names, train_idx, test_idx) -> dict:
    from mmt_ard import Teacher

    torch.manual_seed(seed)
    x_tr, y_tr = x[train_idx], y[train_idx]
    x_te, y_te = x[test_idx], y[test_idx]
    data = TensorImageDataset(x_tr, y_tr)
    img, patch = cfg["image_size"], cfg["patch"]
    t_spec = spec_from_args(cfg["teacher_width"], cfg["teacher_layers"], img, patch)
    s_spec = spec_from_args(cfg["student_width"], cfg["student_layers"], img, patch)
    res: dict = {"seed": seed}

    def final_eval(clip, proc):
        return evaluate(
            _zero_shot(clip, proc, class_names),
            x_te,
            y_te,
            cfg,
            robust_n=len(y_te),
            apgd_iters=cfg["apgd_iters"],
            seed=seed,
        )

    def periodic_eval(zs):
        return evaluate(zs, x_te, y_te, cfg, robust_n=cfg["eval_robust_n"], seed=seed)

    # clean teacher, then the robust teacher = the clean teacher fine-tuned adversarially (tecoa)
    t0 = time.perf_counter()
    clean_clip, t_proc = build_clip(t_spec, seed=1000 + seed, words=class_names)
    log(f"seed {seed}: clean teacher ({count_params(clean_clip)} vision params), {cfg['teacher_steps']} clean steps")
    _, timing, _ = train(
        clean_clip,
        t_proc,
        class_names,
        data,
        preset="tecoa",
        steps=cfg["teacher_steps"],
        lr=cfg["pretrain_lr"],
        cfg=cfg,
        seed=seed,
        attack_steps=0,
    )
    res["clean_teacher"] = {**final_eval(clean_clip, t_proc), "train_s": timing["train_s"]}
    log(f"  clean teacher: {res['clean_teacher']}")
    robust_clip = copy.deepcopy(clean_clip)
    log(f"seed {seed}: robust teacher, {cfg['robust_steps']} tecoa steps (PGD-{cfg['robust_attack_steps']})")
    _, timing, _ = train(
        robust_clip,
        t_proc,
        class_names,
        data,
        preset="tecoa",
        steps=cfg["robust_steps"],
        lr=cfg["lr"],
        cfg=cfg,
        seed=seed,
        attack_steps=cfg["robust_attack_steps"],
    )
    res["robust_teacher"] = {**final_eval(robust_clip, t_proc), "train_s": timing["train_s"]}
    log(f"  robust teacher: {res['robust_teacher']}")
    res["teacher_confidence"] = {
        role: confidence_stats(_zero_shot(m, t_proc, class_names), x_tr[:2000], y_tr[:2000])
        for role, m in (("clean", clean_clip), ("robust", robust_clip))
    }
    log(f"  teacher confidence on clean training images: {res['teacher_confidence']}")

    # the student initialisation every preset starts from
    s_clip, s_proc = build_clip(s_spec, seed=2000 + seed, words=class_names)
    log(f"seed {seed}: student ({count_params(s_clip)} vision params), {cfg['student_steps']} clean steps")
    _, timing, _ = train(
        s_clip,
        s_proc,
        class_names,
        data,
        preset="tecoa",
        steps=cfg["student_steps"],
        lr=cfg["pretrain_lr"],
        cfg=cfg,
        seed=seed,
        attack_steps=0,
    )
    res["student_init"] = {**final_eval(s_clip, s_proc), "train_s": timing["train_s"]}
    log(f"  student init: {res['student_init']}")
    res["setup_s"] = time.perf_counter() - t0

    res["presets"] = {}
    for preset in cfg["presets"]:
        clip = copy.deepcopy(s_clip)
        teachers = []
        if preset in ("mmt-ard", "mmt-ard-sigmoid", "mtard", "single-teacher"):
            teachers.append(Teacher(model=robust_clip, processor=t_proc, role="robust"))
        if preset in ("mmt-ard", "mmt-ard-sigmoid", "mtard"):
            teachers.append(Teacher(model=clean_clip, processor=t_proc, role="clean"))
        log(f"seed {seed}: preset {preset}, {cfg['steps']} steps")
        curve, timing, logged = train(
            clip,
            s_proc,
            class_names,
            data,
            preset=preset,
            steps=cfg["steps"],
            lr=cfg["lr"],
            cfg=cfg,
            seed=seed,
            teachers=teachers,
            eval_every=cfg["eval_every"],
            eval_fn=periodic_eval,
        )
        final = final_eval(clip, s_proc)
        res["presets"][preset] = {
            "curve": curve,
            "final": final,
            "train_s": timing["train_s"],
            "train_cpu_s": timing.get("train_cpu_s"),
            "eval_s": timing.get("eval_s", 0.0),
            "last_log": logged,
        }
        log(f"  {preset}: final {final}, train {timing['train_s']:.0f}s")
    res["targets"] = steps_to_target(res["presets"])
    return res


def steps_to_target(presets: dict) -> dict:
    """Steps and training seconds each preset needs to reach single-teacher's final periodic robust accuracy."""
    if "single-teacher" not in presets:
        return {}
    target = presets["single-teacher"]["curve"][-1]["pgd"]
    out = {"target_pgd": target}
    for name, p in presets.items():
        hit = next((pt for pt in p["curve"] if pt["pgd"] >= target), None)
        out[name] = {
            "steps": hit["step"] if hit else None,
            "train_s": hit["train_s"] if hit else None,
            "train_cpu_s": hit.get("train_cpu_s") if hit else None,
            "final_pgd": p["curve"][-1]["pgd"],
        }
    return out


# ---------------------------------------------------------------- report
def aggregate(seeds: list[dict]) -> dict:
    """Per preset: means over the seeds that ran it, per-seed values, steps/seconds to the single-teacher target."""
    names = list(dict.fromkeys(n for s in seeds for n in s["presets"]))
    agg = {}
    for name in names:
        ran = [s for s in seeds if name in s["presets"]]
        finals = [s["presets"][name]["final"] for s in ran]
        row = {k: statistics.mean(f[k] for f in finals) for k in ("clean", "pgd", "apgd_ce") if k in finals[0]}
        row["seeds"] = [s["seed"] for s in ran]
        row["per_seed"] = [{k: f.get(k) for k in ("clean", "pgd", "apgd_ce")} for f in finals]
        row["train_s"] = statistics.mean(s["presets"][name]["train_s"] for s in ran)
        hits = [s["targets"].get(name, {}) for s in ran if s.get("targets")]
        row["steps_to_target"] = [h.get("steps") for h in hits]
        row["train_s_to_target"] = [h.get("train_s") for h in hits]
        agg[name] = row
    for name in ("mmt-ard", "mmt-ard-sigmoid"):
        both = [s for s in seeds if name in s["presets"] and "single-teacher" in s["presets"]]
        if both:
            agg[f"{name}_minus_single-teacher"] = {
                k: [s["presets"][name]["final"][k] - s["presets"]["single-teacher"]["final"][k] for s in both]
                for k in ("clean", "pgd", "apgd_ce")
            }
    return agg


def table(agg: dict, seeds: list[dict]) -> str:
    lines = [
        (
            "| preset | seeds | clean | PGD-10 | APGD-CE | steps to single-teacher's robust acc | train s to it "
            "| train s total |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in agg.items():
        if "_minus_" in name:
            continue
        steps = ", ".join("-" if s is None else str(s) for s in row["steps_to_target"])
        secs = ", ".join("-" if s is None else f"{s:.0f}" for s in row["train_s_to_target"])
        lines.append(
            f"| {name} | {len(row['seeds'])} | {100 * row['clean']:.1f} | {100 * row['pgd']:.1f} | "
            f"{100 * row.get('apgd_ce', float('nan')):.1f} | {steps} | {secs} | {row['train_s']:.0f} |"
        )
    for key in ("clean_teacher", "robust_teacher", "student_init"):
        vals = [s[key] for s in seeds]
        m = {k: statistics.mean(v[k] for v in vals) for k in ("clean", "pgd", "apgd_ce")}
        lines.append(
            f"| ({key.replace('_', ' ')}) | {len(vals)} | {100 * m['clean']:.1f} | {100 * m['pgd']:.1f} | "
            f"{100 * m['apgd_ce']:.1f} | | | {statistics.mean(v['train_s'] for v in vals):.0f} |"
        )
    return "\n".join(lines)


def plot(seeds: list[dict], path: str) -> None:
    """Robust (left) and clean (right) held-out accuracy vs steps; one row per seed (a mean would hide a collapse)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(seeds)
    fig, axes = plt.subplots(rows, 2, figsize=(10, 3.2 * rows), squeeze=False)
    names = list(dict.fromkeys(n for s in seeds for n in s["presets"]))
    colors = dict(zip(PRESETS_ALL + ["mmt-ard-sigmoid"], plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for row, seed in zip(axes, seeds):
        for ax, key, title in ((row[0], "pgd", "robust accuracy (PGD-10)"), (row[1], "clean", "clean accuracy")):
            for name in [n for n in names if n in seed["presets"]]:
                curve = seed["presets"][name]["curve"]
                ax.plot(
                    [pt["step"] for pt in curve],
                    [100 * pt[key] for pt in curve],
                    marker="o",
                    ms=3,
                    label=name,
                    color=colors.get(name),
                    lw=2.2 if name == "mmt-ard" else 1.3,
                )
            for tkey, style in (("robust_teacher", ":"), ("clean_teacher", "--")):
                ax.axhline(100 * seed[tkey][key], color="gray", ls=style, lw=1, label=tkey.replace("_", " "))
            ax.set_xlabel("training steps")
            ax.set_ylabel("%")
            n_key = "n_robust" if key == "pgd" else "n_clean"
            n = next(iter(seed["presets"].values()), {"curve": [{}]})["curve"][-1].get(n_key, "?")
            ax.set_title(f"seed {seed['seed']}: {title}, {n} held-out images", fontsize=9)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=72)
    from PIL import Image

    Image.open(path).convert("RGB").quantize(colors=64).save(path, optimize=True)  # a small file for the docs


def write_report(seeds: list[dict], cfg: dict, machine: dict, out: str, plot_path: str | None, wall: float) -> None:
    agg = aggregate(seeds)
    tab = table(agg, seeds)
    print(tab)
    for key in ("mmt-ard_minus_single-teacher", "mmt-ard-sigmoid_minus_single-teacher"):
        if key in agg:
            print(
                key.replace("_", " ")
                + " (points, per seed): "
                + ", ".join(f"{k} {[round(100 * v, 1) for v in vs]}" for k, vs in agg[key].items())
            )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(
            {
                "config": cfg,
                "machine": machine,
                "wall_s": wall,
                "aggregate": agg,
                "table_markdown": tab,
                "seeds": seeds,
            },
            f,
            indent=2,
        )
    log(f"wrote {out}")
    if plot_path:
        plot(seeds, plot_path)
        log(f"wrote {plot_path}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data",
        required=True,
        help="Parquet file (image bytes + label, class names in the .json sidecar), a Hub dataset id, "
        "or `sklearn-digits`",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--split-seed", type=int, default=0, help="seed of the train/held-out split (same for all seeds)")
    ap.add_argument("--train-per-class", type=int, default=900)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--student-width", type=int, default=64)
    ap.add_argument("--student-layers", type=int, default=4)
    ap.add_argument("--teacher-width", type=int, default=96)
    ap.add_argument("--teacher-layers", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--teacher-steps", type=int, default=800, help="clean teacher: clean CE steps")
    ap.add_argument("--robust-steps", type=int, default=300, help="robust teacher: tecoa fine-tuning steps")
    ap.add_argument("--robust-attack-steps", type=int, default=5)
    ap.add_argument("--student-steps", type=int, default=400, help="student initialisation: clean CE steps")
    ap.add_argument("--steps", type=int, default=400, help="steps per preset (the equal budget)")
    ap.add_argument("--presets", nargs="*", default=PRESETS_ALL, help="none: only teachers and student init")
    ap.add_argument("--pretrain-lr", type=float, default=1e-3)
    ap.add_argument("--lr", type=float, default=5e-4, help="adversarial fine-tuning / distillation lr, all presets")
    ap.add_argument("--eps", type=float, default=2 / 255)
    ap.add_argument("--step-size", type=float, default=1 / 255, help="training attack step")
    ap.add_argument("--attack-steps", type=int, default=5, help="training attack steps, all presets")
    ap.add_argument("--eval-steps", type=int, default=10)
    ap.add_argument("--eval-step-size", type=float, default=0.5 / 255)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-robust-n", type=int, default=500, help="held-out images attacked in periodic evals")
    ap.add_argument("--eval-batch", type=int, default=250)
    ap.add_argument("--apgd-iters", type=int, default=25, help="final APGD-CE iterations (0: skip)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: robust on a shared CPU)")
    ap.add_argument("--out", default="benchmarks/results/replicate.json")
    ap.add_argument("--plot", default=None, help="PNG path for robust/clean accuracy vs steps")
    ap.add_argument("--merge", nargs="+", help="merge per-seed JSON files written by earlier runs, then report")
    a = ap.parse_args(argv)
    if a.merge:
        by_seed, cfg, machine, wall = {}, None, None, 0.0
        for path in a.merge:
            with open(path) as f:
                blob = json.load(f)
            for seed_res in blob["seeds"]:
                # runs of the same seed rebuild the same teachers and student (deterministic, checked here) and
                # contribute their presets
                seed = seed_res["seed"]
                if seed not in by_seed:
                    by_seed[seed] = seed_res
                    continue
                base = by_seed[seed]
                for key in ("clean_teacher", "robust_teacher", "student_init"):
                    same = all(base[key][k] == seed_res[key][k] for k in ("clean", "pgd", "apgd_ce"))
                    base.setdefault("setup_reproduced", {})[f"{key} ({os.path.basename(path)})"] = same
                base["presets"].update(seed_res["presets"])
            cfg, machine, wall = cfg or blob["config"], machine or blob["machine"], max(wall, blob["wall_s"])
        seeds = [by_seed[k] for k in sorted(by_seed)]
        for seed_res in seeds:
            seed_res["targets"] = steps_to_target(seed_res["presets"])
        write_report(seeds, cfg, machine, a.out, a.plot, wall)
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = {k: v for k, v in vars(a).items() if k not in ("merge", "out", "plot")}
    t_start = time.perf_counter()
    x, y, class_names = load_image_table(a.data, a.image_size)
    train_idx, test_idx = balanced_split(y, a.train_per_class, a.test_per_class, a.split_seed)
    cfg.update(n_train=len(train_idx), n_test=len(test_idx), class_names=class_names)
    log(
        f"data {a.data}: {len(y)} images, {len(class_names)} classes; train {len(train_idx)}, held-out {len(test_idx)}"
    )
    machine = machine_info()
    seeds = [run_seed(s, cfg, x, y, class_names, train_idx, test_idx) for s in a.seeds]
    write_report(seeds, cfg, machine, a.out, a.plot, time.perf_counter() - t_start)
    log(f"total {time.perf_counter() - t_start:.0f}s")


if __name__ == "__main__":
    main()
