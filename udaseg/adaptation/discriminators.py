"""Domain discriminators on segmentation maps: one per prediction level, each with its own Adam,
frozen while the segmenter learns to fool them, updated on detached maps.

The output-space adversarial scheme of AdaptSegNet (Tsai et al., CVPR 2018), ADVENT (Vu et al.,
CVPR 2019) and CLAN (Luo et al., CVPR 2019): a discriminator D_l tells source maps (label 0) from
target maps (label 1); the segmenter is trained so that D_l takes target maps for source ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from udaseg.losses import bce_with_constant
from udaseg.models import FCDiscriminator
from udaseg.models.fused_forward import paired_forward

SOURCE_LABEL = 0.0
TARGET_LABEL = 1.0


class DomainDiscriminators(nn.ModuleDict):
    """`{level: D_level}`, a fully convolutional discriminator per prediction level.

    A ModuleDict, so a method's state dict holds `discriminators.<level>.*`.

    Args:
        levels: the prediction levels that get a discriminator (e.g. ["main", "aux"]).
        num_classes: channels of the maps they see.
        width: channels of the first convolution (64 officially).
    """

    def __init__(self, levels: Sequence[str] = (), num_classes: int = 19, width: int = 64) -> None:
        super().__init__({level: FCDiscriminator(num_classes, width) for level in levels})

    def optimizers(self, lr: float, betas: tuple[float, float]) -> list[torch.optim.Optimizer]:
        """One Adam per discriminator, in level order; `base_lr` is what the poly schedule
        decays from."""
        return [torch.optim.Adam([{"params": discriminator.parameters(), "base_lr": lr}],
                                 lr=lr, betas=betas)
                for discriminator in self.values()]

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Inside the block the discriminators take no gradient (the segmenter's step), so the
        generator loss trains the segmenter only."""
        parameters = list(self.parameters())
        for parameter in parameters:
            parameter.requires_grad_(False)
        try:
            yield
        finally:
            for parameter in parameters:
                parameter.requires_grad_(True)

    def fool(self, level: str, target_map: torch.Tensor) -> torch.Tensor:
        """`bce(D_level(target_map), source)`: the generator's adversarial loss, a scalar.
        Call inside `frozen()`."""
        return bce_with_constant(self[level](target_map), SOURCE_LABEL)

    def train_on(self, source_maps: Mapping[str, torch.Tensor],
               target_maps: Mapping[str, torch.Tensor],
               backward: Callable[[torch.Tensor], None], fused: bool = False
               ) -> dict[str, torch.Tensor]:
        """Each discriminator's loss on detached maps, `bce(D(m_s), source) / 2` and
        `bce(D(m_t), target) / 2`, each passed to `backward` (the method's AMP-aware
        `manual_backward`) as soon as it is computed, source first (ADVENT's order).

        `fused`: source and target maps go through D as one batch (exact: no layer of D mixes
        images). Returns `{"disc_<level>": source + target loss}` for logging.
        """
        losses = {}
        for level, discriminator in self.items():
            source_logits, target_logits = paired_forward(
                discriminator, source_maps[level].detach(), target_maps[level].detach(),
                fused=fused)
            source_loss = bce_with_constant(source_logits, SOURCE_LABEL) / 2
            backward(source_loss)
            target_loss = bce_with_constant(target_logits, TARGET_LABEL) / 2
            backward(target_loss)
            losses[f"disc_{level}"] = source_loss.detach() + target_loss.detach()
        return losses
