"""How much of a built-in-benchmark checkpoint's test mIoU its BN running statistics cost: the
test split as the checkpoint evaluates, then again after the statistics are re-estimated on
clean target training crops (the network's weights unchanged).

MIC's official masked forward (`mic.bn_statistics: update`) moves the running statistics towards
masked, 70 %-grey images; a network with BN in its encoder then evaluates with statistics of
neither clean nor masked images. The gap between the two numbers measures that.

    python benchmarks/mic_bn_statistics.py \
        runs/synthetic/mic_daformer/version_0/checkpoints/last.ckpt --batches 32
"""

from __future__ import annotations

import argparse

import torch

from udaseg.data import Augmentation, SyntheticStreets, UDADataModule
from udaseg.methods import UDAMethod
from udaseg.models import MAIN
from udaseg.models.segmenter import resolve_class


def builtin_benchmark_data(eval_batch_size: int = 16) -> UDADataModule:
    """The built-in benchmark v2 as configs/synthetic/data.yaml builds it (its training crops,
    validation and test splits), set up for fitting and testing."""
    crops = Augmentation(hflip=True, scale=(0.75, 1.25), crop=(128, 128))
    data = UDADataModule(source=SyntheticStreets("synthetic", "train", 64, version=2),
                         target=SyntheticStreets("real", "train", 2000, version=2),
                         val=SyntheticStreets("real", "val", 200, version=2),
                         test=SyntheticStreets("real", "test", 500, version=2),
                         source_augmentation=crops, target_augmentation=crops,
                         normalization="signed", batch_size=8, eval_batch_size=eval_batch_size,
                         num_workers=0)
    data.setup("fit")
    data.setup("test")
    return data


def test_miou(method: UDAMethod, data: UDADataModule) -> float:
    """mIoU (%) of the segmenter in evaluation mode on the data module's test split."""
    network = method.segmenter.eval()
    classes = method.num_classes
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    with torch.no_grad():
        for batch in data.test_dataloader():
            logits = torch.nn.functional.interpolate(
                network(batch["image"])[MAIN], size=tuple(batch["label"].shape[-2:]),
                mode="bilinear", align_corners=method.logits_align_corners)
            labels, predictions = batch["label"].long(), logits.argmax(1)
            labelled = labels != method.ignore_index
            confusion += torch.bincount(labels[labelled] * classes + predictions[labelled],
                                        minlength=classes ** 2).view(classes, classes)
    union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
    return 100 * (confusion.diag() / union.clamp(min=1)).mean().item()


@torch.no_grad()
def reestimate_bn(method: UDAMethod, data: UDADataModule, batches: int) -> None:
    """Running statistics from scratch (cumulative averages) over `batches` clean target
    training batches."""
    layers = [module for module in method.segmenter.modules()
              if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    method.segmenter.train()
    for index, (batch, *_) in enumerate(data.train_dataloader()):
        if index == batches:
            break
        method.segmenter(batch["target"]["image"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--method", default="udaseg.methods.DAFormer")
    parser.add_argument("--batches", type=int, default=32)
    args = parser.parse_args()
    method = resolve_class(args.method, "--method").load_from_checkpoint(
        args.checkpoint, map_location="cpu", weights_only=False)
    data = builtin_benchmark_data()
    print(f"test mIoU as saved: {test_miou(method, data):.2f}")
    reestimate_bn(method, data, args.batches)
    print(f"test mIoU, BN statistics re-estimated on {args.batches} clean target batches: "
          f"{test_miou(method, data):.2f}")


if __name__ == "__main__":
    main()
