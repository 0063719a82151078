"""ADVENT losses (entropy map, MinEnt loss, constant-label BCE) and the FC discriminator.

Reference values are computed by hand from the formulas in Vu et al., CVPR 2019 (ADVENT):
`I = -p * log2(p + 1e-30) / log2(C)`, `L_ent = sum(I) / (N*H*W)`, BCE-with-logits mean.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from udaseg.losses import bce_with_constant, entropy_loss, entropy_map
from udaseg.models import FCDiscriminator


def prob_from(values: list[float], n: int = 1, h: int = 1, w: int = 1) -> torch.Tensor:
    """A (n, C, h, w) float32 map with the same class distribution `values` at every pixel."""
    p = torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)
    return p.expand(n, -1, h, w).contiguous()


def numpy_reference(prob: np.ndarray) -> tuple[np.ndarray, float]:
    """Float64 entropy map and loss, written directly from the formula."""
    p = prob.astype(np.float64)
    n, c, h, w = p.shape
    info = -p * np.log2(p + 1e-30) / np.log2(c)
    return info, float(info.sum() / (n * h * w))


# ----------------------------------------------------------------------------- entropy_map/loss

@pytest.mark.parametrize("num_classes", [2, 4, 8])
def test_uniform_power_of_two_is_exactly_one(num_classes):
    # p = 1/C = 2^-k: log2(p) = -k exactly, I = (1/C) * k / k = 1/C exactly, sum over C = 1.
    prob = torch.full((2, num_classes, 3, 5), 1.0 / num_classes)
    info = entropy_map(prob)
    assert info.shape == prob.shape
    assert torch.equal(info, torch.full_like(prob, 1.0 / num_classes))
    assert entropy_loss(prob).item() == 1.0


def test_uniform_19_classes_is_one():
    prob = torch.full((2, 19, 4, 6), 1.0 / 19)
    info = entropy_map(prob)
    assert torch.allclose(info.sum(dim=1), torch.ones(2, 4, 6), rtol=0, atol=1e-6)
    assert entropy_loss(prob).item() == pytest.approx(1.0, abs=1e-6)


def test_one_hot_is_zero():
    # p = 1 -> 1 * log2(1) = 0; p = 0 -> 0 * log2(1e-30) = 0 (the 1e-30 keeps it finite).
    prob = torch.zeros(2, 19, 3, 3)
    prob[:, 7] = 1.0
    info = entropy_map(prob)
    assert torch.isfinite(info).all()
    assert torch.equal(info, torch.zeros_like(prob))
    assert entropy_loss(prob).item() == 0.0


def test_near_one_hot_is_almost_zero():
    logits = torch.zeros(1, 19, 2, 2)
    logits[:, 3] = 30.0  # p_other = e^-30 / (1 + 18 e^-30) ~ 9.4e-14
    loss = entropy_loss(torch.softmax(logits, dim=1)).item()
    assert 0.0 <= loss < 1e-10


def test_two_class_hand_value():
    # p = (0.25, 0.75): -0.25*log2(0.25) = 0.5 ; -0.75*log2(0.75) = 0.75*log2(4/3) = 0.311278124459
    # H = 0.811278124459 bits, log2(C) = log2(2) = 1.
    prob = prob_from([0.25, 0.75], n=2, h=3, w=4)
    info = entropy_map(prob)
    assert torch.allclose(info[:, 0], torch.full((2, 3, 4), 0.5), rtol=0, atol=1e-7)
    assert torch.allclose(info[:, 1], torch.full((2, 3, 4), 0.311278124459), rtol=0, atol=1e-7)
    assert entropy_loss(prob).item() == pytest.approx(0.811278124459, abs=1e-6)


def test_three_class_hand_value():
    # p = (0.5, 0.25, 0.25): H = 0.5*1 + 0.25*2 + 0.25*2 = 1.5 bits; / log2(3) = 0.946394630357.
    prob = prob_from([0.5, 0.25, 0.25], n=1, h=2, w=2)
    info = entropy_map(prob)
    log2_3 = 1.584962500721156
    expected = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1) / log2_3
    assert torch.allclose(info, expected.expand_as(info), rtol=0, atol=1e-7)
    assert entropy_loss(prob).item() == pytest.approx(0.946394630357, abs=1e-6)


def test_normalisation_is_over_pixels_not_classes():
    # Two pixels: uniform (entropy 1) and one-hot (entropy 0) -> mean over N*H*W = 0.5,
    # not divided by C as a plain .mean() over (N, C, H, W) would do.
    prob = torch.zeros(1, 4, 1, 2)
    prob[0, :, 0, 0] = 0.25
    prob[0, 2, 0, 1] = 1.0
    assert entropy_loss(prob).item() == 0.5
    assert entropy_map(prob).mean().item() == pytest.approx(0.5 / 4)


def test_float32_matches_float64_numpy_and_official_form():
    gen = torch.Generator().manual_seed(0)
    logits = 4.0 * torch.randn(3, 19, 17, 23, generator=gen)
    prob = torch.softmax(logits, dim=1)
    info_ref, loss_ref = numpy_reference(prob.numpy())

    info = entropy_map(prob)
    loss = entropy_loss(prob)
    assert info.dtype == torch.float32 and loss.dtype == torch.float32
    assert loss.dim() == 0
    np.testing.assert_allclose(info.numpy(), info_ref, rtol=1e-5, atol=1e-7)
    assert loss.item() == pytest.approx(loss_ref, rel=1e-6)

    # ADVENT's loss written as one expression: -sum(p log2(p + 1e-30)) / (N*H*W*log2(C)).
    n, c, h, w = prob.shape
    official = -torch.sum(prob * torch.log2(prob + 1e-30)) / (n * h * w * np.log2(c))
    assert loss.item() == pytest.approx(official.item(), rel=1e-6)
    # and the map as the official prob_2_entropy expression
    official_map = -torch.mul(prob, torch.log2(prob + 1e-30)) / np.log2(c)
    assert torch.allclose(info, official_map, rtol=1e-6, atol=0)


def test_float64_input_stays_float64():
    prob = prob_from([0.25, 0.75]).double()
    assert entropy_loss(prob).dtype == torch.float64
    expected = 0.5 + 0.75 * math.log2(4.0 / 3.0)  # 0.8112781244591328
    assert entropy_loss(prob).item() == pytest.approx(expected, abs=1e-15)


def test_gradient_wrt_logits():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 4, 4, generator=gen, requires_grad=True)
    entropy_loss(torch.softmax(logits, dim=1)).backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 4, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: entropy_loss(torch.softmax(z, dim=1)), (logits,))


def test_gradient_zero_at_uniform_and_finite_at_zero_probability():
    # Entropy is maximal at the uniform distribution: its gradient w.r.t. the logits is 0.
    logits = torch.zeros(1, 19, 2, 2, requires_grad=True)
    entropy_loss(torch.softmax(logits, dim=1)).backward()
    assert torch.allclose(logits.grad, torch.zeros_like(logits), atol=1e-8)
    # Exact zeros in p: the 1e-30 keeps d/dp finite.
    prob = torch.zeros(1, 3, 1, 1)
    prob[0, 0] = 1.0
    prob.requires_grad_(True)
    entropy_loss(prob).backward()
    assert torch.isfinite(prob.grad).all()


def test_entropy_map_rejects_bad_shapes():
    with pytest.raises(ValueError):
        entropy_map(torch.full((4, 3), 1.0 / 3))
    with pytest.raises(ValueError):
        entropy_map(torch.ones(1, 1, 2, 2))


# ----------------------------------------------------------------------------- bce_with_constant

@pytest.mark.parametrize("label", [0.0, 1.0, 0, 1])
def test_bce_zero_logits_is_log2(label):
    logits = torch.zeros(2, 1, 3, 5)
    loss = bce_with_constant(logits, label)
    assert loss.dim() == 0
    # float32: torch gives 0.69314706 (2 ulp below the float32 log 2)
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-6)  # 0.6931471805599453


def test_bce_hand_values():
    logits = torch.full((1, 1, 2, 2), 2.0)
    # label 1: -log(sigmoid(2)) = log(1 + e^-2) = 0.12692801104297263
    assert bce_with_constant(logits, 1).item() == pytest.approx(0.12692801104297263, abs=1e-6)
    # label 0: -log(1 - sigmoid(2)) = log(1 + e^2) = 2.1269280110429727
    assert bce_with_constant(logits, 0).item() == pytest.approx(2.1269280110429727, abs=1e-6)
    # mixed map, label 0: mean(log(1 + e^z)) over z = (-1, 0, 1, 3)
    logits = torch.tensor([-1.0, 0.0, 1.0, 3.0]).view(1, 1, 2, 2)
    expected = sum(math.log1p(math.exp(z)) for z in (-1.0, 0.0, 1.0, 3.0)) / 4  # 1.4309118...
    assert bce_with_constant(logits, 0).item() == pytest.approx(expected, abs=1e-6)


def test_bce_matches_torch_module_and_has_gradient():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 1, 4, 7, generator=gen, requires_grad=True)
    for label in (0.0, 1.0):
        expected = nn.BCEWithLogitsLoss()(logits, torch.full(logits.shape, label))
        assert torch.allclose(bce_with_constant(logits, label), expected, rtol=1e-6, atol=0)
    bce_with_constant(logits, 1.0).backward()
    # d/dz mean BCE = (sigmoid(z) - y) / numel
    expected_grad = (torch.sigmoid(logits.detach()) - 1.0) / logits.numel()
    assert torch.allclose(logits.grad, expected_grad, atol=1e-7)


# ----------------------------------------------------------------------------- FCDiscriminator

def test_discriminator_output_shape():
    disc = FCDiscriminator(19)
    out = disc(torch.rand(2, 19, 64, 128))
    assert out.shape == (2, 1, 2, 4)  # 64 -> 32 -> 16 -> 8 -> 4 -> 2, 128 -> ... -> 4
    # odd size, e.g. DeepLabV2 logits 65 x 129: floor((H + 2 - 4) / 2) + 1 per conv
    assert disc(torch.rand(1, 19, 65, 129)).shape == (1, 1, 2, 4)


def test_discriminator_layers_and_parameter_count():
    disc = FCDiscriminator(19)
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (19, 64), (64, 128), (128, 256), (256, 512), (512, 1)]
    for conv in convs:
        assert conv.kernel_size == (4, 4)
        assert conv.stride == (2, 2)
        assert conv.padding == (1, 1)
        assert conv.bias is not None
    # 19*64*16 + 64      =    19,520
    # 64*128*16 + 128    =   131,200
    # 128*256*16 + 256   =   524,544
    # 256*512*16 + 512   = 2,097,664
    # 512*1*16 + 1       =     8,193
    assert sum(p.numel() for p in disc.parameters()) == 2_781_121
    # width 32: 19-32-64-128-256-1 -> 9,760 + 32,832 + 131,200 + 524,544 + 4,097
    assert sum(p.numel() for p in FCDiscriminator(19, width=32).parameters()) == 702_433


def test_discriminator_activations_and_no_normalisation():
    disc = FCDiscriminator(19)
    kinds = [type(m) for m in disc.children()]
    assert kinds == [nn.Conv2d, nn.LeakyReLU] * 4 + [nn.Conv2d]  # last conv: raw logits
    relus = [m for m in disc.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(relus) == 4
    assert all(r.negative_slope == 0.2 for r in relus)
    norm_types = (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm)
    assert not any(isinstance(m, norm_types) for m in disc.modules())


def test_discriminator_official_state_dict_keys():
    keys = list(FCDiscriminator(19).state_dict())
    assert keys == [f"{i}.{k}" for i in (0, 2, 4, 6, 8) for k in ("weight", "bias")]


def test_discriminator_on_entropy_map_trains_with_bce():
    torch.manual_seed(0)
    disc = FCDiscriminator(19, width=8)
    logits = torch.randn(1, 19, 32, 32, requires_grad=True)
    info = entropy_map(torch.softmax(logits, dim=1))
    out = disc(info)
    assert out.shape == (1, 1, 1, 1)
    bce_with_constant(out, 0).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert all(p.grad is not None for p in disc.parameters())
