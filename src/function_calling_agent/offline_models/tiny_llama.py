"""A tiny random LlamaForCausalLM over the offline Hermes-shaped tokenizer (no model hub here)."""

from __future__ import annotations

import os


def build_tiny_llama(directory: str | os.PathLike, tokenizer_dir: str | os.PathLike) -> str:
    """Save a seeded random Llama (hidden 64, 2 layers) plus the tokenizer files into `directory`; return it."""
    directory = os.fspath(directory)
    tokenizer_dir = os.fspath(tokenizer_dir)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if os.path.isfile(os.path.join(directory, "model.safetensors")):
        tokenizer.save_pretrained(directory)  # the weights are kept; the tokenizer files follow tokenizer_dir
        return directory

    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_id, pad_token_id=tokenizer.pad_token_id
    )
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory
