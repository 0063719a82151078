"""Segmentation models: DeepLabV2 on a dilated ResNet, and loading their weights from disk."""

from udaseg.models.deeplabv2 import ClassifierASPP, DeepLabV2, SegOutput, seg_output_size
from udaseg.models.discriminator import FCDiscriminator
from udaseg.models.dual_classifier import DualClassifierDeepLab, DualOutput
from udaseg.models.resnet import ResNetBackbone
from udaseg.models.weights import (
    WeightsError,
    load_imagenet_init,
    load_segmenter_checkpoint,
    sha256_of,
)

__all__ = [
    "ClassifierASPP",
    "DeepLabV2",
    "DualClassifierDeepLab",
    "DualOutput",
    "FCDiscriminator",
    "ResNetBackbone",
    "SegOutput",
    "WeightsError",
    "load_imagenet_init",
    "load_segmenter_checkpoint",
    "seg_output_size",
    "sha256_of",
]
