"""Guided decoding for the CPU engine: TensorRT-LLM's `guided_decoding_guide_type` / `guided_decoding_guide` with the
same meaning, on llguidance (a Rust grammar engine with a Hugging Face tokenizer binding; TensorRT-LLM offers it as
its second guided_decoding_backend next to XGrammar).

Guide types, as TensorRT-LLM's triton_backend reads them: `json` (any JSON value), `json_schema` (a JSON Schema
text), `regex`, `ebnf_grammar` (XGrammar's GBNF-style EBNF, converted to llguidance's Lark form). Each step the
tokens the guide does not allow get -inf logits; once the guide is complete only the end id is allowed.
"""

from __future__ import annotations

import json
import threading
from typing import Optional

import numpy as np
import torch

GUIDE_TYPES = ("json", "json_schema", "regex", "ebnf_grammar")
# JSON as `json.dumps` writes it (", " and ": "): with free whitespace a weak model can pad a value forever.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GuideError(ValueError):
    """A guide the engine cannot compile (unknown type, bad schema, pattern or grammar)."""


class TokenGuide:
    """One request's guide: masks logits before each token and follows the tokens taken."""

    def __init__(self, matcher, vocab_size: int):
        self._matcher = matcher
        self._vocab_size = vocab_size

    def mask(self, logits: torch.Tensor) -> None:
        """Sets the logits of every token the guide does not allow next to -inf, in place."""
        words = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(words, bitorder="little")[: logits.numel()].astype(bool)
        if allowed.size < logits.numel():
            allowed = np.concatenate([allowed, np.zeros(logits.numel() - allowed.size, dtype=bool)])
        logits[torch.from_numpy(~allowed)] = float("-inf")

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise GuideError(f"token {token} breaks the guide: {self._matcher.get_error()}")


class GuideCompiler:
    """Compiles guides for one Hugging Face tokenizer; its llguidance tokenizer is built once per end id."""

    def __init__(self, hf_tokenizer, vocab_size: int):
        self._hf = hf_tokenizer
        self._vocab_size = vocab_size
        self._tokenizers: dict[int, object] = {}
        self._lock = threading.Lock()

    def _tokenizer(self, end_id: Optional[int]):
        import llguidance.hf

        key = -1 if end_id is None else end_id
        with self._lock:
            if key not in self._tokenizers:
                self._tokenizers[key] = llguidance.hf.from_tokenizer(
                    self._hf, n_vocab=self._vocab_size, eos_token=end_id)
            return self._tokenizers[key]

    def compile(self, guide_type: str, guide: str, end_id: Optional[int]) -> TokenGuide:
        import llguidance

        if guide_type not in GUIDE_TYPES:
            raise GuideError(f"guided_decoding_guide_type must be one of {', '.join(GUIDE_TYPES)}, got {guide_type!r}")
        try:
            if guide_type == "json":
                grammar = llguidance.LLMatcher.grammar_from_json_schema({}, defaults=_JSON_OPTIONS)
            elif guide_type == "json_schema":
                grammar = llguidance.LLMatcher.grammar_from_json_schema(json.loads(guide), defaults=_JSON_OPTIONS)
            elif guide_type == "regex":
                grammar = llguidance.LLMatcher.grammar_from_regex(guide)
            else:
                from llguidance.gbnf_to_lark import gbnf_to_lark

                grammar = llguidance.LLMatcher.grammar_from_lark(gbnf_to_lark(guide))
        except Exception as exc:  # json errors, and llguidance's own for a schema or grammar it cannot read
            raise GuideError(f"guided_decoding_guide is not a valid {guide_type} guide: {exc}") from None
        tokenizer = self._tokenizer(end_id)
        is_error, problems = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
        if is_error:
            raise GuideError(f"guided_decoding_guide is not a valid {guide_type} guide: {'; '.join(problems)}")
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise GuideError(f"guided_decoding_guide cannot be used: {matcher.get_error()}")
        return TokenGuide(matcher, self._vocab_size)
