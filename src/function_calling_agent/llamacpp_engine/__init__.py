"""llama.cpp (GGUF) generation core behind the `tensorrt_llm`-contract model `tensorrt_llm_llamacpp` (no Triton
imports here). Requests, updates, contract parsing and the Triton serving loop are the torch CPU engine's
(`function_calling_agent.cpu_engine`); this package adds the llama.cpp side: loading a GGUF, batched decoding with
prefix reuse, the vocabulary check against the agent's tokenizer, HF -> GGUF conversion and GGUF resolution."""

from .config import LlamaCppConfig
from .vocabulary import VocabularyMismatch, check_vocabulary

__all__ = ["LlamaCppConfig", "VocabularyMismatch", "check_vocabulary"]
