"""Lazy package namespaces (PEP 562): a package's public names are imported from their modules on first use.

So `import mmt_ard.evaluation.protocols` (what a command's `--help` needs) does not import torch, transformers and
every sibling module through the package's `__init__`, while `from mmt_ard.evaluation import evaluate_robustness`
works as before.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable, Callable]:
    """`(__getattr__, __dir__)` for the package `package`, serving each name of `exports` from its module.

    Args:
        package: the package's `__name__`.
        exports: public name -> module that defines it, relative to the package (`".robust_eval"`).
    """

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)  # later lookups do not come here
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
