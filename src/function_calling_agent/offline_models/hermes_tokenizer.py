"""Offline stand-in for the Hermes-2-Pro-Llama-3 tokenizer.

No model hub is reachable, so tests train a small byte-level BPE in milliseconds with the
same special tokens (ChatML and tool tags) and the same bos/eos/pad roles.
"""

from __future__ import annotations

import os

BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
EOT_ID = "<|eot_id|>"

SPECIAL_TOKENS = (
    BEGIN_OF_TEXT,
    END_OF_TEXT,
    IM_START,
    IM_END,
    "<tool_call>",
    "</tool_call>",
    "<tools>",
    "</tools>",
    "<tool_response>",
    "</tool_response>",
    EOT_ID,
)

VOCAB_SIZE = 2000

# Plain ChatML with no tool support. Like Hermes-2-Pro's checkpoints, the tokenizer carries two templates: this as
# `default` and a tool template as `tool_use` (here the agent's built-in Hermes template).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "You are a function calling AI model. You are provided with function signatures within <tools></tools> XML tags.",
    "You may call one or more functions to assist with the user query. Don't make assumptions about what values to plug into functions.",
    "For each function call return a json object with function name and arguments within <tool_call></tool_call> XML tags.",
    "What is the current stock price of Rivian? The symbol is RIVN. Show me the latest news about Tesla (TSLA).",
    "The stock price of Rivian (RIVN) is 12.34 USD. The market cap is 12,345,678,901 and the volume is 9876543.",
    "get_current_stock_price get_stock_fundamentals get_company_news get_analyst_recommendations get_key_financial_ratios",
    "get_stock_price get_historical_prices get_dividends symbol ticker price news period interval start end date",
    '{"name": "get_current_stock_price", "arguments": {"symbol": "RIVN"}}',
    '{"name": "get_company_news", "arguments": {"symbol": "AAPL", "limit": 5}}',
    '{"type": "function", "function": {"name": "get_stock_fundamentals", "description": "Get fundamental data for a stock.",'
    ' "parameters": {"type": "object", "properties": {"symbol": {"type": "string", "description": "The stock symbol."}},'
    ' "required": ["symbol"]}}}',
    '{"symbol": "RIVN", "price": 12.34, "currency": "USD", "change": -0.56, "percent": -4.3, "ok": true, "error": null}',
    "[1, 2, 3, 4, 5, 6, 7, 8, 9, 0] 0123456789 3.14159 -42 1e6 100% $5 €5 ¥100 £20",
    "The price of the stock rose by 5% today after the news. Analysts recommend buy, hold or sell.",
    "Apple Microsoft Amazon Google Nvidia Tesla Rivian Ford company revenue earnings dividend yield ratio",
    "user assistant system tool function arguments name content role message response result answer question",
    "Hello! How can I help you today? Thank you. I'm sorry, I cannot do that. Here is the information you asked for.",
    "the quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX. a an and are as at be by for from has he in is it",
]


# Seen once only: with min_frequency=2 these stay split into byte-level pieces, so streaming
# detokenization gets multi-byte characters spread over several tokens.
_RARE_NON_ASCII = "株価 株式 会社 今日の株価は？ 😀 🚀 📈 café naïve Zürich"

_WORDS = (
    "about above account across action add after again against age ago agree air all allow almost alone along already"
    " also always amount analysis annual another answer any appear apply area argue around article ask asset average"
    " back balance bank base bear because become before begin behind believe best better between big bill billion"
    " board bond book both brand break bring budget build bull business buy call capital car card care case cash cause"
    " center certain chance change chart check choose city claim class clear close come common company compare"
    " consider continue control cost could country course credit current customer data day deal debt decide decline"
    " demand describe detail develop difference direct dollar down drop during each early earn economy effect either"
    " end energy enough equity estimate even event every example exchange expect explain fact fall family far fast"
    " fee field figure file final finance find firm first fiscal follow force forecast form forward fund future gain"
    " general give global good government great group grow growth guidance half hand happen hard have head hedge help"
    " high history hold home hour however hundred idea important include income increase index industry inflation"
    " information interest invest investor issue item just keep key kind know large last late later lead learn least"
    " leave less level likely limit line list little live loan local long look loss low main major make manage many"
    " margin market may mean measure meet method million minute model money month more most move much must need net"
    " never new next night number offer office often only open operate option order other over own paper part past"
    " pay people per percent period place plan point policy position possible power present pressure previous"
    " private probably problem process produce product profit provide public quarter question quick quite range rate"
    " rather reach read real reason receive recent record reduce region report request require research result return"
    " revenue right risk rule sale same save say season second sector security see sell send series service set"
    " share short should show side since single size small social some source speak spend stand start state still"
    " strong study such supply support sure system table take talk target tax team term test than that then there"
    " these thing think third this those though thousand through time today together total trade trend true try turn"
    " under unit until up upon use usually value very view wait want watch week well what when where whether which"
    " while who whole why will with within without word work world would write year yesterday yet yield you young"
)


def _training_corpus() -> list[str]:
    import random

    rng = random.Random(0)
    words = _WORDS.split()
    lines = list(_CORPUS) * 6
    for _ in range(400):
        lines.append(" ".join(rng.choice(words) for _ in range(12)).capitalize() + ".")
        lines.append(f'{{"symbol": "{rng.choice(["RIVN", "AAPL", "TSLA", "MSFT", "NVDA"])}", "price": {rng.uniform(1, 900):.2f}}}')
    for word in words:
        lines.extend([word, word.capitalize(), word.upper()])
    lines.append(_RARE_NON_ASCII)
    return lines


def _train_backend():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # Like Llama-3: every encoded text starts with <|begin_of_text|>.
    bos_id = SPECIAL_TOKENS.index(BEGIN_OF_TEXT)
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BEGIN_OF_TEXT} $A",
                pair=f"{BEGIN_OF_TEXT} $A {BEGIN_OF_TEXT} $B",
                special_tokens=[(BEGIN_OF_TEXT, bos_id)],
            ),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_corpus(), trainer=trainer)
    return tokenizer


# Bumped whenever what build_hermes_tokenizer writes changes, so a cached copy (e.g. under .serve/) is rebuilt.
VERSION = "2"
_MARKER = ".hermes-tokenizer-version"


def build_hermes_tokenizer(directory: str | os.PathLike, with_chat_template: bool = True) -> str:
    """Train and save the tokenizer into `directory` (kept if it already holds this version); return the path."""
    from transformers import PreTrainedTokenizerFast

    from ..chat_format import BUILTIN_HERMES_TEMPLATE

    directory = os.fspath(directory)
    marker = os.path.join(directory, _MARKER)
    if os.path.isfile(marker) and open(marker, encoding="utf-8").read().strip() == f"{VERSION} {with_chat_template}":
        return directory
    os.makedirs(directory, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_backend(),
        bos_token=BEGIN_OF_TEXT,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (BEGIN_OF_TEXT, IM_END, END_OF_TEXT)],
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    if with_chat_template:
        tokenizer.chat_template = {"default": CHATML_TEMPLATE, "tool_use": BUILTIN_HERMES_TEMPLATE}
    tokenizer.save_pretrained(directory)
    with open(marker, "w", encoding="utf-8") as f:
        f.write(f"{VERSION} {with_chat_template}\n")
    return directory
