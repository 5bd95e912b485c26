"""Client-side copies of what the agent sends: tool-result payloads and the token-exact prompts of each turn.

Uses the agent's own ChatFormat and loop, so a prompt built here is the prompt the agent builds.
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
    """Agent prompts for one conversation whose turns the caller drives (e.g. a model that generates noise, then
    fixed tool calls): each turn's generated text is kept as the assistant's raw content, as the agent keeps a turn it
    cannot read, and the prompt is the agent's next prompt for it, token-exact where the text matches."""

    def __init__(self, chat, tools: Mapping[str, Any], user_prompt: str):
        self.chat = chat
        self.schemas = [spec.openai_schema() for spec in tools.values()]
        self.messages: list[dict] = [{"role": "user", "content": user_prompt}]
        self.prompt = chat.render_prompt(self.messages, self.schemas)

    def extend(self, generated_ids: Sequence[int], results: Sequence[tuple[str, str]]):
        """The next turn's prompt after the engine generated `generated_ids` and the tools returned `results`."""
        text = self.chat.decode([i for i in generated_ids if i not in self.chat.stop_ids])
        self.messages.append({"role": "assistant", "content": text})
        self.messages += [{"role": "tool", "tool_call_id": f"call_{i}", "name": name, "content": payload}
                          for i, (name, payload) in enumerate(results)]
        self.prompt = self.chat.continue_prompt(self.prompt, generated_ids, self.messages, self.schemas)
        return self.prompt


def scripted_turn_prompts(chat, tools: Mapping[str, Any], scenario) -> list[list[int]]:
    """Every engine prompt the agent sends for a scripted scenario (the scripted engine emits the end id): the agent's
    own loop, run on a replay of the scenario's turns."""
    from function_calling_agent.scripted_engine.replay import replay_prompts

    completions = [chat.tokenizer.encode(text, add_special_tokens=False) + [chat.end_id] for text in scenario.turns]
    prompts, _ = replay_prompts(chat, tools, [{"role": "user", "content": scenario.prompt}], completions)
    return [list(p) for p in prompts]
