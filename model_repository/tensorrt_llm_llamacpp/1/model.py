"""Triton adapter for the llama.cpp engine: the `tensorrt_llm` contract over function_calling_agent.llamacpp_engine.

Loading refuses a GGUF whose vocabulary does not mean the same ids as the agent's tokenizer. The request handling
(streaming, stop by request id, cancellation, exactly one FINAL per request) is `cpu_engine.serving.EngineServer`,
shared with the torch engine.
"""

from __future__ import annotations

import json
import os

import triton_python_backend_utils as pb_utils

from function_calling_agent.cpu_engine import ConfigError, StopSignalBoard, default_stop_signal_dir
from function_calling_agent.cpu_engine.serving import EngineServer
from function_calling_agent.llamacpp_engine import LlamaCppConfig, VocabularyMismatch
from function_calling_agent.llamacpp_engine.load import open_engine

LABEL = "tensorrt_llm_llamacpp"


def _llama_log(level: str, text: str) -> None:
    (pb_utils.Logger.log_error if level == "error" else pb_utils.Logger.log_warn)(f"{LABEL}: llama.cpp: {text}")


class TritonPythonModel:
    def initialize(self, args):
        model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(model_config):
            raise pb_utils.TritonModelException(f"{LABEL} streams tokens: set model_transaction_policy {{ decoupled: true }}")
        try:
            config = LlamaCppConfig.from_model_config(model_config)
        except ConfigError as exc:
            raise pb_utils.TritonModelException(f"{LABEL} config.pbtxt: {exc}") from None
        repository = os.path.abspath(args["model_repository"])
        try:
            self._engine = open_engine(config, base_dir=repository, log=_llama_log)
        except (FileNotFoundError, ValueError, VocabularyMismatch) as exc:
            raise pb_utils.TritonModelException(f"{LABEL}: {exc}") from None
        self._stop_board = StopSignalBoard(config.stop_signal_dir or default_stop_signal_dir(f"{repository}:{LABEL}"))
        self._server = EngineServer(
            pb_utils, self._engine, self._stop_board, label=LABEL, metric_prefix=LABEL,
            exclude_input_in_output=config.exclude_input_in_output, kv_cache_block_size=config.kv_cache_block_size,
            model_name=args["model_name"], model_version=args["model_version"],
            instance=args.get("model_instance_name", ""),
        )
        pb_utils.Logger.log_info(
            f"{LABEL}: loaded {config.gguf_path} (vocabulary matches {config.tokenizer_dir}; "
            f"{config.thread_count} threads, KV cache {config.kv_cache_tokens} tokens ({config.kv_cache_type}), "
            f"{config.max_sequences} sequences batched, max_seq_len {self._engine.max_seq_len}, prefix reuse "
            f"{'on' if config.enable_kv_cache_reuse else 'off'}, stop signals in {self._stop_board.directory})"
        )

    async def execute(self, requests):
        await self._server.execute(requests)
        return None

    def finalize(self):
        self._engine.close()
        self._stop_board.close()
