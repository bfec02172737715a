"""`mmt-ard-eval-lvlm`: robustness of vision-language models themselves, RobustVLM's protocol (the command; the
library is `mmt_ard.evaluation.lvlm`).

Example (LLaVA-1.5 with its own and with a robust tower, COCO captions and VQAv2 subsets, one 80 GB GPU):

    mmt-ard-eval-lvlm --models llava-hf/llava-1.5-7b-hf llava-1.5-7b-mmt-ard \\
        --datasets coco=data/coco_val vqav2=data/vqav2_val --output-dir eval_lvlm --gradient-checkpointing

Writes `results.json`, `results.md` and `robustness.png` into `--output-dir`, and per-sample replies under
`lvlm_state/`; rerunning resumes where it stopped and skips finished (model, dataset) pairs.
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import UsageError, add_debug_flag, command, one_line_errors, running
from .help_format import DefaultsHelpFormatter
from .names import check_device, check_model_name

PROG = "mmt-ard-eval-lvlm"


def build_parser() -> argparse.ArgumentParser:
    from ..evaluation.lvlm.protocol import LVLMProtocol

    d = LVLMProtocol()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Clean and adversarial captioning (CIDEr) and VQA (VQA accuracy) scores of LVLMs under APGD on "
        "the language model's loss of the references (per-sample worst case), and targeted-attack success rates. "
        "Defaults follow RobustVLM.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument(
        "--models",
        nargs="+",
        required=True,
        help="LVLM folders or Hub ids of a registered class (docs/lvlm.md: LLaVA, LLaVA-NeXT, LLaVA-OneVision, "
        "PaliGemma, Idefics3, SmolVLM, Aya Vision, Gemma 3).",
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        required=True,
        help="[name=]folder or json file: COCO captions / Karpathy json, or VQAv2 questions.json + annotations.json, "
        "or TextVQA json (docs/lvlm.md, Data).",
    )
    parser.add_argument("--output-dir", default="eval_lvlm", help="Where results.json/.md, the plot and the state go.")
    parser.add_argument("--eps", nargs="+", default=None, help="L-inf budgets, e.g. --eps 2/255 4/255 (default).")
    parser.add_argument("--n-iter", type=int, default=d.n_iter, help="APGD iterations per attack.")
    parser.add_argument("--num-samples", type=int, default=d.num_samples, help="Samples per dataset (seeded subset).")
    parser.add_argument("--all-samples", action="store_true", help="Use every sample (no subset).")
    parser.add_argument("--seed", type=int, default=d.seed, help="Seed of the subset and of the random starts.")
    parser.add_argument(
        "--max-references", type=int, default=d.max_references, help="Attacks per sample, one per reference."
    )
    parser.add_argument(
        "--vqa-extra-targets",
        nargs="*",
        default=list(d.vqa_extra_targets),
        help="VQA: strings forced within the worst case.",
    )
    parser.add_argument("--no-refine", action="store_true", help="Skip the last APGD from each sample's worst image.")
    parser.add_argument("--target-strings", nargs="*", default=[], help="Targeted attacks forcing these strings.")
    parser.add_argument(
        "--targeted-n-iter", type=int, default=d.targeted_n_iter, help="APGD iterations of targeted attacks."
    )
    parser.add_argument(
        "--targeted-num-samples", type=int, default=d.targeted_num_samples, help="Samples targeted attacks run on."
    )
    parser.add_argument("--caption-prompt", default=d.caption_prompt, help="Captioning instruction.")
    parser.add_argument("--vqa-prompt", default=d.vqa_prompt, help="VQA instruction with {question}.")
    parser.add_argument("--caption-max-new-tokens", type=int, default=d.caption_max_new_tokens, help="Caption length.")
    parser.add_argument("--vqa-max-new-tokens", type=int, default=d.vqa_max_new_tokens, help="Answer length.")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="Samples per attack batch.")
    parser.add_argument(
        "--bad-samples",
        choices=["error", "skip"],
        default="error",
        help="A missing, truncated or unreadable image: stop with an error naming the file, or leave the sample out "
        "(counted in results.json).",
    )
    parser.add_argument(
        "--image-size",
        default=None,
        help="The attack space: every image is resized once to HxW (or SxS for one number) before the attack; the "
        "model's own pipeline (tiling, global image) runs on it differentiably. Default: single-crop classes their "
        "processor's input size, tiling classes the tower's input size.",
    )
    parser.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        default=None,
        help="Weights' dtype (default: bfloat16 on CUDA, float32 on CPU); the attack state is fp32 always.",
    )
    parser.add_argument("--gradient-checkpointing", action="store_true", help="Recompute activations (less memory).")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available).")
    parser.add_argument("--no-resume", action="store_true", help="Recompute everything.")
    parser.add_argument("--no-progress", action="store_true", help="No progress bars.")
    add_debug_flag(parser)
    return one_line_errors(parser)


@command(PROG)
def main(argv: list[str]) -> int:
    """`mmt-ard-eval-lvlm ARGV`; returns the exit status (errors are one line on stderr, see `mmt_ard.cli.errors`)."""
    args = build_parser().parse_args(argv)
    from ..evaluation.lvlm import LVLMProtocol, evaluate_lvlm
    from .evaluate import parse_eps

    eps = [e for text in args.eps for e in parse_eps(text)] if args.eps else None
    fields = dict(
        n_iter=args.n_iter,
        num_samples=None if args.all_samples else args.num_samples,
        seed=args.seed,
        max_references=args.max_references,
        vqa_extra_targets=tuple(args.vqa_extra_targets),
        refine=not args.no_refine,
        target_strings=tuple(args.target_strings),
        targeted_n_iter=args.targeted_n_iter,
        targeted_num_samples=args.targeted_num_samples,
        caption_prompt=args.caption_prompt,
        vqa_prompt=args.vqa_prompt,
        caption_max_new_tokens=args.caption_max_new_tokens,
        vqa_max_new_tokens=args.vqa_max_new_tokens,
        batch_size=args.batch_size,
    )
    if eps is not None:
        fields["eps"] = tuple(eps)
    protocol = LVLMProtocol(**fields)
    check_device("--device", args.device)
    for model in args.models:
        check_model_name("--models", model)
    for spec in args.datasets:
        path = spec.split("=", 1)[1] if "=" in spec and not os.path.exists(spec) else spec
        if not os.path.exists(path):
            raise UsageError("--datasets", spec, "no such file or folder", "Give a [name=]folder or json file.")
    image_size = _image_size(args.image_size)
    from ..evaluation.lvlm.model import check_lvlm, check_pipeline

    for model in args.models:  # an unsupported class or processor is refused before anything is evaluated (exit 2)
        check_pipeline(model, check_lvlm(model))
    running()  # the checks are done: from here on an error is a failure of the run (exit status 1)
    evaluate_lvlm(
        args.models,
        args.datasets,
        protocol=protocol,
        output_dir=args.output_dir,
        device=args.device,
        dtype=args.dtype,
        gradient_checkpointing=args.gradient_checkpointing,
        image_size=image_size,
        bad_samples=args.bad_samples,
        resume=not args.no_resume,
        progress=not args.no_progress,
    )
    print(f"[{PROG}] wrote {args.output_dir}/results.json, results.md, robustness.png")
    return 0


def _image_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().replace("x", " ").split()
    try:
        sides = [int(p) for p in parts]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise UsageError("--image-size", text, "not a size", "Give HxW (e.g. 384x512) or one side (e.g. 384).")
    return (sides[0], sides[-1])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
