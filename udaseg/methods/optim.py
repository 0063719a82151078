"""Optimiser settings and the poly learning-rate schedule every method shares."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

import torch

from udaseg.models import SegmenterWeights


@dataclass(frozen=True)
class OptimConfig:
    """Optimisers and the poly schedule (defaults: the DeepLabV2 UDA papers).

    Args:
        lr: SGD learning rate of the backbone; classifiers get `classifier_lr_mult` times it.
        max_iters: horizon of the poly schedule; defaults to `trainer.max_steps`. ADVENT decays
            over 250k iterations but stops at 120k: set 250000 here and max_steps 120000.
            Resuming (`--ckpt_path`) with another `max_steps` and no `max_iters` continues on
            the new horizon, so the learning rate jumps; the run warns and says what to set.
        warmup_iters: linear warm-up `lr * iteration / warmup_iters` before the poly schedule
            takes over (CLAN warms up over its pre-heat); 0 = poly from the first iteration.
        discriminator_lr, discriminator_betas: Adam for each discriminator, same schedule.
        max_grad_norm: clip the segmenter's gradient to this total L2 norm before each step
            (after AMP unscaling; discriminators are not clipped); None: no clipping, as every
            paper here. For losses whose per-pixel weight is unbounded (Conservative Loss on a
            freshly initialised head); the norm is logged as `train/grad_norm` when set.
    """

    lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    classifier_lr_mult: float = 10.0
    poly_power: float = 0.9
    max_iters: Optional[int] = None
    warmup_iters: int = 0
    discriminator_lr: float = 1e-4
    discriminator_betas: tuple[float, float] = (0.9, 0.99)
    max_grad_norm: Optional[float] = None

    def __post_init__(self) -> None:
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"optim.max_grad_norm must be > 0 (or null: no clipping), "
                             f"got {self.max_grad_norm}")


#: Checkpoint entry holding the poly horizon the run was trained with (compared on resume).
POLY_HORIZON_KEY = "udaseg_poly_horizon"

# Checkpoints of runs built in Python pickle these configs in `hyper_parameters`; allowing them
# lets `weights.init_checkpoint` read such a checkpoint with `torch.load(weights_only=True)`.
torch.serialization.add_safe_globals([OptimConfig, SegmenterWeights])


def poly_lr(base_lr: float, iteration: int, max_iters: int, power: float = 0.9,
            warmup_iters: int = 0) -> float:
    """`base_lr * (1 - iteration / max_iters) ** power`, clamped at 0 past the horizon.

    With `warmup_iters > 0`, iterations before it use `base_lr * iteration / warmup_iters`
    instead (CLAN's official `lr_warmup`), and poly takes over from there.
    """
    if iteration < warmup_iters:
        return base_lr * max(iteration, 0) / warmup_iters
    progress = min(max(iteration, 0) / max_iters, 1.0)
    return base_lr * (1.0 - progress) ** power


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
