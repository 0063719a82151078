"""Fixtures: an isolated W&B environment, and dataset trees in the published formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_cityscapes_root, make_gta5_root, make_nthu_root, make_synthia_root


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path, monkeypatch):
    """Nothing in the tests may reach the network or write under $HOME."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for variable in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb"))


@pytest.fixture
def gta5_root(tmp_path) -> Path:
    return make_gta5_root(tmp_path / "GTA5")


@pytest.fixture
def cityscapes_root(tmp_path) -> Path:
    return make_cityscapes_root(tmp_path / "cityscapes")


@pytest.fixture
def synthia_root(tmp_path) -> Path:
    return make_synthia_root(tmp_path / "RAND_CITYSCAPES")


@pytest.fixture
def nthu_root(tmp_path) -> Path:
    return make_nthu_root(tmp_path / "NTHU_Datasets")
