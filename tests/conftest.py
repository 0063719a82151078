"""Shared fixtures: tiny in-memory datasets and an isolated W&B / Lightning environment."""

from __future__ import annotations

import numpy as np
import pytest

from udaseg.data.base import SegmentationDataset


class TinyDataset(SegmentationDataset):
    """`size` random images whose name encodes the index; labels are the index modulo 3."""

    class_names = ("a", "b", "c")
    eval_subsets = {"mIoU": [0, 1, 2], "mIoU-2": [0, 1]}

    def __init__(self, size: int, prefix: str, height: int = 8, width: int = 12) -> None:
        self.size, self.prefix, self.height, self.width = size, prefix, height, width

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng(index)
        image = rng.integers(0, 256, (self.height, self.width, 3), dtype=np.uint8)
        label = np.full((self.height, self.width), index % 3, dtype=np.uint8)
        return {"image": image, "label": label, "name": f"{self.prefix}{index}"}


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path, monkeypatch):
    """Nothing in the tests may reach the network or write under $HOME."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for variable in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb"))
