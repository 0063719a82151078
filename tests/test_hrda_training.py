"""HRDA in training (DAFormer with `udaseg.models.HRDA`, with and without MIC): the source loss
is 0.9 fused + 0.1 detail on a detail crop drawn per forward, the feature distance reads the
context view, pseudo-label margins marked before cropping weigh the mix and MIC, other methods
refuse the network; bf16, DDP and exact resume. The network itself is in test_hrda.py."""

from __future__ import annotations

import functools
from unittest import mock

import numpy as np
import pytest
import torch

from tests.helpers import (
    assert_identical_weights,
    first_training_batch,
    fit,
    fit_two_ranks,
    tiny_data,
    tiny_method,
)
from udaseg.adaptation import MaskedImageConsistency
from udaseg.adaptation.batch_augment import iteration_generator
from udaseg.adaptation.detail_crops import DETAIL_CROP_STREAM
from udaseg.data import Augmentation
from udaseg.data.synthetic import SyntheticStreets
from udaseg.data.transforms import TransformedDataset, pseudo_margin_map
from udaseg.losses import multi_resolution_loss
from udaseg.methods import DACS, DAFormer
from udaseg.methods.daformer import FeatureDistance
from udaseg.models import HRDA

TINY_HRDA = {
    "encoder": {"class_path": "udaseg.models.MixTransformer", "init_args": {"variant": "b0"}},
    "head": {"class_path": "udaseg.models.DAFormerHead",
             "init_args": {"embed_dims": 16, "channels": 16}},
    "attention_head": {"class_path": "udaseg.models.SegFormerHead",
                       "init_args": {"embed_dims": 16}},
    "detail_crop": [32, 32],
}
#: MiT-B0 needs 29 pixels a side: the tiny benchmark at twice its size, so the context view
#: (half of it) is 32x64.
SIZE = (64, 128)


def hrda_data(**target_augmentation) -> object:
    return tiny_data(source_augmentation=Augmentation(resize=SIZE),
                     target_augmentation=Augmentation(resize=SIZE, **target_augmentation))


def hrda_daformer(**kwargs) -> DAFormer:
    kwargs.setdefault("feature_distance", None)
    return tiny_method(DAFormer, segmenter=functools.partial(HRDA, **TINY_HRDA), **kwargs)


def test_source_loss_is_the_multi_resolution_loss_of_a_box_from_the_crop_stream():
    method = hrda_daformer()
    boxes, losses = [], []
    forward_train = HRDA.forward_train

    def spy(self, images, box):
        output = forward_train(self, images, box)
        boxes.append(box)
        losses.append(output)
        return output

    with mock.patch.object(HRDA, "forward_train", spy):
        fit(method, steps=1, module=hrda_data())
    # Source, mix: each its own box, drawn in order from the iteration's crop stream.
    assert len(boxes) == 2
    generator = iteration_generator(method.augmentation_seed, 0, 0, stream=DETAIL_CROP_STREAM)
    expected = [method.segmenter.draw_detail_box(*SIZE, generator) for _ in range(2)]
    assert boxes == expected
    assert all(y2 - y1 == 32 and x2 - x1 == 32 and y1 % 8 == 0 and x1 % 8 == 0
               for y1, y2, x1, x2 in boxes)


def test_source_loss_weighs_fused_and_detail_nine_to_one():
    method = hrda_daformer()
    source = first_training_batch()[0]
    images = torch.nn.functional.interpolate(source["image"], size=SIZE, mode="bilinear")
    labels = source["label"].repeat_interleave(2, 1).repeat_interleave(2, 2)
    output = method.segmenter.forward_train(images, (8, 40, 16, 48))
    parts = multi_resolution_loss(output.fused, output.detail, output.box, labels,
                                  reduction="all_pixels")
    assert parts.total.item() == pytest.approx(0.9 * parts.fused.item()
                                               + 0.1 * parts.detail.item(), rel=1e-6)
    assert method.segmenter.detail_loss_weight == 0.1


def test_feature_distance_reads_the_context_view():
    method = hrda_daformer(feature_distance=FeatureDistance(classes=(5, 6, 8)))
    seen = []
    original = type(method.feature_distance).forward

    def spy(self, images, features, labels):
        seen.append((tuple(images.shape), tuple(features.shape), tuple(labels.shape)))
        return original(self, images, features, labels)

    data = hrda_data()
    with mock.patch.object(type(method.feature_distance), "forward", spy):
        fit(method, steps=1, module=data)
    (images, features, labels), = seen
    assert images[-2:] == (32, 64) and labels[-2:] == (64, 128)   # context: half resolution
    assert features[-2:] == (1, 2)                                  # MiT-B0's stride 32


def test_other_methods_refuse_the_multi_resolution_network():
    with pytest.raises(ValueError, match="HRDA"):
        tiny_method(DACS, segmenter=functools.partial(HRDA, **TINY_HRDA))


def test_pseudo_margins_follow_the_image_through_the_crop_and_leave_its_draws_alone():
    dataset = SyntheticStreets("real", "train", 2, height=32, width=64)
    crop = Augmentation(crop=(16, 16), hflip=False)
    marked = Augmentation(crop=(16, 16), hflip=False, pseudo_margins=(3, 5, 2, 4))
    plain_stream = TransformedDataset(dataset, crop, "signed", keep_label=False)
    marked_stream = TransformedDataset(dataset, marked, "signed", keep_label=False)
    full = TransformedDataset(dataset, Augmentation(), "signed", keep_label=False)
    expected = pseudo_margin_map((32, 64), (3, 5, 2, 4))
    seen_border = False
    for position in range(12):
        for stream in (plain_stream, marked_stream):
            stream.reseed(5)
        plain, item = plain_stream[(position, 0)], marked_stream[(position, 0)]
        assert torch.equal(plain["image"], item["image"])
        assert "pseudo_valid" not in plain
        # Locate the crop in the whole image and compare with the map's window there.
        whole = full[0]["image"]
        (top, left), = [(y, x) for y in range(17) for x in range(49)
                        if torch.equal(whole[:, y:y + 16, x:x + 16], item["image"])]
        window = expected[top:top + 16, left:left + 16]
        assert np.array_equal(item["pseudo_valid"].numpy(), window == 1)
        seen_border |= not window.all()
    assert seen_border


def test_margins_weigh_the_mix_and_mic_of_target_pixels():
    method = hrda_daformer(mic=MaskedImageConsistency(block_size=8), pseudo_confidence=0.0,
                           pseudo_weight_crop=(0, 0))
    seen = []
    original = DAFormer.masked_consistency_step

    def spy(self, source, target_images, labels, weights):
        seen.append(weights.clone())
        return original(self, source, target_images, labels, weights)

    data = hrda_data(pseudo_margins=(3, 5, 2, 4))
    with mock.patch.object(DAFormer, "masked_consistency_step", spy):
        fit(method, steps=1, module=data)
    # The margins are counted on the 32x64 images, before the resize to 64x128 doubles them.
    (weights,), expected = seen, torch.from_numpy(pseudo_margin_map(SIZE, (6, 10, 4, 8)))
    assert torch.equal(weights, expected.float().expand_as(weights))


def test_mic_hrda_under_bf16_mixed_stays_finite():
    method = hrda_daformer(mic=MaskedImageConsistency(block_size=8))
    fit(method, steps=2, module=hrda_data(), precision="bf16-mixed")
    for module in (method.segmenter, method.teacher):
        assert all(torch.isfinite(value).all() for value in module.parameters())


def test_mic_hrda_ddp_two_ranks_share_student_and_teacher(tmp_path):
    segmenter = {"class_path": "udaseg.models.HRDA", "init_args": TINY_HRDA}
    ranks = fit_two_ranks(tmp_path, "udaseg.methods.DAFormer",
                          "--model.init_args.feature_distance", "null",
                          "--model.init_args.mic", '{"block_size": 8}',
                          "--data.source_augmentation", '{"resize": [64, 128]}',
                          "--data.target_augmentation", '{"resize": [64, 128]}',
                          "--data.eval_augmentation",
                          '{"resize": [64, 128], "resize_label": false}',
                          segmenter=segmenter, adversarial=False)
    assert any(key.startswith("segmenter.attention.") for key in ranks[0]["state_dict"])
    assert_identical_weights(ranks)



def test_margins_on_a_labelled_stream_are_refused():
    dataset = SyntheticStreets("synthetic", "train", 2, height=32, width=64)
    with pytest.raises(ValueError, match="target_augmentation"):
        TransformedDataset(dataset, Augmentation(pseudo_margins=(1, 1, 1, 1)), "signed")


def test_dacs_weighs_its_mix_by_the_margins_too():
    method = tiny_method(DACS, mic=MaskedImageConsistency(block_size=8), pseudo_confidence=0.0)
    seen = []
    original = DACS.masked_consistency_step

    def spy(self, source, target_images, labels, weights):
        seen.append(weights.clone())
        return original(self, source, target_images, labels, weights)

    data = tiny_data(target_augmentation=Augmentation(pseudo_margins=(3, 5, 2, 4)))
    with mock.patch.object(DACS, "masked_consistency_step", spy):
        fit(method, steps=1, module=data)
    expected = torch.from_numpy(pseudo_margin_map((32, 64), (3, 5, 2, 4))).float()
    assert torch.equal(seen[0], expected.expand_as(seen[0]))
