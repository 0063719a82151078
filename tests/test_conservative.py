"""Conservative Loss: both forms' gradient signs per regime (Zhu et al., ECCV 2018), the method."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch

from tests.helpers import fit, tiny_method
from udaseg.losses import conservative_loss, conservative_loss_published, conservative_weight
from udaseg.methods import ConservativeLoss

FORMS = {"signed": conservative_loss, "published": conservative_loss_published}


def logits_with_ground_truth_probability(p_g: float, num_classes: int = 3) -> torch.Tensor:
    """(1, C, 1, 1) logits whose softmax gives class 0 the probability p_g, the rest equal."""
    rest = (1 - p_g) / (num_classes - 1)
    values = [math.log(p_g)] + [math.log(rest)] * (num_classes - 1)
    return torch.tensor(values, dtype=torch.float64).view(1, num_classes, 1, 1)


def ground_truth_logit_gradient(form: str, p_g: float, base: float = math.e) -> float:
    logits = logits_with_ground_truth_probability(p_g).requires_grad_(True)
    FORMS[form](logits, torch.zeros(1, 1, 1, dtype=torch.long), base=base).backward()
    return logits.grad[0, 0, 0, 0].item()


# Regimes around the neutral point 1/a = 1/e = 0.368.
BADLY, WELL, VERY_WELL = 0.05, 0.7, 0.99


def test_signed_form_descends_below_one_over_a_and_ascends_above():
    # A negative gradient wrt the ground-truth logit means descent raises p_g.
    assert ground_truth_logit_gradient("signed", BADLY) < 0, "badly classified: descent"
    assert ground_truth_logit_gradient("signed", WELL) > 0, "well classified: ascent"
    assert ground_truth_logit_gradient("signed", VERY_WELL) > 0, "very well classified: ascent"
    assert ground_truth_logit_gradient("signed", 1 / math.e) == pytest.approx(0, abs=1e-9)


def test_published_form_descends_everywhere_so_it_cannot_penalise_top_performers():
    for p_g in (BADLY, WELL, VERY_WELL):
        assert ground_truth_logit_gradient("published", p_g) < 0, p_g
    assert ground_truth_logit_gradient("published", 1 / math.e) == pytest.approx(0, abs=1e-9)


def test_published_form_is_unbounded_below_and_its_gradient_does_not_vanish():
    values = [conservative_loss_published(logits_with_ground_truth_probability(p),
                                          torch.zeros(1, 1, 1, dtype=torch.long)).item()
              for p in (0.9, 0.99, 0.9999)]
    assert values[0] > values[1] > values[2] and values[2] < -2
    # The logit gradient tends to -1/ln(a) = -1 as p_g -> 1 (a = e).
    assert ground_truth_logit_gradient("published", 0.99999) == pytest.approx(-1, abs=0.05)
    assert abs(ground_truth_logit_gradient("signed", 0.99999)) < 1e-3, "signed form: bounded"


def test_base_moves_the_neutral_point_and_weight_scales():
    assert ground_truth_logit_gradient("signed", 0.25, base=4.0) == pytest.approx(0, abs=1e-9)
    assert ground_truth_logit_gradient("signed", 0.3, base=4.0) > 0, "above 1/4: ascent"
    p_g = torch.tensor([0.05, 0.7], dtype=torch.float64)
    assert torch.allclose(conservative_weight(p_g, weight=3.0), 3 * conservative_weight(p_g))
    # Hand value: a = e, p = 0.05 -> (1 + ln 0.05)^2 * ln(-ln 0.05).
    expected = (1 + math.log(0.05)) ** 2 * math.log(-math.log(0.05))
    assert conservative_weight(torch.tensor(0.05, dtype=torch.float64)).item() == \
        pytest.approx(expected)
    with pytest.raises(ValueError, match="base"):
        conservative_weight(p_g, base=1.0)


@pytest.mark.parametrize("form", FORMS)
def test_ignored_pixels_do_not_count(form):
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    labels = torch.tensor([[[0, 255], [255, 255]]])
    FORMS[form](logits, labels).backward()
    assert logits.grad[..., 0, 1].abs().sum() == 0 and logits.grad[..., 0, 0].abs().sum() > 0
    everything_ignored = FORMS[form](logits, torch.full((1, 2, 2), 255))
    assert everything_ignored.item() == 0 and everything_ignored.requires_grad


def test_source_loss_is_the_chosen_conservative_form():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 9, 4, 4), torch.randint(0, 9, (2, 8, 8))
    for form, loss in FORMS.items():
        method = tiny_method(ConservativeLoss, form=form, conservative_base=3.0)
        assert torch.equal(method.source_pixel_loss(logits, labels), loss(logits, labels, base=3.0))
    with pytest.raises(ValueError, match="form"):
        tiny_method(ConservativeLoss, form="reversed")


@pytest.mark.parametrize("discriminator_input", ["softmax", "entropy"])
def test_iteration_trains_segmenter_and_both_discriminators(discriminator_input):
    method = tiny_method(ConservativeLoss, discriminator_input=discriminator_input)
    before = {key: value.clone() for key, value in method.state_dict().items()}
    pl.seed_everything(0)
    trainer = fit(method, steps=2)
    assert trainer.global_step == 2
    for prefix in ("segmenter.layer6", "segmenter.layer5", "discriminators.main",
                   "discriminators.aux"):
        assert any(not torch.equal(value, before[key]) for key, value in
                   method.state_dict().items() if key.startswith(prefix)), prefix
    probability = torch.softmax(torch.randn(1, 9, 2, 2), dim=1)
    discriminator_map = method.discriminator_input(probability)
    assert torch.equal(discriminator_map, probability) == (discriminator_input == "softmax")


def test_mixed_precision_stays_finite():
    method = tiny_method(ConservativeLoss)
    fit(method, steps=2, precision="bf16-mixed")
    assert all(torch.isfinite(tensor).all() for tensor in method.state_dict().values()
               if tensor.is_floating_point())
