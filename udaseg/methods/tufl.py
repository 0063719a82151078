"""TUFL stage 1 (Yan et al., "Threshold-Adaptive Unsupervised Focal Loss for Domain Adaptation of
Semantic Segmentation", IEEE T-ITS 2023; official code ywher/TUFL, BiSeNet Cityscapes->Cross-City).

Every iteration: the (class-weighted) source loss; then the clean target view and a strong view
(photometric augmentation from the data module's `target_strong_view`, then a random affine
applied here, on the device) go through the segmenter; the clean logits are warped by the same
affine, so both predictions lie in one frame, and the unsupervised focal loss trains the pixels
whose clean confidence beats their class's threshold.

Official-code choices (docs/methods/tufl.md):
- Thresholds: the official ones are per GPU and never synchronised, and the shared loss object
  moves them once per BiSeNet head (3 times an iteration). Here they are a checkpointed buffer
  updated from the statistics of every rank (identical everywhere), once per iteration from the
  main head; `threshold_updates: per_head` reproduces the per-head updates.
- Out-of-frame pixels: officially the clean logits are warped with zero padding, so a pixel
  whose warped position is partly outside the frame has damped logits (uniform ones, argmax
  class 0, when fully outside); it enters the selection, the loss and the threshold statistics.
  Here (`out_of_frame: exclude`) such pixels never count; `out_of_frame: keep` reproduces the
  official selection, threshold update and loss.
- Class weights: hard-coded for Cityscapes officially; computed from source label frequencies
  (`class_balance_weights`) or given as a list here; they weight the supervised loss too, with
  the official normalisation (`class_weighted_cross_entropy`).
- The official optimiser gives every group 10x the base rate and BN is frozen (`net.eval()`):
  set in the Cross-City configs (`classifier_lr_mult: 1`, `bn_stats: frozen`, the default here).
"""

from __future__ import annotations

from typing import Literal, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from udaseg.adaptation.batch_augment import MixPhotometric, RandomAffine
from udaseg.adaptation.photometric import require_input_normalization
from udaseg.adaptation.thresholds import ThresholdSelection
from udaseg.adaptation.two_views import OutOfFrame, TwoViews
from udaseg.losses import (
    class_balance_weights,
    class_weighted_cross_entropy,
    unsupervised_focal_loss,
)
from udaseg.losses.consistency import FocalModulation
from udaseg.methods.base import UDAMethod
from udaseg.models import MAIN

torch.serialization.add_safe_globals([RandomAffine, MixPhotometric])

ClassWeighting = Union[Literal["source_frequency", "none"], list[float]]


class TUFL(UDAMethod):
    """`L = L_sup + adaptation_weight * lambda_ufl * sum_head w_head * L_UFL(head)`.

    Head weights `w_head` are the supervised ones (`loss_head_weights`); every head's clean
    logits are upsampled to the input size and warped, its strong logits upsampled.

    Args:
        lambda_ufl: weight of the unsupervised focal loss (official 0.08).
        threshold: "adaptive" (class-wise IAST thresholds, the paper's TUFL) or "fixed"
            (`initial_threshold` for every class, the plain UFL run).
        modulation: the focal factor, "confidence" `1 - q_ŷ` (official with adaptive
            thresholds) or "difference" `|p̄_ŷ - q_ŷ|` (official with a fixed one).
        focal_gamma: focusing exponent (official runs: 2).
        initial_threshold: theta_0, and the fixed threshold (0.8).
        threshold_rank, threshold_exponent, threshold_momentum: IAST's b 0.8, d 8, a 0.9.
        threshold_updates: "per_iteration" (main head, once) or "per_head" (official).
        out_of_frame: target pixels whose warped position lies partly or wholly outside the
            frame: "exclude" (never selected nor counted in the threshold statistics: their
            zero-padded logits are not the network's prediction, and fully outside ones would
            pile up as uniform class-0 pixels, dragging class 0's threshold down) or "keep"
            (official: they count like any other pixel).
        class_weights: "source_frequency" (ENet rule on the source labels, one pass over them
            when training starts), "none", or one weight per class.
        class_weight_offset: the ENet rule's offset (1.10 matches the official range).
        weighted_source_loss: the class weights also weight the source loss (official).
        strong_affine: the strong view's random affine (official ranges).
        device_strong_view: make the strong view's photometric steps on the device, on the
            whole target batch (`udaseg.adaptation.batch_augment.MixPhotometric`; `{}` =
            TUFL's steps without the shadow overlay), instead of reading "strong_image" from
            the data module (`data.target_strong_view`: PIL, in the DataLoader workers, the
            official order with the shadow). None = the data module's. Needs `data.normalization`.
        bn_stats: "frozen" as officially (`net.eval()`); "batch" for networks trained from
            scratch (the built-in benchmark).
        **kwargs: `UDAMethod` arguments.
    """

    progress_losses = ("seg", "ufl")

    def __init__(self, lambda_ufl: float = 0.08,
                 threshold: Literal["adaptive", "fixed"] = "adaptive",
                 modulation: FocalModulation = "confidence", focal_gamma: float = 2.0,
                 initial_threshold: float = 0.8, threshold_rank: float = 0.8,
                 threshold_exponent: float = 8.0, threshold_momentum: float = 0.9,
                 threshold_updates: Literal["per_iteration", "per_head"] = "per_iteration",
                 out_of_frame: OutOfFrame = "exclude",
                 class_weights: ClassWeighting = "source_frequency",
                 class_weight_offset: float = 1.10, weighted_source_loss: bool = True,
                 strong_affine: RandomAffine = RandomAffine(),
                 device_strong_view: Optional[MixPhotometric] = None,
                 bn_stats: Literal["batch", "frozen"] = "frozen", **kwargs) -> None:
        super().__init__(bn_stats=bn_stats, **kwargs)
        self.views = TwoViews(
            RandomAffine(**strong_affine) if isinstance(strong_affine, dict) else strong_affine,
            MixPhotometric(**device_strong_view) if isinstance(device_strong_view, dict)
            else device_strong_view, out_of_frame)
        self.selection = ThresholdSelection(self.num_classes, threshold, initial_threshold,
                                            threshold_rank, threshold_exponent,
                                            threshold_momentum)
        given = isinstance(class_weights, (list, tuple))
        if given and len(class_weights) != self.num_classes:
            raise ValueError(f"model.init_args.class_weights has {len(class_weights)} entries, "
                             f"num_classes is {self.num_classes}")
        # All zeros = not computed yet (filled from the source labels when training starts,
        # then restored from checkpoints like the thresholds).
        initial = torch.tensor(class_weights, dtype=torch.float32) if given else \
            torch.zeros(self.num_classes)
        self.register_buffer("class_weights", initial)

    # ----------------------------------------------------------------- set-up
    @property
    def thresholds(self) -> torch.Tensor:
        """The (C,) class thresholds of the pixel selection (a checkpointed buffer)."""
        return self.selection.thresholds

    @property
    def loss_class_weights(self) -> Optional[torch.Tensor]:
        return None if self.hparams.class_weights == "none" else self.class_weights

    def on_train_start(self) -> None:
        super().on_train_start()
        require_input_normalization(self.input_normalization, self.device_photometric_settings(),
                                    self.trainer.datamodule)
        if self.hparams.class_weights == "source_frequency" and not self.class_weights.any():
            counts = np.asarray(self.trainer.datamodule.source_pixel_counts()).sum(axis=0)
            weights = class_balance_weights(torch.from_numpy(counts),
                                            self.hparams.class_weight_offset)
            self.class_weights.copy_(weights)

    def device_photometric_settings(self) -> list[str]:
        """Settings whose photometric steps run on the device: they need the data module's
        input normalisation."""
        return ["device_strong_view"] if self.views.device_photometric is not None else []

    def source_pixel_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weights = self.loss_class_weights
        if not self.hparams.weighted_source_loss or weights is None:
            return super().source_pixel_loss(logits, labels)
        return class_weighted_cross_entropy(logits, labels, weights, self.ignore_index)

    # ----------------------------------------------------------------- iteration
    def adaptation_step(self, source: dict, target: dict) -> dict[str, torch.Tensor]:
        strong_images, theta = self.views.strong_view(target, self.iteration_generator,
                                                      self.input_normalization)
        _, losses, (clean_outputs, strong_outputs) = self.supervised_step(
            source, target["image"], strong_images)
        # The main head always: the once-per-iteration threshold update reads it.
        heads = dict.fromkeys([MAIN, *self.loss_head_weights])
        focal = self.focal_loss(self.views.predictions(
            clean_outputs, strong_outputs, theta, tuple(strong_images.shape[-2:]), heads),
            losses)
        self.manual_backward(self.adaptation_weight * self.hparams.lambda_ufl * focal)
        return losses

    def focal_loss(self, predictions: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                            Optional[torch.Tensor]],
                   losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """`sum_head w_head * L_UFL(head)` of this target batch's two-view predictions
        (thresholds updated first); its terms, the selected share and the thresholds are
        added to `losses` for logging."""
        clean_logits, strong_logits, in_frame = predictions
        adaptive = self.selection.adaptive
        per_head = self.hparams.threshold_updates == "per_head"
        clean_probs = {head: F.softmax(logits.detach().float(), dim=1)
                       for head, logits in clean_logits.items()}
        if adaptive and not per_head:
            self.selection.update(clean_probs[MAIN], in_frame, self.gather)
        total = 0.0
        for head, weight in self.loss_head_weights.items():
            clean_prob = clean_probs[head]
            if adaptive and per_head:
                self.selection.update(clean_prob, in_frame, self.gather)
            selected = self.selection.select(clean_prob, in_frame)
            losses[f"ufl_{head}"] = unsupervised_focal_loss(
                clean_logits[head], strong_logits[head], selected,
                self.loss_class_weights, self.hparams.focal_gamma, self.hparams.modulation)
            if head == MAIN:
                losses["selected"] = selected.float().mean()
            total = total + weight * losses[f"ufl_{head}"]
        losses["ufl"] = total
        if adaptive:
            for name, value in zip(self.class_names, self.thresholds, strict=True):
                losses[f"threshold/{name}"] = value
        return total

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` of every rank, concatenated along dim 0 (itself on one process)."""
        if self._trainer is None or self.trainer.world_size <= 1:
            return tensor
        return self.all_gather(tensor).flatten(0, 1)
