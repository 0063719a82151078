"""Every shipped run config resolves (nested files, class paths, argument names)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from udaseg.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PARTS = {"data.yaml", "trainer.yaml", "model_light.yaml"}
RUN_CONFIGS = sorted(path for path in CONFIGS.glob("*/*.yaml")
                     if path.name not in PARTS and path.parent.name != "common")


def test_every_benchmark_has_run_configs():
    assert {path.parent.name for path in RUN_CONFIGS} >= {
        "synthetic", "gta5_to_cityscapes", "synthia_to_cityscapes", "cityscapes_to_crosscity"}


@pytest.mark.parametrize("config", RUN_CONFIGS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_config_resolves_with_a_seed(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert isinstance(resolved["seed_everything"], int), "every config pins a seed"
    assert resolved["model"]["class_path"].startswith("udaseg.methods.")
