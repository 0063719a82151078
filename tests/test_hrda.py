"""HRDA's multi-resolution segmenter and loss: the fusion (with the official masking quirk), the
detail crop draw, the sliding detail windows of inference, the 0.9/0.1 loss, and MiT-B0 shapes
and parameter groups. Hand-computed values throughout, on stub networks whose logits are known.
"""

from __future__ import annotations

import math
from typing import ClassVar

import pytest
import torch
from torch import nn

from udaseg.losses import MultiResolutionLoss, multi_resolution_loss
from udaseg.models import HRDA, MAIN, build_segmenter

STUB_ENCODER = {"class_path": "tests.test_hrda.StrideFourEncoder", "init_args": {}}
PIXEL_HEAD = {"class_path": "tests.test_hrda.PixelHead", "init_args": {}}
B0_ENCODER = {"class_path": "udaseg.models.MixTransformer", "init_args": {"variant": "b0"}}


class StrideFourEncoder(nn.Module):
    """A pixel-wise stand-in for an encoder: one "stage", the image sampled every 4 pixels (so
    a window at an offset divisible by 4 sees exactly the whole image's values there)."""

    out_channels = (3,)
    pretrained_formats: ClassVar[tuple[str, ...]] = ("stub",)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [images[..., ::4, ::4]]

    def load_pretrained(self, state, fmt, source) -> list[str]:
        return []


class PixelHead(nn.Module):
    """A 1x1 conv on the first stage: logits at stride 4, pixel by pixel."""

    def __init__(self, in_channels, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels[0], num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.conv(features[0])


def stub_hrda(**kwargs) -> HRDA:
    kwargs = {"encoder": STUB_ENCODER, "head": PIXEL_HEAD, "attention_head": PIXEL_HEAD,
              "detail_crop": (32, 32), **kwargs}
    return HRDA(2, **kwargs)


def known_network(context: float, detail: float, attention_logit: float) -> tuple[HRDA,
                                                                                  torch.Tensor]:
    """A stub HRDA and a 64x64 image on which its context logits are `context`, its detail
    logits `detail` and its attention `sigmoid(attention_logit)`, everywhere and per class.

    Channel 0 alternates column by column between `detail` and `2 * context - detail`: the
    half-scale context view averages neighbouring columns (`context`), the detail view samples
    even columns only (`detail`)."""
    network = stub_hrda()
    with torch.no_grad():
        for conv in (network.head.conv, network.attention.conv):
            conv.weight.zero_()
            conv.bias.zero_()
        network.head.conv.weight[:, 0] = 1.0
        network.attention.conv.bias.fill_(attention_logit)
    image = torch.zeros(1, 3, 64, 64)
    image[:, 0, :, 0::2] = detail
    image[:, 0, :, 1::2] = 2 * context - detail
    return network, image


def test_training_fusion_inside_outside_and_just_outside_the_crop():
    # context 1, detail 3, attention s = 0.5; box on the 8-pixel lattice.
    network, image = known_network(context=1.0, detail=3.0, attention_logit=0.0)
    box = (16, 48, 24, 56)
    out = network.forward_train(image, box)
    assert out.box == box
    assert out.fused.shape == (1, 2, 16, 16)
    torch.testing.assert_close(out.detail, torch.full((1, 2, 8, 8), 3.0))
    assert [tuple(f.shape) for f in out.context_features] == [(1, 3, 8, 8)]
    # Attention on the 8x8 context grid: 0.5 on the box // 8 = rows 2..5, columns 3..6, exactly
    # 0 elsewhere.
    expected_attention = torch.zeros(1, 2, 8, 8)
    expected_attention[..., 2:6, 3:7] = 0.5
    assert torch.equal(out.attention, expected_attention)
    fused = out.fused[0, 0]
    # Fused grid (16x16), box // 4 = rows 4..11, columns 6..13. Upsampling x2 (align_corners
    # False) reads context rows j/2 - 1/4: row 5 mixes context rows 2 and 3 (both inside).
    inside = 0.5 * 3.0 + 0.5 * 1.0
    assert torch.allclose(fused[5:11, 7:13], torch.full((6, 6), inside))
    # First row inside (4): 3/4 of an inside context row, 1/4 of an outside one:
    # up(att) = 0.375, up((1 - att) * context) = 0.75 * 0.5 + 0.25 * 1.
    assert torch.allclose(fused[4, 7:13], torch.full((6,), 0.375 * 3.0 + 0.625))
    # Just outside (row 3): no detail, but 1/4 of the masked inside row is blurred in:
    # up((1 - att) * context) = 0.75 * 1 + 0.25 * 0.5 = 0.875, not up(context) = 1 (the quirk).
    assert torch.allclose(fused[3, 7:13], torch.full((6,), 0.875))
    assert torch.allclose(fused[11, 7:13], torch.full((6,), 0.375 * 3.0 + 0.625))
    assert torch.allclose(fused[12, 7:13], torch.full((6,), 0.875))
    # Far from the box the context alone.
    assert torch.equal(fused[0:2], torch.ones(2, 16))
    assert torch.equal(fused[:, 0:4], torch.ones(16, 4))


def test_inference_fuses_every_window_without_a_mask():
    network, image = known_network(context=1.0, detail=3.0, attention_logit=0.0)
    logits = network(image)[MAIN]
    assert logits.shape == (1, 2, 64, 64)
    torch.testing.assert_close(logits, torch.full((1, 2, 64, 64), 0.5 * 3.0 + 0.5 * 1.0))


def test_detail_windows_follow_the_official_slide_grid():
    network = stub_hrda()   # crop 32, stride 16
    assert network.detail_stride == (16, 16)
    spans = [(0, 32), (16, 48), (32, 64)]
    assert network.detail_windows(64, 64) == [(*r, *c) for r in spans for c in spans]
    # 72 rows: (72 - 32 + 15) // 16 + 1 = 4 windows, the last one flush with the end.
    assert [w[:2] for w in network.detail_windows(72, 32)] == [(0, 32), (16, 48), (32, 64),
                                                              (40, 72)]
    assert network.detail_windows(32, 32) == [(0, 32, 0, 32)]
    assert len(stub_hrda(detail_stride=(32, 32)).detail_windows(64, 64)) == 4


@pytest.mark.parametrize("size", [(64, 64), (72, 96)])
def test_sliding_detail_windows_of_a_pixelwise_network_equal_the_whole_image(size):
    torch.manual_seed(0)
    batched = stub_hrda()
    sequential = stub_hrda(batch_detail_windows=False)
    sequential.load_state_dict(batched.state_dict())
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        whole = batched.head(batched.encode(images))
        windows = batched.detail_logits(images)
        assert windows.shape == (2, 2, size[0] // 4, size[1] // 4)
        torch.testing.assert_close(windows, whole)
        torch.testing.assert_close(sequential.detail_logits(images), windows, rtol=0,
                                   atol=1e-6)
        torch.testing.assert_close(sequential(images)[MAIN], batched(images)[MAIN], rtol=0,
                                   atol=1e-6)


def test_detail_box_offsets_are_divisible_and_stop_short_of_the_margin():
    network = stub_hrda(detail_crop=(512, 512))
    generator = torch.Generator().manual_seed(0)
    rows, cols = set(), set()
    for _ in range(1500):
        y1, y2, x1, x2 = network.draw_detail_box(1024, 1536, generator)
        assert (y2 - y1, x2 - x1) == (512, 512)
        rows.add(y1)
        cols.add(x1)
    # (512 + 1) // 8 = 64 positions: 0, 8, ..., 504 (never 512); (1024 + 1) // 8 = 128.
    assert rows == set(range(0, 505, 8))
    assert cols == set(range(0, 1017, 8))
    # Exactly the crop size: the whole image, no draw.
    assert network.draw_detail_box(512, 512, generator) == (0, 512, 0, 512)
    # One side equal to the crop: offset 0 there (the official code raises).
    assert network.draw_detail_box(512, 1024, generator)[:2] == (0, 512)
    with pytest.raises(ValueError, match="larger than the 256x1024 training image"):
        network.draw_detail_box(256, 1024, generator)


def test_detail_box_is_reproducible_height_first():
    network = stub_hrda(detail_crop=(512, 512))
    box = network.draw_detail_box(1024, 1536, torch.Generator().manual_seed(7))
    assert box == network.draw_detail_box(1024, 1536, torch.Generator().manual_seed(7))
    reference = torch.Generator().manual_seed(7)
    y1 = int(torch.randint(0, 64, (1,), generator=reference)) * 8
    x1 = int(torch.randint(0, 128, (1,), generator=reference)) * 8
    assert box == (y1, y1 + 512, x1, x1 + 512)


LABELS = torch.tensor([[[0, 1, 255, 1], [1, 0, 0, 255]]])
BOX = (0, 2, 1, 3)   # cropped labels [[1, 255], [0, 0]]
LOG2, LOG4, LOG4_3 = math.log(2), math.log(4), math.log(4 / 3)


def loss_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    fused = torch.zeros(1, 2, 2, 4)                   # p = 1/2: CE log 2 per labelled pixel
    detail = torch.tensor([0.0, math.log(3)]).view(1, 2, 1, 1)   # p = (1/4, 3/4), any size
    return fused, detail


def test_loss_is_point_nine_fused_plus_point_one_detail():
    fused, detail = loss_inputs()
    loss = multi_resolution_loss(fused, detail, BOX, LABELS)
    assert isinstance(loss, MultiResolutionLoss)
    # All pixels: 6 labelled of 8; crop: labels 1, 0, 0 of 4 pixels.
    expected_fused = 6 * LOG2 / 8
    expected_detail = (LOG4_3 + 2 * LOG4) / 4
    assert loss.fused.item() == pytest.approx(expected_fused)
    assert loss.detail.item() == pytest.approx(expected_detail)
    assert loss.total.item() == pytest.approx(0.9 * expected_fused + 0.1 * expected_detail)
    labelled = multi_resolution_loss(fused, detail, BOX, LABELS, reduction="labelled")
    assert labelled.total.item() == pytest.approx(0.9 * LOG2 + 0.1 * (LOG4_3 + 2 * LOG4) / 3)


def test_loss_with_pixel_weights_averages_over_all_pixels():
    fused, detail = loss_inputs()
    weights = torch.tensor([[[1.0, 0.5, 1.0, 1.0], [0.0, 1.0, 0.25, 1.0]]])
    loss = multi_resolution_loss(fused, detail, BOX, LABELS, pixel_weights=weights,
                                 detail_weight=0.25)
    # Labelled weights 1 + 0.5 + 1 + 0 + 1 + 0.25; crop weights [[0.5, 1], [1, 0.25]].
    expected_fused = 3.75 * LOG2 / 8
    expected_detail = (0.5 * LOG4_3 + 1.25 * LOG4) / 4
    assert loss.fused.item() == pytest.approx(expected_fused)
    assert loss.detail.item() == pytest.approx(expected_detail)
    assert loss.total.item() == pytest.approx(0.75 * expected_fused + 0.25 * expected_detail)


def test_loss_upsamples_without_aligned_corners():
    # Class-1 logits [0, 4] at half width: align_corners=False reads columns
    # (0, 0.25, 0.75, 1) of the way -> [0, 1, 3, 4] (align_corners=True: [0, 4/3, 8/3, 4]).
    fused = torch.tensor([[[[0.0, 0.0]], [[0.0, 4.0]]]])
    labels = torch.ones(1, 1, 4, dtype=torch.long)
    loss = multi_resolution_loss(fused, fused, (0, 1, 0, 4), labels, detail_weight=0.0)
    expected = sum(math.log1p(math.exp(-z)) for z in (0, 1, 3, 4)) / 4
    assert loss.total.item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="not inside the 1x4 labels"):
        multi_resolution_loss(fused, fused, (0, 2, 0, 4), labels)


def test_mit_b0_shapes_parameter_groups_and_gradients():
    torch.manual_seed(0)
    network = build_segmenter({"class_path": "udaseg.models.HRDA",
                               "init_args": {"encoder": B0_ENCODER, "detail_crop": [32, 32]}}, 3)
    assert isinstance(network, HRDA) and network.detail_crop == (32, 32)
    assert type(network.attention).__name__ == "SegFormerHead"
    assert network.attention.conv_seg.in_channels == 256
    backbone = {id(p) for p in network.backbone_parameters()}
    classifier = {id(p) for p in network.classifier_parameters()}
    assert not backbone & classifier
    assert backbone | classifier == {id(p) for p in network.parameters()}
    assert {id(p) for p in network.attention.parameters()} <= classifier
    assert {id(p) for p in network.encoder.parameters()} == backbone

    images = torch.randn(2, 3, 64, 64)
    out = network.forward_train(images, network.draw_detail_box(64, 64, None))
    assert out.fused.shape == (2, 3, 16, 16) and out.detail.shape == (2, 3, 8, 8)
    assert [tuple(f.shape[1:]) for f in out.context_features] == [
        (32, 8, 8), (64, 4, 4), (160, 2, 2), (256, 1, 1)]
    labels = torch.randint(0, 3, (2, 64, 64))
    multi_resolution_loss(out.fused, out.detail, out.box, labels).total.backward()
    assert network.attention.conv_seg.weight.grad.abs().sum() > 0

    network.eval()
    with torch.no_grad():
        logits = network(images)[MAIN]
        assert logits.shape == (2, 3, 64, 64)
        network.batch_detail_windows = False
        torch.testing.assert_close(network(images)[MAIN], logits)


def test_load_pretrained_reports_the_attention_head_untouched():
    network = stub_hrda()
    untouched = network.load_pretrained({}, "stub", "file")
    assert "attention.conv.weight" in untouched and "head.conv.weight" in untouched


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"context_scale": 0.0}, "init_args.context_scale must be in"),
    ({"detail_crop": (32,)}, "init_args.detail_crop: expected"),
    ({"crop_divisible": 0}, "init_args.crop_divisible must be"),
    ({"detail_stride": (48, 16)}, "init_args.detail_stride .* must not exceed"),
    ({"attention_head": {"class_path": "udaseg.models.SegFormerHead",
                         "init_args": {"num_classes": 2}}}, "init_args.attention_head.init_args"),
])
def test_bad_arguments_name_the_config_key(kwargs, message):
    with pytest.raises(ValueError, match=f"model.init_args.segmenter.{message}"):
        stub_hrda(**kwargs)


def test_misaligned_crop_and_box_are_refused():
    network = stub_hrda(detail_crop=(30, 30))
    with pytest.raises(ValueError, match="multiples of the head's output stride"):
        network.forward_train(torch.zeros(1, 3, 64, 64), (0, 30, 0, 30))
    with pytest.raises(ValueError, match="not inside the 64x64 image"):
        stub_hrda().forward_train(torch.zeros(1, 3, 64, 64), (40, 72, 0, 32))
