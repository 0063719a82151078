"""How fast one data-loading worker feeds the GTA5 training stream at full resolution.

Writes synthetic full-size GTA5 pairs (1914x1052 RGB PNG + palette label PNG, in the release's
layout) to a temporary folder, then times single-process loading through the real code path:
`GTA5` (PNG decode, palette indices -> train ids) + `TransformedDataset` (augmentation and
normalisation). Variants:

* ``decode``:  `GTA5` only (read image + label, map ids), no augmentation;
* ``advent``:  ADVENT's GTA5 protocol, resize to 1280x720 (no crop) + horizontal flip;
* ``crop``:    resize to 1280x720, random 512x1024 crop, horizontal flip.

Prints median ms/image, what each variant adds to the decode (the resize, crop, flip and
normalisation cost per image), images/s per worker and how many workers one stream needs to
sustain ``--target-its`` iterations/s at ``--batch-size`` images per iteration.

Then the donors of CIM's long-tail pasting (`udaseg.data.ClassDonors`, ``crop`` variant): the
ms the training thread waits per pasted class, prepared on demand (``donor_workers: 0``) and
prepared ahead in one thread (``donor_workers: 1``) while the training step, simulated by a
sleep of ``--step-ms``, runs. Last, TUFL's strong view of one 512x1024 crop: the official PIL
steps (`StrongView`, in a DataLoader worker) against the on-device steps
(`MixPhotometric`, `model.init_args.device_strong_view`) on the CPU and, when present, CUDA.

    python benchmarks/data_speed.py --iterations 30
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from udaseg.adaptation.batch_augment import MixPhotometric
from udaseg.data.donors import ClassDonors
from udaseg.data.gta5 import GTA5
from udaseg.data.photometric import StrongView
from udaseg.data.rare_class_sampling import class_pixel_counts
from udaseg.data.transforms import Augmentation, TransformedDataset

VARIANTS = {
    "decode": None,
    "advent": Augmentation(resize=(720, 1280), hflip=True),
    "crop": Augmentation(resize=(720, 1280), crop=(512, 1024), hflip=True),
}
# Cityscapes label ids that are common in GTA5 frames (road, sidewalk, building, ..., car).
_LABEL_IDS = np.array([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 26, 27, 28, 0, 1, 4])


def synthetic_pair(height: int, width: int, rng: np.random.Generator):
    """A photo-like image (smooth shading, edges, mild noise; it compresses like a rendered
    frame, unlike pure noise) and a piecewise-constant label of Cityscapes ids."""
    coarse = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    label = np.full((height, width), 23, np.uint8)  # sky
    label[height // 2:] = 7  # road
    for _ in range(120):
        y, x = int(rng.integers(0, height)), int(rng.integers(0, width))
        h, w = int(rng.integers(8, height // 4)), int(rng.integers(8, width // 6))
        label[y:y + h, x:x + w] = rng.choice(_LABEL_IDS)
        image[y:y + h, x:x + w] += rng.integers(-60, 60, 3).astype(np.int16)
    image += rng.normal(0, 6, image.shape).astype(np.int16)
    return np.clip(image, 0, 255).astype(np.uint8), label


def write_gta5_tree(root: Path, count: int, height: int, width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    palette = rng.integers(0, 256, 768, dtype=np.uint8).tolist()
    for index in range(1, count + 1):
        image, label = synthetic_pair(height, width, rng)
        Image.fromarray(image, "RGB").save(root / "images" / f"{index:05d}.png")
        label_image = Image.fromarray(label, "P")
        label_image.putpalette(palette)
        label_image.save(root / "labels" / f"{index:05d}.png")


def time_variant(dataset, iterations: int, warmup: int) -> list[float]:
    """Per-image wall times in ms (after `warmup` untimed loads)."""
    times = []
    for step in range(warmup + iterations):
        start = time.perf_counter()
        sample = dataset[step % len(dataset)]
        assert sample["image"] is not None
        if step >= warmup:
            times.append((time.perf_counter() - start) * 1000.0)
    return times


def time_donors(gta5: GTA5, augmentation: Augmentation, normalization: str, workers: int,
                requests: int, step_ms: float, seed: int) -> list[float]:
    """ms the training thread spends in `ClassDonors.next` per request, cycling through the
    classes present, with `step_ms` of (simulated) training between requests."""
    counts = class_pixel_counts(gta5, len(gta5.class_names), progress=False)
    classes = [c for c in range(counts.shape[1]) if counts[:, c].any()]
    donors = ClassDonors(lambda: TransformedDataset(gta5, augmentation, normalization),
                         lambda class_id: np.flatnonzero(counts[:, class_id] > 0), seed=seed,
                         workers=workers)
    donors.prefetch(classes)
    times = []
    for request in range(requests):
        time.sleep(step_ms / 1000.0)
        start = time.perf_counter()
        donors.next(classes[request % len(classes)])
        times.append((time.perf_counter() - start) * 1000.0)
    donors.close()
    return times


def time_strong_views(image: np.ndarray, repeats: int, seed: int) -> dict[str, float]:
    """Median ms per image of TUFL's strong view: PIL in a worker, torch on each device."""
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    views = {"StrongView (PIL, worker)": lambda: StrongView()(image, rng)}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None].to(device).float() / 255.0

        def device_view(pixels=pixels, device=device):
            MixPhotometric()(pixels, generator)
            if device == "cuda":
                torch.cuda.synchronize()
        views[f"MixPhotometric ({device})"] = device_view
    medians = {}
    for name, view in views.items():
        view()   # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            view()
            times.append((time.perf_counter() - start) * 1000.0)
        medians[name] = statistics.median(times)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=1052)
    parser.add_argument("--width", type=int, default=1914)
    parser.add_argument("--images", type=int, default=4, help="distinct synthetic pairs")
    parser.add_argument("--iterations", type=int, default=30, help="timed loads per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--normalization", default="caffe_bgr", choices=["caffe_bgr", "imagenet"])
    parser.add_argument("--target-its", type=float, default=10.0,
                        help="training iterations/s the stream must sustain")
    parser.add_argument("--batch-size", type=int, default=1, help="images per iteration")
    parser.add_argument("--threads", type=int, default=1,
                        help="OpenCV/torch threads (1 = what one DataLoader worker gets)")
    parser.add_argument("--donor-requests", type=int, default=20,
                        help="long-tail donors asked for per setting (0: skip)")
    parser.add_argument("--step-ms", type=float, default=300.0,
                        help="simulated training step between donor requests")
    parser.add_argument("--dir", default=None, help="where to write the tree (default: temp)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as temp:
        root = Path(args.dir or temp) / "GTA5"
        write_gta5_tree(root, args.images, args.height, args.width, args.seed)
        image_mb = (root / "images" / "00001.png").stat().st_size / 2**20
        label_kb = (root / "labels" / "00001.png").stat().st_size / 2**10
        print(f"GTA5 pairs {args.width}x{args.height}: image PNG {image_mb:.2f} MiB, palette "
              f"label PNG {label_kb:.0f} KiB; {args.threads} thread(s); "
              f"{args.iterations} timed loads per variant")
        gta5 = GTA5(str(root))
        print(f"{'variant':<8} {'median ms':>10} {'p90 ms':>8} {'+ms on decode':>14} "
              f"{'img/s/worker':>13} "
              f"{'workers for ' + format(args.target_its, 'g') + ' it/s':>20}")
        decode_median = None
        for name in args.variants:
            augmentation = VARIANTS[name]
            dataset = (gta5 if augmentation is None else
                       TransformedDataset(gta5, augmentation, args.normalization))
            if augmentation is not None:
                dataset.reseed(args.seed)
            times = sorted(time_variant(dataset, args.iterations, args.warmup))
            median = statistics.median(times)
            if name == "decode":
                decode_median = median
            added = "" if decode_median is None or name == "decode" else \
                f"{median - decode_median:+.1f}"
            p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
            rate = 1000.0 / median
            workers = math.ceil(args.target_its * args.batch_size / rate)
            print(f"{name:<8} {median:>10.1f} {p90:>8.1f} {added:>14} {rate:>13.2f} "
                  f"{workers:>20d}")
        print("workers are per stream (source and target each have num_workers); the target "
              "stream (Cityscapes 2048x1024) needs its own.")
        if args.donor_requests:
            print(f"long-tail donors ({args.donor_requests} requests, crop variant, "
                  f"{args.step_ms:g} ms simulated step between them): training-thread wait")
            for workers in (0, 1):
                times = sorted(time_donors(gta5, VARIANTS["crop"], args.normalization, workers,
                                           args.donor_requests, args.step_ms, args.seed))
                print(f"  donor_workers {workers}: median {statistics.median(times):.1f} ms, "
                      f"max {times[-1]:.1f} ms per donor")
        crop = gta5[0]["image"][:512, :1024]
        print("TUFL strong view of a 512x1024 crop, median ms/image:")
        for name, median in time_strong_views(np.ascontiguousarray(crop), 10, args.seed).items():
            print(f"  {name}: {median:.1f}")


if __name__ == "__main__":
    main()
