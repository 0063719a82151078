"""What a method adds to Lightning's checkpoint, and checks when one is loaded (a mixin of
`UDAMethod`): the poly horizon and every rank's global RNG states, for an exact resume."""

from __future__ import annotations

import torch
from pytorch_lightning.utilities import rank_zero_warn

from udaseg.checkpoint_io import SOURCE_KEY, CheckpointError
from udaseg.methods.optim import POLY_HORIZON_KEY, poly_lr
from udaseg.rng_state import collect_rng_states, restore_rng_states

#: Checkpoint key of the ranks' global RNG states (a list, by rank).
RNG_STATES_KEY = "udaseg_rng_states"
#: Checkpoint key of the run of non-finite iterations skipped just before it (the count that
#: gives up at `MAX_CONSECUTIVE_SKIPS`), so a resumed run gives up where the run left alone does.
CONSECUTIVE_SKIPS_KEY = "udaseg_consecutive_skips"


class CheckpointState:
    """Needs `poly_horizon`, `max_iters`, `optim_config`, `consecutive_skips` and
    `average_bn_statistics` of the method it is mixed into."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Besides Lightning's state: the poly horizon and every rank's global RNG states.

        Under DDP the ranks' BN running statistics are averaged first, in place (the state dict
        Lightning already collected shares these tensors): a resumed run gives every rank the
        checkpoint's (rank 0's) statistics, so the uninterrupted run must hold those too.
        """
        if self.poly_horizon is not None:
            checkpoint[POLY_HORIZON_KEY] = self.poly_horizon
        checkpoint[CONSECUTIVE_SKIPS_KEY] = self.consecutive_skips
        self.average_bn_statistics()
        states = collect_rng_states()
        if self._trainer is not None and self.trainer.world_size > 1:
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, states)
            checkpoint[RNG_STATES_KEY] = gathered
        else:
            checkpoint[RNG_STATES_KEY] = [states]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.check_checkpoint_fits(checkpoint)
        self.trained_iterations = int(checkpoint.get("global_step", 0))
        saved_horizon = checkpoint.get(POLY_HORIZON_KEY)
        resuming = self._trainer is not None and self.trainer.state.fn == "fit"
        rng_states = checkpoint.get(RNG_STATES_KEY) or []
        if resuming and len(rng_states) == self.trainer.world_size:
            restore_rng_states(rng_states[self.trainer.global_rank])
        if resuming:
            self.consecutive_skips = int(checkpoint.get(CONSECUTIVE_SKIPS_KEY, 0))
        if resuming and saved_horizon and saved_horizon != self.max_iters:
            step = self.trained_iterations
            power, warmup = self.optim_config.poly_power, self.optim_config.warmup_iters
            before, after = (poly_lr(1.0, step, horizon, power, warmup)
                             for horizon in (saved_horizon, self.max_iters))
            rank_zero_warn(
                f"resuming at iteration {step}: the checkpoint's poly schedule decays over "
                f"{saved_horizon} iterations, this run's over {self.max_iters} (trainer.max_steps"
                f" changed), so the learning rate jumps from {before:.4g} to {after:.4g} x lr. "
                f"Set model.init_args.optim.max_iters: {saved_horizon} to keep the original "
                "schedule.")

    def check_checkpoint_fits(self, checkpoint: dict) -> None:
        """Refuse, in one sentence naming the file, a checkpoint of another class count or
        architecture (Lightning's strict loading would list every tensor instead)."""
        saved = checkpoint.get("state_dict")
        if saved is None:
            return
        own = self.state_dict()

        def ordered(keys):  # the segmenter's tensors first: the examples shown
            return sorted(keys, key=lambda key: (not key.startswith("segmenter."), key))

        missing = ordered(set(own) - set(saved))
        unexpected = ordered(set(saved) - set(own))
        reshaped = ordered(key for key in set(own) & set(saved)
                           if tuple(own[key].shape) != tuple(saved[key].shape))
        if not (missing or unexpected or reshaped):
            return
        hparams = checkpoint.get("hyper_parameters") or {}
        classes = hparams.get("num_classes")
        segmenter = (hparams.get("segmenter") or {}).get("class_path", "?")
        # Written by LightningCLI: the class the checkpoint's run trained.
        method = str(hparams.get("_class_path") or "").rsplit(".", 1)[-1]
        source = checkpoint.get(SOURCE_KEY, "the checkpoint")
        own_segmenter = type(self.segmenter).__name__
        if classes is not None and classes != self.num_classes:
            problem = f"was trained for {classes} classes, this run has {self.num_classes}"
        elif any(key.startswith("segmenter.") for key in missing + unexpected + reshaped):
            problem = (f"holds another network ({segmenter.rsplit('.', 1)[-1]}) than this "
                       f"run's {own_segmenter}")
        elif method and method != type(self).__name__:
            problem = f"was trained by another method ({method}) than this run's"
        else:
            problem = "was trained with other model settings than this run's"
        details = [f"{len(items)} {what}, e.g. {describe(items[0])}"
                   for items, what, describe in (
                       (reshaped, "tensors of other shapes",
                        lambda key: f"{key} {tuple(saved[key].shape)} vs "
                                    f"{tuple(own[key].shape)}"),
                       (missing, "tensors missing", str),
                       (unexpected, "unexpected tensors", str)) if items]
        raise CheckpointError(f"checkpoint {source} {problem} ({type(self).__name__}): "
                              f"{'; '.join(details)}")
