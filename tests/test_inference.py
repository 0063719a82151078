"""Test-time options: flip, scales and sliding windows equal plain evaluation where they must
(one scale, no flip, one window covering the image; a network that sees each pixel alone), and
average what they should otherwise."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import run_dir, write_config
from udaseg.evaluation.inference import Inference, infer_logits, window_starts
from udaseg.runtime.cli import main

torch.manual_seed(0)
PIXELWISE = torch.nn.Conv2d(3, 5, kernel_size=1)   # each pixel's logits from that pixel alone
CONTEXT = torch.nn.Conv2d(3, 5, kernel_size=3, padding=1)


def at(network):
    def logits_at(images, size):
        logits = network(images)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
    return logits_at


IMAGES = torch.randn(2, 3, 12, 20)


@torch.no_grad()
def test_the_defaults_are_one_plain_pass():
    assert torch.equal(infer_logits(at(CONTEXT), IMAGES, (12, 20), Inference()),
                       CONTEXT(IMAGES))


@torch.no_grad()
def test_one_window_covering_the_image_is_plain_inference():
    for window in [(12, 20), (64, 64)]:
        assert torch.equal(infer_logits(at(CONTEXT), IMAGES, (12, 20), Inference(window=window)),
                           CONTEXT(IMAGES))


@torch.no_grad()
def test_overlapping_windows_of_a_pixelwise_network_equal_the_whole_image():
    windowed = infer_logits(at(PIXELWISE), IMAGES, (12, 20),
                            Inference(window=(5, 8), stride=(3, 5)))
    assert torch.allclose(windowed, PIXELWISE(IMAGES), atol=1e-6)


@torch.no_grad()
def test_stitched_windows_are_resized_to_the_label_as_the_network_resizes():
    """Windows over a 12x20 input, evaluated against 24x40 labels: the stitched logits are
    resized with the network's align_corners (mmseg's False, DeepLabV2's True)."""
    options = Inference(window=(12, 20))
    for align_corners in (False, True):
        def logits_at(images, size, corners=align_corners):
            return F.interpolate(CONTEXT(images), size=size, mode="bilinear",
                                 align_corners=corners)
        expected = F.interpolate(CONTEXT(IMAGES), size=(24, 40), mode="bilinear",
                                 align_corners=align_corners)
        assert torch.allclose(infer_logits(logits_at, IMAGES, (24, 40), options, align_corners),
                              expected, atol=1e-6)
    assert not torch.allclose(
        infer_logits(at(CONTEXT), IMAGES, (24, 40), options, align_corners=False),
        F.interpolate(CONTEXT(IMAGES), size=(24, 40), mode="bilinear", align_corners=True))


@torch.no_grad()
def test_windows_average_the_logits_where_they_overlap():
    """Two windows of width 12 over 20 columns: columns 8-11 are the mean of both."""
    images = torch.randn(1, 3, 6, 20)
    windowed = infer_logits(at(CONTEXT), images, (6, 20),
                            Inference(window=(6, 12), stride=(6, 8)))
    left, right = CONTEXT(images[..., :12]), CONTEXT(images[..., 8:])
    assert torch.allclose(windowed[..., :8], left[..., :8])
    assert torch.allclose(windowed[..., 8:12], (left[..., 8:] + right[..., :4]) / 2)
    assert torch.allclose(windowed[..., 12:], right[..., 4:])


@torch.no_grad()
def test_batched_windows_equal_windows_one_at_a_time():
    calls = []

    def counted(images, size):
        calls.append(images.shape[0])
        return at(CONTEXT)(images, size)

    options = Inference(window=(5, 8), stride=(3, 5))
    one_by_one = infer_logits(counted, IMAGES, (12, 20), options)
    windows = len(calls)
    batched = infer_logits(counted, IMAGES, (12, 20),
                           Inference(window=(5, 8), stride=(3, 5), batch_windows=True))
    assert calls[windows:] == [2 * windows] and windows == 4 * 4
    assert torch.allclose(batched, one_by_one, atol=1e-6)


@torch.no_grad()
def test_flip_averages_the_probabilities_of_both_views():
    flipped = infer_logits(at(CONTEXT), IMAGES, (12, 20), Inference(flip=True))
    expected = (F.softmax(CONTEXT(IMAGES), 1) + F.softmax(CONTEXT(IMAGES.flip(-1)), 1).flip(-1)) / 2
    assert torch.allclose(F.softmax(flipped, 1), expected, atol=1e-6)
    # A network that cannot tell left from right predicts the same with and without flipping.
    assert torch.allclose(F.softmax(infer_logits(at(PIXELWISE), IMAGES, (12, 20),
                                                 Inference(flip=True)), 1),
                          F.softmax(PIXELWISE(IMAGES), 1), atol=1e-6)


@torch.no_grad()
def test_scales_predict_resized_inputs_at_the_label_size():
    plain = at(PIXELWISE)(IMAGES, (12, 20))
    half = at(PIXELWISE)(F.interpolate(IMAGES, size=(6, 10), mode="bilinear",
                                       align_corners=False), (12, 20))
    both = infer_logits(at(PIXELWISE), IMAGES, (12, 20), Inference(scales=(1.0, 0.5)))
    assert both.shape == (2, 5, 12, 20)
    assert torch.allclose(F.softmax(both, 1), (F.softmax(plain, 1) + F.softmax(half, 1)) / 2,
                          atol=1e-6)


def test_window_grid_ends_flush_with_the_image():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(10, 4, 4) == [0, 4, 6]
    assert window_starts(10, 10, 4) == window_starts(10, 30, 4) == [0]


@pytest.mark.parametrize("options, message", [
    ({"scales": ()}, "scales must be positive"),
    ({"scales": (1.0, 0.0)}, "scales must be positive"),
    ({"window": (0, 5)}, r"window must be \(height, width\) >= 1"),
    ({"stride": (2, 2)}, "stride needs inference.window"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        Inference(**options)


def test_validate_with_test_time_options_from_the_command_line(tmp_path):
    """One window covering the 32x64 images gives plain validation's numbers exactly; flip
    and two scales evaluate too, and differ: the command line's options win over the
    checkpoint's hyperparameters (which Lightning's CLI would read over them)."""
    config = write_config(tmp_path, max_steps=30)
    main(["fit", "--config", str(config)])
    checkpoint = ["--ckpt_path", str(run_dir(tmp_path, 0) / "checkpoints" / "last.ckpt")]
    runs = {"plain": [], "window": ["--model.init_args.inference.window", "[32, 64]"],
            "tta": ["--model.init_args.inference.flip", "true",
                    "--model.init_args.inference.scales", "[1.0, 0.5]"]}
    results = {}
    for version, (name, options) in enumerate(runs.items(), start=1):
        main(["validate", "--config", str(config), *checkpoint, *options])
        results[name] = json.loads((run_dir(tmp_path, version) / "val_metrics.json").read_text())
    assert results["window"]["confusion_matrix"] == results["plain"]["confusion_matrix"]
    assert results["tta"]["confusion_matrix"] != results["plain"]["confusion_matrix"]
