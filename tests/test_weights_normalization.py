"""Pretrained weights carry the input normalisation they expect: a file format's own, a run
checkpoint's recorded `data.normalization`, or the user's statement; a run whose data module
normalises otherwise is refused when it sets up."""

from __future__ import annotations

import importlib

import pytest
import torch
import yaml

from tests.helpers import CONFIGS, fit, tiny_data, tiny_method
from udaseg.methods import SourceOnly
from udaseg.models import DeepLabV2, EfficientNetLiteDeepLab, SegmenterWeights
from udaseg.models.weights import (
    check_input_normalization,
    declared_normalization,
    recorded_normalization,
)
from udaseg.runtime.cli import main

RESNET_FORMATS = DeepLabV2.pretrained_formats
LITE_FORMATS = EfficientNetLiteDeepLab.pretrained_formats


@pytest.mark.parametrize("weights, formats, expected", [
    (SegmenterWeights("r101.pth", pretrained_format="torchvision"), RESNET_FORMATS, "imagenet"),
    (SegmenterWeights("caffe.pth", pretrained_format="deeplab"), RESNET_FORMATS, "caffe_bgr"),
    (SegmenterWeights("lite0.pth"), LITE_FORMATS, "signed"),   # "auto": its only format
    (SegmenterWeights("caffe.pth", pretrained_format="deeplab", normalization="imagenet"),
     RESNET_FORMATS, "imagenet"),                              # the user's statement wins
], ids=["torchvision", "deeplab", "lite0-auto", "stated"])
def test_weights_and_data_that_agree_pass(weights, formats, expected):
    assert declared_normalization(weights, formats).normalization == expected
    check_input_normalization(weights, expected, formats)


def test_disagreeing_pair_raises_one_line_naming_both_keys_and_values():
    weights = SegmenterWeights("caffe.pth", pretrained_format="deeplab")
    with pytest.raises(ValueError) as error:
        check_input_normalization(weights, "imagenet", RESNET_FORMATS)
    message = str(error.value)
    assert "\n" not in message
    for part in ("model.init_args.weights.pretrained", "caffe.pth", "'caffe_bgr'",
                 "data.normalization", "'imagenet'"):
        assert part in message


@pytest.mark.parametrize("weights, data_normalization", [
    (SegmenterWeights("r101.pth"), "signed"),   # "auto" on a ResNet: two formats, two inputs
    (SegmenterWeights("custom.pth", pretrained_format="my_format"), "signed"),
    (SegmenterWeights(), "signed"),             # random initialisation expects nothing
    (SegmenterWeights("caffe.pth", pretrained_format="deeplab"), None),
], ids=["auto-ambiguous", "unknown-format", "no-weights", "no-data-normalization"])
def test_unknown_side_is_silent(weights, data_normalization):
    check_input_normalization(weights, data_normalization, RESNET_FORMATS)


def resolved_config(capsys, name: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / name), "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("name", ["gta5_to_cityscapes/source_only.yaml",
                                  "synthia_to_cityscapes/clan.yaml", "synthetic/advent.yaml"])
def test_repository_run_configs_pair_weights_with_the_normalization_they_expect(name, capsys):
    resolved = resolved_config(capsys, name)
    weights = SegmenterWeights(**resolved["model"]["init_args"]["weights"])
    module, _, cls = resolved["model"]["init_args"]["segmenter"]["class_path"].rpartition(".")
    formats = getattr(importlib.import_module(module), cls).pretrained_formats
    data_normalization = resolved["data"]["normalization"]
    assert declared_normalization(weights, formats) is not None, "the check must not be vacuous"
    check_input_normalization(weights, data_normalization, formats)
    other = "imagenet" if data_normalization != "imagenet" else "signed"
    with pytest.raises(ValueError, match="data.normalization"):
        check_input_normalization(weights, other, formats)


@pytest.fixture(scope="module")
def signed_run_checkpoint(tmp_path_factory):
    """last-checkpoint of a 1-iteration tiny run whose data module normalised `signed`."""
    trainer = fit(tiny_method(SourceOnly), steps=1, module=tiny_data(normalization="signed"))
    path = tmp_path_factory.mktemp("signed_run") / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_run_checkpoint_declares_the_normalization_its_run_used(signed_run_checkpoint, tmp_path):
    assert recorded_normalization(signed_run_checkpoint) == "signed"
    weights = SegmenterWeights(init_checkpoint=str(signed_run_checkpoint))
    check_input_normalization(weights, "signed", RESNET_FORMATS)
    with pytest.raises(ValueError) as error:
        check_input_normalization(weights, "imagenet", RESNET_FORMATS)
    for part in ("model.init_args.weights.init_checkpoint", str(signed_run_checkpoint),
                 "'signed'", "data.normalization", "'imagenet'"):
        assert part in str(error.value)
    # It replaced the pretrained weights: their format no longer counts.
    stacked = SegmenterWeights("caffe.pth", pretrained_format="deeplab",
                               init_checkpoint=str(signed_run_checkpoint))
    assert declared_normalization(stacked, RESNET_FORMATS).normalization == "signed"

    released = tmp_path / "released.pth"   # a plain state dict records nothing
    state = torch.load(signed_run_checkpoint, weights_only=True)["state_dict"]
    torch.save({k.removeprefix("segmenter."): v for k, v in state.items()}, released)
    assert recorded_normalization(released) is None
    check_input_normalization(SegmenterWeights(init_checkpoint=str(released)), "imagenet",
                              RESNET_FORMATS)


def test_fit_and_validate_refuse_data_normalised_otherwise_than_the_weights_expect(
        signed_run_checkpoint):
    method = tiny_method(SourceOnly, weights=SegmenterWeights(
        init_checkpoint=str(signed_run_checkpoint)))
    with pytest.raises(ValueError, match="'signed'.*data.normalization is 'imagenet'"):
        fit(method, steps=1, module=tiny_data(normalization="imagenet"))
    assert method.global_step == 0, "refused before any step"
    trainer = fit(method, steps=1, module=tiny_data(normalization="signed"))
    assert trainer.global_step == 1
    with pytest.raises(ValueError, match="'signed'.*data.normalization is 'imagenet'"):
        trainer.validate(method, tiny_data(normalization="imagenet"), verbose=False)
