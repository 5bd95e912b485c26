"""Token generation on llama.cpp for the `tensorrt_llm` contract: many requests batched into each llama_decode.

One generation thread owns the llama.cpp context. Every step it puts the next token of each decoding request and a
chunk of each prefilling prompt into one batch and decodes it (so concurrent requests progress together, and a
decode step of N requests costs little more than one on a memory-bound CPU), then samples each request's next
token with the torch engine's sampler (TensorRT-LLM semantics) and acts on stop/cancel before the next step.

Requests and updates are the torch engine's types (`cpu_engine.GenerationRequest`, `GenerationUpdate`, ...), so the
Triton adapter and the contract parsing are shared; so is the scaffolding around the generation thread
(`cpu_engine.worker.GenerationWorker`: submit/generate/close, stop and cancel, finishing a request).

Prefix reuse: the context's unified KV cache holds `n_seq_max` sequence slots. A finished request leaves its
tokens' KV in its slot; a new request takes the free slot whose cached tokens share the longest prefix with its
prompt (or copies that prefix by reference from any other slot) and only evaluates the rest. Cached slots are evicted
least recently used first when the cache needs room.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

import torch

from ..cpu_engine.guided import GuideCompiler
from ..cpu_engine.worker import FinishReason, GenerationWorker, SequenceState
from .binding import LlamaModel

_NO_ROOM = 1  # llama_decode: the KV cache has no room for this batch


@dataclass
class _Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # tokens whose KV this sequence holds, by position
    owner: "_Sequence | None" = None
    last_used: int = 0


@dataclass
class _Sequence(SequenceState):
    slot: _Slot | None = None

    @property
    def reservation(self) -> int:
        """KV cells this request may need at most."""
        return self.prompt_length + self.max_new_tokens


def _common_prefix(a: list[int], b: tuple[int, ...] | list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class LlamaCppEngine(GenerationWorker):
    """Same interface as `cpu_engine.GenerationEngine` (submit/generate/close, max_seq_len, vocab_size)."""

    sequence_type = _Sequence

    def __init__(
        self,
        model: LlamaModel,
        *,
        max_seq_len: int = 0,
        prefill_chunk_tokens: int = 512,
        prefix_reuse: bool = True,
        guides: GuideCompiler | None = None,
    ) -> None:
        super().__init__(prefill_chunk_tokens=prefill_chunk_tokens)
        self._model = model
        limit = min(model.n_ctx, model.n_ctx_train or model.n_ctx)
        if max_seq_len > model.n_ctx:
            raise ValueError(f"max_seq_len {max_seq_len} exceeds the KV cache of {model.n_ctx} tokens "
                             "(raise kv_cache_tokens)")
        self.max_seq_len = max_seq_len or limit
        self.vocab_size = model.n_vocab
        self.prefill_chunk_tokens = min(prefill_chunk_tokens, model.n_batch)
        self.prefix_reuse_supported = prefix_reuse
        self.guides = guides
        self._slots = [_Slot(seq_id) for seq_id in range(model.n_seq_max)]
        self._clock = itertools.count(1)
        # the generation thread's: requests waiting for a slot or KV room, and those being decoded
        self._waiting: deque[_Sequence] = deque()
        self._active: list[_Sequence] = []
        self._launch("llamacpp-generation")

    def cached_sequences(self) -> list[tuple[int, ...]]:
        """Token sequences whose KV the idle slots keep, least recently used first (a snapshot; for tests)."""
        with self._cond:
            idle = [s for s in self._slots if s.owner is None and s.tokens]
            return [tuple(s.tokens) for s in sorted(idle, key=lambda s: s.last_used)]

    def _closed_down(self) -> None:
        """close() frees the llama.cpp context once the generation thread has ended."""
        self._model.close()

    # ---- generation thread ------------------------------------------------------------------------------------

    def _enqueue(self, arrivals: Iterable[_Sequence]) -> None:
        self._waiting.extend(arrivals)

    def _unfinished(self) -> list[_Sequence]:
        return list(self._active) + list(self._waiting)

    def _advance(self) -> None:
        waiting, active = self._waiting, self._active
        for sequence in list(active):
            if self._should_end(sequence):
                active.remove(sequence)
        for sequence in list(waiting):
            if self._should_end(sequence):
                waiting.remove(sequence)
        self._admit(waiting, active)
        if active:
            self._step(active)

    def _admit(self, waiting: deque[_Sequence], active: list[_Sequence]) -> None:
        """Start waiting requests in arrival order while a slot is free and the KV cache can hold them."""
        reserved = sum(seq.reservation for seq in active)
        while waiting:
            seq = waiting[0]
            free = [slot for slot in self._slots if slot.owner is None]
            if not free or (active and reserved + seq.reservation > self._model.n_ctx):
                return
            waiting.popleft()
            try:
                self._start(seq, free)
            except Exception as exc:
                self._fail(seq, exc)
                continue
            if seq.max_new_tokens == 0:
                self._finish(seq, FinishReason.LENGTH)
                continue
            active.append(seq)
            reserved += seq.reservation

    def _start(self, seq: _Sequence, free: list[_Slot]) -> None:
        seq.sampler.observe(seq.tokens)
        prompt = seq.request.input_ids
        # At least one prompt token is always evaluated: its logits pick the first new token.
        limit = seq.prompt_length - 1
        source, best = None, 0
        if self.prefix_reuse_supported:
            for slot in self._slots:  # running requests' prefixes count too: copying shares their cells
                length = min(_common_prefix(slot.tokens, prompt), limit)
                if length > best:
                    source, best = slot, length
        # A free slot whose cached tokens all lead into this prompt loses nothing when taken (an agent's previous
        # turn, an empty slot); otherwise the least recently used one gives up its cache. A longer cached
        # sequence that only shares a prefix stays intact: the prefix is copied out of it.
        covered = [s for s in free if _common_prefix(s.tokens, prompt) == len(s.tokens)]
        if source is not None and source in covered:
            target = source
        elif covered:
            target = max(covered, key=lambda s: len(s.tokens))
        else:
            target = min(free, key=lambda s: s.last_used)
        with self._cond:  # cached_sequences() reads slots from other threads
            if source is None or best == 0:
                self._model.clear(target.seq_id)
                target.tokens = []
                best = 0
            elif target is source:
                if self._model.truncate(target.seq_id, best):
                    del target.tokens[best:]
                else:
                    self._model.clear(target.seq_id)
                    target.tokens = []
                    best = 0
            else:
                self._model.clear(target.seq_id)
                self._model.copy_prefix(source.seq_id, target.seq_id, best)
                target.tokens = list(source.tokens[:best])
            target.owner = seq
        seq.slot = target
        seq.reused = best

    def _step(self, active: list[_Sequence]) -> None:
        """One llama_decode: one token for every decoding request, prompt chunks for prefilling ones."""
        items, owners = [], []
        budget = self._model.n_batch
        for seq in active:
            if len(seq.slot.tokens) >= seq.prompt_length:
                items.append((seq.slot.seq_id, len(seq.slot.tokens), seq.tokens[-1:], True))
                owners.append(seq)
                budget -= 1
        budget = min(budget, self.prefill_chunk_tokens)
        for seq in active:
            done = len(seq.slot.tokens)
            if done < seq.prompt_length and budget > 0:
                chunk = seq.tokens[done:min(seq.prompt_length, done + budget)]
                items.append((seq.slot.seq_id, done, chunk, done + len(chunk) == seq.prompt_length))
                owners.append(seq)
                budget -= len(chunk)
        if not items:
            return
        try:
            status, rows = self._model.decode(items)
            while status == _NO_ROOM and self._evict_one():
                status, rows = self._model.decode(items)
        except Exception as exc:
            status, error = -1, exc
        else:
            error = None if status == 0 else RuntimeError(
                f"llama_decode failed with status {status}" + (
                    f" (no room in the KV cache of {self._model.n_ctx} tokens: raise kv_cache_tokens or lower "
                    "max_sequences)" if status == _NO_ROOM else ""))
        if error is not None:
            for seq in owners:
                self._fail(seq, error)
                active.remove(seq)
            return
        for seq, (_, _, tokens, _), row in zip(owners, items, rows):
            if len(seq.slot.tokens) < seq.prompt_length:
                seq.prefilled += len(tokens)
            seq.slot.tokens.extend(tokens)
            if row < 0:
                continue
            try:
                logits = torch.from_numpy(self._model.logits(row))
                if seq.guide is not None:
                    seq.guide.mask(logits)
                token = seq.sampler.select(logits, seq.tokens)
                if self._accept(seq, token):
                    active.remove(seq)
            except Exception as exc:  # one bad request must not take the generation thread down
                self._fail(seq, exc)
                active.remove(seq)

    def _evict_one(self) -> bool:
        """Drop the least recently used idle slot's cached KV; False when none is left."""
        cached = [s for s in self._slots if s.owner is None and s.tokens]
        if not cached:
            return False
        victim = min(cached, key=lambda s: s.last_used)
        with self._cond:
            self._model.clear(victim.seq_id)
            victim.tokens = []
        return True

    def _release(self, seq: _Sequence, keep_cache: bool) -> None:
        slot = seq.slot
        if slot is None:
            return
        with self._cond:
            if not (keep_cache and self.prefix_reuse_supported):
                self._model.clear(slot.seq_id)
                slot.tokens = []
            slot.owner = None
            slot.last_used = next(self._clock)
        seq.slot = None
