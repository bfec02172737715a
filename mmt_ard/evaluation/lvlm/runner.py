"""`evaluate_lvlm`: clean and adversarial captioning / VQA scores of LVLMs x datasets x budgets, resumable.

>>> report = evaluate_lvlm(["llava-hf/llava-1.5-7b-hf", "llava-1.5-7b-mmt-ard"], ["data/coco_val"],
...                        output_dir="eval_lvlm", gradient_checkpointing=True)

Every sample's replies (clean, and per budget the worst one with the attack that produced it) go into
`output_dir/lvlm_state/<model>__<dataset>.json` after each batch, so an interrupted run resumes at the batch it
stopped in; a (model, dataset) pair finished under the same protocol is skipped, as in `mmt-ard-eval`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from ..protocols import format_eps
from ..report import _atomic_write
from ..robust_eval import load_results, package_versions
from .attack import targeted_batch, worst_case_batch
from .data import LVLMTaskData, load_lvlm_data
from .metrics import METRIC_NAMES, cider_scores, postprocess_answer, postprocess_caption, sample_scores, vqa_accuracy
from .model import DTYPES, LVLMAdapter, load_lvlm, make_adapter
from .protocol import LVLMProtocol
from .report import markdown_table, write_lvlm_reports

STATE_DIR = "lvlm_state"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:80] or "x"


def _read_state(path: str | None, fingerprint: str) -> dict:
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        if state.get("fingerprint") == fingerprint:
            return state
    return {"fingerprint": fingerprint, "samples": {}}


BAD_IMAGE_FIX = (
    "Fix or remove the file, or pass --bad-samples skip (`bad_samples='skip'`) to leave such samples out (they are "
    "counted in results.json)"
)


def screen_images(data: LVLMTaskData, bad_samples: str = "error") -> tuple[LVLMTaskData, dict[str, str]]:
    """Decode every image of `data` once before anything is evaluated. A missing, truncated or unreadable file is
    a bad sample: with `bad_samples="error"` a `BadSampleError` names the file, the sample and the dataset; with
    `"skip"` the sample is left out. Grayscale, CMYK and palette images are fine (converted to RGB, as the
    processors do).

    Returns:
        the data without the bad samples, and `{sample_id: why}` for those left out.
    """
    from PIL import Image

    from ...data import bad_sample, bad_sample_policy

    policy = bad_sample_policy(bad_samples)
    keep, skipped = [], {}
    for sample in data.samples:
        try:
            with Image.open(sample.image_path) as im:
                im.convert("RGB")
        except (OSError, ValueError, SyntaxError) as err:  # PIL: UnidentifiedImageError, truncated files, ...
            name = f"{sample.sample_id} (image {sample.image_path!r}) of dataset {data.name!r}"
            skipped[sample.sample_id] = bad_sample(policy, name, err, BAD_IMAGE_FIX)
            continue
        keep.append(sample)
    if not skipped:
        return data, {}
    if not keep:
        raise ValueError(f"Every image of dataset {data.name!r} is unreadable ({len(skipped)} samples): nothing to do.")
    return dataclasses.replace(data, samples=keep), skipped


class _Scorer:
    """Per-sample scores of replies against the whole evaluated set (CIDEr's idf comes from all its references)."""

    def __init__(self, data: LVLMTaskData):
        self.task = data.task
        self.references = [s.references for s in data.samples]

    def __call__(self, positions: list[int], replies: list[str]) -> list[float]:
        if self.task == "captioning":
            predictions = [""] * len(self.references)
            for p, r in zip(positions, replies):
                predictions[p] = r
            scores = cider_scores(predictions, self.references)
            return [float(scores[p]) for p in positions]
        return [100.0 * vqa_accuracy(r, self.references[p]) for p, r in zip(positions, replies)]


def evaluate_lvlm_on_data(
    adapter: LVLMAdapter,
    data: LVLMTaskData,
    protocol: LVLMProtocol,
    *,
    state_path: str | None = None,
    fingerprint: str = "",
    progress: bool = True,
) -> dict:
    """Clean and worst-case adversarial score of one LVLM on one dataset (and targeted success rates).

    Returns:
        a JSON-ready dict: `task`, `metric`, `num_samples`, `dataset_size`, `clean`, `adversarial` (per eps key:
        `eps`, `score`, `worst_attacks` (how many samples each attack gave their worst reply)), `targeted` (per eps
        key and target: `success_rate`, `num_samples`), `time_s`, `seconds_per_sample`.
    """
    start_time = time.time()
    state = _read_state(state_path, fingerprint)
    records = state["samples"]
    captioning = data.task == "captioning"
    prompts = [
        adapter.prompt(protocol.caption_prompt if captioning else protocol.vqa_prompt.format(question=s.question))
        for s in data.samples
    ]
    postprocess = postprocess_caption if captioning else postprocess_answer
    max_new = protocol.caption_max_new_tokens if captioning else protocol.vqa_max_new_tokens
    stop_below = protocol.stop_below_captioning if captioning else protocol.stop_below_vqa
    extra_targets = () if captioning else protocol.vqa_extra_targets
    score = _Scorer(data)
    eps_keys = [format_eps(e) for e in protocol.eps]
    n = len(data)
    n_targeted = min(protocol.targeted_num_samples, n) if protocol.target_strings else 0

    def done(i: int) -> bool:
        rec = records.get(data.samples[i].sample_id)
        if rec is None or "clean" not in rec or any(k not in rec["adversarial"] for k in eps_keys):
            return False
        if i < n_targeted:
            return all(t in rec["targeted"].get(k, {}) for k in eps_keys for t in protocol.target_strings)
        return True

    batches = list(range(0, n, protocol.batch_size))
    for start in tqdm(batches, desc=f"{data.name}", disable=not progress, leave=False):
        pos = list(range(start, min(start + protocol.batch_size, n)))
        if all(done(i) for i in pos):
            continue
        samples = [data.samples[i] for i in pos]
        x = adapter.pixels([s.image_path for s in samples]).to(adapter.device)  # (B, 3, H, W) in [0, 1]
        batch_prompts = [prompts[i] for i in pos]
        for s in samples:
            records.setdefault(s.sample_id, {"adversarial": {}, "targeted": {}})
        if any("clean" not in records[s.sample_id] for s in samples):
            replies = [postprocess(r) for r in adapter.generate(x, batch_prompts, max_new)]
            for s, r in zip(samples, replies):
                records[s.sample_id]["clean"] = r
        clean = [records[s.sample_id]["clean"] for s in samples]
        clean_scores = score(pos, clean)
        for eps, key in zip(protocol.eps, eps_keys):
            if all(key in records[s.sample_id]["adversarial"] for s in samples):
                continue
            worst = worst_case_batch(
                adapter,
                x,
                batch_prompts,
                [s.references for s in samples],
                clean,
                clean_scores,
                lambda local, replies, pos=pos: score([pos[j] for j in local], replies),
                eps=eps,
                n_iter=protocol.n_iter,
                seed=protocol.seed,
                keys=[f"{s.sample_id}|{key}" for s in samples],
                max_references=protocol.max_references,
                extra_targets=extra_targets,
                refine=protocol.refine,
                stop_below=stop_below,
                max_new_tokens=max_new,
                postprocess=postprocess,
            )
            for j, s in enumerate(samples):
                records[s.sample_id]["adversarial"][key] = {
                    "prediction": worst.predictions[j],
                    "score": worst.scores[j],
                    "attack": worst.attacks[j],
                    "reference": worst.references[j],
                }
        targeted_pos = [j for j, i in enumerate(pos) if i < n_targeted]
        for target in protocol.target_strings if targeted_pos else ():
            for eps, key in zip(protocol.eps, eps_keys):
                todo = [
                    j for j in targeted_pos if target not in records[samples[j].sample_id]["targeted"].get(key, {})
                ]
                if not todo:
                    continue
                replies, success = targeted_batch(
                    adapter,
                    x[todo],
                    [batch_prompts[j] for j in todo],
                    target,
                    eps=eps,
                    n_iter=protocol.targeted_n_iter,
                    seed=protocol.seed,
                    keys=[f"{samples[j].sample_id}|{key}|targeted:{target}" for j in todo],
                    max_new_tokens=max_new,
                )
                for j, r, ok in zip(todo, replies, success):
                    records[samples[j].sample_id]["targeted"].setdefault(key, {})[target] = {
                        "prediction": r,
                        "success": bool(ok),
                    }
        if state_path:
            os.makedirs(os.path.dirname(state_path), exist_ok=True)
            _atomic_write(state_path, json.dumps(state))

    references = [s.references for s in data.samples]
    ids = [s.sample_id for s in data.samples]
    clean_scores = sample_scores(data.task, [records[i]["clean"] for i in ids], references)
    adversarial = {}
    for eps, key in zip(protocol.eps, eps_keys):
        worst = sample_scores(data.task, [records[i]["adversarial"][key]["prediction"] for i in ids], references)
        counts: dict[str, int] = {}
        for i in ids:
            name = records[i]["adversarial"][key]["attack"]
            counts[name] = counts.get(name, 0) + 1
        adversarial[key] = {"eps": eps, "score": float(np.mean(worst)), "worst_attacks": counts}
    targeted = {}
    for key in eps_keys:
        for target in protocol.target_strings:
            hits = [records[i]["targeted"][key][target]["success"] for i in ids[:n_targeted]]
            already = [target.lower() in records[i]["clean"].lower() for i in ids[:n_targeted]]
            targeted.setdefault(key, {})[target] = {
                "success_rate": float(np.mean(hits)),
                "clean_rate": float(np.mean(already)),  # replies that contain the target without any attack
                "num_samples": len(hits),
            }
    elapsed = time.time() - start_time
    return {
        "task": data.task,
        "metric": METRIC_NAMES[data.task],
        "num_samples": n,
        "dataset_size": data.dataset_size,
        "layout": data.layout,
        "clean": float(np.mean(clean_scores)),
        "adversarial": adversarial,
        "targeted": targeted,
        "attack_space": adapter.attack_space(),
        "time_s": round(elapsed, 2),
        "seconds_per_sample": round(elapsed / max(n, 1), 3),
    }


def _parse_dataset(spec) -> tuple[str | None, object]:
    """`name=path` or `path`."""
    if isinstance(spec, str) and "=" in spec and not os.path.exists(spec):
        name, path = spec.split("=", 1)
        return name, path
    return None, spec


def _model_name(spec, index: int) -> str:
    if isinstance(spec, str):
        return os.path.basename(os.path.normpath(spec)) if os.path.exists(spec) else spec
    return f"model{index}"


def evaluate_lvlm(
    models,
    datasets,
    *,
    protocol: LVLMProtocol | None = None,
    output_dir: str | None = None,
    model_names: list[str] | None = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    gradient_checkpointing: bool = False,
    image_size: int | tuple[int, int] | None = None,
    bad_samples: str = "error",
    resume: bool = True,
    progress: bool = True,
    verbose: bool = True,
    **overrides,
) -> dict:
    """Robustness of LVLMs on captioning / VQA sets (RobustVLM's protocol by default).

    Args:
        models: one or a list of: an LVLM folder or Hub id, a `(model, processor)` pair, or an `LVLMAdapter`.
        datasets: one or a list of dataset folders / json files (`[name=]path`, layouts in
            `mmt_ard.evaluation.lvlm.data`), or `LVLMTaskData`.
        protocol: an `LVLMProtocol` (default: RobustVLM's settings); `**overrides` replace its fields.
        output_dir: where `results.json`, `results.md`, `robustness.png` and the per-sample state go (None: nothing
            is written, no resume).
        model_names: display names (default: the folder name or Hub id).
        device: `cuda`, `cpu`, ... (default: CUDA when available).
        dtype: weights' dtype for models loaded here (`bfloat16`, `float16`, `float32`; default bf16 on CUDA, fp32 on
            CPU). The attack state (pixels, normalisation, loss) is fp32 whatever it is.
        gradient_checkpointing: recompute the activations of the language model's and the vision tower's layers in
            the backward pass (for 7B LVLMs on one GPU; many crops per image multiply the tower's activations).
        image_size: the attack space, `(H, W)` or one side: every image is brought to this size once before the
            attack (default: single-crop classes their processor's input size, tiling classes the tower's input
            size). Recorded in results.json (`attack_space`) with the number of crops the tower sees.
        bad_samples: a sample whose image file is missing, truncated or unreadable: `error` stops before the pair is
            evaluated with a `BadSampleError` naming the file; `skip` leaves it out (`skipped` in results.json).
        resume: skip finished pairs and finished batches found in `output_dir`.
        progress: progress bars.
        verbose: print the protocol, one line per result and the table.

    Returns:
        the content of `results.json`.
    """
    proto = dataclasses.replace(protocol or LVLMProtocol(), **overrides)
    models = list(models) if isinstance(models, (list, tuple)) and not _is_pair(models) else [models]
    datasets = list(datasets) if isinstance(datasets, (list, tuple)) else [datasets]
    if model_names is not None and len(model_names) != len(models):
        raise ValueError(f"`model_names` has {len(model_names)} names for {len(models)} models: give one per model.")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"`dtype`={dtype!r}: use one of {list(DTYPES)}.")
        dtype = DTYPES[dtype]
    summary = proto.summary()
    if verbose:
        print(summary)
    previous = load_results(output_dir) if (output_dir and resume) else None
    records = {(r["model"], r["dataset"]): r for r in (previous or {}).get("results", []) if "adversarial" in r}
    report = {
        "format_version": 1,
        "kind": "lvlm",
        "protocol": proto.to_dict(),
        "protocol_summary": summary,
        "versions": package_versions(),
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "results": [],
    }

    def flush():
        report["results"] = list(records.values())
        report["updated"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        if output_dir:
            write_lvlm_reports(report, output_dir)

    named = [_parse_dataset(spec) for spec in datasets]
    for m_index, spec in enumerate(models):
        m_name = model_names[m_index] if model_names else _model_name(spec, m_index)
        m_source = os.path.abspath(spec) if isinstance(spec, str) and os.path.exists(spec) else str(spec)
        if not isinstance(spec, str):
            m_source = f"{type(spec).__name__}#{m_index}"
        adapter = None
        for d_name, d_spec in named:
            data = (
                d_spec
                if isinstance(d_spec, LVLMTaskData)
                else load_lvlm_data(d_spec, name=d_name, num_samples=proto.num_samples, seed=proto.seed)
            )
            data, skipped = screen_images(data, bad_samples)
            fingerprint = proto.fingerprint(m_source, data.source)
            if skipped:  # another set of samples gives other numbers
                fingerprint = f"{fingerprint}-skip{len(skipped)}"
            if image_size is not None:  # another attack space gives other numbers
                fingerprint = f"{fingerprint}-{'x'.join(str(v) for v in _sides(image_size))}"
            done = records.get((m_name, data.name))
            if done is not None and done.get("protocol_fingerprint") == fingerprint:
                if verbose:
                    print(f"[mmt-ard-eval-lvlm] skip {m_name} x {data.name}: finished under the same protocol")
                continue
            if adapter is None:
                adapter = _adapter(spec, device, dtype, gradient_checkpointing, image_size)
            state_path = (
                os.path.join(output_dir, STATE_DIR, f"{_safe(m_name)}__{_safe(data.name)}.json")
                if output_dir
                else None
            )
            if state_path and not resume and os.path.exists(state_path):
                os.remove(state_path)
            result = evaluate_lvlm_on_data(
                adapter, data, proto, state_path=state_path, fingerprint=fingerprint, progress=progress
            )
            records[(m_name, data.name)] = {
                "model": m_name,
                "model_source": m_source,
                "dataset": data.name,
                "dataset_source": data.source,
                "protocol_fingerprint": fingerprint,
                **result,
                **({"skipped": skipped} if skipped else {}),
            }
            flush()
            if verbose:
                print(_one_line(records[(m_name, data.name)]))
        del adapter
    flush()
    if verbose and records:
        print(markdown_table(report["results"]))
    return report


def _is_pair(obj) -> bool:
    return isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], torch.nn.Module)


def _sides(image_size) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else tuple(int(v) for v in image_size)


def _adapter(spec, device, dtype, gradient_checkpointing, image_size=None) -> LVLMAdapter:
    if isinstance(spec, LVLMAdapter):
        return spec
    if _is_pair(spec):
        model, processor = spec
        return make_adapter(model.to(device), processor, gradient_checkpointing, image_size)
    if not isinstance(spec, str):
        raise TypeError(
            f"model of type {type(spec).__name__}: pass a folder, a Hub id, (model, processor) or an adapter."
        )
    model, processor = load_lvlm(spec, dtype=dtype, device=device)
    return make_adapter(model, processor, gradient_checkpointing, image_size)


def _one_line(r: dict) -> str:
    adv = ", ".join(f"{k}: {v['score']:.1f}" for k, v in r["adversarial"].items())
    return (
        f"[mmt-ard-eval-lvlm] {r['model']} x {r['dataset']} (n={r['num_samples']}/{r['dataset_size']}): {r['metric']} "
        f"clean {r['clean']:.1f}, adversarial {adv} ({r['seconds_per_sample']:.2f} s/sample)"
    )
