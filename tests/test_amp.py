"""fp16 mixed precision with several optimisers: one gradient-scaler update per iteration, as in
PyTorch's multi-optimizer AMP recipe (`scaler.step` for each optimiser, then `scaler.update()`
once), checked against a hand-written `torch.amp` loop of the same iteration."""

from __future__ import annotations

import copy

import torch
from pytorch_lightning.plugins.precision import MixedPrecision

from tests.helpers import first_training_batch, fit, tiny_method
from udaseg.methods import AdvEnt, OptimConfig

#: Scaler settings that make every update visible: the scale doubles after each finite step.
SCALER = {"init_scale": 2.0**16, "growth_interval": 1}


class OverflowingAdvEnt(AdvEnt):
    """AdvEnt whose source loss is huge at iteration 0: its fp16 gradients overflow in the
    segmenter only (the discriminators never see the source loss)."""

    def supervised_loss(self, outputs, labels):
        losses = super().supervised_loss(outputs, labels)
        if self.global_step == 0:
            losses["seg"] = losses["seg"] * 1e30
        return losses


def hand_written_amp_iteration(method: AdvEnt, scaler: torch.amp.GradScaler) -> None:
    """One AdvEnt iteration as PyTorch's AMP recipe writes it: every backward scaled, then
    `scaler.step` for the segmenter and each discriminator, then one `scaler.update()`."""
    optimizers = method.configure_optimizers()
    method.set_learning_rates(optimizers)
    method.manual_backward = lambda loss: scaler.scale(loss).backward()
    source, target = first_training_batch()
    with torch.autocast("cpu", dtype=torch.float16, cache_enabled=False):
        method.adaptation_step(source, target)
    for optimizer in optimizers:
        scaler.step(optimizer)
    scaler.update()


def test_fp16_iteration_with_an_overflow_equals_the_torch_amp_recipe():
    torch.manual_seed(0)
    method = tiny_method(OverflowingAdvEnt, optim=OptimConfig(lr=0.01, max_iters=10))
    by_hand = copy.deepcopy(method)
    initial_discriminator = by_hand.discriminators["main"][0].weight.detach().clone()
    method_scaler = torch.amp.GradScaler("cpu", **SCALER)
    fit(method, 1, plugins=[MixedPrecision("16-mixed", "cpu", scaler=method_scaler)])

    hand_scaler = torch.amp.GradScaler("cpu", **SCALER)
    hand_written_amp_iteration(by_hand, hand_scaler)

    # The segmenter's step was skipped (inf gradients), the discriminators' were not; the
    # scale backed off once and did not grow in the same iteration.
    assert hand_scaler.get_scale() == 2.0**15
    assert method_scaler.get_scale() == hand_scaler.get_scale()
    expected = by_hand.state_dict()
    for name, value in method.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert not torch.equal(expected["discriminators.main.0.weight"], initial_discriminator)
