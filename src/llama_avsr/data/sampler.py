"""Frame-budget batching over length buckets (the reference's bucketed ``max_frames`` batches).

Per epoch, with a generator seeded by (seed, epoch):

1. items are assigned to ``num_buckets`` equal-width length buckets between the shortest and the longest
   item and ordered by bucket — in random order inside a bucket when shuffling, else longest first;
2. batches are filled greedily in that order while the sum of the items' lengths stays within
   ``max_frames`` (and the count within ``max_batch_size``); an item longer than ``max_frames`` forms a
   batch of its own;
3. the batch order is shuffled (when shuffling);
4. distributed: every rank builds the same list and takes batches ``rank, rank + R, …``.  When the number
   of batches is not a multiple of R the list is padded by repeating batches from its start, so every
   rank runs the same number of steps and every item is seen at least once (a few of them twice);
   ``drop_uneven=True`` drops the last ``n mod R`` batches instead (every item at most once).

Resuming: ``state_dict()`` records the epoch and how many batches of the epoch's global list all ranks
together have consumed (``global_consumed`` = this rank's count × R, since step k of every rank reads
global batches ``kR … kR + R − 1``).  ``load_state_dict`` skips that prefix of the global list and
shards the rest over the *current* ranks (padded as above), so a run can resume on a different number
of processes: with R·(batches per step) unchanged, the resumed run sees the same global batches as an
uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (e.g. seed, epoch, rank): nearby inputs, unrelated streams."""
    state = np.random.SeedSequence([p % 2**64 for p in parts]).generate_state(1, np.uint64)[0]
    return int(state) >> 1


def bucket_ids(lengths: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Equal-width length buckets between min and max length. (N,) int → (N,) int64 in [0, num_buckets]."""
    lo, hi = int(lengths.min()), int(lengths.max())
    if num_buckets <= 1 or lo == hi:
        return torch.zeros_like(lengths)
    return torch.bucketize(lengths.double(), torch.linspace(lo, hi, num_buckets, dtype=torch.float64))


def frame_budget_batches(
    lengths: Sequence[int] | np.ndarray,
    max_frames: int,
    num_buckets: int = 400,
    max_batch_size: int | None = None,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """All batches of one epoch (steps 1–3 above); ``generator=None`` means no shuffling."""
    n = len(lengths)
    if n == 0:
        return []
    lens = torch.as_tensor(np.asarray(lengths, dtype=np.int64))
    buckets = bucket_ids(lens, num_buckets)
    if generator is not None:
        perm = torch.randperm(n, generator=generator)
        # stable sort of a random permutation by bucket = random order inside each bucket
        order = perm[torch.sort(buckets[perm], stable=True).indices]
    else:
        # bucket ascending, then longest first, then index: fully deterministic
        order = torch.from_numpy(np.lexsort((np.arange(n), -lens.numpy(), buckets.numpy())))
    batches: list[list[int]] = []
    cur: list[int] = []
    frames = 0
    cap = max_batch_size or n
    for i, length in zip(order.tolist(), lens[order].tolist(), strict=True):
        if cur and (frames + length > max_frames or len(cur) >= cap):
            batches.append(cur)
            cur, frames = [], 0
        cur.append(i)
        frames += length
    if cur:
        batches.append(cur)
    if generator is not None:
        batches = [batches[j] for j in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


class FrameBudgetBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices under a frame budget, per rank, reproducible per (seed, epoch).

    lengths: length of each item in frames (``Utterance.n_frames``).
    max_frames: budget per batch (sum of item lengths).
    num_buckets, max_batch_size: see the module docstring.
    shuffle: random order inside buckets and random batch order (train); off = deterministic order.
    seed: with the epoch (``set_epoch``), seeds the shuffling; must be the same on every rank.
    num_replicas, rank: distributed training (world size, this process).
    drop_uneven: drop the last ``n_batches mod num_replicas`` batches instead of padding.
    keyed: yield ``(epoch, index)`` pairs instead of indices, so that the dataset can draw each item's
        augmentation from a generator of its own (:class:`~llama_avsr.data.dataset.AVDataset`): the same
        for a given (seed, epoch, item) whatever the number of workers, and after a resume.

    Use as ``DataLoader(dataset, batch_sampler=...)``; with Lightning, set
    ``Trainer(use_distributed_sampler=False)`` since this sampler already splits by rank (Lightning
    calls ``set_epoch`` on it each epoch).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_frames: int,
        *,
        num_buckets: int = 400,
        max_batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_uneven: bool = False,
        keyed: bool = False,
    ) -> None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if len(self.lengths) and self.lengths.min() < 0:
            raise ValueError("item lengths must be >= 0")
        self.max_frames = max_frames
        self.num_buckets = num_buckets
        self.max_batch_size = max_batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_uneven = drop_uneven
        self.keyed = keyed
        self.epoch = 0
        self._offset = 0  # batches of the epoch's global list consumed before a resume (load_state_dict)
        self._yielded = 0  # this rank's batches handed out in the current pass
        self._cache: tuple[int, list[list[int]]] | None = None
        n_long = int((self.lengths > max_frames).sum())
        if n_long:
            log.warning(
                "%d item(s) are longer than max_frames=%d; each forms a batch alone", n_long, max_frames
            )

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (reshuffles). A different epoch than a resumed one discards the resume point."""
        if epoch != self.epoch:
            self._offset = 0
            self._yielded = 0
        self.epoch = epoch

    def _generator(self) -> torch.Generator | None:
        if not self.shuffle:
            return None
        # a distinct, well-mixed stream per (seed, epoch), identical on every rank
        return torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))

    def global_batches(self) -> list[list[int]]:
        """The epoch's batches before sharding: identical on every rank (steps 1–3 above)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        batches = frame_budget_batches(
            self.lengths, self.max_frames, self.num_buckets, self.max_batch_size, self._generator()
        )
        self._cache = (self.epoch, batches)
        return batches

    def _shard(self, offset: int) -> tuple[list[list[int]], int]:
        """This rank's batches of the global list from ``offset`` on, and how many of them are real
        (the rest are padding repeats)."""
        full = self.global_batches()
        rest = full[offset:]
        r = self.num_replicas
        if r > 1 and len(rest) % r:
            if self.drop_uneven:
                rest = rest[: len(rest) - len(rest) % r]
            else:
                rest = rest + [full[i % len(full)] for i in range(r - len(rest) % r)]
        mine = rest[self.rank :: r]
        n_real = len(full) - offset  # real batches left; positions >= n_real in `rest` are padding
        real = sum(1 for j in range(len(mine)) if self.rank + j * r < n_real)
        return mine, real

    def rank_batches(self) -> list[list[int]]:
        """All of this rank's batches for the current epoch (ignoring any resume point)."""
        return self._shard(0)[0]

    def is_padding(self, j: int) -> bool:
        """Whether this rank's ``j``-th batch of the next pass repeats a batch to even out the ranks
        (validation leaves such batches out of its metrics)."""
        return j >= self._shard(self._offset)[1]

    def __iter__(self) -> Iterator[list[int]] | Iterator[list[tuple[int, int]]]:
        batches = self._shard(self._offset)[0]
        self._yielded = 0
        epoch = self.epoch
        for b in batches:
            self._yielded += 1
            yield [(epoch, i) for i in b] if self.keyed else b
        # the resumed epoch is complete: a next pass over it is a full one
        self._offset = 0
        self._yielded = 0

    def __len__(self) -> int:
        """Batches the next iteration yields (the remainder of the epoch after a resume)."""
        return len(self._shard(self._offset)[0])

    def state_dict(self, consumed: int | None = None) -> dict[str, int]:
        """Resume point: the epoch and the batches of its global list consumed by all ranks.

        consumed: this rank's batches the training loop actually used in the current pass; by default
        the number this sampler has handed out, which runs ahead of training when a DataLoader
        prefetches — pass the loop's own step count for an exact resume.

        ``consumed`` in the result is the per-rank count since the start of the epoch (informational,
        and what older states held); ``global_consumed`` is what :meth:`load_state_dict` uses.
        """
        mine = self._yielded if consumed is None else consumed
        done = self._offset + mine * self.num_replicas
        return {
            "epoch": self.epoch,
            "consumed": -(-done // self.num_replicas),
            "global_consumed": done,
            "seed": self.seed,
            "num_replicas": self.num_replicas,
            "num_items": len(self.lengths),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore a resume point; the next ``__iter__`` yields this rank's share of the rest of that
        epoch. The state may come from a run with another number of ranks (``num_replicas``)."""
        for key, mine in (("seed", self.seed), ("num_items", len(self.lengths))):
            if key in state and state[key] != mine:
                raise ValueError(f"cannot resume sampler: saved {key}={state[key]}, now {mine}")
        self.epoch = int(state["epoch"])
        if "global_consumed" in state:
            self._offset = int(state["global_consumed"])
        else:  # a per-rank count (older states, or hand-written): step k covered k·R global batches
            self._offset = int(state["consumed"]) * int(state.get("num_replicas", self.num_replicas))
        self._yielded = 0
