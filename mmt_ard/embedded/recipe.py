"""The embedded default: tiny CLIP teachers and student on scikit-learn's digits, trained offline in minutes.

`mmt-ard-train` (or `examples/run_mmt_ard.py`) with no model arguments runs this recipe (method.md section 8), every
phase through `MMTARDTrainer`:

1. clean teacher: a `teacher_width`-wide tiny CLIP trained with zero-shot CE on clean images (`tecoa` preset with
   `attack_steps=0`);
2. robust teacher: a copy of the clean teacher fine-tuned with zero-shot CE on PGD examples (`tecoa` preset), the
   way real robust teachers are made (a robust teacher trained adversarially from scratch stays weak here);
3. student: a narrower tiny CLIP trained clean (`tecoa`, `attack_steps=0`): the "pre-trained" model to robustify;
4. (in `mmt_ard.cli.train`) MMT-ARD distillation of the student from both teachers (`mmt-ard` preset, with the
   settings of `DISTILLATION_DEFAULTS`; `--quick` shortens every phase: `QUICK_*`).

Phases 1-3 are cached under `cache_dir/<fingerprint of the recipe>/` and reused by later runs. Images are the 1797
bundled 8x8 digits upsampled to `image_size` (1438 train / 359 test, a fixed seeded split).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass

import torch

from .tiny import DIGIT_NAMES, build_tiny_clip, digits_dataset

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "mmt_ard", "embedded")
RECIPE_VERSION = 2  # bump when the training code of the phases changes what a recipe produces
PHASES = ("clean_teacher", "robust_teacher", "student")

# The distillation phase (method.md section 8), as defaults of the command: a config file or a flag wins.
DISTILLATION_DEFAULTS = {
    "preset": "mmt-ard",
    "max_steps": 200,
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 128,
    "learning_rate": 5e-4,
    "warmup_steps": 0.05,
    "attack_eps": 8 / 255,
    "attack_steps": 5,
    "attack_step_size": 2 / 255,
    "eval_attack_eps": 8 / 255,
    "eval_attack_steps": 10,
    "eval_attack_step_size": 2 / 255,
    "logging_steps": 25,
    "save_strategy": "no",
    "report_to": "none",
}
# `--quick`: the same pipeline with a handful of steps (smoke tests, CI); distinct cache entries
QUICK_DEFAULTS = {"max_steps": 4, "eval_attack_steps": 3, "logging_steps": 2}
QUICK_RECIPE = {"clean_steps": 4, "robust_steps": 3, "student_steps": 4}
QUICK_MAX_EVAL_SAMPLES = 64


@dataclass
class EmbeddedRecipe:
    """How the embedded teachers and student are built (all phases `MMTARDTrainer` with the `tecoa` preset).

    Args:
        image_size: input size of every model (digits are upsampled to it).
        patch_size: ViT patch size.
        teacher_width: width of both teachers' towers.
        teacher_layers: depth of both teachers' towers.
        student_width: width of the student's towers.
        student_layers: depth of the student's towers.
        heads: attention heads of every model.
        projection_dim: joint image-text embedding size of every model (default: each model's width).
        batch_size: global training batch of every phase.
        clean_steps: clean-training steps of the clean teacher.
        clean_lr: its learning rate.
        robust_steps: adversarial fine-tuning steps of the robust teacher (from the clean teacher).
        robust_lr: its learning rate.
        robust_eps: L-inf budget of the robust teacher's PGD.
        robust_attack_steps: PGD iterations of the robust teacher's training attack.
        robust_step_size: PGD step size of that attack.
        student_steps: clean-training steps of the student.
        student_lr: its learning rate.
        seed: seed of initialisation, data order and attacks.
        template: the prompt template of the text heads (MMT-ARD's training prompt).
    """

    image_size: int = 16
    patch_size: int = 4
    teacher_width: int = 64
    teacher_layers: int = 2
    student_width: int = 48
    student_layers: int = 2
    heads: int = 2
    projection_dim: int | None = None
    batch_size: int = 64
    clean_steps: int = 300
    clean_lr: float = 1e-3
    robust_steps: int = 200
    robust_lr: float = 5e-4
    robust_eps: float = 8 / 255
    robust_attack_steps: int = 3
    robust_step_size: float = 3 / 255
    student_steps: int = 200
    student_lr: float = 1e-3
    seed: int = 0
    template: str = "This is a photo of a {}"

    def fingerprint(self) -> str:
        """A short hash of the recipe (and `RECIPE_VERSION`): the cache key."""
        blob = json.dumps({"version": RECIPE_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def describe(self, phase: str) -> str:
        """One line saying how a phase's model was made (used in the model card)."""
        if phase == "clean_teacher":
            return (
                f"tiny CLIP {self.teacher_width}-wide {self.teacher_layers}-layer, patch {self.patch_size}, "
                f"{self.image_size} px; {self.clean_steps} clean zero-shot CE steps (lr {self.clean_lr:g})"
            )
        if phase == "robust_teacher":
            return (
                f"the clean teacher fine-tuned {self.robust_steps} steps with zero-shot CE on PGD-"
                f"{self.robust_attack_steps} examples at eps {self.robust_eps * 255:g}/255 (lr {self.robust_lr:g})"
            )
        return (
            f"tiny CLIP {self.student_width}-wide {self.student_layers}-layer, patch {self.patch_size}, "
            f"{self.image_size} px; {self.student_steps} clean zero-shot CE steps (lr {self.student_lr:g})"
        )


def digits_splits(image_size: int = 16, seed: int = 0):
    """`(train, test)` digits `datasets.Dataset`s with `pixel_values` and `labels` (a `ClassLabel` of digit names)."""
    return digits_dataset(image_size, "train", seed), digits_dataset(image_size, "test", seed)


@torch.no_grad()
def simplex_text_head(model, processor, class_names: list[str], template: str, seed: int = 0) -> None:
    """Set `model.text_projection` so the class prompts' text embeddings form a regular simplex (in place).

    A randomly initialised text tower maps every prompt of a template to nearly the same direction (cosines around
    0.98), so its zero-shot head barely separates classes. More importantly for MMT-ARD, softmax cross-entropy is
    blind to any component of the image embedding that shifts all logits equally, i.e. along the mean of the class
    text embeddings: that component drifts freely in training, and with it the raw cosine `c = cos(f(x), t_y)`
    that the `confidence` weighting multiplies each KL term by, which can then be negative on most samples of a
    well-trained teacher (the student then *maximises* those KL terms). With centred unit class embeddings (a
    regular simplex: pairwise cosine -1/(C-1), summing to zero) the logits sum to zero, so a correctly classified
    image always has a positive confidence. Real CLIP text towers come from contrastive pre-training; this stands in
    for it. MMT-ARD keeps text towers frozen, so the head is fixed from here on.

    Args:
        model: a `CLIPModel` with a `text_projection` (modified in place).
        processor: its processor (the tokenizer is used).
        class_names: the `C` class names (`C` <= projection dim and <= width).
        template: the prompt template with one `{}`.
        seed: seed of the random orientation of the simplex.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    tokens = tokenizer([template.format(n) for n in class_names], padding=True, return_tensors="pt")
    was_training = model.training
    model.eval()
    pooled = model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
    pooled = pooled.double()  # (C, h)
    proj = model.text_projection.weight  # (D, h)
    c = len(class_names)
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(proj.shape[0], c, generator=generator, dtype=torch.float64))  # (D, C)
    centre = torch.eye(c, dtype=torch.float64) - 1.0 / c
    targets = basis @ centre * (c / (c - 1)) ** 0.5  # (D, C): unit columns, pairwise cosine -1/(C-1)
    # minimum-norm W with W @ pooled.T = targets: W = targets (H H^T)^-1 H
    weight = targets @ torch.linalg.solve(pooled @ pooled.T, pooled)
    proj.copy_(weight.to(proj.dtype))
    model.train(was_training)


def _collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([torch.as_tensor(e["pixel_values"]) for e in examples]).float(),
        "labels": torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long),
    }


def train_zero_shot(
    model,
    processor,
    train_dataset,
    *,
    steps: int,
    learning_rate: float,
    batch_size: int,
    output_dir: str,
    attack_eps: float = 0.0,
    attack_steps: int = 0,
    attack_step_size: float = 1 / 255,
    seed: int = 0,
    class_names: list[str] | None = None,
    data_collator=None,
    **config_kwargs,
):
    """Train `model` with zero-shot CE (clean if `attack_steps == 0`, else TeCoA on PGD examples) via `MMTARDTrainer`.

    Returns:
        `(model, metrics)`: the same (trained, in place) model and the Trainer's train metrics; under FSDP, which
        shards the model in place, a whole copy of the trained model instead.
    """
    from ..runtime.distributed import is_sharded, unsharded_copy
    from ..training.config import MMTARDConfig
    from ..training.trainer import MMTARDTrainer

    world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    args = MMTARDConfig(
        output_dir=output_dir,
        preset="tecoa",
        attack_eps=attack_eps,
        attack_steps=attack_steps,
        attack_step_size=attack_step_size,
        attack_momentum=0.0,
        learning_rate=learning_rate,
        warmup_steps=0.05,
        max_steps=steps,
        per_device_train_batch_size=max(1, batch_size // world),
        save_strategy="no",
        report_to="none",
        seed=seed,
        dataloader_pin_memory=torch.cuda.is_available(),
        **config_kwargs,
    )
    trainer = MMTARDTrainer(
        model=model,
        args=args,
        processing_class=processor,
        train_dataset=train_dataset,
        data_collator=data_collator or _collate,
        class_names=class_names or DIGIT_NAMES,
    )
    metrics = trainer.train().metrics
    if is_sharded(trainer.model):  # FSDP sharded the model in place: every process gets the whole trained model
        model = unsharded_copy(model, trainer.model, prefix="student.clip.")
    model.eval()
    return model, metrics


def _load(path: str):
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(path)
    model.eval()
    return model, CLIPProcessor.from_pretrained(path)


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _wait_for_everyone() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _main_process_decides(value: bool) -> bool:
    """Process 0's `value` on every process (all must train the phases together, or none)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    if torch.distributed.get_world_size() == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return bool(box[0])


def _is_complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "phases.json")) and all(
        os.path.isfile(os.path.join(path, p, "model.safetensors")) for p in PHASES
    )


@contextlib.contextmanager
def _cache_lock(path: str, main: bool):
    """Hold `<cache_dir>/.<fingerprint>.lock` (an OS file lock, released by the kernel if the process dies) while
    one recipe's cache entry is checked, built and published; only process 0 of a run takes it (every process of
    the run trains the phases together). Other runs, users or test workers wait for it."""
    if not main:
        yield
        return
    from filelock import FileLock, Timeout

    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    lock = FileLock(os.path.join(parent, f".{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("Another run is building the embedded teachers and student in %s: waiting for it.", path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _load_cache(path: str) -> dict:
    with open(os.path.join(path, "phases.json")) as f:
        phases = json.load(f)
    out = {p: _load(os.path.join(path, p)) for p in PHASES}
    for p in PHASES:
        phases[p]["cached"] = True
    logger.info("Embedded teachers and student reused from %s", path)
    return {**out, "phases": phases, "cache_path": path}


def build_embedded_models(
    recipe: EmbeddedRecipe | None = None,
    cache_dir: str | None = DEFAULT_CACHE_DIR,
    train_dataset=None,
    **config_kwargs,
) -> dict:
    """The clean teacher, robust teacher and pre-trained student of the embedded default, trained or from the cache.

    Runs that start at the same time on one machine (two users, a test suite in parallel, several launches) share
    the cache safely: the first to need a recipe builds it while holding a file lock, the others wait and then read
    it; an entry is written into a temporary folder and published with one rename, so a reader never sees a partial
    one, and a published entry is never modified or deleted.

    Args:
        recipe: the recipe (defaults to `EmbeddedRecipe()`).
        cache_dir: where trained models are kept (`None`: never cache).
        train_dataset: the digits train split (built if `None`).
        **config_kwargs: extra `MMTARDConfig` fields for the phases (`use_cpu`, `disable_tqdm`, `logging_steps`, ...).

    Returns:
        `{"clean_teacher": (model, processor), "robust_teacher": ..., "student": ..., "phases": {phase: info},
        "cache_path": str | None}`; `info` holds `steps`, `train_runtime_s`, `images_per_second`, `cached` and
        `description`.
    """
    recipe = recipe or EmbeddedRecipe()
    if not cache_dir:
        return {**_train_phases(recipe, train_dataset, config_kwargs), "cache_path": None}
    path = os.path.join(cache_dir, recipe.fingerprint())
    main = _is_main_process()
    if _main_process_decides(_is_complete(path)):  # a published entry never changes: read it without the lock
        return _load_cache(path)
    with _cache_lock(path, main):
        if _main_process_decides(_is_complete(path)):
            built = _load_cache(path)
        else:
            built = _train_phases(recipe, train_dataset, config_kwargs)
            if main:
                _save_cache(path, built, recipe)
            built["cache_path"] = path
    _wait_for_everyone()  # the other processes read nothing before process 0 has published
    return built


@contextlib.contextmanager
def _one_torch_thread():
    """One intra-op thread inside, the caller's count restored after.

    How a CPU float reduction is split depends on the thread count, so phases trained with 2 threads end ~1e-4 away
    from the same phases trained with 1 (measured on `--quick`-sized phases of 40 steps), under the same cache key:
    a cache entry would then depend on who built it. With one thread it depends on the recipe (and the code) only,
    and tiny models lose nothing.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_phases(recipe: EmbeddedRecipe, train_dataset, config_kwargs: dict) -> dict:
    """Train the three phases (`MMTARDTrainer`, `tecoa` preset); `{phase: (model, processor), "phases": info}`."""
    with _one_torch_thread():
        return _train_phases_now(recipe, train_dataset, config_kwargs)


def _train_phases_now(recipe: EmbeddedRecipe, train_dataset, config_kwargs: dict) -> dict:
    if train_dataset is None:
        train_dataset, _ = digits_splits(recipe.image_size, recipe.seed)
    r = recipe
    work = tempfile.mkdtemp(prefix="mmt_ard_embedded_")
    phases: dict[str, dict] = {}

    def run(phase: str, model, processor, **kwargs):
        start = time.perf_counter()
        logger.info("Embedded default: training the %s (%s)", phase.replace("_", " "), r.describe(phase))
        model, metrics = train_zero_shot(
            model,
            processor,
            train_dataset,
            batch_size=r.batch_size,
            seed=r.seed,
            output_dir=os.path.join(work, phase),
            prompt_templates=[r.template],
            **kwargs,
            **config_kwargs,
        )
        phases[phase] = {
            "steps": kwargs["steps"],
            "train_runtime_s": round(time.perf_counter() - start, 2),
            "images_per_second": round(float(metrics.get("train_samples_per_second", 0.0)), 1),
            "cached": False,
            "description": r.describe(phase),
        }
        return model

    teacher, t_proc = build_tiny_clip(
        r.teacher_width,
        r.teacher_layers,
        r.heads,
        r.image_size,
        r.patch_size,
        r.projection_dim,
        seed=r.seed + 1,
        words=DIGIT_NAMES,
    )
    simplex_text_head(teacher, t_proc, DIGIT_NAMES, r.template, seed=r.seed + 1)
    teacher = run("clean_teacher", teacher, t_proc, steps=r.clean_steps, learning_rate=r.clean_lr)
    robust = run(
        "robust_teacher",
        copy.deepcopy(teacher),
        t_proc,
        steps=r.robust_steps,
        learning_rate=r.robust_lr,
        attack_eps=r.robust_eps,
        attack_steps=r.robust_attack_steps,
        attack_step_size=r.robust_step_size,
    )
    student, s_proc = build_tiny_clip(
        r.student_width,
        r.student_layers,
        r.heads,
        r.image_size,
        r.patch_size,
        r.projection_dim,
        seed=r.seed + 2,
        words=DIGIT_NAMES,
    )
    simplex_text_head(student, s_proc, DIGIT_NAMES, r.template, seed=r.seed + 2)
    student = run("student", student, s_proc, steps=r.student_steps, learning_rate=r.student_lr)
    shutil.rmtree(work, ignore_errors=True)
    return {
        "clean_teacher": (teacher, t_proc),
        "robust_teacher": (robust, t_proc),
        "student": (student, s_proc),
        "phases": phases,
    }


def _save_cache(path: str, built: dict, recipe: EmbeddedRecipe) -> None:
    """Publish a cache entry (called with the entry's lock held): write every phase into a temporary folder beside
    it, then rename that folder to `path` (readers never see a partial entry). Leftovers of builders that died
    (temporary folders, an incomplete entry from older versions) are removed first; a complete entry is never
    touched."""
    parent, name = os.path.split(path)
    for leftover in os.listdir(parent):
        if leftover.startswith(f".tmp_{name}_"):  # only the lock holder writes these: the writer is gone
            shutil.rmtree(os.path.join(parent, leftover), ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp_{name}_", dir=parent)
    for phase in PHASES:
        model, processor = built[phase]
        model.save_pretrained(os.path.join(tmp, phase))
        processor.save_pretrained(os.path.join(tmp, phase))
    with open(os.path.join(tmp, "phases.json"), "w") as f:
        json.dump(built["phases"], f, indent=2)
    with open(os.path.join(tmp, "recipe.json"), "w") as f:
        json.dump(asdict(recipe), f, indent=2)
    if os.path.lexists(path):  # incomplete (a complete entry is read, never rebuilt): move it out of the way first
        stale = tempfile.mkdtemp(prefix=f".tmp_{name}_stale_", dir=parent)
        os.replace(path, os.path.join(stale, name))
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp, path)
    logger.info("Embedded teachers and student cached in %s", path)
