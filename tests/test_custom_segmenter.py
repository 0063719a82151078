"""Adding a segmenter is one class + a config: this module defines one and trains a method with
it through the CLI (`class_path: tests.test_custom_segmenter.PixelSegmenter`), with nothing in
the package edited."""

from __future__ import annotations

import functools
import json

import pytest
import torch
import yaml
from torch import nn

from tests.helpers import fit, run_dir, tiny_method, write_config
from udaseg.methods import CLAN, AdvEnt
from udaseg.models import MAIN, Segmenter, SegmenterWeights, WeightsError, build_segmenter
from udaseg.runtime.cli import main

SEGMENTER = {"class_path": "tests.test_custom_segmenter.PixelSegmenter",
             "init_args": {"channels": 6}}


class PixelSegmenter(Segmenter):
    """A strided conv and 1x1 classifiers: about the smallest network the protocol allows.

    Heads "main" and, with `auxiliary`, "aux" (so multi-level methods can use it).
    """

    def __init__(self, num_classes: int, channels: int = 8, auxiliary: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(nn.Conv2d(3, channels, 3, stride=4, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.aux_classifier = nn.Conv2d(channels, num_classes, 1) if auxiliary else None
        self.heads = ("main", "aux") if auxiliary else ("main",)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(images)
        outputs = {"main": self.classifier(features)}
        if self.aux_classifier is not None:
            outputs["aux"] = self.aux_classifier(features)
        return outputs

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.features.parameters())

    def classifier_parameters(self) -> list[nn.Parameter]:
        heads = [self.classifier] + ([self.aux_classifier] if self.aux_classifier else [])
        return [parameter for head in heads for parameter in head.parameters()]


def test_a_method_trains_and_evaluates_a_segmenter_defined_outside_the_package(tmp_path):
    config = write_config(tmp_path, method="udaseg.methods.AdvEnt", max_steps=3,
                          segmenter=SEGMENTER)
    main(["fit", "--config", str(config), "--model.init_args.discriminator_width", "8"])
    fitted = run_dir(tmp_path, 0)
    checkpoint = torch.load(fitted / "checkpoints" / "last.ckpt", weights_only=True)
    state = checkpoint["state_dict"]
    assert state["segmenter.classifier.weight"].shape == (9, 6, 1, 1), "num_classes from data"
    assert {"discriminators.main.0.weight", "discriminators.aux.0.weight"} <= set(state), \
        "one discriminator per head the segmenter declares"
    # Plain data in the checkpoint: it names the network and rebuilds it.
    assert checkpoint["hyper_parameters"]["segmenter"] == {
        "class_path": "tests.test_custom_segmenter.PixelSegmenter",
        "init_args": {"channels": 6, "auxiliary": True}}
    rebuilt = AdvEnt.load_from_checkpoint(fitted / "checkpoints" / "last.ckpt")
    assert isinstance(rebuilt.segmenter, PixelSegmenter)
    saved = yaml.safe_load((fitted / "config.yaml").read_text())
    assert saved["model"]["init_args"]["segmenter"]["class_path"] == SEGMENTER["class_path"]

    fitted_miou = json.loads((fitted / "val_metrics.json").read_text())["mIoU"]
    main(["validate", "--config", str(config), "--model.init_args.discriminator_width", "8",
          "--ckpt_path", str(fitted / "checkpoints" / "last.ckpt")])
    validated = json.loads((run_dir(tmp_path, 1) / "val_metrics.json").read_text())
    assert validated["mIoU"] == pytest.approx(fitted_miou, abs=1e-4)


def test_the_optimiser_groups_come_from_the_segmenter():
    method = tiny_method(AdvEnt, segmenter=functools.partial(PixelSegmenter, channels=4))
    trainer = fit(method, steps=1)
    backbone, classifiers = trainer.optimizers[0].param_groups
    assert {id(p) for p in backbone["params"]} == {id(p) for p in
                                                   method.segmenter.features.parameters()}
    assert classifiers["base_lr"] == pytest.approx(10 * backbone["base_lr"])
    assert len(classifiers["params"]) == 4


def test_a_method_names_the_head_it_misses():
    single = functools.partial(PixelSegmenter, auxiliary=False)
    assert tiny_method(AdvEnt, segmenter=single).discriminators.keys() == {MAIN}
    with pytest.raises(ValueError, match=r"CLAN needs the segmenter head\(s\) \['first', "
                       r"'second'\], but PixelSegmenter has \['main'\]: change "
                       r"model.init_args.segmenter"):
        tiny_method(CLAN, segmenter=single)


def test_a_factory_must_build_a_segmenter():
    with pytest.raises(TypeError, match="model.init_args.segmenter built a Conv2d, which is not "
                       "a udaseg.models.Segmenter"):
        build_segmenter(lambda num_classes: nn.Conv2d(3, num_classes, 1), 4)


def test_pretrained_weights_need_a_format_the_segmenter_declares(tmp_path):
    path = tmp_path / "imagenet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match=f"PixelSegmenter reads no pretrained weight files, "
                       f"but {path} was given"):
        tiny_method(AdvEnt, segmenter=PixelSegmenter, weights=SegmenterWeights(str(path)))
    # Any segmenter loads full checkpoints by key, with a SHA-256 pin if given.
    source = tiny_method(AdvEnt, segmenter=PixelSegmenter)
    checkpoint = tmp_path / "source.pth"
    torch.save(source.segmenter.state_dict(), checkpoint)
    with pytest.raises(WeightsError, match="SHA-256 mismatch"):
        tiny_method(AdvEnt, segmenter=PixelSegmenter, weights=SegmenterWeights(
            init_checkpoint=str(checkpoint), init_checkpoint_sha256="0" * 64))
    loaded = tiny_method(AdvEnt, segmenter=PixelSegmenter,
                         weights=SegmenterWeights(init_checkpoint=str(checkpoint)))
    assert torch.equal(loaded.segmenter.classifier.weight, source.segmenter.classifier.weight)


def test_a_python_built_checkpoint_names_its_segmenter_and_rebuilds(tmp_path):
    method = tiny_method(AdvEnt, segmenter=functools.partial(PixelSegmenter, channels=5))
    trainer = fit(method, steps=1)
    path = tmp_path / "python.ckpt"
    trainer.save_checkpoint(path)
    # Plain data and allow-listed configs only: readable with weights_only=True.
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["hyper_parameters"]["segmenter"] == {
        "class_path": "tests.test_custom_segmenter.PixelSegmenter", "init_args": {"channels": 5}}
    rebuilt = AdvEnt.load_from_checkpoint(path)
    assert rebuilt.segmenter.classifier.in_channels == 5
    assert torch.equal(rebuilt.segmenter.classifier.weight, method.segmenter.classifier.weight)


class Headless(PixelSegmenter):
    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.heads = ("logits",)


def test_the_protocol_is_checked_when_the_segmenter_is_built():
    with pytest.raises(ValueError, match=r"Headless.heads must list the names forward\(\) "
                       r"returns, including 'main'; got \('logits',\)"):
        build_segmenter(Headless, 4)
    with pytest.raises(ValueError, match="built for num_classes=4 but its num_classes is 7"):
        build_segmenter(lambda num_classes: PixelSegmenter(7), 4)
