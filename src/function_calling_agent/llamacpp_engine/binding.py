"""The few llama.cpp calls the engine needs, through llama-cpp-python's low-level (ctypes) API.

The high-level `llama_cpp.Llama` keeps one sequence per context and samples with llama.cpp's own penalties window;
the engine needs several sequences in one KV cache (batched decoding, prefix copies between them) and TensorRT-LLM's
sampling semantics, so it drives the context directly. ctypes releases the GIL during each call, so a decode on the
engine's thread never blocks the Triton stub's event loop.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

import llama_cpp

# ggml_log_level: 0 none, 1 debug, 2 info, 3 warn, 4 error, 5 continuation of the previous line.
_WARN, _ERROR, _CONT = 3, 4, 5
_KV_TYPES = {"f32": llama_cpp.GGML_TYPE_F32, "f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0}

LogSink = Callable[[str, str], None]  # (level "warning" | "error", text)

_log_lock = threading.Lock()
_log_state = {"sink": None, "callback": None, "level": 0, "backend": False}


def quiet_llama_logs(sink: LogSink | None = None) -> None:
    """Route llama.cpp's warnings and errors to `sink` and drop its info/debug chatter (hundreds of lines per load).

    Replaces the callback llama-cpp-python installs at import, which prints everything to stderr."""
    with _log_lock:
        _log_state["sink"] = sink
        if _log_state["callback"] is None:

            def forward(level: int, text: bytes, _user_data) -> None:
                if level != _CONT:
                    _log_state["level"] = level
                level = _log_state["level"]
                current = _log_state["sink"]
                if current is not None and level in (_WARN, _ERROR) and text and text.strip():
                    try:
                        current("error" if level == _ERROR else "warning", text.decode("utf-8", "replace").rstrip())
                    except Exception:  # a logging failure must never unwind through C
                        pass

            _log_state["callback"] = llama_cpp.llama_log_callback(forward)  # kept alive: C holds the pointer
            llama_cpp.llama_log_set(_log_state["callback"], ctypes.c_void_p(0))
        if not _log_state["backend"]:
            llama_cpp.llama_backend_init()
            _log_state["backend"] = True


@dataclass(frozen=True)
class ContextSettings:
    n_ctx: int  # KV cells shared by all sequences (unified cache)
    n_seq_max: int  # sequences the cache can hold at once
    n_batch: int  # tokens per llama_decode call
    n_threads: int
    n_threads_batch: int
    kv_cache_type: str = "f16"


class LlamaModel:
    """One GGUF model and one llama.cpp context whose unified KV cache holds `n_seq_max` sequences.

    Not thread-safe: the engine calls it from its generation thread only (the vocabulary helpers are also safe to
    call before that thread starts)."""

    def __init__(self, path: str | os.PathLike, settings: ContextSettings, log: LogSink | None = None) -> None:
        if settings.kv_cache_type not in _KV_TYPES:
            raise ValueError(f"kv_cache_type must be one of {sorted(_KV_TYPES)}, got {settings.kv_cache_type!r}")
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        quiet_llama_logs(log)
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0
        self._model = llama_cpp.llama_model_load_from_file(path.encode("utf-8"), model_params)
        if not self._model:
            raise ValueError(f"llama.cpp could not load {path} (not a GGUF model it supports; see the log above)")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(self._model))
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = settings.n_ctx
        params.n_batch = settings.n_batch
        params.n_ubatch = settings.n_batch
        params.n_seq_max = settings.n_seq_max
        params.n_threads = settings.n_threads
        params.n_threads_batch = settings.n_threads_batch
        params.type_k = params.type_v = _KV_TYPES[settings.kv_cache_type]
        # One pool of cells for every sequence: prefixes are shared between sequences by reference (seq_cp).
        params.kv_unified = True
        params.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            raise ValueError(f"llama.cpp could not create a context of {settings.n_ctx} tokens for {path}")
        self.n_ctx = int(llama_cpp.llama_n_ctx(self._ctx))
        self.n_batch = int(llama_cpp.llama_n_batch(self._ctx))
        self.n_seq_max = int(llama_cpp.llama_n_seq_max(self._ctx))
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        n = self.n_batch
        self._tokens = np.ctypeslib.as_array(self._batch.token, shape=(n,))
        self._positions = np.ctypeslib.as_array(self._batch.pos, shape=(n,))
        self._n_seq_id = np.ctypeslib.as_array(self._batch.n_seq_id, shape=(n,))
        self._logits_flags = np.ctypeslib.as_array(self._batch.logits, shape=(n,))
        self._seq_ids = [self._batch.seq_id[i] for i in range(n)]
        self._n_seq_id[:] = 1

    # ---- vocabulary --------------------------------------------------------------------------------------------

    def token_text(self, token_id: int) -> str:
        """The vocabulary entry of `token_id` as stored in the GGUF (byte-level BPE form, e.g. 'Ġword')."""
        return llama_cpp.llama_vocab_get_text(self._vocab, token_id).decode("utf-8", "replace")

    def tokenize(self, text: str, parse_special: bool = True) -> list[int]:
        """llama.cpp's tokenizer, adding no BOS/EOS; `parse_special` turns markup such as <|im_start|> into its id."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        while True:
            buffer = (llama_cpp.llama_token * capacity)()
            count = llama_cpp.llama_tokenize(self._vocab, data, len(data), buffer, capacity, False, parse_special)
            if count >= 0:
                return list(buffer[:count])
            capacity = -count

    @property
    def bos_id(self) -> int:
        return int(llama_cpp.llama_vocab_bos(self._vocab))

    @property
    def eos_id(self) -> int:
        return int(llama_cpp.llama_vocab_eos(self._vocab))

    # ---- KV cache ----------------------------------------------------------------------------------------------

    def truncate(self, seq_id: int, length: int) -> bool:
        """Drop positions >= length of one sequence; False if the cache cannot cut it there."""
        return bool(llama_cpp.llama_memory_seq_rm(self._memory, seq_id, length, -1))

    def clear(self, seq_id: int) -> None:
        llama_cpp.llama_memory_seq_rm(self._memory, seq_id, -1, -1)

    def copy_prefix(self, source: int, target: int, length: int) -> None:
        """Make positions [0, length) of `source` also belong to `target` (shared cells, no data copied)."""
        llama_cpp.llama_memory_seq_cp(self._memory, source, target, 0, length)

    # ---- decoding ----------------------------------------------------------------------------------------------

    def decode(self, items: Sequence[tuple[int, int, Sequence[int], bool]]) -> tuple[int, list[int]]:
        """One llama_decode over several sequences' tokens: items are (seq_id, first position, tokens, want logits
        of the last token). Returns (status, batch index of each item's logits or -1). Status 0 is success, 1 means
        the KV cache has no room for the batch (nothing was decoded)."""
        count = 0
        rows = []
        for seq_id, position, tokens, want_logits in items:
            n = len(tokens)
            if count + n > self.n_batch:
                raise ValueError(f"batch of {count + n} tokens exceeds n_batch {self.n_batch}")
            self._tokens[count:count + n] = tokens
            self._positions[count:count + n] = np.arange(position, position + n)
            self._logits_flags[count:count + n] = 0
            for index in range(count, count + n):
                self._seq_ids[index][0] = seq_id
            if want_logits:
                self._logits_flags[count + n - 1] = 1
            rows.append(count + n - 1 if want_logits else -1)
            count += n
        self._batch.n_tokens = count
        status = int(llama_cpp.llama_decode(self._ctx, self._batch))
        return status, rows

    def logits(self, row: int) -> np.ndarray:
        """The logits of batch row `row` of the last decode: a view valid until the next decode."""
        pointer = llama_cpp.llama_get_logits_ith(self._ctx, row)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    def close(self) -> None:
        if self._ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None
