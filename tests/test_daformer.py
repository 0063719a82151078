"""DAFormer as a method: its defaults, the teacher's official timing and mode, the pseudo-label
crop, the ImageNet feature distance in training, evaluation with the teacher, bf16 and DDP.
The parts (MiT, heads, feature distance, strong augmentation, optimiser, RCS) have their own
test modules."""

from __future__ import annotations

import functools
from unittest import mock

import pytest
import torch

from tests.helpers import (
    assert_identical_weights,
    first_training_batch,
    fit,
    fit_two_ranks,
    tiny_method,
    tiny_segmenter,
)
from udaseg.adaptation.class_mix import ClassMix
from udaseg.methods import DAFormer
from udaseg.methods.daformer import DAFORMER_OPTIM, FeatureDistance
from udaseg.models import DeepLabV2, EncoderDecoder, SegmenterWeights
from udaseg.models.mit import MiTBlock

#: The benchmark's thing classes (car, person, traffic sign), as configs/synthetic/daformer.yaml.
TINY_THINGS = FeatureDistance(classes=(5, 6, 8))
TINY_NETWORK = {
    "encoder": {"class_path": "udaseg.models.MixTransformer", "init_args": {"variant": "b0"}},
    "head": {"class_path": "udaseg.models.DAFormerHead",
             "init_args": {"embed_dims": 16, "channels": 16}},
}


def daformer(**kwargs) -> DAFormer:
    """DAFormer with MiT-B0 and a 16-channel DAFormer head on the tiny benchmark."""
    kwargs.setdefault("segmenter", functools.partial(EncoderDecoder, **TINY_NETWORK))
    kwargs.setdefault("feature_distance", TINY_THINGS)
    return tiny_method(DAFormer, **kwargs)


def test_defaults_are_the_official_recipe():
    method = daformer()
    assert method.teacher.ema_momentum == 0.999 and method.teacher.bn == "train"
    assert method.hparams.pseudo_weight_crop == (15, 120)
    assert method.hparams.loss_reduction == "all_pixels"
    assert method.hparams.optim == DAFORMER_OPTIM
    assert DAFORMER_OPTIM.lr == 6e-5 and DAFORMER_OPTIM.warmup_iters == 1500
    assert method.feature_distance.weight == 0.005
    assert FeatureDistance().classes == (6, 7, 11, 12, 13, 14, 15, 16, 17, 18)


def test_teacher_takes_half_the_student_after_the_first_step():
    """Officially the EMA runs at the start of the next iteration with that iteration's alpha:
    after step 0 the teacher is 0.5 * initial + 0.5 * student (DACS's timing would copy the
    student whole: alpha(0) = 0)."""
    method = daformer()
    initial = [value.clone() for value in method.teacher.parameters()]
    fit(method, steps=1)
    for start, teacher, student in zip(initial, method.teacher.parameters(),
                                       method.segmenter.parameters(), strict=True):
        assert torch.allclose(teacher, 0.5 * start + 0.5 * student, atol=1e-6)
    assert not all(torch.equal(start, teacher) for start, teacher in
                   zip(initial, method.teacher.parameters(), strict=True))


def test_teacher_in_training_uses_batch_statistics_without_dropout_or_drop_path():
    method = daformer()
    method.train()
    modules = list(method.teacher.network.modules())
    norms = [module for module in modules if isinstance(module, torch.nn.BatchNorm2d)]
    assert norms and all(module.training for module in norms)
    assert not any(module.training for module in modules
                   if isinstance(module, (torch.nn.Dropout2d, MiTBlock)))
    images = torch.randn(2, 3, 32, 64)
    assert torch.equal(method.teacher(images)["main"], method.teacher(images)["main"])
    method.eval()
    assert not any(module.training for module in modules)


def test_pseudo_label_crop_zeroes_the_rows_of_target_pixels_only():
    # Every pixel counts as confident: target pixels outside the band keep weight 1.
    method = daformer(pseudo_weight_crop=(3, 5), pseudo_confidence=0.0)
    masks, seen = [], []
    mix, weighted_loss = ClassMix.__call__, DAFormer.weighted_loss

    def spy_mix(self, *args, **kwargs):
        mixed = mix(self, *args, **kwargs)
        masks.append(mixed.source_mask.clone())
        return mixed

    def spy_loss(self, images, labels, pixel_weights):
        seen.append(pixel_weights.clone())
        return weighted_loss(self, images, labels, pixel_weights)

    with mock.patch.object(ClassMix, "__call__", spy_mix), \
            mock.patch.object(DAFormer, "weighted_loss", spy_loss):
        fit(method, steps=1)
    (weights,), (source_mask,) = seen, masks
    band = torch.zeros(weights.shape[-2], dtype=torch.bool)
    band[:3] = band[-5:] = True
    target_band = band[None, :, None] & ~source_mask
    assert target_band.any() and (weights[target_band] == 0).all()
    assert (weights[source_mask] == 1).all()
    assert (weights[~band[None, :, None].expand_as(weights) & ~source_mask] == 1).all()


def test_feature_distance_trains_the_student_and_keeps_its_imagenet_copy():
    method = daformer(feature_distance=FeatureDistance(weight=1.0, classes=None))
    copy_before = {name: value.clone()
                   for name, value in method.feature_distance.encoder.state_dict().items()}
    assert all(torch.equal(value, method.segmenter.encoder.state_dict()[name])
               for name, value in copy_before.items())
    method.train()
    assert not method.feature_distance.encoder.training
    source, _ = first_training_batch()
    features = method.segmenter.encode(source["image"])
    distance = method.feature_distance(source["image"], features[-1], source["label"])
    # Equal weights, eval-mode copy against train-mode student (drop-path): a non-zero value
    # whose gradient reaches the student encoder.
    distance.backward()
    gradients = [value.grad for value in method.segmenter.encoder.parameters()]
    assert any(grad is not None and grad.abs().sum() > 0 for grad in gradients)
    assert all(value.grad is None for value in method.feature_distance.encoder.parameters())
    method.segmenter.zero_grad()
    fit(method, steps=2)
    after = method.feature_distance.encoder.state_dict()
    assert all(torch.equal(value, after[name]) for name, value in copy_before.items())
    assert not all(torch.equal(value, method.segmenter.encoder.state_dict()[name])
                   for name, value in copy_before.items())


def test_feature_distance_needs_an_encoder_decoder_and_can_be_switched_off():
    deeplab = tiny_segmenter(DeepLabV2)
    with pytest.raises(ValueError, match=r"model\.init_args\.feature_distance.*EncoderDecoder"):
        tiny_method(DAFormer, segmenter=deeplab, feature_distance=TINY_THINGS)
    method = tiny_method(DAFormer, segmenter=deeplab, feature_distance=None)
    assert method.feature_distance is None
    fit(method, steps=1)


def test_feature_distance_refuses_classes_outside_the_label_space():
    with pytest.raises(ValueError, match=r"model\.init_args\.feature_distance.*\[0, 9\)"):
        daformer(feature_distance=FeatureDistance())            # Cityscapes ids, 9 classes


def test_imagenet_copy_stays_imagenet_when_training_starts_from_a_checkpoint(tmp_path):
    """From a trained checkpoint (e.g. source-only), the copy is rebuilt from the ImageNet
    weights, not taken from the checkpoint's encoder."""
    imagenet = daformer()
    imagenet_file = tmp_path / "imagenet.pth"
    torch.save(imagenet.segmenter.encoder.state_dict(), imagenet_file)
    trained = daformer()
    trained.segmenter.load_state_dict(imagenet.segmenter.state_dict())
    with torch.no_grad():
        for value in trained.segmenter.parameters():
            value.add_(1.0)
    checkpoint = tmp_path / "trained.ckpt"
    torch.save({"state_dict": trained.state_dict()}, checkpoint)
    method = daformer(weights=SegmenterWeights(pretrained=str(imagenet_file),
                                               pretrained_format="mit",
                                               init_checkpoint=str(checkpoint)))
    copy = method.feature_distance.encoder.state_dict()
    for name, value in imagenet.segmenter.encoder.state_dict().items():
        assert torch.equal(copy[name], value), name
        if value.is_floating_point() and name.endswith("weight"):
            assert torch.allclose(method.segmenter.encoder.state_dict()[name], value + 1.0)


def test_evaluate_teacher_predicts_with_the_ema():
    method = daformer(evaluate="teacher")
    with torch.no_grad():
        for value in method.teacher.parameters():
            value.mul_(0.5)
    method.eval()
    images = torch.randn(1, 3, 32, 64)
    expected = method.teacher(images)["main"]
    logits = method.logits_at(images, (32, 64))
    assert torch.allclose(logits, torch.nn.functional.interpolate(
        expected, (32, 64), mode="bilinear", align_corners=False), atol=1e-6)
    assert not torch.allclose(logits, daformer().logits_at(images, (32, 64)))
    with pytest.raises(ValueError, match="evaluate"):
        daformer(evaluate="ema")


def test_daformer_under_bf16_mixed_stays_finite():
    method = daformer()
    fit(method, steps=2, precision="bf16-mixed")
    for module in (method.segmenter, method.teacher):
        assert all(torch.isfinite(value).all() for value in module.parameters())


def test_daformer_ddp_two_ranks_share_weights_teacher_and_imagenet_copy(tmp_path):
    segmenter = {"class_path": "udaseg.models.EncoderDecoder", "init_args": TINY_NETWORK}
    ranks = fit_two_ranks(tmp_path, "udaseg.methods.DAFormer",
                          "--model.init_args.feature_distance.classes", "[5, 6, 8]",
                          segmenter=segmenter, adversarial=False)
    keys = ranks[0]["state_dict"].keys()
    assert any(key.startswith("teacher.network.") for key in keys)
    assert any(key.startswith("feature_distance.encoder.") for key in keys)
    assert_identical_weights(ranks)
