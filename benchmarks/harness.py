"""The benchmark harness: what the scripts in benchmarks/ share (model sizes, seeded CLIP construction, image data,
machine facts).

Nothing here touches the network: models are built at random init from configs (`transformers.CLIPConfig`) with the
word-level tokenizer of `mmt_ard.embedded.tiny`, and images are read by the library's data layer (`mmt_ard.data`) from a local
Parquet file with its JSON sidecar of class names (or, with the network, a Hub id).
"""

from __future__ import annotations

import io
import os
import platform
import resource
import subprocess
import sys

import numpy as np
import torch

# ---- model sizes: vision tower + text tower per role ----
# A "tower" dict: hidden, layers, heads, mlp (intermediate size); vision adds image/patch.
SIZES: dict[str, dict] = {
    # CPU scale (the replication's models): 32 px images, 8 px patches (16 tokens + CLS); teachers wider.
    "tiny": {
        "student": {
            "vision": {"hidden": 64, "layers": 4, "heads": 4, "mlp": 128, "image": 32, "patch": 8},
            "text": {"hidden": 64, "layers": 2, "heads": 4, "mlp": 128},
            "projection": 64,
        },
        "teacher": {
            "vision": {"hidden": 96, "layers": 4, "heads": 4, "mlp": 192, "image": 32, "patch": 8},
            "text": {"hidden": 96, "layers": 2, "heads": 4, "mlp": 192},
            "projection": 96,
        },
        "batch_size": 32,
    },
    # The paper's shapes at random init: OpenAI CLIP ViT-B/32 student, ViT-L/14 teachers (224 px). GPU only.
    "vit-b32": {
        "student": {
            "vision": {"hidden": 768, "layers": 12, "heads": 12, "mlp": 3072, "image": 224, "patch": 32},
            "text": {"hidden": 512, "layers": 12, "heads": 8, "mlp": 2048},
            "projection": 512,
        },
        "teacher": {
            "vision": {"hidden": 1024, "layers": 24, "heads": 16, "mlp": 4096, "image": 224, "patch": 14},
            "text": {"hidden": 768, "layers": 12, "heads": 12, "mlp": 3072},
            "projection": 768,
        },
        "batch_size": 64,
    },
}

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def build_clip(spec: dict, seed: int, words: list[str], device: str | None = None):
    """A seeded random-init `CLIPModel` + `CLIPProcessor` of the given tower shapes (global RNG untouched).

    `device`: where the weights are created (a ViT-L/14 initialises in a fraction of a second on a GPU).
    """
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    try:
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:  # pragma: no cover
        from transformers import CLIPImageProcessor
    from mmt_ard.embedded.tiny import build_tokenizer

    tokenizer = build_tokenizer(words)
    v, t = spec["vision"], spec["text"]
    text_cfg = {
        "vocab_size": len(tokenizer),
        "hidden_size": t["hidden"],
        "intermediate_size": t["mlp"],
        "num_hidden_layers": t["layers"],
        "num_attention_heads": t["heads"],
        "max_position_embeddings": tokenizer.model_max_length,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision_cfg = {
        "hidden_size": v["hidden"],
        "intermediate_size": v["mlp"],
        "num_hidden_layers": v["layers"],
        "num_attention_heads": v["heads"],
        "image_size": v["image"],
        "patch_size": v["patch"],
    }
    config = CLIPConfig(text_config=text_cfg, vision_config=vision_cfg, projection_dim=spec["projection"])
    devices = [torch.device(device).index or 0] if device and torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.device(device or "cpu"):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.eval()
    size = v["image"]
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(OPENAI_MEAN),
        image_std=list(OPENAI_STD),
    )
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def attack_setup(size: str, batch_size: int | None, device: str, words: list[str]):
    """What the attack benchmarks attack: the student of `size` as a `ZeroShotCLIP` (text tower frozen), a frozen
    teacher, a batch of random images and the teacher's softmax on them (the `kl` inner loss's target).

    Returns:
        `(student, teacher, x, target)`: `x` `(B, 3, S, S)` in [0,1] on `device`, `target` `(B, C)`.
    """
    from mmt_ard.models import ZeroShotCLIP

    spec = SIZES[size]
    b = batch_size or spec["batch_size"]
    s_clip, s_proc = build_clip(spec["student"], 1, words, device=device)
    t_clip, t_proc = build_clip(spec["teacher"], 2, words, device=device)
    student = ZeroShotCLIP(s_clip, s_proc).to(device)
    student.set_classes(words, ["This is a photo of a {}"])
    s_clip.text_model.requires_grad_(False)
    teacher = ZeroShotCLIP(t_clip.requires_grad_(False), t_proc).to(device).eval()
    teacher.set_classes(words, ["This is a photo of a {}"])
    image = spec["student"]["vision"]["image"]
    x = torch.rand(b, 3, image, image, device=device)
    with torch.no_grad():
        target = torch.softmax(teacher(x).logits, -1)
    return student, teacher, x, target


def spec_from_args(hidden: int, layers: int, image: int, patch: int, heads: int = 4) -> dict:
    """A small tower spec (text tower: same width, 2 layers; MLP 2x width)."""
    return {
        "vision": {
            "hidden": hidden,
            "layers": layers,
            "heads": heads,
            "mlp": 2 * hidden,
            "image": image,
            "patch": patch,
        },
        "text": {"hidden": hidden, "layers": 2, "heads": heads, "mlp": 2 * hidden},
        "projection": hidden,
    }


def count_params(model: torch.nn.Module, vision_only: bool = True) -> int:
    mod = model.vision_model if vision_only and hasattr(model, "vision_model") else model
    return sum(p.numel() for p in mod.parameters())


# ---- data ----
def load_image_table(source: str, image_size: int | None = None):
    """Images `(N, 3, S, S)` float32 in [0,1], labels `(N,)` int64 and class names from a Parquet path or a Hub id.

    Read by `mmt_ard.data.open_image_source`: a Parquet file needs an image column (encoded bytes) and a label
    column; class names come from its `.json` sidecar (`classes`), a `ClassLabel`, or a known dataset's names. A Hub
    id is read in its `test` split. Images are resized to `S x S` (bilinear, no crop), as the recorded results were.
    """
    from PIL import Image

    if source == "sklearn-digits":  # scikit-learn's bundled 8x8 digits, upsampled (method.md section 8)
        from mmt_ard.embedded.tiny import DIGIT_NAMES, load_digits_arrays

        x_tr, y_tr, _x_te, _y_te = load_digits_arrays(image_size or 32, seed=0, test_fraction=0.0)
        return x_tr.contiguous(), y_tr, list(DIGIT_NAMES)
    from mmt_ard.data import open_image_source

    table = open_image_source(source, "test", any_split=True)
    ds = table.dataset.with_format(None)
    images = [_pil(value).convert("RGB") for value in ds[table.image_column]]
    labels = list(ds[table.label_column])
    classes = table.class_names
    if image_size is not None:
        images = [
            im if im.size == (image_size, image_size) else im.resize((image_size, image_size), Image.BILINEAR)
            for im in images
        ]
    x = torch.from_numpy(np.stack([np.asarray(im, dtype=np.uint8) for im in images])).permute(0, 3, 1, 2)
    x = x.float().div_(255.0).contiguous()
    y = torch.tensor(labels, dtype=torch.long)
    if classes is None:
        classes = [f"class {i}" for i in range(int(y.max()) + 1)]
    return x, y, [str(c) for c in classes]


def _pil(value):
    """A PIL image from encoded bytes, an `{"bytes", "path"}` dict or a PIL image."""
    from PIL import Image

    if isinstance(value, dict):
        value = value["bytes"] if value.get("bytes") is not None else value["path"]
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value))
    return value if isinstance(value, Image.Image) else Image.open(value)


def balanced_split(labels: torch.Tensor, n_train_per_class: int, n_test_per_class: int, seed: int):
    """Seeded class-balanced disjoint index split: `(train_idx, test_idx)`, each shuffled."""
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        if len(idx) < n_train_per_class + n_test_per_class:
            raise ValueError(
                f"class {c} has {len(idx)} images, fewer than --train-per-class + --test-per-class = "
                f"{n_train_per_class + n_test_per_class}: lower them."
            )
        test.extend(idx[:n_test_per_class])
        train.extend(idx[n_test_per_class : n_test_per_class + n_train_per_class])
    return rng.permutation(np.array(train)), rng.permutation(np.array(test))


class TensorImageDataset(torch.utils.data.Dataset):
    """`{"pixel_values": (3,H,W) float in [0,1], "labels": int}` rows from tensors (what `MMTARDTrainer` reads)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


# ---- machine ----
def maxrss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine_info() -> dict:
    import transformers

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=os.path.dirname(__file__),
        ).stdout.strip()
    except OSError:
        pass
    return info


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
