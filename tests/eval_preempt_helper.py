"""`mmt-ard-eval` under torchrun, with what the test needs to preempt it at a known point and to see who writes.

    torchrun --nproc_per_node 2 tests/eval_preempt_helper.py FLAG_DIR MODE -- <mmt-ard-eval arguments>

* MODE `preempt`: when process 0 starts its second batch it writes `FLAG_DIR/in-batch` (its pid) and waits until
  `FLAG_DIR/sent` exists (the test sends SIGTERM to that pid, then creates the file); the batch then finishes and the
  signal is seen at the end of the round, on both processes;
* MODE `kill`: process 1 kills itself (SIGKILL) when it starts its second batch: the process group dies mid-run.
* Every call that writes into the output directory (results, per-sample file, marker, text heads) is recorded, and
  each process writes the list of its calls to `FLAG_DIR/writes-rank<R>.json` when it exits.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch

from mmt_ard.cli import evaluate as cli
from mmt_ard.evaluation import robust_eval, sample_loop, samples

RANK = int(os.environ.get("RANK", "0"))
WAIT_S = 120


def main(flag_dir: str, mode: str, argv: list[str]) -> int:
    torch.set_num_threads(1)
    writes: list[str] = []

    def recorded(name, fn):
        def wrapper(*args, **kwargs):
            writes.append(name)
            return fn(*args, **kwargs)

        return wrapper

    samples.SampleFile.start = recorded("samples.start", samples.SampleFile.start)
    samples.SampleFile.append = recorded("samples.append", samples.SampleFile.append)
    robust_eval.write_reports = recorded("write_reports", robust_eval.write_reports)
    robust_eval.write_marker_record = recorded("write_marker", robust_eval.write_marker_record)
    robust_eval.remove_marker = recorded("remove_marker", robust_eval.remove_marker)
    real_cache = robust_eval._attach_head_cache

    def head_cache(zero_shot, identity, cache_dir, data):
        save = real_cache(zero_shot, identity, cache_dir, data)
        return recorded("text_head", save) if cache_dir is not None else save

    robust_eval._attach_head_cache = head_cache

    batches = []
    real_batch = sample_loop.evaluate_batch

    def evaluate_batch(*args, **kwargs):
        batches.append(1)
        if mode == "kill" and RANK == 1 and len(batches) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "preempt" and RANK == 0 and len(batches) == 2:
            with open(os.path.join(flag_dir, "in-batch"), "w") as f:
                f.write(str(os.getpid()))
            deadline = time.time() + WAIT_S
            while not os.path.exists(os.path.join(flag_dir, "sent")):
                if time.time() > deadline:
                    raise TimeoutError(f"no signal within {WAIT_S} s")
                time.sleep(0.02)
        return real_batch(*args, **kwargs)

    sample_loop.evaluate_batch = evaluate_batch
    try:
        return cli.main(argv)
    finally:
        with open(os.path.join(flag_dir, f"writes-rank{RANK}.json"), "w") as f:
            json.dump(writes, f)


if __name__ == "__main__":
    separator = sys.argv.index("--")
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[separator + 1 :]))
