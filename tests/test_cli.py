"""The `udaseg` CLI end to end on a tiny built-in benchmark config (running is the feature)."""

from __future__ import annotations

import csv
import json
import re
import struct
import subprocess
import time
from pathlib import Path

import cv2
import pytest
import wandb
import yaml

from tests.helpers import REPO, cli_error, rgb_image, run_dir, write_config, write_rgb
from udaseg.data.streams import SameSizeBatchSampler
from udaseg.runtime import hardware
from udaseg.runtime.cli import main


def logged_val_miou(run_dir: Path) -> float:
    with open(run_dir / "metrics.csv") as stream:
        values = [row["val/mIoU"] for row in csv.DictReader(stream) if row.get("val/mIoU")]
    return float(values[-1])


def wandb_run_records(run: Path, *patterns: bytes, timeout: float = 30) -> bytes:
    """The records of an offline run's `.wandb` log, reassembled and joined.

    The file is a LevelDB-style log: a 7-byte file header, then 32 KiB blocks of chunks, each
    with a 7-byte header (CRC32, little-endian length, type: 1 full, 2 first, 3 middle, 4 last).
    A record that crosses a block boundary is split, so a raw byte search can miss a string;
    joining the chunks keeps every record contiguous. wandb's service process may still be
    writing when `finish()` returns (seen once in CI: only the header was there), so this
    waits, up to `timeout` seconds, until every regex in `patterns` matches.
    """
    run_file = next(run.glob("run-*.wandb"))
    block, header = 32768, 7
    deadline = time.monotonic() + timeout
    while True:
        data, position, records = run_file.read_bytes(), header, []
        while position + header <= len(data):
            if block - position % block < header:        # the rest of a block is padding
                position += block - position % block
                continue
            _, length, _ = struct.unpack("<IHB", data[position:position + header])
            records.append(data[position + header:position + header + length])
            position += header + length
        joined = b"".join(records)
        if all(re.search(pattern, joined) for pattern in patterns) or \
                time.monotonic() > deadline:
            return joined
        time.sleep(0.2)


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
    run_data = wandb_run_records(runs[0], rb"val/mIoU", rb"val/IoU/road")
    assert b"val/IoU/road" in run_data and b"val/mIoU" in run_data


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_evaluating_untrained_weights_is_refused(tmp_path, capsys, command):
    config = write_config(tmp_path)
    assert re.search(f"udaseg {command} has no trained weights to use: pass "
                     r"--ckpt_path .* or set model.init_args.weights.init_checkpoint",
                     cli_error(capsys, [command, "--config", str(config)]))
    assert not list(tmp_path.rglob("*_metrics.json")), "nothing evaluated, nothing written"


def test_wandb_runs_keep_every_file_in_their_own_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory either
    config = write_config(tmp_path, max_steps=2)
    for seed in (0, 1):
        main(["fit", "--config", str(config), "--seed_everything", str(seed),
              "--trainer.logger", "pytorch_lightning.loggers.WandbLogger",
              "--trainer.logger.offline", "true", "--trainer.logger.project", "udaseg-test",
              "--trainer.logger.save_dir", str(tmp_path / "wb"),
              "--trainer.callbacks+=udaseg.callbacks.EntropyMaps"])
        wandb.finish()
    runs = sorted(path for path in (tmp_path / "wb" / "udaseg-test").iterdir())
    assert len(runs) == 2, "one folder per W&B run id"
    seeds = set()
    for run in runs:
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert json.loads((run / "val_metrics.json").read_text())["iteration"] == 2
        assert len(list((run / "entropy_maps").glob("*.png"))) == 1
        seeds.add(yaml.safe_load((run / "config.yaml").read_text())["seed_everything"])
    assert seeds == {0, 1}, "the second run did not overwrite the first one's files"
    stray = [path.name for path in (tmp_path / "wb").iterdir() if path.is_file()]
    assert stray == [] and not (tmp_path / "entropy_maps").exists()


def test_predict_on_a_relative_folder_of_mixed_sizes(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path, max_steps=2)
    main(["fit", "--config", str(config)])
    checkpoint = str(run_dir(tmp_path, 0) / "checkpoints" / "last.ckpt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UDASEG_DATA_ROOT", str(tmp_path / "datasets"))
    sizes = {"a": (24, 40), "b": (32, 48), "c": (24, 40)}
    for name, (height, width) in sizes.items():
        write_rgb(tmp_path / "my_images" / f"{name}.png", rgb_image(height=height, width=width))
    predict = ["predict", "--config", str(config), "--ckpt_path", checkpoint,
               "--data.predict", "udaseg.data.ImageFolder", "--data.eval_batch_size", "2",
               "--predictions.output_dir", str(tmp_path / "out")]
    main([*predict, "--data.predict.root", "./my_images"])
    for name, size in sizes.items():
        colour = cv2.imread(str(tmp_path / "out" / f"{name}_color.png"))
        assert colour.shape[:2] == size, "each prediction at its own image's size"
    looked = r"folder 'their_images' not found \(looked for "
    assert re.search(looked + re.escape(str(tmp_path / "their_images")) + " and "
                     + re.escape(str(tmp_path / "datasets" / "their_images")),
                     cli_error(capsys, [*predict, "--data.predict.root", "their_images"]))


def test_same_size_batches_group_by_size_and_keep_every_image():
    sizes = [(2, 2), (4, 4), (2, 2), (2, 2), (4, 4)]
    batches = list(SameSizeBatchSampler(range(5), batch_size=2, sizes=sizes))
    assert batches == [[0, 2], [3], [1, 4]]


def test_validate_names_its_entropy_map_after_the_checkpoints_iterations(tmp_path):
    config = write_config(tmp_path, max_steps=2)
    main(["fit", "--config", str(config)])
    main(["validate", "--config", str(config), "--trainer.callbacks+=udaseg.callbacks.EntropyMaps",
          "--ckpt_path", str(run_dir(tmp_path, 0) / "checkpoints" / "last.ckpt")])
    validated = run_dir(tmp_path, 1)
    assert json.loads((validated / "val_metrics.json").read_text())["iteration"] == 2
    assert [path.name for path in (validated / "entropy_maps").iterdir()] == [
        "iteration_0000002.png"]


def test_wandb_run_holds_iou_tables_prediction_panels_config_and_commit(tmp_path):
    config = write_config(tmp_path, max_steps=2)
    main(["fit", "--config", str(config),
          "--trainer.logger", "pytorch_lightning.loggers.WandbLogger",
          "--trainer.logger.offline", "true", "--trainer.logger.project", "udaseg-test",
          "--trainer.logger.save_dir", str(tmp_path / "wb"),
          "--trainer.callbacks+=udaseg.callbacks.EntropyMaps",
          "--trainer.callbacks.num_images=2",
          "--trainer.callbacks+=udaseg.callbacks.WandbReport"])
    wandb.finish()
    run = next((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    media = run / "files" / "media"
    tables = [json.loads(path.read_text()) for path in (media / "table" / "val").iterdir()]
    assert len(tables) == 1 and tables[0]["columns"] == ["class", "IoU"]
    assert [row[0] for row in tables[0]["data"]][:3] == ["road", "sidewalk", "building"]
    # 2 images, each with a prediction and a ground-truth mask (mask files are stored once
    # per content), and 2 entropy maps.
    assert list((media / "images" / "mask" / "val").glob("predictions_*.mask.png"))
    panels = [path.name for path in (media / "images" / "val").iterdir()]
    assert sum(bool(re.match(r"predictions_\d+_", name)) for name in panels) == 2
    assert sum(bool(re.match(r"entropy_\d+_", name)) for name in panels) == 2
    assert sum(bool(re.match(r"entropy_maps_\d+_", name)) for name in panels) == 1
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    # The masks' JSON key order varies between logged images (sha256 first or _type first),
    # so the pattern takes either.
    expected = [re.escape(f'"git_commit":"{commit}"'.encode()),
                rb"udaseg\.methods\.SourceOnly",                  # the resolved config
                rb'"ground_truth":\{[^{}]*"_type":"mask"',      # the masks ...
                rb"val/predictions_wandb_delimeter_prediction"]  # ... and their class labels
    run_data = wandb_run_records(run, *expected)
    assert [pattern for pattern in expected if not re.search(pattern, run_data)] == []


def test_disabling_the_progress_bar_wins_over_the_configs_bar(tmp_path, capsys):
    """udaseg's configs list IterationProgressBar; `--trainer.enable_progress_bar false` must
    drop it rather than stop on Lightning's 'progress bar callback with the bar disabled'."""
    config = write_config(tmp_path, max_steps=2)
    with_bar = ["--trainer.callbacks+=udaseg.callbacks.IterationProgressBar"]
    main(["fit", "--config", str(config), *with_bar])
    main(["test", "--config", str(config), *with_bar, "--trainer.enable_progress_bar", "false",
          "--ckpt_path", str(run_dir(tmp_path, 0) / "checkpoints" / "last.ckpt")])
    assert (run_dir(tmp_path, 1) / "test_metrics.json").is_file()
    assert "Testing" not in capsys.readouterr().out, "no bar is drawn"


@pytest.mark.parametrize("flags, warned", [((), True), (("avx512_bf16",), False)],
                         ids=["avx2_only", "native_bf16"])
def test_bf16_on_a_cpu_without_native_bf16_warns_in_one_line(tmp_path, capsys, monkeypatch,
                                                           flags, warned):
    monkeypatch.setattr(hardware, "cpu_info", lambda: hardware.CPUInfo("Test CPU", flags))
    main(["fit", "--config", str(write_config(tmp_path, max_steps=1)),
          "--trainer.precision", "bf16-mixed"])
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("udaseg: warning: trainer.precision bf16-mixed")]
    assert warnings == ([
        "udaseg: warning: trainer.precision bf16-mixed on a CPU without native bf16 (Test CPU, "
        "no native bf16 (no avx512_bf16, no AMX)): bf16 is emulated there and an iteration "
        "runs many times slower than in fp32 (about 20x measured); use --trainer.precision "
        "32-true on this machine"] if warned else [])


def test_kernels_limited_to_avx2_count_as_no_native_bf16(monkeypatch):
    """ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA limited below bf16: PyTorch then computes as on
    an AVX2-only CPU, whatever the CPU has."""
    hardware.cpu_info.cache_clear()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    limited = hardware.cpu_info()
    hardware.cpu_info.cache_clear()
    assert not limited.native_bf16 and "ONEDNN_MAX_CPU_ISA=AVX2" in limited.describe()
    assert hardware.CPUInfo("CPU", ("avx512_bf16",)).native_bf16
