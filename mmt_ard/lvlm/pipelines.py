"""LVLM image processors made differentiable: pixels in [0, 1] in, the model's image inputs out, equal to what the
processor returns for the same 8-bit image.

The attack perturbs the image the user gives, `(3, H, W)` in [0, 1]; the LVLM must see exactly what its processor
makes of that image. Each pipeline reproduces one family of transformers' PIL-backend image processors step by step
(the order, the sizes, the crops, the padding, the bookkeeping) with `pil_resize` for Pillow's resampling and plain
tensor slicing, padding and normalisation for the rest, so gradients flow back to the pixels:

* `single`: resize (shortest edge or height x width), optional centre crop, normalise. LLaVA (CLIPImageProcessor),
  PaliGemma (SiglipImageProcessor), Gemma 3 (Gemma3ImageProcessor without pan-and-scan).
* `anyres`: LLaVA-NeXT / LLaVA-OneVision. The best grid pinpoint (`select_best_resolution`), the aspect-preserving
  resize to it, the centred zero padding, the cut into crops, the base image resized to the crop size first;
  `image_sizes` (and OneVision's `batch_num_images`) as the processor gives them.
* `crop`: Aya Vision (GotOcr2ImageProcessor with `crop_to_patches`). The tiled canvas closest to the image's aspect
  ratio (`get_optimal_tiled_canvas`), the resize to it, the tiles row by row, the thumbnail last.
* `split`: Idefics3 / SmolVLM. The longest edge resized to `size`, then to multiples of `max_image_size`, the split
  into `max_image_size` crops row by row, the global image last, `pixel_attention_mask`.

transformers 5.x runs an image processor on its PIL backend where torchvision is not installed, on the torchvision
backend otherwise; their resampling differs. These pipelines reproduce the PIL backend (`image_processor.backend ==
"pil"`); `backend_note` says when the user's processor runs the other one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .resample import pil_resize


def _get(obj, key, default=None):
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _resample(image_processor) -> int:
    value = getattr(image_processor, "resample", None)
    return 2 if value is None else int(value)  # the backends' default is BILINEAR


class ImagePipeline:
    """One image processor, differentiable.

    Args:
        image_processor: the LVLM's image processor (`processor.image_processor`).
        kind: `single`, `anyres` or `split` (the registry entry's `pipeline`).

    Calling it on `(3, H, W)` pixels in [0, 1] returns the model's image keyword arguments for a batch of one
    (`pixel_values` and, per kind, `image_sizes`, `batch_num_images`, `pixel_attention_mask`), normalised, fp32.
    """

    KINDS = ("single", "anyres", "split", "crop")

    def __init__(self, image_processor, kind: str):
        if kind not in self.KINDS:
            raise ValueError(f"`kind`={kind!r}: one of {self.KINDS}.")
        self.ip = image_processor
        self.kind = kind
        self.resample = _resample(image_processor)
        name = type(image_processor).__name__
        if getattr(image_processor, "do_pan_and_scan", False):
            raise ValueError(
                f"{name} has `do_pan_and_scan=True`: its crops are not reproduced by the differentiable pipeline. "
                "Set `processor.image_processor.do_pan_and_scan = False` (Gemma 3's default)."
            )
        if getattr(image_processor, "do_rescale", True) is False:
            raise ValueError(
                f"{name} has `do_rescale=False`: the pipeline takes pixels in [0, 1] (the processor's rescale by "
                "1/255). Use the processor with `do_rescale=True`."
            )
        mean = getattr(image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
        std = getattr(image_processor, "image_std", None) or (0.5, 0.5, 0.5)
        if isinstance(mean, (int, float)):
            mean, std = [mean] * 3, [std] * 3
        self.mean = torch.tensor([float(m) for m in mean], dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor([float(s) for s in std], dtype=torch.float32).view(3, 1, 1)

    @property
    def backend(self) -> str:
        return str(getattr(self.ip, "backend", "pil"))

    def backend_note(self) -> str | None:
        """A line for logs and results when the user's processor does not run the PIL backend, else None."""
        if self.backend == "pil":
            return None
        return (
            f"{type(self.ip).__name__} runs the {self.backend} backend; the differentiable pipeline reproduces the "
            "PIL backend's resampling (Pillow), which differs from torchvision's by a few 8-bit levels where an "
            "image is resized (not measured here: the tests run without torchvision). Crop geometry, padding, "
            "normalisation and token counts are the same."
        )

    # ---- the processor's steps on (3, H, W) tensors ----
    def _resize(self, x: torch.Tensor, size) -> torch.Tensor:
        """PilBackend.resize: the output size from a size dict, then Pillow's resize."""
        h, w = x.shape[-2:]
        shortest, longest = _get(size, "shortest_edge"), _get(size, "longest_edge")
        if shortest and longest:
            from transformers.image_transforms import get_size_with_aspect_ratio

            new = get_size_with_aspect_ratio((h, w), shortest, longest)
        elif shortest:
            from transformers.image_transforms import get_resize_output_image_size

            new = get_resize_output_image_size(
                np.empty((3, h, w), dtype=np.uint8),
                size=shortest,
                default_to_square=False,
                input_data_format="channels_first",
            )
        elif _get(size, "height") and _get(size, "width"):
            new = (_get(size, "height"), _get(size, "width"))
        else:
            raise ValueError(f"image processor size {size!r}: the pipeline knows shortest_edge or height/width.")
        return pil_resize(x, tuple(new), self.resample)

    @staticmethod
    def _center_crop(x: torch.Tensor, crop) -> torch.Tensor:
        ch, cw = int(_get(crop, "height")), int(_get(crop, "width"))
        h, w = x.shape[-2:]
        top, left = (h - ch) // 2, (w - cw) // 2
        if top < 0 or left < 0:  # the processor pads with zeros first (np_center_crop)
            nh, nw = max(ch, h), max(cw, w)
            tp, lp = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
            x = F.pad(x, (lp, nw - w - lp, tp, nh - h - tp))
            top, left = top + tp, left + lp
        return x[..., top : top + ch, left : left + cw]

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if not getattr(self.ip, "do_normalize", True):
            return x
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        """The per-crop steps after the geometry: resize to `size`, centre crop, normalise."""
        if getattr(self.ip, "do_resize", True) and self.kind != "split":
            x = self._resize(x, self.ip.size)
        if getattr(self.ip, "do_center_crop", False) and getattr(self.ip, "crop_size", None):
            x = self._center_crop(x, self.ip.crop_size)
        return self._normalize(x)

    # ---- the three kinds ----
    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 3 or x.shape[0] != 3:
            raise ValueError(f"the pipeline takes one image (3, H, W) in [0, 1], got shape {tuple(x.shape)}.")
        x = x.float()
        if self.kind == "single":
            return {"pixel_values": self._finish(x)[None]}
        if self.kind == "anyres":
            return self._anyres(x)
        if self.kind == "crop":
            return self._crop(x)
        return self._split(x)

    def _anyres(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from transformers.image_processing_utils import select_best_resolution

        ip = self.ip
        h, w = x.shape[-2:]
        size = ip.size
        if _get(size, "height") and _get(size, "width"):
            base = (int(_get(size, "height")), int(_get(size, "width")))
        else:
            base = (int(_get(size, "shortest_edge")),) * 2
        crop = ip.crop_size if getattr(ip, "crop_size", None) and _get(ip.crop_size, "height") else None
        patch = int(_get(crop, "height")) if crop is not None else base[0]
        th, tw = select_best_resolution((h, w), ip.image_grid_pinpoints)
        # get_patch_output_size: the aspect-preserving size inside the pinpoint
        scale_w, scale_h = tw / w, th / h
        if scale_w < scale_h:
            nh, nw = min(math.ceil(h * scale_w), th), tw
        else:
            nh, nw = th, min(math.ceil(w * scale_h), tw)
        resized = pil_resize(x, (nh, nw), self.resample)
        pad_x, r_x = divmod(tw - nw, 2)
        pad_y, r_y = divmod(th - nh, 2)
        padded = F.pad(resized, (pad_x, pad_x + r_x, pad_y, pad_y + r_y))  # zeros, as np.pad
        crops = [
            padded[:, i : i + patch, j : j + patch] for i in range(0, th, patch) for j in range(0, tw, patch)
        ]  # divide_to_patches: row by row
        base_image = pil_resize(x, base, self.resample)
        pixel_values = torch.stack([self._finish(c) for c in [base_image, *crops]])[None]  # (1, n, 3, S, S)
        out = {"pixel_values": pixel_values, "image_sizes": torch.tensor([[h, w]], dtype=torch.long)}
        if "batch_num_images" in getattr(ip, "model_input_names", ()):
            out["batch_num_images"] = torch.tensor([1], dtype=torch.long)
        return out

    def _split(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ip = self.ip
        max_side = int(_get(ip.max_image_size, "longest_edge"))
        if getattr(ip, "do_resize", True):
            from transformers.models.idefics3.image_processing_pil_idefics3 import get_resize_output_image_size

            new = get_resize_output_image_size(
                np.empty((3, *x.shape[-2:]), dtype=np.uint8), _get(ip.size, "longest_edge")
            )
            x = pil_resize(x, tuple(new), self.resample)
        if getattr(ip, "do_image_splitting", True):
            h, w = x.shape[-2:]  # resize_for_vision_encoder: multiples of max_side
            aspect = w / h
            if w >= h:
                w = math.ceil(w / max_side) * max_side
                h = math.ceil(int(w / aspect) / max_side) * max_side
            else:
                h = math.ceil(h / max_side) * max_side
                w = math.ceil(int(h * aspect) / max_side) * max_side
            x = pil_resize(x, (h, w), self.resample)
            if h > max_side or w > max_side:
                rows, cols = (h - max_side) // max_side + 1, (w - max_side) // max_side + 1
                frames = [
                    x[:, r * max_side : (r + 1) * max_side, c * max_side : (c + 1) * max_side]
                    for r in range(rows)
                    for c in range(cols)
                ]
                frames.append(pil_resize(x, (max_side, max_side), self.resample))
            else:
                frames = [x]
        else:
            frames = [pil_resize(x, (max_side, max_side), self.resample)]
        frames = [self._normalize(f) for f in frames]
        mh, mw = max(f.shape[-2] for f in frames), max(f.shape[-1] for f in frames)
        padded, masks = [], []
        for f in frames:
            fh, fw = f.shape[-2:]
            padded.append(F.pad(f, (0, mw - fw, 0, mh - fh)))
            mask = torch.zeros(mh, mw, dtype=torch.long)
            mask[:fh, :fw] = 1
            masks.append(mask)
        return {"pixel_values": torch.stack(padded)[None], "pixel_attention_mask": torch.stack(masks)[None]}

    def _crop(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ip = self.ip
        sh, sw = int(_get(ip.size, "height")), int(_get(ip.size, "width"))
        if getattr(ip, "crop_to_patches", False) and int(getattr(ip, "max_patches", 1)) > 1:
            from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

            cols, rows = get_optimal_tiled_canvas(
                tuple(x.shape[-2:]), (sh, sw), int(ip.min_patches), int(ip.max_patches)
            )
            canvas = pil_resize(x, (sh * rows, sw * cols), self.resample)
            tiles = [canvas[:, r * sh : (r + 1) * sh, c * sw : (c + 1) * sw] for r in range(rows) for c in range(cols)]
            if len(tiles) != 1:
                tiles.append(pil_resize(x, (sh, sw), self.resample))  # the thumbnail
        else:
            tiles = [pil_resize(x, (sh, sw), self.resample) if getattr(ip, "do_resize", True) else x]
        return {"pixel_values": torch.stack([self._normalize(t) for t in tiles])}  # (n, 3, S, S): no batch axis

    def layout(self, inputs: dict[str, torch.Tensor]) -> dict:
        """What the tower sees per image, for results.json: the number of crops and the crop size."""
        pv = inputs["pixel_values"]
        crops = 1 if pv.dim() == 4 else int(pv.shape[1])
        return {"crops": crops, "crop_size": [int(pv.shape[-2]), int(pv.shape[-1])]}


def image_pipeline(processor, kind: str) -> ImagePipeline:
    """The pipeline of a processor (or of an image processor itself)."""
    return ImagePipeline(getattr(processor, "image_processor", processor), kind)
