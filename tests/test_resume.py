"""Exact resume: a run stopped mid-way (in-process, or SIGKILLed through the CLI, 1 and 2 ranks)
and resumed from its last checkpoint ends with the weights, optimiser states and metrics of the
same run left alone, to the bit."""

from __future__ import annotations

import contextlib
import csv
import functools
import itertools
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from tests.helpers import REPO, fit, run_dir, tiny_data, tiny_method, write_config
from udaseg.adaptation import MaskedImageConsistency
from udaseg.data import Augmentation, InfiniteShardedSampler, RareClassSampler, RareClassSampling
from udaseg.data.photometric import StrongView
from udaseg.methods import CIM, DACS, TUFL, AdvEnt, DAFormer
from udaseg.methods.daformer import FeatureDistance
from udaseg.models import HRDA, EncoderDecoder, SegmenterWeights
from udaseg.runtime.checkpoint_io import SafeCheckpointIO


class Stopped(Exception):
    pass


class StopAt(pl.Callback):
    """Ends the fit abruptly after `iteration` iterations (no final checkpoint)."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == self.iteration:
            raise Stopped


class NoisyAdvEnt(AdvEnt):
    """AdvEnt whose loss draws from the global torch RNG, as a network with dropout would."""

    def supervised_loss(self, outputs, labels):
        losses = super().supervised_loss(outputs, labels)
        losses["seg"] = losses["seg"] * (1 + 0.1 * torch.rand(()))
        return losses


def cim_on_stage_one(**kwargs) -> CIM:
    """CIM whose frozen teacher (and start) is a freshly initialised tiny TUFL, saved to a
    temporary file: the same weights in every run with the same seed."""
    stage_one = Path(tempfile.mkdtemp()) / "stage1.ckpt"
    torch.save({"state_dict": tiny_method(TUFL).state_dict()}, stage_one)
    return tiny_method(CIM, weights=SegmenterWeights(init_checkpoint=str(stage_one)), **kwargs)


METHODS = {
    "advent": (functools.partial(tiny_method, AdvEnt), {}),
    "global_rng": (functools.partial(tiny_method, NoisyAdvEnt), {}),
    "tufl": (functools.partial(tiny_method, TUFL, bn_stats="batch"),
             {"target_strong_view": StrongView()}),
    "dacs": (functools.partial(tiny_method, DACS), {}),
    # MIC's own EMA teacher and its generator stream, on a method without a teacher.
    "mic_advent": (functools.partial(tiny_method, AdvEnt,
                                     mic=MaskedImageConsistency(block_size=8)), {}),
    # DAFormer on MiT-B0 (drop-path draws from the global RNG): teacher, alpha ramp, the frozen
    # ImageNet copy, AdamW's moments, rare class sampling with re-drawn crops, category-capped
    # source crops, MIC's masks.
    "daformer": (functools.partial(
        tiny_method, DAFormer, feature_distance=FeatureDistance(classes=(5, 6, 8)),
        mic=MaskedImageConsistency(block_size=8),
        segmenter=functools.partial(
            EncoderDecoder,
            encoder={"class_path": "udaseg.models.MixTransformer", "init_args": {"variant": "b0"}},
            head={"class_path": "udaseg.models.DAFormerHead",
                  "init_args": {"embed_dims": 16, "channels": 16}})),
        {"rare_class_sampling": RareClassSampling(min_pixels=20, min_crop_ratio=0.5),
         "source_augmentation": Augmentation(crop=(32, 32), cat_max_ratio=0.75),
         "target_augmentation": Augmentation(crop=(32, 32))}),
    # MIC(HRDA): detail crops per forward, the attention head, margins marked before the crop.
    "mic_hrda": (functools.partial(
        tiny_method, DAFormer, feature_distance=None, pseudo_weight_crop=(0, 0),
        mic=MaskedImageConsistency(block_size=8),
        segmenter=functools.partial(
            HRDA, detail_crop=(32, 32),
            encoder={"class_path": "udaseg.models.MixTransformer", "init_args": {"variant": "b0"}},
            head={"class_path": "udaseg.models.DAFormerHead",
                  "init_args": {"embed_dims": 16, "channels": 16}},
            attention_head={"class_path": "udaseg.models.SegFormerHead",
                            "init_args": {"embed_dims": 16}})),
        {"source_augmentation": Augmentation(resize=(64, 128), crop=(64, 96)),
         "target_augmentation": Augmentation(resize=(64, 128), crop=(64, 96),
                                             pseudo_margins=(3, 5, 2, 4)),
         "eval_augmentation": Augmentation(resize=(64, 128), resize_label=False)}),
    # CIM with long-tail pasting at every pair, donors prepared in a thread: the donor
    # positions resume.
    "long_tail": (functools.partial(cim_on_stage_one, long_tail_p=1.0),
                  {"donor_workers": 1, "source_augmentation": Augmentation(crop=(16, 32)),
                   "target_augmentation": Augmentation(crop=(16, 32)),
                   "target_strong_view": StrongView()}),
}


def train(name: str, directory: Path, stop_at: int | None = None,
          ckpt_path: str | None = None) -> pl.LightningModule:
    build, data_args = METHODS[name]
    pl.seed_everything(0)
    method = build()
    checkpoints = ModelCheckpoint(dirpath=directory, every_n_train_steps=2, save_last=True,
                                  save_top_k=0)
    callbacks = [checkpoints] + ([StopAt(stop_at)] if stop_at else [])
    with contextlib.suppress(Stopped):
        fit(method, 5, tiny_data(**data_args), ckpt_path=ckpt_path, enable_checkpointing=True,
            callbacks=callbacks, plugins=[SafeCheckpointIO()], default_root_dir=directory)
    return method


def assert_same_states(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        assert torch.equal(value, actual[key]), key


@pytest.mark.parametrize("name", sorted(METHODS))
def test_resumed_run_equals_the_run_left_alone(tmp_path, name):
    alone = train(name, tmp_path / "alone")
    train(name, tmp_path / "stopped", stop_at=3)            # last.ckpt holds iteration 2
    resumed = train(name, tmp_path / "resumed", ckpt_path=str(tmp_path / "stopped/last.ckpt"))
    assert resumed.trainer.global_step == alone.trainer.global_step == 5
    assert_same_states(alone.state_dict(), resumed.state_dict())
    for expected, actual in zip(alone.trainer.optimizers, resumed.trainer.optimizers,
                                strict=True):
        for state, other in zip(expected.state.values(), actual.state.values(), strict=True):
            assert_same_states(state, other)


def test_stream_positions_decide_the_samples_not_workers_or_restarts():
    """The first batches with 0 and 2 DataLoader workers are the same, and a data module
    restored at iteration 2 serves the third batch first."""
    def batches(module, count, **kwargs):
        loader = module.train_dataloader()
        return [batch for batch, _, _ in itertools.islice(iter(loader), count)]

    def module(**kwargs):
        return tiny_data(target_strong_view=StrongView(), **kwargs)

    plain = batches(module(), 3)
    with_workers = batches(module(num_workers=2), 3)
    resumed_module = module()
    # What Lightning does on resume: the module's state, then the loop's step, then loaders.
    resumed_module.load_state_dict({"stream_draws": {"source": 4, "target": 4}, "iteration": 2,
                                    "world_size": 1})
    resumed_module.trainer = SimpleNamespace(global_step=2, global_rank=0, world_size=1)
    resumed = batches(resumed_module, 1)
    for expected, actual in [*zip(plain, with_workers, strict=True), (plain[2], resumed[0])]:
        for stream in ("source", "target"):
            assert expected[stream]["name"] == actual[stream]["name"]
            for key in ("image", "strong_image", "label"):
                if key in expected[stream]:
                    assert torch.equal(expected[stream][key], actual[stream][key]), key


@pytest.mark.parametrize("make_sampler", [
    lambda start: InfiniteShardedSampler(5, num_replicas=2, rank=1, seed=3, start=start),
    lambda start: RareClassSampler(torch.tensor([[5, 0], [1, 9], [3, 3]]).numpy(),
                                   RareClassSampling(min_pixels=1), start=start),
], ids=["uniform", "rare_class"])
def test_a_sampler_started_at_k_continues_the_stream_at_draw_k(make_sampler):
    stream = list(itertools.islice(iter(make_sampler(0)), 40))
    assert [position for position, *_ in stream] == list(range(40))
    for start in (1, 3, 7, 33):
        assert list(itertools.islice(iter(make_sampler(start)), 40 - start)) == stream[start:]


def read_rows(metrics_file: Path) -> list[dict]:
    with open(metrics_file, newline="") as stream:
        return list(csv.DictReader(stream))


def cli_fit(config: Path, *extra: str, ranks: int = 1, check: bool = True,
            environment: dict | None = None):
    command = [sys.executable, "-m", "udaseg.cli", "fit", "--config", str(config),
               "--checkpoint.every_n_train_steps", "3", *extra]
    if ranks > 1:
        command += ["--trainer.devices", str(ranks), "--trainer.strategy",
                    "ddp_find_unused_parameters_true"]
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                   **(environment or {})}
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True,
                            timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("ranks, signal_name", [(1, "SIGKILL"), (2, "SIGKILL"), (1, "SIGUSR1")],
                         ids=["1rank-sigkill", "2ranks-sigkill", "1rank-preempted"])
def test_stopped_cli_run_resumed_with_ckpt_path_last_equals_the_run_left_alone(
        tmp_path, ranks, signal_name):
    """`udaseg fit` stopped after iteration 5 and rerun with `--ckpt_path last` continues in
    the same run folder; the final weights and the whole metrics.csv equal those of the run
    left alone. SIGKILL: the run resumes from the periodic last.ckpt of iteration 3, written
    just before the validation at 3 (whose row the killed run logged and the resumed run keeps,
    without validating again). SIGUSR1 (SLURM's warning): the run writes last.ckpt at the end of
    iteration 5, asks SLURM to requeue the job and exits with 128 + 10."""
    alone = tmp_path / "alone"
    alone.mkdir()
    config = write_config(alone, method="udaseg.methods.AdvEnt", max_steps=6)
    cli_fit(config, "--model.init_args.discriminator_width", "8", ranks=ranks)
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    config = write_config(stopped, method="udaseg.methods.AdvEnt", max_steps=6)
    scontrol = fake_scontrol(tmp_path)
    result = cli_fit(config, "--model.init_args.discriminator_width", "8",
                     "--trainer.callbacks+=tests.helpers.SendSignal",
                     "--trainer.callbacks.iteration=5",
                     f"--trainer.callbacks.signal_name={signal_name}", ranks=ranks, check=False,
                     environment={"SLURM_JOB_ID": "4242",
                                  "PATH": f"{scontrol.parent}{os.pathsep}{os.environ['PATH']}"})
    preempted = signal_name == "SIGUSR1"
    assert result.returncode == (128 + signal.SIGUSR1 if preempted else -signal.SIGKILL), \
        result.stderr[-3000:]
    assert torch.load(run_dir(stopped, 0) / "checkpoints" / "last.ckpt",
                      weights_only=True)["global_step"] == (5 if preempted else 3)
    requeued = scontrol.with_suffix(".calls")
    assert (requeued.read_text().split() if requeued.exists() else []) == \
        (["requeue", "4242"] if preempted else [])
    result = cli_fit(config, "--model.init_args.discriminator_width", "8", "--ckpt_path",
                     "last", ranks=ranks)
    assert f"at iteration {5 if preempted else 3}" in result.stderr
    assert not run_dir(stopped, 1).exists(), "the resumed run continues in version_0"

    def final(root):
        return torch.load(run_dir(root, 0) / "checkpoints" / "last.ckpt", weights_only=True)

    expected, actual = final(alone), final(stopped)
    assert actual["global_step"] == expected["global_step"] == 6
    assert_same_states(expected["state_dict"], actual["state_dict"])
    expected_rows = read_rows(run_dir(alone, 0) / "metrics.csv")
    assert read_rows(run_dir(stopped, 0) / "metrics.csv") == expected_rows
    assert {row["step"] for row in expected_rows if row.get("val/mIoU")} == {"2", "5"}


def fake_scontrol(tmp_path: Path) -> Path:
    """An `scontrol` that records its arguments in scontrol.calls."""
    script = tmp_path / "bin" / "scontrol"
    script.parent.mkdir()
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {script.with_suffix('.calls')}\n")
    script.chmod(0o755)
    return script


def test_ckpt_path_last_without_a_checkpoint_starts_a_fresh_run(tmp_path):
    config = write_config(tmp_path, max_steps=2)
    result = cli_fit(config, "--ckpt_path", "last")
    assert "no last.ckpt under" in result.stderr and "starting a fresh run" in result.stderr
    assert torch.load(run_dir(tmp_path, 0) / "checkpoints" / "last.ckpt",
                      weights_only=True)["global_step"] == 2


def test_a_run_that_skipped_iterations_resumes_exactly(tmp_path):
    """`nonfinite_loss: skip`: a skipped iteration draws its batches but makes no optimiser
    step. A run killed after a checkpoint that follows skips, resumed with `--ckpt_path last`,
    continues every stream where the run left alone does: same final weights to the bit, same
    metrics.csv (the segmenter's NaN draws come from the checkpointed global RNG)."""
    segmenter = {"class_path": "tests.helpers.SometimesNaNDeepLab",
                 "init_args": {"depth": 18, "width": 8, "nan_probability": 0.4}}
    skip = ("--model.init_args.nonfinite_loss", "skip")
    roots = {name: tmp_path / name for name in ("alone", "stopped")}
    configs = {}
    for name, root in roots.items():
        root.mkdir()
        configs[name] = write_config(root, max_steps=8, segmenter=segmenter)
    cli_fit(configs["alone"], *skip)
    result = cli_fit(configs["stopped"], *skip, "--trainer.callbacks+=tests.helpers.SendSignal",
                     "--trainer.callbacks.iteration=5", check=False)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    checkpoint = torch.load(run_dir(roots["stopped"], 0) / "checkpoints" / "last.ckpt",
                            weights_only=True)
    assert checkpoint["global_step"] == 3
    assert checkpoint["state_dict"]["skipped_iterations"].item() > 0, "no skip to resume after"
    cli_fit(configs["stopped"], *skip, "--ckpt_path", "last")
    expected, actual = (torch.load(run_dir(root, 0) / "checkpoints" / "last.ckpt",
                                   weights_only=True) for root in roots.values())
    assert actual["global_step"] == expected["global_step"] == 8
    assert torch.equal(actual["state_dict"]["skipped_iterations"],
                       expected["state_dict"]["skipped_iterations"])
    assert_same_states(expected["state_dict"], actual["state_dict"])
    assert read_rows(run_dir(roots["stopped"], 0) / "metrics.csv") == \
        read_rows(run_dir(roots["alone"], 0) / "metrics.csv")


def test_last_ckpt_holds_the_final_iteration_whatever_the_checkpoint_interval(tmp_path):
    """A run of 4 iterations writing last.ckpt every 3 ends with iteration 4 in it (Lightning
    alone would leave iteration 3's weights there: it writes last.ckpt at the end of fit only
    when it never wrote one)."""
    from udaseg.cli import main

    main(["fit", "--config", str(write_config(tmp_path, max_steps=4)),
          "--checkpoint.every_n_train_steps", "3"])
    assert torch.load(run_dir(tmp_path, 0) / "checkpoints" / "last.ckpt",
                      weights_only=True)["global_step"] == 4
