"""CLAN: the dual-classifier segmenter, its losses and the method (schedules, flags, AMP, DDP)."""

from __future__ import annotations

import copy
import math
from unittest import mock

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml

from tests.helpers import (
    REPO,
    assert_identical_weights,
    first_training_batch,
    fit,
    fit_two_ranks,
    tiny_method,
    tiny_segmenter,
)
from udaseg.cli import main
from udaseg.losses import (
    bce_with_constant,
    focal_loss,
    local_alignment_map,
    segmentation_cross_entropy,
    weight_discrepancy_loss,
    weighted_bce_with_constant,
)
from udaseg.methods import CLAN, OptimConfig, SourceOnly
from udaseg.models import (
    DeepLabV2,
    DualClassifierDeepLab,
    SegmenterWeights,
    WeightsError,
    load_segmenter_checkpoint,
)


def tiny_clan(**kwargs) -> CLAN:
    return tiny_method(CLAN, **kwargs)


def at_iteration(step: int):
    """Pretend the trainer is at iteration `step` (global_step is read-only without a fit)."""
    return mock.patch.object(CLAN, "global_step", new_callable=mock.PropertyMock,
                             return_value=step)


# ------------------------------------------------------------------------------ model
def test_dual_classifier_r101_has_official_keys_and_sums_its_logits(tmp_path):
    torch.manual_seed(0)
    model = DualClassifierDeepLab(num_classes=19, depth=101)
    state = model.state_dict()
    for head in ("layer5", "layer6"):
        for branch in range(4):
            assert state[f"{head}.conv2d_list.{branch}.weight"].shape == (19, 2048, 3, 3)
            assert state[f"{head}.conv2d_list.{branch}.bias"].shape == (19,)
    # DeepLabV2 multi-level has 44,601,560 parameters with layer5 on 1024 channels; here layer5
    # reads 2048 channels: 4 * 19 * 9 * 1024 more weights.
    assert sum(p.numel() for p in model.parameters()) == 44_601_560 + 4 * 19 * 9 * 1024
    assert len(model.classifier_parameters()) == 16
    assert not {id(p) for p in model.classifier_parameters()} & {
        id(p) for p in model.backbone_parameters()}
    model.eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64))
    assert set(outputs) == set(model.heads) == {"main", "first", "second"}, "no aux head"
    assert outputs["first"].shape == outputs["second"].shape == (1, 19, 9, 9)
    assert torch.equal(outputs["main"], outputs["first"] + outputs["second"])
    assert not torch.equal(outputs["first"], outputs["second"]), "independently initialised"
    assert model.classifier_pair() == (model.layer5, model.layer6)

    path = tmp_path / "clan_r101.pth"
    torch.save(state, path)
    fresh = DualClassifierDeepLab(num_classes=19, depth=101)
    assert load_segmenter_checkpoint(fresh, path) == []
    assert all(torch.equal(value, fresh.state_dict()[key]) for key, value in state.items())


def test_init_checkpoint_loads_a_dual_model_and_rejects_a_deeplabv2_one(tmp_path):
    source = tiny_clan()
    path = tmp_path / "lightning_like.ckpt"
    torch.save({"state_dict": source.state_dict()}, path)  # `segmenter.` + discriminator keys
    loaded = tiny_clan(weights=SegmenterWeights(init_checkpoint=str(path)))
    for key, value in source.segmenter.state_dict().items():
        assert torch.equal(value, loaded.segmenter.state_dict()[key]), key
    # DeepLabV2: its layer5 reads layer3 features
    single = tiny_method(SourceOnly, segmenter=tiny_segmenter(DeepLabV2))
    torch.save(single.segmenter.state_dict(), tmp_path / "deeplabv2.pth")
    with pytest.raises(WeightsError, match="layer5.conv2d_list.0.weight"):
        load_segmenter_checkpoint(source.segmenter, tmp_path / "deeplabv2.pth")


def test_clan_refuses_a_single_classifier_segmenter_naming_the_config_key():
    with pytest.raises(ValueError, match=r"CLAN needs the segmenter head\(s\) \['first', "
                       r"'second'\], but DeepLabV2 has \['main', 'aux'\]: change "
                       r"model.init_args.segmenter .*DualClassifierDeepLab"):
        tiny_clan(segmenter=tiny_segmenter(DeepLabV2))
    assert isinstance(CLAN().segmenter, DualClassifierDeepLab), "the default builds it"


# ------------------------------------------------------------------------------ losses
def test_weight_discrepancy_is_cosine_plus_one():
    weights = [torch.tensor([[1.0, 2.0]]), torch.tensor([3.0])]
    assert weight_discrepancy_loss(weights, weights).item() == pytest.approx(2.0)
    assert weight_discrepancy_loss(weights, [-w for w in weights]).item() == pytest.approx(
        0.0, abs=1e-6)
    orthogonal = [torch.tensor([[2.0, -1.0]]), torch.tensor([0.0])]
    assert weight_discrepancy_loss(weights, orthogonal).item() == pytest.approx(1.0)
    # (1, 2, 3) . (1, 0, 0) / sqrt(14) + 1
    other = [torch.tensor([[1.0, 0.0]]), torch.tensor([0.0])]
    assert weight_discrepancy_loss(weights, other).item() == pytest.approx(1 + 1 / math.sqrt(14))
    with pytest.raises(ValueError):
        weight_discrepancy_loss(weights, weights[:1])


def test_local_alignment_map_is_one_minus_cosine_over_classes():
    first = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).repeat(2, 1, 4, 5)
    assert local_alignment_map(first, first).shape == (2, 1, 4, 5)
    assert torch.allclose(local_alignment_map(first, first), torch.zeros(2, 1, 4, 5))
    orthogonal = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1).repeat(2, 1, 4, 5)
    assert torch.allclose(local_alignment_map(first, orthogonal), torch.ones(2, 1, 4, 5))
    second = torch.tensor([0.6, 0.4, 0.0]).view(1, 3, 1, 1)  # cos = 0.6 / sqrt(0.52)
    assert local_alignment_map(first[:1, :, :1, :1], second).item() == pytest.approx(
        1 - 0.6 / math.sqrt(0.52))


def test_weighted_bce_is_epsilon_bce_plus_local_term():
    logits = torch.tensor([0.0, 2.0, -1.0, 0.5]).view(1, 1, 2, 2)
    zero_map = torch.zeros_like(logits)
    assert weighted_bce_with_constant(logits, 1.0, zero_map, 0.4, 40).item() == pytest.approx(
        0.4 * bce_with_constant(logits, 1.0).item())
    # Per-pixel: only the first pixel has a weight; its BCE against label 0 at logit 0 is ln 2.
    weight_map = torch.tensor([0.5, 0.0, 0.0, 0.0]).view(1, 1, 2, 2)
    expected = 0.4 * bce_with_constant(logits, 0.0).item() + 40 * 0.5 * math.log(2) / 4
    assert weighted_bce_with_constant(logits, 0.0, weight_map, 0.4, 40).item() == pytest.approx(
        expected)
    with pytest.raises(ValueError, match="upsample"):
        weighted_bce_with_constant(logits, 0.0, torch.zeros(1, 1, 4, 4))


def test_focal_loss_values():
    logits = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1).repeat(1, 1, 1, 2)
    labels = torch.tensor([[[1, 255]]])  # p_y = 0.75 on the labelled pixel
    assert focal_loss(logits, labels).item() == pytest.approx(-(0.25 ** 2) * math.log(0.75))
    assert focal_loss(logits, labels, gamma=0).item() == pytest.approx(
        segmentation_cross_entropy(logits, labels).item())
    assert focal_loss(logits, torch.full((1, 1, 2), 255)).item() == 0.0


# ------------------------------------------------------------------------------ method
def test_clan_iteration_updates_segmenter_and_discriminator_and_counts_one_step():
    method = tiny_clan(preheat_iters=1)
    assert list(method.discriminators) == ["main"]
    assert method.discriminators["main"][0].in_channels == method.num_classes
    before = copy.deepcopy(method.state_dict())
    trainer = fit(method, steps=3)
    assert trainer.global_step == 3, "two optimizers, but an iteration is one global step"
    assert len(trainer.optimizers) == 2
    after = method.state_dict()
    for prefix in ("segmenter.layer5", "segmenter.layer6", "segmenter.layer1",
                   "discriminators.main"):
        assert any(key.startswith(prefix) and not torch.equal(after[key], before[key])
                   for key in after), f"{prefix} was not updated"


def run_step(method: CLAN, step: int, backward=None) -> dict:
    """One `adaptation_step` without a trainer; `backward(index, loss)` replaces manual_backward."""
    calls = []

    def manual_backward(loss):
        calls.append(loss)
        (backward or (lambda index, value: value.backward()))(len(calls) - 1, loss)

    method.manual_backward = manual_backward
    source, target = first_training_batch()
    with at_iteration(step):
        losses = method.adaptation_step(source, target)
    assert len(calls) == 4, "seg, generator, D source, D target"
    return losses


def test_generator_step_gives_no_gradient_to_the_discriminator():
    method = tiny_clan(optim=OptimConfig(max_iters=100), preheat_iters=0)
    seen = []

    def backward(index, loss):
        loss.backward()
        seen.append([p.grad is not None for p in method.discriminators.parameters()])

    run_step(method, step=10, backward=backward)
    assert not any(seen[0]) and not any(seen[1]), "segmentation and generator steps"
    assert all(seen[3])
    assert all(p.requires_grad for p in method.discriminators.parameters())


def test_preheat_uses_plain_bce_then_the_map_weighted_one():
    method = tiny_clan(optim=OptimConfig(max_iters=100), preheat_iters=5)
    with mock.patch("udaseg.methods.clan.weighted_bce_with_constant",
                    wraps=weighted_bce_with_constant) as weighted:
        run_step(method, step=4)
        assert weighted.call_count == 0, "pre-heat: plain BCE on both sides"
        losses = run_step(method, step=5)
        assert weighted.call_count == 2, "generator (source label) and D target (target label)"
    labels = [call.args[1] for call in weighted.call_args_list]
    assert labels == [0.0, 1.0]
    assert all(not call.args[2].requires_grad for call in weighted.call_args_list), \
        "default: detached map"
    assert set(losses) >= {"seg", "seg_first", "seg_second", "adv", "weight_discrepancy",
                           "disc_source", "disc_target", "alignment_map"}


def test_damping_decays_linearly_over_the_poly_horizon():
    method = tiny_clan(optim=OptimConfig(max_iters=100))
    values = []
    for step in (0, 25, 99, 150):
        with at_iteration(step):
            values.append(method.damping)
    assert values == pytest.approx([1.0, 0.75, 0.01, 0.0])


def test_damping_scales_the_generator_terms():
    def generator_loss(step):
        method = tiny_clan(optim=OptimConfig(max_iters=100), preheat_iters=0)
        method.load_state_dict(reference.state_dict())
        recorded = []
        run_step(method, step, backward=lambda index, loss: recorded.append(loss.detach()))
        return recorded[1]

    reference = tiny_clan()  # same weights and batch at both iterations
    assert generator_loss(50).item() == pytest.approx(0.5 * generator_loss(0).item(), rel=1e-5)


class RecordLearningRates(pl.Callback):
    def __init__(self) -> None:
        self.rates: list[list[float]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.rates.append([group["lr"] for optimizer in trainer.optimizers
                           for group in optimizer.param_groups])


def test_learning_rates_warm_up_linearly_then_follow_poly():
    method = tiny_clan(optim=OptimConfig(lr=0.01, warmup_iters=2), preheat_iters=2)
    recorder = RecordLearningRates()
    fit(method, steps=4, callbacks=[recorder])
    factors = [0.0, 0.5, (1 - 2 / 4) ** 0.9, (1 - 3 / 4) ** 0.9]
    expected = [[0.01 * f, 0.1 * f, 1e-4 * f] for f in factors]  # backbone, classifiers, D
    assert recorder.rates == [pytest.approx(row) for row in expected]


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_fit_stays_finite(precision):
    method = tiny_clan(preheat_iters=1, detach_alignment_map=False)
    trainer = fit(method, steps=2, precision=precision)
    assert trainer.global_step == 2
    assert all(torch.isfinite(tensor).all() for tensor in method.state_dict().values()
               if tensor.is_floating_point())


def classifier_gradient_from_the_adversarial_term(detach: bool) -> torch.Tensor:
    """Gradient on layer5 of the generator loss alone, with D made blind to its input."""
    torch.manual_seed(0)
    method = tiny_clan(optim=OptimConfig(max_iters=100), preheat_iters=0, lambda_weight=0.0,
                       detach_alignment_map=detach)
    with torch.no_grad():  # last conv weight 0: D's verdict is a constant, no gradient through D
        method.discriminators["main"][-1].weight.zero_()
    run_step(method, step=10, backward=lambda index, loss: loss.backward() if index == 1 else None)
    return torch.cat([p.grad.reshape(-1) for p in method.segmenter.layer5.parameters()])


def test_detach_flag_controls_the_gradient_through_the_alignment_map():
    assert classifier_gradient_from_the_adversarial_term(detach=True).abs().max() == 0
    assert classifier_gradient_from_the_adversarial_term(detach=False).abs().max() > 0, \
        "official: the map term trains the classifiers"


def test_segmentation_loss_flag_sums_focal_or_cross_entropy_over_both_classifiers():
    torch.manual_seed(0)
    cross_entropy, focal = tiny_clan(), tiny_clan(segmentation_loss="focal")
    focal.load_state_dict(cross_entropy.state_dict())
    source, _ = first_training_batch()
    outputs = cross_entropy.segmenter(source["image"])
    ce_losses = cross_entropy.supervised_loss(outputs, source["label"])
    focal_losses = focal.supervised_loss(outputs, source["label"])
    assert ce_losses["seg_first"].item() == pytest.approx(F.cross_entropy(
        F.interpolate(outputs["first"], size=source["label"].shape[-2:], mode="bilinear",
                      align_corners=True), source["label"].long(), ignore_index=255).item())
    for losses in (ce_losses, focal_losses):
        assert losses["seg"].item() == pytest.approx(
            losses["seg_first"].item() + losses["seg_second"].item())
    assert focal_losses["seg_first"].item() == pytest.approx(
        focal_loss(outputs["first"], source["label"]).item())
    assert focal_losses["seg"].item() < ce_losses["seg"].item(), "(1 - p)^2 <= 1"
    with pytest.raises(ValueError, match="segmentation_loss"):
        tiny_clan(segmentation_loss="dice")


def test_clan_ddp_two_ranks_end_with_identical_weights(tmp_path):
    ranks = fit_two_ranks(tmp_path, "udaseg.methods.CLAN",
                          "--model.init_args.preheat_iters", "1",   # both adversarial regimes run
                          "--model.init_args.detach_alignment_map", "false",
                          segmenter={"class_path": "udaseg.models.DualClassifierDeepLab",
                                     "init_args": {"depth": 18, "width": 8}})
    weights = ranks[0]["state_dict"]
    assert "segmenter.layer6.conv2d_list.0.weight" in weights
    assert "segmenter.layer5.conv2d_list.0.weight" in weights
    assert_identical_weights(ranks)


@pytest.mark.parametrize("benchmark, lambda_local", [("gta5_to_cityscapes", 40.0),
                                                     ("synthia_to_cityscapes", 10.0)])
def test_benchmark_configs_resolve_to_the_official_settings(benchmark, lambda_local, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs" / benchmark / "clan.yaml"),
              "--print_config"])
    assert exit_info.value.code == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["trainer"]["max_steps"] == 100_000
    assert resolved["trainer"]["precision"] == "32-true", "the whole trainer file applies"
    arguments = resolved["model"]["init_args"]
    assert arguments["segmenter"]["class_path"] == "udaseg.models.DualClassifierDeepLab"
    assert arguments["segmenter"]["init_args"]["depth"] == 101
    assert arguments["weights"]["pretrained"].endswith("DeepLab_resnet_pretrained_imagenet.pth")
    assert arguments["optim"]["max_iters"] == 100_000
    assert arguments["optim"]["warmup_iters"] == arguments["preheat_iters"] == 5000
    assert arguments["lambda_local"] == lambda_local
    assert (arguments["segmentation_loss"], arguments["detach_alignment_map"]) == ("focal", False)


def test_discriminator_sees_the_sum_of_the_upsampled_classifier_logits():
    """Official order: `softmax(up(z1) + up(z2))` for the target (generator and D step) and
    the source map, which in float32 is not bitwise `softmax(up(z1 + z2))`."""
    method = tiny_clan(optim=OptimConfig(max_iters=100))
    logits, seen = [], []
    method.segmenter.register_forward_hook(
        lambda module, inputs, outputs: logits.append({head: value.detach()
                                                       for head, value in outputs.items()}))
    method.discriminators["main"].register_forward_pre_hook(
        lambda module, inputs: seen.append(inputs[0].detach()))
    run_step(method, step=10)
    source, target = first_training_batch()
    expected, summed_first = [], []
    for outputs, batch in zip(logits, (source, target), strict=True):
        size = tuple(batch["image"].shape[-2:])
        up = [F.interpolate(outputs[head], size=size, mode="bilinear", align_corners=True)
              for head in ("first", "second")]
        expected.append(F.softmax(up[0] + up[1], dim=1))
        summed = F.interpolate(outputs["first"] + outputs["second"], size=size,
                               mode="bilinear", align_corners=True)
        summed_first.append(F.softmax(summed, dim=1))
    (source_expected, target_expected), (_, target_summed_first) = expected, summed_first
    assert len(seen) == 3, "generator (target), D source, D target"
    assert torch.equal(seen[0], target_expected) and torch.equal(seen[2], target_expected)
    assert torch.equal(seen[1], source_expected)
    assert not torch.equal(seen[0], target_summed_first)
