"""Loading segmenter weights from local files only (never from a hub at run time).

Two entry points:
- `load_imagenet_init`: backbone-only init from a torchvision ResNet state dict or the official
  Caffe-converted `DeepLab_resnet_pretrained_imagenet.pth` (keys prefixed `Scale.`).
- `load_segmenter_checkpoint`: a full released or Lightning checkpoint, loaded strictly.
Every failure raises `WeightsError` naming the file and saying what did not match.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Optional, Union

import torch
from torch import nn

from udaseg.models.resnet import BACKBONE_MODULES, ResNetBackbone

PathLike = Union[str, Path]
StateDict = dict[str, torch.Tensor]

#: Prefixes stripped by `load_segmenter_checkpoint`, in order: the LightningModule attribute
#: holding the segmenter, then DataParallel's `module.` (MaxSquare's released checkpoints).
CHECKPOINT_PREFIXES: tuple[str, ...] = ("segmenter.", "module.")
_MAX_LISTED = 20


class WeightsError(ValueError):
    """A weights file is missing, corrupted or does not fit the model."""


def sha256_of(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so large checkpoints never sit in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _load_file(path: PathLike, sha256: Optional[str]) -> object:
    """Check existence and hash, then `torch.load` with `weights_only=True` (no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if sha256 is not None:
        actual = sha256_of(path)
        if actual.lower() != sha256.strip().lower():
            raise WeightsError(
                f"SHA-256 mismatch for {path}: expected {sha256.strip().lower()}, got {actual}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise WeightsError(
            f"cannot read {path} with torch.load(weights_only=True): {err}\n"
            "If the file is trusted but pickles extra objects, re-save just its state dict."
        ) from err


def _as_state_dict(obj: object, path: PathLike) -> StateDict:
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"{path} does not contain a state dict (got {type(obj).__name__})")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise WeightsError(f"{path} is not a state dict of tensors; offending entries: "
                           f"{_listing(bad)}")
    return dict(obj)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f", ... and {more} more" if more > 0 else "")


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _is_bn_counter(key: str) -> bool:
    """`num_batches_tracked` is absent from pre-0.4.1 files (e.g. the Caffe-converted init)."""
    return key.endswith(".num_batches_tracked")


def _detect_format(keys: list[str], path: PathLike) -> Literal["torchvision", "deeplab"]:
    if "conv1.weight" in keys:
        return "torchvision"
    if all("." in k for k in keys) and any(k.split(".", 1)[1] == "conv1.weight" for k in keys):
        return "deeplab"
    raise WeightsError(f"cannot tell the format of {path}: no `conv1.weight` or `<prefix>."
                       f"conv1.weight` key (first keys: {_listing(keys[:5])})")


def _backbone_from_file(state: StateDict, fmt: Literal["torchvision", "deeplab"]) -> StateDict:
    """Rename to our keys and keep only backbone tensors (drop `fc.*` or DeepLab's `layer5.*`)."""
    if fmt == "deeplab":  # the official loader drops the first key component (`Scale.`)
        state = {k.split(".", 1)[1]: v for k, v in state.items() if "." in k}
    return {k: v for k, v in state.items() if k.split(".", 1)[0] in BACKBONE_MODULES}


def load_imagenet_init(model: ResNetBackbone, path: PathLike, sha256: Optional[str] = None,
                       fmt: Literal["auto", "torchvision", "deeplab"] = "auto") -> list[str]:
    """Load ImageNet backbone weights into a DeepLabV2 (or any `ResNetBackbone`) in place.

    Every backbone tensor of the model must be in the file with the same shape (BN
    `num_batches_tracked` counters may be absent); classifier keys in the file are ignored.
    Returns the model's state-dict keys that were left untouched: the classifiers, plus any
    `num_batches_tracked` counters the file did not have.
    """
    if fmt not in ("auto", "torchvision", "deeplab"):
        raise ValueError(f"fmt must be 'auto', 'torchvision' or 'deeplab', got {fmt!r}")
    state = _as_state_dict(_load_file(path, sha256), path)
    if fmt == "auto":
        fmt = _detect_format(list(state), path)
    incoming = _backbone_from_file(state, fmt)

    target = model.state_dict()
    wanted = [k for k in target if k.split(".", 1)[0] in BACKBONE_MODULES]
    missing = [k for k in wanted if k not in incoming and not _is_bn_counter(k)]
    unexpected = [k for k in incoming if k not in target]
    mismatched = [f"{k}: model {_shape(target[k])}, file {_shape(incoming[k])}"
                  for k in wanted if k in incoming and incoming[k].shape != target[k].shape]
    if missing or unexpected or mismatched:
        raise WeightsError(_mismatch_message(
            f"{path} ({fmt} format) does not fit the model's backbone", missing, unexpected,
            mismatched))

    merged = dict(target)
    merged.update(incoming)
    model.load_state_dict(merged, strict=True)
    return [k for k in target if k not in incoming]


def _strip_prefixes(state: StateDict) -> StateDict:
    """Keep the segmenter's entries of a Lightning/DataParallel checkpoint, without prefixes."""
    for prefix in CHECKPOINT_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_segmenter_checkpoint(model: nn.Module, path: PathLike, sha256: Optional[str] = None,
                              strict: bool = True) -> list[str]:
    """Load a full segmenter checkpoint in place; returns model keys not found in the file.

    Accepts a plain DeepLabV2 state dict (ADVENT releases), one with a `module.` prefix
    (MaxSquare releases) or a Lightning checkpoint (`state_dict` with `segmenter.` keys; other
    modules such as discriminators are ignored). With `strict`, missing or unexpected keys are
    an error; shape mismatches (e.g. a different class count) always are. Missing BN
    `num_batches_tracked` counters are tolerated, as `torch.nn.BatchNorm2d` itself does.
    """
    obj = _load_file(path, sha256)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # Lightning checkpoint
    state = _strip_prefixes(_as_state_dict(obj, path))

    target = model.state_dict()
    missing = [k for k in target if k not in state and not _is_bn_counter(k)]
    unexpected = [k for k in state if k not in target]
    mismatched = [f"{k}: model {_shape(target[k])}, file {_shape(state[k])}"
                  for k in target if k in state and state[k].shape != target[k].shape]
    if mismatched or (strict and (missing or unexpected)):
        raise WeightsError(_mismatch_message(
            f"{path} does not fit {type(model).__name__}", missing, unexpected, mismatched))

    merged = dict(target)
    merged.update({k: v for k, v in state.items() if k in target})
    model.load_state_dict(merged, strict=True)
    return [k for k in target if k not in state]


def _mismatch_message(head: str, missing: list[str], unexpected: list[str],
                      mismatched: list[str]) -> str:
    lines = [head + ":"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    if mismatched:
        lines.append(f"  shape mismatches ({len(mismatched)}):")
        lines += [f"    {m}" for m in mismatched[:_MAX_LISTED]]
        if len(mismatched) > _MAX_LISTED:
            lines.append(f"    ... and {len(mismatched) - _MAX_LISTED} more")
    return "\n".join(lines)
