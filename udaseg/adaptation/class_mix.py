"""ClassMix across domains (Olsson et al., WACV 2021; as DACS, Tranheden et al., WACV 2021, and
TUFL's CIM use it): half of a source crop's classes pasted onto a target image, labelled with the
source label there and the teacher's pseudo-labels elsewhere, then augmented photometrically."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from udaseg.adaptation.batch_augment import (
    ClassMixIgnoreLabel,
    MixPhotometric,
    class_mix_mask,
    paste,
)
from udaseg.adaptation.long_tail import LONG_TAIL_CLASSMIX_DROP, LongTailPasting
from udaseg.adaptation.photometric import augment_input
from udaseg.losses import (
    confidence_fraction,
    mixed_pixel_weights,
    pixel_weighted_cross_entropy,
    upsample_logits,
)
from udaseg.models import MAIN

ClassChoice = Literal["per_image", "per_batch"]

#: `iteration_generator` stream of the mixing draws.
MIX_STREAM = 1

#: DACS's augmentation of the mixed image: colour jitter with p 0.8 (brightness, contrast and
#: saturation factors 0.75-1.25, hue +-0.25), Gaussian blur with p 0.5 (sigma 0.15-1.15, kernel
#: about a tenth of the side), nothing else.
DACS_MIX_PHOTOMETRIC = MixPhotometric(
    jitter_p=0.8, brightness=(0.75, 1.25), contrast=(0.75, 1.25), saturation=(0.75, 1.25),
    hue=0.25, sharpness=None, noise_std=None, blur_p=0.5, blur_sigma=(0.15, 1.15),
    blur_kernel_fraction=0.1, equalize_p=0.0)


@dataclass
class PseudoLabels:
    """A teacher's labels of a target batch: (N, H, W) argmax and the scalar share of pixels
    whose top probability reaches the confidence threshold (DACS's weight)."""

    labels: torch.Tensor
    confidence_weight: torch.Tensor


@torch.no_grad()
def teacher_pseudo_labels(teacher: torch.nn.Module, images: torch.Tensor,
                          confidence: float = 0.968) -> PseudoLabels:
    """The teacher's main-head prediction on `images` (N, 3, H, W), upsampled to their size."""
    logits = upsample_logits(teacher(images)[MAIN], tuple(images.shape[-2:]))
    probability = F.softmax(logits.float(), dim=1)
    return PseudoLabels(probability.argmax(dim=1), confidence_fraction(probability, confidence))


@dataclass
class MixedBatch:
    """(N, 3, H, W) mixed images, (N, H, W) labels, (N, H, W) pixel weights (1 on source pixels,
    the pseudo-labels' confidence weight on target pixels), (N, H, W) source masks and that
    confidence weight."""

    images: torch.Tensor
    labels: torch.Tensor
    pixel_weights: torch.Tensor
    source_mask: torch.Tensor
    confidence_weight: torch.Tensor

    def loss(self, logits: torch.Tensor, class_weights: Optional[torch.Tensor] = None,
             ignore_index: int = 255) -> torch.Tensor:
        """The mixed-image loss of the segmenter's (N, C, h, w) `logits` of `images`
        (`pixel_weighted_cross_entropy`)."""
        return pixel_weighted_cross_entropy(logits, self.labels, self.pixel_weights,
                                            class_weights, ignore_index)

    def statistics(self) -> dict[str, torch.Tensor]:
        """For logging: the target pixels' weight and the share of pasted source pixels."""
        return {"mix_target_weight": self.confidence_weight,
                "mix_source_share": self.source_mask.float().mean()}


class ClassMix:
    """Mixes each source/target pair of a batch on its own.

    Per pair, from the iteration's mixing generator: one uniform draw decides long-tail pasting
    (drawn with or without it, so the mixing draws do not depend on that setting), then the
    ClassMix mask (`class_mix_mask`), then the rare classes to paste; finally the photometric
    step of every mixed image.

    Args:
        ignore_index: the label's ignore value.
        ignore_label: "never" or "candidate" (official DACS and CIM: the ignore label is drawn
            like a class; `class_mix_mask`).
        class_choice: "per_image": half of each source label's classes (DACS, CIM);
            "per_batch": half of the classes of every source label of the batch, drawn anew for
            each image (DAFormer's official choice), so an image may paste fewer classes.
        photometric: augmentation of the mixed images, on the device, on RGB in [0, 1].
        long_tail: CIM's long-tail pasting, None for plain ClassMix.
    """

    def __init__(self, ignore_index: int = 255, ignore_label: ClassMixIgnoreLabel = "never",
                 photometric: MixPhotometric = DACS_MIX_PHOTOMETRIC,
                 long_tail: Optional[LongTailPasting] = None,
                 class_choice: ClassChoice = "per_image") -> None:
        if class_choice not in ("per_image", "per_batch"):
            raise ValueError(f"class_choice must be 'per_image' or 'per_batch', "
                             f"got {class_choice!r}")
        self.ignore_index = ignore_index
        self.ignore_label = ignore_label
        self.class_choice = class_choice
        self.photometric = photometric
        self.long_tail = long_tail

    @torch.no_grad()
    def with_teacher(self, teacher: torch.nn.Module, source: dict, target_images: torch.Tensor,
                     confidence: float, generator: torch.Generator,
                     normalization: Optional[str]) -> MixedBatch:
        """The teacher labels the first `len(source)` target images (`teacher_pseudo_labels`),
        then `source` is mixed onto them."""
        target_images = target_images[:source["image"].shape[0]]
        pseudo = teacher_pseudo_labels(teacher, target_images, confidence)
        return self(source, target_images, pseudo, generator, normalization)

    @torch.no_grad()
    def __call__(self, source: dict, target_images: torch.Tensor, pseudo: PseudoLabels,
                 generator: torch.Generator, normalization: Optional[str]) -> MixedBatch:
        """Mix `source` ("image", "label") onto the first `len(source)` target images."""
        source_images, source_labels = source["image"], source["label"]
        pairs = min(source_images.shape[0], target_images.shape[0])
        if source_images.shape[-2:] != target_images.shape[-2:]:
            raise ValueError(
                "ClassMix pastes source pixels onto target images of the same size, but the "
                f"source crops are {tuple(source_images.shape[-2:])} and the target crops "
                f"{tuple(target_images.shape[-2:])}: set data.source_augmentation.crop and "
                "data.target_augmentation.crop alike")
        candidates = source_labels if self.class_choice == "per_batch" else None
        images, labels, masks = [], [], []
        for index in range(pairs):
            image, label = source_images[index], source_labels[index]
            rare = float(torch.rand((), generator=generator))
            long_tail = self.long_tail is not None and rare < self.long_tail.probability
            mask = class_mix_mask(label, generator, self.ignore_index,
                                  drop=LONG_TAIL_CLASSMIX_DROP if long_tail else 0,
                                  ignore_label=self.ignore_label, candidates=candidates)
            if long_tail:
                image, label, mask = self.long_tail.paste(image, label, mask, generator)
            images.append(paste(mask, image, target_images[index]))
            labels.append(paste(mask, label, pseudo.labels[index]))
            masks.append(mask)
        source_mask = torch.stack(masks)
        mixed = augment_input(self.photometric, torch.stack(images), normalization, generator)
        return MixedBatch(mixed.to(source_images.dtype), torch.stack(labels),
                          mixed_pixel_weights(source_mask, pseudo.confidence_weight), source_mask,
                          pseudo.confidence_weight)
