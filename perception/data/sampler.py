"""Samplers: a deterministic, resumable training sampler that mixes datasets, and a sharded evaluation sampler.

The training order of an epoch is a pure function of (seed, epoch): it does not depend on the number of workers,
and with DDP every rank takes its own shard of the same order (like ``DistributedSampler``). ``set_start(i)``
skips this rank's first ``i`` samples, so a run resumed in the middle of an epoch sees exactly the batches it would
have seen. Each index comes with a per-sample seed for the augmentation.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler


def mixing_probabilities(sizes: Sequence[int], strategy: str = "proportional", temperature: float = 2.0,
                         weights: Sequence[float] | None = None) -> np.ndarray:
    """How often each dataset is drawn.

    Args:
        sizes: samples per dataset.
        strategy: ``proportional`` (p ~ size), ``uniform`` (p equal) or ``temperature`` (p ~ size ** (1 / T)).
        temperature: T of the ``temperature`` strategy.
        weights: per-dataset multipliers of p (default 1).

    Returns:
        ndarray[D] probabilities summing to 1.
    """
    sizes = np.asarray(sizes, np.float64)
    if (sizes <= 0).any():
        raise ValueError(f"every dataset needs at least one sample, got sizes {sizes.astype(int).tolist()}")
    if strategy == "proportional":
        p = sizes.copy()
    elif strategy == "uniform":
        p = np.ones_like(sizes)
    elif strategy == "temperature":
        if temperature <= 0:
            raise ValueError(f"temperature: got {temperature}, expected a positive number")
        p = sizes ** (1.0 / temperature)
    else:
        raise ValueError(f"sampling: got {strategy!r}, expected 'proportional', 'uniform' or 'temperature'")
    if weights is not None:
        p = p * np.asarray(weights, np.float64)
    return p / p.sum()


def _quota(total: int, probabilities: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``total``, closest to ``total * p`` (largest remainders)."""
    exact = total * probabilities
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def distributed_rank_world(distributed: bool) -> tuple[int, int]:
    """(rank, world size) of this process when ``distributed`` and torch.distributed is initialised, else (0, 1)."""
    if distributed and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class MixedSampler(Sampler):
    """Training order over concatenated datasets, each drawn with its mixing probability.

    Each dataset contributes ``round(num_samples * p_d)`` samples per epoch, taken from its own random permutations
    (a new permutation whenever one is used up), and all are shuffled together. With the ``proportional`` strategy
    and the default ``num_samples`` every sample appears exactly once per epoch.

    Args:
        sizes: samples per dataset (the datasets are concatenated in this order).
        strategy: ``proportional``, ``uniform`` or ``temperature`` (see :func:`mixing_probabilities`).
        temperature: of the ``temperature`` strategy.
        weights: per-dataset multipliers of the probabilities.
        num_samples: samples per epoch over all ranks (default: the sum of the sizes).
        seed: the same seed gives the same order on every rank and every run.
        rank: this process's rank.
        world_size: number of processes; the epoch is padded (repeating its start) to a multiple of it.

    Yields:
        (global index, augmentation seed) tuples.
    """

    def __init__(self, sizes: Sequence[int], strategy: str = "proportional", temperature: float = 2.0,
                 weights: Sequence[float] | None = None, num_samples: int | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.sizes = [int(s) for s in sizes]
        self.probabilities = mixing_probabilities(self.sizes, strategy, temperature, weights)
        self.num_samples = int(num_samples) if num_samples else sum(self.sizes)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch, self.start = 0, 0
        self.per_rank = -(-self.num_samples // self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order (and start it from the beginning)."""
        self.epoch, self.start = int(epoch), 0

    def set_start(self, index: int) -> None:
        """Skip this rank's first ``index`` samples of the current epoch (for resuming mid-epoch)."""
        if not 0 <= index <= self.per_rank:
            raise ValueError(f"set_start: got {index}, expected 0..{self.per_rank} (samples per rank and epoch)")
        self.start = int(index)

    def epoch_order(self) -> np.ndarray:
        """ndarray[num_samples, 2] of (global index, augmentation seed) for the whole epoch, all ranks."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch]))
        counts = _quota(self.num_samples, self.probabilities)
        offset, chosen = 0, []
        for size, count in zip(self.sizes, counts):
            reps = -(-count // size)
            local = np.concatenate([rng.permutation(size) for _ in range(reps)])[:count] if count else []
            chosen.append(np.asarray(local, np.int64) + offset)
            offset += size
        order = np.concatenate(chosen)[rng.permutation(self.num_samples)]
        seeds = rng.integers(0, 2**31 - 1, self.num_samples, dtype=np.int64)
        return np.stack([order, seeds], 1)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.epoch_order()
        padded = np.concatenate([order, order[: self.per_rank * self.world_size - len(order)]])
        mine = padded[self.rank::self.world_size][self.start:]
        return iter([(int(i), int(s)) for i, s in mine])

    def __len__(self) -> int:
        return self.per_rank - self.start


class ShardSampler(Sampler):
    """Evaluation order: indices ``rank, rank + world, ...`` of ``size`` samples, no padding and no duplicates.

    Args:
        size: number of samples.
        rank: this process's rank.
        world_size: number of processes.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.rank, self.world_size = int(size), int(rank), int(world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))
