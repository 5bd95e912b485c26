"""Triton adapter for the CPU engine: speaks the `tensorrt_llm` contract over function_calling_agent.cpu_engine.GenerationEngine.

Decoupled and asynchronous; the request handling (streaming, stop by request id, cancellation, exactly one FINAL per
request) is `cpu_engine.serving.EngineServer`, shared with the llama.cpp engine.
"""

from __future__ import annotations

import json
import os

import triton_python_backend_utils as pb_utils

from function_calling_agent.cpu_engine import (
    ConfigError,
    EngineConfig,
    GenerationEngine,
    StopSignalBoard,
    default_stop_signal_dir,
)
from function_calling_agent.cpu_engine.serving import EngineServer


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


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(model_config):
            raise pb_utils.TritonModelException(
                "tensorrt_llm_cpu streams tokens: set model_transaction_policy { decoupled: true }"
            )
        try:
            config = EngineConfig.from_model_config(model_config)
        except ConfigError as exc:
            raise pb_utils.TritonModelException(f"tensorrt_llm_cpu config.pbtxt: {exc}") from None
        model_dir = config.model_dir
        if not os.path.isabs(model_dir):
            model_dir = os.path.join(args["model_repository"], model_dir)
        if not os.path.isdir(model_dir):
            raise pb_utils.TritonModelException(f"tensorrt_llm_cpu: model_dir {model_dir} is not a directory")
        if config.torch_threads > 0:
            import torch

            torch.set_num_threads(config.torch_threads)
        self._engine = GenerationEngine.from_pretrained(
            model_dir,
            guides=_guide_compiler(model_dir),
            dtype=config.dtype,
            max_seq_len=config.max_seq_len or None,
            prefix_cache_max_tokens=config.prefix_cache_max_tokens,
            prefill_chunk_tokens=config.prefill_chunk_tokens,
            torch_threads=config.torch_threads,
        )
        self._stop_board = StopSignalBoard(
            config.stop_signal_dir or default_stop_signal_dir(os.path.abspath(args["model_repository"]))
        )
        self._server = EngineServer(
            pb_utils, self._engine, self._stop_board, label="tensorrt_llm_cpu", metric_prefix="tensorrt_llm_cpu",
            exclude_input_in_output=config.exclude_input_in_output, kv_cache_block_size=config.kv_cache_block_size,
            model_name=args["model_name"], model_version=args["model_version"],
            instance=args.get("model_instance_name", ""),
        )
        pb_utils.Logger.log_info(
            f"tensorrt_llm_cpu: loaded {model_dir} ({config.torch_dtype}, max_seq_len {self._engine.max_seq_len}, "
            f"prefix cache {config.prefix_cache_max_tokens} tokens, "
            f"reuse {'on' if self._engine.prefix_reuse_supported else 'unsupported by this model'}, "
            f"stop signals in {self._stop_board.directory})"
        )

    async def execute(self, requests):
        await self._server.execute(requests)
        return None

    def finalize(self):
        self._engine.close()
        self._stop_board.close()
