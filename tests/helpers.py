"""Helpers shared by the test modules: tiny data, tiny methods, tiny CLI configs, DDP runs and
writers of dataset trees in the exact published formats. Test modules import from here only,
never from each other."""

from __future__ import annotations

import functools
import inspect
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from PIL import Image

from udaseg.data import IGNORE_INDEX, SyntheticStreets, UDADataModule
from udaseg.data.base import SegmentationDataset
from udaseg.methods import UDAMethod
from udaseg.models import DeepLabV2

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def names_a_method(config_file: Path) -> bool:
    """Whether `config_file` is a run config: it names a method (`model: ...` or
    `model.class_path: ...`), itself or through its `config:` chain. Fragments (benchmark bases,
    data, trainer, segmenter, method and overlay files) do not."""
    tree = yaml.safe_load(config_file.read_text())
    if not isinstance(tree, dict):
        return False
    if "model" in tree or "model.class_path" in tree:
        return True
    parent = tree.get("config")
    return isinstance(parent, str) and names_a_method(config_file.parent / parent)


#: Every shipped run config (`configs/<benchmark>/<method>.yaml`).
RUN_CONFIGS = sorted(path for path in CONFIGS.rglob("*.yaml") if names_a_method(path))


# ------------------------------------------------------------------ tiny data and methods
class TinyDataset(SegmentationDataset):
    """`size` random images whose name encodes the index; labels are the index modulo 3."""

    class_names = ("a", "b", "c")
    eval_subsets = {"mIoU": [0, 1, 2], "mIoU-2": [0, 1]}

    def __init__(self, size: int, prefix: str, height: int = 8, width: int = 12) -> None:
        self.size, self.prefix, self.height, self.width = size, prefix, height, width

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng(index)
        image = rng.integers(0, 256, (self.height, self.width, 3), dtype=np.uint8)
        label = np.full((self.height, self.width), index % 3, dtype=np.uint8)
        return {"image": image, "label": label, "name": f"{self.prefix}{index}"}


TINY_IMAGES = {"height": 32, "width": 64}


def tiny_data(batch_size: int = 2, **data_args) -> UDADataModule:
    """Built-in benchmark at 32x64: 6 source, 6 target, 2 validation images (`data_args`:
    further `UDADataModule` arguments, e.g. `target_strong_view`)."""
    return UDADataModule(source=SyntheticStreets("synthetic", "train", 6, **TINY_IMAGES),
                         target=SyntheticStreets("real", "train", 6, **TINY_IMAGES),
                         val=SyntheticStreets("real", "val", 2, **TINY_IMAGES),
                         batch_size=batch_size, **data_args)


def tiny_segmenter(segmenter_class: Optional[type] = None, method_class: type = UDAMethod,
                   **kwargs) -> functools.partial:
    """A ResNet-18 width-8 version of `segmenter_class` (default: the method's own)."""
    segmenter_class = segmenter_class or method_class.default_segmenter()
    return functools.partial(segmenter_class, depth=18, width=8, **kwargs)


def tiny_method(method_class: type, **kwargs) -> UDAMethod:
    """`method_class` on the tiny benchmark's label space, with a tiny segmenter (and
    discriminators of width 8 for adversarial methods) unless `kwargs` say otherwise."""
    data = tiny_data()
    kwargs.setdefault("segmenter", tiny_segmenter(method_class=method_class))
    if "discriminator_width" in inspect.signature(method_class).parameters:
        kwargs.setdefault("discriminator_width", 8)
    return method_class(num_classes=data.num_classes, class_names=list(data.class_names),
                        **kwargs)


def fit(method: UDAMethod, steps: int, module: Optional[UDADataModule] = None,
        ckpt_path: Optional[str] = None, **trainer_kwargs) -> pl.Trainer:
    """Train `steps` iterations on `module` (the tiny benchmark by default), on the CPU,
    without logs or files; `ckpt_path` resumes."""
    settings = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                "enable_model_summary": False, "limit_val_batches": 0, "accelerator": "cpu",
                "devices": 1, **trainer_kwargs}
    trainer = pl.Trainer(max_steps=steps, **settings)
    trainer.fit(method, module or tiny_data(), ckpt_path=ckpt_path)
    return trainer


def first_training_batch() -> tuple[dict, dict]:
    """The first (source, target) batch of `tiny_data()` (seeded streams: always the same)."""
    batch, _, _ = next(iter(tiny_data().train_dataloader()))
    return batch["source"], batch["target"]


# ------------------------------------------------------------------ the CLI
def write_config(tmp_path: Path, method: str = "udaseg.methods.SourceOnly",
                 max_steps: int = 4, segmenter: Optional[dict] = None,
                 name: Optional[str] = "tiny") -> Path:
    """A tiny built-in-benchmark run config `tmp_path/tiny.yaml` for `udaseg ...`; logs under
    tmp_path/runs/<name> (no name: the CLI names the run after the config file)."""
    def stream(domain: str, split: str, count: int) -> dict:
        return {"class_path": "udaseg.data.SyntheticStreets",
                "init_args": {**TINY_IMAGES, "domain": domain, "split": split,
                              "num_images": count}}

    segmenter = segmenter or {"class_path": "udaseg.models.DeepLabV2",
                              "init_args": {"depth": 18, "width": 8}}
    config = {
        "seed_everything": 7,
        "trainer": {
            "max_steps": max_steps, "val_check_interval": 3, "enable_progress_bar": False,
            "log_every_n_steps": 1, "accelerator": "cpu", "devices": 1,
            "logger": {"class_path": "udaseg.runtime.loggers.CSVLogger",
                       "init_args": {"save_dir": str(tmp_path / "runs"),
                                     **({"name": name} if name else {})}},
        },
        "model": {"class_path": method, "init_args": {"segmenter": segmenter,
                                                      "optim": {"lr": 0.01}}},
        "data": {"source": stream("synthetic", "train", 8), "target": stream("real", "train", 8),
                 "val": stream("real", "val", 4), "batch_size": 2, "eval_batch_size": 2},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cli_error(capsys, arguments: Sequence[str], exit_code: int = 1) -> str:
    """Run `udaseg ARGUMENTS` in-process, expecting a user's mistake: the exit code, no
    traceback, and exactly one `udaseg <subcommand>: error: ...` line on stderr (returned)."""
    from udaseg.runtime.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(list(arguments))
    error = capsys.readouterr().err
    assert exit_info.value.code == exit_code, error[-2000:]
    assert "Traceback" not in error
    lines = [line for line in error.splitlines() if line.startswith("udaseg ")]
    assert len(lines) == 1, error[-2000:]
    return lines[0]


def run_dir(tmp_path: Path, version: int, name: str = "tiny") -> Path:
    return tmp_path / "runs" / name / f"version_{version}"


# ------------------------------------------------------------------ DDP
class SaveRankWeights(pl.Callback):
    """Used inside the DDP child processes: each rank saves its final weights."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        os.makedirs(self.directory, exist_ok=True)
        torch.save({"state_dict": module.state_dict(), "world_size": trainer.world_size,
                    "global_step": trainer.global_step},
                   os.path.join(self.directory, f"rank{trainer.global_rank}.pt"))


def fit_two_ranks(tmp_path: Path, method: str, *extra: str,
                  segmenter: Optional[dict] = None, adversarial: bool = True,
                  launcher: Sequence[str] = ()) -> list[dict]:
    """Fit 3 iterations of a tiny config with 2 gloo ranks through the CLI, in a subprocess
    (inside pytest, Lightning's DDP launcher would re-launch the test session); each rank's
    final weights. `launcher`: the command that starts the processes (e.g. torchrun's) instead
    of Lightning's own launcher."""
    config = write_config(tmp_path, method=method, max_steps=3, segmenter=segmenter)
    dump = tmp_path / "weights"
    command = [*(launcher or [sys.executable]), "-m", "udaseg.runtime.cli", "fit",
               "--config", str(config), "--trainer.strategy", "ddp_find_unused_parameters_true",
               "--trainer.devices", "2", "--trainer.accelerator", "cpu",
               *(["--model.init_args.discriminator_width", "8"] if adversarial else []), *extra,
               "--trainer.callbacks+=tests.helpers.SaveRankWeights",
               f"--trainer.callbacks.directory={dump}"]
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(dump / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert [rank["world_size"] for rank in ranks] == [2, 2]
    assert [rank["global_step"] for rank in ranks] == [3, 3]
    return ranks


class SendSignal(pl.Callback):
    """Used inside CLI child processes: the process (every rank) sends itself `signal_name`
    when `iteration` iterations are done. SIGKILL: no Python cleanup and no last checkpoint,
    as on a node that died; SIGUSR1: a scheduler's warning before preemption."""

    def __init__(self, iteration: int, signal_name: str = "SIGKILL") -> None:
        self.iteration = iteration
        self.signal_name = signal_name

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == self.iteration:
            os.kill(os.getpid(), getattr(signal, self.signal_name))


class KillRank(SendSignal):
    """Used inside torchrun's workers: only global rank `rank` SIGKILLs itself when `iteration`
    iterations are done, and only in torchrun's first attempt (TORCHELASTIC_RESTART_COUNT 0),
    so the group torchrun restarts runs on: one node that died once."""

    def __init__(self, iteration: int, rank: int = 1) -> None:
        super().__init__(iteration, "SIGKILL")
        self.rank = rank

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_rank == self.rank and \
                os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
            super().on_train_batch_end(trainer, *args)


def assert_identical_weights(ranks: list[dict]) -> None:
    for key, value in ranks[0]["state_dict"].items():
        assert torch.equal(value, ranks[1]["state_dict"][key]), f"{key} differs between ranks"


class SometimesNaNDeepLab(DeepLabV2):
    """A DeepLabV2 whose training forward returns NaN logits when a draw of the global torch RNG
    falls below `nan_probability` (a loss that sometimes blows up). The checkpoint restores the
    global RNG, so a resumed run skips the iterations the run left alone skips."""

    def __init__(self, num_classes: int = 19, nan_probability: float = 0.3, **kwargs) -> None:
        super().__init__(num_classes, **kwargs)
        self.nan_probability = nan_probability

    def forward(self, images: torch.Tensor) -> dict:
        outputs = super().forward(images)
        if self.training and float(torch.rand(())) < self.nan_probability:
            outputs = {head: logits * float("nan") for head, logits in outputs.items()}
        return outputs


# ------------------------------------------------------------------ dataset files
H, W = 6, 8
X = IGNORE_INDEX
COLOUR = (200, 30, 90)  # a known RGB colour with R != B, so a BGR/RGB swap shows


def rgb_image(colour=COLOUR, height=H, width=W) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = colour
    image[0, 0] = (1, 2, 3)  # one distinct pixel: orientation and channel order
    return image


def write_rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, "RGB").save(path)  # PIL writes RGB as RGB


def palette_png(path: Path, ids: np.ndarray) -> None:
    """A GTA5-style label: mode "P", pixel values = label ids, a colour palette attached."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids.astype(np.uint8), "P")
    rng = np.random.default_rng(0)
    image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tolist())
    image.save(path)
    with Image.open(path) as check:
        assert check.mode == "P"


def grey_png(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids.astype(np.uint8), "L").save(path)


# Cityscapes label ids and their expected train ids (0 unlabelled, 34 and 1 unmapped).
CITY_IDS = np.array([
    [7, 8, 11, 12, 13, 17, 19, 20],
    [21, 22, 23, 24, 25, 26, 27, 28],
    [31, 32, 33, 0, 1, 34, 7, 7],
    [26, 26, 26, 26, 23, 23, 23, 23],
    [8, 8, 8, 8, 8, 8, 8, 8],
    [7, 7, 7, 7, 7, 7, 7, 7],
], np.uint8)
CITY_TRAIN = np.array([
    [0, 1, 2, 3, 4, 5, 6, 7],
    [8, 9, 10, 11, 12, 13, 14, 15],
    [16, 17, 18, X, X, X, 0, 0],
    [13, 13, 13, 13, 10, 10, 10, 10],
    [1, 1, 1, 1, 1, 1, 1, 1],
    [0, 0, 0, 0, 0, 0, 0, 0],
], np.uint8)


def make_gta5_root(root: Path) -> Path:
    """GTA5 layout: three pairs, one whose label is half the image size (as in the release)."""
    write_rgb(root / "images" / "00001.png", rgb_image())
    palette_png(root / "labels" / "00001.png", CITY_IDS)
    write_rgb(root / "images" / "00002.png", rgb_image((10, 20, 250)))
    palette_png(root / "labels" / "00002.png", np.array([[7, 26, 24, 0],
                                                         [23, 23, 8, 33],
                                                         [8, 8, 8, 255]]))
    write_rgb(root / "images" / "00003.png", rgb_image((0, 255, 0)))
    palette_png(root / "labels" / "00003.png", np.full((H, W), 21))
    return root


CITY_FILES = {
    "val": [("frankfurt", "000000", "000294"), ("frankfurt", "000001", "000538"),
            ("lindau", "000000", "000019")],
    "train": [("aachen", "000000", "000019")],
    "test": [("berlin", "000000", "000019")],
}


def make_cityscapes_root(root: Path) -> Path:
    """Cityscapes layout with the release's other gtFine files next to the label ids."""
    for split, files in CITY_FILES.items():
        for index, (city, seq, frame) in enumerate(files):
            stem = f"{city}_{seq}_{frame}"
            write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                      rgb_image((index * 50, 100, 7)))
            gt = root / "gtFine" / split / city
            grey_png(gt / f"{stem}_gtFine_labelIds.png", np.roll(CITY_IDS, index, axis=1))
            write_rgb(gt / f"{stem}_gtFine_color.png", rgb_image())
            cv2.imwrite(str(gt / f"{stem}_gtFine_instanceIds.png"),
                        np.full((H, W), 26001, np.uint16))
            (gt / f"{stem}_gtFine_polygons.json").write_text("{}")
    return root


# SYNTHIA class ids (R channel) -> expected train ids. 259 = 256 + 3 would read as road if the
# 16-bit value were truncated to 8 bits; 14/16/18/20 (and 0) are not in the 16-class table.
SYN_R = np.array([
    [3, 4, 2, 21, 5, 7, 15, 9],
    [6, 1, 10, 17, 8, 19, 12, 11],
    [0, 259, 16, 18, 20, 14, 13, 22],
    [3, 3, 3, 3, 8, 8, 8, 8],
    [1, 1, 1, 1, 1, 1, 1, 1],
    [2, 2, 2, 2, 2, 2, 2, 2],
], np.uint16)
SYN_TRAIN = np.array([
    [0, 1, 2, 3, 4, 5, 6, 7],
    [8, 10, 11, 12, 13, 15, 17, 18],
    [X, X, X, X, X, X, X, X],
    [0, 0, 0, 0, 13, 13, 13, 13],
    [10, 10, 10, 10, 10, 10, 10, 10],
    [2, 2, 2, 2, 2, 2, 2, 2],
], np.uint8)


def synthia_label(path: Path, class_ids: np.ndarray) -> None:
    """A 16-bit 3-channel PNG: class id in R, instance-like junk (also > 255) in G and B."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    bgr = np.zeros(class_ids.shape + (3,), np.uint16)
    bgr[..., 2] = class_ids                                           # R (last in BGR order)
    bgr[..., 1] = rng.integers(256, 5000, class_ids.shape)            # G: instance ids > 255
    bgr[..., 0] = 3                                                   # B: "road" everywhere
    bgr[0, :, 0] = 1000
    assert cv2.imwrite(str(path), bgr)


def make_synthia_root(root: Path) -> Path:
    """SYNTHIA-RAND-CITYSCAPES layout: three RGB images and 16-bit labels."""
    for index in range(3):
        path = root / "RGB" / f"{index:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written with OpenCV, so the RGB colour is passed in BGR order.
        assert cv2.imwrite(str(path), np.ascontiguousarray(rgb_image()[..., ::-1]))
        synthia_label(root / "GT" / "LABELS" / f"{index:07d}.png", np.roll(SYN_R, index, axis=0))
    return root


# Cityscapes label ids in the _eval.png labels; wall (12), terrain (22), truck (27), pole (17)
# are outside the 13 annotated classes and must be ignored.
CC_IDS = np.array([
    [7, 8, 11, 19, 20, 21, 23, 24],
    [25, 26, 28, 32, 33, 0, 12, 22],
    [27, 17, 7, 7, 7, 7, 7, 7],
    [26, 26, 26, 26, 23, 23, 23, 23],
    [8, 8, 8, 8, 8, 8, 8, 8],
    [7, 7, 7, 7, 7, 7, 7, 7],
], np.uint8)
CC_TRAIN = np.array([
    [0, 1, 2, 6, 7, 8, 10, 11],
    [12, 13, 15, 17, 18, X, X, X],
    [X, X, 0, 0, 0, 0, 0, 0],
    [13, 13, 13, 13, 10, 10, 10, 10],
    [1, 1, 1, 1, 1, 1, 1, 1],
    [0, 0, 0, 0, 0, 0, 0, 0],
], np.uint8)


def make_nthu_root(root: Path) -> Path:
    """NTHU Cross-City layout for Rome: two JPEG train images, two labelled test images."""
    train = root / "Rome" / "Images" / "Train"
    train.mkdir(parents=True)
    for name in ("pano_00002_0_0", "pano_00001_1_180"):
        cv2.imwrite(str(train / f"{name}.jpg"), np.ascontiguousarray(rgb_image()[..., ::-1]))
    write_rgb(root / "Rome" / "Images" / "Test" / "pano_00368_0_0.png", rgb_image())
    write_rgb(root / "Rome" / "Images" / "Test" / "pano_00390_1_0.png", rgb_image())
    grey_png(root / "Rome" / "Labels" / "Test" / "pano_00368_0_0_eval.png", CC_IDS)
    palette_png(root / "Rome" / "Labels" / "Test" / "pano_00390_1_0_eval.png", CC_IDS[::-1])
    return root
