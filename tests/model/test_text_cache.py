"""TextEmbeddingCache: bounded memory (rows own their storage), LRU, batching, stats."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from clipseg_serve.model.inference.text_cache import Key, TextEmbeddingCache

D = 8


class Encoder:
    """A fake text encoder: records its calls, returns rows that identify their key."""

    def __init__(self, extra_rows: int = 0) -> None:
        self.calls: list[list[Key]] = []
        self.extra_rows = extra_rows  # pad the batch, as a padded encoder batch would
        self.last_batch: torch.Tensor | None = None

    def __call__(self, keys: list[Key]) -> torch.Tensor:
        self.calls.append(list(keys))
        rows = [embedding(k) for k in keys]
        batch = torch.stack(rows + [torch.zeros(D)] * self.extra_rows)
        self.last_batch = batch
        return batch[: len(keys)]  # views into the padded batch


def embedding(key: Key) -> torch.Tensor:
    """A deterministic [D] vector for a key."""
    seed = sum(map(ord, "/".join(key)))
    return torch.arange(D, dtype=torch.float32) + seed


def keys(*phrases: str, mode: str = "ensemble") -> list[Key]:
    return [(mode, p) for p in phrases]


def cached_rows(cache: TextEmbeddingCache) -> list[torch.Tensor]:
    return list(cache._items.values())


def storage_bytes_held(cache: TextEmbeddingCache) -> int:
    """Bytes of all distinct storages the cached rows keep alive."""
    storages = {}
    for row in cached_rows(cache):
        s = row.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
    return sum(storages.values())


# ---------------------------------------------------------------------- memory
def test_cached_rows_own_their_storage():
    cache = TextEmbeddingCache(capacity=16)
    cache.get(keys(*(f"p{i}" for i in range(10))), Encoder(extra_rows=20))
    rows = cached_rows(cache)
    assert len(rows) == 10
    for row in rows:
        assert row.shape == (D,)
        assert row.is_contiguous()
        assert row.untyped_storage().nbytes() == row.numel() * row.element_size()
    assert len({row.untyped_storage().data_ptr() for row in rows}) == 10


def test_storage_held_is_bounded_by_capacity_times_dim_after_many_big_batches():
    capacity = 5
    cache = TextEmbeddingCache(capacity=capacity)
    encoder = Encoder(extra_rows=200)
    for step in range(30):
        # Mostly misses, a few repeated phrases: the cache keeps churning.
        phrases = [f"s{step}-{i}" for i in range(7)] + ["always"]
        cache.get(keys(*phrases), encoder)
    assert len(cache) == capacity
    itemsize = torch.empty((), dtype=torch.float32).element_size()
    assert storage_bytes_held(cache) <= capacity * D * itemsize


def test_the_computed_batch_is_released_once_get_returns():
    cache = TextEmbeddingCache(capacity=4)
    encoder = Encoder(extra_rows=100)
    cache.get(keys("a", "b"), encoder)
    batch_ref = weakref.ref(encoder.last_batch)
    encoder.last_batch = None
    gc.collect()
    assert batch_ref() is None, "a cached row still pins the encoder's batch tensor"


def test_cached_copies_keep_their_values_and_do_not_alias_the_caller():
    cache = TextEmbeddingCache(capacity=4)
    encoder = Encoder()
    first = cache.get(keys("a", "b"), encoder)
    encoder.last_batch.fill_(-1.0)  # the caller reuses its buffer
    first.fill_(-2.0)  # and scribbles on the returned tensor
    again = cache.get(keys("b", "a"), encoder)
    assert len(encoder.calls) == 1
    torch.testing.assert_close(again, torch.stack([embedding(k) for k in keys("b", "a")]))


# ---------------------------------------------------------------------- behaviour
def test_returns_rows_in_key_order_with_duplicates():
    cache = TextEmbeddingCache(capacity=8)
    cache.get(keys("b"), Encoder())
    order = keys("a", "b", "a", "c")
    out = cache.get(order, Encoder())
    torch.testing.assert_close(out, torch.stack([embedding(k) for k in order]))


def test_one_compute_call_for_all_misses_and_none_for_hits():
    cache = TextEmbeddingCache(capacity=8)
    encoder = Encoder()
    cache.get(keys("a", "b"), encoder)
    cache.get(keys("a", "c", "d", "c", "b", "e"), encoder)
    assert encoder.calls == [keys("a", "b"), keys("c", "d", "e")]  # each miss once, in order
    cache.get(keys("e", "a", "d"), encoder)
    assert len(encoder.calls) == 2


def test_modes_are_separate_keys():
    cache = TextEmbeddingCache(capacity=8)
    encoder = Encoder()
    cache.get(keys("cat", mode="ensemble"), encoder)
    cache.get(keys("cat", mode="plain"), encoder)
    assert encoder.calls == [[("ensemble", "cat")], [("plain", "cat")]]


def test_lru_eviction_order():
    cache = TextEmbeddingCache(capacity=3)
    encoder = Encoder()
    cache.get(keys("a", "b", "c"), encoder)
    cache.get(keys("a"), encoder)  # a is now the most recent; b the least
    cache.get(keys("d"), encoder)  # evicts b
    assert [k[1] for k in cache._items] == ["c", "a", "d"]
    encoder.calls.clear()
    cache.get(keys("c", "a", "d"), encoder)  # hits, used in this order: c is now the LRU
    assert encoder.calls == []
    cache.get(keys("b"), encoder)  # b was evicted: computed again, evicting c
    assert encoder.calls == [keys("b")]
    assert [k[1] for k in cache._items] == ["a", "d", "b"]


def test_more_misses_than_capacity_keeps_the_last_ones():
    cache = TextEmbeddingCache(capacity=2)
    encoder = Encoder()
    out = cache.get(keys("a", "b", "c", "d"), encoder)
    assert out.shape == (4, D)
    assert [k[1] for k in cache._items] == ["c", "d"]


def test_stats_counts_hits_misses_and_entries():
    cache = TextEmbeddingCache(capacity=3)
    assert cache.stats() == {"hits": 0, "misses": 0, "entries": 0, "capacity": 3}
    encoder = Encoder()
    cache.get(keys("a", "b"), encoder)
    cache.get(keys("a", "c", "c"), encoder)  # 1 hit; "c" twice -> 2 misses, 1 compute
    cache.get(keys("d"), encoder)  # evicts one: entries stays at capacity
    assert cache.stats() == {"hits": 1, "misses": 5, "entries": 3, "capacity": 3}
    assert (cache.hits, cache.misses) == (1, 5)
    cache.clear()
    assert cache.stats()["entries"] == 0


def test_capacity_zero_caches_nothing():
    cache = TextEmbeddingCache(capacity=0)
    encoder = Encoder()
    out1 = cache.get(keys("a", "b"), encoder)
    out2 = cache.get(keys("a", "b"), encoder)
    assert encoder.calls == [keys("a", "b"), keys("a", "b")]
    torch.testing.assert_close(out1, out2)
    assert cache.stats() == {"hits": 0, "misses": 4, "entries": 0, "capacity": 0}


def test_negative_capacity_is_refused():
    with pytest.raises(ValueError, match="capacity"):
        TextEmbeddingCache(capacity=-1)


def test_compute_returning_the_wrong_number_of_rows_raises():
    cache = TextEmbeddingCache(capacity=4)
    with pytest.raises(ValueError):
        cache.get(keys("a", "b"), lambda missing: torch.zeros(1, D))
    assert len(cache) == 0


class LockCheckingCache(TextEmbeddingCache):
    """Records every write to hits/misses and whether the cache's lock was held for it.

    A lost update from an unlocked ``+=`` is far too rare to provoke reliably in a test,
    so this checks the cause instead: every counter write must happen under the lock.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if name in ("hits", "misses") and "_lock" in self.__dict__:
            self.__dict__.setdefault("writes", []).append((name, self._lock.locked()))
        super().__setattr__(name, value)


def test_counters_change_only_under_the_lock():
    cache = LockCheckingCache(capacity=4)
    encoder = Encoder()
    cache.get(keys("a", "b"), encoder)
    cache.get(keys("a", "c"), encoder)
    writes = cache.__dict__["writes"]
    assert {name for name, _ in writes} == {"hits", "misses"}
    assert all(locked for _, locked in writes), writes
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 3
