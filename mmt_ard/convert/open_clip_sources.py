"""Where an open_clip / OpenAI-CLIP checkpoint lives, and fetching its files (the Hub through `hf_hub_download`).

Forms of `spec`:

* `hf-hub:org/name`: a Hub repository with `open_clip_config.json` and `open_clip_model.safetensors` or
  `open_clip_pytorch_model.bin` (how open_clip publishes models; `chs20/fare2-clip` is one);
* a local folder with the same files (`local-dir:` in front is accepted, as open_clip spells it);
* a local weights file (`.pt`, `.pth`, `.pth.tar`, `.bin`, `.safetensors`); an `open_clip_config.json` beside it is
  used;
* `ARCH@source` with an open_clip architecture name (`ViT-B-32`, `ViT-B-16`, `ViT-L-14`, `ViT-L-14-336`, each also
  with `-quickgelu`) in front names the architecture of a file without config.

A plain Hub id is recognised only by `mmt_ard.load_clip`, after transformers finds no `config.json` there.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

from .open_clip_arch import known_model_cfg

logger = logging.getLogger(__name__)

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
CONFIG_NAME = "open_clip_config.json"
WEIGHT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)
# what a repository written by open_clip's `save_for_hf` holds of a transformers tokenizer, when it holds one
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json", "merges.txt", "special_tokens_map.json")


@dataclass(frozen=True)
class OpenCLIPSource:
    """Where an open_clip checkpoint lives.

    Args:
        spec: the string as given.
        kind: `hub`, `dir` or `file`.
        location: the repository id, folder or file.
        arch_name: an open_clip architecture name given as `ARCH@...`, else `None`.
    """

    spec: str
    kind: str
    location: str
    arch_name: str | None = None


def parse_source(spec: str) -> OpenCLIPSource | None:
    """How `spec` names an open_clip / OpenAI-CLIP checkpoint, or `None` when it does not (a transformers model).

    Only the string and the local file system are consulted (no network): a plain Hub id is `None` here.
    """
    if not isinstance(spec, str):
        return None
    arch_name, rest = None, spec
    head, sep, tail = spec.partition("@")
    if sep and known_model_cfg(head) is not None:
        arch_name, rest = head, tail
    if rest.startswith(HF_HUB_PREFIX):
        return OpenCLIPSource(spec, "hub", rest[len(HF_HUB_PREFIX) :], arch_name)
    if rest.startswith(LOCAL_DIR_PREFIX):
        rest = rest[len(LOCAL_DIR_PREFIX) :]
        if not os.path.isdir(rest):
            raise FileNotFoundError(f"`{spec}`: no folder {rest!r}.")
        return OpenCLIPSource(spec, "dir", rest, arch_name)
    if os.path.isfile(rest):
        return OpenCLIPSource(spec, "file", rest, arch_name)
    if os.path.isdir(rest):
        has_open_clip = os.path.isfile(os.path.join(rest, CONFIG_NAME))
        has_transformers = os.path.isfile(os.path.join(rest, "config.json"))
        if has_open_clip and not has_transformers:
            return OpenCLIPSource(spec, "dir", rest, arch_name)
    if arch_name is not None:
        raise FileNotFoundError(
            f"`{spec}`: {rest!r} is neither a local file or folder nor `hf-hub:org/name`; after `{arch_name}@` give "
            "the checkpoint's path."
        )
    return None


def is_open_clip_source(spec) -> bool:
    """Whether `load_clip` hands `spec` to the open_clip converter (see `parse_source`)."""
    return parse_source(spec) is not None


def describe_source(spec: str) -> str:
    """`open_clip checkpoint `X`, converted` for strings in open_clip's forms, else the string itself.

    Looks at the string only (the model card is a pure function of its inputs): `hf-hub:`, `local-dir:`,
    `ARCH@...` and weights files are recognised; a bare local open_clip folder is not.
    """
    if not isinstance(spec, str):
        return spec
    head, sep, _ = spec.partition("@")
    by_name = spec.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX)) or (sep and known_model_cfg(head) is not None)
    by_suffix = spec.endswith((".pt", ".pth", ".pth.tar", ".bin", ".safetensors", ".ckpt"))
    return f"open_clip checkpoint `{spec}`, converted" if by_name or by_suffix else spec


def hub_repo_has_open_clip_config(repo_id: str) -> bool:
    """Whether a Hub repository holds `open_clip_config.json` (one download; `False` when unreachable)."""
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(repo_id, CONFIG_NAME)
    except Exception:  # noqa: BLE001 - any failure (offline, missing repo or file, bad id) means "no"
        return False
    return True


# ---- files ----
def _read_config(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if "model_cfg" not in config:  # a bare model_cfg, as open_clip also accepts
        config = {"model_cfg": config}
    return config


def _weights_in_folder(folder: str) -> str:
    for name in WEIGHT_NAMES:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    found = sorted(f for f in os.listdir(folder) if f.endswith((".safetensors", ".bin", ".pt", ".pth")))
    if len(found) == 1:
        return os.path.join(folder, found[0])
    raise FileNotFoundError(
        f"{folder} holds {found or 'no weights files'}: expected one of {list(WEIGHT_NAMES)} beside {CONFIG_NAME}."
    )


def fetch_files(source: OpenCLIPSource) -> tuple[str, dict | None, str | None]:
    """`(weights file, open_clip config or None, folder that may hold tokenizer files)` of a source.

    Hub repositories are downloaded with `huggingface_hub.hf_hub_download` (cached; offline mode uses the cache).
    """
    if source.kind == "hub":
        from huggingface_hub import hf_hub_download

        try:
            config_path = hf_hub_download(source.location, CONFIG_NAME)
        except Exception as err:
            if source.arch_name is None:
                raise OSError(
                    f"`{source.spec}`: could not fetch {CONFIG_NAME} from the Hub repository `{source.location}` "
                    f"(offline, private or misspelt?). ({err})"
                ) from err
            config_path = None
        weights, errors = None, []
        for name in WEIGHT_NAMES:
            try:
                weights = hf_hub_download(source.location, name)
                break
            except Exception as err:  # noqa: BLE001 - try the next file name
                errors.append(f"{name}: {type(err).__name__}")
        if weights is None:
            raise OSError(f"`{source.spec}`: none of {list(WEIGHT_NAMES)} could be fetched ({'; '.join(errors)}).")
        config = _read_config(config_path) if config_path else None
        for name in TOKENIZER_FILES:  # into the same snapshot folder as the weights
            try:
                hf_hub_download(source.location, name)
            except Exception as err:  # noqa: BLE001 - most open_clip repositories have no tokenizer files
                logger.debug("%s: no %s (%s)", source.spec, name, type(err).__name__)
        return weights, config, os.path.dirname(weights)
    if source.kind == "dir":
        config_path = os.path.join(source.location, CONFIG_NAME)
        config = _read_config(config_path) if os.path.isfile(config_path) else None
        return _weights_in_folder(source.location), config, source.location
    folder = os.path.dirname(os.path.abspath(source.location))
    sidecar = os.path.join(folder, CONFIG_NAME)
    return source.location, (_read_config(sidecar) if os.path.isfile(sidecar) else None), folder
