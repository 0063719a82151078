"""Seconds per training iteration and peak memory for a method, backbone, resolution, precision
and device. Prints numbers; it is not a test.

    python benchmarks/train_step.py --method AdvEnt --depth 101 --source 256 512 --device cpu
    python benchmarks/train_step.py --method AdvEnt --source 720 1280 --target 512 1024 \
        --device cuda --precision bf16-mixed
    python benchmarks/train_step.py --method CrossDomainMixing \
        --init-args '{"teacher": "ema", "lambda_ufl": 0, "long_tail_p": 0}'     # DACS

Target batches carry a strong view too (TUFL). Methods that read the source set when training
starts get it through `--init-args` instead: TUFL's class weights default to 1 per class here,
and CIM's long-tail pasting (which reads source crops from disk) is not timed.

An iteration is the method's full `adaptation_step` plus the optimizer steps, timed through
Lightning (manual optimisation, AMP) on random tensors; the median after warm-up is reported.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import time

import pytorch_lightning as pl
import torch

import udaseg.methods as methods
from udaseg.models.segmenter import resolve_class


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="AdvEnt", help="class in udaseg.methods")
    parser.add_argument("--segmenter", default=None,
                        help="segmenter class path (default: the method's own, e.g. CLAN's "
                             "DualClassifierDeepLab); --depth/--width are passed to it")
    parser.add_argument("--depth", type=int, default=101, choices=[18, 34, 50, 101])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--discriminator-width", type=int, default=64)
    parser.add_argument("--source", type=int, nargs=2, default=[256, 512], metavar=("H", "W"))
    parser.add_argument("--target", type=int, nargs=2, default=None, metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--init-args", type=json.loads, default={},
                        help="JSON of further method arguments, e.g. CrossDomainMixing's "
                             '\'{"teacher": "ema"}\'')
    args = parser.parse_args()

    method_class = getattr(methods, args.method)
    extra = ({"discriminator_width": args.discriminator_width}
             if issubclass(method_class, methods.AdversarialMethod) else {})
    segmenter_class = (resolve_class(args.segmenter, "--segmenter") if args.segmenter
                       else method_class.default_segmenter())
    segmenter = functools.partial(segmenter_class, depth=args.depth, width=args.width)
    if issubclass(method_class, methods.TUFL):   # no source set here to count classes on
        extra["class_weights"] = [1.0] * args.num_classes
    method = method_class(num_classes=args.num_classes, segmenter=segmenter,
                          **{**extra, **args.init_args})
    timer = Timer(args.device)
    trainer = pl.Trainer(accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
                         precision=args.precision, max_steps=args.warmup + args.iterations,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[timer])
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(method, train_dataloaders=random_batches(args, args.num_classes))
    measured = timer.times[args.warmup:]
    if args.device == "cuda":
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB GPU (allocated)"
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS (process)"
    print(f"{args.method} {segmenter_class.__name__} R{args.depth}/w{args.width} source "
          f"{args.source} target {args.target or args.source} batch {args.batch_size} "
          f"{args.precision} on {args.device} ({torch.get_num_threads()} threads): median "
          f"{statistics.median(measured):.3f} s/iteration over {len(measured)} "
          f"(min {min(measured):.3f}, max {max(measured):.3f}); peak {peak}")


if __name__ == "__main__":
    main()
