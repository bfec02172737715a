"""Data-path throughput: images/s of what training does before each step (read, decode, resize, collate).

The training data path of `mmt-ard-train`, measured without a model: every source opened by the function training
uses (`mmt_ard.pipeline.inputs.load_training_data`, with `--streaming` or without; images kept encoded), batches
drawn by the training DataLoader with `ImageClassificationCollator` (decode, shorter side resized to `--image-size`
with bicubic filtering, centre crop, float `(B, 3, S, S)` in [0, 1]), for every source and number of workers, side
by side in one run:

* `parquet`: one parquet file with an `Image` column (encoded JPEG bytes), as Hub datasets store images, read
  map-style (`datasets`' parquet builder: copied into the Arrow cache on first open), shuffled as the Trainer's
  sampler does;
* `parquet (stream)`: the same file with `--streaming`: a `ShardedStream` over its row groups (`datasets` writes
  row groups of ~100 MB, so 2 here), through the DataLoader the trainer builds for it (`stream_loader`: one slot
  per worker, `PositionCollator`);
* `imagefolder`: `<class>/<n>.jpg` files (the `datasets` image-folder builder; the collator opens the paths);
* `webdataset (map)`: the tar shards (`<key>.jpg` + `<key>.cls`, `--train_files "shards/{00000..00003}.tar"`)
  without `--streaming`: `datasets`' webdataset builder, map-style; its first open copies the shards into the
  Arrow cache (timed apart, see below);
* `webdataset (stream)`: the same shards with `--streaming`: a `ShardedStream` (one tar per piece, the library's
  `tarfile` reader), through `stream_loader`;
* `decode only`: `mmt_ard.data.load_image` on the JPEG bytes in a loop, no dataset, no loader (the floor: what
  decoding and resizing alone cost).

A stream has no end (`--max_steps` ends training): `--images // --batch-size` batches are taken from it, about what
one pass of a map-style source gives. Its workers collate up to `prefetch_factor` batches ahead that nobody takes;
per-core rates count the images collated (a counter shared with the workers), not only those taken.

The images are synthetic, ImageNet-sized and ImageNet-like in decode cost: `--width` x `--height` (default 500 x
375, a common ImageNet size) JPEGs at quality 90, smooth colour fields with shapes, grain and sensor-like noise
(about 100 KB each, near ImageNet's ~110 KB mean), built once into `--work-dir` and reused.

Reported per (source, workers): images/s of wall time after the first batch (workers started), the first batch's
time, and images per CPU-second of every process involved (the main process and its workers: `getrusage` of the
process and of its reaped children), i.e. what one busy core delivers, which does not depend on what else runs on a
shared machine. Per source, once: the time to open it into a fresh `datasets` cache (`--work-dir`/hf-cache, emptied
at the start), the size of the Arrow cache that open wrote, and the time of a second, cached open.

    python benchmarks/data_throughput.py --images 2000 --rounds 2 --out benchmarks/results/data_throughput.json
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import tarfile
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from mmt_ard.data import ImageClassificationCollator, load_image
from mmt_ard.runtime.preemption import DEFAULT_SIGNALS, IgnoreSignalsInWorker
from mmt_ard.training.stream_resume import is_stream, stream_loader

CLASSES = [f"class{i}" for i in range(10)]
PAPER_IMAGES_PER_S = 711  # the paper's recipe on one H200 (issue 22): 5,000 steps x 512 images


# ---- the synthetic images ----


def synthetic_jpeg(rng: np.random.Generator, width: int, height: int, quality: int) -> bytes:
    """A photo-like JPEG: a smooth random colour field, a few shapes with soft edges, texture and sensor noise."""
    small = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 10))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(20, width // 2)), y0 + int(rng.integers(20, height // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(1.5))
    pixels = np.asarray(image, dtype=np.float32)
    texture = rng.normal(0, 1, size=(-(-height // 2), -(-width // 2), 1)).astype(np.float32)  # grain, 2x2 pixels
    texture = np.kron(texture, np.ones((2, 2, 1), np.float32))[:height, :width]
    pixels = pixels + 30 * texture + rng.normal(0, 8, size=pixels.shape).astype(np.float32)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def build_images(work: str, n: int, width: int, height: int, quality: int, shards: int) -> dict:
    """Write the parquet file, the image folder and the tar shards (once; reused when `work` has them)."""
    marker = os.path.join(work, "images.json")
    spec = {"n": n, "width": width, "height": height, "quality": quality, "shards": shards}
    if os.path.isfile(marker):
        with open(marker) as f:
            info = json.load(f)
        if info["spec"] == spec:
            return info
    import datasets

    os.makedirs(work, exist_ok=True)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    jpegs = [synthetic_jpeg(rng, width, height, quality) for _ in range(n)]
    labels = [i % len(CLASSES) for i in range(n)]
    build_s = time.perf_counter() - start
    # parquet, as a Hub dataset stores images
    rows = {"image": [{"bytes": b, "path": f"{i:06d}.jpg"} for i, b in enumerate(jpegs)], "label": labels}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    datasets.Dataset.from_dict(rows, features=features).to_parquet(os.path.join(work, "train.parquet"))
    # an image folder
    for i, (b, y) in enumerate(zip(jpegs, labels)):
        folder = os.path.join(work, "folder", "train", CLASSES[y])
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{i:06d}.jpg"), "wb") as f:
            f.write(b)
    # webdataset shards: <key>.jpg and <key>.cls, consecutive in each tar
    os.makedirs(os.path.join(work, "shards"), exist_ok=True)
    per = -(-n // shards)
    for s in range(shards):
        with tarfile.open(os.path.join(work, "shards", f"{s:05d}.tar"), "w") as tar:
            for i in range(s * per, min(n, (s + 1) * per)):
                for ext, data in (("jpg", jpegs[i]), ("cls", str(labels[i]).encode())):
                    member = tarfile.TarInfo(f"{i:06d}.{ext}")
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))
    info = {
        "spec": spec,
        "mean_jpeg_kb": round(sum(map(len, jpegs)) / n / 1024, 1),
        "generation_s": round(build_s, 1),
    }
    with open(marker, "w") as f:
        json.dump(info, f)
    return info


# ---- the sources: opened as `mmt-ard-train` opens its training data ----


class CountingCollator:
    """The collator, counting the images it turns into a batch in a counter shared with the DataLoader workers: a
    stream's workers collate batches ahead that nobody takes (`prefetch_factor`), whose CPU time is then counted
    against the images actually collated, not the images taken."""

    def __init__(self, collate, counter):
        self.collate, self.counter = collate, counter

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collate(examples)
        with self.counter.get_lock():
            self.counter.value += batch["pixel_values"].shape[0]
        return batch


def _shard_pattern(work: str) -> str:
    """The brace pattern of the tar shards (`.../shards/{00000..00003}.tar`), as `--train_files` takes it."""
    names = sorted(n for n in os.listdir(os.path.join(work, "shards")) if n.endswith(".tar"))
    return os.path.join(work, "shards", f"{{{names[0][:-4]}..{names[-1][:-4]}}}.tar")


# name -> (ScriptArguments giving the data, `--streaming`)
SOURCES = {
    "parquet": (lambda work: {"train_files": [os.path.join(work, "train.parquet")]}, False),
    "parquet (stream)": (lambda work: {"train_files": [os.path.join(work, "train.parquet")]}, True),
    "imagefolder": (lambda work: {"dataset_name": os.path.join(work, "folder")}, False),
    "webdataset (map)": (lambda work: {"train_files": [_shard_pattern(work)], "class_names": CLASSES}, False),
    "webdataset (stream)": (lambda work: {"train_files": [_shard_pattern(work)], "class_names": CLASSES}, True),
}


def open_source(work: str, name: str, cache_dir: str):
    """`(training data, class names, seconds)`: `load_training_data` of `mmt-ard-train` with the arguments of
    `SOURCES[name]` (no evaluation split): a `ShardedStream` with `--streaming`, else a prepared map-style
    `datasets.Dataset` (whose first open writes the data into the Arrow cache `cache_dir`)."""
    from mmt_ard.pipeline.arguments import ScriptArguments
    from mmt_ard.pipeline.inputs import load_training_data

    given, streaming = SOURCES[name]
    sa = ScriptArguments(eval_split="none", streaming=streaming, dataset_cache_dir=cache_dir, **given(work))
    config = SimpleNamespace(max_steps=1_000_000, bad_samples="raise", seed=0)  # what load_training_data reads
    start = time.perf_counter()
    train, _, class_names = load_training_data(sa, config)
    return train, class_names, time.perf_counter() - start


# ---- measuring ----


def _row_groups(path: str) -> list[int]:
    """Rows per row group of a parquet file (a stream's pieces: `datasets` writes row groups of ~100 MB)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]


def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def _cpu_seconds() -> float:
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def make_loader(dataset, collate, workers: int, batch_size: int):
    """The training DataLoader: a `ShardedStream`'s as the trainer builds it (`stream_loader`: one slot per worker,
    `PositionCollator`, the workers ignoring the preemption signals), a map-style dataset's shuffled like the
    Trainer's sampler. No pinned memory (no GPU here)."""
    if is_stream(dataset):
        args = SimpleNamespace(
            process_index=0,
            world_size=1,
            dataloader_num_workers=workers,
            dataloader_pin_memory=False,
            dataloader_persistent_workers=False,
            dataloader_prefetch_factor=None,  # the Trainer's default: torch's 2 with workers
        )
        trainer = SimpleNamespace(args=args, _train_batch_size=batch_size, data_collator=collate)
        worker_init = IgnoreSignalsInWorker(list(DEFAULT_SIGNALS)) if workers else None
        return stream_loader(trainer, dataset, None, worker_init)
    generator = torch.Generator().manual_seed(0)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        num_workers=workers,
        collate_fn=collate,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )


def measure_loader(dataset, collator, workers: int, batch_size: int, images: int) -> dict:
    """One pass over a map-style `dataset`, or `images // batch_size` batches of an (endless) stream, through the
    training DataLoader. Per core counts the images collated (a stream's workers collate a few batches ahead)."""
    counter = multiprocessing.Value("q", 0)
    loader = make_loader(dataset, CountingCollator(collator, counter), workers, batch_size)
    batches = images // batch_size if is_stream(dataset) else None
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    iterator = iter(loader)
    first = next(iterator)
    t1 = time.perf_counter()
    taken, rest = 1, 0
    for batch in iterator:
        assert batch["pixel_values"].shape[1:] == first["pixel_values"].shape[1:]
        rest += batch["pixel_values"].shape[0]
        taken += 1
        if taken == batches:
            break
    t2 = time.perf_counter()
    # workers are joined (reaped) here, so their CPU time is in RUSAGE_CHILDREN
    getattr(iterator, "_shutdown_workers", lambda: None)()
    del iterator
    cpu = _cpu_seconds() - cpu0
    images_taken = first["pixel_values"].shape[0] + rest
    return {
        "images": images_taken,
        "images_collated": counter.value,
        "wall_s": round(t2 - t0, 3),
        "first_batch_s": round(t1 - t0, 3),
        "cpu_s": round(cpu, 3),
        "images_per_s": round(rest / (t2 - t1), 1) if rest else None,
        "images_per_cpu_s": round(counter.value / cpu, 1),
    }


def measure_decode_only(work: str, size: int, limit: int) -> dict:
    """`load_image` on each JPEG's bytes in a loop: decode + resize + crop + float tensor, nothing else."""
    folder = os.path.join(work, "folder", "train")
    paths = sorted(os.path.join(folder, c, f) for c in os.listdir(folder) for f in os.listdir(os.path.join(folder, c)))
    blobs = []
    for p in paths[:limit]:
        with open(p, "rb") as f:
            blobs.append(f.read())
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    for b in blobs:
        load_image(b, size)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    n = len(blobs)
    return {"images": n, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "images_per_s": round(n / wall, 1),
            "images_per_cpu_s": round(n / cpu, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000, help="synthetic JPEGs (each source holds all of them)")
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=224, help="the student's input size (the paper's: 224)")
    parser.add_argument("--batch-size", type=int, default=64, help="per-device batch (the paper's 512 over 8 GPUs)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sources", nargs="+", default=[*SOURCES, "decode only"])
    parser.add_argument("--rounds", type=int, default=2, help="every configuration once per round, order rotated")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "mmt_ard_data_throughput"))
    parser.add_argument("--out", default=None)
    opts = parser.parse_args(argv)
    torch.set_num_threads(1)  # as the embedded default and the CPU benchmarks; workers use 1 thread anyway

    info = build_images(opts.work_dir, opts.images, opts.width, opts.height, opts.quality, opts.shards)
    print(
        f"{opts.images} JPEGs {opts.width}x{opts.height} q{opts.quality}, mean {info['mean_jpeg_kb']} KB", flush=True
    )
    # every source opened as `mmt-ard-train` opens it, into a fresh `datasets` cache: a map-style source's first open
    # copies the data into the Arrow cache (once per data, then reused); it is opened again to time a cached open
    cache_dir = os.path.join(opts.work_dir, "hf-cache")
    shutil.rmtree(cache_dir, ignore_errors=True)
    opened, opens = {}, {}
    for name in opts.sources:
        if name in SOURCES:
            before = _folder_bytes(cache_dir)
            dataset, class_names, first_s = open_source(opts.work_dir, name, cache_dir)
            opens[name] = {
                "first_open_s": round(first_s, 2),
                "cache_mb": round((_folder_bytes(cache_dir) - before) / 2**20, 1),
            }
            if not is_stream(dataset):
                dataset, class_names, again_s = open_source(opts.work_dir, name, cache_dir)
                opens[name]["cached_open_s"] = round(again_s, 2)
            opened[name] = (dataset, class_names)
            print(json.dumps({"source": name, **opens[name]}), flush=True)
    configs = [(s, w) for s in opts.sources if s in SOURCES for w in opts.workers]
    if "decode only" in opts.sources:
        configs.append(("decode only", 0))
    record = {
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
        },
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "images": info,
        "parquet_row_groups": _row_groups(os.path.join(opts.work_dir, "train.parquet")),
        "settings": {k: getattr(opts, k) for k in ("image_size", "batch_size", "rounds", "shards")},
        "opens": opens,
        "runs": [],
    }
    for r in range(opts.rounds):
        order = configs[r % len(configs) :] + configs[: r % len(configs)]
        for source, workers in order:
            if source == "decode only":
                result = measure_decode_only(opts.work_dir, opts.image_size, opts.images)
            else:
                dataset, class_names = opened[source]
                c = ImageClassificationCollator(opts.image_size, class_names, "image", "label", bad_samples="raise")
                result = measure_loader(dataset, c, workers, opts.batch_size, opts.images)
            result.update(source=source, workers=workers, round=r, load=round(os.getloadavg()[0], 2))
            record["runs"].append(result)
            print(json.dumps(result), flush=True)
    record["load_after"] = [round(x, 2) for x in os.getloadavg()]
    record["summary"] = summarise(record["runs"], configs)
    print(table(record["summary"]))
    print(open_table(opens))
    if opts.out:
        with open(opts.out, "w") as f:
            json.dump(record, f, indent=2)
    return record


def summarise(runs: list[dict], configs: list[tuple[str, int]]) -> list[dict]:
    rows = []
    for source, workers in configs:
        mine = [r for r in runs if r["source"] == source and r["workers"] == workers]
        per_cpu = statistics.median(r["images_per_cpu_s"] for r in mine)
        rows.append({
            "source": source,
            "workers": workers,
            "images_per_s": statistics.median(r["images_per_s"] for r in mine if r["images_per_s"]),
            "images_per_cpu_s": per_cpu,
            "cores_for_paper_rate": round(PAPER_IMAGES_PER_S / per_cpu, 1),
            "first_batch_s": statistics.median(r.get("first_batch_s", 0.0) for r in mine),
            "rounds": [r["images_per_cpu_s"] for r in mine],
            "wall_rounds": [r["images_per_s"] for r in mine],
            "load_rounds": [r["load"] for r in mine],
        })  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| source | workers | images/s (wall) | wall, rounds 1 / 2 | images per CPU-s (per core) "
        + "| cores for 711 images/s | per core, rounds 1 / 2 | first batch (s) | load, rounds 1 / 2 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rounds = " / ".join(f"{x:.1f}" for x in r["rounds"])
        walls = " / ".join(f"{x:.1f}" for x in r["wall_rounds"] if x)
        loads = " / ".join(f"{x:.1f}" for x in r["load_rounds"])
        lines.append(
            f"| {r['source']} | {r['workers']} | {r['images_per_s']:.1f} | {walls} | {r['images_per_cpu_s']:.1f} | "
            f"{r['cores_for_paper_rate']:.1f} | {rounds} | {r['first_batch_s']:.2f} | {loads} |"
        )
    return "\n".join(lines)


def open_table(opens: dict) -> str:
    lines = ["| source | first open (s) | Arrow cache written (MB) | cached open (s) |", "|---|---|---|---|"]
    for name, o in opens.items():
        again = f"{o['cached_open_s']:.2f}" if "cached_open_s" in o else "- (nothing cached)"
        lines.append(f"| {name} | {o['first_open_s']:.2f} | {o['cache_mb']:.1f} | {again} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
