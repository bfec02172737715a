"""Data loading, class names, image decoding and the collator (mmt_ard/data/), on tiny files written in tmp."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from mmt_ard.data import (
    BadSampleError,
    ImageClassificationCollator,
    decode_image,
    find_columns,
    load_image,
    load_image_dataset,
    open_image_source,
    prepare_dataset,
    read_class_names_file,
    read_skip_logs,
    resolve_class_names,
)
from mmt_ard.data.known_datasets import CLASS_NAMES, known_dataset

CLASSES = ["cat", "dog", "bird"]


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def rgb_image(size=(12, 10), seed=0) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def write_parquet(path, rows: list[dict]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "image": pa.array([r["image"] for r in rows], type=pa.binary()),
            "label": pa.array([r["label"] for r in rows], type=pa.int64()),
            "filename": pa.array([r.get("filename", f"img_{i}.png") for i, r in enumerate(rows)]),
        }
    )
    pq.write_table(table, str(path))
    return str(path)


def good_rows(n=6) -> list[dict]:
    return [{"image": png_bytes(rgb_image(seed=i)), "label": i % 3, "filename": f"img_{i}.png"} for i in range(n)]


@pytest.fixture
def parquet_file(tmp_path):
    return write_parquet(tmp_path / "train.parquet", good_rows())


class TestLoading:
    def test_parquet_file_map_style(self, parquet_file):
        ds = load_image_dataset(parquet_file, "train")
        assert len(ds) == 6 and set(ds.column_names) == {"image", "label", "filename"}

    def test_parquet_file_streaming(self, parquet_file, monkeypatch):
        import datasets

        monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)  # a 5 s sleep per shuffled stream

        ds = load_image_dataset(parquet_file, "train", streaming=True)
        assert isinstance(ds, datasets.IterableDataset)
        ds = prepare_dataset(ds, max_samples=4, seed=0)
        rows = list(ds)
        assert len(rows) == 4 and all("sample_id" in r for r in rows)
        batch = ImageClassificationCollator(8, CLASSES)(rows)
        assert batch["pixel_values"].shape == (4, 3, 8, 8)

    def test_arrow_file(self, tmp_path):
        import pyarrow as pa

        table = pa.table({"image": pa.array([png_bytes(rgb_image())], pa.binary()), "label": pa.array([2])})
        path = tmp_path / "data.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        ds = load_image_dataset(str(path), "train")
        assert len(ds) == 1 and ds[0]["label"] == 2

    def test_imagefolder_gives_classlabel_names(self, tmp_path):
        for name in ("ant", "bee"):
            (tmp_path / "train" / name).mkdir(parents=True)
            for i in range(2):
                rgb_image(seed=i).save(tmp_path / "train" / name / f"{i}.png")
        ds = load_image_dataset(str(tmp_path), "train")
        assert resolve_class_names(ds, "label") == ["ant", "bee"]
        ds = prepare_dataset(ds, "image", "label")
        batch = ImageClassificationCollator(16, ["ant", "bee"])([ds[i] for i in range(len(ds))])
        assert batch["pixel_values"].shape == (4, 3, 16, 16)
        assert sorted(batch["labels"].tolist()) == [0, 0, 1, 1]

    def test_save_to_disk_folder(self, tmp_path):
        import datasets

        ds = datasets.Dataset.from_dict({"image": [png_bytes(rgb_image())], "label": [1]})
        datasets.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "saved"))
        assert len(load_image_dataset(str(tmp_path / "saved"), "validation")) == 1
        with pytest.raises(ValueError, match="Split 'train' is not in"):
            load_image_dataset(str(tmp_path / "saved"), "train")

    def test_bad_sources(self, tmp_path):
        with pytest.raises(FileNotFoundError):
            load_image_dataset(["/nonexistent/x.parquet"], "train")
        (tmp_path / "a.csv").write_text("x\n1\n")
        with pytest.raises(ValueError, match="parquet"):
            load_image_dataset(str(tmp_path / "a.csv"), "train")
        with pytest.raises(FileNotFoundError, match="does not exist"):
            load_image_dataset("./no/such/dir", "train")


class TestClassNames:
    def test_sources_and_priority(self, tmp_path, parquet_file):
        ds = load_image_dataset(parquet_file, "train")
        with pytest.raises(ValueError, match="--class_names"):
            resolve_class_names(ds, "label")
        assert resolve_class_names(ds, "label", class_names=["a", "b"]) == ["a", "b"]
        assert resolve_class_names(ds, "label", class_names=["a,b , c"]) == ["a", "b", "c"]
        txt = tmp_path / "names.txt"
        txt.write_text("cat\ndog\n\nbird\n")
        assert resolve_class_names(ds, "label", class_names_file=str(txt)) == CLASSES
        sidecar = tmp_path / "meta.json"  # the JSON sidecar layout of shared/data: {"classes": [...]}
        sidecar.write_text(json.dumps({"name": "x", "classes": CLASSES}))
        assert read_class_names_file(str(sidecar)) == CLASSES
        (tmp_path / "list.json").write_text(json.dumps(CLASSES))
        assert read_class_names_file(str(tmp_path / "list.json")) == CLASSES

    def test_count_must_match_classlabel(self):
        import datasets

        ds = datasets.Dataset.from_dict(
            {"label": [0, 1]}, features=datasets.Features({"label": datasets.ClassLabel(names=["x", "y"])})
        )
        assert resolve_class_names(ds, "label") == ["x", "y"]
        assert resolve_class_names(ds, "label", class_names=["p", "q"]) == ["p", "q"]
        with pytest.raises(ValueError, match="ClassLabel with 2 classes"):
            resolve_class_names(ds, "label", class_names=["p", "q", "r"])


class TestOneLoader:
    """`open_image_source`: what training and evaluation both read (columns, class names, known datasets)."""

    def test_sidecar_names_a_parquet_file_without_classlabel(self, tmp_path):
        path = write_parquet(tmp_path / "cifar10.parquet", good_rows())
        (tmp_path / "cifar10.json").write_text(json.dumps({"name": "CIFAR-10", "classes": CLASSES}))
        source = open_image_source(path, "test")
        assert (source.class_names, source.class_names_source) == (CLASSES, "sidecar")
        assert (source.name, source.known, source.format) == ("cifar10", "cifar10", "parquet")
        assert (source.image_column, source.label_column) == ("image", "label") and len(source.dataset) == 6
        # explicit names win over the sidecar; a names file too
        assert open_image_source(path, class_names=["a", "b", "c"]).class_names_source == "class_names"

    def test_known_name_supplies_class_names_when_the_data_have_none(self, tmp_path):
        path = write_parquet(tmp_path / "cifar10_test.parquet", good_rows())  # the shared/data naming, no sidecar
        source = open_image_source(path)
        assert source.known == "cifar10" and source.class_names_source == "built-in"
        assert source.class_names == list(CLASS_NAMES["cifar10"])
        plain = open_image_source(write_parquet(tmp_path / "mine.parquet", good_rows()))
        assert plain.known is None and plain.class_names is None
        with pytest.raises(ValueError, match="JSON sidecar"):
            resolve_class_names(plain.dataset, "label")

    def test_known_dataset_matching(self):
        assert known_dataset("cifar10") == "cifar10" and known_dataset("CIFAR-100") == "cifar100"
        assert known_dataset("cifar10_test") == "cifar10" and known_dataset("imagenet-r") == "imagenet-r"
        assert known_dataset("clip-benchmark/wds_vtab-pets") == "pets"
        assert known_dataset("digits") is None and known_dataset("") is None and known_dataset("cifar") is None

    def test_folder_of_parquet_files_with_sidecars_and_splits(self, tmp_path):
        folder = tmp_path / "data"
        folder.mkdir()
        write_parquet(folder / "train-00000-of-00001.parquet", good_rows(6))
        write_parquet(folder / "test-00000-of-00001.parquet", good_rows(3))
        (folder / "test-00000-of-00001.json").write_text(json.dumps({"classes": CLASSES}))
        test = open_image_source(str(folder), "test")
        assert len(test.dataset) == 3 and test.class_names == CLASSES  # the JSON file is not read as data
        assert len(load_image_dataset(str(folder), "train")) == 6
        with pytest.raises(ValueError, match="Split 'validation' is not in"):
            load_image_dataset(str(folder), "validation", any_split=True)  # two splits: no guessing

    def test_single_split_folder_serves_any_split_when_asked(self, tmp_path):
        for name in ("ant", "bee"):
            (tmp_path / "imgs" / name).mkdir(parents=True)
            rgb_image().save(tmp_path / "imgs" / name / "0.png")
        with pytest.raises(ValueError, match="Split 'test' is not in"):
            load_image_dataset(str(tmp_path / "imgs"), "test")  # training: a missing split is an error
        source = open_image_source(str(tmp_path / "imgs"), "test", any_split=True)
        assert source.format == "imagefolder" and source.class_names == ["ant", "bee"]
        assert source.class_names_source == "folder names"
        (tmp_path / "empty").mkdir()
        with pytest.raises(ValueError, match="no parquet file"):
            load_image_dataset(str(tmp_path / "empty"), "train")

    def test_find_columns(self):
        import datasets

        ds = datasets.Dataset.from_dict({"img": [b"x"], "fine_label": [0], "other": [1]})
        assert find_columns(ds) == ("img", "fine_label")
        with pytest.raises(ValueError, match="--image_column"):
            find_columns(ds, image_column="image")
        with pytest.raises(ValueError, match="need an image column"):
            find_columns(datasets.Dataset.from_dict({"x": [1]}))

    def test_decode_keeps_encoded_images_in_uint8(self):
        image = rgb_image((16, 16))
        pixels = decode_image(png_bytes(image), 16)
        assert pixels.dtype == torch.uint8 and torch.equal(pixels, torch.from_numpy(np.array(image)).permute(2, 0, 1))
        assert torch.equal(load_image(png_bytes(image), 16), pixels.float() / 255)
        floats = torch.rand(3, 16, 16)
        assert torch.equal(decode_image(floats, 16), floats)


class TestPrepare:
    def test_subset_is_seeded_and_keeps_source_ids(self, parquet_file):
        ds = load_image_dataset(parquet_file, "train")
        a = prepare_dataset(ds, max_samples=3, seed=1)
        b = prepare_dataset(ds, max_samples=3, seed=1)
        assert len(a) == 3 and a["sample_id"] == b["sample_id"]
        assert set(a.column_names) == {"image", "label", "filename", "sample_id"}
        assert prepare_dataset(ds)["sample_id"] == list(range(6))

    def test_streamed_ids_are_one_per_row_across_files_passes_and_processes(self, tmp_path, monkeypatch):
        """Two parquet files streamed through `datasets`: every row keeps one `sample_id`, unique over both files,
        whatever the shuffle, the pass (`set_epoch` reorders the files) or the process reading it: the teacher cache
        and the bad-sample counts key on it."""
        import datasets
        from datasets.distributed import split_dataset_by_node

        monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)  # a 5 s sleep per shuffled stream
        rows = good_rows(8)
        files = [write_parquet(tmp_path / f"part{k}.parquet", rows[4 * k : 4 * k + 4]) for k in range(2)]
        stream = load_image_dataset(files, "train", streaming=True)
        assert stream.n_shards == 2

        def ids(ds):
            return sorted((r["filename"], r["sample_id"]) for r in ds)

        ordered = prepare_dataset(stream, shuffle=False)
        reference = ids(ordered)
        assert [name for name, _ in reference] == sorted(r["filename"] for r in rows)
        assert len({i for _, i in reference}) == 8
        shuffled = prepare_dataset(stream, seed=0)  # interleaves the files (training's default)
        assert ids(shuffled) == reference
        ordered.set_epoch(3)  # the pass whose seed reads part1 before part0
        shuffled.set_epoch(3)
        assert ids(ordered) == reference and ids(shuffled) == reference
        ordered.set_epoch(0)
        by_rank = [ids(split_dataset_by_node(ordered, rank=r, world_size=2)) for r in range(2)]  # one file each
        assert by_rank[0] and by_rank[1] and sorted(by_rank[0] + by_rank[1]) == reference

    def test_missing_column_and_bad_max(self, parquet_file):
        ds = load_image_dataset(parquet_file, "train")
        with pytest.raises(ValueError, match="no column \\['img'\\]"):
            prepare_dataset(ds, image_column="img")
        with pytest.raises(ValueError, match="max_samples"):
            prepare_dataset(ds, max_samples=0)

    def test_image_feature_stays_encoded(self, tmp_path):
        import datasets

        rgb_image().save(tmp_path / "a.png")
        ds = datasets.Dataset.from_dict({"image": [str(tmp_path / "a.png")], "label": [0]}).cast_column(
            "image", datasets.Image()
        )
        ds = prepare_dataset(ds)
        assert isinstance(ds[0]["image"], dict) and ds[0]["image"]["path"].endswith("a.png")


class TestDecoding:
    @pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "F", "1"])
    def test_modes_become_rgb_in_unit_range(self, mode):
        base = rgb_image((9, 7))
        image = base.convert(mode) if mode not in ("I;16", "I", "F") else base.convert("L").convert(mode)
        fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode in ("I", "F") else "PNG")
        out = load_image(png_bytes(image, fmt), 16)
        assert out.shape == (3, 16, 16) and out.dtype == torch.float32
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0

    def test_grayscale_16bit_scaled(self):
        arr = np.full((4, 4), 65535, dtype=np.uint16)
        out = load_image(png_bytes(Image.fromarray(arr)), 4)
        assert torch.allclose(out, torch.ones_like(out))

    def test_resize_shorter_side_then_centre_crop(self):
        arr = np.zeros((10, 30, 3), dtype=np.uint8)
        arr[:, 10:20] = 255  # a white centre band one third wide
        out = load_image(Image.fromarray(arr), 10)
        assert out.shape == (3, 10, 10)
        assert float(out.mean()) > 0.95  # the crop is the white centre

    def test_small_image_upsampled(self):
        out = load_image(png_bytes(rgb_image((3, 2))), 32)
        assert out.shape == (3, 32, 32)

    def test_arrays_and_tensors(self):
        hwc = np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8)
        out = load_image(hwc, 6)
        assert torch.allclose(out, torch.from_numpy(hwc).permute(2, 0, 1).float() / 255)
        chw = torch.rand(3, 8, 8)
        assert torch.equal(load_image(chw, 8), chw)
        assert load_image(torch.rand(1, 8, 8), 4).shape == (3, 4, 4)

    def test_paths_and_dicts(self, tmp_path):
        rgb_image().save(tmp_path / "x.png")
        assert load_image(str(tmp_path / "x.png"), 5).shape == (3, 5, 5)
        assert load_image({"bytes": None, "path": str(tmp_path / "x.png")}, 5).shape == (3, 5, 5)


class TestCollator:
    def test_batch_contract(self, parquet_file):
        ds = prepare_dataset(load_image_dataset(parquet_file, "train"))
        batch = ImageClassificationCollator(24, CLASSES)([ds[i] for i in range(4)])
        assert batch["pixel_values"].shape == (4, 3, 24, 24) and batch["pixel_values"].dtype == torch.float32
        assert batch["labels"].tolist() == [0, 1, 2, 0] and batch["labels"].dtype == torch.long
        assert batch["sample_id"].tolist() == [0, 1, 2, 3]
        assert 0 <= float(batch["pixel_values"].min()) and float(batch["pixel_values"].max()) <= 1

    def test_string_labels_map_to_ids(self):
        c = ImageClassificationCollator(4, CLASSES)
        batch = c([{"image": rgb_image(), "label": "bird"}, {"image": rgb_image(), "label": "1"}])
        assert batch["labels"].tolist() == [2, 1]

    def _bad_rows(self):
        png = png_bytes(rgb_image((20, 20)))
        return [
            {"image": png, "label": 0, "filename": "ok.png"},
            {"image": b"not an image at all", "label": 1, "filename": "corrupt.png"},
            {"image": png[: len(png) // 2], "label": 1, "filename": "truncated.png"},
            {"image": png, "label": 7, "filename": "label7.png"},
            {"image": png, "label": -1, "filename": "negative.png"},
            {"image": None, "label": 0, "filename": "missing.png"},
            {"image": png, "label": "zebra", "filename": "zebra.png"},
        ]

    @pytest.mark.parametrize(
        "index, pattern",
        [
            (1, "corrupt.png.*UnidentifiedImageError"),
            (2, "truncated.png"),
            (3, "label 7 is outside the 3 classes"),
            (4, "label -1 is outside"),
            (5, "missing.png.*missing"),
            (6, "'zebra' is not one of the 3 class names"),
        ],
    )
    def test_raise_names_the_sample(self, index, pattern):
        rows = self._bad_rows()
        collate = ImageClassificationCollator(8, CLASSES, bad_samples="raise")
        example = dict(rows[index], sample_id=index)
        with pytest.raises(BadSampleError, match=f"sample_id={index}.*{pattern}"):
            collate([dict(rows[0], sample_id=0), example])

    def test_skip_counts_and_logs(self, caplog):
        rows = [dict(r, sample_id=i) for i, r in enumerate(self._bad_rows())]
        collate = ImageClassificationCollator(8, CLASSES, bad_samples="skip")
        with caplog.at_level(logging.WARNING, logger="mmt_ard.data"):
            batch = collate(rows)
        assert batch["sample_id"].tolist() == [0]
        assert collate.num_skipped == 6 and len(collate.skipped) == 6
        assert "corrupt.png" in caplog.text and "6 skipped so far" in caplog.text

    def test_skip_counts_each_sample_once_and_logs_it_to_a_file(self, tmp_path):
        rows = [dict(r, sample_id=i) for i, r in enumerate(self._bad_rows())]
        log = tmp_path / "skips.jsonl"
        collate = ImageClassificationCollator(8, CLASSES, bad_samples="skip", skip_log=str(log))
        for _ in range(3):  # three epochs over the same samples
            collate(rows)
        assert collate.num_skipped == 6
        # a copy in a DataLoader worker (or another rank) appends to its own log; the merge counts each sample once
        worker = ImageClassificationCollator(8, CLASSES, bad_samples="skip", skip_log=str(tmp_path / "w.jsonl"))
        worker(rows[:3])
        merged = read_skip_logs([str(log), str(tmp_path / "w.jsonl")])
        assert len(log.read_text().splitlines()) == 6 and len(merged) == 6
        assert any("corrupt.png" in name for name in merged) and all(merged.values())
        assert "sample_id=3" in " ".join(merged)

    def test_skips_without_any_identity_are_counted_per_read(self):
        collate = ImageClassificationCollator(8, CLASSES, bad_samples="skip")
        good = {"image": png_bytes(rgb_image()), "label": 0}
        for _ in range(2):
            collate([good, {"image": b"junk", "label": 0}])
        assert collate.num_skipped == 2  # nothing tells the two reads apart: both count

    def test_all_bad_batch_raises_even_when_skipping(self):
        collate = ImageClassificationCollator(8, CLASSES, bad_samples="skip")
        with pytest.raises(BadSampleError, match="Every one of the 1 samples"):
            collate([{"image": b"junk", "label": 0}])

    def test_parquet_with_bad_rows_end_to_end(self, tmp_path):
        rows = good_rows(3) + [
            {"image": b"\x89PNG broken", "label": 0, "filename": "broken.png"},
            {"image": png_bytes(rgb_image()), "label": 9, "filename": "nine.png"},
        ]
        ds = prepare_dataset(load_image_dataset(write_parquet(tmp_path / "bad.parquet", rows), "train"))
        examples = [ds[i] for i in range(len(ds))]
        with pytest.raises(BadSampleError, match="sample_id=3 \\(filename='broken.png'\\)"):
            ImageClassificationCollator(8, CLASSES)(examples)
        skip = ImageClassificationCollator(8, CLASSES, bad_samples="skip")
        assert skip(examples)["labels"].shape == (3,) and skip.num_skipped == 2

    def test_constructor_checks(self):
        with pytest.raises(ValueError, match="bad_samples"):
            ImageClassificationCollator(8, CLASSES, bad_samples="ignore")
        with pytest.raises(ValueError, match="image_size"):
            ImageClassificationCollator(0, CLASSES)

    def test_missing_key_is_a_configuration_error(self):
        with pytest.raises(KeyError, match="--image_column"):
            ImageClassificationCollator(8, CLASSES, image_column="img")([{"image": rgb_image(), "label": 0}])
