"""An LRU cache of text embeddings, filled by one batched text-encoder call per miss set."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch

Key = tuple[str, str]


class TextEmbeddingCache:
    """Maps a key (template mode, phrase) to a [D] embedding; least recently used evicted.

    ``compute`` receives the list of missing keys and must return a [len(keys), D] tensor;
    it is called at most once per ``get`` so misses share one batched encoder pass.

    Each cached row is a copy with its own storage: a row of ``compute``'s result is a view
    that would keep the whole batch tensor alive (on the model's device), so memory would
    grow with the batch sizes seen instead of staying at ``capacity`` x D.

    ``hits`` and ``misses`` count looked-up keys (a key repeated in one ``get`` counts each
    time). They change under the lock because the service reads them (``stats``) from
    another thread than the model thread that calls ``get``.
    """

    def __init__(self, capacity: int = 1024) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Key, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        """Drop every cached embedding (e.g. after the text encoder's weights changed)."""
        with self._lock:
            self._items.clear()

    def stats(self) -> dict[str, int]:
        """A consistent snapshot: ``{"hits", "misses", "entries", "capacity"}``."""
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "entries": len(self._items),
                "capacity": self.capacity,
            }

    def missing(self, keys: Sequence[Key]) -> int:
        """How many distinct ``keys`` are not cached now (no hit or miss counted)."""
        with self._lock:
            return len({k for k in keys if k not in self._items})

    def get(
        self,
        keys: Sequence[Key],
        compute: Callable[[list[Key]], torch.Tensor],
    ) -> torch.Tensor:
        """Embeddings [len(keys), D] in the order of ``keys``."""
        with self._lock:
            found = {k: self._items[k] for k in keys if k in self._items}
            for k in found:
                self._items.move_to_end(k)
            n_missed = sum(1 for k in keys if k not in found)
            self.hits += len(keys) - n_missed
            self.misses += n_missed
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        if missing:
            # Outside the lock: the encoder pass is slow and other readers (stats) must
            # not wait for it.
            computed = compute(missing)
            fresh = dict(zip(missing, computed, strict=True))
            found.update(fresh)
            # Only the last `capacity` misses would survive the eviction below, so only
            # they are copied. clone() (not contiguous(), which returns a row of a
            # contiguous batch as the same view) gives each row storage of exactly D.
            kept = missing[-self.capacity :] if self.capacity else []
            copies = {
                k: fresh[k].detach().clone(memory_format=torch.contiguous_format) for k in kept
            }
            with self._lock:
                for key, value in copies.items():
                    self._items[key] = value
                    self._items.move_to_end(key)
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
        return torch.stack([found[k] for k in keys])
