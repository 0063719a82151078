"""Mix Transformer (MiT-B0 ... B5): SegFormer's hierarchical encoder, DAFormer's backbone.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers", NeurIPS 2021. Four stages at strides 4, 8, 16, 32; each stage is an overlapping
patch embedding (a strided conv + LayerNorm), transformer blocks and a LayerNorm. A block is
pre-norm spatial-reduction attention (keys and values from a k x k, stride-k conv of the tokens,
k = 8/4/2/1 per stage) and a Mix-FFN (Linear, depthwise 3x3 conv, GELU, Linear), each with
stochastic depth on its residual branch.

Details as in the official code (NVlabs/SegFormer, copied into lhoyer/DAFormer): LayerNorm eps
1e-6 in the blocks and the stage norms, PyTorch's default 1e-5 in the patch embeddings and after
the spatial reduction (Hugging Face's port uses 1e-5 everywhere); exact (erf) GELU; q/kv biases;
drop-path rates rising linearly from 0 to `drop_path_rate` over all blocks.

ImageNet weights: the released `mit_b*.pth` files (format "mit", the state-dict keys of this
module plus the classifier `head.*`, which is skipped) or Hugging Face's `nvidia/mit-b*`
(format "huggingface", `pytorch_model.bin` or `model.safetensors`: `segformer.encoder.*` keys
with separate key/value projections, plus `classifier.*`). Both expect inputs normalised with
the ImageNet mean/std (`data.normalization: imagenet`).

Tokens stay in (N, H*W, C) layout throughout; the convolutions read them as channels-last
(N, C, H, W) views, so no transposed copies are made, and the stage outputs are channels-last
tensors of shape (N, C, H, W).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info
from torch import nn
from torch.utils.checkpoint import checkpoint

from udaseg.models.weights import WeightsError, compare_state, listing, mismatch_message

MiTVariant = Literal["b0", "b1", "b2", "b3", "b4", "b5"]


class StageWidths(NamedTuple):
    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]


#: Channels and blocks per stage of each variant (the official `mit_b0` ... `mit_b5`).
VARIANTS: dict[str, StageWidths] = {
    "b0": StageWidths((32, 64, 160, 256), (2, 2, 2, 2)),
    "b1": StageWidths((64, 128, 320, 512), (2, 2, 2, 2)),
    "b2": StageWidths((64, 128, 320, 512), (3, 4, 6, 3)),
    "b3": StageWidths((64, 128, 320, 512), (3, 4, 18, 3)),
    "b4": StageWidths((64, 128, 320, 512), (3, 8, 27, 3)),
    "b5": StageWidths((64, 128, 320, 512), (3, 6, 40, 3)),
}
NUM_HEADS = (1, 2, 5, 8)
SR_RATIOS = (8, 4, 2, 1)
MLP_RATIO = 4
#: (kernel, stride) of each stage's patch embedding; padding kernel // 2.
PATCH_EMBEDDINGS = ((7, 4), (3, 2), (3, 2), (3, 2))
BLOCK_NORM_EPS = 1e-6
#: The smallest input side: stage 1 (1/4) must be at least as large as its 8x8 reduction.
MIN_INPUT_SIZE = 29

#: Entries of the released files that only the ImageNet classifier uses.
_CLASSIFIER_PREFIXES = {"mit": ("head.",), "huggingface": ("classifier.",)}
#: Hugging Face module names (transformers' `modeling_segformer` layout) -> ours.
_HF_RENAMES = (
    ("attention.self.query.", "attn.q."),
    ("attention.self.sr.", "attn.sr."),
    ("attention.self.layer_norm.", "attn.norm."),
    ("attention.output.dense.", "attn.proj."),
    ("layer_norm_1.", "norm1."),
    ("layer_norm_2.", "norm2."),
    ("mlp.dense1.", "mlp.fc1."),
    ("mlp.dense2.", "mlp.fc2."),
)
_HF_PREFIX = "segformer."
_HF_KEY, _HF_VALUE = "attention.self.key.", "attention.self.value."


def channels_last_view(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, H*W, C) tokens as an (N, C, H, W) channels-last view (no copy)."""
    return tokens.unflatten(1, (height, width)).permute(0, 3, 1, 2)


def as_tokens(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W, C); a view when `features` is channels-last."""
    return features.permute(0, 2, 3, 1).flatten(1, 2)


class OverlapPatchEmbedding(nn.Module):
    """Strided conv with overlapping windows (padding kernel // 2), then LayerNorm (eps 1e-5)."""

    def __init__(self, in_channels: int, channels: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, channels, kernel, stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        height, width = x.shape[-2:]
        return self.norm(as_tokens(x)), height, width


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys/values come from the tokens reduced by a k x k, stride-k
    conv and a LayerNorm (eps 1e-5) when `sr_ratio` k > 1."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, length, dim = x.shape
        head_dim = dim // self.num_heads
        # (N, L, C) -> (N, heads, L, d) as strided views of the projections (no copies).
        q = self.q(x).unflatten(-1, (self.num_heads, head_dim)).transpose(1, 2)
        source = x
        if self.sr_ratio > 1:
            source = self.norm(as_tokens(self.sr(channels_last_view(x, height, width))))
        kv = self.kv(source).unflatten(-1, (2, self.num_heads, head_dim))
        k, v = kv.unbind(2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            # On CPUs the bf16 fused kernel was slower than two matmuls around a softmax
            # (benchmarks/mit_speed.py); elsewhere the fused kernel wins.
            scores = (q * head_dim ** -0.5) @ k.transpose(-2, -1)
            out = scores.softmax(dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class DepthwiseConv(nn.Module):
    """3x3 depthwise conv of (N, H*W, C) tokens (Mix-FFN's positional information)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return as_tokens(self.dwconv(channels_last_view(x, height, width)))


class MixFFN(nn.Module):
    """Linear -> depthwise 3x3 conv -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), height, width)))


class MiTBlock(nn.Module):
    """x + drop_path(attn(norm1(x))), then + drop_path(mlp(norm2(x))); norms eps 1e-6.

    Stochastic depth (Huang et al., 2016): in training each sample's branch is dropped with
    probability `drop_path` and kept ones are scaled by 1 / (1 - drop_path); identity in eval.
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = MixFFN(dim, dim * MLP_RATIO)
        self.drop_path = drop_path

    def _add_branch(self, x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_path == 0.0:
            return x + branch
        keep = 1.0 - self.drop_path
        scale = x.new_empty(x.shape[0], 1, 1).bernoulli_(keep).div_(keep)
        return torch.addcmul(x, branch, scale)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self._add_branch(x, self.attn(self.norm1(x), height, width))
        return self._add_branch(x, self.mlp(self.norm2(x), height, width))

    def extra_repr(self) -> str:
        return f"drop_path={self.drop_path:.4g}"


class MixTransformer(nn.Module):
    """MiT encoder: (N, 3, H, W) ImageNet-normalised images -> four stage outputs at strides
    4, 8, 16, 32, (N, C_i, ceil(H / s_i), ceil(W / s_i)) (channels-last memory layout).

    State-dict keys are the official ones (`patch_embed1.proj.weight`,
    `block1.0.attn.kv.weight`, `norm4.bias`, ...), so released `mit_b*.pth` files load as they
    are. Without a file the weights follow the official initialisation (Linear: truncated
    normal std 0.02; conv: normal with std sqrt(2 / fan_out); LayerNorm 1 / 0).

    Args:
        variant: "b0" (3.3 M parameters) ... "b5" (81.4 M, DAFormer's).
        drop_path_rate: stochastic-depth rate of the last block; the rates rise linearly from 0
            over all blocks.
        gradient_checkpointing: recompute each block's activations in the backward pass
            instead of storing them (less memory, about one more forward of compute).
    """

    pretrained_formats: ClassVar[tuple[str, ...]] = ("mit", "huggingface")

    def __init__(self, variant: MiTVariant = "b5", drop_path_rate: float = 0.1,
                 gradient_checkpointing: bool = False) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"MiT variant must be one of {list(VARIANTS)}, got {variant!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.variant = variant
        self.gradient_checkpointing = gradient_checkpointing
        dims, depths = VARIANTS[variant]
        self.out_channels: tuple[int, ...] = tuple(dims)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        in_channels, first = 3, 0
        for stage, (dim, depth) in enumerate(zip(dims, depths, strict=True), start=1):
            kernel, stride = PATCH_EMBEDDINGS[stage - 1]
            setattr(self, f"patch_embed{stage}",
                    OverlapPatchEmbedding(in_channels, dim, kernel, stride))
            setattr(self, f"block{stage}", nn.ModuleList(
                MiTBlock(dim, NUM_HEADS[stage - 1], SR_RATIOS[stage - 1], rates[first + i])
                for i in range(depth)))
            setattr(self, f"norm{stage}", nn.LayerNorm(dim, eps=BLOCK_NORM_EPS))
            in_channels, first = dim, first + depth
        self.apply(_official_init)
        # The convolutions read channels-last views of the tokens: with weights in the same
        # layout they skip a weight reorder in every forward and backward (the state dict's
        # shapes and keys are unchanged).
        self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.shape[-2] < MIN_INPUT_SIZE or images.shape[-1] < MIN_INPUT_SIZE:
            raise ValueError(f"MixTransformer needs images of at least {MIN_INPUT_SIZE}x"
                             f"{MIN_INPUT_SIZE} pixels (stage 1's 8x8 key/value reduction), "
                             f"got {tuple(images.shape[-2:])}")
        # Channels-last input makes the first conv's output channels-last: tokens are a view.
        x = images.contiguous(memory_format=torch.channels_last)
        outputs = []
        for stage in range(1, len(self.out_channels) + 1):
            x, height, width = getattr(self, f"patch_embed{stage}")(x)
            for block in getattr(self, f"block{stage}"):
                if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                    x = checkpoint(block, x, height, width, use_reentrant=False)
                else:
                    x = block(x, height, width)
            x = channels_last_view(getattr(self, f"norm{stage}")(x), height, width)
            outputs.append(x)
        return outputs

    def load_pretrained(self, state: dict[str, torch.Tensor], fmt: str, source: str) -> list[str]:
        """Load ImageNet weights (format "mit", "huggingface" or "auto") into the encoder.

        Every encoder tensor must be in the file with the same shape; the file's ImageNet
        classifier (`head.*` / `classifier.*`) is skipped, and said so. Any other missing,
        unexpected or mis-shaped entry raises `WeightsError` naming the file and keys.
        Returns the encoder keys left untouched (none).
        """
        if fmt == "auto":
            fmt = detect_format(state, source)
        elif fmt not in self.pretrained_formats:
            raise WeightsError(f"MixTransformer reads formats {list(self.pretrained_formats)} "
                               f"(or 'auto'), got {fmt!r} for {source}")
        skipped = [k for k in state if k.startswith(_CLASSIFIER_PREFIXES[fmt])]
        kept = {k: v for k, v in state.items() if k not in skipped}
        incoming = from_huggingface(kept) if fmt == "huggingface" else kept
        target = self.state_dict()
        missing, unexpected, mismatched = compare_state(target, incoming, list(target))
        if missing or unexpected or mismatched:
            raise WeightsError(mismatch_message(
                f"{source} ({fmt} format) does not fit MixTransformer {self.variant}",
                missing, unexpected, mismatched))
        self.load_state_dict(incoming, strict=True)
        if skipped:
            rank_zero_info(f"udaseg: {source}: loaded MiT-{self.variant.upper()} ImageNet "
                           f"weights; skipped the ImageNet classifier entries {listing(skipped)}")
        return []


def detect_format(state: dict[str, torch.Tensor], source: str) -> str:
    """"mit" (official keys, `block1.0...`) or "huggingface" (`[segformer.]encoder.block...`)."""
    if any(k.startswith(("patch_embed1.", "block1.")) for k in state):
        return "mit"
    if any(k.startswith(("encoder.", _HF_PREFIX + "encoder.")) for k in state):
        return "huggingface"
    raise WeightsError(f"{source} is neither an official MiT state dict (`patch_embed1.*`, "
                       "`block1.*` keys) nor a Hugging Face SegFormer one "
                       f"(`segformer.encoder.*`); first keys: {list(state)[:5]}")


def huggingface_key(key: str) -> str:
    """Our key for a Hugging Face SegFormer encoder key (without `segformer.`); the key/value
    projections are handled by `from_huggingface`. Unknown keys come back unchanged."""
    parts = key.split(".", 3)
    if len(parts) < 4 or parts[0] != "encoder" or not parts[2].isdigit():
        return key
    kind, stage, rest = parts[1], int(parts[2]) + 1, parts[3]
    if kind == "patch_embeddings":
        return f"patch_embed{stage}.{rest.replace('layer_norm.', 'norm.')}"
    if kind == "layer_norm":
        return f"norm{stage}.{rest}"
    if kind == "block":
        for theirs, mine in _HF_RENAMES:
            rest = rest.replace("." + theirs, "." + mine)
        return f"block{stage}.{rest}"
    return key


def from_huggingface(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face SegFormer encoder state dict (`segformer.` prefix optional, classifier
    removed) with our key names; separate key and value projections are stacked into `kv`
    (keys first). A lone key or value projection keeps its name (reported as unexpected)."""
    renamed: dict[str, torch.Tensor] = {}
    halves: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, value in state.items():
        bare = key[len(_HF_PREFIX):] if key.startswith(_HF_PREFIX) else key
        for half in (_HF_KEY, _HF_VALUE):
            if half in bare:
                ours = huggingface_key(bare.replace(half, "attn.kv."))
                halves.setdefault(ours, {})[half] = (key, value)
                break
        else:
            renamed[huggingface_key(bare)] = value
    for ours, pair in halves.items():
        if len(pair) == 2:
            renamed[ours] = torch.cat([pair[_HF_KEY][1], pair[_HF_VALUE][1]])
        else:
            renamed.update(pair.values())
    return renamed


def _official_init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / (fan_out // module.groups)))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


__all__ = ["MixTransformer", "VARIANTS", "detect_format", "from_huggingface", "huggingface_key"]
