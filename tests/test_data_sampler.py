"""Invariants of the frame-budget bucketing batch sampler."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from llama_avsr.data.sampler import FrameBudgetBatchSampler, bucket_ids, frame_budget_batches


def make_lengths(n: int = 500, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(20, 400, n).tolist()


def epoch_batches(s: FrameBudgetBatchSampler, epoch: int) -> list[list[int]]:
    s.set_epoch(epoch)
    return list(s)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("max_batch_size", [None, 3])
def test_every_item_once_and_budget(shuffle: bool, max_batch_size: int | None) -> None:
    lengths = make_lengths()
    lengths[7] = 1500  # longer than the budget: a batch of its own
    s = FrameBudgetBatchSampler(lengths, 1000, num_buckets=50, max_batch_size=max_batch_size, shuffle=shuffle)
    batches = epoch_batches(s, 0)
    assert len(batches) == len(s)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for b in batches:
        total = sum(lengths[i] for i in b)
        assert total <= 1000 or len(b) == 1
        if max_batch_size:
            assert len(b) <= max_batch_size
    assert [7] in batches


def test_batches_are_filled_greedily() -> None:
    lengths = make_lengths()
    batches = frame_budget_batches(lengths, 1000, num_buckets=400)  # deterministic order, no shuffle
    # consecutive batches (in fill order): the next batch's first item did not fit in the previous one
    for a, b in zip(batches, batches[1:], strict=False):
        assert sum(lengths[i] for i in a) + lengths[b[0]] > 1000


def test_buckets_group_similar_lengths() -> None:
    lengths = make_lengths(2000)
    buckets = bucket_ids(torch.tensor(lengths), 400).tolist()
    batches = frame_budget_batches(lengths, 1000, num_buckets=400, generator=torch.Generator().manual_seed(0))
    # a batch spans at most a few adjacent buckets (it is filled in bucket order)
    spans = [max(buckets[i] for i in b) - min(buckets[i] for i in b) for b in batches]
    assert max(spans) <= 8 and np.mean(spans) < 2
    assert bucket_ids(torch.tensor([5, 5, 5]), 400).tolist() == [0, 0, 0]
    assert frame_budget_batches([], 10) == []


def test_deterministic_per_seed_and_epoch() -> None:
    lengths = make_lengths()
    a = FrameBudgetBatchSampler(lengths, 1000, seed=1)
    b = FrameBudgetBatchSampler(lengths, 1000, seed=1)
    assert epoch_batches(a, 3) == epoch_batches(b, 3)
    assert epoch_batches(a, 3) != epoch_batches(a, 4)  # reshuffled each epoch
    c = FrameBudgetBatchSampler(lengths, 1000, seed=2)
    assert epoch_batches(a, 3) != epoch_batches(c, 3)
    # a fixed order for evaluation, independent of the epoch
    d = FrameBudgetBatchSampler(lengths, 1000, shuffle=False)
    assert epoch_batches(d, 0) == epoch_batches(d, 5)


@pytest.mark.parametrize("world", [2, 3, 8])
def test_ranks_disjoint_same_steps_and_complete(world: int) -> None:
    lengths = make_lengths(301)
    full = frame_budget_batches(lengths, 1000, generator=None)
    assert len(full) % world  # the uneven case is exercised
    for epoch in (0, 1):
        per_rank = [
            epoch_batches(FrameBudgetBatchSampler(lengths, 1000, seed=5, num_replicas=world, rank=r), epoch)
            for r in range(world)
        ]
        n_steps = {len(b) for b in per_rank}
        assert len(n_steps) == 1  # same number of steps on every rank
        all_batches = [tuple(b) for rb in per_rank for b in rb]
        counts = Counter(i for b in all_batches for i in b)
        assert set(counts) == set(range(len(lengths)))  # every item seen
        # padding repeats whole batches from the start of the epoch's list, fewer than `world` of them
        repeated = [b for b, c in Counter(all_batches).items() if c > 1]
        assert len(repeated) < world and all(c == 2 for b in repeated for c in [Counter(all_batches)[b]])
        # ranks are disjoint apart from the padded repeats
        for r in range(world):
            for q in range(r + 1, world):
                shared = set(map(tuple, per_rank[r])) & set(map(tuple, per_rank[q]))
                assert shared <= set(repeated)

        dropped = [
            epoch_batches(
                FrameBudgetBatchSampler(lengths, 1000, seed=5, num_replicas=world, rank=r, drop_uneven=True),
                epoch,
            )
            for r in range(world)
        ]
        assert len({len(b) for b in dropped}) == 1
        flat = [i for rb in dropped for b in rb for i in b]
        assert len(flat) == len(set(flat))  # at most once


@pytest.mark.parametrize("world", [1, 2])
def test_resume_mid_epoch(world: int) -> None:
    lengths = make_lengths()
    for rank in range(world):
        s = FrameBudgetBatchSampler(lengths, 1000, seed=9, num_replicas=world, rank=rank)
        s.set_epoch(2)
        it = iter(s)
        consumed = [next(it) for _ in range(5)]
        state = s.state_dict()
        assert state["epoch"] == 2 and state["consumed"] == 5

        fresh = FrameBudgetBatchSampler(lengths, 1000, seed=9, num_replicas=world, rank=rank)
        fresh.load_state_dict(state)
        full = epoch_batches(FrameBudgetBatchSampler(lengths, 1000, seed=9, num_replicas=world, rank=rank), 2)
        assert len(fresh) == len(full) - 5
        rest = list(fresh)
        assert consumed + rest == full
        assert len(fresh) == len(full)  # the resumed epoch is done: a new pass is full
        fresh.set_epoch(2)  # Lightning calls set_epoch with the same epoch on resume
        assert len(list(fresh)) == len(full)
        fresh.set_epoch(3)
        assert list(fresh) == epoch_batches(
            FrameBudgetBatchSampler(lengths, 1000, seed=9, num_replicas=world, rank=rank), 3
        )


def test_resume_set_epoch_same_keeps_resume_point() -> None:
    lengths = make_lengths()
    s = FrameBudgetBatchSampler(lengths, 1000)
    s.load_state_dict({"epoch": 1, "consumed": 4})
    s.set_epoch(1)
    assert list(s) == epoch_batches(FrameBudgetBatchSampler(lengths, 1000), 1)[4:]


def test_resume_with_prefetching_loader() -> None:
    lengths = make_lengths(200)
    s = FrameBudgetBatchSampler(lengths, 1000, seed=3)
    loader = DataLoader(list(range(200)), batch_sampler=s, collate_fn=list)
    it = iter(loader)
    seen = [next(it) for _ in range(4)]
    state = s.state_dict(consumed=len(seen))  # the loop's own count (robust to prefetching)
    fresh = FrameBudgetBatchSampler(lengths, 1000, seed=3)
    fresh.load_state_dict(state)
    rest = list(DataLoader(list(range(200)), batch_sampler=fresh, collate_fn=list))
    assert sorted(i for b in seen + rest for i in b) == list(range(200))


def test_state_mismatch_rejected() -> None:
    s = FrameBudgetBatchSampler(make_lengths(), 1000, num_replicas=2, rank=0)
    state = s.state_dict()
    # another number of replicas is fine: the rest of the epoch is re-sharded (tests/test_distributed.py)
    with pytest.raises(ValueError, match="num_items"):
        FrameBudgetBatchSampler(make_lengths(10), 1000, num_replicas=2, rank=0).load_state_dict(state)
    with pytest.raises(ValueError, match="rank"):
        FrameBudgetBatchSampler([1], 10, num_replicas=2, rank=2)


def test_large_corpus_is_fast() -> None:
    """200 k utterances are batched in well under a second of this process's CPU time. CPU time, not
    wall-clock time: other processes on a loaded machine do not count, so this cannot flake under load
    (a quadratic sampler would take minutes)."""
    import time

    lengths = np.random.default_rng(0).integers(20, 400, 200_000)
    t = time.process_time()
    s = FrameBudgetBatchSampler(lengths, 1000, num_replicas=8, rank=3)
    n = len(list(s))
    assert n > 0 and time.process_time() - t < 5
