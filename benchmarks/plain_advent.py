"""ADVENT's AdvEnt iteration as a plain PyTorch loop, in the official code's order, around the
same networks udaseg trains (DeepLabV2, one `FCDiscriminator` per level): the baseline that
`benchmarks/train_step.py --plain-advent` compares udaseg's iteration with.

Order (ADVENT's `train_advent`): zero the gradients, set the poly learning rates, freeze the
discriminators; source forward, `CE(main) + 0.1 CE(aux)` on logits upsampled to the input
size, backward; target forward, `1e-3 bce(D_main(I_main), source) + 2e-4 bce(D_aux(I_aux),
source)` on the weighted self-information maps `I`, backward; unfreeze; each discriminator on
the detached source maps (label source, halved) and target maps (label target, halved), two
backwards; step the segmenter and both discriminators. Batch statistics BN (`model.train()`),
as officially. Each parameter is in the optimiser once (the official 1x group lists backbone
tensors up to 4 times, which changes the update, not the forward or backward).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from udaseg.models import DeepLabV2, FCDiscriminator

SOURCE, TARGET = 0.0, 1.0


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


def self_information(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """ADVENT's weighted self-information map of upsampled logits."""
    probability = F.softmax(upsample(logits, size), dim=1)
    return -probability * torch.log2(probability + 1e-30) / math.log2(logits.shape[1])


def bce(logits: torch.Tensor, label: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def plain_advent_times(batches: Iterator[dict], num_classes: int, depth: int, width: int,
                       discriminator_width: int, precision: str, steps: int,
                       lr: float = 2.5e-4) -> list[float]:
    """Seconds of each of `steps` iterations on `batches` (train_step.py's random batches)."""
    torch.manual_seed(0)
    segmenter = DeepLabV2(num_classes, depth=depth, width=width).train()
    discriminators = {level: FCDiscriminator(num_classes, discriminator_width)
                      for level in ("main", "aux")}
    segmenter_optimizer = torch.optim.SGD(
        [{"params": list(segmenter.backbone_parameters()), "lr": lr},
         {"params": list(segmenter.classifier_parameters()), "lr": 10 * lr}],
        lr=lr, momentum=0.9, weight_decay=5e-4)
    discriminator_optimizers = [torch.optim.Adam(discriminator.parameters(), lr=1e-4,
                                                 betas=(0.9, 0.99))
                                for discriminator in discriminators.values()]
    optimizers = [segmenter_optimizer, *discriminator_optimizers]
    weights = {"main": 1e-3, "aux": 2e-4}
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed"
                else contextlib.nullcontext())
    times = []
    for iteration in range(steps):
        batch = next(batches)
        began = time.perf_counter()
        source, target = batch["source"], batch["target"]
        source_size, target_size = source["image"].shape[-2:], target["image"].shape[-2:]
        for optimizer in optimizers:
            optimizer.zero_grad()
            factor = (1 - iteration / steps) ** 0.9
            for group in optimizer.param_groups:
                group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor
        with autocast:
            for discriminator in discriminators.values():
                discriminator.requires_grad_(False)
            source_outputs = segmenter(source["image"])
            (F.cross_entropy(upsample(source_outputs["main"], source_size), source["label"],
                             ignore_index=255)
             + 0.1 * F.cross_entropy(upsample(source_outputs["aux"], source_size),
                                     source["label"], ignore_index=255)).backward()
            target_outputs = segmenter(target["image"])
            target_maps = {level: self_information(target_outputs[level], target_size)
                           for level in discriminators}
            sum(weights[level] * bce(discriminators[level](target_maps[level]), SOURCE)
                for level in discriminators).backward()
            for level, discriminator in discriminators.items():
                discriminator.requires_grad_(True)
                source_map = self_information(source_outputs[level].detach(), source_size)
                (bce(discriminator(source_map), SOURCE) / 2).backward()
                (bce(discriminator(target_maps[level].detach()), TARGET) / 2).backward()
        for optimizer in optimizers:
            optimizer.step()
        times.append(time.perf_counter() - began)
    return times
