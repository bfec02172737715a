"""Data-path throughput: images/s of what training does before each step (read, decode, resize, collate).

The training data path of `mmt-ard-train`, measured without a model: a source opened as training opens it
(`mmt_ard.data.open_image_source` + `prepare_dataset`: images kept encoded), batches drawn by a torch `DataLoader`
with `ImageClassificationCollator` (decode, shorter side resized to `--image-size` with bicubic filtering, centre
crop, float `(B, 3, S, S)` in [0, 1]), shuffled as the Trainer's sampler does, for every source and number of
workers, side by side in one run:

* `parquet`: one parquet file with an `Image` column (encoded JPEG bytes), as Hub datasets store images;
* `imagefolder`: `<class>/<n>.jpg` files (the `datasets` image-folder builder; the collator opens the paths);
* `webdataset (tarfile)`: tar shards of `<key>.jpg` + `<key>.cls` read with Python's `tarfile` in a torch
  `IterableDataset` (shards split across workers), through the same collator. A stand-in until the library reads
  webdataset shards itself: `SOURCES` maps a name to one small function, so the library's reader replaces it in one
  place;
* `decode only`: `mmt_ard.data.load_image` on the JPEG bytes in a loop, no dataset, no loader (the floor: what
  decoding and resizing alone cost).

The images are synthetic, ImageNet-sized and ImageNet-like in decode cost: `--width` x `--height` (default 500 x
375, a common ImageNet size) JPEGs at quality 90, smooth colour fields with shapes, grain and sensor-like noise
(about 100 KB each, near ImageNet's ~110 KB mean), built once into `--work-dir` and reused.

Reported per (source, workers): images/s of wall time after the first batch (workers started), and images per
CPU-second of every process involved (the main process and its workers: `getrusage` of the process and of its
reaped children), i.e. what one busy core delivers, which does not depend on what else runs on a shared machine.

    python benchmarks/data_throughput.py --images 2000 --rounds 2 --out benchmarks/results/data_throughput.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import statistics
import tarfile
import tempfile
import time

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from mmt_ard.data import ImageClassificationCollator, load_image
from mmt_ard.data.sources import open_image_source, prepare_dataset

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


# ---- the sources: each returns (dataset, image column, label column) ----


def parquet_source(work: str):
    source = open_image_source(
        os.path.join(work, "train.parquet"), "train", any_split=True, cache_dir=os.path.join(work, "hf")
    )
    return prepare_dataset(source.dataset, source.image_column, source.label_column), source.image_column, "label"


def folder_source(work: str):
    source = open_image_source(
        os.path.join(work, "folder"), "train", any_split=True, cache_dir=os.path.join(work, "hf")
    )
    return prepare_dataset(source.dataset, source.image_column, source.label_column), source.image_column, "label"


class TarShards(torch.utils.data.IterableDataset):
    """`{"image": {"bytes", "path"}, "label"}` from webdataset tar shards, with Python's `tarfile`; worker `w` of `W`
    reads shards `w, w + W, ...` (stand-in for the library's webdataset reader)."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        mine = self.paths if info is None else self.paths[info.id :: info.num_workers]
        for path in mine:
            sample: dict = {}
            with tarfile.open(path) as tar:
                for member in tar:
                    key, ext = member.name.rsplit(".", 1)
                    if sample and sample["key"] != key:
                        yield _tar_example(sample)
                        sample = {}
                    sample["key"] = key
                    sample[ext] = tar.extractfile(member).read()
            if sample:
                yield _tar_example(sample)


def _tar_example(sample: dict) -> dict:
    return {"image": {"bytes": sample["jpg"], "path": sample["key"]}, "label": int(sample["cls"])}


def tar_source(work: str):
    folder = os.path.join(work, "shards")
    return TarShards(sorted(os.path.join(folder, p) for p in os.listdir(folder))), "image", "label"


SOURCES = {"parquet": parquet_source, "imagefolder": folder_source, "webdataset (tarfile)": tar_source}


# ---- measuring ----


def _cpu_seconds() -> float:
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def measure_loader(dataset, collator, workers: int, batch_size: int) -> dict:
    """One pass over `dataset` through a DataLoader as the Trainer builds it (shuffled when map-style)."""
    shuffle = not isinstance(dataset, torch.utils.data.IterableDataset)
    generator = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator if shuffle else None,
        num_workers=workers,
        collate_fn=collator,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    iterator = iter(loader)
    first = next(iterator)
    t1 = time.perf_counter()
    images, rest = first["pixel_values"].shape[0], 0
    for batch in iterator:
        assert batch["pixel_values"].shape[1:] == first["pixel_values"].shape[1:]
        rest += batch["pixel_values"].shape[0]
    t2 = time.perf_counter()
    del iterator  # workers are joined when the iterator is exhausted; their CPU time is then in RUSAGE_CHILDREN
    cpu = _cpu_seconds() - cpu0
    return {
        "images": images + rest,
        "wall_s": round(t2 - t0, 3),
        "first_batch_s": round(t1 - t0, 3),
        "cpu_s": round(cpu, 3),
        "images_per_s": round(rest / (t2 - t1), 1) if rest else None,
        "images_per_cpu_s": round((images + rest) / cpu, 1),
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
    datasets_by_source = {}
    for name in opts.sources:
        if name in SOURCES:
            dataset, image_column, label_column = SOURCES[name](opts.work_dir)
            datasets_by_source[name] = (dataset, image_column, label_column)
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
        "settings": {k: getattr(opts, k) for k in ("image_size", "batch_size", "rounds")},
        "runs": [],
    }
    for r in range(opts.rounds):
        order = configs[r % len(configs) :] + configs[: r % len(configs)]
        for source, workers in order:
            if source == "decode only":
                result = measure_decode_only(opts.work_dir, opts.image_size, opts.images)
            else:
                dataset, image_column, label_column = datasets_by_source[source]
                c = ImageClassificationCollator(opts.image_size, CLASSES, image_column=image_column)
                result = measure_loader(dataset, c, workers, opts.batch_size)
            result.update(source=source, workers=workers, round=r, load=round(os.getloadavg()[0], 2))
            record["runs"].append(result)
            print(json.dumps(result), flush=True)
    record["load_after"] = [round(x, 2) for x in os.getloadavg()]
    record["summary"] = summarise(record["runs"], configs)
    print(table(record["summary"]))
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
            "rounds": [r["images_per_cpu_s"] for r in mine],
        })  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| source | workers | images/s (wall) | images per CPU-s (per core) | cores for 711 images/s | per round (per core) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        rounds = " / ".join(f"{x:.1f}" for x in r["rounds"])
        lines.append(
            f"| {r['source']} | {r['workers']} | {r['images_per_s']:.1f} | {r['images_per_cpu_s']:.1f} | "
            f"{r['cores_for_paper_rate']:.1f} | {rounds} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
