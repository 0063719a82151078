"""DDP with the generator/discriminator pattern: 2 CPU processes (gloo) through the real CLI.

Run as a subprocess: inside pytest, Lightning's DDP launcher would re-launch the test session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.test_cli import write_config

REPO = Path(__file__).resolve().parents[1]


def fit_two_ranks(tmp_path: Path, method: str, *extra: str) -> list[dict]:
    """Fit 3 iterations of a tiny config with 2 gloo ranks through the CLI; each rank's dump."""
    config = write_config(tmp_path, method=method, max_steps=3)
    dump = tmp_path / "weights"
    command = [sys.executable, "-m", "udaseg.cli", "fit", "--config", str(config),
               "--trainer.strategy", "ddp_find_unused_parameters_true",
               "--trainer.devices", "2", "--trainer.accelerator", "cpu",
               "--model.init_args.discriminator_width", "8", *extra,
               "--trainer.callbacks+=tests.ddp_probe.SaveRankWeights",
               f"--trainer.callbacks.directory={dump}"]
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(dump / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert [rank["world_size"] for rank in ranks] == [2, 2]
    assert [rank["global_step"] for rank in ranks] == [3, 3]
    return ranks


def assert_identical_weights(ranks: list[dict]) -> None:
    for key, value in ranks[0]["state_dict"].items():
        assert torch.equal(value, ranks[1]["state_dict"][key]), f"{key} differs between ranks"


def test_advent_ddp_two_ranks_end_with_identical_weights(tmp_path):
    ranks = fit_two_ranks(tmp_path, "udaseg.methods.AdvEnt")
    assert any(key.startswith("discriminators.aux") for key in ranks[0]["state_dict"])
    assert_identical_weights(ranks)
