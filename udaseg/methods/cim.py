"""TUFL's stage 2, cross-domain image mixing (CIM; Yan et al., "Threshold-Adaptive Unsupervised
Focal Loss for Domain Adaptation of Semantic Segmentation", IEEE T-ITS 2023; official
`unsup/get_img_lb.py`, which does not run as released).

Every iteration is TUFL's (source loss, the two target views, the unsupervised focal loss, the
threshold update), then a mixed batch: the frozen stage-1 model labels the target crops, ClassMix
pastes half of each source crop's classes onto a target crop and, with probability
`long_tail_p`, fewer ClassMix classes plus 2-4 rare classes cut from other source crops (drawn
with probabilities softmax(1 / theta_c), so classes the thresholds call unsure come first); the
mix gets TUFL's strong photometric view and trains the main head, class-weighted:
`L = L_sup + 0.08 L_UFL + 0.5 L_mix`.
"""

from __future__ import annotations

from typing import Optional

import torch

from udaseg.adaptation.batch_augment import ClassMixIgnoreLabel, MixPhotometric
from udaseg.adaptation.class_mix import MIX_STREAM, ClassMix
from udaseg.adaptation.long_tail import LongTailPasting, LongTailSampling
from udaseg.adaptation.teacher import Teacher, TeacherBN
from udaseg.methods.tufl import TUFL
from udaseg.models import MAIN


class CIM(TUFL):
    """`L = L_sup + adaptation_weight * (lambda_ufl * L_UFL + lambda_mix * L_mix)`.

    The teacher is the initial model, i.e. the stage-1 (TUFL) checkpoint given as
    `weights.init_checkpoint`, never updated.

    Args:
        lambda_mix: weight of the mixed-image loss (0.5).
        teacher_bn: "eval" (running statistics, official) or "train".
        pseudo_confidence: teacher confidence that counts as sure in the target weight (0.968).
        classmix_ignore_label: "never" or "candidate" (official: the ignore label is drawn like
            a class; `udaseg.adaptation.batch_augment.class_mix_mask`).
        long_tail_p: probability, per pair, of long-tail pasting (0.3).
        long_tail_classes: classes that may be pasted; None = every class (official).
        long_tail_count: (min, max) classes pasted when pasting happens (official 2-4).
        long_tail_sampling: "threshold" (official) or "uniform" (without replacement).
        mix_photometric: augmentation of the mixed image on the device (TUFL's strong view);
            needs `data.normalization`.
        **kwargs: `TUFL` arguments (lambda_ufl 0.08, thresholds, class weights, ...).
    """

    progress_losses = ("seg", "ufl", "mix")

    def __init__(self, lambda_mix: float = 0.5, teacher_bn: TeacherBN = "eval",
                 pseudo_confidence: float = 0.968,
                 classmix_ignore_label: ClassMixIgnoreLabel = "never",
                 long_tail_p: float = 0.3, long_tail_classes: Optional[list[int]] = None,
                 long_tail_count: tuple[int, int] = (2, 4),
                 long_tail_sampling: LongTailSampling = "threshold",
                 mix_photometric: MixPhotometric = MixPhotometric(), **kwargs) -> None:
        super().__init__(**kwargs)
        if not self.has_trained_weights:
            raise ValueError("CIM's teacher is the stage-1 model: set model.init_args.weights"
                             ".init_checkpoint to the stage-1 (TUFL) run's checkpoint")
        self.teacher = Teacher(self.segmenter, "frozen", bn=teacher_bn)
        self.long_tail = LongTailPasting(long_tail_p, self.num_classes, long_tail_classes,
                                         long_tail_count, long_tail_sampling, self.selection)
        self.class_mix = ClassMix(self.ignore_index, classmix_ignore_label,
                                  MixPhotometric(**mix_photometric)
                                  if isinstance(mix_photometric, dict) else mix_photometric,
                                  self.long_tail)

    def device_photometric_settings(self) -> list[str]:
        return [*super().device_photometric_settings(), "mix_photometric"]

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.long_tail.probability > 0:
            self.long_tail.attach(self.trainer.datamodule)

    def adaptation_step(self, source: dict, target: dict) -> dict[str, torch.Tensor]:
        # TUFL's iteration first (its two views share the source forward), then the mix, whose
        # long-tail draw reads the thresholds the focal loss has just updated.
        losses = super().adaptation_step(source, target)
        mixed = self.class_mix.with_teacher(
            self.teacher, source, target["image"], self.hparams.pseudo_confidence,
            self.iteration_generator(MIX_STREAM), self.input_normalization)
        mixed_outputs = self.segmenter(mixed.images)
        losses.update(mixed.statistics())
        losses["mix"] = mixed.loss(mixed_outputs[MAIN], self.loss_class_weights,
                                   self.ignore_index)
        self.manual_backward(self.adaptation_weight * self.hparams.lambda_mix * losses["mix"])
        return losses
