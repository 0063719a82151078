"""Bad input through the real CLI (or the trainer): a one-line error that names the file or key
and what was expected, and nothing half-written. The dataset loaders' own errors (root missing
or empty, image without label, unreadable file, ids beyond the label table) are tested with
each loader (tests/test_gta5.py, test_cityscapes.py, test_synthia.py, test_crosscity.py)."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import pytorch_lightning as pl
import yaml

from tests.helpers import (
    TINY_IMAGES,
    TinyDataset,
    fit,
    make_gta5_root,
    run_dir,
    tiny_data,
    tiny_method,
    write_config,
    write_rgb,
)
from udaseg.checkpoint_io import CheckpointError, SafeCheckpointIO
from udaseg.cli import main
from udaseg.data import IGNORE_INDEX, SyntheticStreets, UDADataModule
from udaseg.methods import CLAN, AdvEnt
from udaseg.models import DeepLabV2, DualClassifierDeepLab


def test_a_truncated_image_met_in_a_dataloader_worker_is_named_in_one_line(tmp_path):
    root = make_gta5_root(tmp_path / "GTA5")
    broken = root / "images" / "00002.png"
    broken.write_bytes(broken.read_bytes()[:40])
    config = write_config(tmp_path, max_steps=4)
    settings = yaml.safe_load(config.read_text())

    def gta5(**init_args) -> dict:
        return {"class_path": "udaseg.data.GTA5", "init_args": {"root": str(root), **init_args}}

    settings["data"] = {"source": gta5(), "target": gta5(with_labels=False), "val": gta5(),
                        "batch_size": 1, "num_workers": 1}
    config.write_text(yaml.safe_dump(settings))
    with pytest.raises(OSError) as raised:
        main(["fit", "--config", str(config)])
    message = str(raised.value)
    assert message.startswith(f"cannot read image file {broken}")
    assert message.endswith("(in DataLoader worker 0)") and "\n" not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert not list(tmp_path.rglob("*.ckpt")), "no checkpoint of a run that never trained"


def test_fit_without_max_steps_is_refused_before_anything_is_written(tmp_path):
    config = write_config(tmp_path)
    with pytest.raises(ValueError, match=r"udaseg fit needs a length in iterations: set "
                       r"trainer\.max_steps"):
        main(["fit", "--config", str(config), "--trainer.max_steps", "-1"])
    assert not (tmp_path / "runs").exists()


def test_a_misspelt_config_key_is_named(tmp_path, capsys):
    config = write_config(tmp_path, method="udaseg.methods.AdvEnt")
    settings = yaml.safe_load(config.read_text())
    settings["model"]["init_args"]["lamda_adv_main"] = 0.01      # lambda_adv_main
    config.write_text(yaml.safe_dump(settings))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "'lamda_adv_main' is not accepted" in error and "udaseg.methods.AdvEnt" in error
    assert not (tmp_path / "runs").exists()


def test_an_eval_batch_larger_than_the_dataset_evaluates_every_image_once(tmp_path):
    config = write_config(tmp_path, max_steps=1)
    main(["fit", "--config", str(config)])
    main(["validate", "--config", str(config), "--data.eval_batch_size", "16", "--ckpt_path",
          str(run_dir(tmp_path, 0) / "checkpoints" / "last.ckpt")])
    result = json.loads((run_dir(tmp_path, 1) / "val_metrics.json").read_text())
    labels = [SyntheticStreets("real", "val", 4, **TINY_IMAGES)[index]["label"]
              for index in range(4)]
    assert sum(map(sum, result["confusion_matrix"])) == \
        sum(int((label != IGNORE_INDEX).sum()) for label in labels)


@pytest.fixture(scope="module")
def advent_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("advent") / "advent.ckpt"
    fit(tiny_method(AdvEnt), 1).save_checkpoint(path)
    return path


def three_class_data() -> UDADataModule:
    return UDADataModule(source=TinyDataset(4, "s"), target=TinyDataset(4, "t"), batch_size=2)


@pytest.mark.parametrize("build, data, expected", [
    (lambda: AdvEnt(num_classes=3, class_names=["a", "b", "c"], discriminator_width=8,
                    segmenter=functools.partial(DeepLabV2, depth=18, width=8)),
     three_class_data, r"was trained for 9 classes, this run has 3 \(AdvEnt\): 18 tensors of "
                       r"other shapes, e\.g\. segmenter\.layer5\.conv2d_list\.0\.bias \(9,\) vs "
                       r"\(3,\)"),
    (lambda: tiny_method(CLAN, segmenter=functools.partial(DualClassifierDeepLab, depth=18,
                                                           width=8)),
     tiny_data, r"holds another network \(DeepLabV2\) than this run's DualClassifierDeepLab "
                r"\(CLAN\): 4 tensors of other shapes, e\.g\. segmenter\.layer5\..* vs .*; "
                r"10 unexpected tensors, e\.g\. discriminators\.aux"),
], ids=["class_count", "architecture"])
def test_resuming_from_a_checkpoint_of_another_model_names_the_file(advent_checkpoint, build,
                                                                     data, expected):
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", plugins=[SafeCheckpointIO()])
    with pytest.raises(CheckpointError, match=rf"checkpoint {advent_checkpoint} {expected}"):
        trainer.fit(build(), data(), ckpt_path=str(advent_checkpoint))


def test_predict_names_a_broken_image_and_skips_other_files(tmp_path):
    config = write_config(tmp_path, max_steps=1)
    main(["fit", "--config", str(config)])
    folder = tmp_path / "photos"
    write_rgb(folder / "a.png", np.zeros((32, 64, 3), np.uint8))
    (folder / "notes.txt").write_text("not an image, and not a *.png either")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(OSError, match=rf"cannot read image file {folder / 'b.png'}"):
        main(["predict", "--config", str(config), "--data.predict", "udaseg.data.ImageFolder",
              "--data.predict.root", str(folder), "--predictions.output_dir",
              str(tmp_path / "out"), "--ckpt_path",
              str(run_dir(tmp_path, 0) / "checkpoints" / "last.ckpt")])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_evaluating_with_other_settings_than_the_checkpoint_names_them(tmp_path):
    """The config decides the model (Lightning's CLI would read the checkpoint's settings
    over it): a checkpoint trained with discriminator width 8, validated with the default 64,
    is refused with the file named."""
    config = write_config(tmp_path, method="udaseg.methods.AdvEnt", max_steps=1)
    main(["fit", "--config", str(config), "--model.init_args.discriminator_width", "8"])
    checkpoint = run_dir(tmp_path, 0) / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match=rf"checkpoint {checkpoint} was trained with other "
                       r"model settings than this run's \(AdvEnt\): 18 tensors of other "
                       r"shapes, e\.g\. discriminators\.aux\.0\.bias \(8,\) vs \(64,\)"):
        main(["validate", "--config", str(config), "--ckpt_path", str(checkpoint)])
