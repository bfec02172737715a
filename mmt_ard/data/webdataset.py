"""Webdataset shards: brace patterns, checks, reading samples out of tar files, CLIP_benchmark's `wds_*` layout.

A shard is a plain tar; the files that share a key (the path up to the first dot of the file name) form one sample:
`000123.jpg`, `000123.cls`, `000123.json`. Shard lists are written as brace patterns
(`shards/{00000..00099}.tar`, `{train,extra}-{0..3}.tar`). CLIP_benchmark's `wds_*` datasets (`clip-benchmark/wds_*`
on the Hub, or a local copy) hold `classnames.txt`, `zeroshot_classification_templates.txt` and one folder of shards
per split (`test/0.tar`, `test/1.tar`, ...).

Reading is done here with `tarfile` (no `webdataset` package): `iter_tar_samples(path, start)` yields the samples of
one shard from the `start`-th on, stepping over the bytes of the samples before it without reading them (tar headers
give every member's size), which is what an exact resume without replay needs (`stream.ShardedStream`). Map-style
reading of shards (evaluation, training without `--streaming`) goes through `datasets`' own `webdataset` builder.

>>> expand_braces("shards/{00000..00002}.tar")
['shards/00000.tar', 'shards/00001.tar', 'shards/00002.tar']
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from collections.abc import Iterator

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # tried in this order for a sample's image
WDS_CLASSNAMES = "classnames.txt"
WDS_TEMPLATES = "zeroshot_classification_templates.txt"
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


class ShardError(ValueError):
    """A webdataset shard that cannot serve as one: missing, empty, not a tar, or not webdataset-shaped.

    Args:
        path: the shard.
        problem: what is wrong with it (`is empty (no files)`).
        fix: what to do (a sentence).
    """

    def __init__(self, path: str, problem: str, fix: str):
        self.path, self.problem, self.fix = path, problem, fix
        super().__init__(f"Shard {path!r} {problem}: {fix}")


def is_brace_pattern(text) -> bool:
    """Whether `text` is a brace pattern (`{0..3}` or `{a,b}`)."""
    return isinstance(text, str) and bool(_BRACE.search(text)) and (".." in text or "," in text)


def expand_braces(pattern: str) -> list[str]:
    """All strings a brace pattern stands for, in order: `{00..02}` keeps the zero padding, `{a,b}` alternates;
    several groups multiply out left to right. A string without braces is returned as is."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end() :]
    numeric = _RANGE.match(body)
    if numeric:
        lo, hi = numeric.group(1), numeric.group(2)
        width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
        step = 1 if int(hi) >= int(lo) else -1
        items = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    elif "," in body:
        items = body.split(",")
    else:
        raise ValueError(f"Brace pattern {pattern!r}: {{{body}}} is neither a range `{{0..9}}` nor a list `{{a,b}}`.")
    return [head + item + rest for item in items for rest in expand_braces(tail)]


def split_key(name: str) -> tuple[str, str]:
    """`("dir/000123", "jpg")` from `dir/000123.jpg` (webdataset's rule: the key ends at the first dot of the file
    name; the extension is the rest, lower-cased). A name without a dot has the extension ``."""
    folder, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    return (os.path.join(folder, stem) if folder else stem), ext.lower() if dot else ""


def _open(path: str):
    """A binary file object for a local path or an fsspec URL (`hf://datasets/...`)."""
    if "://" in path:
        import fsspec

        return fsspec.open(path, "rb").open()
    return open(path, "rb")


def iter_tar_samples(path: str, start: int = 0) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """`(index, key, {extension: bytes})` of every sample of the shard `path` from the `start`-th on.

    The members of the samples before `start` are stepped over (their headers are read, their data is not). Files
    whose name has no extension, and directories, are ignored.
    """
    with _open(path) as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
        index, key, files = -1, None, {}
        for member in tar:
            if not member.isfile():
                continue
            member_key, ext = split_key(member.name)
            if not ext:
                continue
            if member_key != key:
                if key is not None and index >= start:
                    yield index, key, files
                index, key, files = index + 1, member_key, {}
            if index >= start:
                with tar.extractfile(member) as f:
                    files[ext] = f.read()
        if key is not None and index >= start:
            yield index, key, files


def count_tar_samples(path: str) -> int:
    """The number of samples in a shard (headers only)."""
    return sum(1 for _ in _keys(path))


def _keys(path: str) -> Iterator[str]:
    with _open(path) as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
        key = None
        for member in tar:
            member_key, ext = split_key(member.name)
            if member.isfile() and ext and member_key != key:
                key = member_key
                yield key


def check_shard(path: str) -> None:
    """Raise a `ShardError` naming `path` when it is missing, empty, not a tar, or its first sample has no image
    (`.jpg`/`.jpeg`/`.png`/`.webp`): the first few headers are read, not the data."""
    if "://" not in path and not os.path.isfile(path):
        raise ShardError(path, "does not exist", "Check the path, or the brace pattern's range.")
    try:
        with _open(path) as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
            first_key, exts = None, set()
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = split_key(member.name)
                if first_key is None:
                    first_key = key
                if key != first_key:
                    break
                exts.add(ext)
    except tarfile.TarError as err:
        raise ShardError(path, f"is not a tar file ({err})", "Give webdataset .tar shards.") from err
    if first_key is None:
        raise ShardError(path, "is empty (no files)", "Remove it from the list, or write it again.")
    if not exts & set(IMAGE_EXTENSIONS):
        raise ShardError(
            path,
            f"is not a webdataset of images (its first sample {first_key!r} has files "
            f"{sorted('.' + e for e in exts)}, none of {['.' + e for e in IMAGE_EXTENSIONS]})",
            "Give tars written by img2dataset / webdataset: `<key>.jpg` beside `<key>.cls` or `<key>.json`.",
        )


def tar_sample_id(path: str, key: str) -> int:
    """A stable 63-bit id of the sample `key` of the shard `path` (the shard's file name and the key hashed): what
    identifies a sample across reads (teacher-output cache, bad-sample counts) when no row index exists."""
    digest = hashlib.blake2b(f"{os.path.basename(path)}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def tar_example(
    path: str,
    key: str,
    files: dict[str, bytes],
    image_column: str,
    label_column: str,
    label_json_field: str | None = None,
) -> dict:
    """One training example from a shard's sample: `{image_column: {"bytes", "path"}, label_column: label,
    "sample_id", "path": "<shard>#<key>"}`. The label is the `.cls` text, or the JSON field `label_json_field` of
    the sample's `.json`; a missing one is left None (the collator names the sample and applies `bad_samples`)."""
    name = f"{path}#{key}"
    image_ext = next((e for e in IMAGE_EXTENSIONS if e in files), None)
    image = {"bytes": files[image_ext], "path": f"{name}.{image_ext}"} if image_ext else None
    label = None
    if label_json_field:
        if "json" in files:
            try:
                label = json.loads(files["json"]).get(label_json_field)
            except (ValueError, AttributeError):
                label = None
    elif "cls" in files:
        label = files["cls"].decode("utf-8", "replace").strip()
    return {image_column: image, label_column: label, "sample_id": tar_sample_id(path, key), "path": name}


def wds_split_files(root: str, split: str) -> list[str] | None:
    """The shards of `split` in a CLIP_benchmark-style folder `root` (`root/<split>/*.tar`, in numeric order), or
    None when `root` is not laid out so. A `nshards.txt` beside them is checked against their count."""
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        return None
    tars = [n for n in os.listdir(folder) if n.endswith(".tar")]
    if not tars:
        return None
    tars.sort(key=lambda n: (len(n), n))  # 0.tar, 1.tar, ..., 10.tar
    nshards = os.path.join(folder, "nshards.txt")
    if os.path.isfile(nshards):
        with open(nshards) as f:
            expected = f.read().strip()
        if expected.isdigit() and int(expected) != len(tars):
            raise ShardError(
                folder,
                f"holds {len(tars)} shards but its nshards.txt says {expected}",
                "The copy is incomplete: download the missing shards.",
            )
    return [os.path.join(folder, n) for n in tars]


def is_wds_folder(root: str) -> bool:
    """Whether `root` is laid out like CLIP_benchmark's `wds_*` repositories (split folders of `.tar` shards)."""
    return os.path.isdir(root) and any(
        os.path.isdir(os.path.join(root, d)) and any(n.endswith(".tar") for n in os.listdir(os.path.join(root, d)))
        for d in os.listdir(root)
    )


def read_wds_texts(root: str) -> tuple[list[str] | None, list[str] | None]:
    """`classnames.txt` and `zeroshot_classification_templates.txt` of a local `wds_*` folder (None where absent)."""
    from .known_datasets import normalize_template

    out = []
    for fname in (WDS_CLASSNAMES, WDS_TEMPLATES):
        path = os.path.join(root, fname)
        if not os.path.isfile(path):
            out.append(None)
            continue
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
        out.append([normalize_template(t) for t in lines] if fname == WDS_TEMPLATES else lines)
    return out[0], out[1]
