"""The limits every agent run works within. The defaults here are the one source of the server's defaults: the
`config.pbtxt` parameters of function_calling_agent override them (see `adapter.parameters`)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class AgentLimits:
    """Limits of one request. Times in seconds, sizes in tokens or characters as named."""

    max_iterations: int = 5  # tool rounds per request
    max_repair_turns: int = 2  # consecutive turns of only invalid calls before the final, tool-free turn
    tool_timeout_s: float = 10.0  # default per-tool timeout (a tool may declare its own)
    request_timeout_s: float = 120.0  # whole-request deadline
    max_context_tokens: int = 8192  # prompt + max_tokens never exceed it
    max_tool_result_chars: int = 4000  # cap of each tool result (JSON, truncation marked)
    # Part of the request deadline kept for the last, tool-free answer turn.
    final_turn_reserve_s: float = 10.0
    # Longest wait for the engine's next response. Triton <= 25.03 never delivers an error that a decoupled BLS
    # stream sends after its first response, so a silent engine must be treated as failed.
    engine_idle_timeout_s: float = 60.0
