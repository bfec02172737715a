"""Preemption: a SIGTERM/SIGUSR1 mid-run ends the step, leaves `checkpoint-N` at that step, exits with status 75,
and the run resumed from there ends bit-identical to an uninterrupted one (as the SIGKILL test, `test_resume.py`).

The subprocess run is `resume_helper.py`'s (`mmt-ard-sigmoid`, two projection heads, 8 steps, checkpoints every 3),
through `preemption_helper.py`, which waits inside step 5 until its handler has caught the signal the test sends.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import safetensors
import torch
from _launch import REPO, launch_two_processes, two_process_command
from transformers import TrainerCallback

from mmt_ard import MMTARDConfig
from mmt_ard.runtime.preemption import (
    MARKER_NAME,
    PREEMPTED_EXIT_CODE,
    IgnoreSignalsInWorker,
    PreemptionHandler,
    TrainingPreempted,
    parse_signals,
)
from mmt_ard.training.checkpointing import is_complete_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
PREEMPT_HELPER = os.path.join(HERE, "preemption_helper.py")
HELPER_PATH = os.path.join(HERE, "resume_helper.py")
_spec = importlib.util.spec_from_file_location("mmt_ard_resume_helper", HELPER_PATH)
helper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helper)

SIGNAL_STEP = 5  # mid epoch 0 (6 steps per epoch), after checkpoint-3
TOL = 1e-6


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _wait_for(path: str, proc, log: str, timeout: float = 240) -> str:
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            with open(log) as f:
                raise AssertionError(f"the training subprocess exited early:\n{f.read()[-4000:]}")
        if time.time() > deadline:
            raise AssertionError(f"the training subprocess did not reach step {SIGNAL_STEP} in time")
        time.sleep(0.1)
    time.sleep(0.05)  # the pid is written before the file is closed
    with open(path) as f:
        return f.read()


@pytest.fixture(scope="module")
def preempted(tmp_path_factory):
    """Start the run, train the reference meanwhile, then SIGTERM the run while it is inside step 5."""
    out = str(tmp_path_factory.mktemp("preempted"))
    log = os.path.join(str(tmp_path_factory.mktemp("logs")), "stderr.txt")
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, PREEMPT_HELPER, "--output_dir", out, "--signal_step", str(SIGNAL_STEP)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        )
    try:
        reference = helper.build_trainer(str(tmp_path_factory.mktemp("reference")), save_strategy="no")
        reference.train()
        pid = int(_wait_for(os.path.join(out, f"in-step-{SIGNAL_STEP}"), proc, log))
        assert pid == proc.pid
        os.kill(pid, signal.SIGTERM)
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with open(log) as f:
        stderr = f.read()
    return {
        "returncode": proc.returncode,
        "stderr": stderr,
        "dir": out,
        "state": helper.final_state(reference),
        "weighting": reference.weighting.state_dict(),
    }


def test_sigterm_saves_the_current_step_and_exits_75(preempted):
    assert preempted["returncode"] == PREEMPTED_EXIT_CODE, preempted["stderr"][-3000:]
    out = preempted["dir"]
    names = sorted(os.listdir(out))
    assert names == ["checkpoint-3", f"checkpoint-{SIGNAL_STEP}", f"in-step-{SIGNAL_STEP}", MARKER_NAME]
    ckpt = os.path.join(out, f"checkpoint-{SIGNAL_STEP}")
    assert is_complete_checkpoint(ckpt)
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "mmt_ard_state.json"} <= set(os.listdir(ckpt))
    with open(os.path.join(ckpt, "trainer_state.json")) as f:
        assert json.load(f)["global_step"] == SIGNAL_STEP
    with open(os.path.join(out, MARKER_NAME)) as f:
        marker = json.load(f)
    assert marker == {"step": SIGNAL_STEP, "checkpoint": ckpt, "signal": "SIGTERM", "exit_code": PREEMPTED_EXIT_CODE}
    assert f"Preempted by SIGTERM: stopped after step {SIGNAL_STEP}" in preempted["stderr"]


def test_resume_after_sigterm_is_exact(preempted):
    """`resume_from_checkpoint=True` picks checkpoint-5 and ends bit-for-bit on the uninterrupted run."""
    trainer = helper.build_trainer(preempted["dir"])
    trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == helper.MAX_STEPS
    diff = max_abs_diff(helper.final_state(trainer), preempted["state"])
    print(f"resume from checkpoint-{SIGNAL_STEP} after SIGTERM: max |w - w_ref| = {diff:.3g}")
    assert diff <= TOL
    assert trainer.weighting.state_dict() == preempted["weighting"]
    assert not os.path.exists(os.path.join(preempted["dir"], MARKER_NAME))  # a new train() clears the marker


# ---- in-process: the signal sent by the run itself ----
class SignalAt(TrainerCallback):
    """Send `sig` to this process when step `step` begins (or at the end of training: `step=None`)."""

    def __init__(self, sig, step: int | None):
        self.sig, self.step = sig, step

    def on_step_begin(self, args, state, control, **kwargs):
        if self.step is not None and state.global_step == self.step - 1:
            os.kill(os.getpid(), self.sig)

    def on_train_end(self, args, state, control, **kwargs):
        if self.step is None:
            os.kill(os.getpid(), self.sig)


def test_sigusr1_in_process_raises_training_preempted(make_trainer, output_dir):
    trainer = make_trainer("mmt-ard", max_steps=4, save_strategy="no", eval_strategy="steps", eval_steps=2)
    trainer.add_callback(SignalAt(signal.SIGUSR1, step=2))
    before = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(TrainingPreempted) as info:
        trainer.train()
    assert info.value.code == PREEMPTED_EXIT_CODE and info.value.step == 2 and info.value.signal_name == "SIGUSR1"
    assert sorted(os.listdir(output_dir)) == ["checkpoint-2", MARKER_NAME]  # saved although save_strategy="no"
    assert is_complete_checkpoint(os.path.join(output_dir, "checkpoint-2"))
    assert not any("eval_loss" in r for r in trainer.state.log_history)  # the evaluation due at step 2 was skipped
    assert signal.getsignal(signal.SIGUSR1) is before  # the previous handler is back


def _child_pids() -> list[int]:
    pids = []
    for tid in os.listdir(f"/proc/{os.getpid()}/task"):
        with open(f"/proc/{os.getpid()}/task/{tid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    return pids


class SignalEveryProcess(TrainerCallback):
    """Send `sig` to this process and all its children (the dataloader workers) when step `step` begins."""

    def __init__(self, sig, step: int):
        self.sig, self.step, self.children = sig, step, []

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step - 1:
            self.children = _child_pids()
            for pid in [*self.children, os.getpid()]:
                os.kill(pid, self.sig)


@pytest.mark.skipif(not os.path.isdir(f"/proc/{os.getpid()}/task"), reason="needs Linux /proc to find the workers")
def test_dataloader_workers_survive_the_signal(tmp_path):
    """Slurm's `--signal` reaches every process of the job step, dataloader workers included: they must not die."""
    out = str(tmp_path / "out")
    sender = SignalEveryProcess(signal.SIGUSR1, step=2)
    trainer = helper.build_trainer(out, [sender], dataloader_num_workers=2, save_strategy="no")
    with pytest.raises(TrainingPreempted) as info:
        trainer.train()
    assert len(sender.children) == 2  # both workers were signalled
    assert info.value.step == 2 and is_complete_checkpoint(os.path.join(out, "checkpoint-2"))


class SignalsItself(torch.utils.data.Dataset):
    """Each item sends SIGTERM to the worker process reading it."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the signal is delivered while the worker still runs
        return i


def test_dataloader_workers_ignore_the_preemption_signals(make_trainer):
    """A worker does not die of the signal its job step received (whatever its start method: the handler is set in
    the worker itself); without the trainer's `worker_init_fn` it does (the control)."""
    loader = torch.utils.data.DataLoader(
        SignalsItself(), num_workers=1, worker_init_fn=IgnoreSignalsInWorker(["SIGTERM", "SIGUSR1"])
    )
    assert [int(b) for b in loader] == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        list(torch.utils.data.DataLoader(SignalsItself(), num_workers=1))
    trainer = make_trainer("tecoa", dataloader_num_workers=1)
    init = trainer.get_train_dataloader().worker_init_fn
    assert isinstance(init, IgnoreSignalsInWorker) and init.signals == ["SIGTERM", "SIGUSR1"]
    assert init.inner is not None  # the Trainer's own seeding of the workers still runs
    trainer = make_trainer("tecoa", dataloader_num_workers=1, preemption_signals="none")
    assert not isinstance(trainer.get_train_dataloader().worker_init_fn, IgnoreSignalsInWorker)


def test_signal_after_the_last_step_completes_normally(make_trainer, output_dir):
    trainer = make_trainer("tecoa", max_steps=2)
    trainer.add_callback(SignalAt(signal.SIGTERM, step=None))
    trainer.train()  # no exception: the run had finished
    assert trainer.state.global_step == 2 and not os.path.exists(os.path.join(output_dir, MARKER_NAME))


def test_off_switch_installs_nothing(make_trainer):
    trainer = make_trainer("tecoa", preemption_signals="none")
    assert trainer._preemption is None
    assert not any(type(cb).__name__ == "PreemptionCallback" for cb in trainer.callback_handler.callbacks)
    trainer = make_trainer("tecoa", preemption_signals=["SIGUSR1"])
    assert trainer._preemption.handler.signals == [signal.SIGUSR1]


def test_handler_records_the_first_signal_and_restores_handlers():
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        handler = PreemptionHandler(["SIGUSR1", "SIGTERM"])
        with handler:
            assert signal.getsignal(signal.SIGUSR1) == handler._handle
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
        assert handler.received == "SIGUSR1"
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR1, previous)


@pytest.mark.parametrize(
    "given, expected",
    [
        (["SIGTERM", "SIGUSR1"], ["SIGTERM", "SIGUSR1"]),
        (["term", "usr1", "SIGTERM"], ["SIGTERM", "SIGUSR1"]),
        ([str(int(signal.SIGUSR2))], ["SIGUSR2"]),
        (["none"], []),
        ([], []),
    ],
)
def test_parse_signals(given, expected):
    assert parse_signals(given) == expected


@pytest.mark.parametrize("bad", [["SIGKILL"], ["SIGTERM", "SIGBOGUS"], ["9"], ["999"], [""]])
def test_bad_signal_names_name_the_field(bad, tmp_path):
    with pytest.raises(ValueError, match="preemption_signals"):
        MMTARDConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", preemption_signals=bad)


def test_config_default_and_string_form(tmp_path):
    kw = {"output_dir": str(tmp_path), "use_cpu": True, "report_to": "none"}
    assert MMTARDConfig(**kw).preemption_signals == ["SIGTERM", "SIGUSR1"]
    assert MMTARDConfig(**kw, preemption_signals="SIGUSR1").preemption_signals == ["SIGUSR1"]


# ---- two processes (DDP on CPU): the signal reaches rank 0 only ----
@pytest.mark.slow
def test_two_process_preemption_agrees_on_the_step_and_resumes_exactly(tmp_path):
    """Rank 0 alone gets SIGTERM inside step 5; both ranks stop after step 5 (the flag is all-reduced), save
    checkpoint-5 and exit 75; a 2-process resume ends bit-identical to an uninterrupted 2-process run.

    The run of `resume_helper.py`: `mmt-ard-sigmoid` (weighting state on the global batch) with projection heads.
    """
    out = tmp_path / "run"
    out.mkdir()
    log = tmp_path / "launch.txt"
    cmd, env = two_process_command(29541, PREEMPT_HELPER, "--output_dir", str(out), "--signal_step", str(SIGNAL_STEP))
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
        pid = int(_wait_for(str(out / f"in-step-{SIGNAL_STEP}"), proc, str(log)))
        os.kill(pid, signal.SIGTERM)  # rank 0 only
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    # the first rank to exit has status 75; the launcher then stops the other one (SIGTERM) and exits with its own
    # failure status, hence preempted.json for job scripts behind a launcher
    root_cause = text.split("Root Cause")[-1]
    assert f"exitcode  : {PREEMPTED_EXIT_CODE}" in root_cause, text[-4000:]
    assert "]: Traceback" not in text, text[-4000:]  # no rank failed (the launcher's own traceback is expected)
    # rank 0 caught the signal, rank 1 learnt it from the all-reduce: both stopped after the same step
    assert f"Preempted by SIGTERM: stopped after step {SIGNAL_STEP}," in text
    assert f"Preempted by a signal to another process: stopped after step {SIGNAL_STEP}," in text
    assert proc.returncode != 0
    assert sorted(os.listdir(out)) == [
        "checkpoint-3",
        f"checkpoint-{SIGNAL_STEP}",
        f"in-step-{SIGNAL_STEP}",
        MARKER_NAME,
    ]
    ckpt = out / f"checkpoint-{SIGNAL_STEP}"
    assert is_complete_checkpoint(str(ckpt)) and {"rng_state_0.pth", "rng_state_1.pth"} <= set(os.listdir(ckpt))
    assert json.loads((out / MARKER_NAME).read_text())["step"] == SIGNAL_STEP

    # the requeued job: resume from the newest complete checkpoint, then (same launch) the uninterrupted reference
    resumed_file, reference_dir = tmp_path / "resumed.safetensors", tmp_path / "reference"
    done = launch_two_processes(
        29543, HELPER_PATH, "--output_dir", str(out), "--resume", "--dump", str(resumed_file),
        "--reference_dir", str(reference_dir),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    resumed, resumed_meta = _load(resumed_file)
    reference, reference_meta = _load(reference_dir / "final.safetensors")
    diff = max_abs_diff(resumed, reference)
    print(f"2-process resume from checkpoint-{SIGNAL_STEP} after SIGTERM to rank 0: max |w - w_ref| = {diff:.3g}")
    assert diff <= TOL
    assert resumed_meta["weighting"] == reference_meta["weighting"]
    assert resumed_meta["setup"] == "DDP, 2 processes"


def _load(path) -> tuple[dict, dict]:
    with safetensors.safe_open(str(path), "pt") as f:
        names = f.keys()
        return {k: f.get_tensor(k) for k in names}, f.metadata()
