"""Streamed training resumes from a saved position, exactly and without replay (`mmt_ard.data.stream`,
`mmt_ard.training.stream_resume`).

Runs are `stream_helper.py`'s: 40 digits as parquet (4 row groups) or webdataset shards (4 tars), batch 8, 8 steps,
checkpoints at steps 3 and 6. With 2 DataLoader workers each worker reads 20 rows per pass, so checkpoint-3 lies
inside the first pass and checkpoint-6 after it. A resumed run must end bit-identical to the run it was cut from.
"""

import json
import os
import shutil
import time

import pytest
import stream_helper as helper
from transformers import TrainerCallback

from mmt_ard.data.stream import POSITION_KEY, ShardedStream, rows_read

TOL = 0.0  # bit-identical


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream_data")
    return {
        "parquet": helper.write_data(str(root / "parquet"), "parquet"),
        "webdataset": helper.write_data(str(root / "wds"), "webdataset"),
        "webdataset_json": helper.write_data(str(root / "wds_json"), "webdataset", label_json=True),
    }


# ---- the stream itself: seeking, splitting, passes ----
class TestShardedStream:
    @pytest.mark.parametrize("kind", ["parquet", "webdataset"])
    def test_a_saved_position_continues_the_stream_exactly(self, data, kind):
        stream = helper.make_stream(data[kind], kind)
        it = stream.slot_examples(0)
        ids = []
        examples = [next(it) for _ in range(100)]  # 2.5 passes over the 40 rows
        ids = [ex["sample_id"] for ex in examples]
        for cut in (1, 7, 8, 39, 40, 41, 63):  # inside windows, at window and piece ends, in later passes
            resumed = stream.slot_examples(0, examples[cut - 1][POSITION_KEY][1:])
            assert [next(resumed)["sample_id"] for _ in range(20)] == ids[cut : cut + 20], cut

    def test_each_pass_reads_every_row_once_in_a_new_order(self, data):
        stream = helper.make_stream(data["parquet"], "parquet")
        it = stream.slot_examples(0)
        passes = [[next(it)["sample_id"] for _ in range(40)] for _ in range(3)]
        assert all(sorted(p) == list(range(40)) for p in passes)
        assert passes[0] != passes[1] != passes[2]

    @pytest.mark.parametrize("kind", ["parquet", "webdataset"])
    @pytest.mark.parametrize("world_size, workers", [(2, 2), (1, 2), (3, 2)])
    def test_readers_share_no_sample_and_miss_none(self, data, kind, world_size, workers):
        """2x2 readers split the 4 pieces; 1x2 split them 2+2; 3x2 (more readers than pieces) stride over them."""
        per_slot = {}
        for rank in range(world_size):
            stream = helper.make_stream(data[kind], kind).for_process(rank, world_size, workers)
            for slot in stream.slots_of_process():
                it = stream.slot_examples(slot)
                first = next(it)
                seen = [first["sample_id"]]
                while True:  # one pass of this slot
                    ex = next(it)
                    if ex[POSITION_KEY][1] > 0:
                        break
                    seen.append(ex["sample_id"])
                per_slot[slot] = seen
        everything = [i for seen in per_slot.values() for i in seen]
        assert len(everything) == len(set(everything)) == 40  # disjoint, and all 40 read in a pass

    def test_windows_run_across_piece_ends(self, data):
        """Rows are shuffled in windows of 8 over the pieces (row groups of 10) in a row: the second window of a
        pass holds the end of one piece and the start of the next (sorted data gets mixed across pieces)."""
        stream = helper.make_stream(data["parquet"], "parquet")
        it = stream.slot_examples(0)
        second_window = [next(it) for _ in range(16)][8:]
        assert len({ex["sample_id"] // 10 for ex in second_window}) == 2

    def test_resume_reads_at_most_one_window(self, data):
        stream = helper.make_stream(data["webdataset"], "webdataset")
        it = stream.slot_examples(0)
        position = [next(it) for _ in range(77)][-1][POSITION_KEY][1:]  # in the second pass
        before = rows_read()
        next(stream.slot_examples(0, position))
        assert rows_read() - before <= helper.WINDOW

    def test_bad_label_names_the_shard_and_key(self, data, tmp_path):
        from mmt_ard.data import BadSampleError, ImageClassificationCollator

        png, _ = helper.digit_pngs(1)[0]
        shard = helper.write_tar(str(tmp_path / "bad.tar"), [("sample-7", {"png": png, "cls": b"12"})])
        example = next(ShardedStream([shard], "webdataset", shuffle=False).slot_examples(0))
        with pytest.raises(BadSampleError) as err:
            ImageClassificationCollator(16, helper.DIGIT_NAMES)([example])
        assert f"{shard}#sample-7" in str(err.value) and "outside the 10 classes" in str(err.value)
        skip = ImageClassificationCollator(16, helper.DIGIT_NAMES, bad_samples="skip")
        good = next(ShardedStream(data["webdataset"], "webdataset").slot_examples(0))
        assert skip([example, good])["labels"].shape == (1,) and skip.num_skipped == 1


# ---- training: exact resume from a position, in every pass, with workers ----
@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """Uninterrupted 8-step runs (2 workers) that leave checkpoint-3 and checkpoint-6 behind, per data kind."""
    out = {}
    for kind, files in (("parquet", data["parquet"]), ("webdataset", data["webdataset_json"])):
        label_json = kind == "webdataset"
        folder = str(tmp_path_factory.mktemp(f"run_{kind}"))
        trainer = helper.build_trainer(folder, helper.make_stream(files, kind, label_json), workers=2)
        trainer.train()
        out[kind] = {"dir": folder, "state": helper.final_state(trainer), "files": files, "label_json": label_json}
    return out


def _resume(run: dict, kind: str, checkpoint: str, tmp_path, workers: int = 2, drop=(), callbacks=()):
    target = tmp_path / "resumed" / checkpoint
    shutil.copytree(os.path.join(run["dir"], checkpoint), target)
    for name in drop:
        os.remove(target / name)
    stream = helper.make_stream(run["files"], kind, run["label_json"])
    trainer = helper.build_trainer(str(tmp_path / "resumed"), stream, workers=workers, callbacks=callbacks)
    trainer.train(resume_from_checkpoint=str(target))
    return trainer


@pytest.mark.parametrize(
    "kind, checkpoint",
    [("parquet", "checkpoint-6"), ("webdataset", "checkpoint-3"), ("webdataset", "checkpoint-6")],
)
def test_streamed_resume_is_exact_in_every_pass(runs, kind, checkpoint, tmp_path):
    run = runs[kind]
    with open(os.path.join(run["dir"], checkpoint, "data_state_rank0.json")) as f:
        saved = json.load(f)
    assert saved["num_workers"] == 2 and set(saved["positions"]) == {"0", "1"}
    passes = {p[0] for p in saved["positions"].values()}
    assert passes == ({0} if checkpoint == "checkpoint-3" else {1})  # checkpoint-6: both readers in pass 2
    trainer = _resume(run, kind, checkpoint, tmp_path)
    assert trainer.state.global_step == helper.MAX_STEPS
    diff = max_abs_diff(helper.final_state(trainer), run["state"])
    print(f"{kind} resume from {checkpoint} (2 workers): max |w - w_ref| = {diff:.3g}")
    assert diff <= TOL


def test_exactness_depends_on_the_saved_position(runs, tmp_path):
    """Control: the same checkpoint with the readers' turn swapped (`next_slot`) ends elsewhere, so the exactness
    above comes from the saved positions, not from data the resumed run would read anyway."""
    run = runs["webdataset"]
    target = tmp_path / "resumed" / "checkpoint-3"
    shutil.copytree(os.path.join(run["dir"], "checkpoint-3"), target)
    state = json.loads((target / "data_state_rank0.json").read_text())
    state["next_slot"] = 1 - state["next_slot"]
    (target / "data_state_rank0.json").write_text(json.dumps(state))
    stream = helper.make_stream(run["files"], "webdataset", run["label_json"])
    trainer = helper.build_trainer(str(tmp_path / "resumed"), stream, workers=2)
    trainer.train(resume_from_checkpoint=str(target))
    assert max_abs_diff(helper.final_state(trainer), run["state"]) > 1e-6


def test_a_checkpoint_without_a_position_resumes_by_replay_with_a_warning(runs, tmp_path, caplog):
    """A checkpoint of today's format (no data_state file) still resumes: by replay, which here is exact too."""
    with caplog.at_level("WARNING"):
        trainer = _resume(runs["parquet"], "parquet", "checkpoint-6", tmp_path, drop=["data_state_rank0.json"])
    assert "holds no data position" in caplog.text and "replay" in caplog.text
    assert max_abs_diff(helper.final_state(trainer), runs["parquet"]["state"]) <= TOL


def test_a_position_saved_for_other_workers_is_not_used(runs, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        trainer = _resume(runs["parquet"], "parquet", "checkpoint-6", tmp_path, workers=0)
    assert "num_workers 2 -> 0" in caplog.text and "replay" in caplog.text
    assert trainer.state.global_step == helper.MAX_STEPS


# ---- the time before the first new step does not grow with the steps done ----
class FirstStep(TrainerCallback):
    """What had been decoded and read, and how long it took, when the first step of a `train()` began."""

    def __init__(self):
        self.start = time.perf_counter()
        self.decoded0, self.read0 = helper.CountingCollator.decoded, rows_read()
        self.seen = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.seen is None:
            self.seen = {
                "decoded": helper.CountingCollator.decoded - self.decoded0,
                "read": rows_read() - self.read0,
                "seconds": time.perf_counter() - self.start,
            }


def test_time_before_the_first_step_does_not_grow_with_the_steps_done(data, tmp_path):
    """In-process (0 workers, so the counters see every read): resuming at step 3 and at step 6 decodes one batch and
    reads a bounded number of rows before training (the window it stopped in, re-read, and the next one if the first
    batch reaches into it: at most 2 windows + a batch, whatever the step); a replay decodes every batch done."""
    files = data["webdataset"]
    ref_dir = str(tmp_path / "reference")
    helper.build_trainer(ref_dir, helper.make_stream(files, "webdataset"), workers=0).train()
    seen = {}
    for checkpoint, drop in (("checkpoint-3", ()), ("checkpoint-6", ()), ("checkpoint-6", ["data_state_rank0.json"])):
        first = FirstStep()
        run = {"dir": ref_dir, "files": files, "label_json": False}
        label = checkpoint + (" replay" if drop else "")
        _resume(run, "webdataset", checkpoint, tmp_path / label.replace(" ", "_"), 0, drop, [first])
        seen[label] = first.seen
    print("before the first new step:", seen)
    batch, window = helper.BATCH, helper.WINDOW
    for label in ("checkpoint-3", "checkpoint-6"):
        assert seen[label]["decoded"] == batch  # the first new batch, nothing replayed
        assert seen[label]["read"] <= 2 * window + batch
    assert seen["checkpoint-6 replay"]["decoded"] == 7 * batch  # 6 batches replayed, then the new one


def test_map_style_resume_decodes_nothing_already_done(tmp_path):
    """Map-style data: the Trainer skips the done batches in the sampler (indices), no image is decoded again."""
    import datasets

    rows = helper.digit_pngs()
    ds = datasets.Dataset.from_dict({"image": [p for p, _ in rows], "label": [y for _, y in rows]})
    out = tmp_path / "map"
    trainer = helper.build_trainer(str(out), None, workers=0, train_dataset=ds)
    trainer.train()
    reference = helper.final_state(trainer)
    decoded = {}
    for checkpoint in ("checkpoint-3", "checkpoint-6"):  # in epoch 0 and in epoch 1 (5 steps per epoch)
        first = FirstStep()
        resumed = helper.build_trainer(str(out), None, workers=0, train_dataset=ds, callbacks=[first])
        resumed.train(resume_from_checkpoint=str(out / checkpoint))
        decoded[checkpoint] = first.seen["decoded"]
        assert max_abs_diff(helper.final_state(resumed), reference) <= TOL
    # the first new batch and the one Accelerate's loader reads ahead, at either point: nothing replayed
    assert decoded == {"checkpoint-3": 2 * helper.BATCH, "checkpoint-6": 2 * helper.BATCH}


def test_a_hub_parquet_dataset_streams_from_its_data_files(data, monkeypatch, tmp_path):
    """`--dataset_name <hub id> --streaming`: the Hub dataset's own parquet files (what `datasets` would stream) are
    read as a `ShardedStream`; `datasets`' builder lookup and loading are pointed at local copies (no network)."""
    from types import SimpleNamespace

    import datasets

    from mmt_ard.cli.train_args import parse_args
    from mmt_ard.pipeline.inputs import load_training_data

    files, real_load = data["parquet"], datasets.load_dataset

    def load_dataset(path, *args, **kwargs):
        if path == "someone/digits":
            return real_load("parquet", data_files={"train": files}, split="train", streaming=kwargs["streaming"])
        return real_load(path, *args, **kwargs)

    def load_dataset_builder(path, name=None, **kwargs):
        assert path == "someone/digits"
        return SimpleNamespace(name="parquet", config=SimpleNamespace(data_files={"train": files}))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(datasets, "load_dataset_builder", load_dataset_builder)
    argv = ["--student", "s", "--dataset_name", "someone/digits", "--streaming", "true", "--max_steps", "4"]
    argv += ["--eval_split", "none", "--class_names", *helper.DIGIT_NAMES, "--output_dir", str(tmp_path), "--use_cpu"]
    script_args, config, _ = parse_args(argv)
    train, evaluation, names = load_training_data(script_args, config)
    assert isinstance(train, ShardedStream) and (train.files, train.kind) == (files, "parquet")
    assert len(train.pieces) == 4 and names == helper.DIGIT_NAMES and evaluation is None


def test_streamed_resume_with_gradient_accumulation_is_exact(data, tmp_path):
    """2 batches per step, 2 workers: checkpoint-3 (6 batches, 24 rows per worker: the second pass) resumes exactly."""
    files, settings = data["webdataset"], {"gradient_accumulation_steps": 2, "max_steps": 5}
    reference = helper.build_trainer(str(tmp_path / "ga"), helper.make_stream(files, "webdataset"), **settings)
    reference.train()
    state = json.loads((tmp_path / "ga" / "checkpoint-3" / "data_state_rank0.json").read_text())
    assert {p[0] for p in state["positions"].values()} == {1}
    resumed = helper.build_trainer(str(tmp_path / "ga_resumed"), helper.make_stream(files, "webdataset"), **settings)
    resumed.train(resume_from_checkpoint=str(tmp_path / "ga" / "checkpoint-3"))
    assert max_abs_diff(helper.final_state(resumed), helper.final_state(reference)) <= TOL
