"""The agent tokenizes with the Hugging Face tokenizer and the engine reads ids: both must mean the same tokens.

`check_vocabulary` compares a GGUF vocabulary with that tokenizer where a difference would corrupt a conversation:
the chat and tool markup tokens (ids the agent writes and parses), the tokenizer's bos/eos, a spread of ordinary
ids, and the tokenization of a sample text with markup, JSON, numbers and multi-byte characters.
"""

from __future__ import annotations

from typing import Protocol, Sequence

# Markup the agent writes into prompts or parses out of generations; checked wherever either side has it.
MARKUP_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)

SAMPLE_TEXT = (
    "<|im_start|>system\nYou are a function calling AI model.<|im_end|>\n"
    "<|im_start|>user\nGive me Rivian (RIVN) news and stock price: 12.34 USD, 1234567 shares, -4.3%.\t"
    "株価 café 😀 €5  two  spaces\n\n<|im_end|>\n"
    '<|im_start|>assistant\n<tool_call>\n{"name": "get_current_stock_price", "arguments": {"symbol": "RIVN"}}\n'
    "</tool_call><|im_end|>\n"
    '<|im_start|>user\n<tool_response>\n{"price": 12.34, "ok": true}\n</tool_response><|im_end|>\n'
)
ID_SAMPLES = 256


class VocabularyMismatch(ValueError):
    """The GGUF file and the tokenizer disagree; the message names the first differences."""


class GgufVocabulary(Protocol):
    n_vocab: int

    def token_text(self, token_id: int) -> str: ...

    def tokenize(self, text: str, parse_special: bool = True) -> list[int]: ...


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return min(len(a), len(b))


def check_vocabulary(gguf: GgufVocabulary, tokenizer, *, gguf_name: str = "the GGUF file",
                     tokenizer_name: str = "the tokenizer") -> None:
    """Raise VocabularyMismatch unless `gguf` and the Hugging Face `tokenizer` agree on ids the agent relies on."""
    problems: list[str] = []
    size = len(tokenizer)
    if size > gguf.n_vocab:
        problems.append(f"{tokenizer_name} has {size} tokens but {gguf_name} only {gguf.n_vocab}")

    vocab = tokenizer.get_vocab()
    for token in MARKUP_TOKENS:
        hf_id = vocab.get(token)
        gguf_ids = gguf.tokenize(token, parse_special=True)
        gguf_id = gguf_ids[0] if len(gguf_ids) == 1 else None
        if hf_id is None and gguf_id is None:
            continue
        if hf_id != gguf_id:
            problems.append(f"{token}: id {hf_id} in {tokenizer_name}, "
                            f"{gguf_id if gguf_id is not None else 'not a single token'} in {gguf_name}")

    for role in ("bos_token", "eos_token", "pad_token"):
        token = getattr(tokenizer, role, None)
        token_id = getattr(tokenizer, f"{role}_id", None)
        if token is None or token_id is None:
            continue
        if token_id >= gguf.n_vocab or gguf.token_text(token_id) != str(token):
            text = gguf.token_text(token_id) if token_id < gguf.n_vocab else "(out of range)"
            problems.append(f"{role} {str(token)!r} is id {token_id} in {tokenizer_name}, but that id is "
                            f"{text!r} in {gguf_name}")

    by_id = {index: token for token, index in vocab.items()}
    step = max(1, size // ID_SAMPLES)
    for token_id in list(range(0, size, step)) + [size - 1]:
        token = by_id.get(token_id)
        if token is None or token_id >= gguf.n_vocab:
            continue
        text = gguf.token_text(token_id)
        if text != token:
            problems.append(f"id {token_id} is {token!r} in {tokenizer_name} but {text!r} in {gguf_name}")
            break

    expected = tokenizer.encode(SAMPLE_TEXT, add_special_tokens=False)
    actual = gguf.tokenize(SAMPLE_TEXT, parse_special=True)
    if list(expected) != list(actual):
        at = _first_difference(expected, actual)
        problems.append(
            f"the sample text tokenizes differently from token {at}: {tokenizer_name} "
            f"{tokenizer.convert_ids_to_tokens(list(expected[at:at + 4]))}, {gguf_name} "
            f"{[gguf.token_text(t) for t in actual[at:at + 4]]}")

    if problems:
        raise VocabularyMismatch(
            f"{gguf_name} does not match {tokenizer_name}: the agent would send ids the model reads as other tokens. "
            "Use the tokenizer of the model the GGUF was made from (tokenizer_dir), or a GGUF of that model. "
            "Differences: " + "; ".join(problems[:8]))
