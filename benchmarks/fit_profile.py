"""Where the time of a `udaseg fit` goes: start-up, waiting for data, the segmenter's forward,
the rest of the training step (losses, backward, optimiser steps), evaluation, the entropy-map
figures and checkpoints. Prints a table of seconds and shares; it is not a test.

    python benchmarks/fit_profile.py                                   # the quick start's fit
    python benchmarks/fit_profile.py --config configs/synthetic/advent.yaml -- \
        --trainer.max_steps 100

Arguments after `--` are passed to `udaseg fit` (the run goes to a temporary folder). Each part
is wall time in the training process; DataLoader workers render and augment in parallel, so
"waiting for data" is what the training loop could not hide.
"""

from __future__ import annotations

import time

START = time.perf_counter()     # before the imports, which are part of the start-up

import argparse  # noqa: E402
import functools  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from udaseg.callbacks import EntropyMaps  # noqa: E402
from udaseg.methods import UDAMethod  # noqa: E402
from udaseg.runtime.cli import main  # noqa: E402
from udaseg.runtime.hardware import cpu_info  # noqa: E402

SECONDS: dict[str, float] = defaultdict(float)


def timed(part: str, function):
    """`function`, adding its wall time to SECONDS[part]."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        began = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            SECONDS[part] += time.perf_counter() - began
    return wrapper


class PhaseTimer(pl.Callback):
    """Start-up until training starts, data waits between training steps, evaluation."""

    def __init__(self) -> None:
        self.batch_end = None
        self.phase_start = 0.0

    def on_train_start(self, trainer, module) -> None:
        SECONDS["start-up (imports, datasets, model, weights)"] = time.perf_counter() - START
        self.batch_end = time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self.batch_end is not None:
            SECONDS["waiting for training data"] += now - self.batch_end
        self.phase_start = now

    def on_train_batch_end(self, trainer, module, *args) -> None:
        SECONDS["training step (all)"] += time.perf_counter() - self.phase_start
        self.batch_end = time.perf_counter()

    def on_validation_start(self, trainer, module) -> None:
        self.phase_start = time.perf_counter()

    def on_validation_end(self, trainer, module) -> None:
        SECONDS["evaluation (incl. entropy maps)"] += time.perf_counter() - self.phase_start
        self.batch_end = time.perf_counter()

    def on_train_end(self, trainer, module) -> None:
        self.phase_start = time.perf_counter()


class ForwardTimer:
    """Wall time of the segmenter's training forwards, through forward hooks."""

    def __init__(self) -> None:
        self.began = 0.0

    def attach(self, module: UDAMethod) -> None:
        module.segmenter.register_forward_pre_hook(self.before)
        module.segmenter.register_forward_hook(self.after)

    def before(self, network, inputs) -> None:
        self.began = time.perf_counter()

    def after(self, network, inputs, outputs) -> None:
        if network.training:
            SECONDS["segmenter forward (training)"] += time.perf_counter() - self.began


def main_profile() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/synthetic/source_only.yaml")
    parser.add_argument("fit_arguments", nargs="*", help="after --: more `udaseg fit` options")
    args = parser.parse_args()

    forward = ForwardTimer()
    original_on_train_start = UDAMethod.on_train_start

    def on_train_start(module):
        forward.attach(module)
        original_on_train_start(module)

    UDAMethod.on_train_start = on_train_start
    UDAMethod.step_optimizers = timed("optimiser steps", UDAMethod.step_optimizers)
    EntropyMaps.on_validation_batch_end = timed("entropy maps (figures)",
                                                EntropyMaps.on_validation_batch_end)
    EntropyMaps.on_validation_epoch_end = timed("entropy maps (figures)",
                                                EntropyMaps.on_validation_epoch_end)
    pl.Trainer.save_checkpoint = timed("checkpoints", pl.Trainer.save_checkpoint)
    timer = PhaseTimer()
    original_init = pl.Trainer.__init__

    @functools.wraps(original_init)   # keeps the signature LightningCLI reads
    def trainer_init(self, *args, **kwargs):
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), timer]
        original_init(self, *args, **kwargs)

    pl.Trainer.__init__ = trainer_init
    with tempfile.TemporaryDirectory() as folder:
        main(["fit", "--config", args.config, "--trainer.logger.init_args.save_dir",
              str(Path(folder) / "runs"), "--trainer.enable_progress_bar", "false",
              *args.fit_arguments])
    total = time.perf_counter() - START
    SECONDS["after training (last evaluation excluded)"] = time.perf_counter() - timer.phase_start
    step = SECONDS.pop("training step (all)")
    rest = step - SECONDS["segmenter forward (training)"] - SECONDS["optimiser steps"]
    SECONDS["losses + backward (rest of the step)"] = rest
    evaluation = SECONDS.pop("evaluation (incl. entropy maps)")
    SECONDS["evaluation (forwards, metrics)"] = evaluation - SECONDS["entropy maps (figures)"]
    print(f"udaseg fit --config {args.config} {' '.join(args.fit_arguments)}")
    print(f"CPU: {cpu_info().describe()}; {torch.get_num_threads()} threads; torch "
          f"{torch.__version__}")
    print("| part | seconds | share |\n|---|---|---|")
    for part, seconds in SECONDS.items():
        print(f"| {part} | {seconds:.1f} | {100 * seconds / total:.0f} % |")
    print(f"| total (this process) | {total:.1f} | 100 % |")


if __name__ == "__main__":
    sys.exit(main_profile())
