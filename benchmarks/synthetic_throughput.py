"""Single-threaded rendering throughput of the SyntheticStreets benchmark.

Renders images through `SyntheticStreets.__getitem__` (exactly what a DataLoader worker does) and
prints the median images/s over several repeats, per domain and image size.

    python benchmarks/synthetic_throughput.py
    python benchmarks/synthetic_throughput.py --sizes 128x256 512x1024 --images 100 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2

from udaseg.data.synthetic import SyntheticStreets


def parse_size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def measure(domain: str, height: int, width: int, images: int, repeats: int) -> list[float]:
    dataset = SyntheticStreets(domain, "train", images * repeats, height, width)  # type: ignore[arg-type]
    dataset[0]  # warm-up: builds the texture banks for this size
    rates = []
    for r in range(repeats):
        start = time.perf_counter()
        for i in range(r * images, (r + 1) * images):
            dataset[i]
        rates.append(images / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", nargs="+", default=["synthetic", "real"],
                        choices=["synthetic", "real"])
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(128, 256), (256, 512)],
                        help="HEIGHTxWIDTH, e.g. 128x256")
    parser.add_argument("--images", type=int, default=200, help="images per repeat (at 128x256; "
                        "scaled down by the pixel count for larger sizes, at least 20)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cv2.setNumThreads(1)  # single-threaded, like one DataLoader worker
    print(f"{'domain':<10} {'size':>9} {'images/s (median)':>18} {'min':>8} {'max':>8}")
    for height, width in args.sizes:
        images = max(20, round(args.images * 128 * 256 / (height * width)))
        for domain in args.domains:
            rates = measure(domain, height, width, images, args.repeats)
            print(f"{domain:<10} {f'{height}x{width}':>9} {statistics.median(rates):>18.1f} "
                  f"{min(rates):>8.1f} {max(rates):>8.1f}")


if __name__ == "__main__":
    main()
