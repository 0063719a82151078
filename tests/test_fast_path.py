"""The fast path (`model.init_args.fast_path`): each switch trains to the same numbers as the
default computation, within float rounding, and refuses what would change the computation."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from tests.helpers import fit, fit_two_ranks, tiny_data, tiny_method
from udaseg.data import StrongView
from udaseg.methods import (
    CLAN,
    TUFL,
    AdvEnt,
    ConservativeLoss,
    CrossDomainMixing,
    MaxSquare,
    MinEnt,
    SourceOnly,
)
from udaseg.methods.fast_path import FastPath, batched_forward

ITERATIONS = 2

METHODS = {
    "minent": (MinEnt, {}),
    "advent": (AdvEnt, {}),
    "conservative": (ConservativeLoss, {}),
    "maxsquare": (MaxSquare, {}),
    "clan": (CLAN, {"preheat_iters": 1}),   # both halves of CLAN's schedule in two iterations
    "tufl": (TUFL, {"class_weights": "none"}),
    "dacs": (CrossDomainMixing, {"teacher": "ema", "lambda_ufl": 0.0, "long_tail_p": 0.0,
                                 "class_weights": "none"}),
}


class LoggedLosses(pl.Callback):
    """Every logged training value of every iteration."""

    def __init__(self) -> None:
        self.values: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        self.values.append({name: float(value) for name, value in
                            trainer.callback_metrics.items() if name.startswith("train/")})


def trained(name: str, fast_path: FastPath, precision: str = "32-true",
            **kwargs) -> tuple[dict, list[dict]]:
    """State dict and logged losses after `ITERATIONS` iterations of method `name`."""
    method_class, method_kwargs = METHODS[name]
    torch.manual_seed(0)
    method = tiny_method(method_class, fast_path=fast_path, **{**method_kwargs, **kwargs})
    two_views = issubclass(method_class, TUFL) and method_kwargs.get("lambda_ufl", 1) > 0
    strong = StrongView() if two_views else None
    losses = LoggedLosses()
    fit(method, ITERATIONS, module=tiny_data(target_strong_view=strong), callbacks=[losses],
        precision=precision)
    return method.state_dict(), losses.values


def assert_close_states(expected: dict, actual: dict, atol: float = 1e-5,
                        rtol: float = 1e-4) -> None:
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        other = actual[key]
        if value.is_floating_point():
            assert torch.allclose(value, other, rtol=rtol, atol=atol), \
                f"{key}: max difference {(value - other).abs().max():.3g}"
        else:
            assert torch.equal(value, other), key


@pytest.mark.parametrize("name", sorted(METHODS))
def test_fused_forward_trains_like_separate_passes(name):
    """One batched forward (and discriminator pass) and one backward per iteration give the
    losses and weights of the official separate passes, with BN frozen."""
    separate, separate_losses = trained(name, FastPath(), bn_stats="frozen")
    fused, fused_losses = trained(name, FastPath(fused_forward=True), bn_stats="frozen")
    assert_close_states(separate, fused)
    for expected, actual in zip(separate_losses, fused_losses, strict=True):
        assert expected.keys() == actual.keys()
        for key, value in expected.items():
            assert actual[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    # The runs moved: equal weights are not just the initial ones.
    initial = tiny_method(METHODS[name][0], **METHODS[name][1]).state_dict()
    assert any(not torch.equal(initial[key], separate[key]) for key in separate
               if key.startswith("segmenter."))


def test_fused_forward_needs_frozen_bn_and_images_of_one_size():
    with pytest.raises(ValueError, match="fused_forward needs model.init_args.bn_stats: frozen"):
        tiny_method(AdvEnt, fast_path=FastPath(fused_forward=True), bn_stats="batch")
    method = tiny_method(SourceOnly)
    with pytest.raises(ValueError, match=r"differ in size: \[\(3, 8, 8\), \(3, 8, 16\)\]"):
        batched_forward(method.segmenter, [torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 16)])


def test_batched_forward_splits_every_head_back_per_batch():
    method = tiny_method(AdvEnt, bn_stats="frozen").eval()
    first, second = torch.randn(2, 3, 32, 32), torch.randn(1, 3, 32, 32)
    joint = batched_forward(method.segmenter, [first, second])
    for images, outputs in zip((first, second), joint, strict=True):
        alone = method.segmenter(images)
        assert outputs.keys() == alone.keys() == {"main", "aux"}
        for head, logits in alone.items():
            assert torch.allclose(outputs[head], logits, atol=1e-5)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_channels_last_trains_like_the_default_layout(precision):
    default, default_losses = trained("advent", FastPath(), precision=precision)
    nhwc, nhwc_losses = trained("advent", FastPath(channels_last=True), precision=precision)
    # bf16 rounds differently per layout (other kernels), so its weights agree less closely.
    bf16 = precision == "bf16-mixed"
    assert_close_states(default, nhwc, atol=2e-3 if bf16 else 1e-5, rtol=1e-2 if bf16 else 1e-4)
    assert nhwc_losses[-1]["train/seg"] == pytest.approx(
        default_losses[-1]["train/seg"], rel=2e-2 if bf16 else 1e-4)


def test_channels_last_networks_and_evaluation():
    method = tiny_method(AdvEnt, fast_path=FastPath(channels_last=True))
    convolutions = [module.weight for module in method.modules()
                    if isinstance(module, torch.nn.Conv2d) and module.weight.shape[-1] > 1]
    assert convolutions and all(weight.is_contiguous(memory_format=torch.channels_last)
                                for weight in convolutions)
    images = torch.randn(1, 3, 32, 64)
    assert method.in_layout({"image": images})["image"].is_contiguous(
        memory_format=torch.channels_last)
    plain = tiny_method(AdvEnt)
    plain.load_state_dict(method.state_dict())
    method.eval(), plain.eval()
    with torch.no_grad():
        assert torch.allclose(method.predict_logits(images, (32, 64)),
                              plain.predict_logits(images, (32, 64)), atol=1e-5)


def test_compile_keeps_keys_and_trains_like_eager():
    """torch.compile in place (the "eager" backend traces without generating kernels, so this
    checks the wiring, fast): same state-dict keys, same weights."""
    eager, _ = trained("advent", FastPath())
    torch.manual_seed(0)
    method = tiny_method(AdvEnt, fast_path=FastPath(compile=True, compile_backend="eager"))
    fit(method, ITERATIONS)
    assert method.segmenter._compiled_call_impl is not None
    assert all(network._compiled_call_impl is not None
               for network in method.discriminators.values())
    assert_close_states(eager, method.state_dict())


def test_channels_last_under_ddp_equals_the_default_layout(tmp_path):
    """2 gloo ranks: channels_last trains to the default layout's weights (DDP buckets and
    broadcasts NHWC parameters correctly)."""
    for run in ("default", "nhwc"):
        (tmp_path / run).mkdir()
    default = fit_two_ranks(tmp_path / "default", "udaseg.methods.AdvEnt")
    nhwc = fit_two_ranks(tmp_path / "nhwc", "udaseg.methods.AdvEnt",
                         "--model.init_args.fast_path.channels_last", "true")
    for expected, actual in zip(default, nhwc, strict=True):
        assert_close_states(expected["state_dict"], actual["state_dict"])
        kernel = "segmenter.layer1.0.conv1.weight"
        assert actual["state_dict"][kernel].is_contiguous(memory_format=torch.channels_last)
        assert not expected["state_dict"][kernel].is_contiguous(
            memory_format=torch.channels_last)
