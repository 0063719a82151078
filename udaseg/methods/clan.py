"""CLAN (Luo et al., CVPR 2019): category-level adversarial alignment with two classifiers.

Luo, Zheng, Guan, Yu, Yang, "Taking a Closer Look at Domain Shift: Category-level Adversaries
for Semantics Consistent Domain Adaptation", CVPR 2019; official code RoyalVane/CLAN
(`CLAN_train.py`). The two classifiers of a `DualClassifierDeepLab` see the same features and are
kept apart by a weight-discrepancy loss; where they disagree on a target pixel, the category is
taken to be poorly aligned and the adversarial loss is weighted up there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from udaseg.adaptation.discriminators import SOURCE_LABEL, TARGET_LABEL, DomainDiscriminators
from udaseg.losses import (
    bce_with_constant,
    focal_loss,
    local_alignment_map,
    upsample_logits,
    weight_discrepancy_loss,
    weighted_bce_with_constant,
)
from udaseg.methods.base import UDAMethod
from udaseg.models import MAIN, DualClassifierDeepLab, SegmenterFactory, SegmenterOutput
from udaseg.models.dual_classifier import FIRST, SECOND
from udaseg.models.fused_forward import paired_forward


class CLAN(UDAMethod):
    """Category-level adversarial network: one discriminator on `softmax(z1 + z2)`.

    Iteration (official order): with D frozen, source loss `L(z1) + L(z2)` backward; on the
    target, `M = local_alignment_map(softmax(z1), softmax(z2))` and the generator loss
    `damping * (adaptation_weight * lambda_adv * L_adv + lambda_weight * L_weight)` backward, with
    `L_adv` = BCE of the upsampled `D(softmax(z1 + z2))` against the *source* label (plain during
    the pre-heat, `weighted_bce_with_constant(..., M, epsilon, lambda_local)` after it) and
    `L_weight = weight_discrepancy_loss(layer5, layer6)`; then D on the detached source map
    (plain BCE, label source) and the detached target map (label target, weighted with the
    detached M after the pre-heat), no halving, no damping; finally both optimisers step.
    Logits are upsampled (bilinear, align_corners=True) to the input size before every softmax
    (each classifier's before the sum, so D sees `softmax(up(z1) + up(z2))`), and D's output
    to the input size before its loss, as in the official code.

    Schedules (official: 100k iterations, 5k pre-heat):
    - `damping = 1 - iteration / max_iters`, with `max_iters` the poly horizon (officially both
      are `NUM_STEPS` = 100k); it scales both generator-side terms.
    - Pre-heat: the adversarial losses are plain BCE while `iteration < preheat_iters` (the
      official code switches one iteration later, `i_iter > PREHEAT_STEPS`; we switch where its
      LR warm-up ends).
    - LR: the official linear warm-up over the pre-heat, then poly, for the segmenter and D, is
      `optim.warmup_iters`: set it to `preheat_iters` (the shipped configs do). It is kept a
      separate knob rather than forced, so the two can be studied apart.

    Official-code quirks, each behind a flag:
    - `segmentation_loss`: the official source loss is a focal loss (gamma 2), which the paper
      does not mention. Default "cross_entropy": the source loss of every other udaseg method,
      so CLAN-vs-AdvEnt comparisons change only the adaptation (focal also changes what a
      source-only model would reach). The GTA5/SYNTHIA configs set "focal" to reproduce the
      official setting.
    - `detach_alignment_map`: the official generator step does not detach M, so
      `lambda_adv * lambda_local * bce * M` also trains both classifiers (and the backbone) to
      agree on target pixels the discriminator rejects, a term the paper does not have (it uses
      M as a weight). Default True (the paper); the GTA5/SYNTHIA configs set False to reproduce
      the official code. The discriminator step always uses the detached M, as officially.
    - Weight discrepancy: the official code multiplies its `Lambda_weight` (0.01) by an extra
      2 (effective 0.02). Default 0.01, applied as written; the GTA5/SYNTHIA configs set 0.02.
    - The official weight map and focal loss only work with batch size 1; here any batch size.

    Args:
        lambda_weight: weight of the weight-discrepancy loss (0.01).
        lambda_adv: weight of the generator's adversarial loss (0.001).
        lambda_local: weight of the alignment map in the weighted BCE (GTA5 40, SYNTHIA 10).
        epsilon: floor weight of the weighted BCE (0.4).
        preheat_iters: iterations of plain BCE before adaptive weighting (5000).
        segmentation_loss: "cross_entropy" (default) or "focal" (official code).
        focal_gamma: gamma of the focal loss.
        detach_alignment_map: stop the generator's adversarial gradient through M (paper).
        discriminator_width: channels of the first discriminator conv (64 officially).
        segmenter: a segmenter with two classifiers (heads "first", "second" and
            `classifier_pair()`): `udaseg.models.DualClassifierDeepLab`, the default here.
        **kwargs: `UDAMethod` arguments; `adaptation_warmup` ramps the adversarial term.
    """

    progress_losses = ("seg", "adv", "disc_target")

    def __init__(self, lambda_weight: float = 0.01, lambda_adv: float = 0.001,
                 lambda_local: float = 40.0, epsilon: float = 0.4, preheat_iters: int = 5000,
                 segmentation_loss: Literal["cross_entropy", "focal"] = "cross_entropy",
                 focal_gamma: float = 2.0, detach_alignment_map: bool = True,
                 discriminator_width: int = 64,
                 segmenter: SegmenterFactory = DualClassifierDeepLab, **kwargs) -> None:
        if segmentation_loss not in ("cross_entropy", "focal"):
            raise ValueError(f"segmentation_loss must be 'cross_entropy' or 'focal', "
                             f"got {segmentation_loss!r}")
        super().__init__(segmenter=segmenter, **kwargs)
        # One discriminator, on the summed prediction.
        self.discriminators = DomainDiscriminators([MAIN], self.num_classes, discriminator_width)

    def required_heads(self) -> Sequence[str]:
        return [FIRST, SECOND]

    def head_hint(self) -> str:
        return " to a segmenter with two classifiers, e.g. udaseg.models.DualClassifierDeepLab"

    def build_segmenter(self) -> nn.Module:
        segmenter = super().build_segmenter()
        if not callable(getattr(segmenter, "classifier_pair", None)):
            raise ValueError(f"CLAN keeps two classifiers apart, but {type(segmenter).__name__} "
                             "has no classifier_pair(): change model.init_args.segmenter"
                             + self.head_hint())
        return segmenter

    # ----------------------------------------------------------------- schedules
    @property
    def damping(self) -> float:
        """`1 - iteration / max_iters` (official `1 - i_iter / NUM_STEPS`), floored at 0."""
        return max(0.0, 1.0 - self.global_step / self.max_iters)

    @property
    def adaptive_weighting(self) -> bool:
        """Whether the pre-heat is over and the adversarial BCE is weighted by the map."""
        return self.global_step >= self.hparams.preheat_iters

    # ----------------------------------------------------------------- losses
    def source_pixel_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.hparams.segmentation_loss == "focal":
            return focal_loss(logits, labels, self.hparams.focal_gamma, self.ignore_index)
        return super().source_pixel_loss(logits, labels)

    def supervised_loss(self, outputs: SegmenterOutput,
                        labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """`L(z1) + L(z2)`: each classifier is trained on its own (official `loss_seg`)."""
        losses = {"seg_first": self.source_pixel_loss(outputs[FIRST], labels),
                  "seg_second": self.source_pixel_loss(outputs[SECOND], labels)}
        losses["seg"] = losses["seg_first"] + losses["seg_second"]
        return losses

    @staticmethod
    def summed_probability(outputs: SegmenterOutput, size: tuple[int, int]) -> torch.Tensor:
        """`softmax(up(z1) + up(z2))`, D's input: each classifier's logits upsampled to `size`,
        then summed (the official order; in float32 not bitwise `softmax(up(z1 + z2))`, which
        is the main head upsampled, as official evaluation does)."""
        first, second = (upsample_logits(outputs[head], size) for head in (FIRST, SECOND))
        return F.softmax(first + second, dim=1)

    def discriminate(self, probability: torch.Tensor) -> torch.Tensor:
        """D's logits for a (N, C, H, W) softmax map, upsampled to (N, 1, H, W) (official)."""
        return upsample_logits(self.discriminators["main"](probability),
                               tuple(probability.shape[-2:]))

    def adversarial_loss(self, logits: torch.Tensor, label: float,
                         alignment_map: torch.Tensor) -> torch.Tensor:
        """BCE of D's verdict (`discriminate`'s logits) against `label`: plain in the pre-heat,
        map-weighted after it."""
        if not self.adaptive_weighting:
            return bce_with_constant(logits, label)
        return weighted_bce_with_constant(logits, label, alignment_map, self.hparams.epsilon,
                                          self.hparams.lambda_local)

    def weight_discrepancy(self) -> torch.Tensor:
        first, second = self.segmenter.classifier_pair()
        return weight_discrepancy_loss(list(first.parameters()), list(second.parameters()))

    # ----------------------------------------------------------------- iteration
    def adaptation_step(self, source: dict, target: dict) -> dict[str, torch.Tensor]:
        hparams = self.hparams
        damping = self.damping
        source_size, target_size = (tuple(batch["image"].shape[-2:]) for batch in (source, target))
        with self.discriminators.frozen():
            source_outputs, losses, (target_outputs,) = self.supervised_step(source,
                                                                             target["image"])
            first, second = (upsample_logits(target_outputs[head], target_size)
                             for head in (FIRST, SECOND))
            alignment_map = local_alignment_map(F.softmax(first, dim=1), F.softmax(second, dim=1))
            target_probability = F.softmax(first + second, dim=1)
            generator_map = (alignment_map.detach() if hparams.detach_alignment_map
                             else alignment_map)
            losses["adv"] = self.adversarial_loss(self.discriminate(target_probability),
                                                  SOURCE_LABEL, generator_map)
            losses["weight_discrepancy"] = self.weight_discrepancy()
            # One backward for both generator terms (the official code does two; same gradient).
            self.manual_backward(damping * (
                self.adaptation_weight * hparams.lambda_adv * losses["adv"]
                + hparams.lambda_weight * losses["weight_discrepancy"]))

        with torch.no_grad():  # the discriminator sees detached maps only
            source_probability = self.summed_probability(source_outputs, source_size)
        source_logits, target_logits = paired_forward(
            self.discriminate, source_probability, target_probability.detach(),
            fused=self.fast_path.fused_forward)
        losses["disc_source"] = bce_with_constant(source_logits, SOURCE_LABEL)
        self.manual_backward(losses["disc_source"])
        losses["disc_target"] = self.adversarial_loss(target_logits, TARGET_LABEL,
                                                      alignment_map.detach())
        self.manual_backward(losses["disc_target"])
        losses["alignment_map"] = alignment_map.detach().mean()
        return losses
