"""How udaseg runs write and read checkpoints (the CLI installs it in every Trainer).

Writing: Lightning's own `TorchCheckpointIO` serialises to memory and moves a file from the
system temp folder over the destination; when the run folder is on another file system (every
cluster: /tmp is node-local, runs/ on shared storage) that move is a copy *onto* `last.ckpt`,
so a process killed during it leaves a truncated checkpoint that `--ckpt_path last` then
fails on. Here the checkpoint is written to a temporary file in its own folder, flushed to
disk and renamed over the destination: readers see the old file or the new one, never a part.

Reading: always `torch.load(weights_only=True)` (tensors and plain data only, no pickled code),
with errors that name the file and say what is wrong with it.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Optional

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.plugins import TorchCheckpointIO

from udaseg.runtime.files import replace_atomically


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: truncated, not a checkpoint, unsafe, or of
    another model."""


#: Added to a checkpoint dict when it is read: the file it came from, for error messages.
SOURCE_KEY = "udaseg_checkpoint_file"


def write_checkpoint_file(checkpoint: dict, path: Path) -> None:
    """`torch.save` to a temporary file next to `path`, fsync, rename over `path`."""
    def write(temporary: str) -> None:
        with open(temporary, "wb") as stream:
            torch.save(checkpoint, stream)
            stream.flush()
            os.fsync(stream.fileno())

    replace_atomically(path, write)


def read_checkpoint_file(path: str | Path, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """`torch.load(path, weights_only=True)` with errors that name the file (`mmap`: tensors
    stay on disk until read, for a look at a large checkpoint's metadata)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(
            f"checkpoint {path} holds objects that torch.load(weights_only=True) refuses "
            f"(pickled code or classes udaseg does not allow-list): {first_line}") from error
    except (EOFError, RuntimeError) as error:
        raise CheckpointError(
            f"checkpoint {path} is truncated or not a PyTorch checkpoint "
            f"({path.stat().st_size} bytes): {error}") from error


class SafeCheckpointIO(TorchCheckpointIO):
    """Atomic writes to local folders, `weights_only=True` reads (see the module docstring).
    Remote (fsspec URL) destinations keep Lightning's behaviour for writing."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        write_checkpoint_file(checkpoint, Path(path))

    def load_checkpoint(self, path: Any, map_location: Any = "cpu",
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().load_checkpoint(path, map_location, weights_only=True)
        checkpoint = read_checkpoint_file(path, map_location)
        checkpoint[SOURCE_KEY] = str(path)
        return checkpoint
