"""The `udaseg` CLI end to end on a tiny built-in benchmark config (running is the feature)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import wandb
import yaml

from tests.helpers import write_config
from udaseg.cli import main


def logged_val_miou(run_dir: Path) -> float:
    with open(run_dir / "metrics.csv") as stream:
        values = [row["val/mIoU"] for row in csv.DictReader(stream) if row.get("val/mIoU")]
    return float(values[-1])


def test_fit_writes_checkpoint_metrics_and_config_then_validate_reproduces(tmp_path):
    config = write_config(tmp_path)
    main(["fit", "--config", str(config)])
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed_everything"] == 7
    hparams = yaml.unsafe_load((run_dir / "hparams.yaml").read_text())
    assert hparams["num_classes"] == 9, "num_classes is linked from the data"
    assert hparams["class_names"][-1] == "traffic sign"
    result = json.loads((run_dir / "val_metrics.json").read_text())
    assert result["iteration"] == 4, "the run ends with a validation after its last iteration"
    fit_miou = logged_val_miou(run_dir)
    assert result["mIoU"] == pytest.approx(fit_miou, abs=1e-4)

    main(["validate", "--config", str(config), "--ckpt_path", str(checkpoint)])
    validated = json.loads((tmp_path / "runs" / "tiny" / "version_1" /
                            "val_metrics.json").read_text())
    assert validated["iteration"] == 4
    assert validated["mIoU"] == pytest.approx(fit_miou, abs=1e-4)


def test_overrides_change_the_run(tmp_path):
    config = write_config(tmp_path)
    main(["fit", "--config", str(config), "--trainer.max_steps", "2",
          "--data.batch_size", "1"])
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["trainer"]["max_steps"] == 2 and saved["data"]["batch_size"] == 1
    assert json.loads((run_dir / "val_metrics.json").read_text())["iteration"] == 2


def test_print_config_shows_the_resolved_method(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(write_config(tmp_path)), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "udaseg.methods.SourceOnly"
    assert printed["model"]["init_args"]["optim"]["lr"] == 0.01


def test_ensemble_validate_averages_checkpoints(tmp_path):
    config = write_config(tmp_path, max_steps=2)
    main(["fit", "--config", str(config)])
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    checkpoint = str(run_dir / "checkpoints" / "last.ckpt")
    single = json.loads((run_dir / "val_metrics.json").read_text())["mIoU"]
    main(["validate", "--config", str(config), "--model", "udaseg.methods.Ensemble",
          "--model.checkpoints", f"[{checkpoint}, {checkpoint}]"])
    ensemble = json.loads((tmp_path / "runs" / "tiny" / "version_1" /
                           "val_metrics.json").read_text())["mIoU"]
    assert ensemble == pytest.approx(single, abs=1e-4), "two copies of a model == the model"


def test_ensemble_of_clan_checkpoints_builds_dual_classifier_members(tmp_path):
    config = write_config(tmp_path, method="udaseg.methods.CLAN", max_steps=2,
                          segmenter={"class_path": "udaseg.models.DualClassifierDeepLab",
                                     "init_args": {"depth": 18, "width": 8}})
    main(["fit", "--config", str(config), "--model.init_args.discriminator_width", "8"])
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    checkpoint = str(run_dir / "checkpoints" / "last.ckpt")
    single = json.loads((run_dir / "val_metrics.json").read_text())["mIoU"]
    main(["validate", "--config", str(config), "--model", "udaseg.methods.Ensemble",
          "--model.checkpoints", f"[{checkpoint}, {checkpoint}]",
          "--model.segmenter", "udaseg.models.DualClassifierDeepLab",
          "--model.segmenter.depth", "18", "--model.segmenter.width", "8"])
    ensemble = json.loads((tmp_path / "runs" / "tiny" / "version_1" /
                           "val_metrics.json").read_text())["mIoU"]
    assert ensemble == pytest.approx(single, abs=1e-4)


def test_method_starts_from_another_runs_last_checkpoint(tmp_path):
    """MaxSquare's protocol: adapt a source-only run (weights only, via the config)."""
    config = write_config(tmp_path, max_steps=3)
    main(["fit", "--config", str(config)])
    source_dir = tmp_path / "runs" / "tiny" / "version_0"
    source_miou = json.loads((source_dir / "val_metrics.json").read_text())["mIoU"]
    start = ["--config", str(config), "--model", "udaseg.methods.MaxSquare",
             "--model.weights.init_checkpoint", str(source_dir / "checkpoints" / "last.ckpt")]
    main(["validate", *start])
    before_adaptation = json.loads((tmp_path / "runs" / "tiny" / "version_1" /
                                    "val_metrics.json").read_text())
    assert before_adaptation["mIoU"] == pytest.approx(source_miou, abs=1e-4)
    assert before_adaptation["iteration"] == 0, "weights only: no iterations carried over"
    main(["fit", *start, "--trainer.max_steps", "2"])
    adapted = json.loads((tmp_path / "runs" / "tiny" / "version_2" /
                          "val_metrics.json").read_text())
    assert adapted["iteration"] == 2, "a fresh schedule, not a resumed one"


def test_wandb_logger_offline_writes_the_run_locally(tmp_path):
    config = write_config(tmp_path, max_steps=2)
    main(["fit", "--config", str(config),
          "--trainer.logger", "pytorch_lightning.loggers.WandbLogger",
          "--trainer.logger.offline", "true", "--trainer.logger.project", "udaseg-test",
          "--trainer.logger.save_dir", str(tmp_path / "wb")])
    wandb.finish()  # in-process: flush the run as a finished CLI process would
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "offline mode keeps the run on disk for a later `wandb sync`"
    run_data = next(runs[0].glob("run-*.wandb")).read_bytes()
    assert b"val/IoU/road" in run_data and b"val/mIoU" in run_data


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_evaluating_untrained_weights_is_refused(tmp_path, command):
    config = write_config(tmp_path)
    with pytest.raises(ValueError, match=f"udaseg {command} has no trained weights to use: pass "
                       r"--ckpt_path .* or set model.init_args.weights.init_checkpoint"):
        main([command, "--config", str(config)])
    assert not list(tmp_path.rglob("*_metrics.json")), "nothing evaluated, nothing written"
