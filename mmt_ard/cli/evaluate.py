"""`mmt-ard-eval`: robust zero-shot accuracy of CLIP models on image-classification sets (the command; the library
is `mmt_ard.evaluation`).

Example (the MMT-ARD / FARE protocol on two local sets, resumable):

    HF_HUB_OFFLINE=1 mmt-ard-eval --models runs/mmt-ard openai/clip-vit-base-patch32 \\
        --datasets data/cifar10_test.parquet data/pets --protocol robustvlm --output-dir eval/robustvlm

Writes `results.json`, `results.md`, `robustness.png` and the per-sample files (`samples/`) into `--output-dir`;
rerunning skips the (model, dataset) pairs already finished under the same protocol and continues unfinished ones
image by image. Several processes share the images and only process 0 writes:

    torchrun --nproc_per_node 4 -m mmt_ard.cli.evaluate --models ... --datasets ... --output-dir eval/robustvlm

Exit status: 0 done, 1 a failure while running (e.g. an unreadable image with `--bad-samples error`), 2 a wrong
command line (one line on stderr, nothing evaluated), 3 a result flagged by the gradient-masking checks with
`--fail-on-flag`, 75 preempted: SIGTERM / SIGUSR1 stop after the current batch with every finished image saved (see
`mmt_ard.cli.errors`).
"""

from __future__ import annotations

import argparse
import os
import sys
from fractions import Fraction

from ..evaluation.protocols import ATTACKS, NORMS, PROTOCOLS, TEMPLATE_MODES
from .errors import UsageError, add_debug_flag, command, one_line_errors, running
from .help_format import DefaultsHelpFormatter
from .names import (
    check_data_files,
    check_dataset_name,
    check_device,
    check_files,
    check_model_name,
    check_wds_folder,
)

PROG = "mmt-ard-eval"
EXIT_FLAGGED = 3  # --fail-on-flag and a result failed a gradient-masking check
BAD_SAMPLE_CHOICES = ("error", "skip")


def parse_eps(text: str) -> list[float]:
    """`2/255`, `0.00784` or a comma-separated list of those -> floats in [0,1] pixel units."""
    values = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            values.append(float(Fraction(part)))
        except (ValueError, ZeroDivisionError) as err:
            raise argparse.ArgumentTypeError(f"--eps {part!r}: write budgets as 2/255 or 0.00784.") from err
    return values


def parse_templates(text: str) -> str:
    """`ensemble`, `single`, or a custom prompt with one `{}` (or `{c}`) for the class name."""
    if text in TEMPLATE_MODES or "{}" in text or "{c}" in text:
        return text
    raise argparse.ArgumentTypeError(
        f"--templates {text!r}: use one of {list(TEMPLATE_MODES)} or a prompt with '{{}}' for the class name, e.g. "
        "--templates 'a photo of a {}'."
    )


def build_parser() -> argparse.ArgumentParser:
    protocols = "; ".join(f"{name}: {p.description}" for name, p in PROTOCOLS.items())
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Robust zero-shot accuracy (PGD, APGD-CE, APGD-T; per-image worst case) with gradient-masking "
        "checks. Every unset option takes the protocol's value.",
        epilog=f"Protocols: {protocols}",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument(
        "--models",
        nargs="+",
        required=False,
        default=None,
        help="Hub ids or local folders of CLIP, SigLIP or SigLIP 2 models, training run output_dirs, or open_clip / "
        "OpenAI-CLIP checkpoints "
        "(hf-hub:org/name, a folder with open_clip_config.json, a weights file, ARCH@file; docs/open_clip.md).",
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=None,
        help="Names (cifar10, pets, ...: clip-benchmark Hub copies), Hub ids, or local parquet files/"
        "folders or image folders. Default: the protocol's datasets.",
    )
    parser.add_argument("--protocol", default="quick", choices=sorted(PROTOCOLS), help="Protocol preset.")
    parser.add_argument("--eps", nargs="+", default=None, help="Budgets, e.g. --eps 2/255 4/255.")
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=None, help="Attacks, run in order.")
    parser.add_argument("--norm", choices=NORMS, default=None, help="Threat model.")
    parser.add_argument("--num-samples", type=int, default=None, help="Images per dataset (seeded subset).")
    parser.add_argument("--all-samples", action="store_true", help="Use whole splits (no subset).")
    parser.add_argument("--n-iter", type=int, default=None, help="APGD iterations.")
    parser.add_argument("--n-restarts", type=int, default=None, help="APGD restarts.")
    parser.add_argument("--n-target-classes", type=int, default=None, help="APGD-T target classes.")
    parser.add_argument("--pgd-steps", type=int, default=None, help="PGD iterations.")
    parser.add_argument("--pgd-step-size", default=None, help="PGD step (default eps/4), e.g. 1/255.")
    parser.add_argument(
        "--templates",
        type=parse_templates,
        default=None,
        help="ensemble (each dataset's prompt ensemble), single (the protocol's one prompt), or a custom prompt "
        "with {} for the class name, e.g. 'a photo of a {}'.",
    )
    parser.add_argument("--logit-scale", type=float, default=None, help="Fixed logit scale (protocol: 100).")
    parser.add_argument(
        "--model-logit-scale",
        action="store_true",
        help="Use each model's own logit scale (and SigLIP's bias) instead of the fixed one; results.json records "
        "`logit_mode`.",
    )
    parser.add_argument("--split", default=None, help="Dataset split.")
    parser.add_argument("--seed", type=int, default=None, help="Seed of the subset and of the random starts.")
    parser.add_argument("--batch-size", type=int, default=None, help="Images per attack batch.")
    parser.add_argument("--no-cascade", action="store_true", help="Run every attack on every image.")
    parser.add_argument("--no-checks", action="store_true", help="Skip the gradient-masking checks.")
    parser.add_argument("--check-samples", type=int, default=None, help="Images the checks run on.")
    parser.add_argument(
        "--class-names-json", default=None, help='JSON {"<dataset>": {"classnames": [...], "templates": [...]}}.'
    )
    parser.add_argument("--processor", default=None, help="Processor id/path for models whose folder has none.")
    parser.add_argument("--output-dir", default="robust_eval", help="Where results.json/.md and the plot go.")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available).")
    parser.add_argument(
        "--bad-samples",
        choices=BAD_SAMPLE_CHOICES,
        default="error",
        help="An unreadable image or a label outside the class names: stop naming the dataset file and row (error), "
        "or leave the row out and count it in results.json / results.md (skip).",
    )
    parser.add_argument("--no-resume", action="store_true", help="Recompute finished (model, dataset) pairs.")
    parser.add_argument("--no-progress", action="store_true", help="No progress bars.")
    parser.add_argument(
        "--fail-on-flag", action="store_true", help=f"Exit with status {EXIT_FLAGGED} when a result is flagged."
    )
    parser.add_argument("--list-protocols", action="store_true", help="Print the protocol presets and exit.")
    add_debug_flag(parser)
    return one_line_errors(parser)


@command(PROG)
def main(argv: list[str]) -> int:
    """`mmt-ard-eval ARGV`; returns the exit status (errors are one line on stderr, see `mmt_ard.cli.errors`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_protocols:
        for proto in PROTOCOLS.values():
            print(proto.summary())
            print(f"    {proto.description}; datasets: {', '.join(proto.datasets)}")
        return 0
    if not args.models:
        parser.error(
            "--models is required (Hub ids, local model folders, training run output_dirs, or open_clip checkpoints)."
        )

    from ..evaluation.protocols import get_protocol
    from ..evaluation.robust_eval import evaluate_robustness

    main_process = os.environ.get("RANK", "0") == "0"  # only process 0 of a launch reports (and writes)

    eps = [e for text in args.eps for e in parse_eps(text)] if args.eps else None
    step = parse_eps(args.pgd_step_size)[0] if args.pgd_step_size else None
    overrides = {
        "norm": args.norm,
        "n_iter": args.n_iter,
        "n_restarts": args.n_restarts,
        "n_target_classes": args.n_target_classes,
        "pgd_steps": args.pgd_steps,
        "pgd_step_size": step,
        "templates": args.templates,
        "logit_scale": args.logit_scale,
        "split": args.split,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "check_samples": args.check_samples,
    }
    if args.no_cascade:
        overrides["cascade"] = False
    if args.no_checks:
        overrides["checks"] = False
    protocol = get_protocol(args.protocol, eps=eps, attacks=args.attacks, num_samples=args.num_samples, **overrides)
    if args.all_samples:
        protocol.num_samples, protocol.dataset_num_samples = None, {}
        protocol.modified = tuple(sorted(set(protocol.modified) | {"num_samples"}))
    if args.model_logit_scale:
        protocol.logit_scale = None
        protocol.modified = tuple(sorted(set(protocol.modified) | {"logit_scale"}))
    check_names(args, args.datasets or list(protocol.datasets))
    running()  # the checks are done: from here on an error is a failure of the run (exit status 1)
    report = evaluate_robustness(
        args.models,
        args.datasets,
        protocol=protocol,
        output_dir=args.output_dir,
        class_names_json=args.class_names_json,
        processor=args.processor,
        device=args.device,
        resume=not args.no_resume,
        progress=not args.no_progress,
        bad_samples=args.bad_samples,
    )  # a preemption raises `EvaluationPreempted` (exit status 75), reported by the error path
    if main_process:
        print(f"[mmt-ard-eval] wrote {args.output_dir}/results.json, results.md, robustness.png, samples/")
    flagged = [f"{r['model']} x {r['dataset']}" for r in report["results"] if r.get("flagged")]
    if flagged:
        if main_process:
            print(
                f"[mmt-ard-eval] WARNING: flagged by the gradient-masking checks: {', '.join(flagged)}",
                file=sys.stderr,
            )
        if args.fail_on_flag:
            return EXIT_FLAGGED
    return 0


def check_names(args: argparse.Namespace, datasets: list[str]) -> None:
    """Every model, processor, dataset, file and device the command line names exists (before anything loads)."""
    from ..convert import is_open_clip_source
    from ..data.known_datasets import HUB_IDS, known_dataset
    from ..evaluation.datasets import load_user_meta
    from ..evaluation.robust_eval import resolve_model_path

    check_device("--device", args.device)
    for model in args.models:
        check_model_name("--models", model)
        if os.path.isdir(model) and not is_open_clip_source(model):
            try:
                resolve_model_path(model)
            except FileNotFoundError as err:
                raise UsageError(
                    "--models",
                    model,
                    "holds neither a model (config.json + model.safetensors) nor a checkpoint-* folder with one",
                    "Give a model folder (CLIP, SigLIP), a training run's output_dir, or a Hub id.",
                ) from err
    check_model_name("--processor", args.processor, "processor")
    from ..data.webdataset import is_brace_pattern  # here: `--help` imports no torch

    for spec in datasets:
        if os.path.isfile(spec) or is_brace_pattern(spec):
            check_data_files("--datasets", spec)  # brace patterns of shards included
            continue
        check_wds_folder("--datasets", spec, [args.split or "test"])
        key = None if os.path.exists(spec) else known_dataset(spec)
        check_dataset_name("--datasets", spec, HUB_IDS.get(key) if key else None, sorted(HUB_IDS))
    check_files("--class-names-json", args.class_names_json)
    load_user_meta(args.class_names_json)  # its structure, now: a ValueError naming the file
    if os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        raise UsageError("--output-dir", args.output_dir, "is a file, not a folder", "Give a folder path.")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
