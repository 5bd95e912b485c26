"""Token-by-token generation for any Hugging Face causal LM on CPU, many requests interleaved on one thread.

One generation thread owns the model and the prefix cache. Each turn of its loop advances every active request by
one step (a prefill chunk or one decoded token), so concurrent requests progress token-interleaved, and a stop or
cancel is seen before the next step. Forward passes never overlap: on a small CPU they would only fight for cores.
"""

from __future__ import annotations

import inspect
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Sequence

import torch

from .guided import GuideCompiler, TokenGuide
from .prefix_cache import PrefixKVCache, supports_prefix_reuse
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
class _Sequence:
    request: GenerationRequest
    handle: GenerationHandle
    on_update: UpdateCallback
    should_stop: Callable[[], bool] | None
    max_new_tokens: int
    sampler: TokenSampler
    tokens: list[int]  # prompt + generated
    guide: TokenGuide | None = None
    kv_tokens: list[int] = field(default_factory=list)  # tokens whose KV is in `cache`
    cache: object = None
    started: bool = False
    reused: int = 0
    prefilled: int = 0
    generated: int = 0

    @property
    def prompt_length(self) -> int:
        return len(self.request.input_ids)


class GenerationEngine:
    def __init__(
        self,
        model,
        *,
        max_seq_len: int | None = None,
        prefix_cache_max_tokens: int = 0,
        prefill_chunk_tokens: int = 512,
        torch_threads: int = 0,
        guides: GuideCompiler | None = None,
    ) -> None:
        """`guides` compiles requests' guided-decoding guides; without it a guided request is refused."""
        if prefill_chunk_tokens <= 0:
            raise ValueError(f"prefill_chunk_tokens must be > 0, got {prefill_chunk_tokens}")
        self._model = model.eval()
        text_config = model.config.get_text_config()
        self.max_seq_len = max_seq_len or getattr(text_config, "max_position_embeddings", None) or 2048
        output_embeddings = model.get_output_embeddings()
        self.vocab_size = (
            int(output_embeddings.weight.shape[0]) if output_embeddings is not None else text_config.vocab_size
        )
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.guides = guides
        self.prefix_cache = PrefixKVCache(prefix_cache_max_tokens)
        self.prefix_reuse_supported = supports_prefix_reuse(self._new_cache())
        self._torch_threads = torch_threads
        parameters = inspect.signature(model.forward).parameters
        if "logits_to_keep" in parameters:
            self._forward_kwargs = {"logits_to_keep": 1}
        elif "num_logits_to_keep" in parameters:
            self._forward_kwargs = {"num_logits_to_keep": 1}
        else:
            self._forward_kwargs = {}
        self._cond = threading.Condition()
        self._pending: deque[_Sequence] = deque()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="cpu-generation", daemon=True)
        self._thread.start()

    @classmethod
    def from_pretrained(cls, model_dir: str, *, dtype: torch.dtype = torch.float32, **kwargs) -> "GenerationEngine":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        return cls(model, **kwargs)

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
        sampler = TokenSampler(request.sampling, self.vocab_size, request.bad_words)
        sequence = _Sequence(
            request=request,
            handle=handle,
            on_update=on_update,
            should_stop=should_stop,
            max_new_tokens=min(request.max_new_tokens, self.max_seq_len - prompt_length),
            sampler=sampler,
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

    # ---- generation thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        if self._torch_threads > 0:
            torch.set_num_threads(self._torch_threads)
        active: list[_Sequence] = []
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._pending and not active and not self._closed:
                        self._cond.wait()
                    active.extend(self._pending)
                    self._pending.clear()
                    if self._closed:
                        for sequence in active:
                            self._finish(sequence, FinishReason.CANCELLED, keep_cache=False)
                        return
                for sequence in list(active):
                    if self._step(sequence):
                        active.remove(sequence)

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self._model.config)

    def _step(self, seq: _Sequence) -> bool:
        """Advance one request by one step; True when it has finished."""
        try:
            reason = seq.handle.requested_finish
            if reason is None and seq.should_stop is not None and seq.should_stop():
                reason = FinishReason.STOPPED
            if reason is not None:
                self._finish(seq, reason)
                return True
            if not seq.started:
                self._start(seq)
                if seq.max_new_tokens == 0:
                    self._finish(seq, FinishReason.LENGTH)
                    return True
            prompt_length = seq.prompt_length
            if len(seq.kv_tokens) < prompt_length:
                done = len(seq.kv_tokens)
                chunk = seq.tokens[done : min(prompt_length, done + self.prefill_chunk_tokens)]
                logits = self._forward(seq, chunk)
                seq.prefilled += len(chunk)
                if len(seq.kv_tokens) < prompt_length:
                    return False
            else:
                logits = self._forward(seq, seq.tokens[-1:])
            if seq.guide is not None:
                seq.guide.mask(logits)
            return self._accept(seq, seq.sampler.select(logits, seq.tokens))
        except Exception as exc:  # one bad request must not take the generation thread down
            self._emit(seq, GenerationUpdate(error=exc))
            return True

    def _start(self, seq: _Sequence) -> None:
        seq.started = True
        seq.sampler.observe(seq.tokens)
        if self.prefix_reuse_supported:
            # At least one prompt token is always prefilled: its logits pick the first new token.
            hit = self.prefix_cache.lookup(seq.tokens, max_reuse=seq.prompt_length - 1)
            if hit.cache is not None:
                seq.cache, seq.reused = hit.cache, hit.length
                seq.kv_tokens = seq.tokens[: hit.length]
                return
        seq.cache = self._new_cache()

    def _forward(self, seq: _Sequence, token_ids: Sequence[int]) -> torch.Tensor:
        output = self._model(
            input_ids=torch.tensor([list(token_ids)], dtype=torch.long),
            past_key_values=seq.cache,
            use_cache=True,
            **self._forward_kwargs,
        )
        seq.cache = output.past_key_values
        seq.kv_tokens.extend(token_ids)
        return output.logits[0, -1]

    def _accept(self, seq: _Sequence, token: int) -> bool:
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

    def _finish(self, seq: _Sequence, reason: FinishReason, token: int | None = None, keep_cache: bool = True) -> None:
        if keep_cache and seq.cache is not None and seq.kv_tokens and self.prefix_reuse_supported:
            self.prefix_cache.store(seq.kv_tokens, seq.cache)
        seq.cache = None
        stats = GenerationStats(
            prompt_tokens=seq.prompt_length,
            reused_tokens=seq.reused,
            prefilled_tokens=seq.prefilled,
            generated_tokens=seq.generated,
        )
        token_ids = () if token is None else (token,)
        self._emit(seq, GenerationUpdate(token_ids=token_ids, finish_reason=reason, stats=stats))

    @staticmethod
    def _emit(seq: _Sequence, update: GenerationUpdate) -> None:
        try:
            seq.on_update(update)
        except Exception:  # the consumer is gone; it no longer wants tokens
            seq.handle.cancel()
