"""Deprecated import path, kept for one release: use udaseg.runtime.rng_state."""

from udaseg.runtime.rng_state import collect_rng_states, restore_rng_states

__all__ = ["collect_rng_states", "restore_rng_states"]
