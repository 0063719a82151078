"""What a method adds to Lightning's checkpoint, and checks when one is loaded: the poly
horizon, the run of skipped iterations and every rank's global RNG states (exact resume), a
one-line refusal of a checkpoint that does not fit, and the renames of older state-dict keys."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Optional

import torch

from udaseg.methods.optim import OptimConfig
from udaseg.runtime.checkpoint_io import SOURCE_KEY, CheckpointError
from udaseg.runtime.rng_state import collect_rng_states

#: Checkpoint key of the ranks' global RNG states (a list, by rank).
RNG_STATES_KEY = "udaseg_rng_states"
#: Checkpoint key of the run of non-finite iterations skipped just before it (the count that
#: gives up at `MAX_CONSECUTIVE_SKIPS`), so a resumed run gives up where the run left alone does.
CONSECUTIVE_SKIPS_KEY = "udaseg_consecutive_skips"

#: State-dict keys of earlier releases and what they are called now: the teacher's network
#: (`teacher.*` -> `teacher.network.*`) and TUFL's thresholds (owned by its selection).
LEGACY_KEYS = ((re.compile(r"^teacher\.(?!network\.)"), "teacher.network."),
               (re.compile(r"^thresholds$"), "selection.thresholds"))


def rename_legacy_keys(state_dict: dict) -> None:
    """Rename, in place, the keys of a checkpoint written by an earlier release."""
    for key in list(state_dict):
        for pattern, replacement in LEGACY_KEYS:
            if pattern.search(key):
                state_dict[pattern.sub(replacement, key)] = state_dict.pop(key)
                break


def rank_rng_states(world_size: int) -> list:
    """The global RNG states of every rank (a collective under DDP), by rank."""
    states = collect_rng_states()
    if world_size <= 1:
        return [states]
    gathered: list = [None] * world_size
    torch.distributed.all_gather_object(gathered, states)
    return gathered


def horizon_change_warning(step: int, saved_horizon: int, horizon: int,
                           config: OptimConfig) -> str:
    """What a resumed run whose poly horizon changed says about its learning rate (`config`:
    the run's schedule)."""
    before, after = (config.learning_rate(1.0, step, value) for value in (saved_horizon, horizon))
    return (f"resuming at iteration {step}: the checkpoint's poly schedule decays over "
            f"{saved_horizon} iterations, this run's over {horizon} (trainer.max_steps changed), "
            f"so the learning rate jumps from {before:.4g} to {after:.4g} x lr. Set "
            f"model.init_args.optim.max_iters: {saved_horizon} to keep the original schedule.")


def checkpoint_mismatch(own: Mapping[str, torch.Tensor], checkpoint: dict, method: str,
                        num_classes: int, segmenter: str) -> Optional[str]:
    """One sentence naming the file and what differs, when `checkpoint` was written by another
    class count, network, method or settings than the model whose state dict is `own` (None
    when it fits). Lightning's strict loading would list every tensor instead."""
    saved = checkpoint.get("state_dict")
    if saved is None:
        return None

    def ordered(keys):  # the segmenter's tensors first: the examples shown
        return sorted(keys, key=lambda key: (not key.startswith("segmenter."), key))

    missing = ordered(set(own) - set(saved))
    unexpected = ordered(set(saved) - set(own))
    reshaped = ordered(key for key in set(own) & set(saved)
                       if tuple(own[key].shape) != tuple(saved[key].shape))
    if not (missing or unexpected or reshaped):
        return None
    hparams = checkpoint.get("hyper_parameters") or {}
    classes = hparams.get("num_classes")
    saved_segmenter = (hparams.get("segmenter") or {}).get("class_path", "?")
    # Written by LightningCLI: the class the checkpoint's run trained.
    saved_method = str(hparams.get("_class_path") or "").rsplit(".", 1)[-1]
    source = checkpoint.get(SOURCE_KEY, "the checkpoint")
    if classes is not None and classes != num_classes:
        problem = f"was trained for {classes} classes, this run has {num_classes}"
    elif any(key.startswith("segmenter.") for key in missing + unexpected + reshaped):
        problem = (f"holds another network ({saved_segmenter.rsplit('.', 1)[-1]}) than this "
                   f"run's {segmenter}")
    elif saved_method and saved_method != method:
        problem = f"was trained by another method ({saved_method}) than this run's"
    else:
        problem = "was trained with other model settings than this run's"
    details = [f"{len(items)} {what}, e.g. {describe(items[0])}"
               for items, what, describe in (
                   (reshaped, "tensors of other shapes",
                    lambda key: f"{key} {tuple(saved[key].shape)} vs {tuple(own[key].shape)}"),
                   (missing, "tensors missing", str),
                   (unexpected, "unexpected tensors", str)) if items]
    return f"checkpoint {source} {problem} ({method}): {'; '.join(details)}"


__all__ = ["CONSECUTIVE_SKIPS_KEY", "CheckpointError", "LEGACY_KEYS", "RNG_STATES_KEY",
           "checkpoint_mismatch", "horizon_change_warning", "rank_rng_states",
           "rename_legacy_keys"]
