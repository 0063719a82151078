"""Several image batches through one network call: a batched forward that keeps each batch's
own BN statistics (`batched_forward`, `per_batch_norm`), a paired call for discriminators, and
NHWC layout of a batch. What `fast_path.fused_forward` and `channels_last` run on."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from udaseg.models.segmenter import SegmenterOutput


@contextmanager
def per_batch_norm(network: nn.Module, sizes: Sequence[int]) -> Iterator[None]:
    """Inside the block, every train-mode BN layer of `network` splits its input into chunks of
    `sizes` images and runs its own forward on each chunk in turn, then concatenates them.

    So each chunk is normalised by its own batch statistics, its gradient is that of the
    separate forward, and the running statistics (and `num_batches_tracked`, on which
    `momentum=None`'s cumulative average depends) are updated chunk after chunk, as separate
    forwards in that order would; every other layer sees the whole batch. SyncBatchNorm is
    refused: it reduces its statistics across ranks by collectives that this has not been
    checked with.
    """
    layers = [module for module in network.modules()
              if isinstance(module, _BatchNorm) and module.training]
    if len(sizes) < 2 or not layers:
        yield
        return
    synchronised = [module for module in layers if isinstance(module, nn.SyncBatchNorm)]
    if synchronised:
        raise ValueError(
            "model.init_args.fast_path.fused_forward with bn_stats: batch normalises each batch "
            f"of the joint forward by its own statistics, which {len(synchronised)} SyncBatchNorm "
            "layer(s) do not support: set trainer.sync_batchnorm: false, bn_stats: frozen or "
            "fused_forward: false")
    sizes = [int(size) for size in sizes]
    # An instance attribute that shadows the class's `forward` (which it calls): the modules,
    # their hooks and what optimisers and torch.compile hold stay the same (torch.compile
    # guards on it and keeps one graph for the fused forwards).
    shadowed = [(layer, vars(layer).get("forward")) for layer in layers]
    for layer in layers:
        layer.forward = _chunked_forward(layer, sizes)
    try:
        yield
    finally:
        for layer, previous in shadowed:
            del layer.forward
            if previous is not None:
                layer.forward = previous


def _chunked_forward(layer: _BatchNorm, sizes: list[int]) -> Callable[[torch.Tensor],
                                                                      torch.Tensor]:
    forward = type(layer).forward

    def chunked(batch: torch.Tensor) -> torch.Tensor:
        if batch.shape[0] != sum(sizes):
            raise ValueError(
                f"fast_path.fused_forward splits each BN layer's input into the iteration's "
                f"batches of {sizes} images, but a {type(layer).__name__} got {batch.shape[0]}: "
                "this segmenter normalises something other than a batch of images; set "
                "fused_forward: false or bn_stats: frozen")
        return torch.cat([forward(layer, chunk) for chunk in batch.split(sizes)])

    return chunked


def to_channels_last(batch: object) -> object:
    """Every 4-D floating tensor in a (nested dict/list of a) batch, in NHWC layout."""
    if torch.is_tensor(batch):
        if batch.dim() == 4 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {key: to_channels_last(value) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_channels_last(value) for value in batch)
    return batch


def batched_forward(network: nn.Module,
                    images: Sequence[torch.Tensor]) -> list[SegmenterOutput]:
    """`[network(batch) for batch in images]` computed as one forward of their concatenation.

    Equal to the separate forwards (up to float rounding), running statistics included, for
    networks whose only layers that mix images are BN layers (`per_batch_norm`). Raises if the
    batches differ in image size.
    """
    sizes = {tuple(batch.shape[1:]) for batch in images}
    if len(sizes) > 1:
        raise ValueError(
            "model.init_args.fast_path.fused_forward concatenates the iteration's image batches, "
            f"but they differ in size: {sorted(sizes)}; crop source and target alike "
            "(data.source_augmentation.crop / data.target_augmentation.crop) or set "
            "fused_forward: false")
    counts = [batch.shape[0] for batch in images]
    with per_batch_norm(network, counts):
        joint = network(torch.cat(list(images)))
    split = {head: logits.split(counts) for head, logits in joint.items()}
    return [{head: parts[index] for head, parts in split.items()}
            for index in range(len(images))]


def paired_forward(network: Callable[[torch.Tensor], torch.Tensor], source: torch.Tensor,
                   target: torch.Tensor, fused: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`(network(source), network(target))`, as one batched call when `fused` and the maps
    have one size (a discriminator: no layer mixes images, so this is exact)."""
    if not fused or source.shape[1:] != target.shape[1:]:
        return network(source), network(target)
    joint = network(torch.cat([source, target]))
    return joint[:source.shape[0]], joint[source.shape[0]:]
