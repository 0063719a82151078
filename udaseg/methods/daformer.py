"""DAFormer (Hoyer, Dai, Van Gool, "DAFormer: Improving Network Architectures and Training
Strategies for Domain-Adaptive Semantic Segmentation", CVPR 2022; official code lhoyer/DAFormer).

DACS's self-training (an EMA teacher labels the target batch, ClassMix pastes source classes onto
it, the student trains on the source batch and the mixed batch) with DAFormer's training
strategies:

- an ImageNet feature distance on the source batch (`udaseg.adaptation.ImageNetFeatureDistance`):
  the student's last encoder stage is kept near a frozen copy of its ImageNet encoder on the
  pixels of thing classes, `L = L_sup + lambda_fd * L_fd + L_mix`;
- rare class sampling of source images (the data module's `rare_class_sampling`);
- AdamW with a linear warm-up multiplied onto poly decay (the `optim` default here);
- the official self-training details: EMA alpha `min(1 - 1/(t + 1), 0.999)`, ClassMix classes
  from every label of the batch, the strong augmentation of the mixed image, no pseudo-label
  weight on the top 15 and bottom 120 rows of a target crop (rectification artefacts and the ego
  car), the cross-entropy averaged over all pixels (mmseg's reduction).

The network is an `udaseg.models.EncoderDecoder` (MiT-B5 + DAFormer head by default). The feature
distance reads the encoder's stages, so with it the segmenter must have `encode`/`decode`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from pytorch_lightning.utilities import rank_zero_warn

from udaseg.adaptation.batch_augment import ClassMixIgnoreLabel
from udaseg.adaptation.class_mix import ClassChoice
from udaseg.adaptation.detail_crops import DETAIL_CROP_STREAM, DetailCrops
from udaseg.adaptation.feature_distance import ImageNetFeatureDistance
from udaseg.adaptation.masked_consistency import MaskedImageConsistency
from udaseg.adaptation.strong_augment import StrongAugmentation
from udaseg.adaptation.teacher import TeacherBN
from udaseg.methods.dacs import DACS
from udaseg.methods.optim import OptimConfig
from udaseg.models import (
    HRDA,
    EncoderDecoder,
    SegmenterFactory,
    build_segmenter,
    initialize_segmenter,
)

#: DAFormer's optimisation (official `adamw.py` + `poly10warm.py`): AdamW 6e-5, weight decay
#: 0.01 except on the encoder's LayerNorms, the head at 10x the rate, poly(1) to 0 with a linear
#: warm-up over 1500 iterations from 1e-6 x the rate, multiplied onto the poly value.
DAFORMER_OPTIM = OptimConfig(optimizer="adamw", lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01,
                             norm_weight_decay=0.0, classifier_lr_mult=10.0, poly_power=1.0,
                             warmup_iters=1500, warmup_ratio=1e-6, warmup_mode="poly_factor")

@dataclass(frozen=True)
class FeatureDistance:
    """Settings of the ImageNet feature distance (`ImageNetFeatureDistance`).

    Args:
        weight: lambda_fd (0.005).
        classes: the classes whose source pixels count; DAFormer's are the Cityscapes "thing"
            classes (traffic light, traffic sign, person ... bicycle: 6, 7, 11-18), whose
            ImageNet features are worth keeping. None = every pixel.
        min_ratio: a feature pixel counts when one class covers this share of its label block.
    """

    weight: float = 0.005
    classes: Optional[tuple[int, ...]] = (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)
    min_ratio: float = 0.75


#: DAFormer's feature distance (lambda 0.005 on the thing classes).
DAFORMER_FEATURE_DISTANCE = FeatureDistance()
#: DAFormer's strong augmentation of the mixed image.
DAFORMER_MIX_PHOTOMETRIC = StrongAugmentation()

torch.serialization.add_safe_globals([FeatureDistance, StrongAugmentation])


class DAFormer(DACS):
    """`L = L_sup + lambda_fd * L_fd + adaptation_weight * lambda_mix * L_mix`, EMA teacher.

    Args:
        lambda_mix: weight of the mixed-image loss (1).
        ema_momentum: the teacher's largest EMA alpha (0.999).
        teacher_bn: "train": the official teacher, never switched to evaluation: its BN layers
            normalise with batch statistics, only dropout and drop-path are off; "eval": the
            usual mean teacher (running statistics).
        pseudo_confidence: teacher confidence that counts as sure in the target weight (0.968).
        pseudo_weight_crop: (top, bottom) rows of a target crop whose pseudo-labels get weight
            0 (15, 120 for 512-pixel crops of Cityscapes at 1024x512); pasted source pixels
            keep weight 1.
        classmix_ignore_label, class_choice: ClassMix's draw (official: "candidate" and
            "per_batch", the classes of every source label of the batch).
        mix_photometric: the strong augmentation of the mixed image (official: colour jitter of
            strength 0.2 in 80 % of the batches, a Gaussian blur in 50 %).
        feature_distance: the ImageNet feature distance; None switches it off.
        evaluate: the network validation, test and predict use: "student" (official) or
            "teacher" (the EMA).
        mic: MIC's masked image consistency (`udaseg.adaptation.MaskedImageConsistency`;
            MIC(DAFormer) takes 32-pixel blocks at DAFormer's half resolution); None (default)
            leaves it out.
        segmenter, optim, loss_reduction, **kwargs: `UDAMethod` arguments, with DAFormer's
            network, optimisation and mmseg's loss reduction as defaults.
    """

    progress_losses = ("seg", "mix", "feature_distance", "masked")
    # Officially the teacher follows at the start of the next iteration, with that iteration's
    # alpha: after step 0 it takes half of the student, not all of it (DACS).
    teacher_alpha_offset = 1
    trains_multi_resolution = True

    def __init__(self, lambda_mix: float = 1.0, ema_momentum: float = 0.999,
                 teacher_bn: TeacherBN = "train", pseudo_confidence: float = 0.968,
                 pseudo_weight_crop: tuple[int, int] = (15, 120),
                 classmix_ignore_label: ClassMixIgnoreLabel = "candidate",
                 class_choice: ClassChoice = "per_batch",
                 mix_photometric: StrongAugmentation = DAFORMER_MIX_PHOTOMETRIC,
                 feature_distance: Optional[FeatureDistance] = DAFORMER_FEATURE_DISTANCE,
                 evaluate: Literal["student", "teacher"] = "student",
                 mic: Optional[MaskedImageConsistency] = None,
                 segmenter: SegmenterFactory = EncoderDecoder,
                 optim: OptimConfig = DAFORMER_OPTIM,
                 loss_reduction: Literal["labelled", "all_pixels"] = "all_pixels",
                 **kwargs) -> None:
        if isinstance(mix_photometric, dict):
            mix_photometric = StrongAugmentation(**mix_photometric)
        super().__init__(lambda_mix=lambda_mix, ema_momentum=ema_momentum, teacher_bn=teacher_bn,
                         pseudo_confidence=pseudo_confidence,
                         classmix_ignore_label=classmix_ignore_label, class_choice=class_choice,
                         mix_photometric=mix_photometric, mic=mic, segmenter=segmenter,
                         optim=optim,
                         loss_reduction=loss_reduction, **kwargs)
        if evaluate not in ("student", "teacher"):
            raise ValueError(f"model.init_args.evaluate must be 'student' or 'teacher', "
                             f"got {evaluate!r}")
        self.feature_distance: Optional[ImageNetFeatureDistance] = None
        # HRDA's crops of the current iteration (a multi-resolution segmenter only).
        self.detail_crops: Optional[DetailCrops] = None
        if isinstance(self.segmenter, HRDA) and self.fast_path.fused_forward:
            raise ValueError("HRDA's training forwards take a detail crop each, which "
                             "fast_path.fused_forward does not: switch it off")
        if feature_distance is not None:
            settings = (FeatureDistance(**feature_distance) if isinstance(feature_distance, dict)
                        else feature_distance)
            try:
                self.feature_distance = ImageNetFeatureDistance(
                    self.imagenet_encoder(), settings.weight, settings.classes,
                    settings.min_ratio, self.num_classes, self.ignore_index)
            except ValueError as error:
                raise ValueError(f"model.init_args.feature_distance: {error}") from None
            if not self.weights_config.pretrained and not self.weights_config.init_checkpoint:
                rank_zero_warn("DAFormer's feature distance keeps the encoder near its initial "
                               "weights, but model.init_args.weights loads none (random "
                               "initialisation): set weights.pretrained to ImageNet weights")

    def imagenet_encoder(self) -> torch.nn.Module:
        """The encoder with the initial (ImageNet) weights, which the feature distance copies."""
        missing = [name for name in ("encoder", "encode", "decode")
                   if not hasattr(self.segmenter, name)]
        if missing:
            raise ValueError(
                f"model.init_args.feature_distance reads the encoder's stages, but "
                f"{type(self.segmenter).__name__} has no {', '.join(missing)}: use "
                "udaseg.models.EncoderDecoder as model.init_args.segmenter or set "
                "model.init_args.feature_distance: null")
        if self.fast_path.fused_forward:
            raise ValueError("model.init_args.feature_distance needs the source forward's "
                             "encoder stages, which fast_path.fused_forward does not keep: "
                             "switch one of them off")
        if not self.weights_config.init_checkpoint:
            return self.segmenter.encoder
        # A run that starts from trained weights (e.g. a source-only model) still keeps its
        # features near ImageNet's, as officially, where the copy is built from the ImageNet file.
        imagenet = build_segmenter(self.hparams.segmenter, self.num_classes)
        initialize_segmenter(imagenet, dataclasses.replace(self.weights_config,
                                                           init_checkpoint=None))
        return imagenet.encoder

    def adaptation_step(self, source: dict, target: dict) -> dict[str, torch.Tensor]:
        self.detail_crops = DetailCrops(
            self.segmenter, self.iteration_generator(DETAIL_CROP_STREAM), self.ignore_index,
            self.hparams.loss_reduction) if isinstance(self.segmenter, HRDA) else None
        losses = self.source_step(source)
        # The official order: the source graph is freed before the teacher and the mix run.
        target_images, pseudo, mixed, target_weights = self.weighted_mix(source, target)
        losses.update(mixed.statistics())
        losses["mix"] = self.weighted_loss(mixed.images, mixed.labels, mixed.pixel_weights)
        self.manual_backward(self.adaptation_weight * self.hparams.lambda_mix * losses["mix"])
        if self.mic is not None:
            # MIC weighs the pseudo-labels as the mix does (crop and margins included).
            losses.update(self.masked_consistency_step(source, target_images, pseudo.labels,
                                                       target_weights))
        return losses

    def pseudo_label_crop(self) -> tuple[int, int]:
        return tuple(self.hparams.pseudo_weight_crop)

    def source_step(self, source: dict) -> dict[str, torch.Tensor]:
        """The source loss (HRDA's on a multi-resolution segmenter) and the feature distance
        (on HRDA's context view), one backward."""
        images, labels = source["image"], source["label"]
        if self.detail_crops is not None:
            parts, output = self.detail_crops.loss(images, labels)
            losses = {"seg": parts.total, "seg_fused": parts.fused, "seg_detail": parts.detail}
            features = output.context_features
        elif self.feature_distance is None:
            return self.supervised_step(source)[1]
        else:
            # One source forward gives both the logits and the stages the distance reads.
            features = self.segmenter.encode(images)
            losses = self.supervised_loss(
                self.segmenter.decode(features, tuple(images.shape[-2:])), labels)
        total = losses["seg"]
        if self.feature_distance is not None:
            # Under HRDA the student's features are the context view's: so are the ImageNet's.
            feature_images = images if self.detail_crops is None else \
                self.segmenter.context(images)
            losses["feature_distance"] = self.feature_distance(feature_images, features[-1],
                                                               labels)
            total = total + losses["feature_distance"]
        self.manual_backward(total)
        return losses

    def weighted_loss(self, images: torch.Tensor, labels: torch.Tensor,
                      pixel_weights: torch.Tensor) -> torch.Tensor:
        if self.detail_crops is None:
            return super().weighted_loss(images, labels, pixel_weights)
        # Under HRDA every labelled batch (mixed, masked) trains with its own detail crop.
        return self.detail_crops.loss(images, labels, pixel_weights)[0].total

    def evaluation_network(self) -> torch.nn.Module:
        return self.teacher if self.hparams.evaluate == "teacher" else self.segmenter
