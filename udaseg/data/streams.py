"""Endless, rank-sharded, independently shuffled index streams for the paired training loader.

UDA training pairs a source batch with a target batch every iteration. The two datasets have
different sizes, and the papers count iterations, not epochs, so each stream cycles on its own:
every pass over a dataset is a fresh permutation, split into disjoint per-rank shards, and the
training length is set by `trainer.max_steps` alone.

Exact resume: a stream yields `(position, index)` pairs, position being how many draws this
rank's stream has made. The dataset seeds each sample's augmentation from (stream seed, rank,
position), so nothing about a stream lives in a process: a run resumed at iteration k starts
its samplers at position k x batch size and draws exactly the crops, flips and strong views the
uninterrupted run would have, whatever the number of DataLoader workers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import BatchSampler, DistributedSampler, Sampler


class InfiniteShardedSampler(DistributedSampler):
    """Yields `(position, dataset index)` forever: pass k is a permutation seeded by (seed, k),
    rank r takes every `num_replicas`-th index from position r.

    It subclasses `DistributedSampler` only so that Lightning leaves it alone under DDP (Lightning
    wraps any other sampler and would try to materialise this endless one).

    Args:
        dataset_size: number of samples in the stream.
        num_replicas: world size; rank: this process's rank.
        seed: base seed; streams with different seeds are shuffled independently.
        shuffle: False yields 0..n-1 in order each pass (still sharded).
        start: position of the first draw (draws this rank already made: resume).
    """

    def __init__(self, dataset_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, start: int = 0) -> None:
        if dataset_size <= 0:
            raise ValueError("cannot stream from an empty dataset")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        if start < 0:
            raise ValueError(f"a stream cannot start at position {start}")
        # DistributedSampler.__init__ would query torch.distributed; we set what we need ourselves.
        self.dataset_size = dataset_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.start = start
        self.epoch = 0

    def pass_order(self, pass_index: int) -> torch.Tensor:
        """All indices of one pass, before sharding; padded by wrapping so every rank gets
        the same count (a DDP step must not wait on a rank that ran out)."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + pass_index)
            order = torch.randperm(self.dataset_size, generator=generator)
        else:
            order = torch.arange(self.dataset_size)
        remainder = (-self.dataset_size) % self.num_replicas
        if remainder:
            order = torch.cat([order, order[:remainder]])
        return order

    def indices_from(self, start: int) -> Iterator[int]:
        """This rank's dataset indices from draw `start` on (whole passes are skipped without
        being drawn)."""
        shard = -(-self.dataset_size // self.num_replicas)
        pass_index, offset = self.epoch + start // shard, start % shard
        while True:
            yield from self.pass_order(pass_index)[self.rank::self.num_replicas][offset:].tolist()
            pass_index, offset = pass_index + 1, 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(itertools.count(self.start), self.indices_from(self.start))

    def __len__(self) -> int:
        raise TypeError("InfiniteShardedSampler is endless; training length is set by max_steps")


class SameSizeBatchSampler(BatchSampler):
    """Evaluation batches of at most `batch_size` images that all have the same original size.

    `udaseg predict` writes each prediction at its image's original size, one size per batch;
    a folder of mixed sizes would otherwise fail to collate (or be upsampled to the first
    image's size). Sizes are grouped in order of first appearance; nothing is dropped. A
    `BatchSampler` with `sampler` and `drop_last` arguments, so Lightning can swap in its own
    (distributed) sampler.

    Args:
        sampler: the indices to batch, e.g. `SequentialSampler(dataset)`.
        batch_size: images per batch at most.
        drop_last: accepted for Lightning, ignored: every image is predicted.
        sizes: original (height, width) of each dataset index.
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, drop_last: bool = False,
                 sizes: Sequence[tuple[int, int]] = ()) -> None:
        super().__init__(sampler, batch_size, drop_last=False)
        self.sizes = [tuple(size) for size in sizes]

    def _batches(self) -> list[list[int]]:
        groups: dict[tuple[int, int], list[int]] = {}
        for index in self.sampler:
            groups.setdefault(self.sizes[index], []).append(index)
        return [indices[start:start + self.batch_size] for indices in groups.values()
                for start in range(0, len(indices), self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()

    def __len__(self) -> int:
        return len(self._batches())
