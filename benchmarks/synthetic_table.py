"""Reproduce the result tables of the built-in benchmark: method configs of configs/synthetic/
(or another folder: `--benchmark synthetic_v1`), several seeds, `udaseg fit` then `udaseg test`
on the last checkpoint, then mean ± std with `udaseg.report.compare`.

    python benchmarks/synthetic_table.py --methods source_only oracle minent advent \
        --seeds 0 1 2 --out runs/synthetic_table

Two-stage methods start from the first stage's run of the same seed: `--methods tufl cim
--init-from cim=tufl`. Other settings of every run: `--set trainer.precision=bf16-mixed
--suffix _bf16` (each run is then named `<method>_bf16`, so both variants share one table).

--jobs 1 (the default) gives each run every core: for the default benchmark's EfficientNet-Lite0,
two single-threaded runs side by side took 2 s per iteration each, one two-threaded run 0.6 s
(measured on 2 cores). For v1's small from-scratch network use --jobs 2: there two
single-threaded runs beat one two-threaded run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = CONFIG_ROOT / "synthetic"   # the default benchmark folder


def last_checkpoint(name: str, seed: int, out: Path) -> Path:
    return out / "fit" / name / f"seed{seed}" / "checkpoints" / "last.ckpt"


def test(method: str, seed: int, out: Path, threads: int, name: str | None = None,
         extra: Sequence[str] = (), configs: Path = CONFIGS) -> None:
    """`udaseg test` of the run's last checkpoint on the held-out target test split."""
    name = name or method
    config = configs / f"{method}.yaml"
    command = [sys.executable, "-m", "udaseg.runtime.cli", "test", "--config", str(config),
               "--ckpt_path", str(last_checkpoint(name, seed, out)),
               "--seed_everything", str(seed),
               "--trainer.callbacks", "null", "--trainer.enable_progress_bar", "false",
               "--trainer.logger.init_args.save_dir", str(out / "test"),
               "--trainer.logger.init_args.name", name,
               "--trainer.logger.init_args.version", f"seed{seed}", *extra]
    with open(out / "logs" / f"{name}_seed{seed}_test.log", "w") as log:
        subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                       stdout=log, stderr=subprocess.STDOUT, check=True)


def run(method: str, seed: int, out: Path, threads: int, name: str | None = None,
        extra: Sequence[str] = (), configs: Path = CONFIGS) -> str:
    """Fit `configs/synthetic/<method>.yaml` (plus `extra` CLI overrides) as run `name`, test it."""
    name = name or method
    config = configs / f"{method}.yaml"
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    common = ["--seed_everything", str(seed), "--trainer.logger.init_args.name", name,
              "--trainer.logger.init_args.version", f"seed{seed}",
              "--trainer.enable_progress_bar", "false", *extra]
    start = time.perf_counter()
    # No progress bar or entropy maps (speed); last.ckpt is the CLI's default checkpoint.
    fit = [sys.executable, "-m", "udaseg.runtime.cli", "fit", "--config", str(config),
           "--trainer.logger.init_args.save_dir", str(out / "fit"),
           "--trainer.callbacks", "null", *common]
    with open(logs / f"{name}_seed{seed}_fit.log", "w") as log:
        subprocess.run(fit, env=environment, stdout=log, stderr=subprocess.STDOUT, check=True)
    fit_seconds = time.perf_counter() - start
    test(method, seed, out, threads, name, extra, configs)
    return f"{name} seed {seed}: fit {fit_seconds:.0f} s"


def keep(out: Path, destination: Path) -> list[Path]:
    """Copy each run's result files into `destination/<name>/seed<k>/` (the repository's
    `results/<benchmark>/`, which the documentation's tables are generated from): the test
    result and its config, and the training run's last validation. Checkpoints stay behind."""
    kept = []
    for result in sorted((out / "test").glob("*/seed*/test_metrics.json")):
        name, version = result.parent.parent.name, result.parent.name
        target = destination / name / version
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result, target / "test_metrics.json")
        shutil.copyfile(result.parent / "config.yaml", target / "config.yaml")
        validation = out / "fit" / name / version / "val_metrics.json"
        if validation.is_file():
            shutil.copyfile(validation, target / "val_metrics.json")
        kept.append(target)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["source_only", "oracle", "minent",
                                                          "advent"])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="CLI overrides for every fit and test, e.g. "
                             "trainer.precision=bf16-mixed")
    parser.add_argument("--suffix", default="",
                        help="appended to each run's name (runs of other --set values)")
    parser.add_argument("--benchmark", default="synthetic",
                        help="config folder under configs/ (synthetic, synthetic_v1)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/synthetic_table"))
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="copy the result files to DIR/<name>/seed<k>/ (results/synthetic "
                             "in the repository: the documentation's tables come from there)")
    parser.add_argument("--test-only", action="store_true",
                        help="only re-run `udaseg test` on existing checkpoints")
    parser.add_argument("--init-from", nargs="*", default=[], metavar="METHOD=STAGE1",
                        help="start METHOD from the same seed's last checkpoint of STAGE1 "
                             "(e.g. cim=tufl: CIM from each seed's TUFL run); those runs go "
                             "after every other one")
    args = parser.parse_args()
    configs = CONFIG_ROOT / args.benchmark
    threads = max(1, (os.cpu_count() or 2) // args.jobs)
    stage_one = dict(pair.split("=", 1) for pair in args.init_from)

    overrides = [part for pair in args.set for part in (f"--{pair.split('=', 1)[0]}",
                                                         pair.split("=", 1)[1])]

    def extra(method: str, seed: int) -> list[str]:
        if method not in stage_one:
            return overrides
        checkpoint = last_checkpoint(stage_one[method] + args.suffix, seed, args.out)
        return [*overrides, "--model.init_args.weights.init_checkpoint", str(checkpoint)]

    phases = [[(method, seed) for seed in args.seeds for method in args.methods
               if (method in stage_one) == later] for later in (False, True)]
    with ThreadPoolExecutor(args.jobs) as pool:
        for work in phases:
            if args.test_only:
                list(pool.map(lambda item: test(*item, args.out, threads,
                                                name=item[0] + args.suffix,
                                                extra=extra(*item), configs=configs), work))
                continue
            for line in pool.map(lambda item: run(*item, args.out, threads,
                                                  name=item[0] + args.suffix,
                                                  extra=extra(*item), configs=configs), work):
                print(line, flush=True)
    if args.keep is not None:
        print(f"kept {len(keep(args.out, args.keep))} runs' result files in {args.keep}")
    from udaseg.report.command import report
    report([str(args.out / "test"), "--stage", "test", "--per-class", "--markdown"])


if __name__ == "__main__":
    main()
