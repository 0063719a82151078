"""Masked image consistency (MIC: Hoyer, Yang, Dai, Van Gool, "MIC: Masked Image Consistency for
Context-Enhanced Domain Adaptation", CVPR 2023; official `lhoyer/MIC`, folder `seg/`).

Besides its own losses, the host method trains the student on a masked copy of the target batch:
random blocks of the (colour-augmented) target image are set to the mean colour
(`BlockMask`), and the student has to predict, from the visible context alone, the pseudo-labels
a teacher gave the whole image:

    L_mic = 1/(N*H*W) * sum_i q_i * CE(f_student(mask * aug(x_t))_i, y_hat_i)

with `y_hat` the teacher's pseudo-labels of the unmasked `x_t` and `q` their weight (the share
of confident pixels, zero in the pseudo-label crop), the same ones the host's mixing uses. The
method adds `lambda_mic * L_mic` (lambda_mic = 1).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
from torch import nn

from udaseg.adaptation.block_mask import BlockMask
from udaseg.adaptation.photometric import augment_input
from udaseg.adaptation.strong_augment import StrongAugmentation
from udaseg.adaptation.teacher import Teacher

#: `iteration_generator` stream of MIC's draws (augmentation, then the block mask).
MIC_STREAM = 3

MaskMode = Literal["separatetrgaug", "separate"]
BNStatistics = Literal["update", "keep"]


@dataclass
class MaskedBatch:
    """(N, 3, H, W) masked network inputs, (N, H, W) labels and (N, H, W) pixel weights; the
    method trains on them with its weighted loss (`UDAMethod.weighted_loss`)."""

    images: torch.Tensor
    labels: torch.Tensor
    pixel_weights: torch.Tensor


@dataclass(frozen=True)
class MaskedImageConsistency:
    """MIC's settings and its masked batch (see the module docstring).

    Args:
        block_size: mask block side in input pixels: 64 at full resolution (HRDA's crops of
            Cityscapes at 2048x1024), 32 for crops of images at half resolution (DAFormer's
            1024x512 Cityscapes).
        ratio: probability that a block is masked (0.7).
        mode: "separatetrgaug" (the default): the target batch alone, colour-jittered and
            blurred (`photometric`) before masking; "separate": the first half of the batch
            from the source (its labels, weight 1), the rest from the target, neither augmented
            (officially one of each, for batches of two).
        weight: lambda_mic (1).
        photometric: the augmentation of "separatetrgaug" (DAFormer's strong augmentation,
            the blur always possible as in MIC's code).
        bn_statistics: what the masked forward does to the student's BN running statistics:
            "update" (official): they move towards the masked images' statistics like after
            any training forward; "keep": BN normalises the masked batch by its own
            statistics, but the running statistics evaluation uses stay those of the clean
            batches. Networks with BN in the encoder (DeepLabV2, EfficientNet-Lite) evaluate
            with running statistics partly of 70 %-grey images under "update".
        ema_momentum, pseudo_confidence: the EMA teacher MIC brings to a method that has none
            (MinEnt, AdvEnt): its largest alpha (0.999) and the confidence threshold of the
            pseudo-label weight (0.968). Methods with a teacher (DACS, DAFormer) share theirs
            and its pseudo-labels, and ignore these.
    """

    block_size: int = 64
    ratio: float = 0.7
    mode: MaskMode = "separatetrgaug"
    weight: float = 1.0
    photometric: StrongAugmentation = field(default_factory=StrongAugmentation)
    bn_statistics: BNStatistics = "update"
    ema_momentum: float = 0.999
    pseudo_confidence: float = 0.968

    def __post_init__(self) -> None:
        if self.mode not in ("separatetrgaug", "separate"):
            raise ValueError(f"model.init_args.mic.mode must be 'separatetrgaug' or 'separate', "
                             f"got {self.mode!r}")
        if self.bn_statistics not in ("update", "keep"):
            raise ValueError(f"model.init_args.mic.bn_statistics must be 'update' or 'keep', "
                             f"got {self.bn_statistics!r}")
        if isinstance(self.photometric, dict):
            object.__setattr__(self, "photometric", StrongAugmentation(**self.photometric))
        try:
            object.__setattr__(self, "mask", BlockMask(self.block_size, self.ratio))
        except ValueError as error:
            raise ValueError(f"model.init_args.mic: {error}") from None

    @property
    def augments(self) -> bool:
        """Whether the masked images are colour-augmented (and need the input normalisation)."""
        return self.mode == "separatetrgaug"

    @torch.no_grad()
    def masked_batch(self, source: dict, target_images: torch.Tensor,
                     pseudo_labels: torch.Tensor, pseudo_weights: torch.Tensor,
                     generator: torch.Generator, normalization: Optional[str]) -> MaskedBatch:
        """The masked batch of one iteration.

        Args:
            source: the source batch ("image" (N, 3, H, W), "label" (N, H, W)); read in
                "separate" mode only.
            target_images: (N, 3, H, W) normalised target images.
            pseudo_labels, pseudo_weights: (N, H, W) teacher labels of `target_images` and
                their weights.
            generator: this iteration's MIC generator (augmentation draws, then the mask).
            normalization: the data module's input normalisation (for the augmentation).
        """
        if self.mode == "separate":
            count = target_images.shape[0]
            from_source = min(count // 2, source["image"].shape[0])
            images = torch.cat([source["image"][:from_source],
                                target_images[:count - from_source]])
            labels = torch.cat([source["label"][:from_source].long(),
                                pseudo_labels[:count - from_source].long()])
            weights = torch.cat([torch.ones_like(pseudo_weights[:from_source]),
                                 pseudo_weights[:count - from_source]])
        else:
            images = augment_input(self.photometric, target_images, normalization, generator)
            labels, weights = pseudo_labels.long(), pseudo_weights
        return MaskedBatch(self.mask(images, generator), labels, weights.float())


@contextmanager
def kept_bn_statistics(network: nn.Module, keep: bool = True) -> Iterator[None]:
    """Forwards of `network` inside leave its BN running statistics (and batch counts) as they
    were (`keep`); BN still normalises each batch by its own statistics in training mode.

    The layers' momentum is 0 meanwhile, so the running statistics are updated with weight 0
    (not restored afterwards: the backward pass may still hold them)."""
    layers = [module for module in network.modules()
              if isinstance(module, nn.modules.batchnorm._BatchNorm)
              and module.track_running_stats] if keep else []
    saved = [(layer.momentum, layer.num_batches_tracked.clone()) for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    try:
        yield
    finally:
        for layer, (momentum, count) in zip(layers, saved, strict=True):
            layer.momentum = momentum
            layer.num_batches_tracked.copy_(count)


def as_masked_consistency(value: Optional[MaskedImageConsistency | dict]
                          ) -> Optional[MaskedImageConsistency]:
    """A method's `mic` argument as `MaskedImageConsistency` (configs may give a mapping)."""
    if isinstance(value, dict):
        return MaskedImageConsistency(**value)
    return value


def masked_consistency_teacher(value: Optional[MaskedImageConsistency | dict],
                               student: torch.nn.Module
                               ) -> tuple[Optional[MaskedImageConsistency], Optional[Teacher]]:
    """For a method without a teacher: its `mic` argument and, with MIC, the EMA teacher of
    the student that MIC brings (official: BN with batch statistics, dropout off), else None."""
    mic = as_masked_consistency(value)
    if mic is None:
        return None, None
    return mic, Teacher(student, "ema", mic.ema_momentum, "train")


def pseudo_weight_map(confidence_weight: torch.Tensor, shape: tuple[int, int, int],
                      top: int = 0, bottom: int = 0,
                      valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(N, H, W) pseudo-label weights of a target batch: the scalar `confidence_weight`
    everywhere, 0 on the first `top` and last `bottom` rows (DAFormer's pseudo-label crop) and
    where the optional (N, H, W) `valid` mask is 0 (HRDA's margins, marked before cropping).

    >>> pseudo_weight_map(torch.tensor(0.5), (1, 4, 1), top=1, bottom=1)[0, :, 0].tolist()
    [0.0, 0.5, 0.5, 0.0]

    The crop is DAFormer's `pseudo_weight_crop` (official `pseudo_weight_ignore_top/bottom`,
    15 and 120 rows of a 512 crop), where rectification artefacts (top) and the ego vehicle
    (bottom) make the teacher untrustworthy. Officially the rows are zeroed in the target's map
    after the confidence share is computed over the whole image, then mixed with a map of ones
    for pasted source pixels (`DACS.weighted_mix`).
    """
    if top < 0 or bottom < 0:
        raise ValueError(f"the pseudo-label crop takes non-negative row counts, got top={top}, "
                         f"bottom={bottom}")
    weights = confidence_weight.float().expand(shape).clone()
    if top:
        weights[:, :top] = 0
    if bottom:
        weights[:, weights.shape[1] - bottom:] = 0
    if valid is not None:
        weights = weights * valid.to(weights)
    return weights


# Methods built in Python pickle these settings in their checkpoints' `hyper_parameters`.
torch.serialization.add_safe_globals([MaskedImageConsistency, BlockMask])
