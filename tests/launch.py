"""One harness for every multi-process test: ports, the tiny ZeRO-3 config, launcher commands, launched jobs.

Jobs run in their own process session, log to a file, and are killed as a group when a test fails or hangs.
"""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEEPSPEED = str(Path(sys.executable).with_name("deepspeed"))
JOB_LIMIT_S = 600  # a hung job fails its test instead of hanging the suite


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_zero3_config(folder) -> str:
    """The packaged ``zero3.json`` with persistence threshold 0, so that every tensor of a tiny model is sharded."""
    config = json.loads((REPO / "trl_ipo" / "configs" / "zero3.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = Path(folder) / "zero3_tiny.json"
    path.write_text(json.dumps(config))
    return str(path)


def launch_env(**extra) -> dict:
    """CPU ranks, one thread each, offline; the ``deepspeed`` command on PATH (scripts call it by name)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}
    env["WANDB_MODE"] = "offline"
    env["PATH"] = f"{Path(DEEPSPEED).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def deepspeed_two_ranks(script, *args) -> list[str]:
    """``deepspeed --num_gpus 2`` (two CPU ranks on this node) running ``script args``."""
    return [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), str(script), *map(str, args)]


def torchrun_two_ranks(script, *args, env=None, timeout=300):
    """``script args`` on 2 CPU ranks under torch's own launcher (``torchrun --standalone``): the finished process.

    One thread per rank; the repository root is on the ranks' ``PYTHONPATH``; ``env`` adds variables."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    return subprocess.run([*cmd, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)


class Job:
    """One launched job: its launcher processes (one per node), logs, and the per-rank JSON records in ``out``."""

    def __init__(self, name, root, commands, env, out=None):
        self.name, self.out = name, Path(out) if out is not None else Path(root) / f"{name}-out"
        self.logs = [Path(root) / f"{name}-node{i}.log" for i in range(len(commands))]
        self.procs = [
            subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
            )
            for cmd, log in zip(commands, self.logs, strict=True)
        ]
        self._codes = None

    def wait(self, limit=JOB_LIMIT_S):
        if self._codes is None:
            try:
                self._codes = [proc.wait(timeout=limit) for proc in self.procs]
            except subprocess.TimeoutExpired:
                self.stop()
                pytest.fail(f"job {self.name} did not finish within {limit} s:\n{self.tail()}")
        return self._codes

    def records(self, kind=""):
        paths = sorted(self.out.glob(f"rank[0-9]{kind}.json"))
        return {int(p.name[4]): json.loads(p.read_text()) for p in paths}

    def finished(self):
        """Wait; every process must exit 0 and both ranks must have written their record."""
        codes = self.wait()
        assert codes == [0] * len(codes), f"{self.name} exited with {codes}:\n{self.tail()}"
        records = self.records()
        assert sorted(records) == [0, 1], f"{self.name}: rank records {sorted(records)}:\n{self.tail()}"
        return records

    def tail(self, chars=3000):
        return "\n".join(f"--- {log.name}\n{log.read_text()[-chars:]}" for log in self.logs if log.exists())

    def stop(self):
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
