"""The shared generator/discriminator mechanism of output-space adversarial methods.

AdvEnt, CLAN and Conservative Loss all train one discriminator per prediction level to tell
source from target maps, while the segmenter learns to make target maps look like source ones.
This class owns that pattern, so a method only says which maps the discriminators see:

1. `fool_discriminator(level, target_map)`: generator-side loss (BCE against the *source*
   label) with the discriminator frozen, so its parameters receive no gradient.
2. `train_discriminators(source_maps, target_maps)`: BCE/2 on detached source maps (label 0)
   and detached target maps (label 1), each through `manual_backward` (AMP-safe); on the
   fused fast path both maps go through the discriminator in one batch (it has no layer that
   mixes images, so this is exact).

Discriminators are stepped after the segmenter by the base loop, each with its own Adam and the
same poly schedule (see `UDAMethod.configure_optimizers`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from udaseg.losses import bce_with_constant
from udaseg.methods.base import UDAMethod, level_probabilities
from udaseg.methods.fast_path import paired_forward
from udaseg.models import AUX, MAIN, FCDiscriminator, SegmenterOutput

SOURCE_LABEL = 0.0
TARGET_LABEL = 1.0


class AdversarialMethod(UDAMethod):
    """Base of methods with discriminators; subclasses implement `adaptation_step`.

    Args:
        discriminator_width: channels of the first discriminator conv (64 officially).
        **kwargs: `UDAMethod` arguments.
    """

    def __init__(self, discriminator_width: int = 64, **kwargs) -> None:
        super().__init__(**kwargs)

    def discriminator_levels(self) -> Sequence[str]:
        """Prediction levels that get a discriminator: "main", and "aux" if the segmenter has
        it; subclasses narrow it (CLAN: "main" only)."""
        return [level for level in (MAIN, AUX) if level in self.segmenter.heads]

    def build_discriminators(self) -> nn.ModuleDict:
        width = self.hparams.discriminator_width
        return nn.ModuleDict({level: FCDiscriminator(self.num_classes, width)
                              for level in self.discriminator_levels()})

    @contextmanager
    def frozen_discriminators(self) -> Iterator[None]:
        """Discriminator parameters take no gradient inside the block (the generator step)."""
        parameters = list(self.discriminators.parameters())
        for parameter in parameters:
            parameter.requires_grad_(False)
        try:
            yield
        finally:
            for parameter in parameters:
                parameter.requires_grad_(True)

    def fool_discriminator(self, level: str, target_map: torch.Tensor) -> torch.Tensor:
        """BCE pushing the discriminator's verdict on a target map towards "source".

        Call inside `frozen_discriminators()`; the gradient flows into the segmenter only.
        """
        return bce_with_constant(self.discriminators[level](target_map), SOURCE_LABEL)

    def train_discriminators(self, source_maps: Mapping[str, torch.Tensor],
                             target_maps: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One discriminator update per level on detached maps; returns the losses for logging."""
        losses = {}
        for level, discriminator in self.discriminators.items():
            source_logits, target_logits = paired_forward(
                discriminator, source_maps[level].detach(), target_maps[level].detach(),
                fused=self.fast_path.fused_forward)
            source_loss = bce_with_constant(source_logits, SOURCE_LABEL) / 2
            self.manual_backward(source_loss)
            target_loss = bce_with_constant(target_logits, TARGET_LABEL) / 2
            self.manual_backward(target_loss)
            losses[f"disc_{level}"] = source_loss.detach() + target_loss.detach()
        return losses


class OutputSpaceAdversarial(AdversarialMethod):
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
        **kwargs: `AdversarialMethod` arguments.
    """

    progress_losses = ("seg", "adv_main", "disc_main")

    def __init__(self, lambda_adv_main: float = 1e-3, lambda_adv_aux: float = 2e-4,
                 **kwargs) -> None:
        super().__init__(**kwargs)

    def discriminator_input(self, probability: torch.Tensor) -> torch.Tensor:
        """The map a discriminator sees, from a (N, C, H, W) softmax; the softmax itself here."""
        return probability

    def level_maps(self, outputs: SegmenterOutput,
                   size: tuple[int, int]) -> dict[str, torch.Tensor]:
        return {level: self.discriminator_input(probability)
                for level, probability in level_probabilities(outputs, size).items()}

    def adaptation_step(self, source: dict, target: dict) -> dict[str, torch.Tensor]:
        with self.frozen_discriminators():
            source_outputs, losses, (target_outputs,) = self.supervised_step(source,
                                                                             target["image"])
            target_maps = self.level_maps(target_outputs, tuple(target["image"].shape[-2:]))
            adversarial_total = 0.0
            for level in self.discriminators:
                losses[f"adv_{level}"] = self.fool_discriminator(level, target_maps[level])
                weight = self.hparams[f"lambda_adv_{level}"]
                adversarial_total = adversarial_total + weight * losses[f"adv_{level}"]
            self.manual_backward(self.adaptation_weight * adversarial_total)
        with torch.no_grad():  # the discriminators see detached maps only
            source_maps = self.level_maps(source_outputs, tuple(source["image"].shape[-2:]))
        losses.update(self.train_discriminators(source_maps, target_maps))
        return losses
