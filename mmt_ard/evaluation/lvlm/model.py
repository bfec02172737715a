"""An LVLM seen from the attack: pixels in [0, 1] in, the language model's loss of a text (or generated text) out.

`LVLMAdapter` owns the pixel pipeline (the processor resizes and crops once, without normalising; the mean/std
normalisation happens inside `loss` and `generate`, differentiably, so budgets are in [0, 1] pixel units), the
prompts (the processor's chat template), the per-sample language-model cross-entropy of a reference text after the
prompt, and greedy generation. Weights may be bf16; the pixels, the normalisation and the loss stay fp32.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

EVAL_ARCHITECTURES = ("LlavaForConditionalGeneration",)
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _config_of(spec: str) -> dict:
    if os.path.isdir(spec):
        path = os.path.join(spec, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--models {spec!r} has no config.json: give an LVLM folder or a Hub id.")
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(spec).to_dict()
    except Exception as err:  # offline or unknown repository
        raise OSError(f"--models {spec!r}: not a local folder and not loadable from the Hub ({err}).") from err


def load_lvlm(spec: str, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu"):
    """`(model, processor)` of an LVLM the evaluation supports, in eval mode, weights frozen, on `device`."""
    config = _config_of(spec)
    archs = config.get("architectures") or []
    arch = next((a for a in archs if a in EVAL_ARCHITECTURES), None)
    if arch is None:
        raise ValueError(
            f"--models {spec!r} is a {archs[0] if archs else config.get('model_type')}: mmt-ard-eval-lvlm evaluates "
            f"{', '.join(EVAL_ARCHITECTURES)} (one image crop per image: LLaVA-1.5 and other LLaVAs, CLIP or SigLIP "
            "tower). Any-resolution LVLMs (LLaVA-NeXT, LLaVA-OneVision) and PaliGemma are not supported by the "
            "evaluation yet (mmt-ard-export supports them)."
        )
    import transformers

    model = getattr(transformers, arch).from_pretrained(spec, dtype=dtype)
    processor = transformers.AutoProcessor.from_pretrained(spec)
    return model.to(device).eval().requires_grad_(False), processor


def _pair(size) -> tuple[int, int] | None:
    if size is None:
        return None
    get = size.get if isinstance(size, dict) else lambda k, d=None: getattr(size, k, d)
    h, w = get("height"), get("width")
    if h and w:
        return int(h), int(w)
    edge = get("shortest_edge")
    return (int(edge), int(edge)) if edge else None


class LVLMAdapter:
    """Loss and generation of a LLaVA-style LVLM on pixels in [0, 1].

    Args:
        model: a `LlavaForConditionalGeneration` (any dtype; its parameters are frozen here).
        processor: its processor (image processor, tokenizer, chat template).
        gradient_checkpointing: recompute the decoder layers' activations in the backward pass (saves memory
            on large LVLMs; the numbers do not change).
    """

    def __init__(self, model: nn.Module, processor, gradient_checkpointing: bool = False):
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        mean = getattr(self.image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
        std = getattr(self.image_processor, "image_std", None) or (0.5, 0.5, 0.5)
        self.mean = torch.tensor([float(m) for m in mean]).view(1, 3, 1, 1)
        self.std = torch.tensor([float(s) for s in std]).view(1, 3, 1, 1)
        crop = _pair(getattr(self.image_processor, "crop_size", None))
        do_crop = getattr(self.image_processor, "do_center_crop", False)
        self.image_size = (crop if do_crop and crop else None) or _pair(getattr(self.image_processor, "size", None))
        if self.image_size is None:
            side = int(model.config.vision_config.image_size)
            self.image_size = (side, side)
        self.gradient_checkpointing = gradient_checkpointing
        if gradient_checkpointing:
            kwargs = {"use_reentrant": False}
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self._prompt_ids: dict[str, list[int]] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ---- pixels ----
    def pixels(self, image_paths: list[str]) -> torch.Tensor:
        """Images resized and cropped by the processor, not normalised: `(B, 3, H, W)` fp32 in [0, 1]."""
        from PIL import Image

        images = []
        for path in image_paths:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        out = self.image_processor(images, do_normalize=False, do_rescale=True, return_tensors="pt")["pixel_values"]
        return out.float().clamp(0.0, 1.0)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, 3, H, W)` in [0, 1] fp32 -> normalised, in the model's dtype (differentiable)."""
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x.to(self.dtype)

    # ---- text ----
    def prompt(self, instruction: str) -> str:
        """The chat prompt for one image and an instruction (the processor's chat template, else LLaVA-1.5's)."""
        if getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
            return self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        image_token = getattr(self.processor, "image_token", "<image>")
        return f"USER: {image_token}\n{instruction} ASSISTANT:"

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of a prompt with its image placeholder expanded to the LVLM's image tokens (cached)."""
        if prompt not in self._prompt_ids:
            from PIL import Image

            dummy = Image.new("RGB", (self.image_size[1], self.image_size[0]))
            ids = self.processor(text=[prompt], images=[dummy], return_tensors="pt")["input_ids"][0]
            self._prompt_ids[prompt] = ids.tolist()
        return self._prompt_ids[prompt]

    def target_ids(self, text: str) -> list[int]:
        """Token ids of a reference / target text as the assistant's reply, ending with the end-of-sequence token."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        eos = self.tokenizer.eos_token_id
        return list(ids) + ([eos] if eos is not None else [])

    def _left_pad(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, s in enumerate(sequences):
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
        return ids.to(self.device), mask.to(self.device)

    @contextmanager
    def _checkpointing(self):
        """transformers only checkpoints layers in training mode: switch those layers (not their dropouts) on."""
        from transformers.modeling_layers import GradientCheckpointingLayer

        layers = [m for m in self.model.modules() if isinstance(m, GradientCheckpointingLayer)]
        flags = [m.training for m in layers]
        if self.gradient_checkpointing and torch.is_grad_enabled():
            for m in layers:
                m.training = True
        try:
            yield
        finally:
            for m, flag in zip(layers, flags):
                m.training = flag

    def loss(self, x: torch.Tensor, prompts: list[str], targets: list[str]) -> torch.Tensor:
        """Per-sample mean cross-entropy of `targets[i]` after `prompts[i]` on image `x[i]`: `(B,)` fp32.

        Args:
            x: `(B, 3, H, W)` pixels in [0, 1] (fp32; gradients flow back to it).
            prompts: chat prompts (see `prompt`).
            targets: the texts whose likelihood is measured (reference captions, answers, a target string).
        """
        tails = [self.target_ids(t) for t in targets]
        sequences = [self.prompt_ids(p) + t for p, t in zip(prompts, tails)]
        ids, mask = self._left_pad(sequences)  # (B, L): every target ends at the right edge
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        t_max = max(len(t) for t in tails)
        with self._checkpointing():
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids,
                pixel_values=self.normalize(x),
                use_cache=False,
                logits_to_keep=t_max + 1,
            )
        logits = out.logits[:, :-1].float()  # (B, T, V): position j predicts the j-th of the last T tokens
        labels = ids[:, -t_max:]  # (B, T)
        lengths = torch.tensor([len(t) for t in tails], device=ids.device)
        valid = torch.arange(t_max, device=ids.device)[None, :] >= (t_max - lengths)[:, None]  # (B, T)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
        ce = ce.view(labels.shape) * valid
        return ce.sum(1) / lengths  # (B,)

    @torch.no_grad()
    def generate(self, x: torch.Tensor, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy replies to `prompts` on images `x` (`(B, 3, H, W)` in [0, 1])."""
        ids, mask = self._left_pad([self.prompt_ids(p) for p in prompts])
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=self.normalize(x.to(self.device)),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
        )
        return [t.strip() for t in self.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)]
