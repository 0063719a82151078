"""Preemption: on SIGUSR1/SIGTERM, finish the iteration, write last.ckpt, requeue, exit.

Cluster schedulers warn a job before killing it (SLURM: `#SBATCH --signal=USR1@300` sends
SIGUSR1 five minutes ahead; preemption and `scancel` send SIGTERM, then SIGKILL after
KillWait). Lightning's own SLURM handler saves an `hpc_ckpt_N.ckpt` from inside the signal
handler, wherever the training step happens to be (between a backward and an optimiser step,
say), so resuming from it is not the run left alone. This callback only raises a flag in the
handler; at the end of the iteration, all ranks agreeing so none waits in a collective, it
writes `last.ckpt`, which `udaseg fit ... --ckpt_path last` resumes exactly, and asks SLURM to
requeue the job (`scontrol requeue $SLURM_JOB_ID`, when running under SLURM); once that
iteration's metrics are logged (and a validation due after it has run) the process exits with
128 + the signal number. It replaces Lightning's handlers for these signals while training.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from types import FrameType
from typing import Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn


class Preempted(SystemExit):
    """Raised after the preemption checkpoint is written; the exit code is 128 + signal."""


class Preemption(pl.Callback):
    """Args:
        signals: signal names that mean "about to be killed" (empty: off).
        requeue: under SLURM, requeue the job after the checkpoint (it then reruns the same
            batch script, which resumes with `--ckpt_path last`).
    """

    def __init__(self, signals: tuple[str, ...] = ("SIGUSR1", "SIGTERM"),
                 requeue: bool = True) -> None:
        unknown = [name for name in signals if not hasattr(signal, name)]
        if unknown:
            raise ValueError(f"preemption.signals: unknown signal name(s) {unknown}")
        self.signals = tuple(signals)
        self.requeue = requeue
        self.received: Optional[int] = None
        self.exit_code: Optional[int] = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        self.received = signum

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for name in self.signals:
            number = getattr(signal, name)
            self._previous[number] = signal.signal(number, self._handle)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)

    def _agreed_signal(self, trainer: pl.Trainer, device: torch.device) -> int:
        """The signal any rank received (0: none); one collective per iteration under DDP."""
        received = self.received or 0
        if trainer.world_size <= 1:
            return received
        flag = torch.tensor(float(received), device=device)
        return int(trainer.strategy.reduce(flag, reduce_op="max").item())

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             *args) -> None:
        # Exit only now: Lightning logs an iteration's metrics (and validates) after its
        # batch-end hooks, and those belong to the checkpoint. After the last iteration there
        # is no next one: the run just finishes.
        if self.exit_code is not None:
            raise Preempted(self.exit_code)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           *args) -> None:
        # The checkpoint is written where Lightning's periodic ones are, at an iteration's
        # end: its loop bookkeeping on resume assumes that position.
        if self.exit_code is not None or not self.signals:
            return
        signum = self._agreed_signal(trainer, pl_module.device)
        if not signum or 0 < trainer.max_steps <= trainer.global_step:
            return  # nothing, or the run is complete anyway: no requeue
        checkpoint = next((callback for callback in trainer.checkpoint_callbacks
                           if isinstance(callback, ModelCheckpoint) and callback.save_last), None)
        if checkpoint is None or checkpoint.dirpath is None:
            rank_zero_warn("preemption signal received, but the run has no checkpoint folder: "
                           "exiting without a checkpoint")
        else:
            path = Path(checkpoint.dirpath) / f"{checkpoint.CHECKPOINT_NAME_LAST}.ckpt"
            trainer.save_checkpoint(path)
            rank_zero_info(f"udaseg: {signal.Signals(signum).name} received: saved {path} at "
                           f"iteration {trainer.global_step}")
        job = os.environ.get("SLURM_JOB_ID")
        if self.requeue and job and trainer.is_global_zero:
            try:
                result = subprocess.run(["scontrol", "requeue", job], capture_output=True,
                                        text=True, timeout=60)
                problem = result.stderr.strip() if result.returncode else ""
            except (OSError, subprocess.TimeoutExpired) as error:
                problem = str(error)
            if problem:
                rank_zero_warn(f"scontrol requeue {job} failed: {problem}")
            else:
                rank_zero_info(f"udaseg: requeued SLURM job {job}")
        self.exit_code = 128 + signum
