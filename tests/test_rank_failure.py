"""A rank that dies: under `torchrun --max-restarts 1`, one of two gloo ranks is SIGKILLed after a
periodic checkpoint; torchrun restarts the group, `--ckpt_path last` resumes in the same run
folder and the run ends as if left alone. And the run's metrics.csv survives a kill while it is
being written."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, run_dir, write_config
from udaseg.runtime.cli import main
from udaseg.runtime.loggers import CSVLogger, truncate_metrics


def torchrun_fit(root: Path, *extra: str) -> str:
    """6 iterations of tiny AdvEnt on 2 gloo ranks started by torchrun (one restart allowed),
    `last.ckpt` every 3 iterations, `--ckpt_path last` as a job script would pass it; its
    stderr."""
    root.mkdir()
    config = write_config(root, method="udaseg.methods.AdvEnt", max_steps=6)
    with socket.socket() as probe:                 # a free port for torchrun's rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--max-restarts", "1", "--monitor-interval", "0.1", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{port}",
               "-m", "udaseg.runtime.cli", "fit", "--config", str(config), "--ckpt_path", "last",
               "--checkpoint.every_n_train_steps", "3", "--model.init_args.discriminator_width",
               "8", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
               "--trainer.strategy", "ddp_find_unused_parameters_true", *extra]
    # torchrun's c10d rendezvous shares one TCPStore between its rounds unless told not to: the
    # restarted ranks would read the dead ranks' gloo addresses from it and fail to connect
    # ("Connection refused") or wait for a peer that never comes.
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                   "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    with subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as process:
        try:
            _, stderr = process.communicate(timeout=240)
        except subprocess.TimeoutExpired:        # a rank stuck in a collective, say
            process.terminate()                  # torchrun stops its ranks (they have their
            process.communicate(timeout=60)      # own sessions), then exits
            raise
    assert process.returncode == 0, stderr[-3000:]
    return stderr


def test_torchrun_restarts_a_group_whose_rank_died_and_the_run_ends_as_if_left_alone(tmp_path):
    """Rank 1 is SIGKILLed after iteration 5 of 6, in torchrun's first attempt only; rank 0's
    collective fails, torchrun restarts both, they resume the last.ckpt of iteration 3 in
    version_0 (metrics.csv cut back to it) and the final weights and metrics.csv equal those of
    the same launch left alone, to the bit."""
    torchrun_fit(tmp_path / "alone")
    stderr = torchrun_fit(tmp_path / "killed", "--trainer.callbacks+=tests.helpers.KillRank",
                          "--trainer.callbacks.iteration=5", "--trainer.callbacks.rank=1")
    killed = run_dir(tmp_path / "killed", 0)
    # Both ranks of the first attempt start fresh; both of the restarted group resume the same
    # file at iteration 3.
    assert stderr.count("starting a fresh run") == 2, stderr[-3000:]
    resumed = f"udaseg: resuming {killed / 'checkpoints' / 'last.ckpt'} at iteration 3"
    assert stderr.count(resumed) == 2, stderr[-3000:]
    assert not run_dir(tmp_path / "killed", 1).exists(), "the restarted group stays in version_0"

    def final(run: Path) -> dict:
        return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)

    expected, actual = final(run_dir(tmp_path / "alone", 0)), final(killed)
    assert actual["global_step"] == expected["global_step"] == 6
    assert expected["state_dict"].keys() == actual["state_dict"].keys()
    for key, value in expected["state_dict"].items():
        assert torch.equal(value, actual["state_dict"][key]), key

    def rows(run: Path) -> list[dict]:
        with open(run / "metrics.csv", newline="") as stream:
            return list(csv.DictReader(stream))

    expected_rows = rows(run_dir(tmp_path / "alone", 0))
    assert rows(killed) == expected_rows
    assert [row["step"] for row in expected_rows if row.get("train/seg")] == \
        ["0", "1", "2", "3", "4", "5"]


@pytest.mark.parametrize("shared_store", [True, False])
def test_a_restarted_group_on_the_failed_groups_store_is_warned(tmp_path, monkeypatch, capsys,
                                                                 shared_store):
    """What torchrun tells the ranks of a restarted group: the restart count, and whether they
    use its rendezvous store (shared between rounds unless TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1,
    always with `--master_port`)."""
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", str(shared_store))
    main(["fit", "--config", str(write_config(tmp_path, max_steps=1)), "--ckpt_path", "last"])
    warned = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in capsys.readouterr().err
    assert warned == shared_store


def test_new_columns_never_leave_metrics_csv_without_its_earlier_rows(tmp_path, monkeypatch):
    """The first validation adds columns, so the file is rewritten with a new header; a process
    killed during that rewrite (here: an interrupt after the header) leaves the old file."""
    logger = CSVLogger(str(tmp_path), name="run", version=0)
    logger.log_metrics({"train/seg": 1.0}, step=0)
    logger.save()
    metrics = Path(logger.log_dir) / "metrics.csv"
    before = metrics.read_bytes()

    def dies_midway(writer, rows):
        raise KeyboardInterrupt                    # as a signal arriving during the write

    monkeypatch.setattr(csv.DictWriter, "writerows", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        logger.log_metrics({"val/mIoU": 30.0}, step=0)      # evaluation rows are saved at once
    monkeypatch.undo()
    assert metrics.read_bytes() == before
    assert not [name for name in os.listdir(metrics.parent) if name.startswith(".")], \
        "no temporary file stays behind"


def test_truncate_metrics_drops_a_last_row_cut_short_by_a_kill(tmp_path):
    """A row whose append was cut off has no line end; the resumed run's first row would
    otherwise continue it."""
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("step,train/seg,val/mIoU\r\n0,1.0,\r\n1,0.9,\r\n2,0.", newline="")
    assert truncate_metrics(metrics, iterations=3) == 1
    assert metrics.read_bytes() == b"step,train/seg,val/mIoU\r\n0,1.0,\r\n1,0.9,\r\n"
