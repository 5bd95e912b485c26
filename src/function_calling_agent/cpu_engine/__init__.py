"""CPU generation core behind the `tensorrt_llm`-contract Python model (no Triton imports here)."""

from .config import ConfigError, EngineConfig
from .contract import ContractRequest, InvalidInput, final_outputs, parse_request, token_outputs
from .engine import GenerationEngine
from .prefix_cache import PrefixKVCache
from .sampling import SamplingParams, parse_word_list
from .stop_signals import StopSignalBoard, default_stop_signal_dir
from .worker import (
    FinishReason,
    GenerationHandle,
    GenerationRequest,
    GenerationResult,
    GenerationStats,
    GenerationUpdate,
)

__all__ = [
    "ConfigError",
    "ContractRequest",
    "EngineConfig",
    "FinishReason",
    "GenerationEngine",
    "GenerationHandle",
    "GenerationRequest",
    "GenerationResult",
    "GenerationStats",
    "GenerationUpdate",
    "InvalidInput",
    "PrefixKVCache",
    "SamplingParams",
    "StopSignalBoard",
    "default_stop_signal_dir",
    "final_outputs",
    "parse_request",
    "parse_word_list",
    "token_outputs",
]
