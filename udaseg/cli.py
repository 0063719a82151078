"""The `udaseg` command: a LightningCLI whose method is chosen in YAML (`model.class_path`)."""

from __future__ import annotations

from typing import Optional

from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from udaseg.callbacks import IoUReport, PredictionWriter
from udaseg.data import UDADataModule
from udaseg.methods import UDAMethod

#: Trainer settings every udaseg run needs, whatever its config: the training streams are
#: endless (validation is scheduled in iterations, never per epoch), a sanity validation before
#: training would only repeat the first real one, and logs go under runs/ (CSV, no network).
TRAINER_DEFAULTS = {
    "check_val_every_n_epoch": None,
    "num_sanity_val_steps": 0,
    "logger": {"class_path": "pytorch_lightning.loggers.CSVLogger",
               "init_args": {"save_dir": "runs"}},
}


class UDASegCLI(LightningCLI):
    """Links the label space from the data to the method so no config writes it twice, and
    uses the run's single `seed_everything` for data shuffling and augmentation too."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for attribute in ("num_classes", "ignore_index", "class_names", "eval_subsets"):
            parser.link_arguments(f"data.{attribute}", f"model.init_args.{attribute}",
                                  apply_on="instantiate")
        parser.link_arguments("seed_everything", "data.seed")
        # Every run keeps `last.ckpt` (written when fit ends); configs add periodic snapshots
        # with one key, `checkpoint.every_n_train_steps` (iterations) + `save_top_k: -1`.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0})
        parser.add_lightning_class_args(IoUReport, "iou_report")
        # `udaseg predict ... --predictions.output_dir out/ --predictions.save_train_ids true`
        parser.add_lightning_class_args(PredictionWriter, "predictions")

    def require_trained_weights(self) -> None:
        """Evaluating or predicting needs trained weights: refuse a run that would silently use
        a fresh (random) segmenter."""
        if self.config_init[self.subcommand].get("ckpt_path") or self.model.has_trained_weights:
            return
        raise ValueError(
            f"udaseg {self.subcommand} has no trained weights to use: pass --ckpt_path (a run's "
            "checkpoint, e.g. runs/<name>/version_0/checkpoints/last.ckpt) or set "
            "model.init_args.weights.init_checkpoint (a released or other run's model)")

    before_validate = before_test = before_predict = require_trained_weights


def main(args: Optional[list[str]] = None) -> None:
    """Console-script entry point; `args` replaces sys.argv (tests run the CLI in-process).

    Returns None: the console script would turn a returned object into exit code 1.
    """
    # Methods build their own optimisers (several, with poly LR): no --optimizer options.
    UDASegCLI(UDAMethod, UDADataModule, subclass_mode_model=True, seed_everything_default=0,
              auto_configure_optimizers=False, trainer_defaults=TRAINER_DEFAULTS,
              save_config_kwargs={"overwrite": True}, args=args)


if __name__ == "__main__":
    main()
