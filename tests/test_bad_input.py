"""Bad input through the real CLI (or the trainer): a one-line error that names the file or key
and what was expected, and nothing half-written. The dataset loaders' own errors (root missing
or empty, image without label, unreadable file, ids beyond the label table) are tested with
each loader (tests/test_gta5.py, test_cityscapes.py, test_synthia.py, test_crosscity.py)."""

from __future__ import annotations

import functools
import json
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import yaml

from tests.helpers import (
    REPO,
    TINY_IMAGES,
    TinyDataset,
    cli_error,
    fit,
    make_gta5_root,
    run_dir,
    tiny_data,
    tiny_method,
    write_config,
    write_rgb,
)
from udaseg.data import IGNORE_INDEX, SyntheticStreets, UDADataModule
from udaseg.methods import CLAN, AdvEnt
from udaseg.models import DeepLabV2, DualClassifierDeepLab
from udaseg.runtime.checkpoint_io import CheckpointError, SafeCheckpointIO
from udaseg.runtime.cli import main


def test_a_truncated_image_met_in_a_dataloader_worker_is_named_in_one_line(tmp_path, capsys):
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
    message = cli_error(capsys, ["fit", "--config", str(config)])
    assert message.startswith(f"udaseg fit: error: cannot read image file {broken}")
    assert message.endswith("(in DataLoader worker 0)")
    assert not list(tmp_path.rglob("*.ckpt")), "no checkpoint of a run that never trained"


def test_fit_without_max_steps_is_refused_before_anything_is_written(tmp_path, capsys):
    config = write_config(tmp_path)
    assert "udaseg fit needs a length in iterations: set trainer.max_steps" in \
        cli_error(capsys, ["fit", "--config", str(config), "--trainer.max_steps", "-1"])
    assert not (tmp_path / "runs").exists()


def test_a_misspelt_config_key_is_named(tmp_path, capsys):
    config = write_config(tmp_path, method="udaseg.methods.AdvEnt")
    settings = yaml.safe_load(config.read_text())
    settings["model"]["init_args"]["lamda_adv_main"] = 0.01      # lambda_adv_main
    config.write_text(yaml.safe_dump(settings))
    error = cli_error(capsys, ["fit", "--config", str(config)], exit_code=2)
    assert error == ("udaseg fit: error: Parser key \"model\": Problem with given class_path "
                     "'udaseg.methods.AdvEnt': Option 'lamda_adv_main' is not accepted")
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


def test_predict_names_a_broken_image_and_skips_other_files(tmp_path, capsys):
    config = write_config(tmp_path, max_steps=1)
    main(["fit", "--config", str(config)])
    folder = tmp_path / "photos"
    write_rgb(folder / "a.png", np.zeros((32, 64, 3), np.uint8))
    (folder / "notes.txt").write_text("not an image, and not a *.png either")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert f"cannot read image file {folder / 'b.png'}" in cli_error(capsys, [
        "predict", "--config", str(config), "--data.predict", "udaseg.data.ImageFolder",
        "--data.predict.root", str(folder), "--predictions.output_dir", str(tmp_path / "out"),
        "--ckpt_path", str(run_dir(tmp_path, 0) / "checkpoints" / "last.ckpt")])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_evaluating_with_other_settings_than_the_checkpoint_names_them(tmp_path, capsys):
    """The config decides the model (Lightning's CLI would read the checkpoint's settings
    over it): a checkpoint trained with discriminator width 8, validated with the default 64,
    is refused with the file named."""
    config = write_config(tmp_path, method="udaseg.methods.AdvEnt", max_steps=1)
    main(["fit", "--config", str(config), "--model.init_args.discriminator_width", "8"])
    checkpoint = run_dir(tmp_path, 0) / "checkpoints" / "last.ckpt"
    assert cli_error(capsys, ["validate", "--config", str(config), "--ckpt_path",
                              str(checkpoint)]).endswith(
        f"checkpoint {checkpoint} was trained with other model settings than this run's "
        "(AdvEnt): 18 tensors of other shapes, e.g. discriminators.aux.0.bias (8,) vs (64,)")


# ------------------------------------------------------------------ a new user's mistakes
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 1-iteration fit of the tiny config: its folder, config and last.ckpt."""
    root = tmp_path_factory.mktemp("trained")
    config = write_config(root, max_steps=1)
    main(["fit", "--config", str(config)])
    folder = run_dir(root, 0)
    return SimpleNamespace(root=root, config=config, folder=folder,
                           checkpoint=folder / "checkpoints" / "last.ckpt")


def test_help_says_what_udaseg_is_and_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "unsupervised domain adaptation of semantic segmentation" in text
    assert "Lightning Trainer command line tool" not in text
    for subcommand in ("fit", "validate", "test", "predict", "report"):
        assert f" {subcommand} " in text, subcommand


@pytest.mark.parametrize("arguments, exit_code, expected", [
    (["fit", "--config", "configs/synthetic/sourceonly.yaml"], 2,
     "udaseg fit: error: config file {repo}/configs/synthetic/sourceonly.yaml not found"),
    (["fitt", "--config", "configs/synthetic/source_only.yaml"], 2,
     "udaseg fitt: error: argument subcommand: invalid choice: 'fitt' (choose from 'fit', "
     "'validate', 'test', 'predict', 'report')"),
    (["fit", "--config", "{config}", "--model", "udaseg.methods.Advent"], 2,
     "udaseg fit: error: Parser key \"model\": Problem with given class_path "
     "'udaseg.methods.Advent': module 'udaseg.methods' has no attribute 'Advent'"),
    (["test", "--config", "{config}", "--ckpt_path", "{folder}/checkpoints/lst.ckpt"], 1,
     "udaseg test: error: --ckpt_path {folder}/checkpoints/lst.ckpt: no such checkpoint file "
     "(a run keeps runs/<name>/version_N/checkpoints/last.ckpt)"),
    (["report", "{root}/runz"], 1,
     "udaseg report: error: {root}/runz is not a folder: give runs/, one run's folder (e.g. "
     "runs/synthetic/source_only) or one version of it"),
], ids=["misspelt_config", "misspelt_subcommand", "misspelt_method", "misspelt_checkpoint",
        "misspelt_run_folder"])
def test_a_misspelt_path_or_name_is_one_line(trained_run, capsys, monkeypatch, arguments,
                                            exit_code, expected):
    monkeypatch.chdir(REPO)
    names = {"repo": REPO, "config": trained_run.config, "folder": trained_run.folder,
             "root": trained_run.root}
    arguments = [argument.format(**names) for argument in arguments]
    assert cli_error(capsys, arguments, exit_code) == expected.format(**names)


def test_report_of_a_folder_without_test_metrics_says_what_it_found_and_what_to_do(
        trained_run, capsys):
    """Right after the quick start's `udaseg fit`, `udaseg report runs` (test metrics by
    default) finds only the fit's validation results."""
    runs = trained_run.root / "runs"
    message = cli_error(capsys, ["report", str(runs)])
    assert message == (
        f"udaseg report: error: no test_metrics.json under {runs}: found 1 val_metrics.json of "
        f"training runs (e.g. {trained_run.folder}). Evaluate a run on the test split first: "
        f"udaseg test --config CONFIG.yaml --ckpt_path {trained_run.checkpoint}; or report the "
        "validation results with --stage val")
    empty = trained_run.root / "empty"
    empty.mkdir(exist_ok=True)
    assert cli_error(capsys, ["report", str(empty), "--stage", "val"]).endswith(
        "it holds no finished udaseg run (`udaseg fit` writes val_metrics.json when it ends, "
        "`udaseg test` test_metrics.json)")


def test_a_checkpoint_of_another_method_or_class_count_is_one_line(trained_run, tmp_path,
                                                                    capsys):
    other_method = cli_error(capsys, [
        "test", "--config", str(trained_run.config), "--ckpt_path", str(trained_run.checkpoint),
        "--model", "udaseg.methods.AdvEnt"])
    assert other_method.startswith(f"udaseg test: error: checkpoint {trained_run.checkpoint} "
                                   "was trained by another method (SourceOnly) than this run's "
                                   "(AdvEnt): 20 tensors missing, e.g. discriminators.aux")
    settings = yaml.safe_load(trained_run.config.read_text())
    settings["data"]["val"] = {"class_path": "tests.helpers.TinyDataset",
                               "init_args": {"size": 2, "prefix": "v"}}
    settings["data"]["source"] = settings["data"]["val"]
    settings["data"]["target"] = None
    three_classes = tmp_path / "three_classes.yaml"
    three_classes.write_text(yaml.safe_dump(settings))
    other_classes = cli_error(capsys, ["validate", "--config", str(three_classes),
                                       "--ckpt_path", str(trained_run.checkpoint)])
    assert other_classes.startswith(f"udaseg validate: error: checkpoint "
                                    f"{trained_run.checkpoint} was trained for 9 classes, this "
                                    "run has 3 (SourceOnly)")


def test_a_config_of_another_benchmark_names_its_missing_dataset(trained_run, tmp_path,
                                                                  capsys, monkeypatch):
    """Evaluating a built-in-benchmark run with a GTA5->Cityscapes config on a machine without
    Cityscapes: the dataset root is named, with the expected layout."""
    monkeypatch.setenv("UDASEG_DATA_ROOT", str(tmp_path / "data"))
    message = cli_error(capsys, [
        "test", "--config", str(REPO / "configs" / "gta5_to_cityscapes" / "source_only.yaml"),
        "--ckpt_path", str(trained_run.checkpoint)])
    assert message.startswith(f"udaseg test: error: GTA5: dataset root {tmp_path}/data/GTA5 "
                              "does not exist or is not a folder; expected ")


def test_a_data_root_without_the_dataset_is_one_line(trained_run, tmp_path, capsys):
    empty = tmp_path / "GTA5"
    (empty / "images").mkdir(parents=True)
    message = cli_error(capsys, ["fit", "--config", str(trained_run.config), "--data.source",
                                 "udaseg.data.GTA5", "--data.source.init_args.root", str(empty)])
    assert message.startswith("udaseg fit: error: GTA5: ") and str(empty) in message


class BrokenSegmenter(DeepLabV2):
    """A user's network with a bug of its own: its error keeps its traceback."""

    def forward(self, images):
        raise ValueError("a bug in the user's network")


def test_an_error_outside_udaseg_keeps_its_traceback(trained_run, monkeypatch):
    broken = ["fit", "--config", str(trained_run.config), "--model.init_args.segmenter",
              "tests.test_bad_input.BrokenSegmenter", "--model.init_args.segmenter.depth", "18",
              "--model.init_args.segmenter.width", "8"]
    with pytest.raises(ValueError, match="a bug in the user's network"):
        main(broken)
    monkeypatch.setenv("UDASEG_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError, match="dataset root"):
        main(["fit", "--config", str(trained_run.config), "--data.source", "udaseg.data.GTA5",
              "--data.source.init_args.root", str(trained_run.root / "nothing")])
