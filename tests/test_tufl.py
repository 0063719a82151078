"""TUFL stage 1: its losses against hand-computed values, the device affine, the method."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import (
    assert_identical_weights,
    first_training_batch,
    fit,
    fit_two_ranks,
    tiny_data,
    tiny_method,
    tiny_segmenter,
)
from udaseg.adaptation.batch_augment import (
    MixPhotometric,
    RandomAffine,
    in_frame_mask,
    iteration_generator,
    warp,
)
from udaseg.adaptation.photometric import augment_input
from udaseg.adaptation.two_views import STRONG_VIEW_STREAM
from udaseg.data import StrongView, UDADataModule
from udaseg.losses import (
    adaptive_thresholds,
    class_balance_weights,
    class_weighted_cross_entropy,
    confidence_selection,
    unsupervised_focal_loss,
)
from udaseg.methods import TUFL
from udaseg.models import Segmenter

ALL = torch.ones(1, 1, 1, dtype=torch.bool)


def two_class_logits(first: float) -> torch.Tensor:
    return torch.tensor([first, 0.0]).view(1, 2, 1, 1)


# ------------------------------------------------------------------ losses
@pytest.mark.parametrize("modulation", ["confidence", "difference"])
def test_focal_loss_matches_the_formula_by_hand(modulation):
    clean, strong = two_class_logits(2.0), two_class_logits(0.5)
    p0, q0 = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(-0.5))
    p, q = (p0, 1 - p0), (q0, 1 - q0)
    m = 1 - q0 if modulation == "confidence" else abs(p0 - q0)
    weights = (2.0, 3.0)
    expected = sum(w * (pc * math.log(pc) - m ** 2 * pc * math.log(qc) - pc * math.log(pc))
                   for w, pc, qc in zip(weights, p, q, strict=True))
    value = unsupervised_focal_loss(clean, strong, ALL, torch.tensor(weights),
                                    modulation=modulation)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_focal_loss_gradients_are_the_official_ones():
    """Clean view: only the entropy term trains it (p̄ is a stop-gradient); strong view: the
    cross term, through log q and through m."""
    clean = torch.randn(2, 4, 3, 3, requires_grad=True)
    strong = torch.randn(2, 4, 3, 3, requires_grad=True)
    selected = torch.rand(2, 3, 3) > 0.3
    unsupervised_focal_loss(clean, strong, selected, modulation="difference").backward()
    p = clean.softmax(1)
    entropy = (-(p * torch.log(p + 1e-30)).sum(1))[selected].mean()
    (expected_clean,) = torch.autograd.grad(entropy, clean)
    assert torch.allclose(clean.grad, expected_clean, atol=1e-6)
    p_fixed = p.detach()
    q = strong.softmax(1)
    label = p_fixed.argmax(1, keepdim=True)
    m = (p_fixed.gather(1, label) - q.gather(1, label)).abs()
    cross = (-(m ** 2) * p_fixed * torch.log(q + 1e-30)).sum(1)[selected].mean()
    (expected_strong,) = torch.autograd.grad(cross, strong)
    assert torch.allclose(strong.grad, expected_strong, atol=1e-6)


def test_focal_loss_without_selected_pixels_is_zero_not_nan():
    clean = torch.randn(1, 3, 2, 2, requires_grad=True)
    value = unsupervised_focal_loss(clean, torch.randn(1, 3, 2, 2),
                                    torch.zeros(1, 2, 2, dtype=torch.bool))
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(clean.grad).all()


def test_identical_views_give_the_clamped_minimum_with_the_difference_factor():
    logits = torch.randn(1, 3, 2, 2)
    value = unsupervised_focal_loss(logits, logits.clone(), torch.ones(1, 2, 2, dtype=torch.bool),
                                    modulation="difference")
    assert value.item() == pytest.approx(1e-8)


def test_adaptive_threshold_rank_rule_by_hand():
    thresholds = torch.tensor([0.95, 0.8, 1.0], dtype=torch.float64)
    # class 0: 9 pixels + theta = 10 scores; index floor(10 * 0.8 * 0.95^8) = 5
    scores = torch.tensor([0.99, 0.98, 0.97, 0.96, 0.94, 0.93, 0.92, 0.91, 0.90])
    confidence = torch.cat([scores, torch.tensor([1.0])])
    predicted = torch.tensor([0] * 9 + [2])
    updated = adaptive_thresholds(confidence, predicted, thresholds)
    ranked = sorted([*scores.tolist(), 0.95], reverse=True)[int(10 * 0.8 * 0.95 ** 8)]
    assert int(10 * 0.8 * 0.95 ** 8) == 5
    assert updated[0].item() == pytest.approx(0.9 * 0.95 + 0.1 * ranked)
    assert updated[1].item() == pytest.approx(0.8), "no pixel predicted: unchanged"
    assert updated[2].item() == pytest.approx(0.999), ">= 1 becomes the ceiling"
    assert updated.dtype == torch.float64 and thresholds[0].item() == 0.95


def test_confidence_selection_is_strict_per_class_and_in_frame():
    prob = torch.tensor([[0.75, 0.875], [0.25, 0.125]]).view(1, 2, 1, 2)   # both class 0
    thresholds = torch.tensor([0.75, 0.0], dtype=torch.float64)
    assert confidence_selection(prob, thresholds).tolist() == [[[False, True]]]
    frame = torch.tensor([[[True, False]]])
    assert not confidence_selection(prob, thresholds, frame).any()
    assert confidence_selection(prob, torch.tensor(0.5)).all()


def test_class_weights_follow_the_enet_rule():
    weights = class_balance_weights(torch.tensor([60.0, 40.0, 0.0]))
    assert weights.tolist() == pytest.approx([1 / math.log(1.7), 1 / math.log(1.5),
                                              1 / math.log(1.1)], rel=1e-6)
    with pytest.raises(ValueError, match="all zero"):
        class_balance_weights(torch.zeros(3))


def test_weighted_cross_entropy_divides_by_every_pixel_as_officially():
    logits = torch.zeros(1, 2, 1, 2)
    labels = torch.tensor([[[1, 255]]])
    value = class_weighted_cross_entropy(logits, labels, torch.tensor([1.0, 3.0]))
    assert value.item() == pytest.approx(3.0 * math.log(2) / 2)


# ------------------------------------------------------------------ device affine
def test_affine_identity_flip_and_frame():
    images = torch.randn(2, 3, 6, 8)
    generator = torch.Generator().manual_seed(0)
    identity = RandomAffine(rotation=0, shear=0, scale=(1, 1), flip=0).sample(2, generator)
    assert torch.allclose(warp(images, identity), images, atol=1e-5)
    flipped = RandomAffine(rotation=0, shear=0, scale=(1, 1), flip=1).sample(2, generator)
    assert torch.allclose(warp(images, flipped), images.flip(-1), atol=1e-5)
    zoom_in = RandomAffine(rotation=0, shear=0, scale=(0.8, 0.8), flip=0).sample(1, generator)
    zoom_out = RandomAffine(rotation=0, shear=0, scale=(1.2, 1.2), flip=0).sample(1, generator)
    assert in_frame_mask(zoom_in, (6, 8)).all()
    assert not in_frame_mask(zoom_out, (6, 8))[0, 0, 0]
    draws = [RandomAffine().sample(3, iteration_generator(7, 5, 1)) for _ in range(2)]
    assert torch.equal(*draws)
    assert not torch.equal(draws[0], RandomAffine().sample(3, iteration_generator(7, 6, 1)))


# ------------------------------------------------------------------ the method
class PixelSegmenter(Segmenter):
    """A 1x1 convolution: it commutes with any warp inside the frame."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes, self.heads = num_classes, ("main",)
        self.classifier = nn.Conv2d(3, num_classes, 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"main": self.classifier(images)}

    def backbone_parameters(self) -> list[nn.Parameter]:
        return []

    def classifier_parameters(self) -> list[nn.Parameter]:
        return list(self.classifier.parameters())


def data(strong_view: StrongView | None = StrongView()) -> UDADataModule:
    return tiny_data(target_strong_view=strong_view)


def tufl(**kwargs) -> TUFL:
    return tiny_method(TUFL, bn_stats="batch", **kwargs)


def fit_tufl(method: TUFL, steps: int, module: UDADataModule | None = None) -> pl.Trainer:
    return fit(method, steps, module=module or data())


def test_clean_logits_are_warped_into_the_strong_frame():
    """With no photometric change and a warp-equivariant network, the warped clean logits
    equal the strong logits in the frame: the two views see one geometry."""
    off = StrongView(brightness=None, contrast=None, saturation=None, sharpness=None,
                     shadow_intensity=None, noise_sd=None, blur_radius=None, equalize_p=0.0)
    batch, _, _ = next(iter(data(off).train_dataloader()))
    method = tufl(segmenter=PixelSegmenter, class_weights="none")
    strong_images, theta = method.views.strong_view(batch["target"], method.iteration_generator,
                                                    "imagenet")
    clean, strong, in_frame = method.views.predictions(
        method.segmenter(batch["target"]["image"]), method.segmenter(strong_images), theta,
        tuple(strong_images.shape[-2:]), ["main"])
    assert in_frame.float().mean() > 0.3
    frame = in_frame.unsqueeze(1).expand_as(clean["main"])
    assert torch.allclose(clean["main"][frame], strong["main"][frame], atol=1e-4)
    assert not torch.allclose(clean["main"], method.segmenter(batch["target"]["image"])["main"])


def test_tufl_trains_moves_thresholds_and_checkpoints_them(tmp_path):
    method = tufl(initial_threshold=0.05)
    fit_tufl(method, steps=2)
    module = data()
    counts = torch.from_numpy(module.source_pixel_counts().sum(0))
    assert torch.allclose(method.class_weights, class_balance_weights(counts))
    assert not torch.equal(method.thresholds, torch.full_like(method.thresholds, 0.05))
    path = tmp_path / "tufl.ckpt"
    torch.save({"state_dict": method.state_dict()}, path)
    restored = tufl(initial_threshold=0.05)
    restored.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    assert torch.equal(restored.thresholds, method.thresholds)
    assert torch.equal(restored.class_weights, method.class_weights)


def test_fixed_threshold_keeps_thresholds_and_missing_strong_view_is_explained():
    method = tufl(threshold="fixed", modulation="difference", class_weights=[1.0] * 9)
    fit_tufl(method, steps=1)
    assert torch.equal(method.thresholds, torch.full_like(method.thresholds, 0.8))
    assert method.class_weights.tolist() == [1.0] * 9
    with pytest.raises(ValueError, match="target_strong_view"):
        fit_tufl(tufl(), steps=1, module=data(strong_view=None))
    with pytest.raises(ValueError, match="class_weights has 2 entries"):
        tufl(class_weights=[1.0, 2.0])


def test_device_strong_view_replaces_the_workers_one():
    """`device_strong_view` makes the strong view from the clean target batch on the device: no
    "strong_image" is needed; with every step off it is the clean view, with the defaults it
    differs, and one iteration draws the same view every time."""
    off = MixPhotometric(jitter_p=0.0, noise_std=None, blur_sigma=None, equalize_p=0.0)
    images = first_training_batch()[1]["image"]

    def photometric_view(method: TUFL) -> torch.Tensor:
        return augment_input(method.views.device_photometric, images, "imagenet",
                             method.iteration_generator(STRONG_VIEW_STREAM))

    assert torch.allclose(photometric_view(tufl(device_strong_view=off)), images, atol=1e-5)
    method = tufl(device_strong_view=MixPhotometric())
    strong = photometric_view(method)
    assert strong.shape == images.shape and not torch.allclose(strong, images, atol=1e-2)
    assert torch.equal(photometric_view(method), strong)
    trained = tufl(device_strong_view={}, initial_threshold=0.05)
    fit_tufl(trained, steps=2, module=data(strong_view=None))
    assert not torch.equal(trained.thresholds, torch.full_like(trained.thresholds, 0.05))


def test_tufl_bf16_mixed_stays_finite():
    method = tufl()
    fit(method, steps=2, module=data(), precision="bf16-mixed")
    assert all(torch.isfinite(tensor).all() for tensor in method.state_dict().values()
               if tensor.is_floating_point())


def test_tufl_ddp_two_ranks_share_weights_and_thresholds(tmp_path):
    ranks = fit_two_ranks(tmp_path, "udaseg.methods.TUFL", "--data.target_strong_view", "{}",
                          "--model.init_args.initial_threshold", "0.05",
                          "--model.init_args.bn_stats", "batch", adversarial=False)
    thresholds = ranks[0]["state_dict"]["selection.thresholds"]
    assert not torch.equal(thresholds, torch.full_like(thresholds, 0.05))
    assert_identical_weights(ranks)


def test_head_weights_replace_the_aux_weight_and_name_unknown_heads():
    method = tufl(class_weights="none", head_weights={"main": 0.5, "aux": 0.25})
    batch, _, _ = next(iter(data().train_dataloader()))
    outputs = method.segmenter(batch["source"]["image"])
    losses = method.supervised_loss(outputs, batch["source"]["label"])
    assert losses["seg"].item() == pytest.approx(0.5 * losses["seg_main"].item()
                                                 + 0.25 * losses["seg_aux"].item())
    with pytest.raises(ValueError, match=r"head_weights names head\(s\) \['context16'\]"):
        tufl(head_weights={"main": 1.0, "context16": 1.0})


def test_thresholds_follow_the_main_head_even_when_its_loss_weight_is_absent():
    method = tufl(class_weights="none", head_weights={"aux": 1.0}, initial_threshold=0.05)
    fit_tufl(method, steps=1)
    assert not torch.equal(method.thresholds, torch.full_like(method.thresholds, 0.05))


# ------------------------------------------------------------------ official out-of-frame pixels
# Written from ywher/TUFL `utils/loss.py`: AdaptUnsupFocalLoss (adaptive, focal_type 1) and
# UnsupFocalLoss (fixed float32 0.8, focal_type 2), on clean logits warped with zero padding
# (`perform_affine_tf`): no pixel is left out. One official call = update, then loss.
def official_threshold_update(p: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """`ias_thresh` (b 0.8, d 8; theta appended in the scores' float32), momentum 0.9."""
    confidence, label = p.max(dim=1)
    psi = thresholds.clone()
    for c in range(thresholds.numel()):
        scores = confidence[label == c]
        if scores.numel():
            scores = torch.cat([scores, thresholds[c].float().view(1)]).sort(
                descending=True).values
            psi[c] = scores[int(scores.numel() * 0.8 * thresholds[c] ** 8.0)]
    beta = 0.9
    updated = beta * thresholds + (1 - beta) * psi   # (1 - beta) is not 0.1 in float64
    updated[updated >= 1] = 0.999
    return updated


def official_focal_loss(p: torch.Tensor, q: torch.Tensor, thresholds: torch.Tensor | None,
                        weights: torch.Tensor) -> float:
    """Per-class thresholds (adaptive, m = 1 - q_y) or None (fixed 0.8, m = |p_y - q_y|)."""
    confidence, label = p.max(dim=1)
    one_hot = F.one_hot(label, p.shape[1]).permute(0, 3, 1, 2).float()
    if thresholds is not None:
        mask, difference = confidence > thresholds[label], (1 - q) * one_hot
    else:
        mask, difference = confidence > torch.tensor(0.8), (p - q) * one_hot
    m = difference.sum(dim=1, keepdim=True).abs()
    loss = (p * (torch.log(p + 1e-30) - m.pow(2) * torch.log(q + 1e-30))
            - p * torch.log(p + 1e-30)) * weights.view(1, -1, 1, 1)
    return loss.sum(dim=1)[mask].clamp(min=1e-8).mean().item()


@pytest.mark.parametrize("threshold, updates", [("adaptive", "per_head"),
                                                ("adaptive", "per_iteration"),
                                                ("fixed", "per_iteration")])
def test_out_of_frame_keep_reproduces_the_official_selection_thresholds_and_loss(
        threshold, updates):
    generator = torch.Generator().manual_seed(0)
    theta = RandomAffine(scale=(1.15, 1.25)).sample(2, generator)   # corners leave the frame
    assert not in_frame_mask(theta, (9, 11)).all()
    clean, strong = ({head: torch.randn(2, 13, 9, 11, generator=generator) * 4
                      for head in ("main", "aux")} for _ in range(2))
    weights = torch.rand(13, generator=generator) + 1
    adaptive = threshold == "adaptive"

    def method_run(out_of_frame: str) -> tuple[dict, torch.Tensor]:
        method = TUFL(num_classes=13, segmenter=tiny_segmenter(method_class=TUFL),
                      class_weights=weights.tolist(), threshold=threshold,
                      modulation="confidence" if adaptive else "difference",
                      threshold_updates=updates, head_weights={"main": 1.0, "aux": 0.5},
                      out_of_frame=out_of_frame)
        losses: dict = {}
        method.focal_loss(method.views.predictions(clean, strong, theta, (9, 11),
                                                   ["main", "aux"]), losses)
        return losses, method.thresholds

    p, q = ({head: F.softmax(logits, dim=1) for head, logits in views.items()} for views in (
        {head: F.grid_sample(logits, F.affine_grid(theta, list(logits.shape), align_corners=False),
                             padding_mode="zeros", align_corners=False)
         for head, logits in clean.items()}, strong))
    thresholds = torch.full((13,), 0.8, dtype=torch.float64)
    if adaptive and updates == "per_iteration":   # udaseg's rule: once, from the main head
        thresholds = official_threshold_update(p["main"], thresholds)
    expected = {}
    for head in ("main", "aux"):
        if adaptive and updates == "per_head":
            thresholds = official_threshold_update(p[head], thresholds)
        expected[head] = official_focal_loss(p[head], q[head], thresholds if adaptive else None,
                                             weights)
    kept, kept_thresholds = method_run("keep")
    assert torch.equal(kept_thresholds, thresholds)
    assert [kept[f"ufl_{head}"].item() for head in ("main", "aux")] == \
        [expected["main"], expected["aux"]]
    excluded, excluded_thresholds = method_run("exclude")   # the default
    assert excluded["ufl_main"].item() != expected["main"]
    if adaptive:
        assert not torch.equal(excluded_thresholds, thresholds)


def test_official_float32_precision_of_threshold_steps():
    """An appended theta comes back as float32(theta) (official `ias_thresh`); the fixed
    threshold is float32(0.8), so a confidence of exactly float32(0.8) is not above it."""
    thresholds = torch.full((1,), 0.8, dtype=torch.float64)
    updated = adaptive_thresholds(torch.tensor([0.5]), torch.tensor([0]), thresholds)
    assert updated.item() == 0.9 * 0.8 + (1 - 0.9) * float(torch.tensor(0.8))
    method = tufl(threshold="fixed", class_weights="none")
    prob = torch.tensor([0.8, 0.2]).view(1, 2, 1, 1)
    assert not method.selection.select(prob).any()
    assert method.selection.select(prob + torch.tensor([1e-7, -1e-7]).view(1, 2, 1, 1)).all()


class NoNormalization:
    """A data module that declares no input normalisation."""


def on_train_start_with(method: TUFL, datamodule: object) -> None:
    with mock.patch.object(type(method), "trainer", new_callable=mock.PropertyMock,
                           return_value=mock.Mock(datamodule=datamodule)):
        method.on_train_start()


def test_device_strong_view_refuses_a_data_module_without_normalization():
    with pytest.raises(ValueError, match=r"device_strong_view .*data\.normalization"):
        on_train_start_with(tufl(device_strong_view={}, class_weights="none"),
                            NoNormalization())
    method = tufl(device_strong_view={}, class_weights="none")
    on_train_start_with(method, mock.Mock(normalization="caffe_bgr"))
    assert method.input_normalization == "caffe_bgr"
    on_train_start_with(tufl(class_weights="none"), NoNormalization())   # worker view: not needed
