"""DACS (Tranheden, Olsson, Pinto, Svensson, "DACS: Domain Adaptation via Cross-domain Mixed
Sampling", WACV 2021; official code vikolss/DACS).

Every iteration: an EMA teacher labels the target batch; each source/target pair is mixed by
ClassMix (half of the source label's classes pasted onto the target image, labelled with the
source label there and the teacher's pseudo-labels elsewhere); the mixed images get a colour
jitter and blur; the student trains on the source batch and the mixed batch:
`L = L_sup + lambda_mix * L_mix`, target pixels of the mix weighted by the share of pixels the
teacher is sure of (>= 0.968). After the student's step the teacher follows it.

Official-code choices (docs/methods/dacs.md): the teacher's BN uses batch statistics (it is
run in train mode); ClassMix draws among the label's values, the ignore label included
(`classmix_ignore_label: candidate`; udaseg's default draws among classes only).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional

import torch

from udaseg.adaptation.batch_augment import ClassMixIgnoreLabel, MixPhotometric
from udaseg.adaptation.class_mix import (
    DACS_MIX_PHOTOMETRIC,
    MIX_STREAM,
    ClassChoice,
    ClassMix,
    MixedBatch,
    PseudoLabels,
    teacher_pseudo_labels,
)
from udaseg.adaptation.masked_consistency import (
    MaskedImageConsistency,
    as_masked_consistency,
    pseudo_weight_map,
)
from udaseg.adaptation.photometric import require_input_normalization
from udaseg.adaptation.teacher import Teacher, TeacherBN
from udaseg.methods.base import UDAMethod
from udaseg.models import MAIN


class DACS(UDAMethod):
    """`L = L_sup + adaptation_weight * lambda_mix * L_mix` with an EMA teacher.

    Args:
        lambda_mix: weight of the mixed-image loss (1).
        ema_momentum: the teacher's largest EMA alpha, `min(1 - 1/(t + 1), 0.99)`.
        teacher_bn: "train" (batch statistics, official) or "eval".
        pseudo_confidence: teacher confidence that counts as sure in the target weight (0.968).
        classmix_ignore_label: "never" (ClassMix draws among the source label's classes) or
            "candidate" (official: the ignore label is drawn like a class).
        class_choice: "per_image" (DACS: half of each source label's classes) or "per_batch"
            (half of the classes of every source label of the batch; DAFormer's code).
        mix_photometric: augmentation of the mixed image on the device (DACS's colour jitter
            and blur); needs `data.normalization`.
        mic: MIC's masked image consistency on the teacher's pseudo-labels (`L +=
            lambda_mic * L_mic`); None (default) leaves it out.
        **kwargs: `UDAMethod` arguments.
    """

    progress_losses = ("seg", "mix", "masked")

    #: The EMA alpha after the student's step at iteration t is alpha(t + offset): DACS 0
    #: (after step 0 the teacher is the student).
    teacher_alpha_offset: ClassVar[int] = 0

    def __init__(self, lambda_mix: float = 1.0, ema_momentum: float = 0.99,
                 teacher_bn: TeacherBN = "train", pseudo_confidence: float = 0.968,
                 classmix_ignore_label: ClassMixIgnoreLabel = "never",
                 class_choice: ClassChoice = "per_image",
                 mix_photometric: MixPhotometric = DACS_MIX_PHOTOMETRIC,
                 mic: Optional[MaskedImageConsistency] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.teacher = Teacher(self.segmenter, "ema", ema_momentum, teacher_bn)
        self.class_mix = ClassMix(self.ignore_index, classmix_ignore_label,
                                  MixPhotometric(**mix_photometric)
                                  if isinstance(mix_photometric, dict) else mix_photometric,
                                  class_choice=class_choice)
        self.mic = as_masked_consistency(mic)

    def on_train_start(self) -> None:
        super().on_train_start()
        require_input_normalization(self.input_normalization, ["mix_photometric"],
                                    self.trainer.datamodule)

    def adaptation_step(self, source: dict, target: dict) -> dict[str, torch.Tensor]:
        # The mix needs only the teacher and its own generator, so it is built first and can
        # share the source forward (fused path).
        target_images, pseudo, mixed, target_weights = self.weighted_mix(source, target)
        _, losses, (mixed_outputs,) = self.supervised_step(source, mixed.images)
        losses.update(mixed.statistics())
        losses["mix"] = mixed.loss(mixed_outputs[MAIN], ignore_index=self.ignore_index)
        self.manual_backward(self.adaptation_weight * self.hparams.lambda_mix * losses["mix"])
        if self.mic is not None:
            # MIC weighs the pseudo-labels as the mix does.
            losses.update(self.masked_consistency_step(source, target_images, pseudo.labels,
                                                       target_weights))
        return losses

    def weighted_mix(self, source: dict, target: dict
                     ) -> tuple[torch.Tensor, PseudoLabels, MixedBatch, torch.Tensor]:
        """The target images paired with the source batch, the teacher's labels of them, the
        source mixed onto them and the (N, H, W) pseudo-label weights (`target_weights`),
        which the mix's target pixels carry and MIC shares."""
        target_images, pseudo = self.pseudo_labels(source, target)
        mixed = self.class_mix(source, target_images, pseudo,
                               self.iteration_generator(MIX_STREAM), self.input_normalization)
        target_weights = self.target_weights(pseudo, target)
        mixed = dataclasses.replace(mixed, pixel_weights=torch.where(
            mixed.source_mask, mixed.pixel_weights, target_weights))
        return target_images, pseudo, mixed, target_weights

    def pseudo_label_crop(self) -> tuple[int, int]:
        """(top, bottom) rows of every target crop whose pseudo-labels get weight 0: none in
        DACS (DAFormer's `pseudo_weight_crop`)."""
        return 0, 0

    def target_weights(self, pseudo: PseudoLabels, target: dict) -> torch.Tensor:
        """(N, H, W) weights of the pseudo-labels: the teacher's confidence share, 0 in the
        pseudo-label crop's rows and off the margins of the target stream's `pseudo_margins`
        (the batch's "pseudo_valid", HRDA's)."""
        top, bottom = self.pseudo_label_crop()
        valid = target.get("pseudo_valid")
        if valid is not None and (top or bottom):
            raise ValueError("data.target_augmentation.pseudo_margins (HRDA's margins) replace "
                             "DAFormer's pseudo-label crop: set "
                             "model.init_args.pseudo_weight_crop: [0, 0]")
        return pseudo_weight_map(pseudo.confidence_weight, tuple(pseudo.labels.shape), top,
                                 bottom, None if valid is None else valid[:len(pseudo.labels)])

    def pseudo_labels(self, source: dict, target: dict) -> tuple[torch.Tensor, PseudoLabels]:
        """The target images paired with the source batch and the teacher's labels of them,
        which the mix and MIC share."""
        target_images = target["image"][:source["image"].shape[0]]
        return target_images, teacher_pseudo_labels(self.teacher, target_images,
                                                     self.hparams.pseudo_confidence)

