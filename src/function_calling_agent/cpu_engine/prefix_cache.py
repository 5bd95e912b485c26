"""Bounded LRU store of finished sequences' KV caches, looked up by longest common token prefix.

An agent's next turn is its previous prompt plus the generated reply plus new turns, token for token, so the
KV of everything but the new tail can be reused. Entries are private to the store: a lookup hands out a copy
of the reused prefix, so a running request never shares tensors with a cached entry.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def supports_prefix_reuse(cache) -> bool:
    """Only plain full-attention DynamicCache layers can be cut at an arbitrary token (no sliding windows)."""
    layers = getattr(cache, "layers", None)
    return isinstance(cache, DynamicCache) and bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def copy_prefix(cache: DynamicCache, length: int) -> DynamicCache:
    """A new DynamicCache holding copies of the first `length` positions of every layer."""
    return DynamicCache(
        ddp_cache_data=[
            (layer.keys[..., :length, :].clone(), layer.values[..., :length, :].clone()) for layer in cache.layers
        ]
    )


def common_prefix_length(a: np.ndarray, b: np.ndarray) -> int:
    n = min(a.size, b.size)
    if n == 0:
        return 0
    mismatch = np.flatnonzero(a[:n] != b[:n])
    return int(mismatch[0]) if mismatch.size else n


@dataclass
class _Entry:
    tokens: np.ndarray
    cache: DynamicCache


@dataclass(frozen=True)
class PrefixHit:
    length: int
    cache: DynamicCache | None


class PrefixKVCache:
    """Not thread-safe: the engine touches it from its single generation thread only."""

    def __init__(self, max_tokens: int) -> None:
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        self.max_tokens = max_tokens
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._ids = itertools.count()
        self._total_tokens = 0

    @property
    def total_tokens(self) -> int:
        return self._total_tokens

    def __len__(self) -> int:
        return len(self._entries)

    def sequences(self) -> list[tuple[int, ...]]:
        """Cached token sequences, least recently used first."""
        return [tuple(int(t) for t in e.tokens) for e in self._entries.values()]

    def lookup(self, tokens: Sequence[int], max_reuse: int) -> PrefixHit:
        """Longest cached prefix of `tokens`, at most `max_reuse` long, as a private copy."""
        if not self._entries or max_reuse <= 0:
            return PrefixHit(0, None)
        query = np.asarray(tokens, dtype=np.int64)
        best_key, best_length = None, 0
        for key, entry in self._entries.items():
            length = common_prefix_length(query, entry.tokens)
            if length > best_length:
                best_key, best_length = key, length
        best_length = min(best_length, max_reuse)
        if best_key is None or best_length == 0:
            return PrefixHit(0, None)
        self._entries.move_to_end(best_key)
        return PrefixHit(best_length, copy_prefix(self._entries[best_key].cache, best_length))

    def store(self, tokens: Sequence[int], cache: DynamicCache) -> None:
        """Take ownership of `cache`, whose positions hold the KV of exactly `tokens`."""
        if self.max_tokens == 0 or not tokens or not supports_prefix_reuse(cache):
            return
        key_tokens = np.asarray(tokens, dtype=np.int64)
        if key_tokens.size > self.max_tokens:
            key_tokens = key_tokens[: self.max_tokens]
            cache = copy_prefix(cache, self.max_tokens)
        for key, entry in list(self._entries.items()):
            shared = common_prefix_length(key_tokens, entry.tokens)
            if shared == key_tokens.size:
                # Already covered by a longer (or equal) entry: refresh it instead.
                self._entries.move_to_end(key)
                return
            if shared == entry.tokens.size:
                self._remove(key)
        self._entries[next(self._ids)] = _Entry(key_tokens, cache)
        self._total_tokens += int(key_tokens.size)
        while self._total_tokens > self.max_tokens:
            self._remove(next(iter(self._entries)))

    def clear(self) -> None:
        self._entries.clear()
        self._total_tokens = 0

    def _remove(self, key: int) -> None:
        entry = self._entries.pop(key)
        self._total_tokens -= int(entry.tokens.size)
