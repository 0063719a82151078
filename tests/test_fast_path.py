"""The fast path (`model.init_args.fast_path`): each switch trains to the same numbers as the
default computation, within float rounding, and refuses what would change the computation."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from tests.helpers import fit, fit_two_ranks, tiny_data, tiny_method
from udaseg.data import StrongView
from udaseg.methods import (
    CLAN,
    DACS,
    TUFL,
    AdvEnt,
    ConservativeLoss,
    MaxSquare,
    MinEnt,
    SourceOnly,
    UDAMethod,
)
from udaseg.methods.fast_path import FastPath, batched_forward, per_batch_norm

ITERATIONS = 2

METHODS = {
    "minent": (MinEnt, {}),
    "advent": (AdvEnt, {}),
    "conservative": (ConservativeLoss, {}),
    "maxsquare": (MaxSquare, {}),
    "clan": (CLAN, {"preheat_iters": 1}),   # both halves of CLAN's schedule in two iterations
    "tufl": (TUFL, {"class_weights": "none"}),
    "dacs": (DACS, {}),
}


class LoggedLosses(pl.Callback):
    """Every logged training value of every iteration."""

    def __init__(self) -> None:
        self.values: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        self.values.append({name: float(value) for name, value in
                            trainer.callback_metrics.items() if name.startswith("train/")})


def trained(name: str, fast_path: FastPath, precision: str = "32-true",
            **kwargs) -> tuple[UDAMethod, list[dict]]:
    """Method `name` (its trainer attached) and its logged losses after `ITERATIONS`
    iterations."""
    method_class, method_kwargs = METHODS[name]
    torch.manual_seed(0)
    method = tiny_method(method_class, fast_path=fast_path, **{**method_kwargs, **kwargs})
    two_views = issubclass(method_class, TUFL) and method_kwargs.get("lambda_ufl", 1) > 0
    strong = StrongView() if two_views else None
    losses = LoggedLosses()
    fit(method, ITERATIONS, module=tiny_data(target_strong_view=strong), callbacks=[losses],
        precision=precision)
    return method, losses.values


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


def optimizer_states(method: UDAMethod) -> dict[str, torch.Tensor]:
    """Every tensor of the method's optimisers' states (momentum buffers, Adam moments)."""
    return {f"{index}.{parameter}.{name}": value
            for index, optimizer in enumerate(method.trainer.optimizers)
            for parameter, state in optimizer.state_dict()["state"].items()
            for name, value in state.items()}


@pytest.mark.parametrize("bn_stats", ["frozen", "batch"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_fused_forward_trains_like_separate_passes(name, bn_stats):
    """One batched forward (and discriminator pass) and one backward per iteration give the
    losses, weights, optimiser states and BN running statistics of the official separate
    passes, with BN frozen and with batch statistics (per domain on the fused path)."""
    separate_method, separate_losses = trained(name, FastPath(), bn_stats=bn_stats)
    fused_method, fused_losses = trained(name, FastPath(fused_forward=True), bn_stats=bn_stats)
    separate, fused = separate_method.state_dict(), fused_method.state_dict()
    assert_close_states(separate, fused)
    assert optimizer_states(separate_method)
    assert_close_states(optimizer_states(separate_method), optimizer_states(fused_method))
    for expected, actual in zip(separate_losses, fused_losses, strict=True):
        assert expected.keys() == actual.keys()
        for key, value in expected.items():
            assert actual[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    # The runs moved: equal weights are not just the initial ones.
    initial = tiny_method(METHODS[name][0], **METHODS[name][1]).state_dict()
    assert any(not torch.equal(initial[key], separate[key]) for key in separate
               if key.startswith("segmenter.") and key.endswith(".weight"))
    running = [key for key in separate
               if key.startswith("segmenter.") and key.endswith("running_mean")]
    assert any(not torch.equal(initial[key], separate[key]) for key in running) == \
        (bn_stats == "batch")


def small_bn_network(momentum: float | None, track_running_stats: bool) -> nn.Module:
    """Conv-BN-ReLU-Conv-BN with non-trivial affine parameters and running statistics."""
    torch.manual_seed(0)
    network = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=momentum,
                                           track_running_stats=track_running_stats),
        nn.ReLU(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, momentum=momentum,
                                                      track_running_stats=track_running_stats))
    with torch.no_grad():
        for layer in (network[1], network[4]):
            layer.weight.uniform_(0.5, 1.5)
            layer.bias.uniform_(-1, 1)
            if track_running_stats:
                layer.running_mean.uniform_(-1, 1)
                layer.running_var.uniform_(0.5, 2)
    return network


@pytest.mark.parametrize("momentum, track_running_stats",
                         [(0.1, True), (None, True), (0.1, False)])
def test_per_batch_norm_equals_separate_batch_norms(momentum, track_running_stats):
    """A joint forward under `per_batch_norm` gives each chunk the output, the gradients
    (input, weights) and the running statistics of separate forwards in chunk order, over
    two iterations (`momentum=None`'s cumulative average counts chunks)."""
    sizes = [2, 1, 3]
    separate = small_bn_network(momentum, track_running_stats)
    joint = copy.deepcopy(separate)
    for iteration in range(2):
        images = torch.randn(sum(sizes), 3, 6, 6, generator=torch.Generator().manual_seed(
            iteration))
        weights = torch.randn(sum(sizes), 4, 4, 4)
        expected_input = images.clone().requires_grad_(True)
        expected = torch.cat([separate(chunk) for chunk in expected_input.split(sizes)])
        (expected * weights).sum().backward()
        joint_input = images.clone().requires_grad_(True)
        with per_batch_norm(joint, sizes):
            output = joint(joint_input)
        (output * weights).sum().backward()
        assert torch.allclose(output, expected, atol=1e-5)
        assert torch.allclose(joint_input.grad, expected_input.grad, atol=1e-5)
        for (key, value), other in zip(separate.named_parameters(), joint.parameters(),
                                       strict=True):
            assert torch.allclose(value.grad, other.grad, atol=1e-5), key
        assert_close_states(separate.state_dict(), joint.state_dict())
    # Not the joint normalisation, and the layers are plain again after the block.
    assert not torch.allclose(joint(images), output, atol=1e-3)
    assert all("forward" not in vars(layer) for layer in joint.modules())


def test_per_batch_norm_leaves_eval_mode_bn_alone_and_refuses_sync_batch_norm():
    network = small_bn_network(0.1, True).eval()
    images = torch.randn(3, 3, 6, 6)
    with per_batch_norm(network, [2, 1]):
        assert torch.equal(network(images), network.forward(images))
        assert all("forward" not in vars(layer) for layer in network.modules())
    synchronised = nn.SyncBatchNorm.convert_sync_batchnorm(small_bn_network(0.1, True))
    with pytest.raises(ValueError, match="2 SyncBatchNorm layer.*trainer.sync_batchnorm: false"):
        batched_forward(synchronised, [images[:2], images[2:]])


def test_fused_forward_needs_images_of_one_size():
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
    default, nhwc = default.state_dict(), nhwc.state_dict()
    # bf16 rounds differently per layout (other kernels), so its weights agree less closely.
    bf16 = precision == "bf16-mixed"
    assert_close_states(default, nhwc, atol=2e-3 if bf16 else 1e-5, rtol=1e-2 if bf16 else 1e-4)
    assert nhwc_losses[-1]["train/seg"] == pytest.approx(
        default_losses[-1]["train/seg"], rel=2e-2 if bf16 else 1e-4)


def test_channels_last_networks_and_evaluation():
    method = tiny_method(AdvEnt, fast_path=FastPath(channels_last=True))
    method.setup("validate")                  # the networks are prepared when set up
    convolutions = [module.weight for module in method.modules()
                    if isinstance(module, torch.nn.Conv2d) and module.weight.shape[-1] > 1]
    assert convolutions and all(weight.is_contiguous(memory_format=torch.channels_last)
                                for weight in convolutions)
    images = torch.randn(1, 3, 32, 64)
    assert method.fast_path.layout({"image": images})["image"].is_contiguous(
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
    eager = trained("advent", FastPath())[0].state_dict()
    torch.manual_seed(0)
    method = tiny_method(AdvEnt, fast_path=FastPath(compile=True, compile_backend="eager"))
    fit(method, ITERATIONS)
    assert method.segmenter._compiled_call_impl is not None
    assert all(network._compiled_call_impl is not None
               for network in method.discriminators.values())
    assert_close_states(eager, method.state_dict())


def test_compile_compiles_the_teacher_too():
    """DACS's EMA teacher is compiled with the student; its EMA updates reach the compiled
    module (same weights and outputs as without compile), state-dict keys unchanged."""
    eager, _ = trained("dacs", FastPath())
    compiled, _ = trained("dacs", FastPath(compile=True, compile_backend="eager"))
    assert compiled.teacher.network._compiled_call_impl is not None
    assert_close_states(eager.state_dict(), compiled.state_dict())
    images = torch.randn(1, 3, 32, 64)
    eager.eval(), compiled.eval()
    with torch.no_grad():
        assert torch.allclose(compiled.teacher(images)["main"], eager.teacher(images)["main"],
                              atol=1e-5)


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
