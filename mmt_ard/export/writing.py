"""Atomic writing of an exported folder: everything goes into a hidden staging folder beside the output, which is
renamed into place only once complete. A crash, a refusal or Ctrl-C leaves no half-written output folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager

# files of a Hub snapshot or a git clone that are not part of the model
SKIPPED_NAMES = {".git", ".cache", ".huggingface"}


def check_output_dir(output_dir: str, overwrite: bool, sources: list[str]) -> str:
    """The absolute output path; refuse a non-empty existing folder (unless `overwrite`) or one that is a source."""
    out = os.path.abspath(output_dir)
    for src in sources:
        src = os.path.abspath(src)
        if out == src or out.startswith(src + os.sep) or src.startswith(out + os.sep):
            raise ValueError(
                f"--output-dir {output_dir!r} overlaps an input ({src!r}): write the export to a new folder."
            )
    if os.path.lexists(out) and not (os.path.isdir(out) and not os.listdir(out)) and not overwrite:
        raise FileExistsError(
            f"--output-dir {output_dir!r} exists and is not empty: choose a new folder, or pass --overwrite to "
            "replace it (it is replaced only once the new export is complete)."
        )
    return out


@contextmanager
def atomic_directory(output_dir: str, overwrite: bool = False):
    """Yield a staging folder; on success it becomes `output_dir` (an old one is replaced only if `overwrite`)."""
    out = os.path.abspath(output_dir)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.staging-", dir=parent)
    try:
        yield staging
        _open_permissions(staging)
        _move_into_place(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _move_into_place(staging: str, out: str, overwrite: bool) -> None:
    if os.path.lexists(out):
        if os.path.isdir(out) and not os.listdir(out):
            os.rmdir(out)
        elif overwrite:
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
            os.rmdir(old)
            os.rename(out, old)
            os.rename(staging, out)
            shutil.rmtree(old, ignore_errors=True)
            return
        else:
            raise FileExistsError(f"{out!r} appeared while exporting: the export is left in {staging!r}.")
    os.rename(staging, out)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _open_permissions(staging: str) -> None:
    """`tempfile.mkdtemp` makes the staging folder (and so the output) 0700; give it what `os.makedirs` (and so
    `save_pretrained`) gives under the user's umask, e.g. 0755."""
    os.chmod(staging, 0o777 & ~_umask())


def copy_tree(src: str, dst: str, skip: set[str] | None = None) -> list[str]:
    """Copy every file of `src` into `dst` byte for byte (symlinks, e.g. of a Hub cache snapshot, are followed);
    returns the relative paths copied. Names in `skip` (relative paths) are not copied."""
    skip = skip or set()
    copied = []
    for root, dirs, files in os.walk(src, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_NAMES)
        rel_root = os.path.relpath(root, src)
        for name in sorted(files):
            rel = os.path.normpath(os.path.join(rel_root, name))
            if rel in skip:
                continue
            os.makedirs(os.path.join(dst, rel_root), exist_ok=True)
            shutil.copyfile(os.path.join(root, name), os.path.join(dst, rel))
            copied.append(rel)
    return copied
