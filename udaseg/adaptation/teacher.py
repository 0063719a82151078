"""A teacher network for self-training: a copy of the student that is either frozen (CIM: the
stage-1 model) or follows the student as an exponential moving average of its parameters
(Mean Teacher, Tarvainen & Valpola, NeurIPS 2017; DACS, DAFormer)."""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

from udaseg.models import SegmenterOutput

TeacherUpdate = Literal["frozen", "ema"]
TeacherBN = Literal["train", "eval"]


class Teacher(nn.Module):
    """A copy of `student` taken at construction (its initial weights), without gradients.

    A method's state dict holds it as `teacher.network.*`, so it is checkpointed and a resumed
    run continues from the saved EMA; the EMA's iteration count is the optimiser step's.

    Args:
        student: the segmenter to copy (and, with "ema", to follow).
        update: "frozen" (never changes) or "ema": after the student's step at iteration t,
            `teacher <- alpha teacher + (1 - alpha) student` on parameters only (BN running
            statistics are the teacher's own), `alpha = min(1 - 1 / (t + 1), ema_momentum)`.
        ema_momentum: the EMA's largest alpha (DACS 0.99, DAFormer 0.999).
        bn: "train": BN normalises with batch statistics and the teacher's running statistics
            move with its own forwards (DACS, DAFormer); "eval": running statistics (CIM).
            Dropout and drop-path are always off in the teacher (DAFormer's). Follows the
            method's train/eval mode: in evaluation the teacher is in eval mode either way.
    """

    def __init__(self, student: nn.Module, update: TeacherUpdate = "ema",
                 ema_momentum: float = 0.99, bn: TeacherBN = "train") -> None:
        super().__init__()
        if update not in ("frozen", "ema"):
            raise ValueError(f"teacher update must be 'frozen' or 'ema', got {update!r}")
        if bn not in ("train", "eval"):
            raise ValueError(f"teacher_bn must be 'train' or 'eval', got {bn!r}")
        self.network = copy.deepcopy(student).requires_grad_(False)
        self.update_rule = update
        self.ema_momentum = ema_momentum
        self.bn = bn

    def forward(self, images: torch.Tensor) -> SegmenterOutput:
        return self.network(images)

    def train(self, mode: bool = True) -> Teacher:
        # Official DACS/DAFormer teachers are never put in eval mode, but DAFormer switches off
        # their dropout and drop-path: in training only the BN layers act as in training.
        super().train(False)
        if mode and self.bn == "train":
            for module in self.network.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.train()
        return self

    def alpha(self, iteration: int) -> float:
        """The EMA weight of the teacher after the student's step at `iteration`."""
        return min(1.0 - 1.0 / (iteration + 1), self.ema_momentum)

    @torch.no_grad()
    def update(self, student: nn.Module, iteration: int) -> None:
        """Follow `student` after its optimiser step at `iteration` (no-op when frozen)."""
        if self.update_rule == "frozen":
            return
        alpha = self.alpha(iteration)
        for teacher_parameter, parameter in zip(self.network.parameters(), student.parameters(),
                                                strict=True):
            teacher_parameter.mul_(alpha).add_(parameter.detach(), alpha=1.0 - alpha)
