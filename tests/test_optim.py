"""The optimisers and schedules of `OptimConfig` (DAFormer's AdamW with the mmcv warm-up, the
normalisation-layer weight decay) and the all-pixels source loss, against hand-computed values
and `torch.optim.AdamW` itself."""

from __future__ import annotations

import copy
import math

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

from tests.helpers import fit, tiny_method
from udaseg.losses import segmentation_cross_entropy
from udaseg.methods import OptimConfig, SourceOnly
from udaseg.methods.checkpointing import horizon_change_warning
from udaseg.models import Segmenter
from udaseg.runtime.checkpoint_io import SafeCheckpointIO

#: DAFormer's optimisation (configs/_base_/schedules/adamw.py, poly10warm.py and the UDA config).
DAFORMER = OptimConfig(optimizer="adamw", lr=6e-5, weight_decay=0.01, betas=(0.9, 0.999),
                       classifier_lr_mult=10.0, poly_power=1.0, warmup_iters=1500,
                       warmup_ratio=1e-6, warmup_mode="poly_factor", norm_weight_decay=0.0)


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) map, as transformer encoders apply it."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class NormSegmenter(Segmenter):
    """A conv + LayerNorm encoder and a BN + conv head: where the decay and the 10x go."""

    def __init__(self, num_classes: int, channels: int = 4) -> None:
        super().__init__()
        self.num_classes, self.heads = num_classes, ("main",)
        self.conv = nn.Conv2d(3, channels, 3, stride=4, padding=1)
        self.norm = ChannelNorm(channels)
        self.head = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(),
                                  nn.Conv2d(channels, num_classes, 1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"main": self.head(self.norm(self.conv(images)))}

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [*self.conv.parameters(), *self.norm.parameters()]

    def classifier_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())


def norm_method(optim: OptimConfig = DAFORMER, **kwargs) -> SourceOnly:
    return tiny_method(SourceOnly, segmenter=NormSegmenter, optim=optim, **kwargs)


def ids(parameters) -> set[int]:
    return {id(parameter) for parameter in parameters}


# ------------------------------------------------------------------ schedules
@pytest.mark.parametrize(("iteration", "expected"), [
    (0, 6.0e-11),                # 6e-5 * 1 * (1 - 1 * (1 - 1e-6))
    (1, 4.0058958501e-08),       # 6e-5 * 39999/40000 * (1 - 1499/1500 * (1 - 1e-6))
    (750, 2.9437529438e-05),     # 6e-5 * 0.98125 * (1 - 0.5 * (1 - 1e-6))
    (1499, 5.7712999039e-05),    # 6e-5 * 38501/40000 * (1 - 1/1500 * (1 - 1e-6))
    (1500, 5.775e-05),           # 6e-5 * 38500/40000: poly alone from here on
    (20000, 3.0e-05),
    (40000, 0.0),
])
def test_daformer_schedule_multiplies_the_warmup_factor_into_the_poly_rate(iteration, expected):
    assert DAFORMER.learning_rate(6e-5, iteration, 40000) == pytest.approx(expected, rel=1e-9,
                                                                           abs=1e-20)
    # The head's group (10x) follows the same factors.
    assert DAFORMER.learning_rate(6e-4, iteration, 40000) == pytest.approx(10 * expected,
                                                                           rel=1e-9, abs=1e-20)


def test_linear_warmup_starts_at_the_ratio_and_ratio_zero_is_the_clan_warmup_to_the_bit():
    ratio = OptimConfig(lr=1.0, warmup_iters=10, warmup_ratio=0.1)
    assert ratio.learning_rate(1.0, 0, 100) == pytest.approx(0.1)
    assert ratio.learning_rate(1.0, 5, 100) == pytest.approx(0.55)
    assert ratio.learning_rate(1.0, 10, 100) == pytest.approx(0.9 ** 0.9)
    clan = OptimConfig(warmup_iters=5000)
    for iteration in (0, 1, 777, 4999):
        assert clan.learning_rate(2.5e-4, iteration, 100000) == 2.5e-4 * iteration / 5000


def test_the_horizon_warning_reads_the_run_s_warmup():
    message = horizon_change_warning(750, 3000, 40000, DAFORMER)
    # 1 * (1 - 750/3000) * (1 - 0.5 * (1 - 1e-6)) and 1 * (1 - 750/40000) * (same factor)
    assert "jumps from 0.375 to 0.4906 x lr" in message


@pytest.mark.parametrize(("key", "value", "message"), [
    ("optimizer", "adam", r"optim.optimizer must be one of \['sgd', 'adamw'\], got 'adam'"),
    ("warmup_mode", "exp", r"optim.warmup_mode must be one of \['linear', 'poly_factor'\]"),
    ("warmup_ratio", 1.5, r"optim.warmup_ratio must be in \[0, 1\], got 1.5"),
    ("norm_weight_decay", -0.1, r"optim.norm_weight_decay must be >= 0"),
    ("betas", (0.9, 1.0), r"optim.betas must be two numbers in \[0, 1\)"),
])
def test_bad_optimiser_settings_are_refused_naming_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        OptimConfig(**{key: value})


# ------------------------------------------------------------------ parameter groups
def test_adamw_groups_give_encoder_norms_no_decay_and_the_whole_head_10x_with_decay():
    method = norm_method()
    optimizer, = method.configure_optimizers()
    segmenter = method.segmenter
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["betas"] == (0.9, 0.999)
    backbone, norms, head = optimizer.param_groups
    assert ids(backbone["params"]) == ids(segmenter.conv.parameters())
    assert ids(norms["params"]) == ids(segmenter.norm.parameters())
    assert ids(head["params"]) == ids(segmenter.head.parameters())   # its BN included
    assert (backbone["base_lr"], norms["base_lr"], head["base_lr"]) == pytest.approx(
        (6e-5, 6e-5, 6e-4))
    assert (backbone["weight_decay"], norms["weight_decay"], head["weight_decay"]) == (
        0.01, 0.0, 0.01)
    every = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(every) == sorted(ids(segmenter.parameters())), "each parameter exactly once"


def test_without_norm_weight_decay_the_norms_decay_with_the_backbone_and_empty_groups_go():
    method = norm_method(OptimConfig(optimizer="sgd", weight_decay=0.5))
    optimizer, = method.configure_optimizers()
    backbone, head = optimizer.param_groups
    assert type(optimizer) is torch.optim.SGD
    assert ids(backbone["params"]) == ids([*method.segmenter.conv.parameters(),
                                           *method.segmenter.norm.parameters()])
    assert backbone["weight_decay"] == head["weight_decay"] == 0.5
    # An encoder made of norms only: no empty non-norm group.
    method.segmenter.backbone_parameters = lambda: list(method.segmenter.norm.parameters())
    optimizer = DAFORMER.segmenter_optimizer(method.segmenter)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.0, 0.01]


def test_an_adamw_step_equals_torch_adamw_with_the_same_groups():
    config = OptimConfig(optimizer="adamw", lr=0.05, weight_decay=0.5, betas=(0.8, 0.9),
                         norm_weight_decay=0.0, max_iters=10)
    method = norm_method(config)
    with torch.no_grad():   # LayerNorm affine away from (1, 0), so decaying it would show
        method.segmenter.norm.weight.uniform_(0.5, 1.5)
        method.segmenter.norm.bias.uniform_(-0.5, 0.5)
    reference, decayed = copy.deepcopy(method.segmenter), copy.deepcopy(method.segmenter)
    optimizer, = method.configure_optimizers()
    method.set_learning_rates([optimizer])

    def torch_adamw(network: NormSegmenter, norm_decay: float) -> torch.optim.AdamW:
        return torch.optim.AdamW(
            [{"params": list(network.conv.parameters()), "lr": 0.05, "weight_decay": 0.5},
             {"params": list(network.norm.parameters()), "lr": 0.05, "weight_decay": norm_decay},
             {"params": list(network.head.parameters()), "lr": 0.5, "weight_decay": 0.5}],
            betas=(0.8, 0.9))

    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for network, step in ((method.segmenter, optimizer), (reference, torch_adamw(reference, 0.0)),
                          (decayed, torch_adamw(decayed, 0.5))):
        for _ in range(2):
            step.zero_grad()
            network(images)["main"].square().mean().backward()
            step.step()
    for (name, actual), wanted in zip(method.segmenter.named_parameters(),
                                      reference.parameters(), strict=True):
        assert torch.allclose(actual, wanted, rtol=0, atol=1e-7), name
    assert not torch.allclose(method.segmenter.norm.weight, decayed.norm.weight, atol=1e-3), \
        "decaying the norms would have shown"


# ------------------------------------------------------------------ the source loss
def test_all_pixels_reduction_divides_by_every_pixel():
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 0.0]]).T.reshape(1, 2, 2, 2)
    labels = torch.tensor([[[0, 1], [255, 255]]])
    # -log softmax: pixel (0,0) class 0 of (1, 0), pixel (0,1) class 1 of (0, 2)
    losses = [math.log(1 + math.exp(-1)), math.log(1 + math.exp(-2))]
    labelled = segmentation_cross_entropy(logits, labels, reduction="labelled")
    every = segmentation_cross_entropy(logits, labels, reduction="all_pixels")
    assert labelled.item() == pytest.approx(sum(losses) / 2)
    assert every.item() == pytest.approx(sum(losses) / 4)
    nothing = segmentation_cross_entropy(logits.requires_grad_(), torch.full_like(labels, 255),
                                         reduction="all_pixels")
    assert nothing.item() == 0.0 and nothing.requires_grad
    with pytest.raises(ValueError, match="reduction must be 'labelled' or 'all_pixels'"):
        segmentation_cross_entropy(logits, labels, reduction="mean")


def test_a_method_s_source_loss_follows_loss_reduction():
    logits = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    labels[:, :2] = 255                                    # half the pixels ignored
    labelled = tiny_method(SourceOnly).source_pixel_loss(logits, labels)
    every = tiny_method(SourceOnly, loss_reduction="all_pixels").source_pixel_loss(
        logits, labels)
    assert every.item() == pytest.approx(labelled.item() / 2)
    with pytest.raises(ValueError, match="model.init_args.loss_reduction must be"):
        tiny_method(SourceOnly, loss_reduction="mean")


# ------------------------------------------------------------------ resume
def test_a_resumed_adamw_run_keeps_its_moments_and_equals_the_run_left_alone(tmp_path):
    config = OptimConfig(optimizer="adamw", lr=1e-3, weight_decay=0.01, norm_weight_decay=0.0,
                         warmup_iters=2, warmup_ratio=1e-6, warmup_mode="poly_factor",
                         max_iters=4)

    def train(steps: int, directory, ckpt_path=None) -> pl.Trainer:
        pl.seed_everything(0)
        method = norm_method(config, loss_reduction="all_pixels")
        checkpoints = ModelCheckpoint(dirpath=directory, save_last=True, save_top_k=0)
        return fit(method, steps, ckpt_path=ckpt_path, enable_checkpointing=True,
                   callbacks=[checkpoints], plugins=[SafeCheckpointIO()],
                   default_root_dir=directory)

    alone = train(4, tmp_path / "alone")
    train(2, tmp_path / "first")
    resumed = train(4, tmp_path / "resumed", ckpt_path=str(tmp_path / "first" / "last.ckpt"))
    assert resumed.global_step == 4
    for key, value in alone.lightning_module.state_dict().items():
        assert torch.equal(value, resumed.lightning_module.state_dict()[key]), key
    expected, actual = alone.optimizers[0], resumed.optimizers[0]
    assert [group["weight_decay"] for group in actual.param_groups] == [0.01, 0.0, 0.01]
    for state, other in zip(expected.state.values(), actual.state.values(), strict=True):
        assert {"exp_avg", "exp_avg_sq"} <= state.keys()
        for key in state:
            assert torch.equal(state[key], other[key]), key

