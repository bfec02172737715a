"""The commands' `--help`: each option's default where it tells the user something, and nowhere else."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`ArgumentDefaultsHelpFormatter` without the defaults that say nothing: none for a required option, an option
    unset by default (`None`, an empty list), a switch that is off (`False`), or help that states its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        says_nothing = (
            action.required
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or (isinstance(default, (list, tuple)) and not default)
            or "default" in text.lower()
        )
        return text if says_nothing else super()._get_help_string(action)
