"""Token-by-token generation for any Hugging Face causal LM on CPU, many requests interleaved on one thread.

One generation thread owns the model and the prefix cache. Each turn of its loop advances every active request by
one step (a prefill chunk or one decoded token), so concurrent requests progress token-interleaved, and a stop or
cancel is seen before the next step. Forward passes never overlap: on a small CPU they would only fight for cores.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

from .guided import GuideCompiler
from .prefix_cache import PrefixKVCache, supports_prefix_reuse
from .worker import FinishReason, GenerationWorker, SequenceState


@dataclass
class _Sequence(SequenceState):
    kv_tokens: list[int] = field(default_factory=list)  # tokens whose KV is in `cache`
    cache: object = None
    started: bool = False


class GenerationEngine(GenerationWorker):
    sequence_type = _Sequence

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
        super().__init__(prefill_chunk_tokens=prefill_chunk_tokens)
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
        self._active: list[_Sequence] = []  # the generation thread's
        self._launch("cpu-generation")

    @classmethod
    def from_pretrained(cls, model_dir: str, *, dtype: torch.dtype = torch.float32, **kwargs) -> "GenerationEngine":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        return cls(model, **kwargs)

    # ---- generation thread ------------------------------------------------------------------------------------

    def _generation_context(self):
        if self._torch_threads > 0:
            torch.set_num_threads(self._torch_threads)
        return torch.inference_mode()

    def _enqueue(self, arrivals: Iterable[_Sequence]) -> None:
        self._active.extend(arrivals)

    def _unfinished(self) -> list[_Sequence]:
        return self._active

    def _advance(self) -> None:
        for sequence in list(self._active):
            if self._step(sequence):
                self._active.remove(sequence)

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self._model.config)

    def _step(self, seq: _Sequence) -> bool:
        """Advance one request by one step; True when it has finished."""
        try:
            if self._should_end(seq):
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
            self._fail(seq, exc)
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

    def _release(self, seq: _Sequence, keep_cache: bool) -> None:
        if keep_cache and seq.cache is not None and seq.kv_tokens and self.prefix_reuse_supported:
            self.prefix_cache.store(seq.kv_tokens, seq.cache)
        seq.cache = None
