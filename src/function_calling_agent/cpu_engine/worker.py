"""What both CPU engines share around their generation thread: the request/update types, and the scaffolding that
queues requests, runs the thread, acts on stop/cancel, and finishes a request with its stats.

`GenerationWorker` is the base of `engine.GenerationEngine` (torch) and `llamacpp_engine.LlamaCppEngine`; they only
say how requests are admitted and advanced by a step of tokens, and what a request holds of the model (a KV cache,
a llama.cpp sequence slot) that must be released when it ends.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, ContextManager, Iterable

from .guided import GuideCompiler, TokenGuide
from .sampling import SamplingParams, TokenSampler, WordList, ends_with_any


class FinishReason(str, Enum):
    END_ID = "end_id"
    STOP_WORDS = "stop_words"
    LENGTH = "length"
    STOPPED = "stopped"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class GenerationRequest:
    input_ids: tuple[int, ...]
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    end_id: int | None = None
    stop_words: WordList = ()
    bad_words: WordList = ()
    guide: tuple[str, str] | None = None  # (guided_decoding_guide_type, guided_decoding_guide)


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    reused_tokens: int
    prefilled_tokens: int
    generated_tokens: int


@dataclass(frozen=True)
class GenerationUpdate:
    """New tokens of one step; the last update of a request carries its finish reason (or error) and stats.

    A request ended by end_id does not return the end_id token (TensorRT-LLM's executor behaves the same);
    stop words are returned.
    """

    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason | None = None
    stats: GenerationStats | None = None
    error: BaseException | None = None

    @property
    def final(self) -> bool:
        return self.finish_reason is not None or self.error is not None


@dataclass(frozen=True)
class GenerationResult:
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    stats: GenerationStats


class GenerationHandle:
    """Lets the submitter end a request early; acted on before the request's next step."""

    def __init__(self) -> None:
        self._requested: FinishReason | None = None

    def stop(self) -> None:
        if self._requested is None:
            self._requested = FinishReason.STOPPED

    def cancel(self) -> None:
        self._requested = FinishReason.CANCELLED

    @property
    def requested_finish(self) -> FinishReason | None:
        return self._requested


UpdateCallback = Callable[[GenerationUpdate], None]


@dataclass
class SequenceState:
    """One request on the generation thread; an engine subclasses it with what it holds of the model."""

    request: GenerationRequest
    handle: GenerationHandle
    on_update: UpdateCallback
    should_stop: Callable[[], bool] | None
    max_new_tokens: int
    sampler: TokenSampler
    tokens: list[int]  # prompt + generated
    guide: TokenGuide | None = None
    reused: int = 0
    prefilled: int = 0
    generated: int = 0

    @property
    def prompt_length(self) -> int:
        return len(self.request.input_ids)


class GenerationWorker:
    """submit/generate/close over one generation thread; subclasses fill in the steps.

    A subclass sets `max_seq_len`, `vocab_size`, `guides` and `sequence_type`, then calls `_launch(name)` at the end
    of its `__init__`. Its hooks run on the generation thread: `_enqueue(arrivals)` takes newly submitted requests,
    `_advance()` runs one step of those it holds, `_unfinished()` lists them (cancelled on close), `_release(seq,
    keep_cache)` frees what a request holds of the model when it ends.
    """

    sequence_type: type[SequenceState] = SequenceState
    max_seq_len: int
    vocab_size: int
    guides: GuideCompiler | None

    def __init__(self, *, prefill_chunk_tokens: int) -> None:
        if prefill_chunk_tokens <= 0:
            raise ValueError(f"prefill_chunk_tokens must be > 0, got {prefill_chunk_tokens}")
        self._cond = threading.Condition()
        self._pending: deque[SequenceState] = deque()
        self._closed = False

    def _launch(self, thread_name: str) -> None:
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self._thread.start()

    def submit(
        self,
        request: GenerationRequest,
        on_update: UpdateCallback,
        should_stop: Callable[[], bool] | None = None,
    ) -> GenerationHandle:
        """Queue a request; `on_update` is called from the generation thread. Raises ValueError on bad input."""
        prompt_length = len(request.input_ids)
        if prompt_length == 0:
            raise ValueError("input_ids must hold at least one token")
        if prompt_length >= self.max_seq_len:
            raise ValueError(f"prompt of {prompt_length} tokens leaves no room under max_seq_len {self.max_seq_len}")
        if request.max_new_tokens < 0:
            raise ValueError(f"request_output_len must be >= 0, got {request.max_new_tokens}")
        bad = [t for t in request.input_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"input_ids hold ids outside the vocabulary [0, {self.vocab_size}): {bad[:5]}")
        guide = None
        if request.guide is not None:
            if self.guides is None:
                raise ValueError("guided decoding needs the model's tokenizer, which this engine has not loaded")
            guide = self.guides.compile(*request.guide, end_id=request.end_id)  # GuideError is a ValueError
        handle = GenerationHandle()
        sequence = self.sequence_type(
            request=request,
            handle=handle,
            on_update=on_update,
            should_stop=should_stop,
            max_new_tokens=min(request.max_new_tokens, self.max_seq_len - prompt_length),
            sampler=TokenSampler(request.sampling, self.vocab_size, request.bad_words),
            tokens=list(request.input_ids),
            guide=guide,
        )
        with self._cond:
            if self._closed:
                raise RuntimeError("generation engine is closed")
            self._pending.append(sequence)
            self._cond.notify()
        return handle

    def generate(
        self, request: GenerationRequest, should_stop: Callable[[], bool] | None = None, timeout: float | None = None
    ) -> GenerationResult:
        """Blocking convenience: run one request to its end."""
        updates: queue.Queue[GenerationUpdate] = queue.Queue()
        self.submit(request, updates.put, should_stop)
        tokens: list[int] = []
        while True:
            update = updates.get(timeout=timeout)
            if update.error is not None:
                raise update.error
            tokens.extend(update.token_ids)
            if update.final:
                return GenerationResult(tuple(tokens), update.finish_reason, update.stats)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel what is queued or running and stop the generation thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._closed_down()

    # ---- hooks ------------------------------------------------------------------------------------------------

    def _generation_context(self) -> ContextManager:
        """Entered by the generation thread around its whole loop."""
        return contextlib.nullcontext()

    def _enqueue(self, arrivals: Iterable[SequenceState]) -> None:
        raise NotImplementedError

    def _unfinished(self) -> list[SequenceState]:
        raise NotImplementedError

    def _advance(self) -> None:
        raise NotImplementedError

    def _release(self, seq: SequenceState, keep_cache: bool) -> None:
        """Free what `seq` holds of the model; keep its KV for prefix reuse when `keep_cache`."""

    def _closed_down(self) -> None:
        """After close() once the generation thread has ended."""

    # ---- generation thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        with self._generation_context():
            while True:
                with self._cond:
                    while not self._pending and not self._unfinished() and not self._closed:
                        self._cond.wait()
                    self._enqueue(self._pending)
                    self._pending.clear()
                    if self._closed:
                        for sequence in self._unfinished():
                            self._finish(sequence, FinishReason.CANCELLED, keep_cache=False)
                        return
                self._advance()

    def _should_end(self, seq: SequenceState) -> bool:
        """Finish `seq` when its submitter stopped or cancelled it; True when it has ended."""
        reason = seq.handle.requested_finish
        if reason is None and seq.should_stop is not None:
            try:
                if seq.should_stop():
                    reason = FinishReason.STOPPED
            except Exception as exc:  # a broken stop check ends only its own request
                self._fail(seq, exc)
                return True
        if reason is not None:
            self._finish(seq, reason)
            return True
        return False

    def _accept(self, seq: SequenceState, token: int) -> bool:
        """Take a sampled token; True when it ended the request."""
        request = seq.request
        if request.end_id is not None and token == request.end_id:
            self._finish(seq, FinishReason.END_ID)
            return True
        if seq.guide is not None:
            seq.guide.accept(token)
        seq.tokens.append(token)
        seq.generated += 1
        seq.sampler.observe((token,))
        if request.stop_words and ends_with_any(seq.tokens[seq.prompt_length :], request.stop_words):
            self._finish(seq, FinishReason.STOP_WORDS, token)
            return True
        if seq.generated >= seq.max_new_tokens:
            self._finish(seq, FinishReason.LENGTH, token)
            return True
        self._emit(seq, GenerationUpdate(token_ids=(token,)))
        return False

    def _finish(
        self, seq: SequenceState, reason: FinishReason, token: int | None = None, keep_cache: bool = True
    ) -> None:
        self._release(seq, keep_cache)
        stats = GenerationStats(
            prompt_tokens=seq.prompt_length,
            reused_tokens=seq.reused,
            prefilled_tokens=seq.prefilled,
            generated_tokens=seq.generated,
        )
        token_ids = () if token is None else (token,)
        self._emit(seq, GenerationUpdate(token_ids=token_ids, finish_reason=reason, stats=stats))

    def _fail(self, seq: SequenceState, error: BaseException) -> None:
        self._release(seq, keep_cache=False)
        self._emit(seq, GenerationUpdate(error=error))

    @staticmethod
    def _emit(seq: SequenceState, update: GenerationUpdate) -> None:
        try:
            seq.on_update(update)
        except Exception:  # the consumer is gone; it no longer wants tokens
            seq.handle.cancel()
