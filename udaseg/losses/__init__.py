"""Loss functions, all pure: tensors in, scalar (or map) out, no module state.

Shapes: logits `z` are (N, C, H, W), `p = softmax(z, dim=1)`, labels (N, H, W) with ignore 255.
Each docstring gives the formula and the paper it comes from; one module per paper.
"""

from udaseg.losses.advent import bce_with_constant, entropy_loss, entropy_map
from udaseg.losses.clan import (
    focal_loss,
    local_alignment_map,
    weight_discrepancy_loss,
    weighted_bce_with_constant,
)
from udaseg.losses.common import level_probabilities, segmentation_cross_entropy, upsample_logits
from udaseg.losses.conservative import (
    conservative_loss,
    conservative_loss_published,
    conservative_weight,
)
from udaseg.losses.consistency import (
    adaptive_thresholds,
    class_balance_weights,
    class_weighted_cross_entropy,
    confidence_selection,
    unsupervised_focal_loss,
)
from udaseg.losses.feature_distance import downscale_label_ratio, masked_feature_distance
from udaseg.losses.hrda import MultiResolutionLoss, multi_resolution_loss
from udaseg.losses.maxsquare import iw_maxsquare_loss, maxsquare_loss, self_produced_guidance
from udaseg.losses.mixing import (
    confidence_fraction,
    mixed_pixel_weights,
    pixel_weighted_cross_entropy,
)

__all__ = [
    "MultiResolutionLoss",
    "adaptive_thresholds",
    "bce_with_constant",
    "class_balance_weights",
    "class_weighted_cross_entropy",
    "confidence_fraction",
    "confidence_selection",
    "conservative_loss",
    "conservative_loss_published",
    "conservative_weight",
    "downscale_label_ratio",
    "entropy_loss",
    "entropy_map",
    "focal_loss",
    "iw_maxsquare_loss",
    "level_probabilities",
    "local_alignment_map",
    "masked_feature_distance",
    "maxsquare_loss",
    "mixed_pixel_weights",
    "multi_resolution_loss",
    "pixel_weighted_cross_entropy",
    "segmentation_cross_entropy",
    "self_produced_guidance",
    "unsupervised_focal_loss",
    "upsample_logits",
    "weight_discrepancy_loss",
    "weighted_bce_with_constant",
]
