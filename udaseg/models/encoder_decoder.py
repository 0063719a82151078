"""`EncoderDecoder`: any multi-stage encoder with any decode head, as one `Segmenter`.

The encoder and the head are given like a segmenter, as `{class_path, init_args}` specs, and
stay plain data, so a run's hyperparameters and checkpoints name and rebuild them:

    segmenter:
      class_path: udaseg.models.EncoderDecoder
      init_args:
        encoder: {class_path: udaseg.models.MixTransformer, init_args: {variant: b5}}
        head: {class_path: udaseg.models.DAFormerHead, init_args: {dropout: 0.1}}

An encoder is an `nn.Module` whose `forward(images)` returns its stage outputs, finest first
(strides 4, 8, 16, 32), with `out_channels` (one per stage) and, to read ImageNet weights,
`pretrained_formats` and `load_pretrained(state, fmt, source) -> keys left untouched` as a
`Segmenter` has. A head is an `nn.Module` built as `Head(in_channels, num_classes, **init_args)`
whose `forward(features)` returns logits; `EncoderDecoder` passes `in_channels` (the encoder's
`out_channels`) and `num_classes`, so configs never write them.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from udaseg.models.segmenter import MAIN, Segmenter, SegmenterOutput, resolve_class

#: DAFormer's encoder: MiT-B5.
MIT_B5_ENCODER: dict[str, Any] = {"class_path": "udaseg.models.MixTransformer",
                                  "init_args": {"variant": "b5"}}
#: DAFormer's head with its defaults (256-channel embeddings, separable ASPP 1/6/12/18).
DAFORMER_HEAD: dict[str, Any] = {"class_path": "udaseg.models.DAFormerHead", "init_args": {}}
_KEY = "model.init_args.segmenter.init_args"


def build_component(spec: Mapping[str, Any], key: str, **supplied: Any) -> nn.Module:
    """Instantiate a `{class_path, init_args}` spec with `supplied` arguments added (which the
    spec must leave out); every error names the config `key`."""
    if not isinstance(spec, Mapping) or "class_path" not in spec:
        raise ValueError(f"{key}: expected {{class_path: ..., init_args: {{...}}}}, got {spec!r}")
    unknown = sorted(set(spec) - {"class_path", "init_args"})
    if unknown:
        raise ValueError(f"{key}: unknown entries {unknown}; expected class_path and init_args")
    init_args = spec.get("init_args") or {}
    if not isinstance(init_args, Mapping):
        raise ValueError(f"{key}.init_args: expected a mapping of arguments, got {init_args!r}")
    cls = resolve_class(str(spec["class_path"]), key)
    clash = sorted(set(init_args) & set(supplied))
    if clash:
        raise ValueError(f"{key}.init_args: leave out {clash}: EncoderDecoder sets them (from "
                         "the encoder's out_channels and the data's classes)")
    try:
        inspect.signature(cls).bind(**supplied, **init_args)
    except TypeError as error:
        raise ValueError(f"{key}.init_args: {cls.__name__} does not take these arguments "
                         f"({error})") from None
    module = cls(**supplied, **init_args)
    if not isinstance(module, nn.Module):
        raise TypeError(f"{key}: {spec['class_path']} built a {type(module).__name__}, not an "
                        "nn.Module")
    return module


class EncoderDecoder(Segmenter):
    """An encoder's stage outputs decoded by a head into one prediction ("main").

    Args:
        num_classes: number of output classes (passed to the head).
        encoder: `{class_path, init_args}` of the encoder (default: MiT-B5).
        head: `{class_path, init_args}` of the decode head, without `in_channels` and
            `num_classes` (default: `DAFormerHead`).

    `backbone_parameters()` are the encoder's, `classifier_parameters()` the head's (the
    optimiser gives them `classifier_lr_mult` times the rate). ImageNet weights load into the
    encoder (its `pretrained_formats`); the head keeps its initialisation. `forward` returns the
    logits resized to the input (bilinear, `align_corners=False`), as mmseg's `encode_decode`
    does, so the losses and pseudo-labels see mmseg's values; `decode(features)` alone gives
    them at the head's resolution (stride 4 for the heads of `udaseg.models.heads`).
    """

    #: mmseg resizes logits with align_corners=False, also to the label size at evaluation.
    align_corners = False

    def __init__(self, num_classes: int = 19, encoder: dict[str, Any] = MIT_B5_ENCODER,
                 head: dict[str, Any] = DAFORMER_HEAD) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.heads = (MAIN,)
        self.encoder = build_component(encoder, f"{_KEY}.encoder")
        out_channels = getattr(self.encoder, "out_channels", None)
        if (not isinstance(out_channels, (tuple, list)) or not out_channels
                or not all(isinstance(c, int) for c in out_channels)):
            raise ValueError(f"{_KEY}.encoder: {type(self.encoder).__name__} must have "
                             f"out_channels, one channel count per stage; got {out_channels!r}")
        self.head = build_component(head, f"{_KEY}.head", in_channels=tuple(out_channels),
                                    num_classes=num_classes)
        # The encoder's formats, per instance: they depend on the configured encoder.
        self.pretrained_formats = tuple(getattr(self.encoder, "pretrained_formats", ()))

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) images -> the encoder's stage outputs, finest first."""
        return list(self.encoder(images))

    def decode(self, features: list[torch.Tensor],
               size: Optional[tuple[int, int]] = None) -> SegmenterOutput:
        """Stage outputs -> {"main": (N, num_classes, h, w) logits}, at the head's resolution
        or resized to `size` (H, W)."""
        logits = self.head(features)
        if size is not None and tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear",
                                   align_corners=self.align_corners)
        return {MAIN: logits}

    def forward(self, images: torch.Tensor) -> SegmenterOutput:
        return self.decode(self.encode(images), tuple(images.shape[-2:]))

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def classifier_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.head.parameters() if p.requires_grad]

    def load_pretrained(self, state: dict[str, torch.Tensor], fmt: str, source: str) -> list[str]:
        """Load ImageNet weights into the encoder; returns the keys left untouched (the
        encoder's that the file lacks, and all of the head's)."""
        if not self.pretrained_formats:
            raise NotImplementedError(f"{type(self.encoder).__name__} reads no pretrained "
                                      "weight files")
        untouched = self.encoder.load_pretrained(state, fmt, source)
        return ([f"encoder.{key}" for key in untouched]
                + [f"head.{key}" for key in self.head.state_dict()])
