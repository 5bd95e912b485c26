"""Triton adapter for the CPU engine: speaks the `tensorrt_llm` contract over function_calling_agent.cpu_engine.GenerationEngine.

Decoupled and asynchronous; the request handling (streaming, stop by request id, cancellation, exactly one FINAL per
request) and the model's life cycle are `cpu_engine.serving.EngineServer` and `EngineModel`, shared with the
llama.cpp engine. This file loads the Hugging Face checkpoint.
"""

from __future__ import annotations

import os

import triton_python_backend_utils as pb_utils

from function_calling_agent.cpu_engine import EngineConfig, GenerationEngine
from function_calling_agent.cpu_engine.serving import EngineModel


def _guide_compiler(model_dir: str):
    """Guided decoding (tool_choice required / a named function) on the checkpoint's own tokenizer."""
    from transformers import AutoConfig, AutoTokenizer

    from function_calling_agent.cpu_engine.guided import GuideCompiler

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as exc:  # a checkpoint without tokenizer files: guided requests are refused, nothing else
        pb_utils.Logger.log_warn(f"tensorrt_llm_cpu: no tokenizer in {model_dir} ({exc}); guided decoding is off")
        return None
    text_config = AutoConfig.from_pretrained(model_dir).get_text_config()
    return GuideCompiler(tokenizer, max(int(text_config.vocab_size), len(tokenizer)))


class TritonPythonModel(EngineModel):
    label = "tensorrt_llm_cpu"
    config_type = EngineConfig

    def __init__(self):
        super().__init__(pb_utils)

    def load_engine(self, config: EngineConfig, model_repository: str):
        model_dir = config.model_dir
        if not os.path.isabs(model_dir):
            model_dir = os.path.join(model_repository, model_dir)
        if not os.path.isdir(model_dir):
            raise pb_utils.TritonModelException(f"tensorrt_llm_cpu: model_dir {model_dir} is not a directory")
        if config.torch_threads > 0:
            import torch

            torch.set_num_threads(config.torch_threads)
        engine = GenerationEngine.from_pretrained(
            model_dir,
            guides=_guide_compiler(model_dir),
            dtype=config.dtype,
            max_seq_len=config.max_seq_len or None,
            prefix_cache_max_tokens=config.prefix_cache_max_tokens,
            prefill_chunk_tokens=config.prefill_chunk_tokens,
            torch_threads=config.torch_threads,
        )
        details = (
            f"{config.torch_dtype}, max_seq_len {engine.max_seq_len}, "
            f"prefix cache {config.prefix_cache_max_tokens} tokens, "
            f"reuse {'on' if engine.prefix_reuse_supported else 'unsupported by this model'}"
        )
        return engine, model_dir, details
