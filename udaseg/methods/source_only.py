"""Source-only training (and, with a labelled target set as the source, the target oracle)."""

from __future__ import annotations

from typing import Optional

import torch

from udaseg.methods.base import UDAMethod


class SourceOnly(UDAMethod):
    """Supervised cross-entropy on the source stream; any target stream is ignored.

    The lower bound every UDA method is compared with. Trained on the labelled target train set
    instead (a config change only), it is the target oracle, the upper bound.
    """

    needs_target = False
    reads_target = False

    def adaptation_step(self, source: dict, target: Optional[dict]) -> dict[str, torch.Tensor]:
        return self.supervised_step(source)[1]
