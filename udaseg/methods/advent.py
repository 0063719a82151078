"""ADVENT (Vu et al., CVPR 2019): direct entropy minimisation (MinEnt) and adversarial entropy
alignment (AdvEnt), multi-level, following the official iteration order.

Official-code choices (docs/methods/advent.md):
- BN statistics: the official loop keeps BN in train mode (batch statistics); `bn_stats="batch"`
  (the default) reproduces it.
- Duplicate parameters: the official 1x group lists most backbone tensors several times, so
  their SGD update is applied up to 4 times per step. Not reproduced: each parameter is updated
  once; raise `optim.lr` if you need to match the effective backbone step size.
"""

from __future__ import annotations

from typing import Optional

import torch

from udaseg.adaptation.masked_consistency import MaskedImageConsistency, masked_consistency_teacher
from udaseg.losses import entropy_loss, entropy_map, level_probabilities
from udaseg.methods.adversarial import OutputSpaceAdversarial
from udaseg.methods.base import UDAMethod


class MinEnt(UDAMethod):
    """Source cross-entropy plus the entropy of target predictions, one SGD step.

    `L = CE_main + aux_weight*CE_aux + lambda_ent_main*Ent_main + lambda_ent_aux*Ent_aux`.

    Args:
        lambda_ent_main / lambda_ent_aux: entropy weights (paper: 1e-3 and 2e-4).
        mic: MIC's masked image consistency, with an EMA teacher of its own (`self.teacher`)
            for the pseudo-labels; None (default) leaves it out.
        **kwargs: `UDAMethod` arguments.
    """

    progress_losses = ("seg", "ent_main", "masked")

    def __init__(self, lambda_ent_main: float = 1e-3, lambda_ent_aux: float = 2e-4,
                 mic: Optional[MaskedImageConsistency] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.mic, self.teacher = masked_consistency_teacher(mic, self.segmenter)

    def adaptation_step(self, source: dict, target: dict) -> dict[str, torch.Tensor]:
        _, losses, (target_outputs,) = self.supervised_step(source, target["image"])
        probabilities = level_probabilities(target_outputs, tuple(target["image"].shape[-2:]))
        entropy_total = 0.0
        for level, probability in probabilities.items():
            losses[f"ent_{level}"] = entropy_loss(probability)
            entropy_total = (entropy_total
                             + self.hparams[f"lambda_ent_{level}"] * losses[f"ent_{level}"])
        self.manual_backward(self.adaptation_weight * entropy_total)
        if self.mic is not None:
            losses.update(self.teacher_masked_consistency_step(source, target))
        return losses


class AdvEnt(OutputSpaceAdversarial):
    """Adversarial alignment of target entropy maps with source ones, one D per level.

    The iteration of `OutputSpaceAdversarial` (the official ADVENT order) with the weighted
    self-information map `I = entropy_map(p)` as the discriminators' input:
    `lambda_adv_main*bce(D_main(I_t_main), source) + lambda_adv_aux*bce(D_aux(I_t_aux), source)`.

    Args:
        lambda_adv_main / lambda_adv_aux: adversarial weights (paper: 1e-3 and 2e-4).
        **kwargs: `OutputSpaceAdversarial` arguments.
    """

    def discriminator_input(self, probability: torch.Tensor) -> torch.Tensor:
        return entropy_map(probability)
