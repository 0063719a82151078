"""DDP through the real CLI with 2 CPU processes (gloo): training with the generator/
discriminator pattern, and evaluation."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import torch
import yaml

from tests.helpers import (
    REPO,
    TINY_IMAGES,
    assert_identical_weights,
    fit_two_ranks,
    run_dir,
    write_config,
)
from udaseg.data import IGNORE_INDEX, SyntheticStreets
from udaseg.runtime.cli import main


def test_advent_ddp_two_ranks_end_with_identical_weights(tmp_path):
    ranks = fit_two_ranks(tmp_path, "udaseg.methods.AdvEnt")
    assert any(key.startswith("discriminators.aux") for key in ranks[0]["state_dict"])
    assert_identical_weights(ranks)


def test_torchrun_launch_trains_like_lightnings_own_launcher(tmp_path):
    """`torchrun --nproc_per_node 2 -m udaseg.runtime.cli fit ...`: Lightning takes the ranks
    torchrun set up (no processes of its own) and the weights equal a run Lightning launched."""
    with socket.socket() as probe:                 # a free port for torchrun's rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(port)]
    (tmp_path / "lightning").mkdir()
    (tmp_path / "torchrun").mkdir()
    expected = fit_two_ranks(tmp_path / "lightning", "udaseg.methods.AdvEnt")
    launched = fit_two_ranks(tmp_path / "torchrun", "udaseg.methods.AdvEnt", launcher=torchrun)
    for rank in (0, 1):
        for key, value in expected[rank]["state_dict"].items():
            assert torch.equal(value, launched[rank]["state_dict"][key]), (rank, key)


def test_validate_on_two_ranks_counts_every_image_once(tmp_path):
    """`udaseg validate` of 5 images (not divisible by 2) on 2 gloo ranks gives exactly the
    1-rank confusion matrix, which counts every labelled pixel of the 5 images once."""
    config = write_config(tmp_path, max_steps=1)
    main(["fit", "--config", str(config)])
    checkpoint = str(run_dir(tmp_path, 0) / "checkpoints" / "last.ckpt")
    five_images = ["--data.val.init_args.num_images", "5", "--ckpt_path", checkpoint]
    main(["validate", "--config", str(config), *five_images])
    command = [sys.executable, "-m", "udaseg.runtime.cli", "validate", "--config", str(config),
               *five_images, "--trainer.devices", "2", "--trainer.strategy", "ddp",
               "--trainer.accelerator", "cpu"]
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one_rank, two_ranks = (
        json.loads((run_dir(tmp_path, version, "tiny") / "val_metrics.json").read_text())
        for version in (1, 2))
    assert two_ranks["confusion_matrix"] == one_rank["confusion_matrix"]
    labels = [SyntheticStreets("real", "val", 5, **TINY_IMAGES)[index]["label"]
              for index in range(5)]
    labelled = sum(int((label != IGNORE_INDEX).sum()) for label in labels)
    assert sum(map(sum, one_rank["confusion_matrix"])) == labelled


def test_the_slurm_example_launches_udaseg_fit_resuming_in_its_own_run_folder(tmp_path):
    """examples/slurm/train.sbatch run by bash with a fake `srun` that prints the resolved
    config: nodes and GPUs from SLURM's variables, the run folder named after the job id
    (a requeued job keeps it), and `--ckpt_path last`."""
    srun = tmp_path / "srun"
    srun.write_text(f'#!/bin/sh\nshift\nexec {sys.executable} -m udaseg.runtime.cli "$@" '
                    '--print_config\n')
    srun.chmod(0o755)
    environment = {**os.environ, "PYTHONPATH": str(REPO), "SLURM_NNODES": "2",
                   "SLURM_NTASKS_PER_NODE": "4", "SLURM_JOB_ID": "77",
                   "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(REPO / "examples" / "slurm" / "train.sbatch"),
                             "configs/synthetic/advent.yaml", "--trainer.max_steps", "10"],
                            cwd=REPO, env=environment, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load(result.stdout)
    trainer = config["trainer"]
    # devices stays the string "4", which Lightning parses as 4 devices.
    assert (trainer["num_nodes"], str(trainer["devices"]), trainer["max_steps"]) == (2, "4", 10)
    assert trainer["strategy"] == "ddp_find_unused_parameters_true"
    assert trainer["logger"]["init_args"]["version"] == "slurm-77"
    assert config["ckpt_path"] == "last"
    assert config["preemption"]["signals"] == ["SIGUSR1", "SIGTERM"]
