"""The benchmark conversations: one scripted-engine script that both the agent and the seed-style loop replay.

The scripted engine picks a scenario by a substring of the first user message and the turn by the number of
`<|im_start|>assistant` in the prompt, so both paths get the same completions as long as they send the same
conversation. `{tool_response}` in a final turn becomes the last tool result, so the answer also proves that the
tool results reached the prompt.
"""

from __future__ import annotations

import dataclasses


def _call(name: str, symbol: str) -> str:
    return '<tool_call>\n{"name": "%s", "arguments": {"symbol": "%s"}}\n</tool_call>' % (name, symbol)


def price_call(symbol: str) -> str:
    return _call("get_current_stock_price", symbol)


def news_call(symbol: str) -> str:
    return _call("get_company_news", symbol)


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    match: str  # substring of the prompt the scripted engine keys on
    prompt: str
    turns: tuple[str, ...]  # engine completions, turn by turn; the last one is the answer
    tool_rounds: tuple[int, ...]  # tool calls per round (rounds = turns - 1)
    description: str

    @property
    def engine_turns(self) -> int:
        return len(self.turns)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        name="direct",
        match="What can you do",
        prompt="What can you do for me?",
        turns=("I can look up current stock prices and recent company news for any ticker symbol. Ask me about a "
               "company, for example Rivian (RIVN), and I will fetch the data with my tools.",),
        tool_rounds=(),
        description="answer without tools (1 engine turn)",
    ),
    Scenario(
        name="one_tool",
        match="Apple",
        prompt="What is the stock price of Apple (AAPL)?",
        turns=(price_call("AAPL"), "Apple (AAPL) trades at 189.50 USD right now. Source data: {tool_response}"),
        tool_rounds=(1,),
        description="one tool call, then the answer (2 engine turns)",
    ),
    Scenario(
        name="two_tools",
        match="Rivian",
        prompt="Give me Rivian (RIVN) news and stock price",
        turns=(price_call("RIVN") + "\n" + news_call("RIVN"),
               "Rivian (RIVN) trades at 12.34 USD. The latest headlines: {tool_response}"),
        tool_rounds=(2,),
        description="two independent tool calls in one turn, then the answer (2 engine turns)",
    ),
    Scenario(
        name="chained",
        match="NVIDIA",
        prompt="Check the NVIDIA (NVDA) stock price, then look up its news",
        turns=(price_call("NVDA"), news_call("NVDA"),
               "NVIDIA (NVDA) trades at 131.20 USD. Recent news: {tool_response}"),
        tool_rounds=(1, 1),
        description="two dependent tool calls in two turns, then the answer (3 engine turns)",
    ),
)

BY_NAME = {s.name: s for s in SCENARIOS}
TWO_TOOLS = BY_NAME["two_tools"]


def engine_script() -> dict:
    """The scripted engine's script for all scenarios."""
    return {
        "scenarios": [{"name": s.name, "match": s.match, "turns": list(s.turns)} for s in SCENARIOS],
        "default_turns": ["I do not know that conversation."],
    }
