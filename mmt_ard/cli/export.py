"""`mmt-ard-export`: put a robust student's vision tower into a Hugging Face LVLM (the command; the library is
`mmt_ard.export`).

Example (a trained ViT-L/14 student into LLaVA-1.5; its 224 px position grid is resized to the LVLM's 336 px):

    mmt-ard-export --student runs/mmt-ard-vitl14 --into llava-hf/llava-1.5-7b-hf --output-dir llava-1.5-7b-mmt-ard

The output folder holds the LVLM with only its vision tower's weights replaced, and a model card (README.md).
"""

from __future__ import annotations

import argparse
import sys

from .errors import add_debug_flag, command, one_line_errors, running
from .names import check_model_name

PROG = "mmt-ard-export"


def build_parser() -> argparse.ArgumentParser:
    from ..export.families import supported_families

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write a copy of a Hugging Face LVLM whose vision tower is a robust student's. Only the tower's "
        "tensors change; the projector, language model, config, processor, tokenizer, chat template and generation "
        "config stay byte for byte the LVLM's.",
        epilog=f"Supported LVLM classes: {supported_families()}.",
    )
    parser.add_argument(
        "--student",
        required=True,
        help="A training run's output_dir, a CLIPModel/SiglipModel folder or Hub id, or an open_clip checkpoint "
        "(hf-hub:org/name, a folder with open_clip_config.json, a weights file).",
    )
    parser.add_argument("--into", required=True, help="Hub id or folder of the LVLM, e.g. llava-hf/llava-1.5-7b-hf.")
    parser.add_argument("--output-dir", required=True, help="The new folder (must not exist, or be empty).")
    parser.add_argument("--student-processor", default=None, help="The student's processor when its folder has none.")
    parser.add_argument(
        "--adjust-normalization",
        "--adjust-normalisation",
        dest="adjust_normalization",
        action="store_true",
        help="If the student's image mean/std differ from the LVLM processor's, rewrite the patch embedding so the "
        "tower computes the student's function on the LVLM's inputs (exact). Without it such a student is refused.",
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace a non-empty --output-dir once done.")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="Also upload the export to the Hub.")
    parser.add_argument("--hub-private", action="store_true", help="Create the Hub repository private.")
    parser.add_argument("--quiet", action="store_true", help="Print nothing but errors.")
    add_debug_flag(parser)
    return one_line_errors(parser)


@command(PROG)
def main(argv: list[str]) -> int:
    """`mmt-ard-export ARGV`; returns the exit status (errors are one line on stderr, see `mmt_ard.cli.errors`).

    Refusals (towers that do not fit, another normalisation, an existing output folder) are raised by the export's
    checks, before anything is written: exit status 2. A failure while writing or pushing: exit status 1.
    """
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    from ..export import export_to_lvlm

    check_model_name("--student", args.student)
    check_model_name("--into", args.into)
    check_model_name("--student-processor", args.student_processor, "processor")
    hf_logging.disable_progress_bar()  # the export prints its own lines; loading bars would bury them
    export_to_lvlm(
        args.student,
        args.into,
        args.output_dir,
        student_processor=args.student_processor,
        adjust_normalization=args.adjust_normalization,
        overwrite=args.overwrite,
        push_to_hub=args.push_to_hub,
        hub_private=True if args.hub_private else None,
        log=None if args.quiet else print,
        on_checked=running,
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
