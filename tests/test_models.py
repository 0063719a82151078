"""DeepLabV2 structure (official ADVENT keys and counts), forward shapes and weight loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from udaseg.models import (
    DeepLabV2,
    WeightsError,
    load_imagenet_init,
    load_segmenter_checkpoint,
    seg_output_size,
    sha256_of,
)


@pytest.fixture(scope="module")
def r101() -> DeepLabV2:
    """The paper's model, built once: R101 is the slow part of this file."""
    return DeepLabV2(num_classes=19, multi_level=True, depth=101).eval()


def light(**kwargs) -> DeepLabV2:
    kwargs.setdefault("depth", 18)
    kwargs.setdefault("width", 16)
    return DeepLabV2(**kwargs).eval()


def save(tmp_path: Path, name: str, obj: object) -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


# --- structure ------------------------------------------------------------------------------

def test_r101_counts_match_official(r101: DeepLabV2) -> None:
    state = r101.state_dict()
    assert len(state) == 640
    assert len(list(r101.parameters())) == 328
    assert len(list(r101.buffers())) == 312
    assert sum(p.numel() for p in r101.parameters()) == 44_601_560


@pytest.mark.parametrize("key, shape", [
    ("conv1.weight", (64, 3, 7, 7)),
    ("bn1.running_mean", (64,)),
    ("bn1.num_batches_tracked", ()),
    ("layer1.0.conv1.weight", (64, 64, 1, 1)),
    ("layer1.0.downsample.0.weight", (256, 64, 1, 1)),
    ("layer1.0.downsample.1.running_var", (256,)),
    ("layer2.0.conv1.weight", (128, 256, 1, 1)),
    ("layer3.0.downsample.0.weight", (1024, 512, 1, 1)),
    ("layer3.22.conv3.weight", (1024, 256, 1, 1)),
    ("layer4.0.downsample.0.weight", (2048, 1024, 1, 1)),
    ("layer4.2.conv2.weight", (512, 512, 3, 3)),
    ("layer5.conv2d_list.0.weight", (19, 1024, 3, 3)),
    ("layer6.conv2d_list.0.weight", (19, 2048, 3, 3)),
    ("layer6.conv2d_list.3.bias", (19,)),
])
def test_r101_official_key_names_and_shapes(r101: DeepLabV2, key: str, shape: tuple) -> None:
    assert tuple(r101.state_dict()[key].shape) == shape


def test_r101_backbone_keys_equal_torchvision_resnet101(r101: DeepLabV2) -> None:
    """torchvision's R101 uses the same backbone names; only fc vs our classifiers differ."""
    tv = torchvision.models.resnet101(weights=None).state_dict()
    ours = {k: tuple(v.shape) for k, v in r101.state_dict().items()
            if not k.startswith(("layer5.", "layer6."))}
    assert ours == {k: tuple(v.shape) for k, v in tv.items() if not k.startswith("fc.")}


def test_dilation_layout_gives_output_stride_8(r101: DeepLabV2) -> None:
    assert r101.maxpool.ceil_mode
    assert r101.layer2[0].conv1.stride == (2, 2)  # stride on the first 1x1, Caffe style
    assert r101.layer3[0].conv1.stride == (1, 1) and r101.layer4[0].conv1.stride == (1, 1)
    assert r101.layer3[5].conv2.dilation == (2, 2) and r101.layer3[5].conv2.padding == (2, 2)
    assert r101.layer4[1].conv2.dilation == (4, 4) and r101.layer4[1].conv2.padding == (4, 4)
    assert [c.dilation[0] for c in r101.layer6.conv2d_list] == [6, 12, 18, 24]
    assert all(c.bias is not None for c in r101.layer6.conv2d_list)


def test_r101_forward_shapes(r101: DeepLabV2) -> None:
    with torch.no_grad():
        out = r101(torch.randn(1, 3, 65, 97))
    assert set(out) == set(r101.heads) == {"main", "aux"}
    assert out["main"].shape == (1, 19, 9, 13)
    assert out["aux"].shape == (1, 19, 9, 13)


@pytest.mark.parametrize("size, expected", [(512, 65), (1024, 129), (720, 91), (1280, 161),
                                            (65, 9), (97, 13), (33, 5), (17, 3)])
def test_seg_output_size_rule(size: int, expected: int) -> None:
    assert seg_output_size(size) == expected


def test_light_forward_matches_size_rule() -> None:
    model = light(num_classes=5)
    for h, w in [(64, 96), (33, 47), (40, 17)]:
        with torch.no_grad():
            out = model(torch.randn(2, 3, h, w))
        assert out["main"].shape == (2, 5, seg_output_size(h), seg_output_size(w))
        assert out["aux"].shape == out["main"].shape


def test_classifier_sums_all_branches() -> None:
    head = light(num_classes=3).layer6
    x = torch.randn(1, head.conv2d_list[0].in_channels, 6, 6)
    with torch.no_grad():
        expected = sum(conv(x) for conv in head.conv2d_list)
        assert torch.allclose(head(x), expected, atol=1e-6)


def test_two_summed_branches_reproduce_maxsquare_code_with_the_same_keys(tmp_path: Path) -> None:
    official_layout = DeepLabV2(num_classes=3, depth=18, width=8, aspp_summed_branches=2)
    assert official_layout.state_dict().keys() == light(num_classes=3).state_dict().keys()
    head = official_layout.layer5
    x = torch.randn(1, head.conv2d_list[0].in_channels, 6, 6)
    with torch.no_grad():
        assert torch.allclose(head(x), head.conv2d_list[0](x) + head.conv2d_list[1](x),
                              atol=1e-6)
    # A MaxSquare release: `module.` prefix, all four convs stored.
    checkpoint = tmp_path / "maxsquare.pth"
    torch.save({f"module.{k}": v for k, v in official_layout.state_dict().items()}, checkpoint)
    reloaded = DeepLabV2(num_classes=3, depth=18, width=8, aspp_summed_branches=2)
    load_segmenter_checkpoint(reloaded, checkpoint)
    images = torch.randn(1, 3, 32, 32)
    official_layout.eval(), reloaded.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(images)["main"], official_layout(images)["main"])
    with pytest.raises(ValueError, match="summed_branches"):
        DeepLabV2(num_classes=3, depth=18, width=8, aspp_summed_branches=5)


def test_single_level_has_no_layer5_and_no_aux() -> None:
    model = light(multi_level=False, num_classes=4)
    assert not any(k.startswith("layer5") for k in model.state_dict())
    assert model.layer5 is None
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert model.heads == ("main",) and set(out) == {"main"}
    assert out["main"].shape == (1, 4, 5, 5)


def test_r101_single_level_drops_exactly_layer5() -> None:
    single = DeepLabV2(multi_level=False, depth=50, width=64)  # R50 keeps this test quick
    assert all(not k.startswith("layer5") for k in single.state_dict())
    assert single.layer6.conv2d_list[0].in_channels == 2048


def test_bn_affine_frozen_but_running_stats_update() -> None:
    model = light()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.affine for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    model.train()
    before = model.bn1.running_mean.clone()
    model(torch.randn(1, 3, 32, 32))
    assert not torch.equal(before, model.bn1.running_mean)


def test_parameter_groups_disjoint_and_complete(r101: DeepLabV2) -> None:
    backbone = r101.backbone_parameters()
    heads = r101.classifier_parameters()
    ids_b, ids_h = [id(p) for p in backbone], [id(p) for p in heads]
    assert len(set(ids_b)) == len(ids_b) and len(set(ids_h)) == len(ids_h)  # no duplicates
    assert not set(ids_b) & set(ids_h)
    trainable = {id(p) for p in r101.parameters() if p.requires_grad}
    assert set(ids_b) | set(ids_h) == trainable
    assert len(heads) == 16 and len(backbone) == 104  # 104 convs; all BN affine frozen


def test_light_backbone_variants() -> None:
    for depth, channels in [(18, (64, 128)), (34, (64, 128)), (50, (256, 512))]:
        backbone = DeepLabV2(depth=depth, width=16)
        assert backbone.out_channels == channels
        assert all(hasattr(layer[0], "downsample") and layer[0].downsample is not None
                   for layer in (backbone.layer1, backbone.layer2, backbone.layer3,
                                 backbone.layer4))
        feat3, feat4 = backbone.forward_features(torch.randn(1, 3, 24, 24))
        assert feat3.shape[1:] == (channels[0], 4, 4) and feat4.shape[1:] == (channels[1], 4, 4)
    with pytest.raises(ValueError):
        DeepLabV2(depth=152)


# --- ImageNet init --------------------------------------------------------------------------

def backbone_state(model: DeepLabV2) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith(("layer5", "layer6"))}


def test_imagenet_init_torchvision_format(tmp_path: Path) -> None:
    source = light(num_classes=7)
    state = backbone_state(source)
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 128), torch.randn(1000)
    path = save(tmp_path, "tv.pth", state)

    model = light(num_classes=7)
    head_before = model.layer6.conv2d_list[0].weight.clone()
    untouched = load_imagenet_init(model, path, sha256=sha256_of(path))
    assert torch.equal(model.layer2[1].conv2.weight, source.layer2[1].conv2.weight)
    assert torch.equal(model.layer4[0].downsample[1].running_var,
                       source.layer4[0].downsample[1].running_var)
    assert torch.equal(model.layer6.conv2d_list[0].weight, head_before)
    assert untouched and all(k.startswith(("layer5.", "layer6.")) for k in untouched)


def test_imagenet_init_deeplab_scale_format(tmp_path: Path) -> None:
    source = light(depth=50)
    # Caffe-converted file: `Scale.` prefix, its own layer5 classifier, no num_batches_tracked.
    state = {f"Scale.{k}": v for k, v in source.state_dict().items()
             if not k.startswith("layer6") and not k.endswith("num_batches_tracked")}
    state["Scale.layer5.conv2d_list.0.weight"] = torch.randn(21, 512, 3, 3)  # 21 VOC classes
    path = save(tmp_path, "DeepLab_resnet_pretrained_imagenet.pth", state)

    model = light(depth=50)
    untouched = load_imagenet_init(model, path)  # auto-detected as deeplab
    assert torch.equal(model.layer3[2].conv3.weight, source.layer3[2].conv3.weight)
    assert torch.equal(model.bn1.running_mean, source.bn1.running_mean)
    assert not torch.equal(model.layer5.conv2d_list[0].weight, source.layer5.conv2d_list[0].weight)
    assert "layer5.conv2d_list.0.weight" in untouched
    assert "bn1.num_batches_tracked" in untouched  # the file had no counters
    assert load_imagenet_init(light(depth=50), path, fmt="deeplab") == untouched


def test_imagenet_init_real_torchvision_layout(tmp_path: Path) -> None:
    """A torchvision ResNet-50 file (random weights, no download) fits a width-64 R50."""
    tv = torchvision.models.resnet50(weights=None)
    path = save(tmp_path, "resnet50.pth", tv.state_dict())
    model = DeepLabV2(depth=50, multi_level=False)
    load_imagenet_init(model, path, fmt="torchvision")
    assert torch.equal(model.layer3[4].conv2.weight, tv.layer3[4].conv2.weight)


def test_imagenet_init_sha256_mismatch(tmp_path: Path) -> None:
    path = save(tmp_path, "w.pth", backbone_state(light()))
    actual = sha256_of(path)
    with pytest.raises(WeightsError, match="SHA-256 mismatch") as info:
        load_imagenet_init(light(), path, sha256="0" * 64)
    assert "0" * 64 in str(info.value) and actual in str(info.value) and "w.pth" in str(info.value)


def test_imagenet_init_shape_mismatch_lists_keys(tmp_path: Path) -> None:
    path = save(tmp_path, "w16.pth", backbone_state(light(width=16)))
    with pytest.raises(WeightsError) as info:
        load_imagenet_init(light(width=8), path)
    msg = str(info.value)
    assert "w16.pth" in msg and "shape mismatches" in msg
    assert "conv1.weight: model (8, 3, 7, 7), file (16, 3, 7, 7)" in msg


def test_imagenet_init_missing_keys_and_bad_files(tmp_path: Path) -> None:
    state = backbone_state(light())
    del state["layer4.1.conv2.weight"]
    with pytest.raises(WeightsError, match=r"missing keys \(1\): layer4.1.conv2.weight"):
        load_imagenet_init(light(), save(tmp_path, "partial.pth", state))
    with pytest.raises(WeightsError, match="not found"):
        load_imagenet_init(light(), tmp_path / "nope.pth")
    with pytest.raises(WeightsError, match="does not contain a state dict"):
        load_imagenet_init(light(), save(tmp_path, "list.pth", [torch.zeros(1)]))
    with pytest.raises(WeightsError, match="weights_only=True"):  # pickled code is refused
        load_imagenet_init(light(), save(tmp_path, "pickle.pth", {"cfg": tmp_path}))
    with pytest.raises(WeightsError, match="cannot tell the format"):
        load_imagenet_init(light(), save(tmp_path, "odd.pth", {"weight": torch.zeros(1)}))


# --- full checkpoints -----------------------------------------------------------------------

def test_segmenter_checkpoint_module_prefix(tmp_path: Path) -> None:
    source = light(num_classes=19)
    path = save(tmp_path, "maxsquare.pth",
                {f"module.{k}": v for k, v in source.state_dict().items()})
    model = light(num_classes=19)
    assert load_segmenter_checkpoint(model, path) == []
    assert torch.equal(model.layer5.conv2d_list[2].bias, source.layer5.conv2d_list[2].bias)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x)["main"], source(x)["main"])


def test_segmenter_checkpoint_lightning_layout(tmp_path: Path) -> None:
    source = light(num_classes=3)
    state = {f"segmenter.{k}": v for k, v in source.state_dict().items()}
    state["discriminator.0.weight"] = torch.zeros(2, 3)  # other modules are ignored
    path = save(tmp_path, "last.ckpt", {"epoch": 1, "state_dict": state})
    model = light(num_classes=3)
    load_segmenter_checkpoint(model, path)
    assert torch.equal(model.conv1.weight, source.conv1.weight)


def test_segmenter_checkpoint_wrong_class_count(tmp_path: Path) -> None:
    path = save(tmp_path, "GTA2Cityscapes_AdvEnt.pth", light(num_classes=16).state_dict())
    with pytest.raises(WeightsError) as info:
        load_segmenter_checkpoint(light(num_classes=19), path)
    msg = str(info.value)
    assert "GTA2Cityscapes_AdvEnt.pth" in msg and "shape mismatches (16)" in msg
    assert "layer6.conv2d_list.3.bias: model (19,), file (16,)" in msg
    assert "layer5.conv2d_list.0.weight" in msg


def test_segmenter_checkpoint_missing_and_unexpected(tmp_path: Path) -> None:
    single = light(multi_level=False).state_dict()
    path = save(tmp_path, "single.pth", single)
    with pytest.raises(WeightsError, match=r"missing keys \(8\): layer5.conv2d_list.0.weight"):
        load_segmenter_checkpoint(light(multi_level=True), path)
    assert len(load_segmenter_checkpoint(light(multi_level=True), path, strict=False)) == 8
    multi = save(tmp_path, "multi.pth", light(multi_level=True).state_dict())
    with pytest.raises(WeightsError, match=r"unexpected keys \(8\)"):
        load_segmenter_checkpoint(light(multi_level=False), multi)
