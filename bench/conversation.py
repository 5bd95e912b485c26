"""Client-side copies of what the agent sends: tool-result payloads and the token-exact prompts of each turn.

Uses the agent's own ChatFormat (imported from the model folder), so a prompt built here is the prompt the agent
builds: turn k+1 = turn k's prompt + the ids generated in turn k + the end of that turn + the tool turn.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence


def tool_message_content(name: str, value: Any) -> str:
    """The agent's tool-result payload: `{"name": ..., "content": <compact JSON>}`."""
    from function_calling_agent.tools.results import serialize_result

    return '{"name": ' + json.dumps(name, ensure_ascii=False) + ', "content": ' + serialize_result(value, 4000) + "}"


def run_calls(tools: Mapping[str, Any], calls: Sequence[tuple[str, dict]]) -> list[tuple[str, str]]:
    """Runs (name, arguments) calls with the registry's functions; returns (name, payload) for the tool turn."""
    return [(name, tool_message_content(name, tools[name].fn(**arguments))) for name, arguments in calls]


def parse_calls(text: str) -> list[tuple[str, dict]]:
    from bench.seed_client_loop import TOOL_CALL

    return [(c["name"], c.get("arguments") or {}) for c in map(json.loads, TOOL_CALL.findall(text))]


class AgentPrompts:
    """Token-exact agent prompts for one conversation, extended turn by turn."""

    def __init__(self, chat, tools: Mapping[str, Any], user_prompt: str):
        self.chat = chat
        self.tools = tools
        schemas = [spec.openai_schema() for spec in tools.values()]
        self.prompt: list[int] = chat.render_prompt([{"role": "user", "content": user_prompt}], schemas)

    def extend(self, generated_ids: Sequence[int], results: Sequence[tuple[str, str]]) -> list[int]:
        """The next turn's prompt after the engine generated `generated_ids` and the tools returned `results`."""
        self.prompt = (self.prompt + list(generated_ids) + self.chat.close_assistant_turn(list(generated_ids))
                       + self.chat.tool_turn(list(results)))
        return self.prompt


def scripted_turn_prompts(chat, tools: Mapping[str, Any], scenario) -> list[list[int]]:
    """Every engine prompt the agent sends for a scripted scenario (the scripted engine emits the end id)."""
    prompts = AgentPrompts(chat, tools, scenario.prompt)
    out = [list(prompts.prompt)]
    for text in scenario.turns[:-1]:
        generated = chat.tokenizer.encode(text, add_special_tokens=False) + [chat.end_id]
        out.append(list(prompts.extend(generated, run_calls(tools, parse_calls(text)))))
    return out
