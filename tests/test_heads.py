"""Decode heads (DAFormer's, SegFormer's), `EncoderDecoder` with any encoder, and the
EfficientNet-Lite0 multi-stage encoder: official sizes and structure, stride-4 outputs, parameter
groups, ImageNet loading, errors naming the config key, and a CLI run whose checkpoint rebuilds
the network from plain data."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
import yaml
from torch import nn

from tests.helpers import CONFIGS, cli_error, run_dir, write_config
from udaseg.methods import DACS
from udaseg.models import (
    DAFormerHead,
    EfficientNetLiteDeepLab,
    EncoderDecoder,
    SegFormerHead,
    build_segmenter,
    load_imagenet_init,
)
from udaseg.models.efficientnet_lite import LITE0_IMAGENET_FILE, LITE0_IMAGENET_SHA256
from udaseg.models.heads import ConvBNReLU, SeparableConvBNReLU
from udaseg.runtime.cli import main

MIT_CHANNELS = (64, 128, 320, 512)
TINY_ENCODER = {"class_path": "tests.test_heads.TinyEncoder", "init_args": {"width": 3}}
LITE_ENCODER = {"class_path": "udaseg.models.EfficientNetLiteEncoder", "init_args": {}}


class TinyEncoder(nn.Module):
    """The encoder interface at its smallest: one strided conv per stage (strides 4, 8, 16, 32,
    sizes ceil(input / stride)), with a pretrained format of its own."""

    pretrained_formats: ClassVar[tuple[str, ...]] = ("tiny",)

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.out_channels = (width, 2 * width, 3 * width, 4 * width)
        ins = (3, *self.out_channels[:-1])
        self.stages = nn.ModuleList(
            nn.Conv2d(i, o, 3, stride=4 if index == 0 else 2, padding=1)
            for index, (i, o) in enumerate(zip(ins, self.out_channels, strict=True)))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        features, x = [], images
        for stage in self.stages:
            x = torch.relu(stage(x))
            features.append(x)
        return features

    def load_pretrained(self, state: dict[str, torch.Tensor], fmt: str, source: str) -> list[str]:
        self.load_state_dict(state, strict=False)
        return [key for key in self.state_dict() if key not in state]


def head_spec(name: str, **init_args) -> dict:
    return {"class_path": f"udaseg.models.{name}", "init_args": init_args}


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_head_parameter_counts_are_the_official_ones():
    # DAFormer's published head (MiT-B5 stages, 19 classes).
    assert parameter_count(DAFormerHead(MIT_CHANNELS, 19)) == 3_712_275
    # DAFormer's 1x1-fusion variant (SegFormer C_e = 256, HRDA's attention head): 4 linear
    # embeddings (64+128+320+512) * 256 + 4 * 256, fusion 1024 * 256 + BN 512, classifier
    # 256 * 19 + 19.
    assert parameter_count(SegFormerHead(MIT_CHANNELS, 19)) == 263_168 + 262_656 + 4_883


def test_daformer_network_with_mit_b5_has_the_official_size():
    network = build_segmenter({"class_path": "udaseg.models.EncoderDecoder",
                               "init_args": {}}, 19)
    assert parameter_count(network.encoder) == 81_443_008
    assert parameter_count(network) == 85_155_283


def test_aspp_branches_are_depthwise_separable_except_the_1x1_one():
    head = DAFormerHead(MIT_CHANNELS, 19, embed_dims=8, channels=6)
    branches = head.fuse_layer.aspp_modules
    assert len(branches) == 4
    plain = branches[0]
    assert isinstance(plain, ConvBNReLU)
    assert plain.conv.kernel_size == (1, 1) and plain.conv.groups == 1
    assert (plain.conv.in_channels, plain.conv.out_channels) == (32, 6)
    for branch, dilation in zip(branches[1:], (6, 12, 18), strict=True):
        assert isinstance(branch, SeparableConvBNReLU)
        depthwise, pointwise = branch.depthwise_conv.conv, branch.pointwise_conv.conv
        assert depthwise.groups == depthwise.in_channels == depthwise.out_channels == 32
        assert depthwise.kernel_size == (3, 3) and depthwise.dilation == (dilation, dilation)
        assert pointwise.kernel_size == (1, 1) and (pointwise.in_channels,
                                                    pointwise.out_channels) == (32, 6)
        assert isinstance(branch.depthwise_conv.bn, nn.BatchNorm2d)
        assert isinstance(branch.pointwise_conv.bn, nn.BatchNorm2d)
    bottleneck = head.fuse_layer.bottleneck.conv
    assert bottleneck.kernel_size == (3, 3) and (bottleneck.in_channels,
                                                 bottleneck.out_channels) == (24, 6)
    assert not any(isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)) for m in head.modules()), \
        "no image-pooling branch"
    assert isinstance(head.dropout, nn.Dropout2d) and head.dropout.p == 0.1
    assert head.conv_seg.kernel_size == (1, 1) and head.conv_seg.in_channels == 6
    for name, module in head.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert name.endswith(".bn"), name
    # The embeddings are linear layers over channels: no norm, no activation.
    assert all(list(m.children()) == [m.proj] and isinstance(m.proj, nn.Linear)
               for m in head.embed_layers)


def test_linear_embedding_is_a_per_pixel_linear_layer():
    head = SegFormerHead((5,), 2, embed_dims=3)
    x = torch.randn(2, 5, 3, 4)
    expected = torch.einsum("nchw,ec->nehw", x, head.embed_layers[0].proj.weight) \
        + head.embed_layers[0].proj.bias[:, None, None]
    torch.testing.assert_close(head.embed_layers[0](x), expected)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(head.embed_layers[0](channels_last), expected)


@pytest.mark.parametrize("encoder", [TINY_ENCODER, LITE_ENCODER], ids=["tiny", "lite0"])
@pytest.mark.parametrize("head", [head_spec("DAFormerHead", embed_dims=8, channels=8),
                                  head_spec("SegFormerHead", embed_dims=8)],
                         ids=["daformer", "segformer"])
def test_heads_on_any_encoder_give_stride_4_logits_resized_to_the_input(encoder, head):
    network = EncoderDecoder(5, encoder=encoder, head=head).eval()
    images = torch.randn(2, 3, 37, 53)   # odd sizes: every stage rounds up
    features = network.encode(images)
    assert [f.shape[1] for f in features] == list(network.encoder.out_channels)
    assert [tuple(f.shape[-2:]) for f in features] == [(10, 14), (5, 7), (3, 4), (2, 2)]
    decoded = network.decode(features)["main"]
    assert decoded.shape == (2, 5, 10, 14)
    output = network(images)
    assert network.heads == ("main",) and output.keys() == {"main"}
    # forward = mmseg's encode_decode: the head's logits resized to the input.
    torch.testing.assert_close(output["main"], torch.nn.functional.interpolate(
        decoded, (37, 53), mode="bilinear", align_corners=False))
    assert network.head.in_channels == tuple(network.encoder.out_channels)


def test_every_stage_reaches_the_logits():
    network = EncoderDecoder(3, encoder=TINY_ENCODER, head=head_spec("DAFormerHead",
                                                                        embed_dims=4,
                                                                        channels=4))
    network(torch.randn(2, 3, 32, 32))["main"].sum().backward()
    assert all(layer.proj.weight.grad.abs().sum() > 0 for layer in network.head.embed_layers)


def test_parameter_groups_partition_the_parameters():
    network = EncoderDecoder(4, encoder=LITE_ENCODER, head=head_spec("DAFormerHead",
                                                                       embed_dims=8,
                                                                       channels=8))
    backbone = [id(p) for p in network.backbone_parameters()]
    classifier = [id(p) for p in network.classifier_parameters()]
    assert len(set(backbone)) == len(backbone) and len(set(classifier)) == len(classifier)
    assert not set(backbone) & set(classifier)
    assert set(backbone) | set(classifier) == {id(p) for p in network.parameters()}
    assert set(backbone) == {id(p) for p in network.encoder.parameters()}
    assert set(classifier) == {id(p) for p in network.head.parameters()}


def test_lite0_encoder_reads_the_imagenet_file_and_matches_the_deeplab_encoder():
    """The installed registry file loads into the encoder alone (through the segmenter, whose
    formats are its encoder's); the four stages equal the DeepLab network's blocks at output
    stride 32 with the same file."""
    network = EncoderDecoder(4, encoder=LITE_ENCODER, head=head_spec("SegFormerHead",
                                                                       embed_dims=8))
    assert network.pretrained_formats == ("efficientnet_pytorch",)
    untouched = load_imagenet_init(network, LITE0_IMAGENET_FILE, sha256=LITE0_IMAGENET_SHA256)
    assert untouched == [f"head.{key}" for key in network.head.state_dict()]
    deeplab = EfficientNetLiteDeepLab(4, multi_level=False, output_stride=32)
    load_imagenet_init(deeplab, LITE0_IMAGENET_FILE, sha256=LITE0_IMAGENET_SHA256)
    encoder_state = network.encoder.state_dict()
    assert encoder_state.keys() == {k: v for k, v in deeplab.state_dict().items()
                                    if not k.startswith("classifier.")}.keys()

    expected: list[torch.Tensor] = []
    for stage in (1, 2, 4, 6):
        deeplab.blocks[deeplab.stage_ends[stage]].register_forward_hook(
            lambda module, inputs, output: expected.append(output))
    images = torch.rand(1, 3, 61, 75) * 2 - 1
    with torch.no_grad():
        features = network.eval().encode(images)
        deeplab.eval()(images)
    assert [f.shape[1] for f in features] == [24, 40, 112, 320]
    assert [tuple(f.shape[-2:]) for f in features] == [(16, 19), (8, 10), (4, 5), (2, 3)]
    for ours, theirs in zip(features, expected, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_a_bad_spec_names_its_config_key():
    key = "model.init_args.segmenter.init_args"
    with pytest.raises(ValueError, match=rf"^{key}.encoder: cannot import class "
                                         r"'tests.test_heads.NoSuchEncoder'"):
        EncoderDecoder(3, encoder={"class_path": "tests.test_heads.NoSuchEncoder"})
    with pytest.raises(ValueError, match=rf"^{key}.head: cannot import class 'udaseg.models.No'"):
        EncoderDecoder(3, encoder=TINY_ENCODER, head={"class_path": "udaseg.models.No"})
    with pytest.raises(ValueError, match=rf"^{key}.head.init_args: DAFormerHead does not take "
                                         r"these arguments .*'embed_dim'"):
        EncoderDecoder(3, encoder=TINY_ENCODER, head=head_spec("DAFormerHead", embed_dim=8))
    with pytest.raises(ValueError, match=rf"^{key}.head.init_args: leave out \['num_classes'\]"):
        EncoderDecoder(3, encoder=TINY_ENCODER, head=head_spec("SegFormerHead", num_classes=3))
    with pytest.raises(ValueError, match=rf"^{key}.encoder: .*Conv2d must have out_channels"):
        EncoderDecoder(3, encoder={"class_path": "torch.nn.Conv2d",
                                   "init_args": {"in_channels": 3, "out_channels": 4,
                                                 "kernel_size": 1}})


def test_the_cli_reports_a_bad_spec_in_one_line(tmp_path, capsys):
    def fit_with(encoder: dict, head: dict, exit_code: int) -> str:
        config = write_config(tmp_path, max_steps=1, segmenter={
            "class_path": "udaseg.models.EncoderDecoder",
            "init_args": {"encoder": encoder, "head": head}})
        return cli_error(capsys, ["fit", "--config", str(config)], exit_code=exit_code)

    # The parser imports class paths inside the specs already (exit code 2): its error names
    # the segmenter and shows the spec.
    line = fit_with({"class_path": "udaseg.models.NoSuchEncoder"}, head_spec("DAFormerHead"), 2)
    assert "segmenter" in line and "'udaseg.models.NoSuchEncoder'" in line
    line = fit_with(TINY_ENCODER, head_spec("DAFormerHead", embed_dim=8), 1)
    assert line == ("udaseg fit: error: model.init_args.segmenter.init_args.head.init_args: "
                    "DAFormerHead does not take these arguments (got an unexpected keyword "
                    "argument 'embed_dim')")


def test_the_cli_trains_dacs_with_it_and_the_checkpoint_rebuilds_it(tmp_path):
    segmenter = {"class_path": "udaseg.models.EncoderDecoder",
                 "init_args": {"encoder": TINY_ENCODER,
                               "head": head_spec("DAFormerHead", embed_dims=4, channels=4,
                                                 dilations=[1, 2])}}
    config = write_config(tmp_path, method="udaseg.methods.DACS", max_steps=2,
                          segmenter=segmenter)
    main(["fit", "--config", str(config)])
    path = run_dir(tmp_path, 0) / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    spec = checkpoint["hyper_parameters"]["segmenter"]
    # Plain data: the encoder and head specs exactly as configured.
    assert spec == {"class_path": "udaseg.models.encoder_decoder.EncoderDecoder",
                    "init_args": {"encoder": TINY_ENCODER,
                                  "head": head_spec("DAFormerHead", embed_dims=4, channels=4,
                                                    dilations=[1, 2])}}
    rebuilt = DACS.load_from_checkpoint(path)
    assert isinstance(rebuilt.segmenter.encoder, TinyEncoder)
    assert len(rebuilt.segmenter.head.fuse_layer.aspp_modules) == 2
    # The same network from the plain-data spec and the saved tensors: identical logits.
    reference = build_segmenter(spec, rebuilt.num_classes)
    reference.load_state_dict({k[len("segmenter."):]: v for k, v in
                               checkpoint["state_dict"].items() if k.startswith("segmenter.")})
    images = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.segmenter.eval()(images)["main"],
                                   reference.eval()(images)["main"], rtol=0, atol=0)
    saved = yaml.safe_load((run_dir(tmp_path, 0) / "config.yaml").read_text())
    assert saved["model"]["init_args"]["segmenter"] == segmenter


@pytest.mark.parametrize("name, encoder", [("daformer_mitb5.yaml", "udaseg.models.MixTransformer"),
                                           ("daformer_lite0.yaml",
                                            "udaseg.models.EfficientNetLiteEncoder")])
def test_shipped_model_configs_resolve_through_the_cli(name, encoder, tmp_path, capsys):
    config = write_config(tmp_path, segmenter=str(CONFIGS / "models" / name))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    spec = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["segmenter"]
    assert spec["class_path"] == "udaseg.models.EncoderDecoder"
    assert spec["init_args"]["encoder"]["class_path"] == encoder
    assert spec["init_args"]["head"]["class_path"] == "udaseg.models.DAFormerHead"
    if name == "daformer_lite0.yaml":   # cheap to build (MiT-B5: the size test above)
        network = build_segmenter(spec, 19)
        network.eval()
        images = torch.randn(1, 3, 64, 64)
        assert network.decode(network.encode(images))["main"].shape == (1, 19, 16, 16)
        assert network(images)["main"].shape == (1, 19, 64, 64)
