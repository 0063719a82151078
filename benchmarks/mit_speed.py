"""CPU seconds per forward+backward of udaseg's MiT encoder against transformers' SegformerModel
(same variant, same weights, same input, same process). Prints numbers; it is not a test.

    python benchmarks/mit_speed.py                        # MiT-B5, 512x512, batch 2, 2 threads
    python benchmarks/mit_speed.py --bf16                 # also under bf16 autocast
    python benchmarks/mit_speed.py --variant b0 --size 64 64 --batch 1 --repeats 2   # smoke run

Both networks train (drop-path on, rate 0.1); the loss is the sum of the four stage outputs'
means. The two are timed alternately, iteration by iteration, so that load changes on the
machine hit both alike; the median per iteration after `--warmup` iterations is reported, with
the ratio udaseg / transformers. bf16 autocast runs too with `--bf16`, or by default where the
CPU computes bf16 natively (`udaseg.runtime.hardware`); `--no-bf16` turns it off.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

import torch
from safetensors.torch import load_file

from udaseg.models.mit import VARIANTS, MixTransformer, from_huggingface
from udaseg.runtime.hardware import cpu_info


def lscpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return cpu_info().model
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            return value.strip()
    return cpu_info().model


def transformers_model(variant: str) -> torch.nn.Module:
    from transformers import SegformerConfig, SegformerModel

    dims, depths = VARIANTS[variant]
    config = SegformerConfig(hidden_sizes=list(dims), depths=list(depths), drop_path_rate=0.1)
    return SegformerModel(config)


def saved_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s weights under the key names transformers writes to files (its 4.x names)."""
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        return load_file(f"{folder}/model.safetensors")


def step(forward: Callable[[torch.Tensor], list[torch.Tensor]], model: torch.nn.Module,
         images: torch.Tensor, bf16: bool) -> float:
    """Seconds for one forward + backward."""
    model.zero_grad(set_to_none=True)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if bf16
                else contextlib.nullcontext())
    start = time.perf_counter()
    with autocast:
        outputs = forward(images)
    loss = sum(output.float().mean() for output in outputs)
    loss.backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="b5", choices=sorted(VARIANTS))
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed iterations per model")
    parser.add_argument("--warmup", type=int, default=1)
    bf16 = parser.add_mutually_exclusive_group()
    bf16.add_argument("--bf16", action="store_true", default=None,
                      help="also time bf16 autocast (default: where the CPU has native bf16)")
    bf16.add_argument("--no-bf16", dest="bf16", action="store_false")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    reference = transformers_model(args.variant).train()
    ours = MixTransformer(args.variant, drop_path_rate=0.1).train()
    ours.load_state_dict(from_huggingface(saved_state(reference)))
    images = torch.randn(args.batch, 3, *args.size)
    models: dict[str, tuple[Callable, torch.nn.Module]] = {
        "udaseg": (ours, ours),
        "transformers": (lambda x: reference(pixel_values=x, output_hidden_states=True)
                         .hidden_states, reference),
    }
    info = cpu_info()
    with_bf16 = info.native_bf16 if args.bf16 is None else args.bf16
    print(f"CPU: {lscpu_model()} ({info.describe()}); torch {torch.__version__}, "
          f"{args.threads} threads")
    print(f"MiT-{args.variant.upper()} forward+backward, batch {args.batch}, "
          f"{args.size[0]}x{args.size[1]}, median of {args.repeats} after {args.warmup} warm-up")
    for precision in ("fp32", "bf16") if with_bf16 else ("fp32",):
        times: dict[str, list[float]] = {name: [] for name in models}
        for iteration in range(args.warmup + args.repeats):
            for name, (forward, model) in models.items():
                seconds = step(forward, model, images, precision == "bf16")
                if iteration >= args.warmup:
                    times[name].append(seconds)
        medians = {name: statistics.median(values) for name, values in times.items()}
        ours_s, theirs_s = medians["udaseg"], medians["transformers"]
        print(f"{precision}: udaseg {ours_s:.3f} s, transformers {theirs_s:.3f} s, "
              f"ratio {ours_s / theirs_s:.2f}")


if __name__ == "__main__":
    main()
