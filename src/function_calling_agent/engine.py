"""The one protocol the agent loop uses to talk to an engine that speaks token ids.

The loop never sees tensors or Triton: an engine client (BLS today, see `adapter.bls_engine`; a scripted engine in
tests) turns an `EngineRequest` into a stream of `EngineOutput`s.
"""

from __future__ import annotations

import dataclasses
from typing import AsyncIterator, Optional, Protocol, Sequence


class EngineError(RuntimeError):
    """The engine failed or is unavailable; the client cannot fix this (Triton `UNAVAILABLE`)."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Client sampling settings, applied to every engine turn. None means the engine's default."""

    temperature: Optional[float] = None
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    random_seed: Optional[int] = None
    repetition_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None

    def given(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class GuidedDecoding:
    """A constraint on what the engine may generate: TensorRT-LLM's `guided_decoding_guide_type` (json,
    json_schema, regex, ebnf_grammar) and `guided_decoding_guide` (the schema, pattern or grammar text)."""

    guide_type: str
    guide: str


@dataclasses.dataclass(frozen=True)
class EngineRequest:
    """One engine turn: generate at most `max_tokens` ids after `prompt_ids`."""

    request_id: str
    prompt_ids: Sequence[int]
    max_tokens: int
    sampling: SamplingParams
    end_id: int
    pad_id: int
    # Token sequences the engine must not generate (used to forbid `<tool_call>` on the last turn).
    bad_words: tuple[tuple[int, ...], ...] = ()
    # Token sequences that end the turn besides end_id: the model's other end ids (TRT-LLM takes one end_id).
    stop_words: tuple[tuple[int, ...], ...] = ()
    # The turn must follow this guide (tool_choice required or a named function); None: unconstrained.
    guided: Optional[GuidedDecoding] = None


@dataclasses.dataclass(frozen=True)
class EngineOutput:
    """One streamed response: the newly generated ids (never the prompt), and what the engine reports about reuse.

    `reused_prompt_tokens` is the number of prompt tokens the engine did not have to prefill (prefix/KV-cache reuse),
    when the engine reports it; None otherwise.
    """

    token_ids: tuple[int, ...]
    reused_prompt_tokens: Optional[int] = None


class EngineClient(Protocol):
    """An engine that streams generated token ids.

    `generate` yields `EngineOutput`s until the turn ends; the last ids may or may not be the end id. `stop` asks the
    engine to end the generation with that request id early; the stream then ends. Both raise `EngineError` when the
    engine fails.
    """

    supports_bad_words: bool

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        ...

    async def stop(self, request_id: str) -> None:
        ...
