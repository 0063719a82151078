"""The papers' protocol on the built-in benchmark: adapt a trained source-only model.

For each seed: `source_only.yaml` (its full budget), then two runs started from its last
checkpoint (weights only, fresh optimisers and schedule) for `--adapt-iters` iterations:
the method config without warm-up, and source-only continued the same way (the control: same
start, same extra iterations, no target loss). All are tested on the held-out target split.

    python benchmarks/adapt_from_source.py --method maxsquare_iw_multi --adapt-iters 300 \
        --seeds 0 1 2 --out runs/adapt_from_source
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from synthetic_table import CONFIG_ROOT, last_checkpoint, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="maxsquare_iw_multi",
                        help="config name in the --benchmark folder")
    parser.add_argument("--benchmark", default="synthetic",
                        help="config folder under configs/ (synthetic, synthetic_v1)")
    parser.add_argument("--adapt-iters", type=int, default=300)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/adapt_from_source"))
    args = parser.parse_args()
    threads = max(1, (os.cpu_count() or 2) // args.jobs)
    configs = CONFIG_ROOT / args.benchmark

    def adapt(item: tuple[str, int]) -> str:
        config, seed = item
        start = ["--model.init_args.weights.init_checkpoint",
                 str(last_checkpoint("source_only", seed, args.out)),
                 "--trainer.max_steps", str(args.adapt_iters),
                 "--model.init_args.adaptation_warmup", "0"]
        name = f"{config}_from_source" if config != "source_only" else "source_only_continued"
        return run(config, seed, args.out, threads, name, start, configs)

    with ThreadPoolExecutor(args.jobs) as pool:
        for line in pool.map(lambda seed: run("source_only", seed, args.out, threads,
                                              configs=configs), args.seeds):
            print(line, flush=True)
        work = [(config, seed) for seed in args.seeds for config in (args.method, "source_only")]
        for line in pool.map(adapt, work):
            print(line, flush=True)
    from udaseg.runtime.cli import report as compare
    compare([str(args.out / "test"), "--stage", "test", "--per-class", "--markdown"])


if __name__ == "__main__":
    main()
