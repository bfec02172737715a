"""`accelerate launch` of a script on 2 CPU processes (gloo), for the multi-process tests.

`accelerate launch --cpu --num_processes 2` starts ONE process in accelerate 1.x unless MPI is set up; `--multi_gpu`
on a machine without GPUs starts two processes through torch.distributed, and `MMTARDConfig` then sets `use_cpu`
itself (see `mmt_ard.runtime.distributed`). `--config_file` runs a shipped Accelerate config instead (e.g. FSDP).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def two_process_command(port: int, script: str, *script_args: str, config_file: str | None = None):
    """`(cmd, env)` of `accelerate launch` with 2 processes on CPU, offline, one thread per rank."""
    exe = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    cmd = [exe, "launch"] if exe else [sys.executable, "-m", "accelerate.commands.launch"]
    if config_file is None:
        cmd += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    else:
        cmd += ["--config_file", config_file]
    cmd += ["--num_processes", "2", "--main_process_port", str(port), script, *script_args]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "TOKENIZERS_PARALLELISM": "false",
    }
    return cmd, env


def launch_two_processes(
    port: int, script: str, *script_args: str, config_file: str | None = None, timeout: float = 240
) -> subprocess.CompletedProcess:
    """Run `script` on 2 CPU processes to completion; returns the finished process (stdout/stderr captured)."""
    cmd, env = two_process_command(port, script, *script_args, config_file=config_file)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env, check=False)


def free_port() -> int:
    """A TCP port nobody listens on now (for a launcher's rendezvous; other test runs may share the machine)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(*args: str, nproc: int = 2, port: int | None = None):
    """`(cmd, env)` of `torchrun --nproc_per_node N --master_port P ARGS` on CPU, offline, one thread per rank.

    `args` is what follows the launcher's own options: a script and its arguments, or `-m module ...`.
    """
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    cmd = [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]
    cmd += ["--nproc_per_node", str(nproc), "--master_port", str(port or free_port()), *args]
    _, env = two_process_command(0, "")
    return cmd, env
