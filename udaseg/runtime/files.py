"""Result files written atomically: a crash never leaves a half-written JSON or PNG behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytorch_lightning as pl


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


def run_directory(trainer: pl.Trainer) -> Path:
    """The folder of this run, where every file of it belongs: `<save_dir>/<name>/<version>`.

    It is the folder `ModelCheckpoint` puts `checkpoints/` in, for any logger: a CSV logger's
    `log_dir`; for W&B `<save_dir>/<project>/<run id>` (Lightning's own `trainer.log_dir` is the
    shared `save_dir` there, so runs would overwrite each other's files). Not a collective: call
    it on the rank that writes.
    """
    if not trainer.loggers:
        return Path(trainer.default_root_dir)
    logger = trainer.loggers[0]
    if logger.version is None:
        logger.experiment  # noqa: B018  (W&B assigns the run id when its run starts)
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version
