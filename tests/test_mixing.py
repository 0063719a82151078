"""Cross-domain mixing: the components (ClassMix, the mixed-image loss and weights, the
on-device photometric augmentation, long-tail pasting, the frozen and EMA teachers) and the
methods built from them (DACS, TUFL's CIM)."""

from __future__ import annotations

import math
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from tests.helpers import assert_identical_weights, fit, fit_two_ranks, tiny_data, tiny_method
from udaseg.adaptation import (
    DACS_MIX_PHOTOMETRIC,
    ClassMix,
    LongTailPasting,
    PseudoLabels,
    Teacher,
    ThresholdSelection,
    teacher_pseudo_labels,
)
from udaseg.adaptation.batch_augment import MixPhotometric, RandomAffine, class_mix_mask, paste
from udaseg.adaptation.masked_consistency import pseudo_weight_map
from udaseg.adaptation.photometric import require_input_normalization
from udaseg.data import StrongView, UDADataModule, normalize
from udaseg.data.transforms import input_to_unit_rgb, unit_rgb_to_input
from udaseg.losses import (
    confidence_fraction,
    mixed_pixel_weights,
    pixel_weighted_cross_entropy,
)
from udaseg.methods import CIM, DACS, TUFL
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


def test_pseudo_label_crop_zeroes_target_rows_only():
    """DAFormer's crop: target pixels of the top/bottom rows get weight 0, pasted source pixels
    keep 1 (`DACS.weighted_mix`); the same as the official order (crop the target's map, then
    mix it with ones)."""
    generator = torch.Generator().manual_seed(0)
    source_mask = torch.rand(2, 10, 3, generator=generator) > 0.5
    fraction = torch.tensor(0.7)
    mixed = mixed_pixel_weights(source_mask, fraction)
    cropped = torch.where(source_mask, mixed, pseudo_weight_map(fraction, (2, 10, 3), 2, 3))
    target_map = fraction.expand(2, 10, 3).clone()
    target_map[:, :2], target_map[:, -3:] = 0.0, 0.0
    assert torch.equal(cropped, torch.where(source_mask, torch.ones(()), target_map))
    assert (cropped[source_mask] == 1.0).all()
    assert (cropped[:, 2:7][~source_mask[:, 2:7]] == 0.7).all()
    # bottom=0 crops nothing (a `[-0:]` slice would take every row).
    untouched = torch.where(source_mask, mixed, pseudo_weight_map(fraction, (2, 10, 3), 0, 0))
    assert torch.equal(untouched, mixed)
    with pytest.raises(ValueError, match="non-negative"):
        pseudo_weight_map(fraction, (2, 10, 3), -1, 0)


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


# ------------------------------------------------------------------ components
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


def data(**kwargs) -> UDADataModule:
    return tiny_data(**kwargs)


def test_class_mix_pastes_source_classes_onto_target_with_pseudo_labels():
    batch, _, _ = next(iter(data().train_dataloader()))
    source, target = batch["source"], batch["target"]
    pseudo = teacher_pseudo_labels(ConstantTeacher(6, label=4), target["image"])
    # Half of the target pixels are confident (>= 0.968): the target weight is 0.5.
    assert pseudo.confidence_weight.item() == pytest.approx(0.5, abs=0.02)
    mixed = ClassMix(photometric=OFF)(source, target["image"], pseudo, torch.Generator(),
                                      "imagenet")
    for index in range(2):
        mask = mixed.source_mask[index]
        assert 0.0 < mask.float().mean() < 1.0
        assert torch.allclose(mixed.images[index][:, mask], source["image"][index][:, mask])
        assert torch.allclose(mixed.images[index][:, ~mask], target["image"][index][:, ~mask])
        assert torch.equal(mixed.labels[index][mask], source["label"][index][mask])
        assert (mixed.labels[index][~mask] == 4).all()
    assert (mixed.pixel_weights[mixed.source_mask] == 1.0).all()
    assert torch.allclose(mixed.pixel_weights[~mixed.source_mask], pseudo.confidence_weight)


def test_classmix_ignore_label_candidate_pastes_unlabelled_source_pixels():
    """A source crop labelled ignore everywhere: "candidate" pastes it whole (label 255, what
    the official code does), "never" pastes nothing."""
    batch, _, _ = next(iter(data().train_dataloader()))
    source = {**batch["source"], "label": torch.full_like(batch["source"]["label"], 255)}
    pseudo = teacher_pseudo_labels(ConstantTeacher(6, label=4), batch["target"]["image"])
    for choice, pasted in (("never", False), ("candidate", True)):
        mixed = ClassMix(ignore_label=choice, photometric=OFF)(
            source, batch["target"]["image"], pseudo, torch.Generator(), "imagenet")
        assert (mixed.labels == 255).all() == pasted
        assert (mixed.pixel_weights == 1.0).all() == pasted
        assert (mixed.labels != 255).all() != pasted


def test_class_mix_draws_do_not_depend_on_long_tail_pasting():
    """Without long-tail pasting ClassMix still draws its per-pair decision, so the masks of a
    generator are the same whether pasting is configured (and never happens) or not."""
    batch, _, _ = next(iter(data().train_dataloader()))
    pseudo = teacher_pseudo_labels(ConstantTeacher(6, label=4), batch["target"]["image"])
    never = LongTailPasting(0.0, 6, sampling="uniform")
    masks = [ClassMix(photometric=OFF, long_tail=long_tail)(
        batch["source"], batch["target"]["image"], pseudo, torch.Generator().manual_seed(5),
        "imagenet").source_mask for long_tail in (None, never)]
    assert torch.equal(*masks)


def test_class_mix_per_batch_draws_among_the_classes_of_every_source_label():
    """DAFormer's choice: half of the batch's classes, drawn anew for each image, so an image
    whose classes were not drawn pastes nothing; per image, an image always pastes half of its
    own."""
    labels = torch.tensor([[[0, 0, 1, 1]], [[2, 2, 3, 3]]])
    source = {"image": torch.zeros(2, 3, 1, 4), "label": labels}
    pseudo = PseudoLabels(torch.zeros(2, 1, 4, dtype=torch.long), torch.tensor(1.0))
    pasted = {choice: [ClassMix(photometric=OFF, class_choice=choice)(
        source, torch.zeros(2, 3, 1, 4), pseudo, torch.Generator().manual_seed(seed),
        "imagenet").source_mask.sum(dim=(1, 2)).tolist() for seed in range(30)]
        for choice in ("per_image", "per_batch")}
    assert all(counts == [2, 2] for counts in pasted["per_image"])
    assert {0, 2, 4} >= {count for counts in pasted["per_batch"] for count in counts}
    assert any(0 in counts for counts in pasted["per_batch"])     # none of its classes drawn
    assert any(4 in counts for counts in pasted["per_batch"])     # both of its classes drawn
    with pytest.raises(ValueError, match="per_image"):
        ClassMix(class_choice="per_pair")


def test_class_mix_refuses_crops_of_different_sizes():
    source = {"image": torch.zeros(1, 3, 8, 8), "label": torch.zeros(1, 8, 8, dtype=torch.long)}
    pseudo = PseudoLabels(torch.zeros(1, 8, 6, dtype=torch.long), torch.tensor(1.0))
    with pytest.raises(ValueError, match="target_augmentation.crop"):
        ClassMix()(source, torch.zeros(1, 3, 8, 6), pseudo, torch.Generator(), "imagenet")


def test_device_photometric_steps_refuse_a_missing_normalization():
    with pytest.raises(ValueError, match=r"mix_photometric .*data\.normalization"):
        require_input_normalization(None, ["mix_photometric"], object())
    require_input_normalization(None, [], object())              # nothing needs it
    require_input_normalization("imagenet", ["mix_photometric"], object())


def test_ema_teacher_update_rule_and_parameters_only():
    student = tiny_method(DACS).segmenter
    teacher = Teacher(student, "ema", ema_momentum=0.99)
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(1.0)
    buffers = {name: value.clone() for name, value in teacher.named_buffers()}
    before = [value.clone() for value in teacher.parameters()]
    teacher.update(student, iteration=0)                      # alpha 0: a copy of the student
    assert all(torch.equal(mine, theirs) for mine, theirs in
               zip(teacher.parameters(), student.parameters(), strict=True))
    with torch.no_grad():
        for parameter, old in zip(teacher.parameters(), before, strict=True):
            parameter.copy_(old)
    teacher.update(student, iteration=500)                    # alpha capped at 0.99
    for mine, old, theirs in zip(teacher.parameters(), before, student.parameters(),
                                 strict=True):
        assert torch.allclose(mine, 0.99 * old + 0.01 * theirs, atol=1e-6)
    assert all(torch.equal(value, buffers[name]) for name, value in teacher.named_buffers())
    assert not any(parameter.requires_grad for parameter in teacher.parameters())


def test_teacher_bn_mode_follows_the_method_mode():
    student = tiny_method(DACS).segmenter
    for bn, training in (("train", True), ("eval", False)):
        teacher = Teacher(student, "ema", bn=bn).train()
        norms = [module for module in teacher.network.modules()
                 if isinstance(module, torch.nn.BatchNorm2d)]
        assert norms and all(norm.training == training for norm in norms)
        # Everything else (dropout, drop-path) is off in the teacher either way.
        assert not teacher.network.training
        teacher.eval()
        assert not any(module.training for module in teacher.network.modules())
    frozen = Teacher(student, "frozen")
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(1.0)
    frozen.update(student, iteration=10)
    assert not any(torch.equal(mine, theirs) for mine, theirs in
                   zip(frozen.parameters(), student.parameters(), strict=True))


def test_long_tail_classes_follow_the_thresholds_and_donors_contain_them():
    selection = ThresholdSelection(6)
    long_tail = LongTailPasting(0.3, 6, classes=[2, 5], count=(3, 3), selection=selection)
    selection.thresholds[5] = 0.1                            # unsure class: 1/theta large
    draws = [long_tail.draw(torch.Generator().manual_seed(seed)) for seed in range(20)]
    assert all(len(draw) == 3 for draw in draws)
    assert sum(draw.count(5) for draw in draws) > 50        # softmax(1/theta): ~all 5
    module = data()
    for class_id in range(module.num_classes):
        holders = module.class_holders(class_id)
        counts = module.source_pixel_counts()[:, class_id]
        assert set(holders.tolist()) == set(np.flatnonzero(counts > 0).tolist())
        donor = module.paste_donor(class_id)
        if donor is not None:
            assert (donor["label"] == class_id).any()


def test_long_tail_pasting_puts_donor_pixels_into_image_label_and_mask():
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[1:3, 2] = True
    donor_label = torch.where(region, 3, 0)

    class Donors:
        def paste_donor(self, class_id):
            assert class_id == 3
            return {"image": torch.full((3, 4, 4), 7.0), "label": donor_label}

    long_tail = LongTailPasting(1.0, 6, classes=[3], count=(1, 1), sampling="uniform")
    with pytest.raises(RuntimeError, match="attach"):
        long_tail.paste(torch.zeros(3, 4, 4), torch.ones(4, 4, dtype=torch.long),
                        torch.zeros(4, 4, dtype=torch.bool), torch.Generator())
    with pytest.raises(ValueError, match="UDADataModule"):
        long_tail.attach(object())
    long_tail.attach(Donors())
    image, label = torch.zeros(3, 4, 4), torch.ones(4, 4, dtype=torch.long)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 0] = True
    image, label, mask = long_tail.paste(image, label, mask, torch.Generator())
    assert (image[:, region] == 7.0).all() and (image[:, ~region] == 0.0).all()
    assert (label[region] == 3).all() and (label[~region] == 1).all()   # the donor's 0s stay out
    assert torch.equal(mask, region | (torch.arange(16).view(4, 4) == 0))


# ------------------------------------------------------------------ methods
def dacs(**kwargs) -> DACS:
    return tiny_method(DACS, **kwargs)


@pytest.fixture
def stage_one(tmp_path) -> Path:
    """A stage-1 (TUFL) checkpoint of the tiny network: CIM's frozen teacher."""
    path = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": tiny_method(TUFL).state_dict()}, path)
    return path


def cim(stage_one: Path, **kwargs) -> CIM:
    return tiny_method(CIM, weights=SegmenterWeights(init_checkpoint=str(stage_one)),
                       **{"bn_stats": "batch", **kwargs})


def test_dacs_defaults_are_the_papers():
    method = dacs()
    assert method.hparams.lambda_mix == 1.0 and method.teacher.ema_momentum == 0.99
    assert method.teacher.update_rule == "ema" and method.teacher.bn == "train"
    assert method.class_mix.photometric == DACS_MIX_PHOTOMETRIC
    assert method.class_mix.long_tail is None
    assert method.hparams.bn_stats == "batch"


def test_dacs_teacher_follows_the_student_after_each_step():
    """Built as DACS is (an EMA teacher, no configuration), the teacher moves once the student
    has stepped."""
    method = dacs()
    teacher_before = [value.clone() for value in method.teacher.parameters()]
    fit(method, steps=2)
    assert not all(torch.equal(before, after) for before, after in
                   zip(teacher_before, method.teacher.parameters(), strict=True))


def test_mixing_refuses_a_data_module_without_normalization():
    method = dacs()
    with mock.patch.object(DACS, "trainer", new_callable=mock.PropertyMock,
                           return_value=mock.Mock(datamodule=object())), \
            pytest.raises(ValueError, match=r"mix_photometric .*data\.normalization"):
        method.on_train_start()


def test_cim_takes_tufl_out_of_frame_option(stage_one):
    method = cim(stage_one, out_of_frame="keep")
    theta = RandomAffine(scale=(1.2, 1.2)).sample(1, torch.Generator())
    logits = {head: torch.randn(1, method.num_classes, 4, 4) for head in ("main", "aux")}
    assert method.views.predictions(logits, logits, theta, (4, 4), ["main"])[2] is None
    assert cim(stage_one).views.predictions(logits, logits, theta, (4, 4), ["main"])[2] \
        is not None


def test_cim_needs_a_stage_one_checkpoint_and_its_teacher_never_moves(stage_one):
    with pytest.raises(ValueError, match="init_checkpoint"):
        tiny_method(CIM)
    method = cim(stage_one, long_tail_p=1.0)
    initial = {name: value.clone() for name, value in method.teacher.network.state_dict().items()}
    saved = torch.load(stage_one, weights_only=False)["state_dict"]
    assert all(torch.equal(initial[name], saved["segmenter." + name]) for name in initial)
    fit(method, steps=2, module=data(target_strong_view=StrongView()))
    assert all(torch.equal(initial[name], value)
               for name, value in method.teacher.network.state_dict().items())
    assert not method.teacher.training                        # CIM: eval mode
    assert not all(torch.equal(initial[name], value)
                   for name, value in method.segmenter.state_dict().items())


def test_resume_keeps_the_ema_teacher(tmp_path):
    """Resumed at iteration 2, the teacher continues from the checkpoint's EMA: after the third
    iteration it is (2/3) teacher_2 + (1/3) student_3."""
    trainer = fit(dacs(), steps=2)
    trainer.save_checkpoint(tmp_path / "two.ckpt")
    saved = torch.load(tmp_path / "two.ckpt", weights_only=False)["state_dict"]
    prefix = "teacher.network."
    teacher_two = {key[len(prefix):]: value for key, value in saved.items()
                   if key.startswith(prefix)}
    assert teacher_two
    resumed = dacs()
    fit(resumed, steps=3, ckpt_path=str(tmp_path / "two.ckpt"))
    alpha = 1 - 1 / 3
    students = dict(resumed.segmenter.named_parameters())
    for name, parameter in resumed.teacher.network.named_parameters():
        assert torch.allclose(parameter, alpha * teacher_two[name] + (1 - alpha) * students[name],
                              atol=1e-6), name


def test_checkpoints_of_the_earlier_layout_load(tmp_path):
    """A checkpoint whose teacher was saved as `teacher.*` (before the teacher owned its
    network) resumes: its keys are renamed to `teacher.network.*`."""
    trainer = fit(dacs(), steps=1)
    trainer.save_checkpoint(tmp_path / "one.ckpt")
    checkpoint = torch.load(tmp_path / "one.ckpt", weights_only=False)
    checkpoint["state_dict"] = {key.replace("teacher.network.", "teacher."): value
                                for key, value in checkpoint["state_dict"].items()}
    torch.save(checkpoint, tmp_path / "old.ckpt")
    resumed = dacs()
    fit(resumed, steps=2, ckpt_path=str(tmp_path / "old.ckpt"))
    assert resumed.global_step == 2


def test_dacs_ddp_two_ranks_share_weights_and_teacher(tmp_path):
    ranks = fit_two_ranks(tmp_path, "udaseg.methods.DACS", adversarial=False)
    prefix = "teacher.network."
    teacher = [key for key in ranks[0]["state_dict"] if key.startswith(prefix)]
    assert teacher
    assert not all(torch.equal(ranks[0]["state_dict"][key],
                               ranks[0]["state_dict"]["segmenter." + key[len(prefix):]])
                   for key in teacher)                        # the EMA lags the student
    assert_identical_weights(ranks)


def test_cim_ddp_two_ranks_keep_their_donor_positions(tmp_path):
    stage_one = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": tiny_method(TUFL).state_dict()}, stage_one)
    ranks = fit_two_ranks(tmp_path, "udaseg.methods.CIM",
                          "--model.init_args.weights.init_checkpoint", str(stage_one),
                          "--model.init_args.long_tail_p", "1",
                          "--model.init_args.bn_stats", "batch",
                          "--data.target_strong_view", "{}", adversarial=False)
    # Each rank pastes its own donors; the checkpoint keeps both ranks' stream positions.
    checkpoint = torch.load(next(tmp_path.rglob("last.ckpt")), weights_only=False)
    positions = checkpoint["UDADataModule"]["donor_positions"]
    assert len(positions) == 2 and all(sum(rank.values()) >= 3 for rank in positions)
    assert_identical_weights(ranks)


def test_dacs_under_bf16_mixed_stays_finite():
    method = dacs()
    fit(method, steps=2, precision="bf16-mixed")
    assert all(torch.isfinite(value).all() for value in method.teacher.parameters())
    assert all(torch.isfinite(value).all() for value in method.segmenter.parameters())


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
