"""Result files written atomically: a crash never leaves a half-written JSON or PNG behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np


def _umask_mode() -> int:
    """The mode a plain `open(path, "w")` would give a new file (0644 under umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def replace_atomically(path: Path, write: Callable[[str], None]) -> None:
    """`write(temporary_path)` next to `path`, then rename it over `path` (same file system).

    The result gets the usual umask mode, not `mkstemp`'s private 0600: colleagues on shared
    storage must be able to read a run's metrics and figures.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.",
                                         suffix=path.suffix)
    os.close(handle)
    try:
        os.chmod(temporary, _umask_mode())
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_json_atomic(path: Path, payload: dict) -> None:
    def write(temporary: str) -> None:
        with open(temporary, "w") as stream:
            json.dump(payload, stream, indent=2)

    replace_atomically(path, write)


def write_png_atomic(path: Path, image: np.ndarray) -> None:
    """`image`: (H, W) single channel or (H, W, 3) in OpenCV's BGR order."""
    def write(temporary: str) -> None:
        if not cv2.imwrite(temporary, image):
            raise OSError(f"cannot write {path}")

    replace_atomically(path, write)
