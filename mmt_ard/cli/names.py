"""What a command line names: models, processors, datasets, files and devices, checked before anything is loaded.

Each check returns quietly or raises a `UsageError` that names the flag and the value and says what is wrong:

>>> check_model_name("--student", "nosuch")   # offline, not cached
UsageError: --student='nosuch': neither a local folder nor a Hub id in this machine's cache, and offline mode is on
(HF_HUB_OFFLINE=1). Give a local model folder, or download it once with network access (`hf download nosuch`).

A local path is only checked for existence (the loaders say what is missing inside it); a Hub id is looked up in the
local Hub cache, then (online only) on the Hub itself, so a typo fails in a second instead of after loading the
other models.
"""

from __future__ import annotations

import os
import re

from .errors import UsageError

# `owner/name` or a legacy single name, as the Hub spells them
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_FILE_SUFFIXES = (
    ".parquet",
    ".arrow",
    ".json",
    ".yaml",
    ".yml",
    ".txt",
    ".pt",
    ".pth",
    ".bin",
    ".safetensors",
    ".ckpt",
)


def offline_mode() -> bool:
    """Whether the Hub is off limits (`HF_HUB_OFFLINE` or `TRANSFORMERS_OFFLINE` set), as huggingface_hub decides."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def offline_state() -> str:
    """`offline mode is on (HF_HUB_OFFLINE=1)` or `offline mode is off (HF_HUB_OFFLINE unset)`, for messages."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    name = "HF_HUB_OFFLINE" if os.environ.get("HF_HUB_OFFLINE") else "TRANSFORMERS_OFFLINE"
    setting = f"{name}={value}" if value else "HF_HUB_OFFLINE unset"
    return f"offline mode is {'on' if offline_mode() else 'off'} ({setting})"


def looks_local(value: str) -> bool:
    """Whether `value` can only mean a local path (`./x`, `/x`, `~/x`, `a/b/c`, `x.parquet`)."""
    return (
        value.startswith((".", "/", "~", os.sep))
        or value.count("/") > 1
        or "\\" in value
        or value.lower().endswith(_FILE_SUFFIXES)
    )


def in_hub_cache(repo_id: str, repo_type: str = "model") -> bool:
    """Whether a snapshot of `repo_id` is in the local Hub cache (no network)."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id, repo_type=repo_type, local_files_only=True)
        return True
    except Exception:  # noqa: BLE001 - LocalEntryNotFoundError, a malformed id, an unreadable cache: not cached
        return False


def _hub_lookup(repo_id: str, repo_type: str) -> str | None:
    """None when the Hub has `repo_id` (or may: gated, private), else why not ("no such repository", "unreachable")."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    api = HfApi()
    info = api.dataset_info if repo_type == "dataset" else api.model_info
    try:
        info(repo_id, timeout=10)
    except GatedRepoError:
        return None  # it exists; loading asks for a token
    except RepositoryNotFoundError:
        return "the Hub has no such repository (or it is private: log in with `hf auth login`)"
    except Exception as err:  # noqa: BLE001 - network errors come from several libraries
        return f"the Hub cannot be reached ({type(err).__name__}: {err})"
    return None


def check_hub_name(what: str, value: str, kind: str = "model", repo_type: str = "model", repo_id: str | None = None):
    """A name that is not a local path must be a Hub id that is cached or (online) reachable.

    Args:
        what: the flag (`--student`).
        value: the name it got (shown in the message).
        kind: what it should be, for the message (`model`, `processor`, `dataset`).
        repo_type: `model` or `dataset` (where the Hub keeps it).
        repo_id: the Hub id `value` stands for (`hf-hub:org/name` -> `org/name`; default: `value`).
    """
    repo_id = repo_id or value
    fix_local = f"Give a local {kind} folder"
    if looks_local(repo_id) or not _HUB_ID.match(repo_id):
        raise UsageError(
            what, value, "no such file or folder, and not a Hub id (`owner/name`)", f"{fix_local} that exists."
        )
    if in_hub_cache(repo_id, repo_type):
        return
    if offline_mode():
        raise UsageError(
            what,
            value,
            f"neither a local folder nor a Hub id in this machine's cache, and {offline_state()}",
            f"{fix_local}, or download it once with network access (`hf download {repo_id}"
            f"{' --repo-type dataset' if repo_type == 'dataset' else ''}`) and rerun.",
        )
    why_not = _hub_lookup(repo_id, repo_type)
    if why_not:
        raise UsageError(
            what,
            value,
            f"neither a local folder nor a reachable Hub id: {why_not}; {offline_state()}",
            f"{fix_local}, or check the id and the network.",
        )


def check_model_name(what: str, value, kind: str = "model") -> None:
    """A model or processor name: an existing local path, an open_clip source (`hf-hub:org/name`, `ARCH@file`, a
    weights file), or a Hub id that is cached or reachable. None passes (the flag was not given)."""
    if value is None or not isinstance(value, str):
        return
    if not value.strip():
        raise UsageError(what, value, "is empty", f"Give a local {kind} folder or a Hub id.")
    if os.path.exists(value):
        return
    from ..convert import parse_source

    try:
        source = parse_source(value)
    except FileNotFoundError as err:  # `ARCH@missing-file`, `local-dir:missing`
        raise UsageError(what, value, f"no such file or folder ({err})", f"Give an existing {kind} path.") from err
    if source is not None and source.kind != "hub":
        return  # an existing local file or folder
    check_hub_name(what, value, kind, repo_id=source.location if source is not None else value)


def check_dataset_name(what: str, value, hub_id: str | None = None, known_names: list[str] | None = None) -> None:
    """A dataset: an existing local path, or a Hub dataset id (`hub_id`: what `value` stands for, e.g. a known short
    name's repository) that is cached or reachable. With `known_names`, a bare name must be one of them."""
    if value is None or not isinstance(value, str) or os.path.exists(value):
        return
    hub_id = hub_id or value
    if looks_local(hub_id) or not _HUB_ID.match(hub_id) or (known_names is not None and "/" not in hub_id):
        known = f", nor a known name ({', '.join(known_names)})" if known_names else ""
        raise UsageError(
            what,
            value,
            f"neither an existing file or folder{known}, nor a Hub id (`owner/name`)",
            "Give an existing data file or folder, or a Hub dataset id" + (", or a known name." if known else "."),
        )
    if _in_datasets_cache(hub_id):
        return
    check_hub_name(what, value, "dataset", repo_type="dataset", repo_id=hub_id)


def _in_datasets_cache(hub_id: str) -> bool:
    """Whether `datasets` has `hub_id` in its own cache (what it falls back to offline) or the Hub cache has it."""
    try:
        from datasets import config

        cache = str(config.HF_DATASETS_CACHE)
    except ImportError:  # pragma: no cover
        return False
    folder = os.path.join(cache, hub_id.replace("/", "___"))
    return os.path.isdir(folder) or in_hub_cache(hub_id, "dataset")


def check_files(what: str, paths) -> None:
    """Every path in `paths` (a string or a list) is an existing file."""
    if paths is None:
        return
    for path in [paths] if isinstance(paths, str) else list(paths):
        if os.path.isdir(path):
            raise UsageError(
                what, path, "is a folder, not a file", "Give files here (a folder goes to --dataset_name)."
            )
        if not os.path.isfile(path):
            raise UsageError(what, path, "no such file", "Check the path.")


def check_data_files(what: str, paths) -> None:
    """Every path is an existing file, and a `.parquet` / `.arrow` one can be opened as such (a footer or stream
    header read, not the data); brace patterns (`shards/{00000..00099}.tar`) are expanded, and each webdataset shard
    exists, is a tar, is not empty and holds an image in its first sample (`data.webdataset.check_shard`)."""
    from ..data.webdataset import ShardError, check_shard, expand_braces, is_brace_pattern

    expanded = []
    for path in [paths] if isinstance(paths, str) else list(paths or []):
        if not is_brace_pattern(path):
            expanded.append(path)
            continue
        try:
            files = expand_braces(path)
        except ValueError as err:
            raise UsageError(what, path, str(err).rstrip("."), "Write ranges as {00000..00099} or lists as {a,b}.")
        if not any(os.path.isfile(f) for f in files):
            raise UsageError(
                what, path, f"matches no file (it stands for {files[0]} ... {files[-1]})",
                "Check the folder and the range of the brace pattern.",
            )  # fmt: skip
        expanded += files
    for path in expanded:
        if path.lower().endswith(".tar"):
            try:
                check_shard(path)
            except ShardError as err:
                raise UsageError(what, path, err.problem, err.fix) from err
    paths = expanded
    check_files(what, paths)
    for path in paths:
        readable = _data_file_error(path)
        if readable:
            raise UsageError(
                what, path, f"cannot be read ({readable})", "Give a file written by pyarrow or `datasets`."
            )


def check_wds_folder(what: str, folder, splits) -> None:
    """A local CLIP_benchmark-style `wds_*` folder: the shards of each of `splits` it has are complete and valid."""
    from ..data.webdataset import ShardError, is_wds_folder, wds_split_files

    if not isinstance(folder, str) or not is_wds_folder(folder):
        return
    for split in splits:
        try:
            files = wds_split_files(folder, split)
        except ShardError as err:
            raise UsageError(what, folder, f"{err.path} {err.problem}", err.fix) from err
        if files:
            check_data_files(what, files)


def _data_file_error(path: str) -> str | None:
    """Why a `.parquet` / `.arrow` file cannot be opened, or None (other files are not looked at)."""
    import pyarrow as pa

    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".parquet":
            import pyarrow.parquet as pq

            pq.read_metadata(path)
        elif ext == ".arrow":
            with pa.memory_map(path) as source:
                try:
                    pa.ipc.open_stream(source).schema  # noqa: B018 - `datasets` writes the stream format
                except pa.ArrowInvalid:
                    source.seek(0)
                    pa.ipc.open_file(source).schema  # noqa: B018
    except Exception as err:  # noqa: BLE001 - any reason pyarrow cannot open it
        return f"not a {ext[1:]} file: {type(err).__name__}: {' '.join(str(err).split())}"
    return None


# ---- devices ----


def available_devices() -> list[str]:
    """The devices torch can use here: `cpu`, then `cuda:0`, ..., `mps`, `xpu:0`, ..."""
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        devices += [f"xpu:{i}" for i in range(xpu.device_count())]
    return devices


def check_device(what: str, value) -> None:
    """`value` names a device this machine has (`cuda` means `cuda:0`); None passes (the default device)."""
    if value is None:
        return
    import torch

    available = available_devices()
    fix = f"Devices available here: {', '.join(available)}."
    try:
        device = torch.device(str(value))
    except (RuntimeError, ValueError, TypeError) as err:
        raise UsageError(what, value, "is not a device name", fix) from err
    name = device.type if device.index is None else f"{device.type}:{device.index}"
    wanted = {name, f"{name}:0"} if device.index is None else {name}
    if device.type != "cpu" and not wanted & set(available):
        build = ""
        if device.type == "cuda" and not torch.backends.cuda.is_built():
            build = " (this torch is built without CUDA)"
        raise UsageError(what, value, f"is not available on this machine{build}", fix)
