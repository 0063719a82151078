"""Training-time parts that methods are composed of, each owning its state and testable on its
own: domain discriminators, a teacher (frozen or EMA), ClassMix and long-tail pasting, TUFL's
threshold selection and two views, DAFormer's ImageNet feature distance, MIC's masked image
consistency, HRDA's detail crops, and the on-device batch augmentation they use."""

from udaseg.adaptation.block_mask import BlockMask
from udaseg.adaptation.class_mix import (
    DACS_MIX_PHOTOMETRIC,
    ClassMix,
    MixedBatch,
    PseudoLabels,
    teacher_pseudo_labels,
)
from udaseg.adaptation.detail_crops import DetailCrops
from udaseg.adaptation.discriminators import DomainDiscriminators
from udaseg.adaptation.feature_distance import ImageNetFeatureDistance
from udaseg.adaptation.long_tail import LongTailPasting
from udaseg.adaptation.masked_consistency import MaskedImageConsistency
from udaseg.adaptation.strong_augment import StrongAugmentation
from udaseg.adaptation.teacher import Teacher
from udaseg.adaptation.thresholds import ThresholdSelection
from udaseg.adaptation.two_views import TwoViews

__all__ = ["BlockMask", "ClassMix", "DACS_MIX_PHOTOMETRIC", "DetailCrops", "DomainDiscriminators",
           "ImageNetFeatureDistance", "LongTailPasting", "MaskedImageConsistency", "MixedBatch",
           "PseudoLabels",
           "StrongAugmentation", "Teacher", "ThresholdSelection", "TwoViews",
           "teacher_pseudo_labels"]
