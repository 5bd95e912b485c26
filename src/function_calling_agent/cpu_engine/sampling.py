"""Token selection with TensorRT-LLM's sampling semantics, on one sequence's last-position logits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

WordList = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class SamplingParams:
    """Defaults are TensorRT-LLM's: top_k 0 and top_p 0 together mean greedy, and the seed is 0."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    seed: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"runtime_top_k must be >= 0, got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"runtime_top_p must be in [0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1 or (self.top_k == 0 and self.top_p == 0.0)

    @property
    def uses_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def parse_word_list(tensor) -> WordList:
    """TensorRT-LLM word list `[2, L]` or `[1, 2, L]`: row 0 concatenated ids, row 1 cumulative end offsets
    (-1 padded)."""
    import numpy as np

    array = np.asarray(tensor)
    if array.ndim == 3:
        if array.shape[0] != 1:
            raise ValueError(f"word list batch dimension must be 1, got shape {list(array.shape)}")
        array = array[0]
    if array.ndim != 2 or array.shape[0] != 2:
        raise ValueError(f"word list must have shape [2, L] or [1, 2, L], got {list(array.shape)}")
    ids, offsets = array[0].tolist(), array[1].tolist()
    words: list[tuple[int, ...]] = []
    start = 0
    for end in offsets:
        if end < 0:
            break
        if end < start or end > len(ids):
            raise ValueError(f"word list offsets must be non-decreasing and <= {len(ids)}, got {offsets}")
        if end > start:
            words.append(tuple(int(t) for t in ids[start:end]))
        start = end
    return tuple(words)


def ends_with_any(sequence: Sequence[int], words: WordList) -> bool:
    for word in words:
        n = len(word)
        if n <= len(sequence) and tuple(sequence[-n:]) == word:
            return True
    return False


def banned_next_tokens(sequence: Sequence[int], bad_words: WordList) -> list[int]:
    """Last token of every bad word whose other tokens end the sequence (single-token words always)."""
    banned = []
    for word in bad_words:
        prefix = word[:-1]
        if not prefix or (len(prefix) <= len(sequence) and tuple(sequence[-len(prefix):]) == prefix):
            banned.append(word[-1])
    return banned


class TokenSampler:
    """Per-request sampler: penalties over the whole sequence (prompt included, as TensorRT-LLM does), bad words,
    temperature, top-k, top-p, seeded multinomial."""

    def __init__(self, params: SamplingParams, vocab_size: int, bad_words: WordList = ()) -> None:
        self.params = params
        self.bad_words = bad_words
        self._generator = None if params.greedy else torch.Generator().manual_seed(params.seed)
        self._counts = torch.zeros(vocab_size, dtype=torch.float32) if params.uses_penalties else None

    def observe(self, token_ids: Sequence[int]) -> None:
        """Record tokens that entered the sequence (prompt or generated) for the penalties."""
        if self._counts is None or not token_ids:
            return
        ids = torch.tensor([t for t in token_ids if 0 <= t < self._counts.numel()], dtype=torch.long)
        self._counts.index_add_(0, ids, torch.ones(ids.numel(), dtype=torch.float32))

    def select(self, logits: torch.Tensor, sequence: Sequence[int]) -> int:
        logits = logits.float().clone()
        p = self.params
        if self._counts is not None:
            counts = self._counts[: logits.numel()]
            if counts.numel() < logits.numel():
                counts = torch.nn.functional.pad(counts, (0, logits.numel() - counts.numel()))
            seen = counts > 0
            if p.repetition_penalty != 1.0:
                penalized = torch.where(logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty)
                logits = torch.where(seen, penalized, logits)
            if p.presence_penalty != 0.0:
                logits = logits - p.presence_penalty * seen.float()
            if p.frequency_penalty != 0.0:
                logits = logits - p.frequency_penalty * counts
        if self.bad_words:
            banned = [t for t in banned_next_tokens(sequence, self.bad_words) if 0 <= t < logits.numel()]
            if banned:
                logits[banned] = float("-inf")
        if p.greedy:
            return int(torch.argmax(logits))
        logits = logits / p.temperature
        if p.top_k > 0 and p.top_k < logits.numel():
            kth = torch.topk(logits, p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if 0.0 < p.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= p.top_p
            logits = logits.scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
        probs = torch.softmax(logits, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self._generator))
