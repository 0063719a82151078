"""Training-time parts that methods are composed of, each owning its state and testable on its
own: domain discriminators, a teacher (frozen or EMA), ClassMix and long-tail pasting, TUFL's
threshold selection and two views, and the on-device batch augmentation they use."""

from udaseg.adaptation.class_mix import (
    DACS_MIX_PHOTOMETRIC,
    ClassMix,
    MixedBatch,
    PseudoLabels,
    teacher_pseudo_labels,
)
from udaseg.adaptation.discriminators import DomainDiscriminators
from udaseg.adaptation.long_tail import LongTailPasting
from udaseg.adaptation.teacher import Teacher
from udaseg.adaptation.thresholds import ThresholdSelection
from udaseg.adaptation.two_views import TwoViews

__all__ = ["ClassMix", "DACS_MIX_PHOTOMETRIC", "DomainDiscriminators", "LongTailPasting",
           "MixedBatch", "PseudoLabels", "Teacher", "ThresholdSelection", "TwoViews",
           "teacher_pseudo_labels"]
