"""BiSeNet V1 (TUFL's network): heads and sizes, wiring of the three paths, parameter groups and
counts, the torchvision ResNet-18 ImageNet file, TUFL's state-dict keys, a tiny fit."""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision

from udaseg.models import MAIN, BiSeNet, WeightsError, build_segmenter, load_imagenet_init
from udaseg.models.bisenet import CONTEXT16, CONTEXT32

HEADS = (MAIN, CONTEXT16, CONTEXT32)


def torchvision_key(key: str) -> str:
    """Our ResNet key (without `cp.resnet.`) as torchvision writes it."""
    return key.replace(".downsample_conv.", ".downsample.0.").replace(".downsample_bn.",
                                                                        ".downsample.1.")


@pytest.fixture(scope="module")
def model() -> BiSeNet:
    return BiSeNet(5)


@pytest.mark.parametrize(("size", "expected"), [((64, 96), (8, 12)), ((65, 97), (9, 13))])
def test_three_heads_at_one_eighth(model, size, expected):
    outputs = model(torch.randn(2, 3, *size))
    assert model.heads == HEADS and tuple(outputs) == HEADS
    for head in HEADS:
        assert outputs[head].shape == (2, 5, *expected), head


def test_parameter_groups_partition_the_network(model):
    backbone, classifier = model.backbone_parameters(), model.classifier_parameters()
    ids = [id(p) for p in backbone + classifier]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in backbone} == {id(p) for p in model.cp.resnet.parameters()}
    assert id(model.sp.conv1.conv.weight) in {id(p) for p in classifier}
    assert id(model.cp.arm32.conv_atten.weight) in {id(p) for p in classifier}


def test_parameter_counts():
    """TUFL's layer sizes; the ResNet-18 is torchvision's without `fc`."""
    reference = torchvision.models.resnet18(weights=None)
    resnet = sum(p.numel() for k, p in reference.named_parameters() if not k.startswith("fc."))
    for num_classes, total in ((19, 13_392_384), (13, 13_390_080)):
        net = BiSeNet(num_classes)
        assert sum(p.numel() for p in net.parameters()) == total
        assert sum(p.numel() for p in net.backbone_parameters()) == resnet == 11_176_512
    # Per class: a 1x1 conv (no bias) over 256 (main) + 64 + 64 (aux) middle channels.
    assert 13_392_384 - 13_390_080 == 6 * (256 + 64 + 64)


def test_gradients_reach_every_head_and_the_backbone():
    net = BiSeNet(3)
    outputs = net(torch.randn(2, 3, 64, 96))
    sum(outputs[head].square().mean() for head in HEADS).backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    # Wiring: the 1/32 auxiliary head reads the context path only, not the spatial path or
    # the 1/16 branch's refinement.
    net.zero_grad(set_to_none=True)
    net(torch.randn(2, 3, 64, 96))[CONTEXT32].sum().backward()
    assert net.cp.resnet.layer4[1].conv2.weight.grad.abs().sum() > 0
    assert net.cp.arm32.conv.conv.weight.grad.abs().sum() > 0
    assert net.sp.conv1.conv.weight.grad is None
    assert net.cp.conv_head16.conv.weight.grad is None
    assert net.conv_out.conv_out.weight.grad is None


def test_torchvision_resnet18_file_loads(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # distinctive values, running stats included
        for value in reference.state_dict().values():
            if value.is_floating_point():
                value.uniform_(0.5, 1.5)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    net = BiSeNet(4)
    sp_before = net.sp.conv1.conv.weight.detach().clone()
    untouched = load_imagenet_init(net, path, fmt="torchvision")
    assert untouched[-2:] == ["fc.weight", "fc.bias"]
    assert all(not k.startswith("cp.resnet.") for k in untouched)
    state = net.state_dict()
    loaded = 0
    for key, value in state.items():
        if key.startswith("cp.resnet."):
            assert torch.equal(value, reference.state_dict()[torchvision_key(key[10:])]), key
            loaded += 1
    assert loaded == len(reference.state_dict()) - 2
    assert torch.equal(net.sp.conv1.conv.weight, sp_before)  # the rest keeps its init
    assert load_imagenet_init(BiSeNet(4), path)[-2:] == ["fc.weight", "fc.bias"]  # "auto"


def test_wrong_file_names_the_file_and_the_keys(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    del state["layer3.1.conv2.weight"]
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "not_resnet18.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as error:
        load_imagenet_init(BiSeNet(4), path)
    message = str(error.value)
    assert str(path) in message
    assert "missing keys (1): cp.resnet.layer3.1.conv2.weight" in message
    assert "unexpected keys (1): cp.resnet.layer5.0.conv1.weight" in message
    assert "cp.resnet.layer1.0.conv1.weight: model (64, 64, 3, 3), file (64, 64, 1, 1)" in message
    # A ResNet-50 file is rejected too (Bottleneck keys, other shapes).
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match="cp.resnet.layer1.0.conv3.weight"):
        load_imagenet_init(BiSeNet(4), path)


def test_state_dict_keys_are_tufl_s():
    """So a TUFL checkpoint loads with `weights.init_checkpoint` (same class count)."""
    keys = set(BiSeNet(13).state_dict())
    assert {"cp.resnet.conv1.weight", "cp.resnet.layer2.0.downsample_conv.weight",
            "cp.resnet.layer4.1.bn2.running_var", "cp.arm16.conv.conv.weight",
            "cp.arm32.bn_atten.bias", "cp.conv_avg.bn.weight", "cp.conv_head16.conv.weight",
            "sp.conv_out.conv.weight", "ffm.convblk.bn.running_mean", "ffm.conv2.weight",
            "conv_out.conv.conv.weight", "conv_out16.conv_out.weight",
            "conv_out32.conv_out.weight"} <= keys
    assert not any("downsample.0" in k or k.startswith("cp.resnet.fc") for k in keys)


def test_negative_slope_zero_is_plain_relu():
    torch.manual_seed(0)
    leaky = BiSeNet(3).eval()
    relu = BiSeNet(3, negative_slope=0.0).eval()
    relu.load_state_dict(leaky.state_dict())
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(leaky(images)[MAIN], relu(images)[MAIN])
        block = relu.sp.conv1
        assert (block(images) >= 0).all()


def test_build_from_spec_and_validation():
    net = build_segmenter({"class_path": "udaseg.models.BiSeNet", "init_args": {}}, 13)
    assert isinstance(net, BiSeNet) and net.num_classes == 13
    assert net.conv_out.conv_out.out_channels == 13
    small = build_segmenter({"class_path": "udaseg.models.BiSeNet",
                             "init_args": {"context_channels": 32, "fusion_channels": 64}}, 2)
    assert small(torch.randn(2, 3, 32, 32))[CONTEXT32].shape == (2, 2, 4, 4)
    with pytest.raises(ValueError, match="num_classes must be positive"):
        BiSeNet(0)


def test_source_only_trains_bisenet_two_iterations():
    from tests.helpers import fit, tiny_method
    from udaseg.methods import SourceOnly

    torch.manual_seed(0)
    method = tiny_method(SourceOnly, segmenter=functools.partial(
        BiSeNet, context_channels=32, fusion_channels=64))
    assert isinstance(method.segmenter, BiSeNet)
    before = {k: v.detach().clone() for k, v in method.segmenter.state_dict().items()}
    trainer = fit(method, steps=2)
    assert trainer.global_step == 2
    after = method.segmenter.state_dict()
    for key in ("cp.resnet.layer1.0.conv1.weight", "sp.conv1.conv.weight",
                "conv_out.conv_out.weight"):
        assert not torch.equal(before[key], after[key]), key
