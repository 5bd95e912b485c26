"""Open the llama.cpp engine from its config: resolve paths, load the GGUF, check it against the tokenizer."""

from __future__ import annotations

import os

from ..cpu_engine.guided import GuideCompiler
from .binding import ContextSettings, LlamaModel, LogSink
from .config import LlamaCppConfig
from .engine import LlamaCppEngine
from .vocabulary import check_vocabulary


def _resolve(path: str, base_dir: str) -> str:
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.join(base_dir, path)


def open_engine(config: LlamaCppConfig, base_dir: str = ".", log: LogSink | None = None) -> LlamaCppEngine:
    """The engine for `config`; relative paths are taken from `base_dir` (the model repository).

    Raises FileNotFoundError for a missing file, ValueError when llama.cpp cannot load the model, and
    vocabulary.VocabularyMismatch when the GGUF's vocabulary and the tokenizer disagree."""
    from transformers import AutoTokenizer

    gguf_path = _resolve(config.gguf_path, base_dir)
    tokenizer_dir = _resolve(config.tokenizer_dir, base_dir)
    if not os.path.isfile(gguf_path):
        raise FileNotFoundError(f"gguf_path {gguf_path} is not a file")
    if not os.path.isdir(tokenizer_dir):
        raise FileNotFoundError(f"tokenizer_dir {tokenizer_dir} is not a directory")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    settings = ContextSettings(
        n_ctx=config.kv_cache_tokens,
        n_seq_max=config.max_sequences,
        # room for a whole prefill chunk plus one decode token of every other sequence in the same step
        n_batch=config.prefill_chunk_tokens + config.max_sequences,
        n_threads=config.thread_count,
        n_threads_batch=config.thread_count,
        kv_cache_type=config.kv_cache_type,
    )
    model = LlamaModel(gguf_path, settings, log)
    try:
        check_vocabulary(model, tokenizer, gguf_name=gguf_path, tokenizer_name=f"the tokenizer in {tokenizer_dir}")
        return LlamaCppEngine(model, max_seq_len=config.max_seq_len,
                              prefill_chunk_tokens=config.prefill_chunk_tokens,
                              prefix_reuse=config.enable_kv_cache_reuse,
                              guides=GuideCompiler(tokenizer, max(model.n_vocab, len(tokenizer))))
    except BaseException:
        model.close()
        raise
