"""Segmentation networks (the `Segmenter` protocol), the discriminator, and weight loading."""

from udaseg.models.bisenet import BiSeNet
from udaseg.models.deeplabv2 import ClassifierASPP, DeepLabV2, seg_output_size
from udaseg.models.discriminator import FCDiscriminator
from udaseg.models.dual_classifier import DualClassifierDeepLab
from udaseg.models.efficientnet_lite import (
    EfficientNetLiteDeepLab,
    EfficientNetLiteDualClassifier,
    EfficientNetLiteEncoder,
)
from udaseg.models.encoder_decoder import EncoderDecoder
from udaseg.models.heads import DAFormerHead, SegFormerHead
from udaseg.models.hrda import HRDA, MultiResolutionOutput
from udaseg.models.mit import MixTransformer
from udaseg.models.resnet import ResNetBackbone
from udaseg.models.segmenter import (
    AUX,
    MAIN,
    Segmenter,
    SegmenterFactory,
    SegmenterOutput,
    build_segmenter,
    segmenter_spec,
)
from udaseg.models.weights import (
    SegmenterWeights,
    WeightsError,
    initialize_segmenter,
    load_imagenet_init,
    load_segmenter_checkpoint,
    sha256_of,
)

__all__ = [
    "AUX",
    "BiSeNet",
    "ClassifierASPP",
    "DAFormerHead",
    "DeepLabV2",
    "DualClassifierDeepLab",
    "EfficientNetLiteDeepLab",
    "EfficientNetLiteDualClassifier",
    "EfficientNetLiteEncoder",
    "EncoderDecoder",
    "FCDiscriminator",
    "HRDA",
    "MAIN",
    "MixTransformer",
    "MultiResolutionOutput",
    "ResNetBackbone",
    "SegFormerHead",
    "Segmenter",
    "SegmenterFactory",
    "SegmenterOutput",
    "SegmenterWeights",
    "WeightsError",
    "build_segmenter",
    "initialize_segmenter",
    "load_imagenet_init",
    "load_segmenter_checkpoint",
    "seg_output_size",
    "segmenter_spec",
    "sha256_of",
]
