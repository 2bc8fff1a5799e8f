"""An LRU cache of text embeddings, filled by one batched text-encoder call per miss set."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch


class TextEmbeddingCache:
    """Maps a key (template mode, phrase) to a [D] embedding; least recently used evicted.

    ``compute`` receives the list of missing keys and must return a [len(keys), D] tensor;
    it is called at most once per ``get`` so misses share one batched encoder pass.
    """

    def __init__(self, capacity: int = 1024) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def get(
        self,
        keys: Sequence[tuple[str, str]],
        compute: Callable[[list[tuple[str, str]]], torch.Tensor],
    ) -> torch.Tensor:
        """Embeddings [len(keys), D] in the order of ``keys``."""
        with self._lock:
            found = {k: self._items[k] for k in keys if k in self._items}
            for k in found:
                self._items.move_to_end(k)
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        self.hits += len(keys) - sum(1 for k in keys if k not in found)
        self.misses += sum(1 for k in keys if k not in found)
        if missing:
            computed = compute(missing)
            fresh = dict(zip(missing, computed, strict=True))
            found.update(fresh)
            with self._lock:
                for key, value in fresh.items():
                    if self.capacity:
                        self._items[key] = value
                        self._items.move_to_end(key)
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
        return torch.stack([found[k] for k in keys])
