"""Optimiser settings, the segmenter's parameter groups and the poly learning-rate schedule
every method shares."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
from torch import nn

from udaseg.models import SegmenterWeights

#: Module types whose parameters `OptimConfig.norm_weight_decay` applies to (in the backbone):
#: every normalisation layer with affine parameters, as mmcv's optimiser constructor counts them.
NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
               nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class OptimConfig:
    """The segmenter's optimiser, its parameter groups, the poly schedule with an optional
    warm-up, and the discriminators' Adam (defaults: the DeepLabV2 UDA papers' SGD).

    Parameter groups of the segmenter, in this order, each parameter in exactly one, empty
    groups left out; each group's `base_lr` follows the schedule:
    - backbone (`backbone_parameters()`): rate `lr`, decay `weight_decay`;
    - backbone normalisation layers (only when `norm_weight_decay` is set): the backbone
      parameters owned by a BatchNorm, InstanceNorm, GroupNorm or LayerNorm module
      (`NORM_LAYERS`): rate `lr`, decay `norm_weight_decay`;
    - classifier (`classifier_parameters()`, e.g. a whole decode head, its BN layers
      included): rate `lr * classifier_lr_mult`, decay `weight_decay`.

    DAFormer (mmcv `paramwise_cfg`: `head` lr x10, `norm` decay x0) is `optimizer: adamw`,
    `lr: 6.0e-5`, `weight_decay: 0.01`, `poly_power: 1.0`, `warmup_iters: 1500`,
    `warmup_ratio: 1.0e-6`, `warmup_mode: poly_factor`, `norm_weight_decay: 0.0`: in MiT the
    parameters whose names contain `norm` are exactly its LayerNorms, and the decode head's BN
    layers (named `bn`) keep the decay, as here.

    Args:
        optimizer: "sgd" (`torch.optim.SGD` with `momentum`) or "adamw" (`torch.optim.AdamW`
            with `betas`: decoupled weight decay, each step multiplies the weights by
            `1 - lr * weight_decay` before the Adam update).
        lr: learning rate of the backbone; classifiers get `classifier_lr_mult` times it.
        momentum: SGD's momentum (unused by AdamW).
        weight_decay: the optimiser's weight decay (L2 for SGD, decoupled for AdamW).
        betas: AdamW's moment coefficients (unused by SGD).
        norm_weight_decay: weight decay of the backbone's normalisation layers (see above);
            None: they decay like every other parameter (`weight_decay`).
        classifier_lr_mult: learning-rate multiplier of the classifier group.
        poly_power: the schedule `lr * (1 - iteration / max_iters) ** poly_power`.
        max_iters: horizon of the poly schedule; defaults to `trainer.max_steps`. ADVENT decays
            over 250k iterations but stops at 120k: set 250000 here and max_steps 120000.
            Resuming (`--ckpt_path`) with another `max_steps` and no `max_iters` continues on
            the new horizon, so the learning rate jumps; the run warns and says what to set.
        warmup_iters: iterations of warm-up before the plain poly schedule; 0 = none.
        warmup_ratio: the warm-up starts at `warmup_ratio` times the rate (see `warmup_mode`).
        warmup_mode: "linear": the rate rises linearly from `warmup_ratio * lr` to `lr`, then
            poly takes over (CLAN warms up over its pre-heat, ratio 0); "poly_factor" (mmcv's
            linear warm-up, DAFormer): the poly rate times
            `1 - (1 - iteration / warmup_iters) * (1 - warmup_ratio)`, so the factor multiplies
            an already decaying value (DAFormer's backbone, lr 6e-5 over 40k iterations:
            6.0e-11 at iteration 0, 5.7713e-5 at 1499, 5.775e-5 at 1500).
        discriminator_lr, discriminator_betas: Adam for each discriminator, same schedule.
        max_grad_norm: clip the segmenter's gradient to this total L2 norm before each step
            (after AMP unscaling; discriminators are not clipped); None: no clipping, as every
            paper here. For losses whose per-pixel weight is unbounded (Conservative Loss on a
            freshly initialised head); the norm is logged as `train/grad_norm` when set.
    """

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    norm_weight_decay: Optional[float] = None
    classifier_lr_mult: float = 10.0
    poly_power: float = 0.9
    max_iters: Optional[int] = None
    warmup_iters: int = 0
    warmup_ratio: float = 0.0
    warmup_mode: Literal["linear", "poly_factor"] = "linear"
    discriminator_lr: float = 1e-4
    discriminator_betas: tuple[float, float] = (0.9, 0.99)
    max_grad_norm: Optional[float] = None

    def __post_init__(self) -> None:
        for key, value, allowed in (("optimizer", self.optimizer, ("sgd", "adamw")),
                                    ("warmup_mode", self.warmup_mode, ("linear", "poly_factor"))):
            if value not in allowed:
                raise ValueError(f"optim.{key} must be one of {list(allowed)}, got {value!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"optim.max_grad_norm must be > 0 (or null: no clipping), "
                             f"got {self.max_grad_norm}")
        if self.warmup_iters < 0:
            raise ValueError(f"optim.warmup_iters must be >= 0, got {self.warmup_iters}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError(f"optim.warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        if self.norm_weight_decay is not None and self.norm_weight_decay < 0:
            raise ValueError(f"optim.norm_weight_decay must be >= 0 (or null: weight_decay), "
                             f"got {self.norm_weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")

    def learning_rate(self, base_lr: float, iteration: int, max_iters: int) -> float:
        """The rate of a group with `base_lr` at `iteration` (`poly_lr` with these settings)."""
        return poly_lr(base_lr, iteration, max_iters, self.poly_power, self.warmup_iters,
                       self.warmup_ratio, self.warmup_mode)

    def parameter_groups(self, segmenter: nn.Module) -> list[dict]:
        """The segmenter's parameter groups (see the class docstring), each with `base_lr`
        and, for the normalisation group, its own `weight_decay`."""
        backbone = list(segmenter.backbone_parameters())
        groups = [{"params": backbone, "base_lr": self.lr}]
        if self.norm_weight_decay is not None:
            norm_ids = {id(parameter) for module in segmenter.modules()
                        if isinstance(module, NORM_LAYERS)
                        for parameter in module.parameters(recurse=False)}
            groups = [{"params": [p for p in backbone if id(p) not in norm_ids],
                       "base_lr": self.lr},
                      {"params": [p for p in backbone if id(p) in norm_ids],
                       "base_lr": self.lr, "weight_decay": self.norm_weight_decay}]
        groups.append({"params": list(segmenter.classifier_parameters()),
                       "base_lr": self.lr * self.classifier_lr_mult})
        return [group for group in groups if group["params"]]

    def segmenter_optimizer(self, segmenter: nn.Module) -> torch.optim.Optimizer:
        """`optimizer` over the segmenter's `parameter_groups`."""
        groups = self.parameter_groups(segmenter)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=self.lr, betas=tuple(self.betas),
                                     weight_decay=self.weight_decay)
        return torch.optim.SGD(groups, lr=self.lr, momentum=self.momentum,
                               weight_decay=self.weight_decay)


#: Checkpoint entry holding the poly horizon the run was trained with (compared on resume).
POLY_HORIZON_KEY = "udaseg_poly_horizon"

# Checkpoints of runs built in Python pickle these configs in `hyper_parameters`; allowing them
# lets `weights.init_checkpoint` read such a checkpoint with `torch.load(weights_only=True)`.
torch.serialization.add_safe_globals([OptimConfig, SegmenterWeights])


def poly_lr(base_lr: float, iteration: int, max_iters: int, power: float = 0.9,
            warmup_iters: int = 0, warmup_ratio: float = 0.0,
            warmup_mode: Literal["linear", "poly_factor"] = "linear") -> float:
    """`base_lr * (1 - iteration / max_iters) ** power`, clamped at 0 past the horizon.

    Iterations before `warmup_iters` (r = `warmup_ratio`, w = `warmup_iters`, t = iteration):
    - "linear": `r * base_lr + (1 - r) * base_lr * t / w` instead, poly from w on (with r = 0
      CLAN's official `lr_warmup`, `base_lr * t / w`);
    - "poly_factor": the poly value times `1 - (1 - t / w) * (1 - r)` (mmcv 1.3's
      `PolyLrUpdaterHook` with `warmup='linear'` and `min_lr=0`, as DAFormer trains).
    """
    progress = min(max(iteration, 0) / max_iters, 1.0)
    poly = base_lr * (1.0 - progress) ** power
    if iteration >= warmup_iters:
        return poly
    if warmup_mode == "poly_factor":
        return poly * (1 - (1 - iteration / warmup_iters) * (1 - warmup_ratio))
    start = base_lr * warmup_ratio
    return start + (base_lr - start) * max(iteration, 0) / warmup_iters


@contextmanager
def one_scaler_update(precision_plugin: Any) -> Iterator[None]:
    """Around the optimiser steps of one iteration: the fp16 gradient scaler is updated once,
    after every optimiser stepped (PyTorch's multi-optimizer AMP recipe: `scaler.step` for
    each optimiser, then `scaler.update()`).

    Lightning's `MixedPrecision.optimizer_step` updates the scaler after each optimiser it
    steps. Every backward of an iteration runs before the first step, so all gradients carry
    the same scale; an update between steps (a back-off after an overflow, or growth) would
    unscale the later optimisers' gradients by a scale they were not multiplied with (x2 or
    x0.5), and advance the growth counter once per optimiser. No-op without a scaler (fp32,
    bf16).
    """
    scaler = getattr(precision_plugin, "scaler", None)
    if scaler is None:
        yield
        return
    update = scaler.update
    scaler.update = lambda new_scale=None: None   # shadows the method while the steps run
    try:
        yield
    finally:
        del scaler.update
    update()
