"""Checkpoints are written atomically (a write that dies midway, or a process SIGKILLed while
writing, leaves the previous file whole) and read with weights_only=True, with errors that name
the file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import udaseg.runtime.checkpoint_io as checkpoint_io
from tests.helpers import REPO, cli_error, write_config
from udaseg.runtime.checkpoint_io import CheckpointError, SafeCheckpointIO
from udaseg.runtime.loggers import truncate_metrics


def checkpoint(value: float) -> dict:
    return {"state_dict": {"weight": torch.full((64, 64), value)}, "global_step": int(value)}


def test_a_write_that_dies_midway_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = SafeCheckpointIO()
    io.save_checkpoint(checkpoint(1.0), path)

    def dies_midway(payload, stream):
        stream.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt                # as a signal arriving during the write

    monkeypatch.setattr(checkpoint_io.torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint(checkpoint(2.0), path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["global_step"] == 1
    assert os.listdir(path.parent) == ["last.ckpt"], "no temporary file stays behind"


def test_sigkill_during_repeated_saves_never_leaves_a_truncated_file(tmp_path):
    """A child rewrites a 32 MB checkpoint in a loop and is SIGKILLed mid-way through."""
    path = tmp_path / "last.ckpt"
    script = textwrap.dedent(f"""
        import torch
        from udaseg.runtime.checkpoint_io import SafeCheckpointIO
        io, step = SafeCheckpointIO(), 0
        while True:
            io.save_checkpoint({{"weight": torch.full((2048, 4096), float(step)),
                                "global_step": step}}, {str(path)!r})
            step += 1
            print(step, flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, text=True)
    assert child.stdout.readline().strip() == "1"            # one save is complete
    time.sleep(0.3)                                          # now it is inside another one
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    loaded = SafeCheckpointIO().load_checkpoint(path)
    assert torch.equal(loaded["weight"], torch.full((2048, 4096), float(loaded["global_step"])))


class Pickled:
    """Any class torch.load(weights_only=True) has not been told to allow."""


def test_checkpoints_are_read_with_weights_only_and_errors_name_the_file(tmp_path):
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {}, "payload": Pickled()}, unsafe)
    with pytest.raises(CheckpointError, match=r"unsafe\.ckpt holds objects that "
                       r"torch\.load\(weights_only=True\) refuses"):
        SafeCheckpointIO().load_checkpoint(unsafe)
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*missing\.ckpt not found"):
        SafeCheckpointIO().load_checkpoint(tmp_path / "missing.ckpt")


def test_the_cli_resumes_through_it_and_names_a_truncated_checkpoint(tmp_path, capsys):
    truncated = tmp_path / "last.ckpt"
    torch.save(checkpoint(3.0), truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    config = write_config(tmp_path, max_steps=1)
    assert re.search(r"last\.ckpt is truncated or not a PyTorch checkpoint \(500 bytes\)",
                     cli_error(capsys, ["fit", "--config", str(config), "--ckpt_path",
                                        str(truncated)]))


def test_truncate_metrics_drops_rows_after_the_checkpoint(tmp_path):
    metrics = tmp_path / "metrics.csv"
    # Iterations 1-3 and a validation after iteration 2 (Lightning logs them as steps 0-2).
    metrics.write_text("step,train/seg,val/mIoU\r\n0,1.0,\r\n1,0.9,\r\n1,,30.0\r\n2,0.8,\r\n")
    assert truncate_metrics(metrics, iterations=2) == 1
    assert metrics.read_bytes() == b"step,train/seg,val/mIoU\r\n0,1.0,\r\n1,0.9,\r\n1,,30.0\r\n"
    assert truncate_metrics(metrics, iterations=2) == 0
    assert truncate_metrics(tmp_path / "none.csv", iterations=2) == 0
