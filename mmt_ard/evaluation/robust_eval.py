"""Robust zero-shot accuracy: attacks per image, worst case over attacks, models x datasets x budgets.

An image counts as robust at budget `eps` only if it is classified correctly and **every** attack of the protocol
fails on it (per-sample worst case). Attacks run in fp32 with the model in eval mode (its modes are restored), in
pixel space before normalisation, with input gradients only.

>>> results = evaluate_robustness(["openai/clip-vit-base-patch32"], ["cifar10", "pets"], protocol="robustvlm",
...                               output_dir="robust_eval")
"""

from __future__ import annotations

import copy
import datetime
import glob
import hashlib
import json
import os
import platform
import re
import warnings

import torch
from torch import nn
from tqdm.auto import tqdm

from ..convert import is_open_clip_source
from ..convert import parse_source as parse_open_clip_source
from ..models import ZeroShotCLIP, load_clip
from ..runtime.preemption import DEFAULT_SIGNALS, PreemptionHandler, parse_signals, remove_marker, write_marker_record
from .datasets import EvalData, load_eval_data, load_user_meta, short_name, skipped_rows, source_id
from .protocols import Protocol, get_protocol
from .report import RESULTS_JSON, markdown_table, write_reports
from .sample_loop import EvaluationPreempted, evaluate_on_data
from .samples import SampleFile, samples_relpath
from .sharding import EvalGroup, init_eval_group


# ---- the model ----
def ensure_fp32(model: nn.Module, allow_cast: bool = True) -> nn.Module:
    """The model itself when its parameters are fp32, else an fp32 copy (attacking in half precision inflates
    robust accuracy); `allow_cast=False` raises instead."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtypes <= {torch.float32}:
        return model
    if not allow_cast:
        raise ValueError(
            f"The model's parameters are {sorted(str(d) for d in dtypes)}: robust evaluation runs in fp32 only (half "
            "precision masks gradients and inflates robust accuracy). Pass `model.float()`, or allow the cast."
        )
    warnings.warn(f"Model parameters are {sorted(str(d) for d in dtypes)}: evaluating an fp32 copy.", stacklevel=2)
    return copy.deepcopy(model).float()


def resolve_model_path(path: str) -> str:
    """A model folder, or the newest `checkpoint-*` of a training run's `output_dir` when it has no model."""
    if _has_model(path):
        return path
    checkpoints = [d for d in glob.glob(os.path.join(path, "checkpoint-*")) if _has_model(d)]
    if checkpoints:
        newest = max(checkpoints, key=lambda d: int(re.findall(r"\d+", os.path.basename(d))[-1]))
        warnings.warn(f"{path!r} holds no final model: evaluating its newest checkpoint {newest!r}.", stacklevel=2)
        return newest
    raise FileNotFoundError(
        f"{path!r} holds neither a model (config.json + model.safetensors) nor a `checkpoint-*` folder with one: give "
        "a model folder (CLIP, SigLIP, SigLIP 2), a training run's output_dir, or a Hub id."
    )


def _has_model(path: str) -> bool:
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        os.path.isfile(os.path.join(path, w)) for w in weights
    )


def load_eval_model(
    model,
    processor=None,
    *,
    logit_scale: float | None = 100.0,
    device: str | torch.device | None = None,
    allow_cast: bool = True,
) -> ZeroShotCLIP:
    """A `ZeroShotCLIP` in fp32 from a Hub id, a local model folder, a run's output_dir or a module.

    Args:
        model: Hub id or local path of a CLIP, SigLIP or SigLIP 2 model (or an open_clip checkpoint), a training run's
            output_dir, a model object (`CLIPModel`, `SiglipModel`, ...; needs `processor`) or a `ZeroShotCLIP`.
        processor: processor (or its Hub id / path) when the model's own folder has none.
        logit_scale: fixed zero-shot scale, `None` for the model's own (with SigLIP's bias).
        device: where to run (default: CUDA when available).
        allow_cast: cast a half-precision model to an fp32 copy instead of raising.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(model, str):
        # an open_clip folder is converted by `load_clip`, not resolved as a CLIPModel folder or a run's output_dir
        path = resolve_model_path(model) if os.path.isdir(model) and not is_open_clip_source(model) else model
        clip, proc = load_clip(path, processor, dtype=torch.float32)  # a processor object is used as given
        if processor is not None and not isinstance(processor, str):
            proc = processor
        zs = ZeroShotCLIP(clip, proc, logit_scale=logit_scale)
    elif isinstance(model, ZeroShotCLIP):
        zs = model
    elif isinstance(model, nn.Module):
        if processor is None or isinstance(processor, str):
            raise ValueError(
                f"A `{type(model).__name__}` object needs its `processor` (the processor object) to build text heads."
            )
        zs = ZeroShotCLIP(model, processor, logit_scale=logit_scale)  # refuses models of unknown families
    else:
        raise TypeError(
            f"`model` of type {type(model).__name__}: pass a Hub id, a local path, a model object (+ processor) or a "
            "ZeroShotCLIP."
        )
    return ensure_fp32(zs, allow_cast).to(device)


# ---- text-head disk cache ----
def _model_identity(spec) -> str | None:
    """A string that changes when the model's weights change (None: do not cache on disk)."""
    if not isinstance(spec, str):
        return None
    open_clip = parse_open_clip_source(spec)
    if open_clip is not None and open_clip.kind == "file":  # a weights file (possibly `ARCH@file`)
        stat = os.stat(open_clip.location)
        return f"{spec}|{os.path.abspath(open_clip.location)}|{stat.st_size}:{stat.st_mtime_ns}"
    if os.path.isdir(spec):
        path = spec if open_clip is not None else resolve_model_path(spec)
        stats = [
            os.stat(f)
            for f in sorted(glob.glob(os.path.join(path, "*.safetensors")) + glob.glob(os.path.join(path, "*.bin")))
        ]
        return f"{os.path.abspath(path)}|" + "|".join(f"{s.st_size}:{s.st_mtime_ns}" for s in stats)
    return spec


def _attach_head_cache(zero_shot: ZeroShotCLIP, identity: str | None, cache_dir: str | None, data: EvalData):
    """Load this dataset's text head from disk if cached; return a function that saves it after use."""
    if identity is None or cache_dir is None:
        return lambda: None
    key = (tuple(data.class_names), tuple(data.templates))
    digest = hashlib.sha1(json.dumps([identity, key[0], key[1], zero_shot.image_size]).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"{digest}.pt")
    if key not in zero_shot._head_cache and os.path.isfile(path):
        zero_shot._head_cache[key] = torch.load(path, map_location="cpu", weights_only=True)

    def save():
        if key in zero_shot._head_cache and not os.path.isfile(path):
            os.makedirs(cache_dir, exist_ok=True)
            torch.save(zero_shot._head_cache[key].detach().cpu(), path + ".tmp")
            os.replace(path + ".tmp", path)

    return save


# ---- the benchmark ----
def package_versions() -> dict[str, str]:
    import datasets
    import numpy
    import transformers

    from .._version import __version__

    versions = {
        "mmt_ard": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        versions["cuda_device"] = torch.cuda.get_device_name()
        versions["cuda"] = str(torch.version.cuda)
    return versions


def _model_name(spec, index: int, names: list[str] | None) -> str:
    if names is not None:
        return names[index]
    if isinstance(spec, str):
        return os.path.basename(os.path.normpath(spec)) if os.path.exists(spec) else spec
    return f"model{index}"


def _model_source(spec) -> str:
    if isinstance(spec, str):
        return os.path.abspath(spec) if os.path.exists(spec) else spec
    return type(spec).__name__


def _dataset_name(spec, index: int) -> str:
    if isinstance(spec, EvalData):
        return spec.name
    if isinstance(spec, str):
        return short_name(spec)
    info = getattr(spec, "info", None)
    return getattr(info, "dataset_name", None) or f"dataset{index}"


def _unique(names: list[str], specs: list, taken: dict[str, str | None], source) -> list[str]:
    """Names made unique: a name already held (by finished results or earlier in this call) by another source
    becomes the spec's own path or id."""
    taken = dict(taken)
    out = []
    for name, spec in zip(names, specs):
        src = source(spec)
        owner = taken.get(name)
        if (name in out or (owner is not None and src is not None and owner != src)) and isinstance(spec, str):
            name = os.path.normpath(spec)
        while name in out:
            name += "'"
        out.append(name)
        taken.setdefault(name, src)
    return out


def load_results(output_dir: str) -> dict | None:
    path = os.path.join(output_dir, RESULTS_JSON)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def evaluate_robustness(
    models,
    datasets=None,
    *,
    eps=None,
    attacks=None,
    protocol: str | Protocol | dict = "quick",
    output_dir: str | None = None,
    num_samples: int | None = None,
    class_names_json: str | None = None,
    processor=None,
    model_names: list[str] | None = None,
    device: str | None = None,
    resume: bool = True,
    progress: bool = True,
    verbose: bool = True,
    bad_samples: str = "error",
    preemption_signals: list[str] | tuple[str, ...] | None = DEFAULT_SIGNALS,
    all_processes: bool = True,
    **overrides,
) -> dict:
    """Robust zero-shot accuracy of models x datasets x budgets x attacks, with gradient-masking checks.

    Under `torchrun --nproc_per_node N` (or `accelerate launch --multi_gpu --num_processes N`) the processes share
    every dataset's images and only the main process writes; the numbers are those of one process (see
    `sample_loop`). Every image's outcome is also recorded in a per-sample file (`samples/`, see `samples`), from
    which a rerun continues inside a dataset.

    Args:
        models: one or a list of: Hub id or local folder of a CLIP / SigLIP / SigLIP 2 model, training run
            `output_dir`, open_clip checkpoint, or a `ZeroShotCLIP`.
        datasets: names (`cifar10`), Hub ids, local paths (parquet / image folder), `EvalData` or a
            `{name: spec}` dict; default: the protocol's datasets.
        eps: budgets in [0,1] pixel units overriding the protocol's, e.g. `(2/255, 4/255)`.
        attacks: attacks overriding the protocol's (`pgd`, `apgd-ce`, `apgd-t`, `apgd-dlr`).
        protocol: preset name (`robustvlm`, `tecoa`, `quick`), a `Protocol`, or a dict.
        output_dir: where `results.json`, `results.md`, `robustness.png`, the per-sample files (`samples/`) and the
            text-head cache go (None: nothing is written). With `resume`, (model, dataset) pairs already there under
            the same protocol are skipped, and an unfinished pair continues from its per-sample file.
        num_samples: samples per dataset, overriding the protocol's.
        class_names_json: user JSON of per-dataset `classnames` / `templates`.
        processor: processor (object or Hub id/path) for models whose folder has none.
        model_names: display names of the models (default: the Hub id or folder name).
        device: `cuda`, `cpu`, ... (default: CUDA when available; `cuda:LOCAL_RANK` under a launcher).
        resume: skip finished (model, dataset) pairs found in `output_dir` and continue unfinished ones.
        progress: tqdm bars per dataset and over the images (main process only).
        verbose: print the protocol and the table (main process only).
        preemption_signals: signals (with `output_dir`) that stop the evaluation after the current batch, with
            every finished image saved, `preempted.json` written and `EvaluationPreempted` (exit status 75) raised;
            `None` or `[]`: none.
        all_processes: under a launcher (or in a script where `torch.distributed` runs, e.g. after training) every
            process must call this, and they share the images; `False` evaluates everything in this process alone
            (e.g. when only the main process calls it).
        bad_samples: an unreadable image or a label outside the class names: `error` (a `BadSampleError` naming the
            dataset file and row) or `skip` (the row is left out; each result counts its `num_skipped` rows).
        **overrides: any other `Protocol` field (`n_iter`, `pgd_steps`, `seed`, `batch_size`, `checks`, ...).

    Returns:
        the content of `results.json`: `protocol`, `protocol_summary`, `versions`, `num_processes`, `results` (one
        dict per (model, dataset) with its sample counts, accuracies, checks, `flagged` and `samples_file`).
    """
    proto = get_protocol(protocol, eps=eps, attacks=attacks, num_samples=num_samples, **overrides)
    models = models if isinstance(models, (list, tuple)) else [models]
    if model_names is not None and len(model_names) != len(models):
        raise ValueError(f"`model_names` has {len(model_names)} names for {len(models)} models: give one per model.")
    if datasets is None:
        datasets = list(proto.datasets)
    elif isinstance(datasets, (str, EvalData)) or hasattr(datasets, "column_names"):
        datasets = [datasets]
    if isinstance(datasets, dict):
        named = list(datasets.items())
    else:
        datasets = list(datasets)
        named = list(zip([_dataset_name(d, i) for i, d in enumerate(datasets)], datasets))
    user_meta = load_user_meta(class_names_json)
    signals = parse_signals(list(preemption_signals or [])) if output_dir else []
    group, device = init_eval_group(device) if all_processes else (EvalGroup(), _device(device))
    ok = False
    try:
        with PreemptionHandler(signals) as handler:
            report = _evaluate_all(
                models, named, proto, group, device, handler, output_dir, user_meta, processor, model_names,
                resume, progress, verbose, bad_samples,
            )  # fmt: skip
        ok = True
        return report
    finally:
        group.close(ok)


def _evaluate_all(
    models, named, proto, group: EvalGroup, device, handler, output_dir, user_meta, processor, model_names, resume,
    progress, verbose, bad_samples,
) -> dict:  # fmt: skip
    """`evaluate_robustness` once the arguments are checked and the processes joined."""
    main = group.is_main
    verbose = verbose and main
    summary = proto.summary()
    if verbose:
        print(summary)
        if group.world_size > 1:
            print(f"[mmt-ard-eval] {group.world_size} processes share every dataset's images; process 0 writes")
    if output_dir and main and handler.signals:
        remove_marker(output_dir)
    previous = group.from_main(lambda: load_results(output_dir)) if (output_dir and resume) else None
    records = {(r["model"], r["dataset"]): r for r in (previous or {}).get("results", [])}
    if model_names is None:  # same-named models or datasets from different sources are told apart
        taken = {r["model"]: r.get("model_source") for r in records.values()}
        m_names = _unique([_model_name(s, i, None) for i, s in enumerate(models)], list(models), taken, _model_source)
    else:
        m_names = list(model_names)
    taken = {r["dataset"]: r.get("dataset_source") for r in records.values()}
    named = list(zip(_unique([n for n, _ in named], [d for _, d in named], taken, source_id), [d for _, d in named]))
    report = {
        "format_version": 1,
        "protocol": proto.to_dict(),
        "protocol_summary": summary,
        "versions": package_versions(),
        "device": str(device),
        "num_processes": group.world_size,
        "results": [],
    }

    def flush():
        report["results"] = list(records.values())
        report["updated"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        if output_dir and main:
            write_reports(report, output_dir)

    cache_dir = os.path.join(output_dir, "text_heads") if output_dir else None
    data_cache: dict[tuple, EvalData] = {}
    for m_index, spec in enumerate(models):
        m_name = m_names[m_index]
        pending = []
        for d_name, d_spec in named:
            done = records.get((m_name, d_name))
            if done is not None and done.get("protocol_fingerprint") == proto.fingerprint(d_name):
                if verbose:
                    print(f"[mmt-ard-eval] skip {m_name} x {d_name}: finished under the same protocol")
                continue
            pending.append((d_name, d_spec))
        if not pending:
            continue
        zero_shot = load_eval_model(spec, processor, logit_scale=proto.logit_scale, device=device)
        identity = _model_identity(spec)
        for d_name, d_spec in tqdm(pending, desc=f"{m_name}: datasets", disable=not (progress and main)):
            size_key = (d_name, zero_shot.image_size)
            if size_key not in data_cache:
                data_cache[size_key] = load_eval_data(
                    d_spec,
                    image_size=zero_shot.image_size,
                    num_samples=proto.samples_for(d_name),
                    seed=proto.seed,
                    split=proto.split,
                    templates=proto.templates,
                    single_template=proto.single_template,
                    user_meta=user_meta,
                    name=d_name,
                    bad_samples=bad_samples,
                )
            data = data_cache[size_key]
            if verbose and group.world_size > len(data):
                print(
                    f"[mmt-ard-eval] {group.world_size} processes for {len(data)} images of {d_name}: "
                    f"{group.world_size - len(data)} process(es) have none to evaluate"
                )
            save_head = _attach_head_cache(zero_shot, identity, cache_dir if main else None, data)
            fingerprint = proto.fingerprint(d_name)
            sample_file, done = None, None
            if output_dir:
                relpath = samples_relpath(m_name, d_name, fingerprint)
                sample_file = SampleFile(os.path.join(output_dir, relpath), m_name, d_name, fingerprint, summary)
                done = group.from_main(lambda f=sample_file: _open_samples(f, resume))
                if verbose and done:
                    print(f"[mmt-ard-eval] {m_name} x {d_name}: {len(done)} images already in {relpath}, continuing")
            try:
                result = evaluate_on_data(
                    zero_shot,
                    data,
                    proto,
                    progress=progress,
                    device=device,
                    dataset=d_name,
                    model_name=m_name,
                    group=group,
                    done=done,
                    on_records=sample_file.append if sample_file is not None else None,
                    stop=lambda: handler.received,
                )
            except EvaluationPreempted as stopped:
                if output_dir and main:
                    write_marker_record(
                        output_dir,
                        {
                            "model": m_name,
                            "dataset": d_name,
                            "images_done": stopped.done,
                            "images": stopped.total,
                            "samples_file": samples_relpath(m_name, d_name, fingerprint),
                            "signal": stopped.signal_name,
                        },
                    )
                flush()
                raise
            save_head()
            result = {k: v for k, v in result.items() if not k.startswith("_")}
            records[(m_name, d_name)] = {
                "model": m_name,
                "model_source": _model_source(spec),
                "dataset": d_name,
                "dataset_source": source_id(d_spec),
                "model_family": zero_shot.family.name,
                "logit_mode": zero_shot.logit_mode,
                "protocol": proto.name,
                "protocol_summary": summary,
                "protocol_fingerprint": fingerprint,
                "num_processes": group.world_size,
                "batch_size": proto.batch_size,
                **result,
                **skipped_rows(data),
            }
            if output_dir:
                records[(m_name, d_name)]["samples_file"] = samples_relpath(m_name, d_name, fingerprint)
            flush()
            if verbose:
                print(_one_line(records[(m_name, d_name)]))
        del zero_shot
    flush()
    if verbose and records:
        print(markdown_table(report["results"]))
    return report


def _device(device) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _open_samples(sample_file: SampleFile, resume: bool) -> dict[int, dict]:
    """The records to continue from (`resume`), or a fresh file with only its header."""
    done = sample_file.read() if resume else {}
    if not done and not (resume and os.path.isfile(sample_file.path)):
        sample_file.start()
    return done


def _one_line(r: dict) -> str:
    robust = ", ".join(f"{k}: {v['worst_case']:.2%}" for k, v in r["robust_accuracy"].items())
    flag = f" FLAGGED ({', '.join(r['failed_checks'])})" if r.get("flagged") else ""
    return (
        f"[mmt-ard-eval] {r['model']} x {r['dataset']} (n={r['num_samples']}/{r['dataset_size']}): clean "
        f"{r['clean_accuracy']:.2%}, robust {robust}{flag} [protocol={r['protocol']}]"
    )
