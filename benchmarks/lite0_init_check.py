"""Check that udaseg's EfficientNet-Lite0 reads the shipped ImageNet weights as they were trained:
which input normalisation and which padding they expect.

Classifies one natural photo (matplotlib's bundled `grace_hopper.jpg`; needs the `notebook`
extra, or pass --image) with the encoder plus the file's own head conv and 1000-class classifier,
under each normalisation and padding, and prints

- the probability of ImageNet class 652 ("military uniform", the photo's usual top-1), and
- the mean |log(batch variance / BN running variance)| of the stem's outputs: 0 when the input
  statistics are those the network was trained on.

    python benchmarks/lite0_init_check.py
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from unittest import mock

import cv2
import torch
import torch.nn.functional as F

from udaseg.data.transforms import normalize
from udaseg.models.efficientnet_lite import (
    LITE0_IMAGENET_FILE,
    LITE0_IMAGENET_SHA256,
    EfficientNetLiteDeepLab,
    SamePadConv2d,
)
from udaseg.models.weights import load_imagenet_init, resolve_weights_path

MILITARY_UNIFORM = 652


def sample_image() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


def classify(model: EfficientNetLiteDeepLab, state: dict, images: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ImageNet probabilities, stem conv output) of the encoder + the file's classifier."""
    stem = model.stem_conv(images)
    features = model.encode(images)[1]   # the last block's output (no skip configured)
    head = F.conv2d(features, state["_conv_head.weight"])
    head = F.batch_norm(head, state["_bn1.running_mean"], state["_bn1.running_var"],
                        state["_bn1.weight"], state["_bn1.bias"], training=False, eps=1e-3)
    logits = F.linear(F.relu6(head).mean((2, 3)), state["_fc.weight"], state["_fc.bias"])
    return logits.softmax(1), stem


def symmetric_forward(conv: SamePadConv2d, x: torch.Tensor) -> torch.Tensor:
    padding = tuple(d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation, strict=True))
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, padding, conv.dilation, conv.groups)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=None)
    args = parser.parse_args()
    path = args.image or sample_image()
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"cannot read image {path}")
    image = cv2.resize(image[..., ::-1], (224, 224), interpolation=cv2.INTER_AREA)

    model = EfficientNetLiteDeepLab(9, output_stride=32).eval()
    load_imagenet_init(model, LITE0_IMAGENET_FILE, sha256=LITE0_IMAGENET_SHA256)
    state = torch.load(resolve_weights_path(LITE0_IMAGENET_FILE), weights_only=True)
    running_var = state["_bn0.running_var"]
    live = running_var > 1e-3  # a few stem channels are dead (running variance ~0)
    print(f"image: {path}")
    print("| padding | normalization | P(military uniform) | top-1 | stem |log var ratio| |")
    print("|---|---|---|---|---|")
    for padding in ("tf_same", "symmetric"):
        patch = (mock.patch.object(SamePadConv2d, "forward", symmetric_forward)
                 if padding == "symmetric" else contextlib.nullcontext())
        with patch, torch.no_grad():
            for normalization in ("signed", "imagenet"):
                probabilities, stem = classify(model, state, normalize(image, normalization)[None])
                variance = stem.var((0, 2, 3))
                ratio = (variance[live] / running_var[live]).log().abs().mean()
                print(f"| {padding} | {normalization} | {probabilities[0, MILITARY_UNIFORM]:.3f} | "
                      f"{int(probabilities.argmax())} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
