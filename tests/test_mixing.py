"""Cross-domain mixing (TUFL's CIM, DACS): ClassMix, the mixed-image loss and weights, the
on-device photometric augmentation, long-tail pasting, the frozen and EMA teachers."""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
import torch

from tests.helpers import assert_identical_weights, fit, fit_two_ranks, tiny_data, tiny_method
from udaseg.batch_augment import MixPhotometric, RandomAffine, class_mix_mask, paste
from udaseg.data import StrongView, UDADataModule, normalize
from udaseg.data.transforms import input_to_unit_rgb, unit_rgb_to_input
from udaseg.losses import confidence_fraction, mixed_pixel_weights, pixel_weighted_cross_entropy
from udaseg.methods import CrossDomainMixing
from udaseg.models import SegmenterWeights

OFF = MixPhotometric(jitter_p=0.0, brightness=None, contrast=None, saturation=None,
                     sharpness=None, noise_std=None, blur_sigma=None, equalize_p=0.0)


# ------------------------------------------------------------------ ClassMix and losses
def test_class_mix_takes_half_the_classes_and_never_the_ignore_label():
    label = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    for seed in range(10):
        mask = class_mix_mask(label, torch.Generator().manual_seed(seed))
        chosen = set(label[mask].tolist())
        assert len(chosen) == 2 and 255 not in chosen          # ceil(3 / 2) of {0, 1, 2}
        assert all(mask[label == value].all() for value in chosen)   # whole classes
    long_tail = class_mix_mask(label, torch.Generator().manual_seed(0), drop=2)
    assert len(set(label[long_tail].tolist())) == 1             # max(2 - 2, 1)
    assert not class_mix_mask(torch.full((2, 2), 255), torch.Generator()).any()


def test_class_mix_draws_the_ignore_label_as_officially_with_candidate():
    """Official DACS and CIM draw ceil(n/2) of the label's values, the ignore label counted:
    it may take a place (its pixels pasted), and one class fewer is pasted then."""
    label = torch.tensor([[0, 0, 1, 1], [1, 1, 255, 255]])
    never, candidate = ([set(label[class_mix_mask(label, torch.Generator().manual_seed(seed),
                                                  ignore_label=choice)].tolist())
                         for seed in range(20)] for choice in ("never", "candidate"))
    assert all(len(chosen) == 1 and 255 not in chosen for chosen in never)   # ceil(2 / 2)
    assert all(len(chosen) == 2 for chosen in candidate)                     # ceil(3 / 2)
    assert {0, 255} in candidate and {1, 255} in candidate and {0, 1} in candidate
    six = torch.tensor([[0, 1, 2, 3, 4, 5, 255]])
    for choice, count in (("never", 1), ("candidate", 2)):    # max(ceil(n / 2) - 2, 1)
        mask = class_mix_mask(six, torch.Generator(), drop=2, ignore_label=choice)
        assert mask.sum() == count
    unlabelled = torch.full((2, 2), 255)
    assert class_mix_mask(unlabelled, torch.Generator(), ignore_label="candidate").all()
    with pytest.raises(ValueError, match="'never' or 'candidate'"):
        class_mix_mask(label, torch.Generator(), ignore_label="always")


def test_paste_broadcasts_the_mask_over_channels():
    mask = torch.tensor([[True, False]])
    mixed = paste(mask, torch.ones(3, 1, 2), torch.zeros(3, 1, 2))
    assert mixed[:, 0, 0].tolist() == [1, 1, 1] and mixed[:, 0, 1].tolist() == [0, 0, 0]


def test_mixed_loss_weights_and_confidence_by_hand():
    teacher_prob = torch.tensor([0.99, 0.5, 0.97, 0.2]).view(1, 1, 1, 4)
    teacher_prob = torch.cat([teacher_prob, 1 - teacher_prob], dim=1)
    assert confidence_fraction(teacher_prob).item() == pytest.approx(2 / 4)  # 0.99, 0.97 >= .968
    source_mask = torch.tensor([[[True, False, False, False]]])
    weights = mixed_pixel_weights(source_mask, torch.tensor(0.25))
    assert weights.tolist() == [[[1.0, 0.25, 0.25, 0.25]]]
    logits = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]]).view(1, 2, 1, 4)
    labels = torch.tensor([[[0, 1, 0, 255]]])
    class_weights = torch.tensor([2.0, 3.0])
    nll = [-math.log(math.e / (math.e + 1)), math.log(2), -math.log(math.e ** 2 / (math.e ** 2
                                                                                    + 1))]
    expected = (1.0 * 2 * nll[0] + 0.25 * 3 * nll[1] + 0.25 * 2 * nll[2]) / 4   # / every pixel
    value = pixel_weighted_cross_entropy(logits, labels, weights, class_weights)
    assert value.item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------ photometric
@pytest.mark.parametrize("normalization", ["imagenet", "caffe_bgr", "signed"])
def test_unit_rgb_round_trip_matches_the_loader_normalisation(normalization):
    image = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    network_input = normalize(image, normalization).unsqueeze(0)
    pixels = input_to_unit_rgb(network_input, normalization)
    expected = torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32) / 255).unsqueeze(0)
    assert torch.allclose(pixels, expected, atol=1e-5)          # RGB order, [0, 1]
    assert torch.allclose(unit_rgb_to_input(pixels, normalization), network_input, atol=1e-4)


def test_mix_photometric_draws_per_image_and_is_seeded():
    images = torch.rand(2, 3, 8, 8).mul(0.5).add(0.2)
    images[1] = images[0]
    fixed = MixPhotometric(**{**OFF.__dict__, "jitter_p": 1.0, "brightness": (1.5, 1.5)})
    assert torch.allclose(fixed(images, torch.Generator()), (images * 1.5).clamp(0, 1))
    assert torch.equal(OFF(images, torch.Generator()), images)
    full = MixPhotometric()
    first = full(images, torch.Generator().manual_seed(3))
    assert torch.equal(first, full(images, torch.Generator().manual_seed(3)))
    assert not torch.allclose(first[0], first[1])               # same input, own draws
    assert first.min() >= 0 and first.max() <= 1


# ------------------------------------------------------------------ method
def data(**kwargs) -> UDADataModule:
    return tiny_data(**kwargs)


def dacs(**kwargs) -> CrossDomainMixing:
    """DACS's settings; CIM's parts come back through `kwargs`."""
    return tiny_method(CrossDomainMixing, **{"teacher": "ema", "lambda_mix": 1.0,
                                             "lambda_ufl": 0.0, "long_tail_p": 0.0,
                                             "class_weights": "none", "bn_stats": "batch",
                                             **kwargs})


class ConstantTeacher(torch.nn.Module):
    """Predicts class `label` everywhere, with probability 0.99 in the left half only."""

    def __init__(self, num_classes: int, label: int) -> None:
        super().__init__()
        self.num_classes, self.label = num_classes, label

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = torch.zeros(images.shape[0], self.num_classes, *images.shape[-2:])
        logits[:, self.label] = 1.0
        logits[:, self.label, :, : images.shape[-1] // 2] = 10.0
        return {"main": logits}


def test_mixed_batch_pastes_source_classes_onto_target_with_pseudo_labels():
    method = dacs(mix_photometric=OFF)
    method.teacher = ConstantTeacher(method.num_classes, label=4)
    batch, _, _ = next(iter(data().train_dataloader()))
    losses = {}
    images, labels, weights = method.mixed_batch(batch["source"], batch["target"], losses)
    source, target = batch["source"], batch["target"]
    for index in range(2):
        mask = weights[index] == 1.0
        assert 0.0 < mask.float().mean() < 1.0
        assert torch.allclose(images[index][:, mask], source["image"][index][:, mask])
        assert torch.allclose(images[index][:, ~mask], target["image"][index][:, ~mask])
        assert torch.equal(labels[index][mask], source["label"][index][mask])
        assert (labels[index][~mask] == 4).all()
    # Half of the target pixels are confident (>= 0.968): the target weight is 0.5.
    assert losses["mix_target_weight"].item() == pytest.approx(0.5, abs=0.02)
    assert torch.allclose(weights[weights != 1.0], losses["mix_target_weight"])


def test_classmix_ignore_label_candidate_pastes_unlabelled_source_pixels():
    """A source crop labelled ignore everywhere: "candidate" pastes it whole (label 255, what
    the official code does), "never" pastes nothing."""
    batch, _, _ = next(iter(data().train_dataloader()))
    source = {**batch["source"], "label": torch.full_like(batch["source"]["label"], 255)}
    for choice, pasted in (("never", False), ("candidate", True)):
        method = dacs(mix_photometric=OFF, classmix_ignore_label=choice)
        _, labels, weights = method.mixed_batch(source, batch["target"], {})
        assert (labels == 255).all() == pasted and (weights == 1.0).all() == pasted
        assert (labels != 255).all() != pasted


def test_mixing_refuses_a_data_module_without_normalization():
    method = dacs()
    with mock.patch.object(CrossDomainMixing, "trainer", new_callable=mock.PropertyMock,
                           return_value=mock.Mock(datamodule=object())), \
            pytest.raises(ValueError, match=r"mix_photometric .*data\.normalization"):
        method.on_train_start()


def test_cim_takes_tufl_out_of_frame_option():
    method = dacs(lambda_ufl=0.08, out_of_frame="keep")
    theta = RandomAffine(scale=(1.2, 1.2)).sample(1, torch.Generator())
    logits = {head: torch.randn(1, method.num_classes, 4, 4) for head in ("main", "aux")}
    assert method.target_predictions(logits, logits, theta, (4, 4))[2] is None
    assert dacs(lambda_ufl=0.08).target_predictions(logits, logits, theta, (4, 4))[2] is not None


def test_mixed_batch_refuses_crops_of_different_sizes():
    method = dacs()
    source = {"image": torch.zeros(1, 3, 8, 8), "label": torch.zeros(1, 8, 8, dtype=torch.long)}
    with pytest.raises(ValueError, match="target_augmentation.crop"):
        method.mixed_batch(source, {"image": torch.zeros(1, 3, 8, 6)}, {})


def test_ema_teacher_update_rule_and_parameters_only():
    method = dacs()
    with torch.no_grad():
        for parameter in method.segmenter.parameters():
            parameter.add_(1.0)
    buffers = {name: value.clone() for name, value in method.teacher.named_buffers()}
    before = [value.clone() for value in method.teacher.parameters()]
    method.update_teacher(iteration=0)                        # alpha 0: a copy of the student
    assert all(torch.equal(teacher, student) for teacher, student in
               zip(method.teacher.parameters(), method.segmenter.parameters(), strict=True))
    method.teacher.load_state_dict({**method.teacher.state_dict(),
                                    **dict(zip([n for n, _ in method.teacher.named_parameters()],
                                               before, strict=True))})
    method.update_teacher(iteration=500)                      # alpha capped at 0.99
    for teacher, old, student in zip(method.teacher.parameters(), before,
                                     method.segmenter.parameters(), strict=True):
        assert torch.allclose(teacher, 0.99 * old + 0.01 * student, atol=1e-6)
    assert all(torch.equal(value, buffers[name]) for name, value in
               method.teacher.named_buffers())


def test_frozen_teacher_needs_a_stage_one_checkpoint_and_never_moves(tmp_path):
    with pytest.raises(ValueError, match="init_checkpoint"):
        dacs(teacher="frozen")
    stage_one = dacs()
    path = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": stage_one.state_dict()}, path)
    method = dacs(teacher="frozen", weights=SegmenterWeights(init_checkpoint=str(path)),
                  lambda_ufl=0.08, long_tail_p=1.0, class_weights="source_frequency")
    initial = {name: value.clone() for name, value in method.teacher.state_dict().items()}
    assert all(torch.equal(initial[name], value)
               for name, value in stage_one.segmenter.state_dict().items())
    fit(method, steps=2, module=data(target_strong_view=StrongView()))
    assert all(torch.equal(initial[name], value)
               for name, value in method.teacher.state_dict().items())
    assert not method.teacher.training                        # CIM: eval mode
    assert not all(torch.equal(initial[name], value)
                   for name, value in method.segmenter.state_dict().items())


def test_long_tail_classes_follow_the_thresholds_and_donors_contain_them():
    method = dacs(long_tail_classes=[2, 7], long_tail_count=(3, 3))
    method.thresholds[7] = 0.1                               # unsure class: 1/theta large
    draws = [method.long_tail_draw(torch.Generator().manual_seed(seed)) for seed in range(20)]
    assert all(len(draw) == 3 for draw in draws)
    assert sum(draw.count(7) for draw in draws) > 50        # softmax(1/theta): ~all 7
    module = data()
    for class_id in range(module.num_classes):
        holders = module.class_holders(class_id)
        counts = module.source_pixel_counts()[:, class_id]
        assert set(holders.tolist()) == set(np.flatnonzero(counts > 0).tolist())
        donor = module.paste_donor(class_id)
        if donor is not None:
            assert (donor["label"] == class_id).any()


def test_resume_keeps_the_ema_teacher(tmp_path):
    """Resumed at iteration 2, the teacher continues from the checkpoint's EMA: after the third
    iteration it is (2/3) teacher_2 + (1/3) student_3."""
    trainer = fit(dacs(), steps=2)
    trainer.save_checkpoint(tmp_path / "two.ckpt")
    saved = torch.load(tmp_path / "two.ckpt", weights_only=False)["state_dict"]
    teacher_two = {key[len("teacher."):]: value for key, value in saved.items()
                   if key.startswith("teacher.")}
    assert teacher_two
    resumed = dacs()
    fit(resumed, steps=3, ckpt_path=str(tmp_path / "two.ckpt"))
    alpha = 1 - 1 / 3
    students = dict(resumed.segmenter.named_parameters())
    for name, parameter in resumed.teacher.named_parameters():
        assert torch.allclose(parameter, alpha * teacher_two[name] + (1 - alpha) * students[name],
                              atol=1e-6), name


def test_dacs_ddp_two_ranks_share_weights_and_teacher(tmp_path):
    ranks = fit_two_ranks(tmp_path, "udaseg.methods.CrossDomainMixing",
                          "--model.init_args.teacher", "ema", "--model.init_args.lambda_ufl", "0",
                          "--model.init_args.long_tail_p", "1",
                          "--model.init_args.class_weights", "none",
                          "--model.init_args.bn_stats", "batch", adversarial=False)
    # Each rank pastes its own donors; the checkpoint keeps both ranks' stream positions.
    checkpoint = torch.load(next(tmp_path.rglob("last.ckpt")), weights_only=False)
    positions = checkpoint["UDADataModule"]["donor_positions"]
    assert len(positions) == 2 and all(sum(rank.values()) >= 3 for rank in positions)
    teacher = [key for key in ranks[0]["state_dict"] if key.startswith("teacher.")]
    assert teacher
    assert not all(torch.equal(ranks[0]["state_dict"][key],
                               ranks[0]["state_dict"]["segmenter." + key[len("teacher."):]])
                   for key in teacher)                        # the EMA lags the student
    assert_identical_weights(ranks)


def test_dacs_under_bf16_mixed_stays_finite():
    method = dacs()
    fit(method, steps=2, precision="bf16-mixed")
    assert all(torch.isfinite(value).all() for value in method.teacher.parameters())
    assert all(torch.isfinite(value).all() for value in method.segmenter.parameters())


def test_long_tail_pasting_puts_donor_pixels_into_image_label_and_mask(monkeypatch):
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[1:3, 2] = True
    donor_label = torch.where(region, 3, 0)

    class Donors:
        def paste_donor(self, class_id):
            assert class_id == 3
            return {"image": torch.full((3, 4, 4), 7.0), "label": donor_label}

    monkeypatch.setattr(CrossDomainMixing, "trainer",
                        property(lambda self: type("T", (), {"datamodule": Donors()})()))
    method = dacs(long_tail_classes=[3], long_tail_count=(1, 1))
    image, label = torch.zeros(3, 4, 4), torch.ones(4, 4, dtype=torch.long)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 0] = True
    image, label, mask = method.paste_long_tail(image, label, mask, torch.Generator())
    assert (image[:, region] == 7.0).all() and (image[:, ~region] == 0.0).all()
    assert (label[region] == 3).all() and (label[~region] == 1).all()   # the donor's 0s stay out
    assert torch.equal(mask, region | (torch.arange(16).view(4, 4) == 0))


def test_mixed_loss_takes_bf16_logits_with_class_weights():
    """CIM under bf16-mixed: the class weights follow the float32 logits (the loss used to
    cast the weights to bf16 and fail in cross_entropy)."""
    logits = torch.randn(1, 3, 4, 4)
    labels, weights = torch.randint(0, 3, (1, 4, 4)), torch.rand(1, 4, 4)
    class_weights = torch.tensor([1.0, 2.0, 3.0])
    value = pixel_weighted_cross_entropy(logits.bfloat16(), labels, weights, class_weights)
    expected = pixel_weighted_cross_entropy(logits.bfloat16().float(), labels, weights,
                                            class_weights)
    assert torch.equal(value, expected)
