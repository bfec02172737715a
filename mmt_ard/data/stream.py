"""`ShardedStream`: training data read as a stream that can resume from a saved position, without replay, exactly.

Why not `datasets`' streaming `IterableDataset`: its `state_dict()` records the shard and the row, but not the
content of its shuffle buffer (`load_state_dict` warns that the buffer is refilled), so a resumed run sees other
samples than an uninterrupted one; and the Trainer resumes a stream by reading and decoding every batch already
done. torchdata's `StatefulDataLoader` (Accelerate's `use_stateful_dataloader`) would save the same dataset state,
with the same buffer problem (and transformers' Trainer does not save a loader's state at all); Accelerate also
dispatches an iterable dataset from rank 0 by default, so one process would read and decode for all. The order here
is instead built to be seekable, and each process reads its own part:

* the data files are cut into **pieces** that can be opened at any row without reading what comes before: a parquet
  row group, a record batch of an arrow file, a webdataset tar (whose headers let a reader step over the bytes of
  earlier samples);
* the pieces are dealt out once to the **slots**, one slot per (process, DataLoader worker): slot
  `rank * num_workers + worker` reads pieces `slot, slot + S, slot + 2S, ...` (S slots). With fewer pieces than
  slots every slot reads all pieces and keeps every S-th sample (a warning says so; write more shards);
* each slot reads its pieces pass after pass without end (`max_steps` ends training): pass `p` visits them in an
  order drawn from `(seed, p)`, cut into windows of `shuffle_window` consecutive rows (across piece ends, so a
  window of class-sorted files mixes several pieces), each window permuted by `(seed, p, piece, row)` of its
  start. Every sample of a slot is read once per pass; slots never share a sample;
* the **position** of a slot is `(pass, piece number in the pass's order, row, taken)`: where its current window
  starts and how many of the window's examples are done. Every batch carries the position after its last sample
  (`stream_position`, stripped by the trainer), so a checkpoint stores where each slot of each process stands.
  Resuming opens that piece at that row, re-reads the one window (bytes, nothing decoded) and goes on: the time
  before the first new step does not depend on how many steps were done.

A DataLoader over a stream with W workers hands out batches round-robin, batch `t` from worker `t % W`, each batch
made of one worker's samples; so the batches, and therefore the run, are a function of the seed, the files, the
batch size, the number of processes and the number of workers. A resume with other numbers of processes or
workers than the checkpoint's is refused by the trainer (it replays instead, with a warning).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .sources import ID_COLUMN, NAME_COLUMNS
from .webdataset import iter_tar_samples, tar_example

logger = logging.getLogger(__name__)

POSITION_KEY = "stream_position"  # (5,) int64 in every batch: slot, pass, piece number, window row, taken
STREAM_FORMATS = ("parquet", "arrow", "webdataset")
_STATS = {"rows_read": 0}  # rows read in this process (tests count what a resume reads)


@dataclass(frozen=True)
class Piece:
    """A part of a data file that can be opened at any row: a parquet row group, an arrow record batch, a tar.

    Args:
        path: the file.
        kind: `parquet`, `arrow` or `webdataset`.
        index: the row group / record batch number (0 for a tar).
        first_row: the row index of its first row in the whole data (parquet/arrow; the `sample_id`), or None.
        rows: its number of rows (None for a tar: not counted ahead).
    """

    path: str
    kind: str
    index: int
    first_row: int | None
    rows: int | None


def list_pieces(files: Sequence[str], kind: str) -> list[Piece]:
    """The pieces of `files` in order (file metadata only: parquet footers, arrow batch headers, nothing for tars)."""
    pieces, row = [], 0
    for path in files:
        if kind == "parquet":
            meta = _parquet_file(path).metadata
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                pieces.append(Piece(path, kind, g, row, n))
                row += n
        elif kind == "arrow":
            for b, n in enumerate(_arrow_batch_rows(path)):
                pieces.append(Piece(path, kind, b, row, n))
                row += n
        elif kind == "webdataset":
            pieces.append(Piece(path, kind, 0, None, None))
        else:
            raise ValueError(f"`kind`={kind!r}: a stream reads {list(STREAM_FORMATS)} files.")
    return pieces


def _parquet_file(path: str):
    """A `pyarrow.parquet.ParquetFile` of a local path or an fsspec URL (`hf://datasets/...`: Hub data files)."""
    import pyarrow.parquet as pq

    if "://" in path:
        import fsspec

        return pq.ParquetFile(fsspec.open(path, "rb").open())
    return pq.ParquetFile(path)


def _arrow_reader(source):
    import pyarrow as pa

    try:
        return pa.ipc.open_stream(source)  # what `datasets` writes
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_file(source)


def _arrow_batches(path: str):
    import pyarrow as pa

    with pa.memory_map(path) as source:
        reader = _arrow_reader(source)
        if hasattr(reader, "num_record_batches"):  # the file format
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)
        else:
            yield from reader


def _arrow_batch_rows(path: str) -> list[int]:
    return [batch.num_rows for batch in _arrow_batches(path)]


class ShardedStream(torch.utils.data.IterableDataset):
    """An endless, seekable stream of training examples over parquet / arrow / webdataset files (module docstring).

    Args:
        files: the data files, all of one `kind`.
        kind: `parquet`, `arrow` or `webdataset`.
        image_column: the key of the image in the examples (and its column in parquet/arrow files).
        label_column: the key of the label (and its column in parquet/arrow files; tars: from `.cls`).
        label_json_field: tars: take the label from this field of the sample's `.json` instead of `.cls`.
        seed: seeds the pass orders and the window shuffles.
        shuffle: shuffle (pieces per pass, rows in windows); False reads the files in order.
        shuffle_window: rows per shuffled window (bounds what a resume re-reads, and memory: one window per worker).
        max_samples: use only the first this-many rows of the files (parquet/arrow; tars: give fewer shards).
        features: the `datasets.Features` of the rows, if known (class names from a `ClassLabel`).
    """

    def __init__(
        self,
        files: Sequence[str],
        kind: str,
        image_column: str = "image",
        label_column: str = "label",
        *,
        label_json_field: str | None = None,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_window: int = 10_000,
        max_samples: int | None = None,
        features=None,
    ):
        if kind not in STREAM_FORMATS:
            raise ValueError(f"`kind`={kind!r}: a stream reads {list(STREAM_FORMATS)} files.")
        if int(shuffle_window) < 1:
            raise ValueError(f"`shuffle_window`={shuffle_window}: give a positive number of rows.")
        self.files = [str(f) for f in files]
        self.kind = kind
        self.image_column = image_column
        self.label_column = label_column
        self.label_json_field = label_json_field
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.shuffle_window = int(shuffle_window)
        self.features = features
        self.pieces = list_pieces(self.files, kind)
        if max_samples is not None:
            self.pieces = self._first_rows(self.pieces, int(max_samples))
        if not self.pieces:
            raise ValueError(f"The stream over {self.files[:3]} has no rows: give non-empty files.")
        self._columns = self._file_columns()
        # set per process by `for_process` (the trainer): which slots this process owns, where they start
        self.rank, self.world_size, self.num_workers = 0, 1, 0
        self._table = None  # the last row group / record batch read: `(key, table)`
        self.start: dict[int, tuple[int, int, int, int]] = {}
        self.first_worker_slot = 0  # the slot (of this process's) that DataLoader worker 0 reads

    def __getstate__(self):  # to DataLoader workers: without the cached table
        return {**self.__dict__, "_table": None}

    # ---- setup ----
    @staticmethod
    def _first_rows(pieces: list[Piece], n: int) -> list[Piece]:
        if pieces and pieces[0].rows is None:
            raise ValueError(
                "`max_samples` is not supported on webdataset shards (their samples are not counted ahead): give "
                "fewer shards instead."
            )
        kept, total = [], 0
        for piece in pieces:
            if total >= n:
                break
            rows = min(piece.rows, n - total)
            kept.append(Piece(piece.path, piece.kind, piece.index, piece.first_row, rows))
            total += rows
        return kept

    def _file_columns(self) -> list[str] | None:
        """The columns read from parquet/arrow files: image, label, and a naming column when present."""
        if self.kind == "webdataset":
            return None
        names = self.column_names_in_files()
        keep = [self.image_column, self.label_column] + [c for c in NAME_COLUMNS if c in names]
        missing = [c for c in (self.image_column, self.label_column) if c not in names]
        if missing:
            raise ValueError(
                f"The files {self.files[:2]} have no column {missing}; their columns are {names}. Set "
                "`--image_column` / `--label_column`."
            )
        return list(dict.fromkeys(keep))

    def column_names_in_files(self) -> list[str]:
        import pyarrow as pa

        path = self.files[0]
        if self.kind == "parquet":
            return list(_parquet_file(path).schema_arrow.names)
        with pa.memory_map(path) as source:
            return list(_arrow_reader(source).schema.names)

    def fingerprint(self) -> str:
        """What a saved position is only valid for: the pieces, the seed, the shuffle (a short hash)."""
        text = repr(
            ([(os.path.basename(p.path), p.index, p.rows) for p in self.pieces], self.seed, self.shuffle,
             self.shuffle_window, self.label_json_field)
        )  # fmt: skip
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def num_slots(self) -> int:
        return self.world_size * max(1, self.num_workers)

    def slots_of_process(self) -> list[int]:
        per = max(1, self.num_workers)
        return [self.rank * per + w for w in range(per)]

    def for_process(
        self,
        rank: int,
        world_size: int,
        num_workers: int,
        start: dict[int, Sequence[int]] | None = None,
        next_slot: int = 0,
    ) -> ShardedStream:
        """Set the process this stream runs in and where its slots start (`{slot: (pass, piece, row, taken)}`,
        default the beginning); returns `self`.

        `next_slot` (0 .. workers - 1) is the slot whose batch comes next: a DataLoader takes its first batch from
        worker 0, so worker `w` reads slot `(w + next_slot) % workers` of this process, and a resumed run takes
        its batches from the slots in the order an uninterrupted one would."""
        self.rank, self.world_size, self.num_workers = int(rank), int(world_size), int(num_workers)
        self.first_worker_slot = int(next_slot) % max(1, self.num_workers)
        slots = self.slots_of_process()
        self.start = {s: tuple(int(v) for v in (start or {}).get(s, (0, 0, 0, 0))) for s in slots}
        if len(self.pieces) < self.num_slots() and rank == 0:
            logger.warning(
                "The training stream has %d pieces (row groups / record batches / tar shards) for %d readers "
                "(%d processes x %d DataLoader workers): every reader reads all of them and keeps every %d-th "
                "sample. Write more, smaller shards (or row groups) to split the reading.",
                len(self.pieces), self.num_slots(), world_size, max(1, num_workers), self.num_slots(),
            )  # fmt: skip
        return self

    def start_positions(self) -> dict[int, tuple[int, int, int, int]]:
        """`{slot: (pass, piece, row, taken)}` where this process's slots start (see `slot_examples`)."""
        return dict(self.start) if self.start else {s: (0, 0, 0, 0) for s in self.slots_of_process()}

    # ---- reading ----
    def _slot_pieces(self, slot: int) -> tuple[list[int], int, int]:
        """`(piece ids, stride, phase)` of a slot: its share of the pieces, or all of them and every S-th sample."""
        n, slots = len(self.pieces), self.num_slots()
        if n >= slots:
            return list(range(slot, n, slots)), 1, 0
        return list(range(n)), slots, slot

    def _order(self, ids: list[int], pass_: int) -> list[int]:
        if not self.shuffle:
            return list(ids)
        rng = np.random.default_rng([self.seed, pass_])
        return [ids[i] for i in rng.permutation(len(ids))]

    def _rows(self, piece: Piece, start: int) -> Iterator[tuple[int, dict]]:
        """`(row in piece, example)` from `start` on (rows before it are not read, or read as bytes only)."""
        if piece.kind == "webdataset":
            for i, key, files in iter_tar_samples(piece.path, start):
                _STATS["rows_read"] += 1
                yield (
                    i,
                    tar_example(piece.path, key, files, self.image_column, self.label_column, self.label_json_field),
                )
            return
        cached = getattr(self, "_table", None)
        if cached is not None and cached[0] == (piece.path, piece.index):
            table = cached[1]  # a window that ends inside a row group: the next one reads on from it
        elif piece.kind == "parquet":
            table = _parquet_file(piece.path).read_row_group(piece.index, columns=self._columns)
        else:
            batch = next(b for i, b in enumerate(_arrow_batches(piece.path)) if i == piece.index)
            table = batch.select(self._columns)
        self._table = ((piece.path, piece.index), table)
        row_index = start
        for batch in table.slice(start, max(0, piece.rows - start)).to_batches(max_chunksize=64):
            for row in batch.to_pylist():  # 64 rows at a time: a window holds rows, not the whole row group
                _STATS["rows_read"] += 1
                row[ID_COLUMN] = piece.first_row + row_index
                yield row_index, row
                row_index += 1

    def _window(self, order: list[int], k: int, row: int) -> tuple[list[dict], int, int]:
        """Up to `shuffle_window` examples read in order from row `row` of the `k`-th piece of `order` on, across
        piece ends; returns them and where the next window starts `(k, row)`."""
        window, size = [], self.shuffle_window
        while k < len(order) and len(window) < size:
            rows = self._rows(self.pieces[order[k]], row)
            try:
                for r, example in rows:
                    window.append(example)
                    row = r + 1
                    if len(window) == size:
                        break
                else:  # the piece is done
                    k, row = k + 1, 0
            finally:
                rows.close()
        return window, k, row

    def slot_examples(self, slot: int, start: Sequence[int] = (0, 0, 0, 0)) -> Iterator[dict]:
        """The endless examples of `slot` from position `start`, each with `POSITION_KEY`: the position after it.

        A position is `(pass, piece number k, row, taken)`: the current window starts at `row` of the `k`-th piece
        of the pass's order, and `taken` of its (shuffled) examples are done. A window holds the next
        `shuffle_window` rows of the slot's pieces, across piece ends, and is permuted by `(seed, pass, piece,
        row)` of its start; with fewer pieces than slots, a slot keeps the window's examples `j` with
        `j % slots == slot`."""
        ids, stride, phase = self._slot_pieces(slot)
        pass_, k, row, taken = (int(v) for v in start)
        while True:
            order, read = self._order(ids, pass_), 0
            while k < len(order):
                window, next_k, next_row = self._window(order, k, row)
                read += len(window)
                if self.shuffle:
                    key = [self.seed, pass_, order[k], row]
                    window = [window[i] for i in np.random.default_rng(key).permutation(len(window))]
                for j in range(taken, len(window)):
                    if j % stride == phase:
                        example = window[j]
                        example[POSITION_KEY] = (slot, pass_, k, row, j + 1)
                        yield example
                k, row, taken = next_k, next_row, 0
            if not read and not start[1] and not start[2]:
                raise ValueError(f"The pieces {[self.pieces[i].path for i in ids][:3]} of a stream hold no rows.")
            pass_, k, row, start = pass_ + 1, 0, 0, (0, 0, 0, 0)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        slots = self.slots_of_process()
        slot = slots[(worker + self.first_worker_slot) % len(slots)]
        return self.slot_examples(slot, self.start_positions().get(slot, (0, 0, 0, 0)))


class PositionCollator:
    """The training collator of a stream: the wrapped collator's batch plus `stream_position`, the position after the
    batch's last example (`(slot, pass, piece, row, taken)`, int64)."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, examples: list[dict]) -> dict:
        position = examples[-1][POSITION_KEY]
        batch = self.collate([{k: v for k, v in ex.items() if k != POSITION_KEY} for ex in examples])
        batch[POSITION_KEY] = torch.tensor(position, dtype=torch.long)
        return batch

    def __getattr__(self, name):  # num_skipped, skipped, ... of the wrapped collator
        if name == "collate":
            raise AttributeError(name)
        return getattr(self.collate, name)


def rows_read() -> int:
    """Rows (samples) the streams of this process have read so far (not counting DataLoader worker processes)."""
    return _STATS["rows_read"]
