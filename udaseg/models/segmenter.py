"""What every segmentation network in udaseg is: the `Segmenter` protocol.

A method never asks which network it trains; it asks for heads and parameter groups. A segmenter
is an `nn.Module` subclass of `Segmenter` that

- takes `num_classes` as its first constructor argument (the method passes it, from the data
  module: configs never write it) and keeps it as `self.num_classes`;
- lists the names of its outputs in `self.heads` (always "main"; "aux" for an auxiliary
  classifier, as in multi-level ADVENT/MaxSquare; "first"/"second" for CLAN's two classifiers);
- returns from `forward(images)` a dict `{head name: (N, num_classes, h, w) logits}` with
  exactly those keys; "main" is the prediction that evaluation and `udaseg predict` use;
- splits its trainable parameters into `backbone_parameters()` and `classifier_parameters()`
  (the optimiser gives the second group `classifier_lr_mult` times the learning rate), each
  parameter in exactly one group;
- declares in `pretrained_formats` the weight-file formats `load_pretrained` can read (ImageNet
  initialisation), possibly none. Full checkpoints (`init_checkpoint`) load into any segmenter
  by state-dict key, see `udaseg.models.weights`.

A method that needs a particular head names it in `required_heads()`; the base checks it once,
when it builds the segmenter, and the error names the config key to change.

Configs choose the network like any other component, without `num_classes`:

    segmenter:
      class_path: udaseg.models.DeepLabV2
      init_args: {depth: 101, multi_level: true}

and the method receives a factory (`SegmenterFactory`): a callable that builds the network
from `num_classes`. In Python that is the class itself or a `functools.partial` of it.
"""

from __future__ import annotations

import abc
import functools
import importlib
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Union

import torch
from torch import nn

#: The prediction head every segmenter has (evaluation, prediction, entropy maps).
MAIN = "main"
#: The auxiliary (e.g. layer3) classifier of multi-level segmenters.
AUX = "aux"

SegmenterOutput = dict[str, torch.Tensor]


class Segmenter(nn.Module, abc.ABC):
    """Base class of all segmentation networks (see the module docstring for the protocol).

    Subclasses set `num_classes` and `heads` in their constructor and implement `forward`,
    `backbone_parameters` and `classifier_parameters`; those reading ImageNet weights also set
    `pretrained_formats` and implement `load_pretrained`.
    """

    #: Formats of pretrained (ImageNet) weight files `load_pretrained` reads; () = none.
    pretrained_formats: ClassVar[tuple[str, ...]] = ()
    #: How evaluation resizes the logits to the label size: the DeepLabV2 UDA code uses
    #: align_corners=True, mmseg (DAFormer and later) False.
    align_corners: ClassVar[bool] = True
    num_classes: int
    heads: tuple[str, ...]

    @abc.abstractmethod
    def forward(self, images: torch.Tensor) -> SegmenterOutput:
        """(N, 3, H, W) normalised images -> {head: (N, num_classes, h, w) logits}."""

    @abc.abstractmethod
    def backbone_parameters(self) -> list[nn.Parameter]:
        """Trainable feature-extractor parameters (the base learning rate), each once."""

    @abc.abstractmethod
    def classifier_parameters(self) -> list[nn.Parameter]:
        """Trainable classifier parameters (`classifier_lr_mult` x the rate), each once."""

    def load_pretrained(self, state: dict[str, torch.Tensor], fmt: str, source: str) -> list[str]:
        """Load pretrained weights of format `fmt` (one of `pretrained_formats`, or "auto")
        from the state dict read from file `source`; return the keys left untouched."""
        raise NotImplementedError(f"{type(self).__name__} reads no pretrained weight files")


def he_init_(*modules: nn.Module) -> None:
    """He (fan-out) init for every conv inside `modules`, BN at identity: the from-scratch
    init of encoders (only matters when no ImageNet weights are loaded)."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


SegmenterFactory = Callable[[int], Segmenter]
#: A segmenter as stored in hyperparameters and checkpoints: {"class_path", "init_args"}.
SegmenterSpec = dict[str, Any]


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def segmenter_spec(factory: Union[SegmenterFactory, SegmenterSpec]) -> Union[SegmenterSpec,
                                                                             SegmenterFactory]:
    """A plain-data description of `factory` for hyperparameters and checkpoints.

    A class becomes `{"class_path": ..., "init_args": {}}`, a `functools.partial` of a class
    with keyword arguments (what the CLI builds from `class_path`/`init_args`) becomes the same
    with its keywords; a spec is returned as is. Anything else (a user's own function) is
    returned unchanged: it still works, but a checkpoint then pickles it.
    """
    if isinstance(factory, Mapping):
        return {"class_path": factory["class_path"], "init_args": dict(factory.get("init_args")
                                                                      or {})}
    if isinstance(factory, type):
        return {"class_path": _qualified_name(factory), "init_args": {}}
    if isinstance(factory, functools.partial):
        # The CLI's partial wraps the class as its last positional argument (jsonargparse's
        # instantiator); a user's `partial(DeepLabV2, depth=18)` has it as `func`.
        classes = [item for item in (factory.func, *factory.args) if isinstance(item, type)]
        if len(classes) == 1 and all(callable(item) for item in factory.args):
            return {"class_path": _qualified_name(classes[0]), "init_args": dict(factory.keywords)}
    return factory


def resolve_class(class_path: str, key: str) -> type:
    """Import `package.module.Class`; errors name the config `key` that gave the path."""
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"{key}: cannot import class {class_path!r} ({error})") from error
    if not isinstance(cls, type):
        raise ValueError(f"{key}: {class_path!r} is not a class")
    return cls


def build_segmenter(factory: Union[SegmenterFactory, SegmenterSpec], num_classes: int,
                    key: str = "model.init_args.segmenter") -> Segmenter:
    """Call the factory (or instantiate the spec) with `num_classes`; check the protocol."""
    if isinstance(factory, Mapping):
        cls = resolve_class(str(factory["class_path"]), key)
        factory = functools.partial(cls, **dict(factory.get("init_args") or {}))
    segmenter = factory(num_classes)
    if not isinstance(segmenter, Segmenter):
        raise TypeError(f"{key} built a {type(segmenter).__name__}, which is not a "
                        "udaseg.models.Segmenter (see its docstring for the protocol)")
    name = type(segmenter).__name__
    heads = tuple(getattr(segmenter, "heads", ()))
    if MAIN not in heads:
        raise ValueError(f"{key}: {name}.heads must list the names forward() returns, "
                         f"including {MAIN!r}; got {heads}")
    if getattr(segmenter, "num_classes", None) != num_classes:
        raise ValueError(f"{key}: {name} was built for num_classes={num_classes} but its "
                         f"num_classes is {getattr(segmenter, 'num_classes', None)}")
    return segmenter
