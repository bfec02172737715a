"""An LVLM seen from the attack: pixels in [0, 1] in, the language model's loss of a text (or generated text) out.

`LVLMAdapter` owns the pixel pipeline (the processor resizes and crops once, without normalising; the mean/std
normalisation happens inside `loss` and `generate`, differentiably, so budgets are in [0, 1] pixel units), the
prompts (the processor's chat template), the per-sample language-model cross-entropy of a reference text after the
prompt, and greedy generation. Weights may be bf16; the pixels, the normalisation and the loss stay fp32.

`LVLMAdapter` serves single-crop LLaVAs, batched. `PipelineAdapter` serves every class of the registry
(`mmt_ard.lvlm.LVLM_CLASSES`): the attack space is the image at a stated size, and the class's own image pipeline
(tiling, global image, padding, normalisation; `mmt_ard.lvlm.pipelines`) runs on it differentiably, one sample at a
time. `make_adapter` picks one; `load_lvlm` loads any registered class.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...lvlm import LVLM_CLASSES, LVLMClass, image_pipeline, lvlm_class, pil_resize, supported_classes
from ...lvlm.resample import BICUBIC

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


def check_lvlm(spec: str) -> LVLMClass:
    """The registry entry of an LVLM folder or Hub id (reads only its config); a one-line `ValueError` naming its
    class and listing the supported ones otherwise."""
    return lvlm_class(_config_of(spec), spec, flag="--models")


def check_pipeline(spec: str, entry: LVLMClass) -> None:
    """Refuse, before anything is evaluated, an image processor whose options the differentiable pipeline does not
    reproduce (Gemma 3's pan-and-scan, `do_rescale=False`, a resampling filter other than Pillow's bilinear, bicubic
    or lanczos); reads only the image processor."""
    from transformers import AutoImageProcessor

    from ...lvlm.resample import pil_weights

    image_processor = AutoImageProcessor.from_pretrained(spec)
    pipeline = image_pipeline(image_processor, entry.pipeline)
    pil_weights(2, 1, pipeline.resample)


def load_lvlm(spec: str, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu"):
    """`(model, processor)` of an LVLM the evaluation supports (`mmt_ard.lvlm.LVLM_CLASSES`), in eval mode, weights
    frozen, on `device`."""
    entry = check_lvlm(spec)
    import transformers

    model = getattr(transformers, entry.architecture).from_pretrained(spec, dtype=dtype)
    processor = load_processor(spec, entry.architecture)
    return model.to(device).eval().requires_grad_(False), processor


def image_only_processor_class(processor_class):
    """A subclass of an LVLM processor that accepts `video_processor=None`.

    LLaVA-OneVision's and SmolVLM's processors hold a video processor, which transformers 5.x builds only where
    torchvision is installed; images never go through it. This class lets such a processor be built (and used on
    images) without one. Its chat template is applied by `ProcessorMixin.apply_chat_template` when there is no video
    processor: SmolVLM's own `apply_chat_template` reads the video processor's frame count and rate, for videos
    only, and fails without one."""
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyProcessor(processor_class):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

        def apply_chat_template(self, conversation, *args, **kwargs):
            if getattr(self, "video_processor", None) is not None:
                return super().apply_chat_template(conversation, *args, **kwargs)
            conversations, _ = self._normalize_conversations(conversation)
            if any(
                isinstance(c, dict) and c.get("type") == "video"
                for conv in conversations
                for message in conv
                for c in (message.get("content") or [])
            ):
                raise ValueError(
                    f"{type(self).__name__} was built without a video processor (torchvision is not installed): "
                    "it takes images only."
                )
            return ProcessorMixin.apply_chat_template(self, conversation, *args, **kwargs)

    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = f"ImageOnly{processor_class.__name__}"
    return ImageOnlyProcessor


def load_processor(spec: str, architecture: str):
    """`AutoProcessor.from_pretrained(spec)`; where that fails on a machine without torchvision and the class's
    processor holds a video processor (which needs torchvision), the same processor class without it (images only;
    `image_only_processor_class`)."""
    import importlib.util
    import inspect

    import transformers

    name = architecture.replace("ForConditionalGeneration", "Processor")
    try:
        return transformers.AutoProcessor.from_pretrained(spec)
    except Exception:  # without torchvision, building the video processor fails (ImportError or worse)
        has_video = (
            hasattr(transformers, name)
            and "video_processor" in inspect.signature(getattr(transformers, name).__init__).parameters
        )
        if not has_video or importlib.util.find_spec("torchvision") is not None:
            raise
    cls = image_only_processor_class(getattr(transformers, name))
    kwargs = {}
    config_path = os.path.join(spec, "processor_config.json") if os.path.isdir(spec) else None
    if config_path and os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            accepted = inspect.signature(cls.__init__).parameters
            kwargs = {
                k: v for k, v in json.load(f).items() if k in accepted and k not in ("image_processor", "tokenizer")
            }
    tokenizer = transformers.AutoTokenizer.from_pretrained(spec)
    kwargs.setdefault("chat_template", getattr(tokenizer, "chat_template", None))
    image_processor = transformers.AutoImageProcessor.from_pretrained(spec)
    return cls(image_processor=image_processor, tokenizer=tokenizer, video_processor=None, **kwargs)


def make_adapter(model: nn.Module, processor, gradient_checkpointing: bool = False, image_size=None) -> LVLMAdapter:
    """The adapter for a loaded LVLM: `LVLMAdapter` (batched) for single-crop LLaVAs, `PipelineAdapter` (the class's
    own image pipeline, one sample at a time) for every other registered class."""
    arch = type(model).__name__
    if arch not in LVLM_CLASSES:
        raise ValueError(
            f"a {arch} is not an LVLM class the evaluation supports. Supported classes: {supported_classes()}."
        )
    if arch == "LlavaForConditionalGeneration" and image_size is None:
        return LVLMAdapter(model, processor, gradient_checkpointing=gradient_checkpointing)
    return PipelineAdapter(model, processor, gradient_checkpointing=gradient_checkpointing, image_size=image_size)


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

    def attack_space(self) -> dict:
        """What the attack perturbs, for results.json: pixels in [0, 1] at `image_size`, and what the tower sees."""
        h, w = self.image_size
        return {
            "image_size": [int(h), int(w)],
            "pipeline": "the processor's resize and centre crop once, then normalisation inside the model's input",
            "crops": 1,
            "crop_size": [int(h), int(w)],
        }

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


def _side(image_size) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


class PipelineAdapter(LVLMAdapter):
    """Loss and generation of any registered LVLM class on pixels in [0, 1], through its own image pipeline made
    differentiable (`mmt_ard.lvlm.pipelines`).

    The attack space is the image at `image_size` (every image of a dataset is brought to it once, before the
    attack: single-crop classes by their processor's own resize and crop, tiling classes by Pillow's bicubic resize
    of the 8-bit image); the pipeline then does what the processor does to that image (tiling, the global image,
    padding, normalisation) differentiably. Samples go through the model one at a time, so a batch's results are the
    samples' own.

    Args:
        model: a model of a class in `mmt_ard.lvlm.LVLM_CLASSES`.
        processor: its processor.
        gradient_checkpointing: recompute the activations of the language model's and the tower's layers in the
            backward pass.
        image_size: the attack space `(H, W)` (or one side); default: single-crop classes the processor's input
            size, tiling classes the tower's input size (the base image's side).
    """

    def __init__(self, model: nn.Module, processor, gradient_checkpointing: bool = False, image_size=None):
        super().__init__(model, processor, gradient_checkpointing=gradient_checkpointing)
        arch = type(model).__name__
        if arch not in LVLM_CLASSES:
            raise ValueError(f"a {arch} is not a supported LVLM class. Supported classes: {supported_classes()}.")
        self.entry = LVLM_CLASSES[arch]
        self.pipeline = image_pipeline(processor, self.entry.pipeline)
        if image_size is not None:
            self.image_size = _side(image_size)
        elif self.entry.pipeline != "single":
            side = int(model.config.vision_config.image_size)
            self.image_size = (side, side)
        self._text: dict[tuple, dict] = {}

    # ---- pixels ----
    def load_image(self, path: str) -> torch.Tensor:
        """One image file as `(3, h, w)` fp32 in [0, 1] (grayscale, CMYK, palette: converted to RGB, as the
        processors do); the error names the file."""
        from PIL import Image

        try:
            with Image.open(path) as im:
                rgb = im.convert("RGB")
        except (OSError, ValueError) as err:
            raise OSError(f"could not read the image {path!r} ({type(err).__name__}: {err}).") from err
        return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).float() / 255.0

    def to_attack_space(self, image: torch.Tensor) -> torch.Tensor:
        """`(3, h, w)` in [0, 1] -> `(3, H, W)` at `image_size`, on the 8-bit grid (exactly Pillow's result)."""
        if self.entry.pipeline == "single" and self.image_size == _pair_of_processor(self.image_processor):
            ip = self.pipeline.ip
            x = self.pipeline._resize(image, ip.size) if getattr(ip, "do_resize", True) else image
            if getattr(ip, "do_center_crop", False) and getattr(ip, "crop_size", None):
                x = self.pipeline._center_crop(x, ip.crop_size)
            if tuple(x.shape[-2:]) == self.image_size:
                return x.detach()
        return pil_resize(image, self.image_size, BICUBIC).detach()

    def pixels(self, image_paths: list[str]) -> torch.Tensor:
        """Images brought to the attack space: `(B, 3, H, W)` fp32 in [0, 1]."""
        return torch.stack([self.to_attack_space(self.load_image(p)) for p in image_paths])

    def pixels_from_arrays(self, arrays) -> torch.Tensor:
        """`(h, w, 3)` uint8 arrays brought to the attack space: `(B, 3, H, W)` fp32 in [0, 1]."""
        return torch.stack(
            [self.to_attack_space(torch.from_numpy(np.asarray(a)).permute(2, 0, 1).float() / 255.0) for a in arrays]
        )

    def image_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """`(3, H, W)` in [0, 1] -> the model's image keyword arguments (batch of one), differentiable; the pixel
        values in the model's dtype, the rest as the processor gives them."""
        out = self.pipeline(x)
        return {
            k: (v.to(self.device, self.dtype) if k == "pixel_values" else v.to(self.device)) for k, v in out.items()
        }

    # ---- text ----
    def prompt(self, instruction: str) -> str:
        if self.entry.prompt == "prefix":  # PaliGemma: `<image>` + the task prefix; the processor expands the image
            return f"{getattr(self.processor, 'image_token', '<image>')}{instruction}"  # tokens and adds bos
        return super().prompt(instruction)

    def text_inputs(self, prompt: str, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """The processor's text outputs (`input_ids`, `attention_mask`, `token_type_ids`, ...) for `prompt` with an
        image of `size`: the image tokens depend only on the image's size (cached)."""
        key = (prompt, tuple(size))
        if key not in self._text:
            from PIL import Image

            dummy = Image.new("RGB", (size[1], size[0]))
            enc = self.processor(text=[prompt], images=[dummy], return_tensors="pt")
            image_keys = set(self.pipeline(torch.zeros(3, *size)))
            self._text[key] = {
                k: v for k, v in enc.items() if k not in image_keys and k not in ("labels", "num_crops")
            }
        return self._text[key]

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.text_inputs(prompt, self.image_size)["input_ids"][0].tolist()

    def _one(self, x: torch.Tensor, prompt: str, tail: list[int] | None):
        """Model inputs of one sample: the prompt (plus `tail`, the reply's ids) and its image."""
        text = self.text_inputs(prompt, tuple(x.shape[-2:]))
        ids = text["input_ids"]
        extra = {k: v for k, v in text.items() if k not in ("input_ids", "attention_mask")}
        if tail:
            t = torch.tensor([tail], dtype=ids.dtype)
            ids = torch.cat([ids, t], dim=1)
            if "token_type_ids" in extra:
                reply = torch.full_like(t, self.entry.reply_token_type)
                extra["token_type_ids"] = torch.cat([extra["token_type_ids"], reply], dim=1)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **extra}
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs.update(self.image_inputs(x))
        return inputs

    def loss(self, x: torch.Tensor, prompts: list[str], targets: list[str]) -> torch.Tensor:
        """Per-sample mean cross-entropy of `targets[i]` after `prompts[i]` on image `x[i]`: `(B,)` fp32."""
        losses = []
        for i in range(x.shape[0]):
            tail = self.target_ids(targets[i])
            inputs = self._one(x[i], prompts[i], tail)
            with self._checkpointing():
                out = self.model(**inputs, use_cache=False, logits_to_keep=len(tail) + 1)
            logits = out.logits[0, :-1].float()  # (T, V): position j predicts the j-th of the last T tokens
            labels = inputs["input_ids"][0, -len(tail) :]
            losses.append(F.cross_entropy(logits, labels))
        return torch.stack(losses)

    @torch.no_grad()
    def generate_ids(self, x: torch.Tensor, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
        """Greedy reply token ids, one sample at a time (`(B, 3, H, W)` in [0, 1])."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        replies = []
        for i in range(x.shape[0]):
            inputs = self._one(x[i].to(self.device), prompts[i], None)
            out = self.model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad
            )
            replies.append(out[0, inputs["input_ids"].shape[1] :].tolist())
        return replies

    def generate(self, x: torch.Tensor, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy replies, one sample at a time (`(B, 3, H, W)` in [0, 1])."""
        ids = self.generate_ids(x, prompts, max_new_tokens)
        return [self.tokenizer.decode(r, skip_special_tokens=True).strip() for r in ids]

    def attack_space(self) -> dict:
        h, w = self.image_size
        layout = self.pipeline.layout(self.pipeline(torch.zeros(3, h, w)))
        space = {
            "image_size": [int(h), int(w)],
            "pipeline": f"{self.entry.pipeline} ({type(self.pipeline.ip).__name__}, {self.pipeline.backend} backend)",
            **layout,
        }
        note = self.pipeline.backend_note()
        if note:
            space["backend_note"] = note
        return space


def _pair_of_processor(image_processor) -> tuple[int, int] | None:
    crop = _pair(getattr(image_processor, "crop_size", None))
    do_crop = getattr(image_processor, "do_center_crop", False)
    return (crop if do_crop and crop else None) or _pair(getattr(image_processor, "size", None))
