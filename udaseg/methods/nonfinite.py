"""Non-finite losses: which terms of an iteration are NaN/inf on any rank, and what a run that
stops for one says."""

from __future__ import annotations

from collections.abc import Callable

import torch

#: Name standing for the terms of another rank, when only that rank has non-finite ones.
ANOTHER_RANK = "(another rank)"


def nonfinite_terms(losses: dict[str, torch.Tensor],
                    reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> list[str]:
    """The floating-point terms of `losses` that are NaN/inf here, when any rank has one
    (`reduce_sum` sums a flag over the ranks), else []; `[ANOTHER_RANK]` when only another
    rank has some. One device sync per iteration (the hot path), not one per term."""
    terms = {name: value.detach() for name, value in losses.items()
             if torch.is_tensor(value) and value.is_floating_point()}
    if not terms:
        return []
    finite = torch.stack([torch.isfinite(value).all() for value in terms.values()])
    if reduce_sum((~finite).any().float()).item() == 0:
        return []
    return [name for name, ok in zip(terms, finite.tolist(), strict=True) if not ok] or \
        [ANOTHER_RANK]


def stop_message(iteration: int, losses: dict[str, torch.Tensor], bad: list[str]) -> str:
    """What `nonfinite_loss: stop` raises: the iteration, the terms and their values."""
    described = ", ".join(f"{name} = {losses[name].item()}" for name in bad
                          if name in losses) or "none on this rank (another rank's)"
    return (f"iteration {iteration}: non-finite loss: {described}. Stopped before the optimiser "
            "step, so no weight or checkpoint holds it; lower the learning rate, check the "
            "inputs, or set model.init_args.nonfinite_loss: skip to drop such iterations")
