"""Load an open_clip or OpenAI-CLIP checkpoint as a transformers `CLIPModel` + `CLIPProcessor`, without open_clip.

Sources (`spec`):

* `hf-hub:org/name`: a Hub repository with `open_clip_config.json` and `open_clip_model.safetensors` or
  `open_clip_pytorch_model.bin` (how open_clip publishes models; `chs20/fare2-clip` is one);
* a local folder with the same files (`local-dir:` in front is accepted, as open_clip spells it);
* a local weights file (`.pt`, `.pth`, `.pth.tar`, `.bin`, `.safetensors`): a full state dict, or a vision-only one
  (`model.visual`'s keys), possibly nested under `state_dict` / `model` / `vision_encoder_state_dict` and prefixed
  with `module.`; an `open_clip_config.json` beside it is used;
* `ARCH@source` with an open_clip architecture name (`ViT-B-32`, `ViT-B-16`, `ViT-L-14`, `ViT-L-14-336`, each also
  with `-quickgelu`) names the architecture of a file without config; otherwise it is read from the tensor shapes
  with QuickGELU (OpenAI CLIP's activation, kept by every fine-tune of OpenAI's weights).

What the checkpoint lacks comes from `reference`: the tokenizer (open_clip's default tokenizer is OpenAI's CLIP BPE,
the tokenizer of every `openai/clip-vit-*` repository, which is used when nothing else is given), and, for a
vision-only file, the text tower, text projection, logit scale and processor of the CLIP it was fine-tuned from.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

import torch

from .open_clip_arch import (
    OpenCLIPArch,
    arch_from_model_cfg,
    arch_from_state_dict,
    clip_config,
    known_model_cfg,
    vision_config_dict,
)
from .open_clip_weights import has_text_tower, normalise_keys, read_checkpoint, to_transformers

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
# open_clip's default tokenizer (SimpleTokenizer) is OpenAI's CLIP BPE: the tokenizer of every openai/clip-vit-* repo
OPENAI_TOKENIZER = "openai/clip-vit-base-patch32"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3, "random": 3}  # PIL codes; `random` is a training option


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
        return weights, config, os.path.dirname(weights)
    if source.kind == "dir":
        config_path = os.path.join(source.location, CONFIG_NAME)
        config = _read_config(config_path) if os.path.isfile(config_path) else None
        return _weights_in_folder(source.location), config, source.location
    folder = os.path.dirname(os.path.abspath(source.location))
    sidecar = os.path.join(folder, CONFIG_NAME)
    return source.location, (_read_config(sidecar) if os.path.isfile(sidecar) else None), folder


# ---- tokenizer and processor ----
def _tokenizer_of(obj):
    tokenizer = getattr(obj, "tokenizer", None)
    return tokenizer if tokenizer is not None else obj


def _has_tokenizer_files(folder: str | None) -> bool:
    names = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
    return bool(folder) and any(os.path.isfile(os.path.join(folder, n)) for n in names)


def resolve_tokenizer(arch: OpenCLIPArch, source: OpenCLIPSource, config: dict | None, folder, reference=None):
    """The checkpoint's tokenizer: from `reference`, files beside the weights, `hf_tokenizer_name`, or OpenAI's BPE.

    Its `model_max_length` is set to the text tower's context length (open_clip's `context_length`).
    """
    from transformers import AutoTokenizer

    text_cfg = (config or {}).get("model_cfg", {}).get("text_cfg", {}) or {}
    if text_cfg.get("tokenizer_kwargs") or text_cfg.get("tokenizer_mode"):
        logger.warning(
            "%s sets tokenizer options %s: the transformers tokenizer used here lower-cases and cleans text the "
            "OpenAI CLIP way and ignores them.",
            source.spec,
            {k: text_cfg.get(k) for k in ("tokenizer_kwargs", "tokenizer_mode") if text_cfg.get(k)},
        )
    if reference is not None and not isinstance(reference, str):
        tokenizer = _tokenizer_of(reference)
    else:
        where = reference
        if where is None and _has_tokenizer_files(folder):
            where = folder
        if where is None:
            where = text_cfg.get("hf_tokenizer_name")
        if where is None:
            if arch.vocab_size != 49408:
                raise ValueError(
                    f"`{source.spec}`: its text tower has {arch.vocab_size} tokens, not the 49408 of OpenAI's CLIP "
                    "tokenizer, and no tokenizer is named: pass the tokenizer's repository or folder as "
                    "`processor_name_or_path` (`Teacher(processor=...)`, `--*_processor`, `--processor`)."
                )
            where = OPENAI_TOKENIZER
        try:
            tokenizer = AutoTokenizer.from_pretrained(where)
        except OSError as err:
            raise OSError(
                f"`{source.spec}`: could not load its tokenizer from `{where}`. open_clip checkpoints use OpenAI's "
                f"CLIP tokenizer (the one of `{OPENAI_TOKENIZER}`, reachable from the Hub or its cache); offline, "
                "pass a local folder holding it as `processor_name_or_path` (`--*_processor`). ({err})"
            ) from err
    if arch.vocab_size is not None and len(tokenizer) > arch.vocab_size:
        raise ValueError(
            f"`{source.spec}`: the tokenizer has {len(tokenizer)} tokens but the text tower only {arch.vocab_size}: "
            "it is not this checkpoint's tokenizer."
        )
    if arch.context_length is not None:
        tokenizer.model_max_length = arch.context_length
    return tokenizer


def build_image_processor(arch: OpenCLIPArch, preprocess_cfg: dict | None):
    """A `CLIPImageProcessor` (PIL backend: no torchvision) with open_clip's eval preprocessing of the checkpoint.

    open_clip resizes the shortest edge and centre-crops (`resize_mode: shortest`, its default) or resizes both
    edges (`squash`); `longest` (letterbox padding) has no transformers equivalent and falls back to `shortest`.
    """
    try:
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor

    cfg = dict(preprocess_cfg or {})
    size = cfg.get("size", arch.image_size)
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    mode = cfg.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        logger.warning("resize_mode=%r has no transformers equivalent: the processor resizes the shortest edge.", mode)
        mode = "shortest"
    interpolation = cfg.get("interpolation", "bicubic")
    if interpolation not in _RESAMPLE:
        raise ValueError(f"preprocess_cfg `interpolation`={interpolation!r}: expected one of {sorted(_RESAMPLE)}.")
    kwargs = {
        "image_mean": [float(m) for m in cfg.get("mean", OPENAI_CLIP_MEAN)],
        "image_std": [float(s) for s in cfg.get("std", OPENAI_CLIP_STD)],
        "resample": _RESAMPLE[interpolation],
        "crop_size": {"height": size, "width": size},
    }
    if mode == "squash":
        return CLIPImageProcessor(size={"height": size, "width": size}, do_center_crop=False, **kwargs)
    return CLIPImageProcessor(size={"shortest_edge": size}, do_center_crop=True, **kwargs)


# ---- the model ----
def _empty_clip(config):
    """A `CLIPModel` without random initialisation (every parameter is overwritten and checked afterwards)."""
    from transformers import CLIPModel

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        return CLIPModel(config)
    with no_init_weights():
        return CLIPModel(config)


def _load_checked(model, weights: dict[str, torch.Tensor], where: str, arch_source: str) -> None:
    """Load `weights` into `model` after checking that every parameter is given once with the right shape."""
    expected = model.state_dict()
    buffers = {name for name, _ in model.named_buffers()}
    for key, tensor in weights.items():
        if key not in expected:
            raise ValueError(f"{where}: converted tensor `{key}` has no place in the CLIPModel (internal error).")
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"{where}: `{key}` has shape {tuple(tensor.shape)} in the checkpoint but the architecture read from "
                f"{arch_source} needs {tuple(expected[key].shape)}: the config (or `ARCH@`) and the weights disagree."
            )
    missing = sorted(set(expected) - set(weights) - buffers)
    if missing:
        raise ValueError(f"{where}: the checkpoint gives no tensor for {missing[:8]}.")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in weights.items()}, strict=False)


def _architecture(source: OpenCLIPSource, config: dict | None, state_dict: dict) -> OpenCLIPArch:
    if source.arch_name is not None:
        return arch_from_model_cfg(known_model_cfg(source.arch_name), source=f"`{source.arch_name}`")
    if config is not None:
        return arch_from_model_cfg(config["model_cfg"], source=f"{CONFIG_NAME} of `{source.spec}`")
    return arch_from_state_dict(state_dict, quick_gelu=True)


def _graft_vision(arch, source, config, state_dict, weights_path, reference):
    """A vision-only checkpoint on the text tower, projection, logit scale and processor of `reference`."""
    if reference is None:
        raise ValueError(
            f"`{source.spec}` holds only an image tower (`model.visual`'s weights, as RobustVLM's and TeCoA's files "
            "do): name the CLIP it was fine-tuned from as `processor_name_or_path` (`--*_processor`, "
            "`Teacher(processor=...)`), e.g. `openai/clip-vit-large-patch14` for a ViT-L/14; its text tower "
            "and processor complete the model."
        )
    if not isinstance(reference, str):
        raise TypeError(
            f"`{source.spec}` is vision-only: its reference must be the Hub id or path of a full CLIP (the one it was "
            f"fine-tuned from), not a {type(reference).__name__}."
        )
    from ..models import load_clip

    # the activation is the reference's too: a vision-only file does not store it, and an architecture name would
    # mislead (RobustVLM loads its ViT-L/14 files onto `ViT-L-14` + `pretrained='openai'`, which open_clip runs with
    # QuickGELU whatever the name says)
    base, processor = load_clip(reference)
    vision = base.config.vision_config
    want = vision_config_dict(arch)
    differ = {
        k: (getattr(vision, k), want[k])
        for k in ("hidden_size", "num_hidden_layers", "patch_size", "image_size", "intermediate_size")
        if getattr(vision, k) != want[k]
    }
    if base.config.projection_dim != arch.embed_dim:
        differ["projection_dim"] = (base.config.projection_dim, arch.embed_dim)
    if differ:
        raise ValueError(
            f"`{source.spec}`: its image tower does not fit the reference `{reference}` (reference, checkpoint): "
            f"{differ}. Name the CLIP this tower was fine-tuned from."
        )
    weights = {k: v for k, v in base.state_dict().items() if k not in dict(base.named_buffers())}
    weights.update(to_transformers(state_dict, weights_path))
    _load_checked(base, weights, weights_path, arch.source)
    if config is not None and config.get("preprocess_cfg"):
        from transformers import CLIPProcessor

        processor = CLIPProcessor(
            image_processor=build_image_processor(arch, config["preprocess_cfg"]), tokenizer=processor.tokenizer
        )
    return base, processor


def load_open_clip(spec: str, reference=None, dtype: torch.dtype | None = None):
    """Load an open_clip / OpenAI-CLIP checkpoint as a transformers `(CLIPModel, CLIPProcessor)`.

    Args:
        spec: `hf-hub:org/name`, a local folder or weights file, optionally `ARCH@` in front (see the module doc).
        reference: what the checkpoint lacks: a Hub id / folder whose tokenizer is used (default: OpenAI's CLIP
            tokenizer) or a processor / tokenizer object; for a vision-only file, the Hub id / path of the CLIP it
            was fine-tuned from (its text tower and processor complete the model).
        dtype: dtype of the returned model (default fp32).

    Returns:
        `(model, processor)`: a `CLIPModel` in eval mode whose `config._name_or_path` is `spec`, and a
        `CLIPProcessor` with the checkpoint's image size, mean/std, interpolation and text context length.
    """
    from transformers import CLIPProcessor

    source = parse_source(spec)
    if source is None:
        raise ValueError(
            f"`{spec}` is not an open_clip checkpoint: give `hf-hub:org/name`, a folder holding {CONFIG_NAME}, or a "
            "weights file (optionally `ViT-B-32@path`)."
        )
    weights_path, config, folder = fetch_files(source)
    state_dict = normalise_keys(read_checkpoint(weights_path), weights_path)
    arch = _architecture(source, config, state_dict)
    if has_text_tower(state_dict):
        model = _empty_clip(clip_config(arch, logit_scale=float(state_dict["logit_scale"].reshape(()))))
        _load_checked(model, to_transformers(state_dict, weights_path), weights_path, arch.source)
        tokenizer = resolve_tokenizer(arch, source, config, folder, reference)
        processor = CLIPProcessor(
            image_processor=build_image_processor(arch, (config or {}).get("preprocess_cfg")), tokenizer=tokenizer
        )
    else:
        model, processor = _graft_vision(arch, source, config, state_dict, weights_path, reference)
    model.config._name_or_path = spec
    if dtype is not None:
        model = model.to(dtype)
    model.eval()
    return model, processor
