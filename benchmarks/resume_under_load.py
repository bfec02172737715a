"""Kill-and-resume, many times, on a loaded machine: does anything in the resume path depend on timing?

Two experiments, repeated `--repeats` times while `--busy` busy-loop processes keep the CPUs loaded (started and
stopped by this script, each bounded by `--max-load-s`):

* `pytest`: `tests/test_resume.py` (a subprocess SIGKILLed inside step 7, resumed from checkpoint-6 and from
  checkpoint-3, each compared with an uninterrupted run trained in the test's process at the same time); the
  printed max |w - w_ref| of both resumes is recorded.
* `embedded`: the embedded default through the command line (`--quick` recipe, `--max_steps` distillation steps,
  a checkpoint every `--save-steps`), three runs: an uninterrupted reference and a run with checkpoints started at
  the same moment on an empty cache directory (so both want to build the teachers at once), the second SIGKILLed
  at a random moment after its second checkpoint (possibly while it writes the next one), then resumed with
  `--resume_from_checkpoint true`. Recorded: the final weights' checksums (`--dump_checksums`), whether they are
  equal, whether the references of all repetitions are equal (run-to-run determinism), which run built the cache.

    python benchmarks/resume_under_load.py --repeats 10 --busy 2 --out benchmarks/results/resume_under_load.json
    python benchmarks/resume_under_load.py --code /path/to/older/checkout ...   # the same against other code
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def start_busy(n: int, max_s: float) -> list[subprocess.Popen]:
    code = f"import time\nend = time.time() + {max_s}\nwhile time.time() < end:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def run_pytest(code: str, env: dict) -> dict:
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/test_resume.py"],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    diffs = {m.group(1): float(m.group(2)) for m in re.finditer(r"resume from (checkpoint-\d).*= (\S+)", proc.stdout)}
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return {"returncode": proc.returncode, "diffs": diffs, "summary": tail, "wall_s": round(time.time() - start, 1)}


def _cli(code: str, out: str, cache: str, extra: list[str], max_steps: int) -> list[str]:
    script = os.path.join(code, "examples", "run_mmt_ard.py")
    return [
        sys.executable, script, "--quick", "--max_steps", str(max_steps), "--logging_steps", "4",
        "--embedded_cache_dir", cache, "--output_dir", out, "--dump_checksums", "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


def _final(out: str) -> str | None:
    path = os.path.join(out, "checksum_rank0.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)["final"]


def run_embedded(code: str, env: dict, work: str, i: int, max_steps: int, save_steps: int, rng: random.Random) -> dict:
    cache = os.path.join(work, f"cache{i}")
    ref_dir, killed_dir = os.path.join(work, f"ref{i}"), os.path.join(work, f"killed{i}")
    logs = {k: os.path.join(work, f"embedded{i}_{k}.log") for k in ("reference", "killed", "resumed")}
    files = {k: open(v, "w") for k, v in logs.items()}  # noqa: SIM115 - closed below, after the runs
    ref = subprocess.Popen(
        _cli(code, ref_dir, cache, [], max_steps),
        env=env,
        stdout=files["reference"],
        stderr=subprocess.STDOUT,
        cwd=work,
    )
    ckpt = ["--save_steps", str(save_steps)]
    killed = subprocess.Popen(
        _cli(code, killed_dir, cache, ckpt, max_steps),
        env=env,
        stdout=files["killed"],
        stderr=subprocess.STDOUT,
        cwd=work,
    )
    second = os.path.join(killed_dir, f"checkpoint-{2 * save_steps}")
    deadline = time.time() + 600
    while not os.path.isdir(second) and killed.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    delay = rng.uniform(0.0, 1.0)
    time.sleep(delay)
    finished_before_kill = killed.poll() is not None
    if not finished_before_kill:
        killed.send_signal(signal.SIGKILL)
    killed.wait()
    left = sorted(e for e in os.listdir(killed_dir) if e.startswith(("checkpoint-", "tmp-checkpoint")))
    resume = subprocess.run(
        _cli(code, killed_dir, cache, [*ckpt, "--resume_from_checkpoint", "true"], max_steps),
        env=env, stdout=files["resumed"], stderr=subprocess.STDOUT, cwd=work, check=False,
    )  # fmt: skip
    ref.wait()
    for f in files.values():
        f.close()
    built = {}
    for k, v in logs.items():
        with open(v) as f:
            built[k] = "training the clean teacher" in f.read()
    out = {
        "kill_delay_s": round(delay, 3),
        "finished_before_kill": finished_before_kill,
        "left_after_kill": left,
        "resume_returncode": resume.returncode,
        "reference_returncode": ref.returncode,
        "reference_final": _final(ref_dir),
        "resumed_final": _final(killed_dir),
        "built_the_teachers": built,
    }
    out["equal"] = out["reference_final"] is not None and out["reference_final"] == out["resumed_final"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--busy", type=int, default=2, help="busy-loop processes kept running (extra load)")
    parser.add_argument("--max-load-s", type=float, default=1800, help="upper bound on the busy loops' life")
    parser.add_argument("--experiments", nargs="+", default=["pytest", "embedded"], choices=["pytest", "embedded"])
    parser.add_argument("--max-steps", type=int, default=24)
    parser.add_argument("--save-steps", type=int, default=6)
    parser.add_argument("--code", default=REPO, help="the checkout to test (its tests/ and examples/ are used)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--out", default=None)
    opts = parser.parse_args(argv)
    code = os.path.abspath(opts.code)
    env = {**os.environ, "PYTHONPATH": code, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["TRANSFORMERS_OFFLINE"] = "1"
    rng = random.Random(opts.seed)
    work = tempfile.mkdtemp(prefix="resume_under_load_")
    record = {"code": code, "busy": opts.busy, "load_before": load_average(), "rounds": []}
    busy = start_busy(opts.busy, opts.max_load_s)
    try:
        for i in range(opts.repeats):
            row = {"round": i, "load": load_average()}
            if "pytest" in opts.experiments:
                row["pytest"] = run_pytest(code, env)
            if "embedded" in opts.experiments:
                row["embedded"] = run_embedded(code, env, work, i, opts.max_steps, opts.save_steps, rng)
            record["rounds"].append(row)
            print(json.dumps(row), flush=True)
    finally:
        stop(busy)
        record["load_after"] = load_average()
    rounds = record["rounds"]
    summary = {}
    if "pytest" in opts.experiments:
        diffs = [d for r in rounds for d in r["pytest"]["diffs"].values()]
        summary["pytest_resumes"] = len(diffs)
        summary["pytest_resumes_exact"] = sum(d == 0 for d in diffs)
        summary["pytest_max_diff"] = max(diffs, default=None)
        summary["pytest_failed_runs"] = sum(r["pytest"]["returncode"] != 0 for r in rounds)
    if "embedded" in opts.experiments:
        emb = [r["embedded"] for r in rounds]
        summary["embedded_runs"] = len(emb)
        summary["embedded_equal"] = sum(e["equal"] for e in emb)
        summary["embedded_distinct_reference_finals"] = len({e["reference_final"] for e in emb})
        summary["embedded_teacher_builds_per_round"] = [sum(e["built_the_teachers"].values()) for e in emb]
    record["summary"] = summary
    print(json.dumps(summary, indent=2))
    if opts.out:
        with open(opts.out, "w") as f:
            json.dump(record, f, indent=2)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
