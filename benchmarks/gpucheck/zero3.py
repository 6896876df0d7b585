"""Check 3: the packaged ZeRO-3 config through the DeepSpeed launcher, policy and reference both ZeRO-3 engines,
with and without ``prefix_sharing``; its losses against the same runs without DeepSpeed in this process.

The launched job starts first and runs beside the other checks (:meth:`Zero3Job.start`); :meth:`Zero3Job.results`
trains the non-ZeRO runs here, waits for the job and compares. On CPU the launcher runs its rank with DeepSpeed's
CPU accelerator and gloo (``DS_ACCELERATOR=cpu``), as the distributed tests do.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from benchmarks.gpucheck import models
from benchmarks.gpucheck.report import entry, failed
from benchmarks.gpucheck.runs import train_args
from benchmarks.gpucheck.settings import FP32_RTOL

RUNS = {"zero3": {}, "zero3+prefix_sharing": {"prefix_sharing": True}}
STEPS = 3
JOB_LIMIT_S = 420


class Zero3Job:
    def __init__(self, ctx):
        self.ctx = ctx
        self.root = ctx.workdir / "zero3"
        self.proc = None
        self.error: BaseException | None = None

    def start(self) -> None:
        from trl_ipo.distributed import resolve_config

        ctx, cfg = self.ctx, self.ctx.cfg
        self.root.mkdir(parents=True, exist_ok=True)
        self.model_dir = self.root / "model"
        ctx.model(cfg.parity_model).save_pretrained(self.model_dir)
        ctx.tok.save_pretrained(self.model_dir)
        self.rows = models.rows(cfg.check_data, STEPS, seed=cfg.seed)
        data = self.root / "pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        self.config = resolve_config("zero3")  # the packaged trl_ipo/configs/zero3.json, as shipped
        self.args = {
            name: train_args(cfg, self.root / f"run-{name}", cfg.check_data, STEPS, bf16=False, **flags)
            for name, flags in RUNS.items()
        }
        spec = {
            "model": str(self.model_dir),
            "data": str(data),
            "out": str(self.root / "out"),
            "runs": {name: {**args, "deepspeed": self.config} for name, args in self.args.items()},
        }
        spec_path = self.root / "spec.json"
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        if cfg.device == "cpu":
            env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
        worker = Path(__file__).with_name("zero3_worker.py")
        # `python -m deepspeed.launcher.runner` is what the `deepspeed` command runs (found without PATH changes).
        self.command = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1"]
        self.command += ["--master_port", str(_free_port()), str(worker), str(spec_path)]
        self.log = self.root / "launch.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                self.command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def results(self) -> list[dict]:
        names = [f"zero3/{name}" for name in RUNS]
        try:
            singles = self._single_runs()
            code = self.proc.wait(timeout=JOB_LIMIT_S)
        except Exception as err:
            self.stop()
            return [failed(n, err) for n in names]
        records_path = self.root / "out" / "rank0.json"
        if code != 0 or not records_path.exists():
            tail = self.log.read_text()[-1500:]
            return [failed(n, RuntimeError(f"launcher exited {code}: {tail}")) for n in names]
        records = json.loads(records_path.read_text())
        full = sum(p.numel() for p in self.ctx.model(self.ctx.cfg.parity_model).parameters())
        return [self._compare(f"zero3/{name}", records[name], singles[name], full) for name in RUNS]

    def _single_runs(self) -> dict[str, list[float]]:
        from datasets import Dataset
        from transformers.trainer_callback import PrinterCallback

        from trl_ipo import IPOConfig, IPOTrainer

        losses = {}
        for name, args in self.args.items():
            single = {**args, "output_dir": str(self.root / f"single-{name}")}
            trainer = IPOTrainer(
                model=str(self.model_dir),
                args=IPOConfig(**single),
                train_dataset=Dataset.from_list(self.rows),
                processing_class=self.ctx.tok,
            )
            trainer.remove_callback(PrinterCallback)
            trainer.train()
            losses[name] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        return losses

    def _compare(self, name, record, single, full_numel) -> dict:
        got = record["losses"]
        diffs = [abs(a - b) / abs(a) for a, b in zip(single, got, strict=False)]
        diff = max(diffs) if len(got) == len(single) == STEPS else float("inf")
        ref, pol = record["reference"], record["policy"]
        big = ref["largest"] or {}
        sharded = (
            pol["engine"] == ref["engine"] == "DeepSpeedEngine"
            and pol["zero_stage"] == ref["zero_stage"] == 3
            and ref["num_zero3_params"] == ref["num_params"] > 0
            and ref["num_released"] > 0
            and ref["ds_numel"] == full_numel
            and big.get("numel") == 0
        )
        moved = len(set(single)) == len(single)
        detail = (
            f"{' '.join(['deepspeed', *self.command[3:5]])} with trl_ipo/configs/zero3.json, "
            f"{record['num_processes']} rank ({record['distributed_type']}), fp32, {STEPS} steps: losses {got} "
            f"vs {single} without DeepSpeed. Reference: {ref['engine']}, ZeRO stage {ref['zero_stage']}, "
            f"{ref['num_released']} of {ref['num_params']} parameters released (numel() 0, kept whole under the "
            f"persistence threshold {ref['persistence_threshold']}: {', '.join(ref['kept_whole']) or 'none'}), "
            f"Σ ds_numel {ref['ds_numel']:,} = the model's {full_numel:,}, local partitions "
            f"{ref['local_partition_numel']:,}; largest {big.get('name')}: ds_shape {big.get('ds_shape')}, ds_numel "
            f"{big.get('ds_numel')}, numel() {big.get('numel')}. Policy: {pol['engine']}, stage {pol['zero_stage']}, "
            f"{pol['num_released']} of {pol['num_params']} released"
        )
        if not sharded:
            detail += "; FAILED: policy and reference are not both partitioned ZeRO-3 engines"
        if not moved:
            detail += "; FAILED: the loss did not change between steps"
        return entry(name, diff, FP32_RTOL, detail, passed=sharded and moved and diff <= FP32_RTOL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
