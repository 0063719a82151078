"""What rare class sampling (`data.rare_class_sampling`) does to the class mix of the source
stream of the built-in benchmark, for several `min_pixels`, without training anything.

For each class: its share of the labelled pixels under uniform sampling, how many source images
hold more than `min_pixels` of it (the images RCS can draw for that class), and its expected
share under RCS (per-image class shares weighted by `RareClassSampler.image_probabilities`).
Last, the effective number of source images, 1 / sum p_i^2 (N under uniform sampling): how
many images the stream really trains on.

    python benchmarks/rcs_shares.py --min-pixels 50 300 1000 1500

For v2 scenes (128x256) DAFormer's 3000 px of a ~2 Mpx GTA5 frame (0.15 %) is about 50 px.
"""

from __future__ import annotations

import argparse

import numpy as np

from udaseg.data import RareClassSampler, RareClassSampling, SyntheticStreets
from udaseg.data.rare_class_sampling import class_pixel_counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--min-pixels", nargs="+", type=int, default=[50, 300, 1000, 1500])
    parser.add_argument("--temperature", type=float, default=0.01)
    parser.add_argument("--version", type=int, default=2, help="scene statistics version")
    parser.add_argument("--num-images", type=int, default=2000, help="as configs/synthetic/")
    args = parser.parse_args()

    source = SyntheticStreets("synthetic", "train", args.num_images, version=args.version)
    counts = class_pixel_counts(source, len(source.class_names))
    image_shares = counts / counts.sum(1, keepdims=True)
    uniform = image_shares.mean(0)   # the same per-image estimator as the RCS column

    header = f"{'class':<14}{'uniform %':>10}" + "".join(
        f"{f'> {m} px: images':>20}{'RCS %':>8}" for m in args.min_pixels)
    rows = {name: f"{name:<14}{100 * share:>10.2f}"
            for name, share in zip(source.class_names, uniform, strict=True)}
    effective = f"{'eff. images':<14}{len(source):>10}"
    for min_pixels in args.min_pixels:
        sampler = RareClassSampler(counts, RareClassSampling(args.temperature, min_pixels))
        probabilities = sampler.image_probabilities()
        shares = probabilities @ image_shares
        for c, name in enumerate(source.class_names):
            rows[name] += f"{len(sampler.class_images[c]):>20}{100 * shares[c]:>8.2f}"
        effective += f"{1 / np.sum(probabilities ** 2):>28.0f}"
    print(f"rare class sampling, T = {args.temperature}, {len(source)} source images "
          f"(scene version {args.version})")
    print(header)
    print("\n".join(rows.values()))
    print(effective)


if __name__ == "__main__":
    main()
