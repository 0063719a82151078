"""The fast path: switches that make an iteration cheaper without changing what it computes
(beyond float rounding), set per run under `model.init_args.fast_path`.

- `channels_last`: segmenter, discriminators (and a teacher) hold their 4-D weights, and every
  image batch arrives, in NHWC memory layout, which oneDNN (CPU) and cuDNN tensor cores run
  faster, above all under bf16/fp16 autocast.
- `fused_forward`: the images of one iteration (source, target, and e.g. TUFL's strong view or
  a mixed batch) go through the segmenter in **one** batched forward, the discriminators see
  their source and target maps in one batch, and the iteration's losses get one backward.
  Batches are concatenated, so their images must have one size. The convolutions run once on
  the joint batch, but a BN layer with batch statistics (`bn_stats: batch`) normalises each
  batch by its own statistics and updates its running statistics batch after batch, in the
  order `supervised_step` gets them (`per_batch_norm`): per domain, as the separate forwards
  do (SyncBatchNorm is refused there). With `bn_stats: frozen` BN is in eval mode and nothing
  is split.
- `compile`: `torch.compile` of the segmenter, the discriminators and a teacher, in place
  (state-dict keys unchanged), when a fit, validation or test sets the model up.

Why one backward when fused: the fused forward builds one graph for all images, so a backward of
the source loss alone would free what the target loss still needs. The iteration's
`manual_backward` calls are therefore summed and run once at its end (`DeferredBackward`); their
gradient is the same sum, but the graphs of the whole iteration stay alive until then, so the
fused path trades memory for speed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from udaseg.models import SegmenterOutput


@dataclass(frozen=True)
class FastPath:
    """Speed switches of a method (all off: the official computation, layer for layer).

    Args:
        channels_last: NHWC layout for the networks and the image batches.
        fused_forward: one batched segmenter forward (and one discriminator forward per
            level) per iteration, one backward; needs images of one size. BN with batch
            statistics still normalises each batch (domain) by its own statistics.
        compile: `torch.compile` the networks (first iterations are slow while it compiles;
            shapes that change, e.g. evaluation images, compile again).
        compile_mode: torch.compile's `mode` ("default", "reduce-overhead", "max-autotune").
        compile_backend: torch.compile's `backend`; "inductor" generates kernels, "eager" only
            traces (a check that the model compiles, no speed-up).
    """

    channels_last: bool = False
    fused_forward: bool = False
    compile: bool = False
    compile_mode: Optional[Literal["default", "reduce-overhead", "max-autotune"]] = None
    compile_backend: str = "inductor"


# Methods built in Python pickle this config in their checkpoints' `hyper_parameters`.
torch.serialization.add_safe_globals([FastPath])


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


class DeferredBackward:
    """Collects an iteration's losses instead of back-propagating each (the fused path); `run`
    back-propagates their sum once through `backward`."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def add(self, loss: torch.Tensor) -> None:
        self.losses.append(loss)

    def run(self, backward: Callable[[torch.Tensor], None]) -> None:
        if self.losses:
            backward(torch.stack([loss.float() for loss in self.losses]).sum())
        self.losses.clear()


class FastPathHooks:
    """The fast path's part of `UDAMethod` (a mixin of that LightningModule: it reads the
    method's `fast_path`, `segmenter` and `discriminators`)."""

    _deferred_backward: Optional[DeferredBackward] = None

    def prepare_fast_path(self) -> None:
        """NHWC weights (`channels_last`); called once the networks are built."""
        if self.fast_path.channels_last:
            for network in (self.segmenter, self.discriminators):
                network.to(memory_format=torch.channels_last)

    def compiled_networks(self) -> list[nn.Module]:
        """The networks `compile` compiles: the segmenter and the discriminators; methods with
        further networks (a teacher) add them."""
        return [self.segmenter, *self.discriminators.values()]

    def setup(self, stage: str) -> None:
        # Compiled in place: state-dict keys, checkpoints and optimisers see the same modules.
        if self.fast_path.compile:
            for network in self.compiled_networks():
                if getattr(network, "_compiled_call_impl", None) is None:
                    network.compile(mode=self.fast_path.compile_mode,
                                    backend=self.fast_path.compile_backend)

    def in_layout(self, batch: object) -> object:
        """A batch (or images) in the networks' memory layout: NHWC under `channels_last`.
        Called by the training and evaluation steps (not a transfer hook, which Lightning
        would let override the data module's)."""
        return to_channels_last(batch) if self.fast_path.channels_last else batch

    @contextmanager
    def iteration_backward(self) -> Iterator[None]:
        """Around an iteration's `adaptation_step`: on the fused path its backward calls are
        collected and run as one at the end of the block."""
        if not self.fast_path.fused_forward:
            yield
            return
        self._deferred_backward = DeferredBackward()
        try:
            yield
            self._deferred_backward.run(super().manual_backward)
        finally:
            self._deferred_backward = None

    def manual_backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        """Lightning's backward (AMP scaling, DDP), or inside a fused iteration: kept for its
        one backward (the losses share one graph)."""
        if self._deferred_backward is None:
            super().manual_backward(loss, *args, **kwargs)
            return
        if args or kwargs:
            raise ValueError("fast_path.fused_forward runs one plain backward per iteration; "
                             "manual_backward options are not supported there")
        self._deferred_backward.add(loss)
