"""The `udaseg` command: a LightningCLI whose method is chosen in YAML (`model.class_path`)."""

from __future__ import annotations

import os
import shlex
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import pytorch_lightning as pl
import yaml
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.cli import (
    ArgsType,
    LightningArgumentParser,
    LightningCLI,
    SaveConfigCallback,
)
from pytorch_lightning.plugins import CheckpointIO

from udaseg.callbacks import (
    IoUReport,
    LastCheckpoint,
    PredictionWriter,
    Preemption,
    Snapshots,
)
from udaseg.data import UDADataModule
from udaseg.methods import UDAMethod
from udaseg.report.command import report
from udaseg.report.results import CONFIG_FILE
from udaseg.runtime.checkpoint_io import SafeCheckpointIO, read_checkpoint_file
from udaseg.runtime.cli_errors import (
    ERROR_EXIT_CODE,
    USAGE_EXIT_CODE,
    CommandLineError,
    OneLineErrorParser,
    error_line,
    user_error_message,
)
from udaseg.runtime.files import run_directory
from udaseg.runtime.hardware import bf16_warning
from udaseg.runtime.loggers import logged_batches, truncate_metrics

#: Trainer settings every udaseg run needs, whatever its config: the training streams are
#: endless (validation is scheduled in iterations, never per epoch), a sanity validation before
#: training would only repeat the first real one, and logs go under runs/ (CSV, no network).
TRAINER_DEFAULTS = {
    "check_val_every_n_epoch": None,
    "num_sanity_val_steps": 0,
    # udaseg's CSV logger keeps a resumed run's metrics.csv (Lightning's deletes it).
    "logger": {"class_path": "udaseg.runtime.loggers.CSVLogger", "init_args": {"save_dir": "runs"}},
}


#: `--ckpt_path` values Lightning resolves itself (not file paths).
LIGHTNING_CHECKPOINT_NAMES = ("last", "best", "hpc")

#: Lightning's folder name for a logger nobody named; udaseg names the run after its config.
UNNAMED = "lightning_logs"


def command_line_configs(arguments: Sequence[str]) -> list[Path]:
    """The files given with `--config`/`-c` on the command line, in order (not the files they
    include)."""
    files = []
    for index, argument in enumerate(arguments):
        if argument in ("--config", "-c") and index + 1 < len(arguments):
            files.append(Path(arguments[index + 1]))
        elif argument.startswith("--config="):
            files.append(Path(argument.split("=", 1)[1]))
    return files


#: Keys whose `.yaml` values are data files a component reads itself, not config includes.
DATA_FILE_KEYS = ("label_space",)


def missing_includes(config_file: Path, _seen: Optional[set] = None) -> list[str]:
    """Problems with the files `config_file` includes (any `*.yaml` value, `config:` included),
    recursively; each says which file names which key and the path it resolved to.

    jsonargparse reports only "Unable to load config 'trainer.yaml'" for a copied config whose
    parts stayed behind: it does not say that includes are relative to the including file."""
    seen = _seen if _seen is not None else set()
    config_file = config_file.resolve()
    if config_file in seen:
        return []
    seen.add(config_file)
    if not config_file.is_file():
        return [f"config file {config_file} not found"]
    try:
        tree = yaml.safe_load(config_file.read_text())
    except yaml.YAMLError as error:
        return [f"{config_file} is not valid YAML: {error}"]

    def includes(node, key=""):
        if isinstance(node, dict):
            for name, value in node.items():
                yield from includes(value, f"{key}.{name}" if key else str(name))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                yield from includes(value, f"{key}[{index}]")
        elif isinstance(node, str) and node.endswith((".yaml", ".yml")) and \
                not key.endswith(DATA_FILE_KEYS):
            yield key, node

    problems = []
    for key, value in includes(tree):
        included = Path(value).expanduser()
        resolved = included if included.is_absolute() else config_file.parent / included
        if not resolved.is_file():
            problems.append(f"{config_file} includes {value!r} (key {key}), which was looked "
                            f"for at {resolved}: not found. Included files are relative to "
                            "the file that includes them; copy them along or fix the path")
        else:
            problems += missing_includes(resolved, seen)
    return problems


def config_lists(config_file: Path) -> list[str]:
    """`config:` lists in `config_file` or the files it chains: jsonargparse applies one file
    named there and silently ignores a list, so the run would get none of their settings."""
    seen: set[Path] = set()
    while config_file.is_file() and config_file.resolve() not in seen:
        seen.add(config_file.resolve())
        try:
            tree = yaml.safe_load(config_file.read_text())
        except yaml.YAMLError:
            return []   # the parser reports it
        parent = tree.get("config") if isinstance(tree, dict) else None
        if isinstance(parent, list):
            return [f"{config_file}: `config:` takes one file, got a list (jsonargparse would "
                    "apply none of them); chain the files instead, each naming the one before "
                    "with `config:`, or give several --config on the command line"]
        if not isinstance(parent, str):
            return []
        config_file = config_file.parent / Path(parent).expanduser()
    return []


def run_name(config_files: Sequence[Path], subcommand: str) -> Optional[str]:
    """`<benchmark>/<config>` from the first `--config` (`synthetic/advent`), `+<overlay>` for
    each further one (`cityscapes_to_crosscity/maxsquare+tokyo`), and `-<command>` for
    evaluation-only runs (`synthetic/advent-validate`), which are then never mixed with
    training runs. None without a config file."""
    if not config_files:
        return None
    first = config_files[0].resolve()
    name = "/".join(part for part in (first.parent.name, first.stem) if part)
    name += "".join(f"+{path.stem}" for path in config_files[1:])
    return name if subcommand == "fit" else f"{name}-{subcommand}"


class SaveRunConfig(SaveConfigCallback):
    """Saves the resolved `config.yaml` in the run's own folder (`run_directory`), whatever
    the logger; Lightning's callback uses `trainer.log_dir`, which W&B shares between runs."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            directory = run_directory(trainer)
            os.makedirs(directory, exist_ok=True)
            self.parser.save(self.config, str(directory / self.config_filename),
                             skip_none=False, overwrite=self.overwrite, multifile=self.multifile)
            self.already_saved = True
        # Every rank must agree, or a later setup() would save again on the others.
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


def latest_last_checkpoint(run_folder: Path, version: object = None) -> Optional[Path]:
    """`<run_folder>/<version>/checkpoints/last.ckpt` of the given version, else of the highest
    `version_N` that has one; None if there is none."""
    if version is not None:
        folder = str(version) if isinstance(version, str) else f"version_{version}"
        candidates = [run_folder / folder]
    else:
        numbered = [path for path in run_folder.glob("version_*")
                    if path.name.removeprefix("version_").isdigit()]
        candidates = sorted(numbered, key=lambda path: int(path.name.removeprefix("version_")),
                            reverse=True)
    for folder in candidates:
        checkpoint = folder / "checkpoints" / "last.ckpt"
        if checkpoint.is_file():
            return checkpoint
    return None


def as_list(value: object) -> list:
    """A trainer argument that takes one item or a list (callbacks, plugins), as a new list."""
    return [] if value is None else list(value) if isinstance(value, list) else [value]


class UDASegCLI(LightningCLI):
    """Links the label space from the data to the method so no config writes it twice, and
    uses the run's single `seed_everything` for data shuffling and augmentation too."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for attribute in ("num_classes", "ignore_index", "class_names", "eval_subsets"):
            parser.link_arguments(f"data.{attribute}", f"model.init_args.{attribute}",
                                  apply_on="instantiate")
        parser.link_arguments("seed_everything", "data.seed")
        # `last.ckpt`, where `--ckpt_path last` resumes: written when fit ends and, with
        # `checkpoint.every_n_train_steps: N`, every N iterations. Kept snapshots are another
        # key, `snapshots.every_n_iterations`.
        parser.add_lightning_class_args(LastCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0})
        parser.add_lightning_class_args(Snapshots, "snapshots")
        # SIGUSR1/SIGTERM: last.ckpt at the iteration's end, SLURM requeue, exit (exact resume).
        parser.add_lightning_class_args(Preemption, "preemption")
        parser.add_lightning_class_args(IoUReport, "iou_report")
        # `udaseg predict ... --predictions.output_dir out/ --predictions.save_train_ids true`
        parser.add_lightning_class_args(PredictionWriter, "predictions")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        arguments = sys.argv[1:] if args is None else args
        # Recorded in every result file (`udaseg.runtime.provenance`).
        self.command_line = "udaseg " + shlex.join(arguments) \
            if isinstance(arguments, list) else None
        self.config_files = command_line_configs(arguments if isinstance(arguments, list)
                                                 else [])
        listed = [problem for path in self.config_files for problem in config_lists(path)]
        if listed:
            words = arguments if isinstance(arguments, list) else []
            print("\n".join(error_line(words, problem) for problem in listed), file=sys.stderr)
            raise SystemExit(USAGE_EXIT_CODE)
        try:
            super().parse_arguments(parser, args)
        except CommandLineError as error:
            # Only explain includes when parsing failed: a `.yaml` value may be plain data.
            # A missing part is what the user must fix, so it replaces the parser's line.
            problems = [problem for path in self.config_files
                        for problem in missing_includes(path)] or [error.message]
            words = arguments if isinstance(arguments, list) else []
            print("\n".join(error_line(words, problem) for problem in problems),
                  file=sys.stderr)
            raise SystemExit(error.code) from None

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs) -> None:
        """Lightning's subcommands with udaseg's descriptions, and `report` (which main()
        runs before any parsing) in the help."""
        self._subcommand_parsers: dict[str, LightningArgumentParser] = {}
        subcommands = parser.add_subcommands()
        for subcommand, text in SUBCOMMAND_HELP.items():
            subparser = self._prepare_subcommand_parser(
                self.trainer_class, subcommand, **{"description": text,
                                                   **kwargs.get(subcommand, {})})
            self._subcommand_parsers[subcommand] = subparser
            subcommands.add_subcommand(subcommand, subparser, help=text)
        report = self.init_parser(description=REPORT_HELP, prog="udaseg report")
        subcommands.add_subcommand("report", report, help=REPORT_HELP)

    def _parse_ckpt_path(self) -> None:
        """Check that `--ckpt_path` is a readable checkpoint (udaseg's error names the file).

        Lightning would also read the checkpoint's hyperparameters *over* the config and the
        command line here, so `udaseg validate --ckpt_path ... --model.init_args.inference.flip
        true` would silently evaluate without flipping. udaseg runs what the config and the
        command line say; a checkpoint of another model is refused when it is loaded
        (`UDAMethod.check_checkpoint_fits`)."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and Path(path).is_file():
            read_checkpoint_file(path, mmap=True)
        elif path and path not in LIGHTNING_CHECKPOINT_NAMES and \
                not str(path).startswith("registry"):
            raise FileNotFoundError(f"--ckpt_path {path}: no such checkpoint file (a run keeps "
                                    "runs/<name>/version_N/checkpoints/last.ckpt)")

    def before_instantiate_classes(self) -> None:
        """Name an unnamed CSV/TensorBoard run after its config (W&B: the run's display name),
        so runs of different configs never share a folder and comparisons group them; resolve
        `--ckpt_path last` to the run it means."""
        config = self.config[self.subcommand]
        name = run_name(self.config_files, self.subcommand)
        logger = config.trainer.logger
        if name is None or not hasattr(logger, "class_path"):
            return
        arguments = logger.init_args
        if "name" in arguments and arguments.name in (UNNAMED, None):
            arguments.name = name
        if self.subcommand == "fit" and config.get("ckpt_path") == "last":
            self.resume_last_run(config)
        elif config.get("ckpt_path") == "last":
            self.evaluate_last_run(config)

    def resume_last_run(self, config) -> None:
        """`fit --ckpt_path last`: go on with this config's latest run that has a last.ckpt,
        in that run's folder (same version; its metrics.csv continues, rows logged after the
        checkpoint dropped). Without one, a fresh run starts (so a requeued job can always pass
        `--ckpt_path last`). For other loggers (W&B keeps runs by id) and an explicit
        `checkpoint.dirpath`, Lightning's own lookup applies.

        A group torchrun restarted (`--max-restarts`) that shares the failed group's
        rendezvous store gets a warning: the new ranks may read the dead ranks' gloo/NCCL
        addresses from it and hang while connecting.
        """
        if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0" and \
                os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and \
                os.environ.get("RANK", "0") == "0":
            print("udaseg: torchrun restarted this group on the store of the failed one, where "
                  "the new ranks can find the dead ranks' addresses and hang while connecting; "
                  "launch torchrun with --rdzv-backend c10d and "
                  "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (docs/running.md)", file=sys.stderr)
        logger = config.trainer.logger.init_args
        folder_logger = config.trainer.logger.class_path.endswith(("CSVLogger",
                                                                   "TensorBoardLogger"))
        if config.checkpoint.get("dirpath") or not folder_logger or not logger.get("name"):
            return
        run_folder = Path(logger.get("save_dir") or "runs") / logger.name
        checkpoint = latest_last_checkpoint(run_folder, logger.version)
        if checkpoint is None:
            print(f"udaseg: no last.ckpt under {run_folder}: starting a fresh run",
                  file=sys.stderr)
            return
        version = checkpoint.parent.parent.name
        logger.version = int(version.removeprefix("version_")) if \
            version.startswith("version_") else version
        config.ckpt_path = str(checkpoint)
        state = read_checkpoint_file(checkpoint, mmap=True)
        step = int(state.get("global_step", 0))
        if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("RANK", "0") == "0":
            truncate_metrics(checkpoint.parent.parent / "metrics.csv", logged_batches(state))
        print(f"udaseg: resuming {checkpoint} at iteration {step}", file=sys.stderr)

    def evaluate_last_run(self, config) -> None:
        """`validate|test|predict --ckpt_path last`: the last.ckpt of this config's latest
        training run (`runs/<benchmark>/<config>/version_N/`). Lightning would look in the
        evaluation's own new folder, find nothing and evaluate untrained weights."""
        logger = config.trainer.logger.init_args
        trained = run_name(self.config_files, "fit")
        run_folder = Path(logger.get("save_dir") or "runs") / (trained or "")
        checkpoint = latest_last_checkpoint(run_folder) if trained else None
        if checkpoint is None:
            raise FileNotFoundError(
                f"--ckpt_path last: no training run of this config with a last.ckpt under "
                f"{run_folder} (udaseg fit --config ... writes runs/<benchmark>/<config>/"
                "version_N/checkpoints/last.ckpt); name the checkpoint file instead")
        config.ckpt_path = str(checkpoint)
        step = int(read_checkpoint_file(checkpoint, mmap=True).get("global_step", 0))
        print(f"udaseg: evaluating {checkpoint} (iteration {step})", file=sys.stderr)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        for callback in self.trainer.callbacks:
            if isinstance(callback, IoUReport):
                callback.command_line = self.command_line

    def _instantiate_trainer(self, config: dict, callbacks: list) -> pl.Trainer:
        """Every trainer writes checkpoints atomically and reads them with weights_only=True
        (`udaseg.runtime.checkpoint_io`), unless the config brings its own CheckpointIO; bf16
        on a CPU without native bf16 gets a one-line warning (`udaseg.runtime.hardware`).

        `--trainer.enable_progress_bar false` wins over a progress bar in the config's
        callbacks (udaseg's configs list one): Lightning would refuse the pair."""
        if config.get("enable_progress_bar") is False:
            config["callbacks"] = [callback for callback in as_list(config.get("callbacks"))
                                   if not isinstance(callback, ProgressBar)]
            callbacks = [callback for callback in callbacks
                         if not isinstance(callback, ProgressBar)]
        plugins = as_list(config.get("plugins"))
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            plugins.append(SafeCheckpointIO())
        config["plugins"] = plugins
        trainer = super()._instantiate_trainer(config, callbacks)
        warning = bf16_warning(trainer.precision, isinstance(trainer.accelerator, CPUAccelerator))
        if warning and trainer.is_global_zero:
            print(f"udaseg: warning: {warning}", file=sys.stderr)
        return trainer

    def require_trained_weights(self) -> None:
        """Evaluating or predicting needs trained weights: refuse a run that would silently use
        a fresh (random) segmenter."""
        checkpoint = self.config_init[self.subcommand].get("ckpt_path")
        if checkpoint in LIGHTNING_CHECKPOINT_NAMES:
            raise ValueError(f"udaseg {self.subcommand} --ckpt_path {checkpoint}: name the "
                             "checkpoint file (runs/<name>/version_N/checkpoints/last.ckpt); "
                             "`last` finds a run only with a --config and a CSV or TensorBoard "
                             "logger")
        if checkpoint or self.model.has_trained_weights:
            return
        raise ValueError(
            f"udaseg {self.subcommand} has no trained weights to use: pass --ckpt_path (a run's "
            "checkpoint, e.g. runs/<name>/version_0/checkpoints/last.ckpt) or set "
            "model.init_args.weights.init_checkpoint (a released or other run's model)")

    before_validate = before_test = before_predict = require_trained_weights

    def before_fit(self) -> None:
        """Refuse an endless run before anything is written: the poly schedule (and every
        iteration-based setting) needs `trainer.max_steps` or `optim.max_iters`."""
        if self.model.optim_config.max_iters is None and self.trainer.max_steps <= 0:
            raise ValueError("udaseg fit needs a length in iterations: set trainer.max_steps "
                             "(e.g. --trainer.max_steps 120000) or "
                             "model.init_args.optim.max_iters; epochs are not used (the "
                             "training streams are endless)")


#: `udaseg --help`: what udaseg is, and every subcommand (`report` is not a Trainer method).
DESCRIPTION = (
    "udaseg: unsupervised domain adaptation of semantic segmentation (train on labelled "
    "source images, adapt without labels to a target domain). Train and evaluate a method "
    "with `udaseg fit|validate|test|predict --config configs/<benchmark>/<method>.yaml`; "
    "compare runs with `udaseg report runs/`. `udaseg SUBCOMMAND --help` lists its options.")
SUBCOMMAND_HELP = {
    "fit": "Train a method; last.ckpt is kept, --ckpt_path last resumes a stopped run.",
    "validate": "Evaluate trained weights (--ckpt_path) on the target validation set.",
    "test": "Evaluate trained weights (--ckpt_path) on the held-out target test set.",
    "predict": "Segment a folder of images: colour-coded and train-id PNGs.",
}
REPORT_HELP = ("Compare runs (udaseg report RUNS_DIR --help): mean and std over seeds of mIoU "
               "and per-class IoU, as tables and figures.")


def main(args: Optional[list[str]] = None) -> None:
    """Console-script entry point; `args` replaces sys.argv (tests run the CLI in-process).

    A user's mistake ends the command with one line on stderr naming the file or key, and
    exit code 2 (command line or config) or 1 (refused or stopped run);
    `udaseg.runtime.cli_errors`.
    Returns None: the console script would turn a returned object into exit code 1.
    """
    arguments = sys.argv[1:] if args is None else args
    try:
        if arguments[:1] == ["report"]:       # `udaseg report RUN_DIR ...`: tables, figures
            report(arguments[1:])
            return
        # Teachers and frozen copies (the EMA teacher outside its BN layers, the feature
        # distance's ImageNet encoder) are in eval mode by design, which Lightning warns about.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        # Every method optimises manually; its checkpoints hold the state after the step, which
        # is what resuming needs (Lightning prints a 12-line example otherwise).
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
        # Methods build their own optimisers (several, with poly LR): no --optimizer options.
        UDASegCLI(UDAMethod, UDADataModule, subclass_mode_model=True,
                  seed_everything_default=0, auto_configure_optimizers=False,
                  trainer_defaults=TRAINER_DEFAULTS, save_config_callback=SaveRunConfig,
                  save_config_kwargs={"overwrite": True, "config_filename": CONFIG_FILE},
                  parser_class=OneLineErrorParser,
                  parser_kwargs={"description": DESCRIPTION}, args=args)
    except Exception as error:
        message = user_error_message(error)
        if message is None:
            raise
        print(error_line(arguments, message), file=sys.stderr)
        raise SystemExit(ERROR_EXIT_CODE) from None


if __name__ == "__main__":
    main()
