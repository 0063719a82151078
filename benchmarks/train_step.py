"""Seconds per training iteration and peak memory for a method, backbone, resolution, precision,
fast-path switches and device. Prints numbers; it is not a test.

    python benchmarks/train_step.py --method AdvEnt --depth 101 --source 256 512 --device cpu
    python benchmarks/train_step.py --method AdvEnt --source 720 1280 --target 512 1024 \
        --device cuda --precision bf16-mixed
    python benchmarks/train_step.py --method DACS
    python benchmarks/train_step.py --method DAFormer --segmenter-args '{}' --source 512 512 \
        --batch-size 2 --precision 32-true bf16-mixed    # MiT-B5 + DAFormer head

Several values of `--precision`, `--bn-stats`, `--channels-last`, `--fused` or `--compile` run
every combination, each in a fresh process (its own peak memory, nothing cached from another),
and print one table with each row's time as a ratio to the first row's:

    python benchmarks/train_step.py --method AdvEnt --precision 32-true bf16-mixed \
        --bn-stats batch frozen --channels-last off on --fused off on

`--fused on` runs with either `--bn-stats`: with batch statistics each BN layer of the joint
forward normalises source and target by their own statistics, as the separate forwards do. With
frozen BN the random network's running statistics are first set from one batch, so that an
uncalibrated ResNet-101 does not overflow.

Target batches carry a strong view too (TUFL). Methods that read the source set when training
starts get it through `--init-args` instead: TUFL's class weights default to 1 per class here,
and CIM's long-tail pasting (which reads source crops from disk) is not timed.

An iteration is the method's full `adaptation_step` plus the optimizer steps, timed through
Lightning (manual optimisation, AMP) on random tensors; the median after warm-up is reported.

`--plain-advent` adds a first row, the baseline of the ratios: ADVENT's AdvEnt iteration as a
plain PyTorch loop in the official order around the same networks (`benchmarks/plain_advent.py`;
batch BN, no fast path), so the table says what udaseg's loop and each switch cost against it:

    python benchmarks/train_step.py --method AdvEnt --plain-advent --bn-stats batch \
        --channels-last off on --fused off on

Every table starts with the CPU model and whether it computes bf16 natively
(`udaseg.runtime.hardware`): without native bf16 (AVX2 only), bf16-mixed is many times slower
than fp32.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import itertools
import json
import resource
import statistics
import subprocess
import sys
import time

import pytorch_lightning as pl
import torch

import udaseg.methods as methods
from udaseg.methods.fast_path import FastPath
from udaseg.models.segmenter import resolve_class
from udaseg.runtime.hardware import cpu_info


class Timer(pl.Callback):
    def __init__(self, device: str) -> None:
        self.device, self.times, self.start = device, [], 0.0

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, *args) -> None:
        self._sync()
        self.start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self._sync()
        self.times.append(time.perf_counter() - self.start)


def random_batches(args: argparse.Namespace, num_classes: int):
    source_shape, target_shape = tuple(args.source), tuple(args.target or args.source)
    while True:
        yield {"source": {"image": torch.randn(args.batch_size, 3, *source_shape),
                          "label": torch.randint(0, num_classes,
                                                 (args.batch_size, *source_shape))},
               "target": {"image": torch.randn(args.batch_size, 3, *target_shape),
                          "strong_image": torch.randn(args.batch_size, 3, *target_shape)}}


class RandomBatches(pl.LightningDataModule):
    """`random_batches` as a data module that declares ImageNet normalisation, which the
    on-device photometric steps of DACS, DAFormer and TUFL read."""

    normalization = "imagenet"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.args = args

    def train_dataloader(self):
        return random_batches(self.args, self.args.num_classes)


SWITCHES = ("precision", "bn_stats", "channels_last", "fused", "compile")


def calibrate_bn(segmenter: torch.nn.Module, batch: torch.Tensor) -> None:
    """Running statistics of every BN layer set to those of `batch` (frozen-BN timing only)."""
    layers = [module for module in segmenter.modules()
              if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None   # cumulative average: one batch sets the statistics
    segmenter.train()
    with torch.no_grad():
        segmenter(batch)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum


def measure_plain_advent(args: argparse.Namespace) -> dict:
    """Time the plain ADVENT loop (`benchmarks/plain_advent.py`) in this process."""
    from plain_advent import plain_advent_times  # next to this script

    times = plain_advent_times(random_batches(args, args.num_classes), args.num_classes,
                               args.depth, args.width, args.discriminator_width,
                               args.precision, args.warmup + args.iterations)[args.warmup:]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"loop": "plain ADVENT", **{name: getattr(args, name) for name in SWITCHES},
            "bn_stats": "batch", "channels_last": "off", "fused": "off", "compile": "off",
            "median": statistics.median(times), "min": min(times), "max": max(times),
            "peak_gib": peak, "segmenter": "DeepLabV2", "threads": torch.get_num_threads()}


def measure(args: argparse.Namespace) -> dict:
    """Time one combination in this process; the row of the table."""
    if args.loop == "plain":
        return measure_plain_advent(args)
    method_class = getattr(methods, args.method)
    extra = ({"discriminator_width": args.discriminator_width}
             if "discriminator_width" in inspect.signature(method_class).parameters else {})
    segmenter_class = (resolve_class(args.segmenter, "--segmenter") if args.segmenter
                       else method_class.default_segmenter())
    # --segmenter-args replaces the ResNet's depth and width (networks without them, such as
    # EncoderDecoder's MiT + DAFormer head).
    segmenter = functools.partial(segmenter_class, **(
        args.segmenter_args if args.segmenter_args is not None
        else {"depth": args.depth, "width": args.width}))
    if issubclass(method_class, methods.TUFL):   # no source set here to count classes on
        extra["class_weights"] = [1.0] * args.num_classes
    fast_path = FastPath(channels_last=args.channels_last == "on", fused_forward=args.fused == "on",
                         compile=args.compile == "on")
    torch.manual_seed(0)   # the plain loop's initial weights too (same construction order)
    method = method_class(num_classes=args.num_classes, segmenter=segmenter,
                          bn_stats=args.bn_stats, fast_path=fast_path,
                          **{**extra, **args.init_args})
    if args.bn_stats == "frozen":
        calibrate_bn(method.segmenter, torch.randn(max(2, args.batch_size), 3, *args.source))
    timer = Timer(args.device)
    trainer = pl.Trainer(accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
                         precision=args.precision, max_steps=args.warmup + args.iterations,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[timer])
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(method, datamodule=RandomBatches(args))
    measured = timer.times[args.warmup:]
    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"loop": "udaseg", **{name: getattr(args, name) for name in SWITCHES},
            "median": statistics.median(measured), "min": min(measured), "max": max(measured),
            "peak_gib": peak, "segmenter": segmenter_class.__name__,
            "threads": torch.get_num_threads()}


def combinations(args: argparse.Namespace) -> list[dict]:
    """Every combination of the switches' values, in the order given (the first row is the
    baseline of the ratios)."""
    return [dict(zip(SWITCHES, values, strict=True)) for values in
            itertools.product(*(getattr(args, name) for name in SWITCHES))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="AdvEnt", help="class in udaseg.methods")
    parser.add_argument("--segmenter", default=None,
                        help="segmenter class path (default: the method's own, e.g. CLAN's "
                             "DualClassifierDeepLab); --depth/--width are passed to it")
    parser.add_argument("--segmenter-args", type=json.loads, default=None,
                        help="JSON of the segmenter's arguments instead of --depth/--width, "
                             "e.g. EncoderDecoder's '{\"encoder\": {...}}' (default: its "
                             "MiT-B5 + DAFormer head)")
    parser.add_argument("--depth", type=int, default=101, choices=[18, 34, 50, 101])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--discriminator-width", type=int, default=64)
    parser.add_argument("--source", type=int, nargs=2, default=[256, 512], metavar=("H", "W"))
    parser.add_argument("--target", type=int, nargs=2, default=None, metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--precision", nargs="+", default=["32-true"])
    parser.add_argument("--bn-stats", nargs="+", default=["batch"], choices=["batch", "frozen"])
    on_off = {"nargs": "+", "choices": ["off", "on"], "default": ["off"]}
    parser.add_argument("--channels-last", **on_off)
    parser.add_argument("--fused", **on_off, help="fused forwards")
    parser.add_argument("--compile", **on_off, help="torch.compile the networks")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--init-args", type=json.loads, default={},
                        help="JSON of further method arguments, e.g. DACS's "
                             '\'{"lambda_mix": 0.5}\'')
    parser.add_argument("--plain-advent", action="store_true",
                        help="first row (the ratios' baseline): ADVENT's iteration as a plain "
                             "PyTorch loop, fp32 (benchmarks/plain_advent.py)")
    parser.add_argument("--loop", default="udaseg", choices=["udaseg", "plain"],
                        help=argparse.SUPPRESS)   # what a --json row process measures
    parser.add_argument("--json", action="store_true",
                        help="measure the one combination given and print it as JSON (what "
                             "each row's process runs)")
    args = parser.parse_args()

    if args.json:
        for name in SWITCHES:
            setattr(args, name, getattr(args, name)[0])
        print("ROW " + json.dumps(measure(args)), flush=True)
        return
    if args.plain_advent and args.method != "AdvEnt":
        parser.error("--plain-advent is ADVENT's AdvEnt iteration: use it with --method AdvEnt")
    results = []
    baseline = [{**combinations(args)[0], "precision": "32-true"}] if args.plain_advent else []
    for index, row in enumerate(baseline + combinations(args)):
        loop = ["--loop", "plain"] if index < len(baseline) else []
        command = [sys.executable, __file__, "--json", *row_arguments(row), *loop,
                   *passthrough(args)]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("ROW ")]
        if done.returncode != 0 or not lines:
            print(f"{row}: failed\n{done.stderr[-2000:]}", flush=True)
            continue
        results.append(json.loads(lines[-1][4:]))
        print_row(results[-1], results[0], args, header=len(results) == 1)


def row_arguments(row: dict) -> list[str]:
    return [part for name, value in row.items()
            for part in (f"--{name.replace('_', '-')}", str(value))]


def passthrough(args: argparse.Namespace) -> list[str]:
    """The settings every row shares, as command-line arguments."""
    shared = ["--method", args.method, "--depth", str(args.depth), "--width", str(args.width),
              "--num-classes", str(args.num_classes),
              "--discriminator-width", str(args.discriminator_width),
              "--source", *map(str, args.source), "--batch-size", str(args.batch_size),
              "--device", args.device, "--warmup", str(args.warmup),
              "--iterations", str(args.iterations), "--init-args", json.dumps(args.init_args)]
    if args.target:
        shared += ["--target", *map(str, args.target)]
    if args.segmenter:
        shared += ["--segmenter", args.segmenter]
    if args.segmenter_args is not None:
        shared += ["--segmenter-args", json.dumps(args.segmenter_args)]
    return shared


def print_row(result: dict, baseline: dict, args: argparse.Namespace, header: bool) -> None:
    memory = "GPU GiB (allocated)" if args.device == "cuda" else "RSS GiB (process)"
    if header:
        network = (json.dumps(args.segmenter_args) if args.segmenter_args is not None
                   else f"R{args.depth}/w{args.width}")
        print(f"{args.method} {result['segmenter']} {network} source "
              f"{args.source} target {args.target or args.source} batch {args.batch_size} on "
              f"{args.device} ({result['threads']} threads); median of {args.iterations} "
              f"iterations after {args.warmup} warm-up")
        print(f"CPU: {cpu_info().describe()}; torch {torch.__version__}")
        print(f"| loop | precision | BN | channels_last | fused | compile | s/iteration | "
              f"x first row | peak {memory} |")
        print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {result['loop']} | {result['precision']} | {result['bn_stats']} | "
          f"{result['channels_last']} | "
          f"{result['fused']} | {result['compile']} | {result['median']:.3f} "
          f"({result['min']:.3f}-{result['max']:.3f}) | "
          f"{result['median'] / baseline['median']:.2f} | {result['peak_gib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
