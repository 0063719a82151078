"""Mix Transformer encoders: parity with transformers' SegformerModel through a saved
Hugging Face file, parameter counts, the official `mit_b*.pth` format, drop-path, odd sizes."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from udaseg.models import MixTransformer, WeightsError
from udaseg.models.mit import VARIANTS, SpatialReductionAttention
from udaseg.models.weights import format_normalization, load_imagenet_init

transformers = pytest.importorskip("transformers")


def hugging_face_file(variant: str, folder, with_classifier: bool) -> tuple[nn.Module, str]:
    """A randomly initialised transformers SegFormer of `variant` (eval mode) and the path of
    the `model.safetensors` its `save_pretrained` wrote (the hub's `nvidia/mit-b*` files are
    SegformerForImageClassification checkpoints: `with_classifier`)."""
    dims, depths = VARIANTS[variant]
    config = transformers.SegformerConfig(hidden_sizes=list(dims), depths=list(depths))
    cls = (transformers.SegformerForImageClassification if with_classifier
           else transformers.SegformerModel)
    model = cls._from_config(config, attn_implementation="eager").eval()
    # transformers' port uses LayerNorm eps 1e-5 in the blocks and stage norms, the official
    # code (and udaseg) 1e-6: align it so that the comparison is exact.
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm) and not any(
                part in name for part in ("patch_embeddings", "attention")):
            module.eps = 1e-6
    model.save_pretrained(folder)
    return model, str(folder / "model.safetensors")


@pytest.mark.parametrize(("variant", "with_classifier"), [("b0", True), ("b5", False)])
def test_matches_transformers_segformer(variant, with_classifier, tmp_path, caplog):
    torch.manual_seed(0)
    reference, path = hugging_face_file(variant, tmp_path, with_classifier)
    encoder = MixTransformer(variant).eval()
    with caplog.at_level(logging.INFO):
        assert load_imagenet_init(encoder, path) == []
    if with_classifier:
        assert "classifier.weight" in caplog.text and "classifier.bias" in caplog.text
    images = torch.randn(1, 3, 64, 96)
    segformer = reference.segformer if with_classifier else reference
    with torch.no_grad():
        expected = segformer(pixel_values=images, output_hidden_states=True).hidden_states
        features = encoder(images)
    assert len(features) == len(expected) == 4
    for ours, theirs in zip(features, expected, strict=True):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize(("variant", "count"), [("b0", 3_319_392), ("b5", 81_443_008)])
def test_parameter_counts_and_norms(variant, count):
    encoder = MixTransformer(variant)
    assert sum(p.numel() for p in encoder.parameters()) == count
    assert encoder.out_channels == VARIANTS[variant].embed_dims
    # Official LayerNorm eps: 1e-6 in the blocks and stage norms, PyTorch's 1e-5 in the patch
    # embeddings and after the spatial reduction (too small a difference for the parity test).
    eps = {name: m.eps for name, m in encoder.named_modules() if isinstance(m, nn.LayerNorm)}
    default = {name for name in eps if name.startswith("patch_embed") or ".attn." in name}
    assert {"patch_embed1.norm", "block1.0.attn.norm"} <= default
    assert all(eps[name] == (1e-5 if name in default else 1e-6) for name in eps)


def official_file(encoder: MixTransformer, path) -> dict[str, torch.Tensor]:
    """`encoder`'s weights as a released `mit_b*.pth` holds them: official keys plus the
    ImageNet classifier `head.*`."""
    state = {k: torch.randn_like(v) for k, v in encoder.state_dict().items()}
    state["head.weight"] = torch.randn(1000, encoder.out_channels[-1])
    state["head.bias"] = torch.randn(1000)
    torch.save(state, path)
    return state


def test_official_file_loads_and_reports_the_skipped_classifier(tmp_path, caplog):
    encoder = MixTransformer("b0")
    assert {"patch_embed1.proj.weight", "block1.0.attn.kv.weight", "block1.0.attn.sr.weight",
            "block1.0.attn.norm.weight", "block1.0.mlp.dwconv.dwconv.weight",
            "norm4.weight"} <= set(encoder.state_dict())
    path = tmp_path / "mit_b0.pth"
    state = official_file(encoder, path)
    with caplog.at_level(logging.INFO):
        assert load_imagenet_init(encoder, path, fmt="mit") == []
    assert "head.weight" in caplog.text and "head.bias" in caplog.text
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


@pytest.mark.parametrize("change", ["shape", "missing", "unexpected"])
def test_official_file_that_does_not_fit(change, tmp_path):
    encoder = MixTransformer("b0")
    path = tmp_path / "mit_b0.pth"
    state = official_file(encoder, path)
    key = "block2.1.attn.kv.weight"
    if change == "shape":
        state[key] = torch.zeros(3, 3)
    elif change == "missing":
        del state[key]
    else:
        key = "block2.1.attn.extra"
        state[key] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(WeightsError, match=str(path)) as error:
        load_imagenet_init(encoder, path)
    assert key in str(error.value)


def test_lone_hugging_face_key_projection_is_reported(tmp_path):
    torch.manual_seed(0)
    _, path = hugging_face_file("b0", tmp_path, with_classifier=True)
    from safetensors.torch import load_file, save_file

    state = load_file(path)
    del state["segformer.encoder.block.1.0.attention.self.value.weight"]
    save_file(state, path)
    with pytest.raises(WeightsError, match="block2.0.attn.kv.weight") as error:
        load_imagenet_init(MixTransformer("b0"), path, fmt="huggingface")
    assert "segformer.encoder.block.1.0.attention.self.key.weight" in str(error.value)


def test_unknown_format_and_normalization(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match="neither an official MiT"):
        load_imagenet_init(MixTransformer("b0"), path)
    assert format_normalization("auto", MixTransformer.pretrained_formats) == "imagenet"


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    encoder = MixTransformer("b0", drop_path_rate=0.5)
    images = torch.randn(2, 3, 64, 64)
    encoder.eval()
    with torch.no_grad():
        first, second = encoder(images), encoder(images)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    encoder.train()
    with torch.no_grad():
        trained = encoder(images)
    assert not torch.allclose(trained[-1], first[-1])
    encoder.train()  # without stochastic depth, training and eval compute the same
    for block in encoder.modules():
        if hasattr(block, "drop_path"):
            block.drop_path = 0.0
    with torch.no_grad():
        for a, b in zip(encoder(images), first, strict=True):
            torch.testing.assert_close(a, b)


def test_odd_sizes_follow_the_conv_arithmetic():
    encoder = MixTransformer("b0").eval()
    height, width = 65, 97
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, height, width))
    # 7x7 stride 4 pad 3, then 3x3 stride 2 pad 1: floor((n + 2p - k) / s) + 1 = ceil(n / s).
    sizes = [(math.ceil(height / 4), math.ceil(width / 4))]
    for _ in range(3):
        sizes.append((math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)))
    assert sizes == [(17, 25), (9, 13), (5, 7), (3, 4)]
    assert [tuple(f.shape) for f in features] == [
        (1, c, h, w) for c, (h, w) in zip(encoder.out_channels, sizes, strict=True)]
    with pytest.raises(ValueError, match="at least 29x29"):
        encoder(torch.randn(1, 3, 28, 64))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = MixTransformer("b0")
    checkpointed = MixTransformer("b0", gradient_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 64, 64)
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # the same drop-path draws
        sum(f.square().mean() for f in model(images)).backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_bf16_attention_on_the_cpu_follows_the_float32_attention():
    """Under CPU bf16 autocast the attention takes its matmul path (faster there than the fused
    kernel): the same attention as the float32 kernel, to bf16 precision."""
    torch.manual_seed(0)
    attention = SpatialReductionAttention(64, num_heads=2, sr_ratio=4)
    tokens = torch.randn(2, 16 * 16, 64)
    reference = attention(tokens, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        approximate = attention(tokens, 16, 16)
    assert approximate.dtype == torch.bfloat16
    torch.testing.assert_close(approximate.float(), reference, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(
        reference, attention.proj(torch.nn.functional.scaled_dot_product_attention(
            *split_heads(attention, tokens, 16, 16)).transpose(1, 2).reshape(2, 256, 64)))


def split_heads(attention: SpatialReductionAttention, tokens: torch.Tensor, height: int,
                width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of `attention` as (N, heads, L, d), written out step by step."""
    batch, length, dim = tokens.shape
    heads, head_dim = attention.num_heads, dim // attention.num_heads
    grid = tokens.transpose(1, 2).reshape(batch, dim, height, width)
    reduced = attention.norm(attention.sr(grid).flatten(2).transpose(1, 2))
    q = attention.q(tokens).reshape(batch, length, heads, head_dim).transpose(1, 2)
    k, v = attention.kv(reduced).reshape(batch, -1, 2, heads, head_dim).permute(2, 0, 3, 1, 4)
    return q, k, v
