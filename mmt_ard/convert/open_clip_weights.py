"""open_clip / OpenAI-CLIP weights: read them safely, find the state dict, rename its tensors to `CLIPModel` keys.

Files are read with safetensors or `torch.load(weights_only=True)` only: nothing in a checkpoint runs. The key layout
is OpenAI CLIP's, which open_clip's `CLIP` class keeps (open_clip's `CustomTextCLIP` nests the text tower under
`text.`, and vision-only files drop the `visual.` prefix; both are brought back to it first).
"""

from __future__ import annotations

import pickle
import zipfile

import torch

# checkpoint dicts nest the model under one of these (TeCoA's code keeps its prompter under `state_dict` and the
# image tower under `vision_encoder_state_dict`, hence "the first one that holds CLIP tensors")
NESTING_KEYS = ("state_dict", "model_state_dict", "model", "module", "vision_encoder_state_dict")
_PREFIXES = ("module.", "_orig_mod.", "model.", "clip.")
# scalars OpenAI's archives and open_clip's buffers store beside the weights; they carry no weights
_IGNORED = {"attn_mask", "text.attn_mask", "input_resolution", "context_length", "vocab_size", "position_ids"}
_TEXT_NAMES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


def read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """The CLIP state dict in a `.safetensors`, `.bin`, `.pt`, `.pth` or `.pth.tar` file (on the CPU).

    Raises:
        ValueError: for TorchScript archives (they can only be read by running their code), pickles that hold
            more than tensors and containers, and files without CLIP tensors.
    """
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return extract_state_dict(load_file(path, device="cpu"), path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith(("constants.pkl", ".py")) or "/code/" in name for name in archive.namelist()):
                raise ValueError(
                    f"{path} is a TorchScript archive (like OpenAI's original `ViT-B-32.pt`): reading it means running "
                    "its code, which mmt_ard does not do. Use the transformers copy of OpenAI's weights "
                    "(`openai/clip-vit-base-patch32`, `openai/clip-vit-large-patch14`, ...), or, trusting the file, "
                    "save `torch.jit.load(path, map_location='cpu').state_dict()` with `torch.save` and pass that."
                )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds Python objects besides tensors (it is read with `torch.load(weights_only=True)` only, so "
            f"nothing in it runs). Re-save just the state dict: `torch.save(ckpt['state_dict'], 'clip.pt')`. ({err})"
        ) from err
    return extract_state_dict(obj, path)


def _looks_like_clip(obj) -> bool:
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
        return False
    tails = ("conv1.weight", "class_embedding", "token_embedding.weight", "positional_embedding")
    return any(k.endswith(tails) for k in obj) and any(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(obj, path: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The CLIP tensors of a loaded checkpoint: the dict itself, or the first of `NESTING_KEYS` that holds them."""
    if _looks_like_clip(obj):
        return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if isinstance(obj, dict):
        for key in NESTING_KEYS:
            if key in obj and _looks_like_clip(obj[key]):
                return {k: v for k, v in obj[key].items() if isinstance(v, torch.Tensor)}
    shown = sorted(obj)[:12] if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(
        f"{path}: no CLIP state dict found (top-level keys: {shown}). Expected OpenAI/open_clip names such as "
        f"`visual.conv1.weight`, directly or nested under one of {list(NESTING_KEYS)}."
    )


def _strip_common_prefix(state_dict: dict) -> dict:
    for _ in range(4):
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix) :]: v for k, v in state_dict.items()}
                break
        else:
            break
    return state_dict


def _refuse(path: str, what: str, key: str) -> ValueError:
    return ValueError(
        f"{path}: {what} (key `{key}`) is not supported: only plain ViT CLIPs (OpenAI CLIP, open_clip's ViT-B/32, "
        "ViT-B/16, ViT-L/14, ViT-L/14-336 families) convert exactly to a transformers CLIPModel."
    )


def normalise_keys(state_dict: dict[str, torch.Tensor], path: str = "checkpoint") -> dict[str, torch.Tensor]:
    """OpenAI-CLIP key names: `visual.*` for the image tower, `token_embedding`/`transformer`/... for the text tower.

    Strips `module.`/`_orig_mod.`/`model.` prefixes, un-nests open_clip's `text.` tower, prefixes a vision-only
    state dict with `visual.`, drops non-weight buffers, and refuses layouts `CLIPModel` cannot compute.
    """
    state_dict = _strip_common_prefix(dict(state_dict))
    refused = {
        "visual.trunk.": "a timm image tower",
        "visual.layer1.": "a ResNet image tower",
        "visual.attnpool.": "a ResNet image tower",
        "visual.attn_pool": "attentional pooling",
        "text.transformer.embeddings.": "a Hugging Face text tower",
        "text.transformer.encoder.": "a Hugging Face text tower",
        "text.cls_emb": "a CLS-token text tower",
        "logit_bias": "a SigLIP-style logit bias",
        "text_decoder.": "a CoCa captioning model",
        "layer1.": "a ResNet image tower",
        "trunk.": "a timm image tower",
    }
    for key in state_dict:
        for prefix, what in refused.items():
            if key.startswith(prefix):
                raise _refuse(path, what, key)
        if ".ls_1." in key or ".ls_2." in key:
            raise _refuse(path, "layer scale", key)
    if not any(k.startswith("visual.") for k in state_dict) and "conv1.weight" in state_dict:
        state_dict = {f"visual.{k}": v for k, v in state_dict.items()}  # a vision-only file: `model.visual`'s keys
    out = {}
    for key, value in state_dict.items():
        if key.startswith("text.") and key[5:].startswith(_TEXT_NAMES + ("attn_mask",)):
            key = key[5:]  # open_clip's CustomTextCLIP keeps the same text tower under `text.`
        if key in _IGNORED or key.endswith(".position_ids"):
            continue
        out[key] = value
    if "visual.conv1.weight" not in out:
        raise ValueError(f"{path}: no ViT image tower found (no `visual.conv1.weight`; keys start {sorted(out)[:6]}).")
    return out


def has_text_tower(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether a normalised state dict carries the text tower (vision-only files do not)."""
    return "token_embedding.weight" in state_dict


def _split_qkv(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # nn.MultiheadAttention stacks q, k, v along dim 0: (3*width, width) weights, (3*width,) biases
    q, k, v = tensor.chunk(3, dim=0)
    return q.contiguous(), k.contiguous(), v.contiguous()


def _blocks(state_dict, src: str, dst: str, used: set, out: dict) -> None:
    """Residual attention blocks `src.N.*` (OpenAI names) -> `dst.N.*` (`CLIPEncoderLayer` names)."""
    n = 0
    while f"{src}.{n}.ln_1.weight" in state_dict:
        s, d = f"{src}.{n}", f"{dst}.{n}"
        for kind in ("weight", "bias"):
            q, k, v = _split_qkv(state_dict[f"{s}.attn.in_proj_{kind}"])
            out[f"{d}.self_attn.q_proj.{kind}"], out[f"{d}.self_attn.k_proj.{kind}"] = q, k
            out[f"{d}.self_attn.v_proj.{kind}"] = v
            used.add(f"{s}.attn.in_proj_{kind}")
            for a, b in (
                ("attn.out_proj", "self_attn.out_proj"),
                ("ln_1", "layer_norm1"),
                ("ln_2", "layer_norm2"),
                ("mlp.c_fc", "mlp.fc1"),
                ("mlp.c_proj", "mlp.fc2"),
            ):
                out[f"{d}.{b}.{kind}"] = state_dict[f"{s}.{a}.{kind}"]
                used.add(f"{s}.{a}.{kind}")
        n += 1


def _copy(state_dict, pairs, used: set, out: dict) -> None:
    for src, dst in pairs:
        out[dst] = state_dict[src]
        used.add(src)


def to_transformers(state_dict: dict[str, torch.Tensor], path: str = "checkpoint") -> dict[str, torch.Tensor]:
    """`CLIPModel` state dict from a normalised OpenAI/open_clip one (only the vision side for vision-only files).

    Attention `in_proj` is split into q/k/v; `visual.proj` and `text_projection` (`x @ P`, `(width, embed)`) become
    the transposed `Linear` weights; `logit_scale` (a log, as in transformers) is copied as a scalar.

    Raises:
        ValueError: naming the tensors left over (a feature `CLIPModel` has no place for) or missing.
    """
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    try:
        vis = "vision_model"
        _copy(
            state_dict,
            [
                ("visual.conv1.weight", f"{vis}.embeddings.patch_embedding.weight"),
                ("visual.class_embedding", f"{vis}.embeddings.class_embedding"),
                ("visual.positional_embedding", f"{vis}.embeddings.position_embedding.weight"),
                ("visual.ln_pre.weight", f"{vis}.pre_layrnorm.weight"),
                ("visual.ln_pre.bias", f"{vis}.pre_layrnorm.bias"),
                ("visual.ln_post.weight", f"{vis}.post_layernorm.weight"),
                ("visual.ln_post.bias", f"{vis}.post_layernorm.bias"),
            ],
            used,
            out,
        )
        _blocks(state_dict, "visual.transformer.resblocks", f"{vis}.encoder.layers", used, out)
        out["visual_projection.weight"] = state_dict["visual.proj"].t().contiguous()  # (embed, width)
        used.add("visual.proj")
        if has_text_tower(state_dict):
            txt = "text_model"
            _copy(
                state_dict,
                [
                    ("token_embedding.weight", f"{txt}.embeddings.token_embedding.weight"),
                    ("positional_embedding", f"{txt}.embeddings.position_embedding.weight"),
                    ("ln_final.weight", f"{txt}.final_layer_norm.weight"),
                    ("ln_final.bias", f"{txt}.final_layer_norm.bias"),
                ],
                used,
                out,
            )
            _blocks(state_dict, "transformer.resblocks", f"{txt}.encoder.layers", used, out)
            if "text_projection.weight" in state_dict:  # an nn.Linear already (embed, width)
                out["text_projection.weight"] = state_dict["text_projection.weight"]
                used.add("text_projection.weight")
            else:
                out["text_projection.weight"] = state_dict["text_projection"].t().contiguous()
                used.add("text_projection")
            out["logit_scale"] = state_dict["logit_scale"].reshape(())
            used.add("logit_scale")
    except KeyError as err:
        raise ValueError(
            f"{path}: tensor {err} is missing: not a complete OpenAI/open_clip ViT CLIP state dict."
        ) from err
    left = sorted(set(state_dict) - used)
    if left:
        raise ValueError(
            f"{path}: {len(left)} tensors have no place in a transformers CLIPModel: {left[:8]}. The checkpoint uses "
            "a feature this converter does not support; load it with open_clip itself."
        )
    return out
