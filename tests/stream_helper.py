"""Tiny streamed training runs for the stream-resume tests, usable in-process and as a script (under `accelerate
launch` for 2 processes).

The data: 40 scikit-learn digits as 16 px PNGs (lossless, so decoding is exact), written by `write_data` as parquet
files (row groups of 10 rows: 4 pieces), or as 4 webdataset tar shards (`<key>.png` + `<key>.cls`, or `<key>.json`
with a `label` field). Training streams them (`ShardedStream`, shuffle windows of 8 rows) at batch 8 for 8 steps, so
with 2 DataLoader workers (or 2 processes) every reader passes over its 20 rows 2.5 batches at a time: checkpoint-3
lies in the first pass, checkpoint-6 after it.

    python tests/stream_helper.py --data DIR --kind webdataset --output_dir OUT --dump F \
        [--resume_from OUT/checkpoint-6 --resume_dir OUT2 --resume_dump F2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from mmt_ard import MMTARDConfig, MMTARDTrainer, Teacher
from mmt_ard.data import ImageClassificationCollator
from mmt_ard.data.stream import ShardedStream
from mmt_ard.embedded.tiny import DIGIT_NAMES, build_tiny_clip, load_digits_arrays
from mmt_ard.runtime.distributed import shutdown_process_group

MAX_STEPS = 8
SAVE_STEPS = 3
NUM_ROWS = 40
BATCH = 8
WINDOW = 8


def digit_pngs(n: int = NUM_ROWS, size: int = 16) -> list[tuple[bytes, int]]:
    """`(png bytes, label)` of the first `n` training digits at `size` px."""
    from PIL import Image

    x, y, _, _ = load_digits_arrays(size, 0)
    out = []
    for i in range(n):
        array = (x[i].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype("uint8")
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        out.append((buf.getvalue(), int(y[i])))
    return out


def write_tar(path: str, samples: list[tuple[str, dict[str, bytes]]]) -> str:
    """A webdataset shard: `key.ext` members, samples in the given order."""
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def write_data(folder: str, kind: str, label_json: bool = False) -> list[str]:
    """The 40 digits as `kind` files in `folder`: 2 parquet files of 2 row groups each, or 4 tar shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(folder, exist_ok=True)
    rows = digit_pngs()
    files = []
    if kind == "parquet":
        for f in range(2):
            part = rows[f * 20 : (f + 1) * 20]
            table = pa.table({"image": [p for p, _ in part], "label": [label for _, label in part]})
            path = os.path.join(folder, f"train-{f:05d}-of-00002.parquet")
            pq.write_table(table, path, row_group_size=10)
            files.append(path)
    else:
        for s in range(4):
            samples = []
            for i in range(s * 10, (s + 1) * 10):
                png, label = rows[i]
                meta = {"json": json.dumps({"label": label}).encode()} if label_json else {"cls": str(label).encode()}
                samples.append((f"{i:06d}", {"png": png, **meta}))
            files.append(write_tar(os.path.join(folder, f"shard-{s:05d}.tar"), samples))
    return files


def make_stream(files: list[str], kind: str, label_json: bool = False) -> ShardedStream:
    field = "label" if label_json else None
    return ShardedStream(files, kind, label_json_field=field, seed=7, shuffle_window=WINDOW)


class CountingCollator(ImageClassificationCollator):
    """`ImageClassificationCollator` that counts the examples it decodes (in this process)."""

    decoded = 0

    def __call__(self, examples):
        CountingCollator.decoded += len(examples)
        return super().__call__(examples)


def build_trainer(
    output_dir: str, stream: ShardedStream | None, workers: int = 2, callbacks=(), train_dataset=None, **overrides
):
    """The run on `stream` (or on a map-style `train_dataset`) with `workers` DataLoader workers."""
    student, processor = build_tiny_clip(hidden=32, image_size=16, seed=0)
    robust, robust_proc = build_tiny_clip(hidden=32, image_size=16, seed=1)
    clean, clean_proc = build_tiny_clip(hidden=32, image_size=16, seed=2)
    kwargs = {
        "output_dir": output_dir,
        "preset": "mmt-ard",
        "attack_steps": 1,
        "attack_eps": 8 / 255,
        "attack_step_size": 8 / 255,
        "learning_rate": 1e-3,
        "max_steps": MAX_STEPS,
        "save_steps": SAVE_STEPS,
        "per_device_train_batch_size": BATCH,
        "logging_steps": 1,
        "use_cpu": True,
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": workers,
        "dataloader_pin_memory": False,
        "seed": 7,
    }
    kwargs.update(overrides)
    collator = CountingCollator(16, DIGIT_NAMES)
    return MMTARDTrainer(
        model=student,
        args=MMTARDConfig(**kwargs),
        teachers=[
            Teacher(robust, role="robust", processor=robust_proc),
            Teacher(clean, role="clean", processor=clean_proc),
        ],
        class_names=DIGIT_NAMES,
        processing_class=processor,
        train_dataset=stream if train_dataset is None else train_dataset,
        data_collator=collator,
        callbacks=list(callbacks),
    )


def final_state(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}


def dump(trainer, path: str) -> None:
    import safetensors.torch

    if trainer.accelerator.is_main_process:
        state = {k: v.contiguous() for k, v in final_state(trainer).items()}
        safetensors.torch.save_file(state, path, metadata={"setup": trainer.distributed_setup()})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--kind", default="parquet")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--dump", required=True)
    parser.add_argument("--resume_from", default=None, help="then, in a new trainer: resume from this checkpoint")
    parser.add_argument("--resume_dir", default=None, help="... into this output_dir")
    parser.add_argument("--resume_dump", default=None, help="... and dump its final weights here")
    opts = parser.parse_args(argv)
    torch.set_num_threads(1)
    files = sorted(os.path.join(opts.data, n) for n in os.listdir(opts.data))
    trainer = build_trainer(opts.output_dir, make_stream(files, opts.kind), workers=opts.workers)
    trainer.train()
    dump(trainer, opts.dump)
    if opts.resume_from:  # a new trainer, loader and workers, from the checkpoint on disk (one launch less)
        resumed = build_trainer(opts.resume_dir, make_stream(files, opts.kind), workers=opts.workers)
        resumed.train(resume_from_checkpoint=opts.resume_from)
        dump(resumed, opts.resume_dump)
    shutdown_process_group()


if __name__ == "__main__":
    sys.exit(main())
