"""Hugging Face checkpoint -> GGUF, written with the `gguf` package, then quantized by llama.cpp itself.

Covers the architectures this project serves (Llama: Hermes-2-Pro/Hermes-3; Qwen2: Qwen2.5 Instruct) and the
byte-level BPE tokenizers they use; anything else is refused with a message that says to pass a ready GGUF instead
(the official GGUF builds come from llama.cpp's own converter). Tensor names come from gguf's name map, so nothing
here spells a GGUF tensor name by hand.

    write_gguf("/ckpt", "/tmp/model-f16.gguf", dtype="f16")
    quantize_gguf("/tmp/model-f16.gguf", "/tmp/model-q4_k_m.gguf", "Q4_K_M")
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np

# HF model_type -> gguf MODEL_ARCH name. Llama's q/k rows are permuted back to the interleaved rotary layout
# llama.cpp's LLAMA graph expects (Hugging Face stores them for rotate_half); Qwen2 runs NeoX rotary as stored.
_ARCHITECTURES = {"llama": "LLAMA", "qwen2": "QWEN2"}
_PERMUTE_QK = {"llama"}

# Quantization types this module offers (llama.cpp's LLAMA_FTYPE_* names).
QUANT_TYPES = {"F32": "LLAMA_FTYPE_ALL_F32", "F16": "LLAMA_FTYPE_MOSTLY_F16", "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
               "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
               "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K"}


class ConversionError(ValueError):
    """The checkpoint cannot be converted here; the message says what to do instead."""


def _bpe_pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer regex. The engine re-checks the result on a sample text
    at load, so a wrong guess fails loudly there."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if len(steps) == 1 and steps[0].get("type") == "ByteLevel" and steps[0].get("use_regex", True):
        return "gpt-2"  # GPT-2's regex, built into the ByteLevel pre-tokenizer
    split = next((s for s in steps if s.get("type") == "Split"), None)
    pattern = ((split or {}).get("pattern") or {}).get("Regex", "")
    if pattern.startswith("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"):
        if "\\p{N}{1,3}" in pattern:
            return "llama-bpe"  # Llama-3
        if "|\\p{N}|" in pattern:
            return "qwen2"
    raise ConversionError(f"unrecognised BPE pre-tokenizer {json.dumps(pre)[:200]}: convert this model with "
                          "llama.cpp's convert_hf_to_gguf.py, or use its official GGUF build")


def _merges(tokenizer_json: dict) -> list[str]:
    merges = tokenizer_json["model"].get("merges", [])
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def _vocabulary(tokenizer_dir: Path, n_vocab: int):
    """(tokens, token types, merges, pre-tokenizer, special ids) for a byte-level BPE tokenizer, padded to the
    model's `n_vocab` rows as llama.cpp requires (padding tokens are UNUSED and never produced)."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer_dir))
    if not getattr(tokenizer, "is_fast", False):
        raise ConversionError(f"{tokenizer_dir}: a fast (tokenizer.json) byte-level BPE tokenizer is required")
    # The tokenizer as transformers builds it, which is what the agent uses: a model class may replace the
    # pre-tokenizer of tokenizer.json (Qwen2's splits digits one by one).
    tokenizer_json = json.loads(tokenizer.backend_tokenizer.to_str())
    if tokenizer_json.get("model", {}).get("type") != "BPE":
        raise ConversionError(f"{tokenizer_dir}: only BPE tokenizers are converted here, not "
                              f"{tokenizer_json.get('model', {}).get('type')!r}; use an official GGUF build")
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if max(by_id) >= n_vocab:
        raise ConversionError(f"the tokenizer has ids up to {max(by_id)} but the model only {n_vocab} embedding rows")
    added = {token.content: token.special for token in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for index in range(n_vocab):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[token] else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    probe = tokenizer.encode("a")
    special = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": tokenizer.pad_token_id,
        "add_bos": tokenizer.bos_token_id is not None and bool(probe) and probe[0] == tokenizer.bos_token_id,
        "chat_template": tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
    }
    return tokens, types, _merges(tokenizer_json), _bpe_pre_tokenizer(tokenizer_json), special


def _checkpoint_tensors(checkpoint: Path) -> Iterator[tuple[str, "np.ndarray"]]:
    import torch
    from safetensors import safe_open

    files = sorted(checkpoint.glob("*.safetensors"))
    if not files:
        raise ConversionError(f"{checkpoint} has no *.safetensors weights")
    for file in files:
        with safe_open(os.fspath(file), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name).to(torch.float32).numpy()


def _permute_for_interleaved_rope(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of each head from [first halves | second halves] (rotate_half) to interleaved pairs."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _rope_theta(config) -> float:
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return float(theta)


def _rope_scaling(config) -> str | None:
    scaling = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {}
    kind = scaling.get("rope_type") or scaling.get("type")
    return None if kind in (None, "default") else kind


def write_gguf(checkpoint_dir: str | os.PathLike, output: str | os.PathLike, dtype: str = "f16",
               tokenizer_dir: str | os.PathLike | None = None) -> Path:
    """Write a Llama or Qwen2 Hugging Face checkpoint (safetensors + tokenizer.json) as one GGUF file.

    dtype: "f32" (exact; tests) or "f16" (the input of quantize_gguf). 1-D tensors (norms, biases) stay float32.
    tokenizer_dir: where the tokenizer is, if not in the checkpoint (as transformers' AutoTokenizer loads it).
    Raises ConversionError for an architecture, rope scaling or tokenizer this converter does not cover.
    """
    import gguf
    from transformers import AutoConfig

    checkpoint = Path(checkpoint_dir)
    if dtype not in ("f32", "f16"):
        raise ValueError(f"dtype must be 'f32' or 'f16', got {dtype!r}")
    config = AutoConfig.from_pretrained(os.fspath(checkpoint))
    model_type = config.model_type
    if model_type not in _ARCHITECTURES:
        raise ConversionError(f"{checkpoint}: model_type {model_type!r} is not converted here (only "
                              f"{sorted(_ARCHITECTURES)}); pass a GGUF file made by llama.cpp's converter instead")
    if _rope_scaling(config) is not None:
        raise ConversionError(f"{checkpoint}: rope scaling {_rope_scaling(config)!r} is not converted here; "
                              "pass a GGUF file made by llama.cpp's converter instead")
    arch = getattr(gguf.MODEL_ARCH, _ARCHITECTURES[model_type])
    n_layer, n_head = config.num_hidden_layers, config.num_attention_heads
    n_head_kv = getattr(config, "num_key_value_heads", None) or n_head
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    names = gguf.get_tensor_name_map(arch, n_layer)
    tokens, types, merges, pre, special = _vocabulary(Path(tokenizer_dir or checkpoint), config.vocab_size)

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    writer = gguf.GGUFWriter(os.fspath(partial), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(checkpoint.name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("pad", writer.add_pad_token_id)):
        if special[key] is not None:
            add(special[key])
    writer.add_add_bos_token(special["add_bos"])
    if special["chat_template"]:
        writer.add_chat_template(special["chat_template"])

    seen = set()
    for name, weight in _checkpoint_tensors(checkpoint):
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if model_type in _PERMUTE_QK:
            if name.endswith("q_proj.weight"):
                weight = _permute_for_interleaved_rope(weight, n_head)
            elif name.endswith("k_proj.weight"):
                weight = _permute_for_interleaved_rope(weight, n_head_kv)
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ConversionError(f"{checkpoint}: no GGUF name for tensor {name!r}")
        if target == "output.weight" and getattr(config, "tie_word_embeddings", False):
            continue  # llama.cpp reuses token_embd when output is absent
        weight = weight.astype(np.float16 if dtype == "f16" and weight.ndim > 1 else np.float32)
        writer.add_tensor(target, weight)
        seen.add(target)
    if "token_embd.weight" not in seen:
        raise ConversionError(f"{checkpoint}: no token embedding found in the safetensors files")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(partial, output)
    return output


def quantize_gguf(source: str | os.PathLike, output: str | os.PathLike, quant: str = "Q4_K_M",
                  threads: int = 0) -> Path:
    """llama.cpp's own quantizer (llama_model_quantize through llama-cpp-python) from an F32/F16 GGUF."""
    import llama_cpp

    if quant not in QUANT_TYPES:
        raise ValueError(f"quant must be one of {sorted(QUANT_TYPES)}, got {quant!r}")
    from .binding import quiet_llama_logs

    quiet_llama_logs()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[quant])
    params.nthread = threads or (os.cpu_count() or 1)
    status = llama_cpp.llama_model_quantize(os.fsencode(source), os.fsencode(partial), params)
    if status != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize({source} -> {quant}) failed with status {status}")
    os.replace(partial, output)
    return output
