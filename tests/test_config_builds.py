"""Every shipped run config builds and trains: `udaseg fit --config <run config>` resolves it with
the CLI's own parser, instantiates its data module, method and trainer (an argument the class
does not have, a CIM without its stage-1 checkpoint, a segmenter without the heads the method
reads fail here) and runs one iteration with its callbacks (ClassMix needs source and target
crops of one size, TUFL a strong target view, ...).

What would take minutes shrinks, and nothing else changes: the DeepLab networks get ResNet depth
18 and width 8 (their class and other arguments stay), crop and resize sizes are scaled by one
factor per config (equal sizes stay equal) to at most 96 pixels (HRDA's crops to 64, with its
detail crop), the datasets are a few images in
each published layout (tests/helpers.py) or 8 built-in scenes per split, trained checkpoints are
stand-ins (the freshly built network's own weights, written where the config's file would be
read) and an ImageNet file the repository does not ship is left out (the installed
EfficientNet-Lite0 one is loaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import udaseg.methods.ensemble as ensemble_module
import udaseg.models.weights as weights_module
from tests.helpers import (
    CONFIGS,
    RUN_CONFIGS,
    make_cityscapes_root,
    make_gta5_root,
    make_nthu_root,
    make_synthia_root,
)
from udaseg.data import UDADataModule
from udaseg.methods import UDAMethod
from udaseg.runtime import cli

#: Largest side of a training crop or resize here.
LARGEST_SIDE = 96
#: Run configs whose stage-1 checkpoint is given on the command line (their comments say how).
CHECKPOINT_FROM_COMMAND_LINE = {"synthetic/cim.yaml", "synthetic_v1/cim.yaml"}


def config_id(path: Path) -> str:
    return path.relative_to(CONFIGS).as_posix()


def evaluation_only(path: Path) -> bool:
    """Ensembles combine trained members and have nothing to train."""
    return "udaseg.methods.Ensemble" in path.read_text()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """The relative dataset roots of the real benchmarks' data.yaml files, a few images each."""
    root = tmp_path_factory.mktemp("data")
    make_gta5_root(root / "GTA5")
    make_cityscapes_root(root / "Cityscapes")
    make_synthia_root(root / "SYNTHIA")
    make_nthu_root(root / "NTHU_Datasets")
    return root


@pytest.fixture
def stand_in_checkpoints(monkeypatch):
    """Checkpoint loading that first writes a missing file from the network being loaded, so
    the real loader reads a checkpoint of the right architecture and class count."""
    monkeypatch.setattr("sys.argv", ["udaseg"])   # the CLI reads `args`, not pytest's options
    load = weights_module.load_segmenter_checkpoint

    def load_or_stand_in(model, path, *args, **kwargs):
        if not Path(path).exists():
            torch.save(model.state_dict(), path)
        return load(model, path, *args, **kwargs)

    monkeypatch.setattr(weights_module, "load_segmenter_checkpoint", load_or_stand_in)
    monkeypatch.setattr(ensemble_module, "load_segmenter_checkpoint", load_or_stand_in)


def scaled(augmentation, factor: float) -> None:
    for key in ("resize", "crop"):
        if augmentation[key]:
            augmentation[key] = tuple(max(8, round(side * factor)) for side in augmentation[key])


class SmallBuild(cli.UDASegCLI):
    """The udaseg CLI, shrinking what the resolved config asks for before it is built."""

    stand_ins: Path
    checkpoint_from_command_line = False

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        config = self.config[self.subcommand]
        model = config.model.init_args
        segmenter = model.segmenter.init_args
        if "depth" in segmenter:
            segmenter.depth, segmenter.width = 18, 8
        weights = model.weights
        if weights.pretrained and \
                not weights_module.resolve_weights_path(weights.pretrained).is_file():
            weights.pretrained = None
        if weights.init_checkpoint or self.checkpoint_from_command_line:
            weights.init_checkpoint = str(self.stand_ins / "stage_1.ckpt")
        if "checkpoints" in model:
            model.checkpoints = [str(self.stand_ins / f"member_{index}.pth")
                                 for index in range(len(model.checkpoints))]
        data = config.data
        data.num_workers = 0
        for stream in ("source", "target", "val", "test"):
            spec = data[stream]
            if spec is not None and spec.class_path == "udaseg.data.SyntheticStreets":
                spec.init_args.num_images = 8
        streams = (data.source_augmentation, data.target_augmentation)
        sides = [side for augmentation in streams for key in ("resize", "crop")
                 for side in augmentation[key] or ()]
        factor = min(1.0, LARGEST_SIDE / max(sides)) if sides else 1.0
        if "detail_crop" in segmenter:
            # HRDA: the half-resolution context view of a crop and the detail crop must keep
            # MiT's 29 pixels a side: crops of 64.
            crops = [side for augmentation in streams for side in augmentation["crop"] or ()]
            factor = max(factor, 64 / max(crops))
            segmenter.detail_crop = tuple(round(side * factor) for side in segmenter.detail_crop)
        for augmentation in (*streams, data.eval_augmentation):
            scaled(augmentation, factor)
        if data.get("rare_class_sampling") is not None:
            # The stand-in label files hold a few hundred pixels, not the 3000 of one class
            # that the real images' statistics ask for.
            data.rare_class_sampling.min_pixels = 0


def build(config: Path, work: Path) -> SmallBuild:
    """`udaseg fit` (or `validate`) of `config` for one iteration on the CPU, files under
    `work`."""
    subcommand = "validate" if evaluation_only(config) else "fit"
    SmallBuild.stand_ins = work
    SmallBuild.checkpoint_from_command_line = \
        config.is_relative_to(CONFIGS) and config_id(config) in CHECKPOINT_FROM_COMMAND_LINE
    return SmallBuild(
        UDAMethod, UDADataModule, subclass_mode_model=True, seed_everything_default=0,
        auto_configure_optimizers=False, trainer_defaults=cli.TRAINER_DEFAULTS,
        save_config_callback=cli.SaveRunConfig,
        save_config_kwargs={"overwrite": True, "config_filename": cli.CONFIG_FILE},
        parser_class=cli.OneLineErrorParser,
        args=[subcommand, "--config", str(config), "--trainer.max_steps=1",
              "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.logger=false",
              f"--trainer.limit_val_batches={int(subcommand == 'validate')}",
              f"--trainer.default_root_dir={work}", "--trainer.enable_progress_bar=false",
              "--trainer.enable_model_summary=false"])


@pytest.mark.parametrize("config", RUN_CONFIGS, ids=config_id)
def test_run_config_builds_and_trains_one_iteration(config, data_root, stand_in_checkpoints,
                                                   tmp_path, monkeypatch):
    monkeypatch.setenv("UDASEG_DATA_ROOT", str(data_root))
    monkeypatch.chdir(tmp_path)   # relative paths of the config (weights/, runs/) stay here
    built = build(config, tmp_path)
    resolved = yaml.safe_load((tmp_path / cli.CONFIG_FILE).read_text())
    assert type(built.model).__name__ == resolved["model"]["class_path"].rsplit(".", 1)[1]
    assert built.model.num_classes == built.datamodule.num_classes
    if evaluation_only(config):
        assert built.trainer.callback_metrics, "validation reported nothing"
    else:
        assert built.trainer.global_step == 1
        assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def write_variant(tmp_path: Path, run_config: str, *lines: str) -> Path:
    variant = tmp_path / "variant.yaml"
    variant.write_text("\n".join([f"config: {CONFIGS / run_config}", *lines]) + "\n")
    return variant


def test_a_dacs_config_naming_an_argument_dacs_lacks_fails(data_root, stand_in_checkpoints,
                                                           tmp_path, monkeypatch, capsys):
    """The switches that turned CIM into DACS are gone: such a key is refused by name."""
    monkeypatch.setenv("UDASEG_DATA_ROOT", str(data_root))
    variant = write_variant(tmp_path, "synthetic/dacs.yaml", "model.init_args.lambda_ufl: 0.0")
    with pytest.raises(SystemExit):
        build(variant, tmp_path)
    assert "lambda_ufl" in capsys.readouterr().err


def test_a_dacs_config_without_equal_crops_fails(data_root, stand_in_checkpoints, tmp_path,
                                                 monkeypatch):
    """ClassMix pastes source pixels onto target crops of the same size: GTA5's DACS run
    without its 512x512 source crops (1280x720 images against 512x512 target crops) fails."""
    monkeypatch.setenv("UDASEG_DATA_ROOT", str(data_root))
    monkeypatch.chdir(tmp_path)
    variant = write_variant(tmp_path, "gta5_to_cityscapes/dacs.yaml",
                            "data.source_augmentation.crop: null")
    with pytest.raises(ValueError, match="same size"):
        build(variant, tmp_path)
