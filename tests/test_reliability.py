"""Faults during training: a non-finite loss stops the run at once (or skips the iteration),
naming the iteration and the term, and no weight or checkpoint holds it; `optim.max_grad_norm`
bounds the step a huge loss can take."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from tests.helpers import assert_identical_weights, fit, fit_two_ranks, tiny_method
from udaseg.methods import AdvEnt, OptimConfig


class InfAtIteration(AdvEnt):
    """AdvEnt whose auxiliary source loss is +inf once, at iteration 1 (gradients NaN)."""

    injected = False

    def supervised_loss(self, outputs, labels):
        losses = super().supervised_loss(outputs, labels)
        if self.global_step == 1 and not self.injected:
            self.injected = True
            losses["seg_aux"] = losses["seg_aux"] * float("inf")
            losses["seg"] = losses["seg"] + self.hparams.aux_weight * losses["seg_aux"]
        return losses


class SnapshotAfterFirst(pl.Callback):
    def __init__(self) -> None:
        self.weights: dict[str, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, module, *args) -> None:
        if trainer.global_step == 1:
            self.weights = {name: value.detach().clone()
                            for name, value in module.named_parameters()}


def test_non_finite_loss_stops_before_the_step_and_names_iteration_and_term(tmp_path):
    method, snapshot = tiny_method(InfAtIteration), SnapshotAfterFirst()
    with pytest.raises(FloatingPointError, match=r"iteration 1: non-finite loss: seg_aux = inf"):
        fit(method, steps=3, default_root_dir=tmp_path, enable_checkpointing=True,
            callbacks=[snapshot])
    assert not list(tmp_path.rglob("*.ckpt"))                  # nothing saved
    final = dict(method.named_parameters())
    assert snapshot.weights
    # The broken iteration's update never happened (segmenter and discriminators): the
    # parameters are those after iteration 0's step (its forward's BN statistics stay).
    for name, value in snapshot.weights.items():
        assert torch.equal(final[name], value), name


def test_skip_mode_drops_the_update_counts_it_and_carries_on():
    method = tiny_method(InfAtIteration, nonfinite_loss="skip")
    trainer = fit(method, steps=3)
    assert trainer.global_step == 3 and method.skipped_iterations.item() == 1
    assert all(torch.isfinite(value).all() for value in method.parameters())
    assert "skipped_iterations" in method.state_dict()         # resumed runs keep counting


class AlwaysInf(AdvEnt):
    def supervised_loss(self, outputs, labels):
        losses = super().supervised_loss(outputs, labels)
        losses["seg"] = losses["seg"] * float("inf")
        return losses


def test_skip_mode_gives_up_when_every_iteration_is_non_finite():
    with pytest.raises(FloatingPointError, match="20 iterations in a row"):
        fit(tiny_method(AlwaysInf, nonfinite_loss="skip"), steps=3)


class InfOnRankOne(InfAtIteration):
    """Non-finite on rank 1 only (used by the DDP test through the CLI)."""

    def supervised_loss(self, outputs, labels):
        if self.global_rank != 1:
            self.injected = True
        return super().supervised_loss(outputs, labels)


def test_ranks_skip_together_when_one_rank_is_non_finite(tmp_path):
    ranks = fit_two_ranks(tmp_path, "tests.test_reliability.InfOnRankOne",
                          "--model.init_args.nonfinite_loss", "skip")
    assert [rank["state_dict"]["skipped_iterations"].item() for rank in ranks] == [1, 1]
    assert_identical_weights(ranks)


def gradient_norm(module: torch.nn.Module) -> float:
    """Total L2 norm of the gradients `module`'s parameters hold."""
    return torch.nn.utils.get_total_norm([parameter.grad for parameter in module.parameters()
                                          if parameter.grad is not None]).item()


@pytest.mark.parametrize("max_grad_norm", [None, 1e-6])
def test_max_grad_norm_clips_the_segmenter_step_and_logs_the_norm_before_clipping(max_grad_norm):
    method = tiny_method(AdvEnt, optim=OptimConfig(lr=0.01, max_grad_norm=max_grad_norm))
    trainer = fit(method, steps=1)
    # Gradients stay in place after the last step (zeroed when the next iteration starts).
    norm = gradient_norm(method.segmenter)
    if max_grad_norm is None:
        assert norm > 1e-2 and "train/grad_norm" not in trainer.callback_metrics
        return
    assert norm == pytest.approx(max_grad_norm, rel=1e-3)
    assert trainer.callback_metrics["train/grad_norm"].item() > 1e-2, "logged before clipping"
    assert gradient_norm(method.discriminators) > 100 * max_grad_norm, \
        "discriminators are not clipped"


def test_max_grad_norm_must_be_positive():
    with pytest.raises(ValueError, match="optim.max_grad_norm must be > 0"):
        OptimConfig(max_grad_norm=0.0)
