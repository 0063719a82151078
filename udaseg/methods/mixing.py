"""Cross-domain mixing with a teacher: TUFL's stage 2, cross-domain image mixing (CIM; Yan et
al., IEEE T-ITS 2023, official `unsup/get_img_lb.py`, which does not run as released), and DACS
(Tranheden et al., WACV 2021, official vikolss/DACS), as one method with a teacher option.

Every iteration, each source/target pair of the batch is mixed on its own: ClassMix pastes the
pixels of half of the source label's classes onto the target image; the label is the source
label there and the teacher's pseudo-label (argmax on the clean target crop) elsewhere, target
pixels weighted by the share of confident teacher pixels. With probability `long_tail_p` (CIM)
fewer ClassMix classes are taken and 2-4 rare classes, cut from other source crops that contain
them, are pasted as well. The mixed image gets a photometric augmentation on the device and
trains the main head.

- CIM (`teacher: frozen`): the teacher is the stage-1 TUFL model (`weights.init_checkpoint`),
  in eval mode, never updated; `L = L_sup + 0.08 L_UFL + 0.5 L_mix`, class-weighted.
- DACS (`teacher: ema`): the teacher is the EMA of the student's parameters (not its BN
  buffers), `alpha = min(1 - 1/(it + 1), 0.99)`, updated after each optimiser step and run in
  train mode; `L = L_sup + L_mix`, no class weights, no UFL, no long-tail pasting.
"""

from __future__ import annotations

import copy
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from udaseg.batch_augment import MixPhotometric, class_mix_mask, iteration_generator, paste
from udaseg.data.transforms import input_to_unit_rgb, unit_rgb_to_input
from udaseg.losses import (
    confidence_fraction,
    mixed_pixel_weights,
    pixel_weighted_cross_entropy,
    upsample_logits,
)
from udaseg.methods.long_tail import LONG_TAIL_CLASSMIX_DROP, LongTailPasting
from udaseg.methods.tufl import TUFL
from udaseg.models import MAIN

#: `iteration_generator` stream of the mixing draws (TUFL's affine uses stream 0).
MIX_STREAM = 1


class CrossDomainMixing(LongTailPasting, TUFL):
    """`L = L_sup + adaptation_weight * (lambda_ufl * L_UFL + lambda_mix * L_mix)`.

    Defaults are CIM's; `configs/synthetic/dacs.yaml` shows DACS's settings.

    Args:
        teacher: "frozen" (CIM: the initial weights, i.e. the stage-1 checkpoint, which must be
            given as `weights.init_checkpoint`) or "ema" (DACS).
        ema_momentum: the EMA teacher's maximum alpha (DACS 0.99; DAFormer 0.999).
        teacher_bn: "eval" (running statistics) or "train" (batch statistics; the teacher's
            running statistics then move with its own forwards, as in DACS); None = "eval" for
            a frozen teacher, "train" for an EMA one (the official choices).
        lambda_mix: weight of the mixed-image loss (CIM 0.5, DACS 1).
        lambda_ufl: TUFL's focal term on the two target views (CIM 0.08; 0 switches it and the
            strong view off, as in DACS).
        pseudo_confidence: teacher confidence that counts as sure in the target weight (0.968).
        classmix_ignore_label: "never" (ClassMix draws among the source label's classes) or
            "candidate" (official DACS and CIM: the ignore label is drawn like a class and its
            pixels pasted, still ignored, in the place of one; `class_mix_mask`).
        long_tail_p: probability, per pair, of long-tail pasting (CIM 0.3; DACS 0).
        long_tail_classes: classes that may be pasted; None = every class (the official
            adaptive run).
        long_tail_count: (min, max) classes pasted when pasting happens (official 2-4).
        long_tail_sampling: "threshold", with replacement, with probabilities softmax(1 /
            theta_c) (the official adaptive run: classes the model is unsure of come first), or
            "uniform", without replacement.
        mix_photometric: augmentation of the mixed image (default: TUFL's strong view), on
            the device: needs `data.normalization`.
        **kwargs: `TUFL` and `UDAMethod` arguments.
    """

    progress_losses = ("seg", "ufl", "mix")

    def __init__(self, teacher: Literal["frozen", "ema"] = "frozen",
                 ema_momentum: float = 0.99,
                 teacher_bn: Optional[Literal["train", "eval"]] = None,
                 lambda_mix: float = 0.5, lambda_ufl: float = 0.08,
                 pseudo_confidence: float = 0.968, long_tail_p: float = 0.3,
                 classmix_ignore_label: Literal["never", "candidate"] = "never",
                 long_tail_classes: Optional[list[int]] = None,
                 long_tail_count: tuple[int, int] = (2, 4),
                 long_tail_sampling: Literal["threshold", "uniform"] = "threshold",
                 mix_photometric: MixPhotometric = MixPhotometric(), **kwargs) -> None:
        super().__init__(lambda_ufl=lambda_ufl, **kwargs)
        if teacher == "frozen" and not self.has_trained_weights:
            raise ValueError("teacher: frozen is CIM's stage-1 model: set model.init_args.weights"
                             ".init_checkpoint to the stage-1 (TUFL) run's checkpoint, or use "
                             "teacher: ema")
        low, high = long_tail_count
        if not 1 <= low <= high:
            raise ValueError(f"model.init_args.long_tail_count must be (min, max) with 1 <= min "
                             f"<= max, got {tuple(long_tail_count)}")
        self.mix_photometric = (MixPhotometric(**mix_photometric)
                                if isinstance(mix_photometric, dict) else mix_photometric)
        # A copy of the initialised student: the stage-1 weights (frozen) or the EMA's start.
        self.teacher = copy.deepcopy(self.segmenter).requires_grad_(False)

    # ----------------------------------------------------------------- teacher
    @property
    def teacher_bn(self) -> str:
        if self.hparams.teacher_bn is not None:
            return self.hparams.teacher_bn
        return "eval" if self.hparams.teacher == "frozen" else "train"

    def train(self, mode: bool = True) -> CrossDomainMixing:
        super().train(mode)
        if "teacher" in self._modules:
            self.teacher.train(mode and self.teacher_bn == "train")
        return self

    def bn_statistics_modules(self) -> list[torch.nn.Module]:
        # A train-mode teacher's running statistics move with each rank's own target shard.
        return [*super().bn_statistics_modules(), self.teacher]

    def compiled_networks(self) -> list[torch.nn.Module]:
        return [*super().compiled_networks(), self.teacher]

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.hparams.long_tail_p > 0:
            self.prefetch_donors()

    def device_photometric_settings(self) -> list[str]:
        return [*super().device_photometric_settings(), "mix_photometric"]

    def step_optimizers(self, optimizers: list) -> None:
        iteration = self.global_step
        super().step_optimizers(optimizers)
        if self.hparams.teacher == "ema":
            self.update_teacher(iteration)

    @torch.no_grad()
    def update_teacher(self, iteration: int) -> None:
        """teacher <- alpha teacher + (1 - alpha) student, parameters only (DACS)."""
        alpha = min(1.0 - 1.0 / (iteration + 1), self.hparams.ema_momentum)
        for teacher_parameter, parameter in zip(self.teacher.parameters(),
                                                self.segmenter.parameters(), strict=True):
            teacher_parameter.mul_(alpha).add_(parameter.detach(), alpha=1.0 - alpha)

    # ----------------------------------------------------------------- mixing
    @torch.no_grad()
    def mixed_batch(self, source: dict, target: dict,
                    losses: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """(mixed images, mixed labels, pixel weights), one mix per source/target pair."""
        source_images, source_labels = source["image"], source["label"]
        pairs = min(source_images.shape[0], target["image"].shape[0])
        target_images = target["image"][:pairs]
        if source_images.shape[-2:] != target_images.shape[-2:]:
            raise ValueError(
                "ClassMix pastes source pixels onto target images of the same size, but the "
                f"source crops are {tuple(source_images.shape[-2:])} and the target crops "
                f"{tuple(target_images.shape[-2:])}: set data.source_augmentation.crop and "
                "data.target_augmentation.crop alike")
        size = tuple(target_images.shape[-2:])
        teacher_prob = F.softmax(upsample_logits(self.teacher(target_images)[MAIN], size).float(),
                                 dim=1)
        pseudo_labels = teacher_prob.argmax(dim=1)
        target_weight = confidence_fraction(teacher_prob, self.hparams.pseudo_confidence)
        generator = iteration_generator(self.augmentation_seed, self.global_step,
                                        self.global_rank, stream=MIX_STREAM)
        images, labels, masks = [], [], []
        for index in range(pairs):
            image, label = source_images[index], source_labels[index]
            long_tail = float(torch.rand((), generator=generator)) < self.hparams.long_tail_p
            mask = class_mix_mask(label, generator, self.ignore_index,
                                  drop=LONG_TAIL_CLASSMIX_DROP if long_tail else 0,
                                  ignore_label=self.hparams.classmix_ignore_label)
            if long_tail:
                image, label, mask = self.paste_long_tail(image, label, mask, generator)
            images.append(paste(mask, image, target_images[index]))
            labels.append(paste(mask, label, pseudo_labels[index]))
            masks.append(mask)
        source_mask = torch.stack(masks)
        pixels = input_to_unit_rgb(torch.stack(images), self.input_normalization)
        mixed = unit_rgb_to_input(self.mix_photometric(pixels, generator),
                                  self.input_normalization).to(source_images.dtype)
        losses["mix_target_weight"] = target_weight
        losses["mix_source_share"] = source_mask.float().mean()
        return mixed, torch.stack(labels), mixed_pixel_weights(source_mask, target_weight)

    # ----------------------------------------------------------------- iteration
    def adaptation_step(self, source: dict, target: dict) -> dict[str, torch.Tensor]:
        if self.hparams.lambda_ufl > 0:
            # CIM: TUFL's iteration first (its two views share the source forward), then the
            # mix, since its long-tail draw reads the thresholds the focal loss has just updated.
            losses = super().adaptation_step(source, target)
            images, labels, pixel_weights = self.mixed_batch(source, target, losses)
            mixed_outputs = self.segmenter(images)
        else:
            # DACS: the mix needs only the teacher and explicit generators, so it is built first
            # (no number changes) and the mixed batch can share the source forward.
            statistics: dict[str, torch.Tensor] = {}
            images, labels, pixel_weights = self.mixed_batch(source, target, statistics)
            _, losses, (mixed_outputs,) = self.supervised_step(source, images)
            losses.update(statistics)
        losses["mix"] = pixel_weighted_cross_entropy(
            mixed_outputs[MAIN], labels, pixel_weights, self.loss_class_weights,
            self.ignore_index)
        self.manual_backward(self.adaptation_weight * self.hparams.lambda_mix * losses["mix"])
        return losses
