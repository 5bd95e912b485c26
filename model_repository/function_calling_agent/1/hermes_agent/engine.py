"""The one protocol the agent loop uses to talk to an engine that speaks token ids."""

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
class EngineRequest:
    request_id: str
    prompt_ids: Sequence[int]
    max_tokens: int
    sampling: SamplingParams
    end_id: int
    pad_id: int
    # Token sequences the engine must not generate (used to forbid `<tool_call>` on the last turn).
    bad_words: tuple[tuple[int, ...], ...] = ()


@dataclasses.dataclass
class EngineTurnStats:
    """What the engine reports about one turn, when it can (e.g. prefix-cache reuse)."""

    reused_prompt_tokens: int = 0


class EngineClient(Protocol):
    """An engine that streams generated token ids.

    `generate` yields lists of newly generated ids (never the prompt) until the turn ends; it may or may not end with
    the end token. `stop` asks the engine to end the generation with that request id early; the stream then ends.
    """

    supports_bad_words: bool

    def generate(self, request: EngineRequest, stats: EngineTurnStats) -> AsyncIterator[list[int]]:
        ...

    async def stop(self, request_id: str) -> None:
        ...
