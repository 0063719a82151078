"""MaxSquare: the losses (values from the formulas of Chen et al., ICCV 2019) and the method."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch

from tests.helpers import fit, tiny_method, tiny_segmenter
from udaseg.losses import iw_maxsquare_loss, maxsquare_loss, self_produced_guidance
from udaseg.methods import MaxSquare, SourceOnly
from udaseg.models import SegmenterWeights


def official_single_image_iw(prob: torch.Tensor, ratio: float) -> float:
    """The official batch-size-1 recipe, rewritten: histogram of argmax, weights, sum / C."""
    _, c, _, _ = prob.shape
    predicted = prob[0].argmax(dim=0)
    histogram = torch.histc(predicted.float(), bins=c, min=0, max=c - 1)
    weights = 1 / torch.clamp(histogram.pow(ratio) * histogram.sum().pow(1 - ratio), min=1)
    return float(-(prob[0].pow(2) * weights[predicted]).sum() / c)


def test_maxsquare_value_and_linear_gradient():
    uniform = torch.full((2, 4, 3, 5), 0.25, requires_grad=True)
    loss = maxsquare_loss(uniform)
    assert loss.item() == pytest.approx(-0.5 * 0.25**2)
    loss.backward()
    # d/dp of -mean(p^2)/2 is -p / numel: linear in p, not dominated by confident pixels.
    assert torch.allclose(uniform.grad, torch.full_like(uniform, -0.25 / uniform.numel()))


def test_iw_maxsquare_hand_value():
    # One image, 2 classes, 3 pixels: argmax 0, 0, 1 -> n = (2, 1), 3 pixels in all.
    prob = torch.tensor([[0.9, 0.8, 0.3], [0.1, 0.2, 0.7]]).view(1, 2, 1, 3)
    w0 = 1 / (2**0.2 * 3**0.8)
    w1 = 1 / (1**0.2 * 3**0.8)
    expected = -((0.81 + 0.01) * w0 + (0.64 + 0.04) * w0 + (0.09 + 0.49) * w1) / 2
    assert iw_maxsquare_loss(prob, ratio=0.2).item() == pytest.approx(expected, rel=1e-6)


def test_iw_maxsquare_batch_one_equals_official_recipe():
    torch.manual_seed(0)
    prob = torch.softmax(torch.randn(1, 19, 17, 23) * 3, dim=1)
    assert iw_maxsquare_loss(prob, 0.2).item() == pytest.approx(
        official_single_image_iw(prob, 0.2), rel=1e-5)


def test_iw_maxsquare_batch_is_mean_over_images():
    torch.manual_seed(1)
    batch = torch.softmax(torch.randn(3, 5, 8, 8) * 2, dim=1)
    per_image = [official_single_image_iw(batch[i:i + 1], 0.2) for i in range(3)]
    assert iw_maxsquare_loss(batch, 0.2).item() == pytest.approx(sum(per_image) / 3, rel=1e-5)


def test_iw_gives_pixels_of_rare_classes_more_gradient():
    # 15 pixels predicted class 0, one predicted class 1, all with confidence 0.8.
    prob = torch.empty(1, 2, 4, 4)
    prob[0, 0], prob[0, 1] = 0.8, 0.2
    prob[0, :, 0, 0] = torch.tensor([0.2, 0.8])
    prob.requires_grad_(True)
    iw_maxsquare_loss(prob, 0.2).backward()
    rare, common = prob.grad[0, 1, 0, 0].abs(), prob.grad[0, 0, 1, 1].abs()
    assert rare / common == pytest.approx(15**0.2, rel=1e-5)
    plain = prob.detach().clone().requires_grad_(True)
    maxsquare_loss(plain).backward()
    assert plain.grad[0, 1, 0, 0] == plain.grad[0, 0, 1, 1], "no weighting without IW"


def test_self_produced_guidance_thresholds_either_level():
    def pixels(*values):  # (1, 2, 1, k) from k (p0, p1) pairs
        return torch.tensor(values).T.reshape(1, 2, 1, len(values))

    main = pixels((0.97, 0.03), (0.60, 0.40), (0.60, 0.40), (0.96, 0.04))
    aux = pixels((0.90, 0.10), (0.04, 0.96), (0.70, 0.30), (0.00, 1.00))
    labels = self_produced_guidance(main, aux, threshold=0.95, ignore_index=255)
    # main sure; aux sure (mean says 1); nobody sure; main sure but the mean says 1.
    assert labels.tolist() == [[[0, 1, 255, 1]]]
    assert not labels.requires_grad


def test_guidance_needs_the_auxiliary_head_and_says_which_key_to_change():
    single_level = tiny_segmenter(multi_level=False)
    with pytest.raises(ValueError, match=r"needs the segmenter head\(s\) \['aux'\], but DeepLabV2 "
                       r"has \['main'\]: change model.init_args.segmenter .*multi_level_guidance"):
        tiny_method(MaxSquare, segmenter=single_level)
    assert "aux" not in tiny_method(MaxSquare, segmenter=single_level,
                                    multi_level_guidance=False).segmenter.heads


@pytest.mark.parametrize("options", [
    {"image_wise_weighting": False, "multi_level_guidance": False},
    {"image_wise_weighting": True, "multi_level_guidance": True, "guidance_threshold": 0.0},
])
def test_target_term_changes_the_update(options):
    adapted = tiny_method(MaxSquare, lambda_target=1.0, **options)
    source_only = tiny_method(MaxSquare, lambda_target=0.0, **options)
    source_only.load_state_dict(adapted.state_dict())
    for method in (adapted, source_only):
        pl.seed_everything(0)
        fit(method, steps=1)
    weights = ["segmenter.layer6.conv2d_list.0.weight"]
    if options["multi_level_guidance"]:
        weights.append("segmenter.layer5.conv2d_list.0.weight")  # the guidance trains aux
    for weight in weights:
        assert not torch.equal(adapted.state_dict()[weight], source_only.state_dict()[weight])


def test_starts_from_another_runs_checkpoint_weights_only(tmp_path):
    source = tiny_method(SourceOnly)
    trainer = fit(source, steps=2)
    checkpoint = tmp_path / "source.ckpt"
    trainer.save_checkpoint(checkpoint)
    adapted = tiny_method(MaxSquare, weights=SegmenterWeights(init_checkpoint=str(checkpoint)))
    for key, value in source.segmenter.state_dict().items():
        assert torch.equal(adapted.segmenter.state_dict()[key], value), key
    trainer = fit(adapted, steps=1)
    assert trainer.global_step == 1, "fresh optimisers and schedule, not a resumed run"
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(2.5e-4)


def test_official_iw_normalisation_differs_from_plain_by_class_count_scale():
    # One image whose pixels all predict one class: w = 1/(H*W), so the IW loss is the plain
    # loss times 2 (the official IW divides by N*C, plain by N*C*H*W and by 2).
    prob = torch.softmax(torch.tensor([3.0, 0.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4),
                         dim=1)
    assert iw_maxsquare_loss(prob).item() == pytest.approx(2 * maxsquare_loss(prob).item())
    assert math.isfinite(iw_maxsquare_loss(prob.half().float()).item())
