"""Run comparison: seeds of one configuration are averaged; other configurations, iteration
counts and evaluation-only runs are kept apart; run folders are named after their config."""

from __future__ import annotations

import csv
import io
import json

import cv2
import pytest
import yaml

from tests.helpers import CONFIGS, write_config
from udaseg.report.compare import collect, group, summarize
from udaseg.runtime.cli import command_line_configs, report, run_name
from udaseg.runtime.cli import main as udaseg


def write(root, name, version, miou, road, *, seed=0, iteration=600, command="fit",
          lambda_adv=0.01, stage="test"):
    folder = root / name / version
    folder.mkdir(parents=True)
    (folder / f"{stage}_metrics.json").write_text(json.dumps(
        {"iteration": iteration, "command": command, "mIoU": miou, "IoU/road": road}))
    config = {"seed_everything": seed, "data": {"seed": seed, "batch_size": 8},
              "trainer": {"max_steps": iteration, "logger": {"init_args": {"version": version}}},
              "model": {"class_path": "udaseg.methods.AdvEnt",
                        "init_args": {"lambda_adv_main": lambda_adv}}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))


def test_groups_seeds_and_reports_mean_and_std(tmp_path, capsys):
    write(tmp_path, "advent", "seed0", 40.0, 80.0, seed=0)
    write(tmp_path, "advent", "seed1", 42.0, 82.0, seed=1)
    write(tmp_path, "source_only", "seed0", 30.0, 70.0)
    header, rows = summarize(group(collect(tmp_path, "test")), per_class=True)
    assert header == ["run", "seeds", "iterations", "mIoU", "road"]
    assert rows == [["advent", "2", "600", "41.0 ± 1.4", "81.0 ± 1.4"],
                    ["source_only", "1", "600", "30.0", "70.0"]]
    report([str(tmp_path), "--markdown"])
    assert "| advent | 2 | 600 | 41.0 ± 1.4 |" in capsys.readouterr().out


def test_other_hyperparameters_iterations_and_evaluations_are_never_seeds(tmp_path, capsys):
    runs = tmp_path / "runs"
    write(runs, "synthetic/advent", "version_0", 16.0, 40.0, iteration=20, stage="val")
    write(runs, "synthetic/advent", "version_1", 18.0, 42.0, iteration=40, stage="val")
    write(runs, "synthetic/advent", "version_2", 20.0, 44.0, iteration=60, stage="val")
    write(runs, "synthetic/advent", "version_3", 21.0, 45.0, iteration=60, seed=1, stage="val")
    write(runs, "synthetic/advent", "version_4", 10.0, 30.0, iteration=60, lambda_adv=0.1,
          stage="val")
    write(runs, "synthetic/advent", "version_5", 20.0, 44.0, iteration=60, command="validate",
          stage="val")
    report([str(runs), "--stage", "val"])
    captured = capsys.readouterr()
    assert "different iterations [20, 40, 60]" in captured.err
    rows = {row[0]: [row[1], row[3]]
            for row in summarize(group(collect(runs, "val")), False)[1]}
    assert rows == {
        "synthetic/advent [fit, 20 it]": ["1", "16.0"],
        "synthetic/advent [fit, 40 it]": ["1", "18.0"],
        "synthetic/advent [fit, 60 it, lambda_adv_main=0.01]": ["2", "20.5 ± 0.7"],
        "synthetic/advent [fit, 60 it, lambda_adv_main=0.1]": ["1", "10.0"],
        "synthetic/advent [validate, 60 it]": ["1", "20.0"],
    }


def test_seeds_started_from_their_own_stage_one_run_share_a_row(tmp_path):
    """CIM seed k starts from TUFL seed k: the start checkpoints differ only by seed, so they
    are one experiment; starting from another stage-1 method is a different one."""
    for seed in (0, 1):
        write(tmp_path, "tufl", f"seed{seed}", 20.0, 40.0, seed=seed)
        write(tmp_path, "minent", f"seed{seed}", 18.0, 40.0, seed=seed)
    for seed, stage_one in ((0, "tufl"), (1, "tufl"), (2, "minent")):
        write(tmp_path, "cim", f"seed{seed}", 25.0 + seed, 50.0, seed=seed)
        config_file = tmp_path / "cim" / f"seed{seed}" / "config.yaml"
        config = yaml.safe_load(config_file.read_text())
        checkpoint = tmp_path / stage_one / f"seed{seed % 2}" / "checkpoints" / "last.ckpt"
        config["model"]["init_args"]["weights"] = {"init_checkpoint": str(checkpoint)}
        config_file.write_text(yaml.safe_dump(config))
    rows = {row[0]: [row[1], row[3]]
            for row in summarize(group(collect(tmp_path, "test")), False)[1]}
    assert rows["cim [init_checkpoint=\"run:tufl\"]"] == ["2", "25.5 ± 0.7"]
    assert rows["cim [init_checkpoint=\"run:minent\"]"] == ["1", "27.0"]


def test_the_folder_of_one_run_name_is_accepted(tmp_path, capsys):
    write(tmp_path / "runs", "lightning_logs", "version_0", 12.0, 30.0, stage="val")
    write(tmp_path / "runs", "lightning_logs", "version_1", 14.0, 34.0, seed=1, stage="val")
    report([str(tmp_path / "runs" / "lightning_logs"), "--stage", "val", "--markdown"])
    assert "| lightning_logs | 2 | 600 | 13.0 ± 1.4 |" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no test_metrics.json under"):
        collect(tmp_path / "runs", "test")


def test_runs_are_named_after_their_config_and_evaluations_kept_apart(tmp_path, monkeypatch):
    benchmark = tmp_path / "my_benchmark"
    benchmark.mkdir()
    config = write_config(benchmark, max_steps=2, name=None)
    monkeypatch.chdir(tmp_path)
    udaseg(["fit", "--config", str(config)])
    fitted = benchmark / "runs" / "my_benchmark" / "tiny" / "version_0"
    assert (fitted / "val_metrics.json").is_file() and (fitted / "config.yaml").is_file()
    saved = yaml.safe_load((fitted / "config.yaml").read_text())
    assert saved["trainer"]["logger"]["init_args"]["name"] == "my_benchmark/tiny"
    udaseg(["validate", "--config", str(config),
            "--ckpt_path", str(fitted / "checkpoints" / "last.ckpt")])
    evaluated = benchmark / "runs" / "my_benchmark" / "tiny-validate" / "version_0"
    assert json.loads((evaluated / "val_metrics.json").read_text())["command"] == "validate"


def test_a_shipped_config_plus_overlay_names_its_run():
    configs = command_line_configs([
        "fit", "--config", str(CONFIGS / "cityscapes_to_crosscity" / "maxsquare.yaml"),
        "--config=" + str(CONFIGS / "cityscapes_to_crosscity" / "cities" / "tokyo.yaml")])
    assert run_name(configs, "fit") == "cityscapes_to_crosscity/maxsquare+tokyo"
    assert run_name(configs, "test") == "cityscapes_to_crosscity/maxsquare+tokyo-test"
    assert run_name([], "fit") is None


def write_history(folder, miou_by_iteration):
    """A CSV logger's metrics.csv: a training row per iteration, a validation row after some
    (Lightning logs the validation after iteration i as step i - 1)."""
    lines = ["step,train/seg,val/mIoU,val/IoU/road"]
    for iteration in range(1, max(miou_by_iteration) + 1):
        lines.append(f"{iteration - 1},1.0,,")
        if iteration in miou_by_iteration:
            lines.append(f"{iteration - 1},,{miou_by_iteration[iteration]},50.0")
    (folder / "metrics.csv").write_text("\r\n".join(lines) + "\r\n")


def test_report_formats_roots_best_validation_and_figures(tmp_path, capsys):
    write(tmp_path / "a", "advent", "seed0", 40.0, 80.0, seed=0, stage="val")
    write(tmp_path / "a", "advent", "seed1", 42.0, 82.0, seed=1, stage="val")
    write(tmp_path / "b", "source_only_x", "seed0", 30.0, 70.0, stage="val")
    write_history(tmp_path / "a" / "advent" / "seed0", {200: 35.0, 400: 44.0, 600: 40.0})
    write_history(tmp_path / "a" / "advent" / "seed1", {200: 36.0, 400: 41.0, 600: 42.0})
    roots = [str(tmp_path / "a"), str(tmp_path / "b")]
    udaseg(["report", *roots, "--stage", "val", "--best", "--format", "csv"])
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["run", "seeds", "iterations", "mIoU"]
    assert rows[1] == ["advent", "2", "600", "41.0 ± 1.4"]
    # Seed 0 peaked at iteration 400 (44), seed 1 at its last (42): labelled an oracle pick.
    assert rows[2] == ["advent [best val checkpoint: oracle]", "2", "400/600", "43.0 ± 1.4"]
    assert rows[3] == ["source_only_x", "1", "600", "30.0"]        # the second root
    report([*roots, "--stage", "val", "--per-class", "--format", "latex"])
    latex = capsys.readouterr().out
    assert latex.startswith("\\begin{tabular}{lrrrr}") and "\\toprule" in latex
    assert "source\\_only\\_x & 1 & 600 & 30.0 & 70.0 \\\\" in latex
    assert "41.0 $\\pm$ 1.4" in latex
    figures = tmp_path / "figures"
    report([*roots, "--stage", "val", "--plots", str(figures)])
    written = sorted(path.name for path in figures.iterdir())
    assert written == ["val_iou_per_class.png", "val_miou_curves.png"]   # no confusion saved
    for name in written:
        image = cv2.imread(str(figures / name))
        assert image is not None and image.shape[0] > 200 and image.shape[1] > 300


def test_confusion_figures_come_from_the_result_files(tmp_path):
    write(tmp_path, "advent", "seed0", 40.0, 80.0, stage="val")
    metrics_file = tmp_path / "advent" / "seed0" / "val_metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["confusion_matrix"] = [[90, 10], [30, 70]]
    metrics_file.write_text(json.dumps(metrics))
    runs = collect(tmp_path, "val")
    assert runs[0].confusion == [[90, 10], [30, 70]] and "confusion_matrix" not in runs[0].metrics
    report([str(tmp_path), "--stage", "val", "--plots", str(tmp_path / "figures")])
    heatmap = cv2.imread(str(tmp_path / "figures" / "val_confusion_advent.png"))
    assert heatmap is not None and heatmap.shape[0] > 300
