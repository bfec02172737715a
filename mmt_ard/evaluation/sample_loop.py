"""One model on one dataset, image by image: the loop behind `evaluate_on_data`.

Every image of a batch goes through the clean prediction and, per eps, the protocol's attacks in order (with the
cascade, an attack only sees the images every earlier attack failed on); the result is one record per image
(`samples.make_record`). Every random draw belongs to the image (`SampleKeys`), so a record does not depend on the
batch size, the order, the subset, the number of processes, or on being computed after a resume.

Over several processes (`EvalGroup`) each process takes every N-th of the images still missing; after each round
(one batch per process) the processes exchange their records, the main process hands them to `on_records` (which
appends them to the per-sample file), and all processes agree whether a preemption signal arrived. The
gradient-masking checks' per-image measurements are split the same way and decided on all of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..models import ZeroShotCLIP
from ..runtime.preemption import PREEMPTED_EXIT_CODE
from .attack_runner import attack_batch, attacks_for, clean_predictions
from .checks import check_measurements, judge_checks
from .datasets import EvalData
from .protocols import Protocol, format_eps
from .sample_keys import SampleKeys
from .samples import make_record, outcome_masks, per_attack_counts
from .sharding import EvalGroup


class EvaluationPreempted(SystemExit):
    """A preemption signal (SIGTERM / SIGUSR1) stopped the evaluation after a finished batch; exit status 75.

    Every finished image is in the per-sample file: rerunning the same command evaluates only the missing ones.

    Args:
        dataset: the dataset being evaluated when the signal came.
        done: its images with a record.
        total: its images.
        signal_name: the signal (`None` on processes that were not signalled themselves).
    """

    def __init__(self, dataset: str, done: int, total: int, signal_name: str | None = None, model: str = ""):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.dataset, self.done, self.total, self.signal_name, self.model = dataset, done, total, signal_name, model

    def __str__(self) -> str:
        where = f"{self.model} x {self.dataset}" if self.model else self.dataset
        return (
            f"evaluation preempted ({self.signal_name or 'signal on another process'}) during {where} with "
            f"{self.done}/{self.total} images finished; every finished image is saved: rerun the same command to "
            "continue."
        )


def _pixels(data: EvalData, positions: list[int]) -> torch.Tensor:
    """`(b, 3, S, S)` float32 in [0,1] of the images at `positions`."""
    x = data.images[torch.as_tensor(positions, dtype=torch.long)]
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def evaluate_batch(
    zero_shot: ZeroShotCLIP,
    data: EvalData,
    positions: list[int],
    protocol: Protocol,
    attacks: list[str],
    keys: SampleKeys,
    device,
    model_name: str = "",
) -> list[dict]:
    """The records of the images at `positions`: clean prediction, then per eps every attack (worst case).

    Args:
        keys: the whole dataset's sample keys (indexed by position).
    """
    x = _pixels(data, positions).to(device)  # (b, 3, S, S)
    y = data.labels[torch.as_tensor(positions, dtype=torch.long)]  # (b,) on the CPU
    clean_pred = clean_predictions(zero_shot, x, len(positions), device)  # (b,)
    clean_correct = clean_pred == y
    batch_keys = keys.subset(positions)
    outcomes: list[dict[str, dict]] = [{} for _ in positions]
    for eps in protocol.eps:
        eps_key = format_eps(eps)
        robust = clean_correct.clone()
        broken_by: list[str | None] = [None if c else "clean" for c in clean_correct.tolist()]
        survived: dict[str, list[bool | None]] = {}
        for attack in attacks:
            active = robust.clone() if protocol.cascade else clean_correct.clone()
            mask = attack_batch(
                zero_shot, x, y.to(device), attack, eps, protocol, active.to(device), keys=batch_keys
            ).cpu()
            survived[attack] = [bool(m) if a else None for m, a in zip(mask.tolist(), active.tolist())]
            for i, (m, a) in enumerate(zip(mask.tolist(), active.tolist())):
                if a and not m and broken_by[i] is None:
                    broken_by[i] = attack
            robust &= mask | ~active  # cascade: inactive images are already counted
        for i in range(len(positions)):
            outcomes[i][eps_key] = {
                "robust": bool(robust[i]),
                "broken_by": broken_by[i],
                "attacks": {a: survived[a][i] for a in attacks},
            }
    return [
        make_record(model_name, keys.dataset, keys.indices[p], int(y[i]), int(clean_pred[i]), outcomes[i])
        for i, p in enumerate(positions)
    ]


def _check_resumed(done: dict[int, dict], data: EvalData) -> None:
    labels = dict(zip(data.indices, data.labels.tolist()))
    for index, record in done.items():
        if index in labels and record["label"] != labels[index]:
            raise ValueError(
                f"The per-sample record of image {index} of {data.name!r} has label {record['label']}, the data has "
                f"{labels[index]}: the dataset changed since the per-sample file was written. Delete the file or "
                "rerun with `--no-resume` (`resume=False`)."
            )


def evaluate_on_data(
    zero_shot: ZeroShotCLIP,
    data: EvalData,
    protocol: Protocol,
    *,
    progress: bool = True,
    device=None,
    return_masks: bool = False,
    dataset: str | None = None,
    model_name: str = "",
    group: EvalGroup | None = None,
    done: dict[int, dict] | None = None,
    on_records: Callable[[list[dict]], None] | None = None,
    stop: Callable[[], str | None] | None = None,
) -> dict:
    """Clean and robust accuracy of one model on one dataset under a protocol, plus its gradient-masking checks.

    Args:
        zero_shot: the model (fp32, eval mode is set during attacks).
        data: the images.
        protocol: attacks, budgets, batch size, checks.
        progress: a progress bar over the images (main process only).
        device: where the model runs (default: its parameters' device).
        return_masks: also return `_masks` (per eps `(N,)` robust) and `_clean_correct`.
        dataset: the dataset's name in the sample keys and records (default `data.name`).
        model_name: the model's name in the records.
        group: the processes sharing the work, every one of which must make this call (`EvalGroup.current()`:
            those of `torch.distributed`); default: this process alone.
        done: records already computed (by image index, from the per-sample file): not evaluated again.
        on_records: called on the main process with each round's new records (in the order finished).
        stop: returns the name of a preemption signal this process received, or None; checked after each round
            (on every process together), it ends the evaluation with `EvaluationPreempted`.

    Returns:
        a JSON-ready dict: `num_samples`, `dataset_size`, `num_classes`, `clean_accuracy`, `robust_accuracy`
        (per eps key such as `"2/255"`: `worst_case`, `per_attack`, `num_robust`), `attacks`, `skipped_attacks`,
        `checks`, `flagged`, `failed_checks`, `time_s`; with `return_masks`, also `_masks` (per-eps `(N,)` bool),
        `_clean_correct`; always `_records` (the per-image records, in the data's order).
    """
    start_time = time.time()
    device = device or next(zero_shot.parameters()).device
    group = group or EvalGroup()
    dataset = dataset or data.name
    zero_shot.set_classes(data.class_names, data.templates)
    attacks, skipped = attacks_for(protocol, data.num_classes)
    keys = SampleKeys.of(protocol.seed, dataset, data.indices)
    n = len(data)
    wanted = set(data.indices)
    records = {i: r for i, r in (done or {}).items() if i in wanted}
    _check_resumed(records, data)

    def halt_if_signalled() -> None:  # on every process together, between rounds
        signal_name = stop() if stop is not None else None
        names = [s for s in group.all_gather(signal_name) if s is not None]
        if names:
            raise EvaluationPreempted(dataset, len(records), n, signal_name or names[0], model_name)

    pending = [p for p, index in enumerate(data.indices) if index not in records]
    mine = group.shard(pending)
    batch = protocol.batch_size
    rounds = math.ceil(math.ceil(len(pending) / group.world_size) / batch)
    bar = tqdm(
        total=n,
        initial=n - len(pending),
        desc=f"{dataset} images",
        disable=not (progress and group.is_main),
        leave=False,
    )
    for r in range(rounds):
        positions = mine[r * batch : (r + 1) * batch]
        new = (
            evaluate_batch(zero_shot, data, positions, protocol, attacks, keys, device, model_name)
            if positions
            else []
        )
        signal_name = stop() if stop is not None else None
        gathered = group.all_gather((new, signal_name))
        fresh = [record for part, _ in gathered for record in part]
        records.update((rec["index"], rec) for rec in fresh)
        if on_records is not None and group.is_main:
            on_records(fresh)
        bar.update(len(fresh))
        names = [s for _, s in gathered if s is not None]
        if names:
            raise EvaluationPreempted(dataset, len(records), n, signal_name or names[0], model_name)
    bar.close()

    ordered = [records[i] for i in data.indices]  # the data's order
    eps_keys = [format_eps(e) for e in protocol.eps]
    clean_correct, masks = outcome_masks(ordered, eps_keys)
    robust_acc = {}
    for eps, key in zip(protocol.eps, eps_keys):
        per_attack = per_attack_counts(ordered, key, attacks, protocol.cascade)
        robust_acc[key] = {
            "eps": eps,
            "worst_case": _acc(masks[key], n),
            "num_robust": int(masks[key].sum()),
            "per_attack": {a: c / max(n, 1) for a, c in per_attack.items()},
        }
    result = {
        "num_samples": n,
        "dataset_size": data.dataset_size,
        "num_classes": data.num_classes,
        "num_templates": len(data.templates),
        "clean_accuracy": _acc(clean_correct, n),
        "num_clean_correct": int(clean_correct.sum()),
        "robust_accuracy": robust_acc,
        "attacks": attacks,
        "skipped_attacks": skipped,
        "source": data.source,
        "data_meta": {k: v for k, v in data.meta.items() if k != "indices_head"},
    }
    if protocol.checks and n:
        halt_if_signalled()  # the checks are not resumable: a signal during the images stops before them
        k = min(protocol.check_samples, n)
        check_mine = group.shard(list(range(k)))
        measured = None
        if check_mine:
            measured = check_measurements(
                zero_shot,
                _pixels(data, check_mine).to(device),
                data.labels[torch.as_tensor(check_mine, dtype=torch.long)].to(device),
                protocol=protocol,
                keys=keys.subset(check_mine),
            )
        check_report = judge_checks(
            _merge_measurements(group.all_gather((check_mine, measured)), k),
            protocol=protocol,
            clean_correct=clean_correct[:k],
            robust_masks={key: m[:k] for key, m in masks.items()},
            full_results={
                "clean_accuracy": result["clean_accuracy"],
                "robust_accuracy": {key: v["worst_case"] for key, v in robust_acc.items()},
                "num_samples": n,
            },
            progress=progress and group.is_main,
        )
        result.update(check_report)
    else:
        result.update({"checks": {}, "flagged": False, "failed_checks": []})
    result["time_s"] = round(time.time() - start_time, 2)
    result["_records"] = ordered
    if return_masks:
        result["_masks"] = masks
        result["_clean_correct"] = clean_correct
    return result


def _merge_measurements(parts: list[tuple[list[int], dict | None]], k: int) -> dict[str, torch.Tensor]:
    """Per-image check measurements of every process, put back in position order: `{name: (k,)}`."""
    merged: dict[str, torch.Tensor] = {}
    for positions, measured in parts:
        if not positions:
            continue
        index = torch.as_tensor(positions, dtype=torch.long)
        for name, values in measured.items():
            if name not in merged:
                merged[name] = torch.zeros(k, dtype=values.dtype)
            merged[name][index] = values.cpu()
    return merged


def _acc(mask: torch.Tensor, n: int) -> float:
    return float(mask.sum()) / max(n, 1)
