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

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn

from udaseg.models.fused_forward import (  # noqa: F401  (re-exported)
    batched_forward,
    paired_forward,
    per_batch_norm,
    to_channels_last,
)


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

    def prepare(self, networks: Iterable[nn.Module]) -> None:
        """NHWC weights (`channels_last`) and `torch.compile` (`compile`), in place, so state-dict
        keys, checkpoints and optimisers see the same modules; a compiled network stays so."""
        for network in networks:
            if self.channels_last:
                network.to(memory_format=torch.channels_last)
            if self.compile and getattr(network, "_compiled_call_impl", None) is None:
                network.compile(mode=self.compile_mode, backend=self.compile_backend)

    def layout(self, batch: object) -> object:
        """A batch (or images) in the networks' memory layout: NHWC under `channels_last`."""
        return to_channels_last(batch) if self.channels_last else batch


# Methods built in Python pickle this config in their checkpoints' `hyper_parameters`.
torch.serialization.add_safe_globals([FastPath])


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
