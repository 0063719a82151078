"""Run comparison: seeds of one configuration are averaged; other configurations, iteration
counts and evaluation-only runs are kept apart; run folders are named after their config."""

from __future__ import annotations

import csv
import io
import json
import re

import cv2
import pytest
import torch
import yaml

from tests.helpers import CONFIGS, write_config
from udaseg.report.compare import collect, group, paired_differences, summarize
from udaseg.runtime.cli import command_line_configs, report, run_name
from udaseg.runtime.cli import main as udaseg
from udaseg.runtime.hardware import cpu_info
from udaseg.runtime.provenance import git_state


def write(root, name, version, miou, road, *, seed=0, iteration=600, command="fit",
          lambda_adv=0.01, stage="test", provenance=None):
    folder = root / name / version
    folder.mkdir(parents=True)
    result = {"iteration": iteration, "command": command, "mIoU": miou, "IoU/road": road}
    if provenance is not None:
        result["provenance"] = provenance
    (folder / f"{stage}_metrics.json").write_text(json.dumps(result))
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


def test_runs_saved_before_an_option_existed_join_the_one_row_they_agree_with(tmp_path):
    """A config without a setting (saved by a version before it) is seeds with the runs that
    agree on everything else; once the setting is varied, which row it belongs to is unknown."""
    def add_option(seed, value):
        config_file = tmp_path / "advent" / f"seed{seed}" / "config.yaml"
        config = yaml.safe_load(config_file.read_text())
        config["data"]["target_augmentation"] = {"cat_max_ratio": value}
        config_file.write_text(yaml.safe_dump(config))

    for seed in range(3):
        write(tmp_path, "advent", f"seed{seed}", 40.0 + seed, 80.0, seed=seed)
    add_option(1, None)
    add_option(2, None)
    rows = {row[0]: row[1] for row in summarize(group(collect(tmp_path, "test")), False)[1]}
    assert rows == {"advent": "3"}
    write(tmp_path, "advent", "seed3", 30.0, 70.0, seed=3)
    add_option(3, 0.75)
    rows = {row[0]: row[1] for row in summarize(group(collect(tmp_path, "test")), False)[1]}
    assert rows == {"advent [cat_max_ratio=-]": "1", "advent [cat_max_ratio=null]": "2",
                    "advent [cat_max_ratio=0.75]": "1"}


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


def test_stage_one_runs_kept_elsewhere_still_name_their_run(tmp_path):
    """Result files copied into a repository (no stage-1 run folder beside them) group as
    they did in the runs folder."""
    for seed in (0, 1):
        write(tmp_path, "cim", f"seed{seed}", 25.0 + seed, 50.0, seed=seed)
        config_file = tmp_path / "cim" / f"seed{seed}" / "config.yaml"
        config = yaml.safe_load(config_file.read_text())
        config["model"]["init_args"]["weights"] = {
            "init_checkpoint": f"/elsewhere/fit/tufl/seed{seed}/checkpoints/last.ckpt"}
        config_file.write_text(yaml.safe_dump(config))
    assert list(group(collect(tmp_path, "test"))) == ["cim"]


def test_paired_differences_pair_seeds_of_one_machine_type(tmp_path, capsys):
    epyc = {"cpu": "AMD EPYC", "cpu_cores": 2, "cpu_native_bf16": True,
            "git_commit": "0123456789abcdef" * 2 + "01234567", "git_dirty": False}
    avx2 = {**epyc, "cpu": "Intel Xeon", "cpu_native_bf16": False}
    for seed, (base, method) in enumerate(((30.0, 34.0), (32.0, 33.0), (28.0, 35.0))):
        write(tmp_path, "source_only", f"seed{seed}", base, 60.0, seed=seed,
              provenance={**epyc, "seed": seed})
        write(tmp_path, "dacs", f"seed{seed}", method, 60.0 + seed, seed=seed,
              provenance={**epyc, "seed": seed})
    # Same seed, another CPU type: its kernels round differently, so it pairs with nothing.
    write(tmp_path, "dacs", "seed0_xeon", 40.0, 70.0, seed=0, provenance={**avx2, "seed": 0})
    groups = group(collect(tmp_path, "test"))
    assert {label: len(runs) for label, runs in groups.items()} == {"dacs": 4, "source_only": 3}
    header, rows = paired_differences(groups, "source_only", per_class=True, provenance=True)
    assert header == ["run", "paired seeds", "mIoU per seed", "machine", "commit", "mIoU",
                      "road"]
    # Differences +4, +1, +7: mean +4.0, standard error 3 / sqrt(3) = 1.7; road +0, +1, +2.
    assert rows == [["dacs", "0, 1, 2", "+4.00 / +1.00 / +7.00",
                     "AMD EPYC, 2 cores, native bf16", "0123456", "+4.0 ± 1.7", "+1.0 ± 0.6"]]
    assert "for dacs seed 0: left out of the paired differences" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--paired oracle: no row of that name"):
        paired_differences(groups, "oracle", per_class=False)


def test_paired_differences_use_the_benchmarks_own_miou(tmp_path):
    for name, value in (("source_only", 40.0), ("advent", 43.5)):
        folder = tmp_path / name / "seed0"
        folder.mkdir(parents=True)
        (folder / "test_metrics.json").write_text(json.dumps(
            {"iteration": 9, "command": "test", "IoU/road": value, "mIoU-19": value,
             "provenance": {"seed": 0, "cpu": "x"}}))
    header, rows = paired_differences(group(collect(tmp_path, "test")), "source_only", True)
    assert header[2] == "mIoU-19 per seed" and rows[0][2] == "+3.50"


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
    result = json.loads((evaluated / "val_metrics.json").read_text())
    assert result["command"] == "validate"
    # Where the number came from: the command, the seed, the code and the machine type.
    origin = result["provenance"]
    assert origin["command_line"] == (f"udaseg validate --config {config} --ckpt_path "
                                      f"{fitted / 'checkpoints' / 'last.ckpt'}")
    assert origin["seed"] == saved["seed_everything"] and origin["cpu"] == cpu_info().model
    assert origin["cpu_native_bf16"] == cpu_info().native_bf16
    assert origin["threads"] == torch.get_num_threads()
    assert origin["git_commit"] == git_state()["git_commit"]
    assert re.fullmatch(r"[0-9a-f]{40}", origin["git_commit"] or "")
    assert collect(evaluated, "val")[0].provenance == origin
    # `--ckpt_path last` evaluates the config's latest training run (Lightning would look in
    # the evaluation's new folder and evaluate untrained weights); the recorded seed is the
    # one the weights were trained with, not the evaluation's.
    udaseg(["validate", "--config", str(config), "--ckpt_path", "last", "--seed_everything", "3"])
    again = json.loads((evaluated.parent / "version_1" / "val_metrics.json").read_text())
    assert again["iteration"] == 2 and again["provenance"]["seed"] == saved["seed_everything"]
    assert again["mIoU"] == result["mIoU"]
    (tmp_path / "other").mkdir()
    untrained = write_config(tmp_path / "other", max_steps=2, name=None)
    with pytest.raises(SystemExit) as stopped:
        udaseg(["test", "--config", str(untrained), "--ckpt_path", "last"])
    assert stopped.value.code == 1


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
