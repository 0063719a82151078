"""Confusion-matrix speed at Cityscapes resolution: udaseg's `confusion_matrix` against the
official code's numpy `fast_hist` (ADVENT / AdaptSegNet `compute_iou`:
`np.bincount(n * a[k].astype(int) + b[k], minlength=n**2)`), side by side in one run.

    python benchmarks/eval_speed.py [--height 1024 --width 2048 --classes 19 --repeats 50]

All count the same pixels (checked); each gets the inputs its pipeline holds: numpy uint8
labels and int64 predictions (official; its own loader even gives float32 labels), int64
predictions from `argmax` and the uint8 labels of udaseg's evaluation loaders (on the CPU here;
on a GPU the matrix also stays on the device). udaseg with int64 labels, what a caller holding
those gets, is printed too.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from udaseg.evaluation.metrics import confusion_matrix


def fast_hist(labels: np.ndarray, predictions: np.ndarray, n: int) -> np.ndarray:
    """The official evaluation's histogram (ADVENT `compute_iou.fast_hist`), restated."""
    keep = (labels >= 0) & (labels < n)
    return np.bincount(n * labels[keep].astype(int) + predictions[keep],
                       minlength=n ** 2).reshape(n, n)


def median_ms(functions: dict, repeats: int) -> dict[str, float]:
    """Median ms of each function, timed in interleaved rounds (one call of each per round), so
    a slower stretch of the machine hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for function in functions.values():
        function()
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (the official numpy count has one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    shape = (args.height, args.width)
    labels = rng.integers(0, args.classes, shape).astype(np.uint8)
    labels[rng.random(shape) < 0.1] = 255                       # ignored pixels
    predictions = rng.integers(0, args.classes, shape).astype(np.int64)
    torch_labels = torch.from_numpy(labels)                     # uint8, as the loaders give
    wide_labels = torch_labels.long()
    torch_predictions = torch.from_numpy(predictions)
    expected = fast_hist(labels, predictions, args.classes)
    for candidate in (torch_labels, wide_labels):
        assert np.array_equal(confusion_matrix(torch_predictions, candidate,
                                               args.classes).numpy(), expected)
    medians = median_ms({
        "official": lambda: fast_hist(labels, predictions, args.classes),
        "uint8": lambda: confusion_matrix(torch_predictions, torch_labels, args.classes),
        "int64": lambda: confusion_matrix(torch_predictions, wide_labels, args.classes),
    }, args.repeats)
    official, ours, wide = medians["official"], medians["uint8"], medians["int64"]
    print(f"{args.height}x{args.width}, {args.classes} classes, {torch.get_num_threads()} "
          f"torch thread(s), median of {args.repeats}")
    print(f"official numpy fast_hist:               {official:7.2f} ms")
    print(f"udaseg confusion_matrix (uint8 labels): {ours:7.2f} ms   "
          f"({official / ours:.1f}x faster)")
    print(f"udaseg confusion_matrix (int64 labels): {wide:7.2f} ms   "
          f"({official / wide:.1f}x faster)")


if __name__ == "__main__":
    main()
