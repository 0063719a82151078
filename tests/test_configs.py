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
    # A dotted `trainer.key:` next to `trainer: file.yaml` silently drops the file's other keys.
    assert resolved["trainer"]["val_check_interval"] is not None, "the trainer file applies"


CITIES = sorted((CONFIGS / "cityscapes_to_crosscity" / "cities").glob("*.yaml"))


@pytest.mark.parametrize("city_config", CITIES, ids=lambda path: path.stem)
def test_city_overlay_switches_every_cross_city_split(city_config, capsys):
    run_config = CONFIGS / "cityscapes_to_crosscity" / "maxsquare.yaml"
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(run_config), "--config", str(city_config), "--print_config"])
    data = yaml.safe_load(capsys.readouterr().out)["data"]
    cities = {split: data[split]["init_args"]["city"] for split in ("target", "val", "test")}
    assert set(cities.values()) == {city_config.stem.capitalize()}, cities
    assert data["target"]["init_args"]["split"] == "train"
    assert data["test"]["init_args"]["split"] == "test"


def test_all_four_cross_city_cities_have_an_overlay():
    assert [path.stem for path in CITIES] == ["rio", "rome", "taipei", "tokyo"]
