"""Deprecated import path, kept for one release: use udaseg.runtime.checkpoint_io."""

from udaseg.runtime.checkpoint_io import (
    SOURCE_KEY,
    CheckpointError,
    SafeCheckpointIO,
    read_checkpoint_file,
    write_checkpoint_file,
)

__all__ = ["SOURCE_KEY", "CheckpointError", "read_checkpoint_file", "SafeCheckpointIO",
           "write_checkpoint_file"]
