"""MIC (masked image consistency) against hand-computed values: the masked batch of both modes,
its loss, the pseudo-label weights it shares with the host method (DAFormer's crop included),
the EMA teacher it brings to MinEnt and AdvEnt, and its independence from the host's draws;
bf16, DDP and exact resume are in the matrices of test_resume.py and here."""

from __future__ import annotations

import functools
from unittest import mock

import numpy as np
import pytest
import torch

from tests.helpers import assert_identical_weights, fit, fit_two_ranks, tiny_method
from udaseg.adaptation import MaskedImageConsistency, StrongAugmentation
from udaseg.adaptation.masked_consistency import pseudo_weight_map
from udaseg.data.transforms import normalize
from udaseg.methods import DACS, AdvEnt, DAFormer, MinEnt
from udaseg.methods.daformer import FeatureDistance
from udaseg.models import EncoderDecoder

#: No colour jitter and no blur: the masked image is the input times the mask.
NO_AUGMENTATION = StrongAugmentation(jitter_gate=1.0, blur_gate=1.0)
TINY_MIC = MaskedImageConsistency(block_size=8)
TINY_NETWORK = {
    "encoder": {"class_path": "udaseg.models.MixTransformer", "init_args": {"variant": "b0"}},
    "head": {"class_path": "udaseg.models.DAFormerHead",
             "init_args": {"embed_dims": 16, "channels": 16}},
}


def images(count: int = 2, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.stack([normalize(rng.integers(1, 255, (32, 48, 3), dtype=np.uint8),
                                  "imagenet") for _ in range(count)])


def test_target_mode_masks_whole_blocks_to_the_mean_colour_and_keeps_the_pseudo_labels():
    mic = MaskedImageConsistency(block_size=8, photometric=NO_AUGMENTATION)
    target = images()
    labels = torch.randint(0, 5, (2, 32, 48))
    weights = torch.full((2, 32, 48), 0.25)
    batch = mic.masked_batch({}, target, labels, weights, torch.Generator().manual_seed(1),
                             "imagenet")
    kept = (batch.images != 0).all(dim=1)                    # (N, H, W)
    masked = (batch.images == 0).all(dim=1)
    assert bool((kept | masked).all())
    assert torch.equal(batch.images[kept.unsqueeze(1).expand_as(target)],
                       target[kept.unsqueeze(1).expand_as(target)])
    blocks = kept[:, ::8, ::8]                               # 2 x 4 x 6 cells of 8 pixels
    assert torch.equal(kept, blocks.repeat_interleave(8, 1).repeat_interleave(8, 2))
    assert 0 < blocks.float().mean() < 1
    assert torch.equal(batch.labels, labels) and torch.equal(batch.pixel_weights, weights)


def test_target_mode_augments_before_masking_with_its_own_generator():
    mic = MaskedImageConsistency(block_size=8, photometric=StrongAugmentation(jitter_gate=0.0))
    target = images()
    plain = MaskedImageConsistency(block_size=8, photometric=NO_AUGMENTATION)
    draws = {name: m.masked_batch({}, target, torch.zeros(2, 32, 48, dtype=torch.long),
                                  torch.ones(2, 32, 48), torch.Generator().manual_seed(1),
                                  "imagenet").images for name, m in (("aug", mic),
                                                                     ("plain", plain))}
    kept = draws["plain"] != 0
    # The jittered pixels differ where kept; the jitter draws precede the mask's, so the
    # masks differ too unless the draw counts were equal: both draw the gates first.
    assert not torch.allclose(draws["aug"][kept], draws["plain"][kept])
    again = mic.masked_batch({}, target, torch.zeros(2, 32, 48, dtype=torch.long),
                             torch.ones(2, 32, 48), torch.Generator().manual_seed(1), "imagenet")
    assert torch.equal(again.images, draws["aug"])


def test_separate_mode_takes_half_source_with_labels_and_weight_one_unaugmented():
    mic = MaskedImageConsistency(block_size=8, ratio=0.0, mode="separate")
    source = {"image": images(seed=1), "label": torch.randint(0, 5, (2, 32, 48))}
    target = images(seed=2)
    pseudo = torch.randint(0, 5, (2, 32, 48))
    weights = torch.full((2, 32, 48), 0.5)
    batch = mic.masked_batch(source, target, pseudo, weights, torch.Generator().manual_seed(0),
                             None)
    assert torch.equal(batch.images[0], source["image"][0])   # ratio 0: nothing masked
    assert torch.equal(batch.images[1], target[0])
    assert torch.equal(batch.labels[0], source["label"][0])
    assert torch.equal(batch.labels[1], pseudo[0])
    assert bool((batch.pixel_weights[0] == 1).all() and (batch.pixel_weights[1] == 0.5).all())


def test_pseudo_weight_map_crops_rows_and_margins():
    valid = torch.ones(1, 6, 2)
    valid[..., 1] = 0
    weights = pseudo_weight_map(torch.tensor(0.8), (1, 6, 2), top=1, bottom=2, valid=valid)
    expected = torch.tensor([[0.0, 0.8, 0.8, 0.8, 0.0, 0.0]]).T * torch.tensor([1.0, 0.0])
    assert torch.allclose(weights[0], expected)


def test_bad_settings_name_the_key():
    with pytest.raises(ValueError, match="mic.mode"):
        MaskedImageConsistency(mode="separatesrc")
    with pytest.raises(ValueError, match="model.init_args.mic"):
        MaskedImageConsistency(ratio=1.0)
    with pytest.raises(ValueError, match="mic.bn_statistics"):
        MaskedImageConsistency(bn_statistics="freeze")


def daformer_with_mic(**kwargs) -> DAFormer:
    return tiny_method(DAFormer, segmenter=functools.partial(EncoderDecoder, **TINY_NETWORK),
                       feature_distance=FeatureDistance(classes=(5, 6, 8)), **kwargs)


def spy_masked_step(method) -> list:
    seen = []
    original = type(method).masked_consistency_step

    def spy(self, source, target_images, labels, weights):
        seen.append((target_images.clone(), labels.clone(), weights.clone()))
        return original(self, source, target_images, labels, weights)

    return seen, mock.patch.object(type(method), "masked_consistency_step", spy)


def test_daformer_mic_trains_on_the_teachers_labels_with_the_crop_and_confidence_weight():
    method = daformer_with_mic(mic=TINY_MIC, pseudo_weight_crop=(3, 5), pseudo_confidence=0.0)
    seen, patch = spy_masked_step(method)
    teacher_before = [p.clone() for p in method.teacher.parameters()]
    with patch:
        fit(method, steps=1)
    (target_images, labels, weights), = seen
    # The teacher then was the initial network (its BN uses batch statistics, so a copy with
    # the initial weights labels the same images alike).
    copy = daformer_with_mic()
    for parameter, value in zip(copy.segmenter.parameters(), teacher_before, strict=True):
        parameter.data.copy_(value)
    copy.teacher.network.load_state_dict(copy.segmenter.state_dict())
    copy.teacher.train()
    with torch.no_grad():
        expected = copy.teacher(target_images)["main"].argmax(1)
    assert torch.equal(labels, expected)
    band = torch.zeros(weights.shape[-2], dtype=torch.bool)
    band[:3] = band[-5:] = True
    assert bool((weights[:, band] == 0).all() and (weights[:, ~band] == 1).all())


def test_mic_draws_leave_the_hosts_iteration_unchanged():
    """MIC draws from its own generator stream: with lambda_mic = 0 DACS trains exactly as
    without MIC, and with lambda_mic = 1 it trains differently (every pseudo-label counts:
    a teacher from scratch is never confident)."""
    results = {}
    for name, mic in (("none", None), ("zero", MaskedImageConsistency(block_size=8, weight=0.0)),
                      ("one", TINY_MIC)):
        torch.manual_seed(0)
        method = tiny_method(DACS, mic=mic, pseudo_confidence=0.0)
        fit(method, steps=2)
        results[name] = [p.detach().clone() for p in method.segmenter.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(results["none"], results["zero"], strict=True))
    assert not all(torch.equal(a, b)
                   for a, b in zip(results["none"], results["one"], strict=True))


def test_kept_bn_statistics_leave_the_running_statistics_of_the_clean_batches():
    """With lambda_mic = 0, "keep" trains exactly as without MIC, BN running statistics
    included; "update" (official) moves them with the masked batch."""
    states = {}
    for name, mic in (("none", None),
                      ("keep", MaskedImageConsistency(block_size=8, weight=0.0,
                                                      bn_statistics="keep")),
                      ("update", MaskedImageConsistency(block_size=8, weight=0.0))):
        torch.manual_seed(0)
        method = tiny_method(DACS, mic=mic, pseudo_confidence=0.0)
        fit(method, steps=2)
        states[name] = method.segmenter.state_dict()
    running = [key for key in states["none"] if "running_mean" in key]
    assert running
    assert all(torch.equal(states["none"][key], states["keep"][key]) for key in states["none"])
    assert not all(torch.equal(states["none"][key], states["update"][key]) for key in running)


@pytest.mark.parametrize("method_class", [MinEnt, AdvEnt])
def test_methods_without_a_teacher_get_an_ema_teacher_with_the_official_timing(method_class):
    assert tiny_method(method_class).teacher is None
    method = tiny_method(method_class, mic=TINY_MIC)
    assert any(key.startswith("teacher.network.") for key in method.state_dict())
    assert method.teacher.ema_momentum == 0.999 and method.teacher.bn == "train"
    initial = [value.clone() for value in method.teacher.parameters()]
    seen, patch = spy_masked_step(method)
    with patch:
        fit(method, steps=1)
    (_, labels, weights), = seen
    assert labels.dtype == torch.long and weights.unique().numel() == 1
    for start, teacher, student in zip(initial, method.teacher.parameters(),
                                       method.segmenter.parameters(), strict=True):
        assert torch.allclose(teacher, 0.5 * start + 0.5 * student, atol=1e-6)


def test_mic_under_bf16_mixed_stays_finite():
    method = daformer_with_mic(mic=TINY_MIC)
    seen, patch = spy_masked_step(method)
    with patch:
        fit(method, steps=2, precision="bf16-mixed")
    assert len(seen) == 2
    for module in (method.segmenter, method.teacher):
        assert all(torch.isfinite(value).all() for value in module.parameters())


def test_mic_on_advent_ddp_two_ranks_share_student_and_teacher(tmp_path):
    ranks = fit_two_ranks(tmp_path, "udaseg.methods.AdvEnt",
                          "--model.init_args.mic", '{"block_size": 8}')
    assert any(key.startswith("teacher.network.") for key in ranks[0]["state_dict"])
    assert_identical_weights(ranks)
