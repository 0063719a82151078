"""DDP with the generator/discriminator pattern: 2 CPU processes (gloo) through the real CLI."""

from __future__ import annotations

from tests.helpers import assert_identical_weights, fit_two_ranks


def test_advent_ddp_two_ranks_end_with_identical_weights(tmp_path):
    ranks = fit_two_ranks(tmp_path, "udaseg.methods.AdvEnt")
    assert any(key.startswith("discriminators.aux") for key in ranks[0]["state_dict"])
    assert_identical_weights(ranks)
