"""ADVENT methods and the shared adversarial mechanism."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import pytorch_lightning as pl
import torch

from tests.helpers import fit, tiny_method
from udaseg.methods import AdvEnt, MinEnt


def test_generator_step_gives_no_gradient_to_the_frozen_discriminator():
    method = tiny_method(AdvEnt)
    target_map = torch.rand(2, method.num_classes, 32, 64, requires_grad=True)
    with method.discriminators.frozen():
        method.discriminators.fool("main", target_map).backward()
    assert target_map.grad is not None and target_map.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in method.discriminators.parameters())
    assert all(parameter.requires_grad for parameter in method.discriminators.parameters())


def test_discriminator_step_trains_only_on_detached_maps():
    method = tiny_method(AdvEnt)
    maps = {level: torch.rand(2, method.num_classes, 32, 64, requires_grad=True)
            for level in ("main", "aux")}
    losses = method.discriminators.train_on(maps, maps, backward=lambda loss: loss.backward())
    assert set(losses) == {"disc_main", "disc_aux"}
    assert all(parameter.grad is not None for parameter in method.discriminators.parameters())
    assert all(source_map.grad is None for source_map in maps.values())


def test_advent_iteration_updates_both_players_and_counts_one_step():
    method = tiny_method(AdvEnt)
    before = copy.deepcopy(method.state_dict())
    trainer = fit(method, steps=3)
    assert trainer.global_step == 3, "three optimizers, but an iteration is one global step"
    after = method.state_dict()
    for prefix in ("segmenter.layer6", "discriminators.main", "discriminators.aux"):
        changed = [key for key in after if key.startswith(prefix)
                   and not torch.equal(after[key], before[key])]
        assert changed, f"{prefix} was not updated"
    optimizers = trainer.optimizers
    assert len(optimizers) == 3
    # Poly schedule after 3 of 3 iterations -> the last LR set was for iteration 2.
    assert optimizers[1].param_groups[0]["lr"] == pytest.approx(1e-4 * (1 - 2 / 3) ** 0.9)


def test_minent_entropy_term_changes_the_update():
    torch.manual_seed(0)
    with_entropy, without_entropy = tiny_method(MinEnt), tiny_method(MinEnt, lambda_ent_main=0.0,
                                                                      lambda_ent_aux=0.0)
    without_entropy.load_state_dict(with_entropy.state_dict())
    for method in (with_entropy, without_entropy):
        pl.seed_everything(0)
        fit(method, steps=1)
    weight = "segmenter.layer6.conv2d_list.0.weight"
    assert not torch.equal(with_entropy.state_dict()[weight], without_entropy.state_dict()[weight])


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_with_two_optimizer_groups(precision):
    method = tiny_method(AdvEnt)
    trainer = fit(method, steps=2, precision=precision)
    assert trainer.global_step == 2
    assert all(torch.isfinite(tensor).all() for tensor in method.state_dict().values()
               if tensor.is_floating_point())


def test_adaptation_warmup_ramps_the_target_loss_weight():
    method = tiny_method(MinEnt, adaptation_warmup=4)
    weights = []
    for step in (0, 2, 4, 8):
        with mock.patch.object(MinEnt, "global_step", new_callable=mock.PropertyMock,
                               return_value=step):
            weights.append(method.adaptation_weight)
    assert weights == [0.0, 0.5, 1.0, 1.0]
    assert tiny_method(MinEnt).adaptation_weight == 1.0, "no warm-up: the papers' setting"


def test_bn_stats_flag_batch_reproduces_official_train_mode_frozen_keeps_running_stats():
    official, frozen = tiny_method(MinEnt), tiny_method(MinEnt, bn_stats="frozen")
    frozen.load_state_dict(official.state_dict())
    key = "segmenter.bn1.running_mean"
    before = official.state_dict()[key].clone()
    for method in (official, frozen):
        fit(method, steps=1)
    assert not torch.equal(official.state_dict()[key], before), "official: stats updated"
    assert torch.equal(frozen.state_dict()[key], before), "frozen: stats untouched"
    frozen.train()
    assert not frozen.segmenter.bn1.training and frozen.segmenter.layer6.training
