"""Multi-level output-space adversarial training (AdaptSegNet, Tsai et al., CVPR 2018, in
ADVENT's iteration order): one discriminator per prediction level (`DomainDiscriminators`) tells
source from target maps, while the segmenter learns to make target maps look like source ones.
AdvEnt feeds entropy maps; Conservative Loss replaces the source loss.
"""

from __future__ import annotations

from typing import Optional

import torch

from udaseg.adaptation.discriminators import DomainDiscriminators
from udaseg.adaptation.masked_consistency import MaskedImageConsistency, masked_consistency_teacher
from udaseg.losses import level_probabilities
from udaseg.methods.base import UDAMethod
from udaseg.models import AUX, MAIN, SegmenterOutput


class OutputSpaceAdversarial(UDAMethod):
    """Multi-level output-space adversarial training (AdaptSegNet's scheme; ADVENT's order).

    One iteration: with the discriminators frozen, the source loss (`supervised_loss`) backward,
    then `sum_level lambda_adv[level] * bce(D_level(m_t[level]), source)` backward, where
    `m = discriminator_input(softmax(upsampled logits))`; then each discriminator on detached
    source maps (label source) and detached target maps (label target), halves, backward;
    finally the segmenter and the discriminators step (base loop).

    Used directly, `m` is the softmax map: AdaptSegNet (Tsai et al., CVPR 2018). AdvEnt feeds
    entropy maps; Conservative Loss replaces the source loss.

    Args:
        lambda_adv_main / lambda_adv_aux: adversarial weights (1e-3 and 2e-4 in AdaptSegNet and
            ADVENT).
        discriminator_width: channels of the first discriminator conv (64 officially).
        mic: MIC's masked image consistency after the adversarial loss (discriminators
            untouched), with an EMA teacher of its own (`self.teacher`); None (default) leaves
            it out.
        **kwargs: `UDAMethod` arguments.
    """

    progress_losses = ("seg", "adv_main", "disc_main", "masked")

    def __init__(self, lambda_adv_main: float = 1e-3, lambda_adv_aux: float = 2e-4,
                 discriminator_width: int = 64,
                 mic: Optional[MaskedImageConsistency] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        levels = [level for level in (MAIN, AUX) if level in self.segmenter.heads]
        self.discriminators = DomainDiscriminators(levels, self.num_classes, discriminator_width)
        self.mic, self.teacher = masked_consistency_teacher(mic, self.segmenter)

    def discriminator_input(self, probability: torch.Tensor) -> torch.Tensor:
        """The map a discriminator sees, from a (N, C, H, W) softmax; the softmax itself here."""
        return probability

    def level_maps(self, outputs: SegmenterOutput,
                   size: tuple[int, int]) -> dict[str, torch.Tensor]:
        return {level: self.discriminator_input(probability)
                for level, probability in level_probabilities(outputs, size).items()}

    def adaptation_step(self, source: dict, target: dict) -> dict[str, torch.Tensor]:
        with self.discriminators.frozen():
            source_outputs, losses, (target_outputs,) = self.supervised_step(source,
                                                                             target["image"])
            target_maps = self.level_maps(target_outputs, tuple(target["image"].shape[-2:]))
            adversarial_total = 0.0
            for level in self.discriminators:
                losses[f"adv_{level}"] = self.discriminators.fool(level, target_maps[level])
                weight = self.hparams[f"lambda_adv_{level}"]
                adversarial_total = adversarial_total + weight * losses[f"adv_{level}"]
            self.manual_backward(self.adaptation_weight * adversarial_total)
            if self.mic is not None:
                losses.update(self.teacher_masked_consistency_step(source, target))
        with torch.no_grad():  # the discriminators see detached maps only
            source_maps = self.level_maps(source_outputs, tuple(source["image"].shape[-2:]))
        losses.update(self.discriminators.train_on(source_maps, target_maps, self.manual_backward,
                                                 fused=self.fast_path.fused_forward))
        return losses
