"""ADVENT (Vu et al., CVPR 2019): direct entropy minimisation (MinEnt) and adversarial entropy
alignment (AdvEnt), multi-level, following the official iteration order.

Official-code choices (see README "Official quirks"):
- BN statistics: the official loop keeps BN in train mode (batch statistics); `bn_stats="batch"`
  (the default) reproduces it.
- Duplicate parameters: the official 1x group lists most backbone tensors several times, so
  their SGD update is applied up to 4 times per step. Not reproduced: each parameter is updated
  once; raise `optim.lr` if you need to match the effective backbone step size.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from udaseg.losses import entropy_loss, entropy_map, upsample_logits
from udaseg.methods.adversarial import AdversarialMethod
from udaseg.methods.base import UDAMethod
from udaseg.models import SegOutput


def level_probabilities(outputs: SegOutput, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Softmax of each level's logits, upsampled to the input size first (official order)."""
    levels = {"main": outputs.main, "aux": outputs.aux}
    return {level: F.softmax(upsample_logits(logits, size), dim=1)
            for level, logits in levels.items() if logits is not None}


class MinEnt(UDAMethod):
    """Source cross-entropy plus the entropy of target predictions, one SGD step.

    `L = CE_main + aux_weight*CE_aux + lambda_ent_main*Ent_main + lambda_ent_aux*Ent_aux`.

    Args:
        lambda_ent_main / lambda_ent_aux: entropy weights (paper: 1e-3 and 2e-4).
        **kwargs: `UDAMethod` arguments.
    """

    def __init__(self, lambda_ent_main: float = 1e-3, lambda_ent_aux: float = 2e-4,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.entropy_weights = {"main": lambda_ent_main, "aux": lambda_ent_aux}

    def adaptation_step(self, source: dict, target: Optional[dict]) -> dict[str, torch.Tensor]:
        if target is None:
            raise ValueError("MinEnt needs a target stream: set data.target")
        losses = self.supervised_loss(self.segmenter(source["image"]), source["label"])
        self.manual_backward(losses["seg"])
        target_outputs = self.segmenter(target["image"])
        probabilities = level_probabilities(target_outputs, tuple(target["image"].shape[-2:]))
        entropy_total = 0.0
        for level, probability in probabilities.items():
            losses[f"ent_{level}"] = entropy_loss(probability)
            entropy_total = entropy_total + self.entropy_weights[level] * losses[f"ent_{level}"]
        self.manual_backward(self.adaptation_weight * entropy_total)
        return losses


class AdvEnt(AdversarialMethod):
    """Adversarial alignment of target entropy maps with source ones, one D per level.

    Iteration (official order): source CE backward; with D frozen, target adversarial loss
    `lambda_adv_main*bce(D_main(I_t_main), source) + lambda_adv_aux*bce(D_aux(I_t_aux), source)`
    backward; then each D on detached source maps (label source) and detached target maps
    (label target), halves, backward; finally the segmenter and the discriminators step.

    Args:
        lambda_adv_main / lambda_adv_aux: adversarial weights (paper: 1e-3 and 2e-4).
        **kwargs: `AdversarialMethod` arguments.
    """

    def __init__(self, lambda_adv_main: float = 1e-3, lambda_adv_aux: float = 2e-4,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.adversarial_weights = {"main": lambda_adv_main, "aux": lambda_adv_aux}

    def adaptation_step(self, source: dict, target: Optional[dict]) -> dict[str, torch.Tensor]:
        if target is None:
            raise ValueError("AdvEnt needs a target stream: set data.target")
        with self.frozen_discriminators():
            source_outputs = self.segmenter(source["image"])
            losses = self.supervised_loss(source_outputs, source["label"])
            self.manual_backward(losses["seg"])
            target_outputs = self.segmenter(target["image"])
            target_maps = {level: entropy_map(probability) for level, probability in
                           level_probabilities(target_outputs,
                                               tuple(target["image"].shape[-2:])).items()}
            adversarial_total = 0.0
            for level in self.discriminators:
                losses[f"adv_{level}"] = self.fool_discriminator(level, target_maps[level])
                adversarial_total = (adversarial_total
                                     + self.adversarial_weights[level] * losses[f"adv_{level}"])
            self.manual_backward(self.adaptation_weight * adversarial_total)
        with torch.no_grad():  # the discriminators see detached maps only
            source_maps = {level: entropy_map(probability) for level, probability in
                           level_probabilities(source_outputs,
                                               tuple(source["image"].shape[-2:])).items()}
        losses.update(self.train_discriminators(source_maps, target_maps))
        return losses
