"""Confusion-matrix speed at Cityscapes resolution: udaseg's `confusion_matrix` against the
official code's numpy `fast_hist` (ADVENT / AdaptSegNet `compute_iou`:
`np.bincount(n * a[k].astype(int) + b[k], minlength=n**2)`), side by side in one run.

    python benchmarks/eval_speed.py [--height 1024 --width 2048 --classes 19 --repeats 20]

Both count the same pixels (checked); each gets the inputs its pipeline holds: numpy uint8
labels and int64 predictions (official), torch int64 predictions from `argmax` and int64
labels (udaseg, on the CPU here; on a GPU the matrix also stays on the device).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from udaseg.metrics import confusion_matrix


def fast_hist(labels: np.ndarray, predictions: np.ndarray, n: int) -> np.ndarray:
    """The official evaluation's histogram (ADVENT `compute_iou.fast_hist`), restated."""
    keep = (labels >= 0) & (labels < n)
    return np.bincount(n * labels[keep].astype(int) + predictions[keep],
                       minlength=n ** 2).reshape(n, n)


def median_ms(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shape = (args.height, args.width)
    labels = rng.integers(0, args.classes, shape).astype(np.uint8)
    labels[rng.random(shape) < 0.1] = 255                       # ignored pixels
    predictions = rng.integers(0, args.classes, shape).astype(np.int64)
    torch_labels = torch.from_numpy(labels).long()
    torch_predictions = torch.from_numpy(predictions)
    expected = fast_hist(labels, predictions, args.classes)
    assert np.array_equal(confusion_matrix(torch_predictions, torch_labels,
                                           args.classes).numpy(), expected)
    official = median_ms(lambda: fast_hist(labels, predictions, args.classes), args.repeats)
    ours = median_ms(lambda: confusion_matrix(torch_predictions, torch_labels, args.classes),
                     args.repeats)
    print(f"{args.height}x{args.width}, {args.classes} classes, {torch.get_num_threads()} "
          f"thread(s), median of {args.repeats}")
    print(f"official numpy fast_hist: {official:7.2f} ms")
    print(f"udaseg confusion_matrix:  {ours:7.2f} ms   ({official / ours:.1f}x faster)")


if __name__ == "__main__":
    main()
