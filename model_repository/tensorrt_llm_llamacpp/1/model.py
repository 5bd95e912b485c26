"""Triton adapter for the llama.cpp engine: the `tensorrt_llm` contract over function_calling_agent.llamacpp_engine.

Loading refuses a GGUF whose vocabulary does not mean the same ids as the agent's tokenizer. The request handling
(streaming, stop by request id, cancellation, exactly one FINAL per request) and the model's life cycle are
`cpu_engine.serving.EngineServer` and `EngineModel`, shared with the torch engine.
"""

from __future__ import annotations

import os

import triton_python_backend_utils as pb_utils

from function_calling_agent.cpu_engine.serving import EngineModel
from function_calling_agent.llamacpp_engine import LlamaCppConfig, VocabularyMismatch
from function_calling_agent.llamacpp_engine.load import open_engine

LABEL = "tensorrt_llm_llamacpp"


def _llama_log(level: str, text: str) -> None:
    (pb_utils.Logger.log_error if level == "error" else pb_utils.Logger.log_warn)(f"{LABEL}: llama.cpp: {text}")


class TritonPythonModel(EngineModel):
    label = LABEL
    config_type = LlamaCppConfig

    def __init__(self):
        super().__init__(pb_utils)

    def load_engine(self, config: LlamaCppConfig, model_repository: str):
        try:
            engine = open_engine(config, base_dir=os.path.abspath(model_repository), log=_llama_log)
        except (FileNotFoundError, ValueError, VocabularyMismatch) as exc:
            raise pb_utils.TritonModelException(f"{LABEL}: {exc}") from None
        details = (
            f"vocabulary matches {config.tokenizer_dir}; "
            f"{config.thread_count} threads, KV cache {config.kv_cache_tokens} tokens ({config.kv_cache_type}), "
            f"{config.max_sequences} sequences batched, max_seq_len {engine.max_seq_len}, prefix reuse "
            f"{'on' if config.enable_kv_cache_reuse else 'off'}"
        )
        return engine, config.gguf_path, details

    def stop_signal_scope(self, repository: str) -> str:
        return f"{repository}:{LABEL}"
