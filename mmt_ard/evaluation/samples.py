"""Per-sample records: one JSON line per evaluated image, beside `results.json`.

A record holds what happened to one image of one dataset under one model:

    {"model": "clip-b32", "dataset": "cifar10", "index": 4172, "label": 3, "clean_pred": 3,
     "eps": {"2/255": {"robust": false, "broken_by": "apgd-t", "attacks": {"apgd-ce": true, "apgd-t": false}}}}

`index` is the image's row in the split (`EvalData.indices`); per eps, `robust` is the worst case over the attacks,
`broken_by` the first attack (in the protocol's order) that fooled it (`"clean"` when it is misclassified without
attack, `null` when robust), and `attacks` each attack's own outcome (`null`: not run, as the cascade skips images an
earlier attack already fooled).

The file of a (model, dataset) pair is `samples/<model>__<dataset>__<fingerprint>.jsonl`; its first line is a
header naming the model, the dataset and the protocol fingerprint. It is:

* what the processes' shards merge into (the main process appends every batch the processes finished together);
* what a rerun resumes from inside a dataset: only images without a record are evaluated (a file whose header names
  another protocol is refused, its fingerprint shown); a line cut off by a crash is dropped;
* what `results.md`'s paired comparisons of two models read (the same images, image by image).
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import torch

SAMPLES_DIR = "samples"
FORMAT = "mmt_ard.samples"
VERSION = 1


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "x"
    return slug[-60:]


def samples_relpath(model: str, dataset: str, fingerprint: str) -> str:
    """`samples/<model>__<dataset>__<fingerprint>.jsonl` (a short hash is added when the names had to be changed)."""
    stem = f"{_slug(model)}__{_slug(dataset)}__{fingerprint}"
    if _slug(model) != model or _slug(dataset) != dataset:
        stem += "_" + hashlib.sha1(json.dumps([model, dataset]).encode()).hexdigest()[:8]
    return os.path.join(SAMPLES_DIR, stem + ".jsonl")


def make_record(model: str, dataset: str, index: int, label: int, clean_pred: int, outcomes: dict[str, dict]) -> dict:
    """One image's record; `outcomes` maps an eps key to `{"robust", "broken_by", "attacks"}`."""
    return {
        "model": model,
        "dataset": dataset,
        "index": int(index),
        "label": int(label),
        "clean_pred": int(clean_pred),
        "eps": outcomes,
    }


class SampleFile:
    """The per-sample file of one (model, dataset) pair under one protocol.

    Args:
        path: the `.jsonl` file.
        model: the model's name (a result key).
        dataset: the dataset's name.
        fingerprint: the protocol's fingerprint for this dataset (`Protocol.fingerprint`).
        summary: the protocol's one-line summary (shown when a file of another protocol is refused).
    """

    def __init__(self, path: str, model: str, dataset: str, fingerprint: str, summary: str = ""):
        self.path = path
        self.header = {
            "format": FORMAT,
            "version": VERSION,
            "model": model,
            "dataset": dataset,
            "protocol_fingerprint": fingerprint,
            "protocol_summary": summary,
        }

    def read(self) -> dict[int, dict]:
        """The records on disk by image index (`{}` if there is no file); refuses a file of another protocol.

        A last line cut off by a crash is dropped (and cut from the file); a damaged line elsewhere raises.
        """
        if not os.path.isfile(self.path):
            return {}
        with open(self.path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        complete = lines[:-1]  # the part after the last newline is an unfinished write, if anything
        if lines[-1].strip():
            self._truncate(len(data) - len(lines[-1]))
        if not complete:
            return {}
        self._check_header(self._parse(complete[0], 1))
        records = {}
        for number, line in enumerate(complete[1:], start=2):
            if line.strip():
                record = self._parse(line, number)
                records[int(record["index"])] = record
        return records

    def _parse(self, line: bytes, number: int) -> dict:
        try:
            value = json.loads(line)
        except ValueError as err:
            raise ValueError(
                f"Line {number} of the per-sample file {self.path!r} is not JSON ({err}): the file is damaged; delete "
                "it to evaluate this (model, dataset) again."
            ) from err
        if not isinstance(value, dict):  # a damaged file, not a wrong argument
            message = f"Line {number} of the per-sample file {self.path!r} is not a JSON object."
            raise ValueError(message)  # noqa: TRY004
        return value

    def _check_header(self, header: dict) -> None:
        if header.get("format") != FORMAT:
            raise ValueError(
                f"{self.path!r} is not a per-sample file of mmt_ard (its first line has format "
                f"{header.get('format')!r}, expected {FORMAT!r}): move it out of the output directory."
            )
        mine, theirs = self.header["protocol_fingerprint"], header.get("protocol_fingerprint")
        if theirs != mine:
            raise ValueError(
                f"The per-sample file {self.path!r} holds results of another protocol: fingerprint {theirs!r} "
                f"({header.get('protocol_summary') or 'no summary'}), while this run's protocol has fingerprint "
                f"{mine!r} ({self.header['protocol_summary'] or 'no summary'}); its records cannot be resumed. Move "
                "the file away, or rerun with `--no-resume` (`resume=False`) to replace it."
            )
        for field in ("model", "dataset"):
            if header.get(field) != self.header[field]:
                raise ValueError(
                    f"The per-sample file {self.path!r} holds the results of {field} {header.get(field)!r}, not of "
                    f"{self.header[field]!r}: move it away, or rerun with `--no-resume` (`resume=False`)."
                )

    def _truncate(self, size: int) -> None:
        with open(self.path, "r+b") as f:
            f.truncate(size)

    def start(self) -> None:
        """A new file holding only the header (replacing any file at `path`, atomically)."""
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(self.header) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def append(self, records: list[dict]) -> None:
        """Append records, one line each, and flush them to disk."""
        if not records:
            return
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())


def read_records(path: str) -> tuple[dict, dict[int, dict]]:
    """`(header, records by index)` of a per-sample file, whatever its protocol (for reports and comparisons)."""
    header, records = {}, {}
    with open(path) as f:
        for number, line in enumerate(f):
            if not line.endswith("\n"):
                break  # an unfinished last line
            if not line.strip():
                continue
            value = json.loads(line)
            if number == 0:
                header = value
            else:
                records[int(value["index"])] = value
    return header, records


# ---- from records to accuracies ----
def outcome_masks(records: list[dict], eps_keys: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`(clean_correct (n,), {eps key: robust (n,)})` of records in order."""
    clean = torch.tensor([r["clean_pred"] == r["label"] for r in records], dtype=torch.bool)
    robust = {k: torch.tensor([bool(r["eps"][k]["robust"]) for r in records], dtype=torch.bool) for k in eps_keys}
    return clean, robust


def per_attack_counts(records: list[dict], eps_key: str, attacks: list[str], cascade: bool) -> dict[str, int]:
    """Images still robust per attack: after it and every earlier one (`cascade`), or against it alone."""
    counts = dict.fromkeys(attacks, 0)
    for r in records:
        if r["clean_pred"] != r["label"]:
            continue
        outcome = r["eps"][eps_key]
        broken = outcome["broken_by"]
        for i, attack in enumerate(attacks):
            if cascade:
                counts[attack] += broken is None or (broken in attacks and attacks.index(broken) > i)
            else:
                counts[attack] += bool(outcome["attacks"].get(attack))
    return counts
