"""A tiny random LlamaForCausalLM over the offline Hermes-shaped tokenizer (no model hub here)."""

from __future__ import annotations

import os
import shutil

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def build_tiny_llama(directory: str | os.PathLike, tokenizer_dir: str | os.PathLike) -> str:
    """Save a seeded random Llama (hidden 64, 2 layers) plus the tokenizer files into `directory`; return it."""
    directory = os.fspath(directory)
    tokenizer_dir = os.fspath(tokenizer_dir)
    if os.path.isfile(os.path.join(directory, "model.safetensors")) and os.path.isfile(
        os.path.join(directory, "tokenizer.json")
    ):
        return directory

    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
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
    for name in TOKENIZER_FILES:
        source = os.path.join(tokenizer_dir, name)
        if os.path.isfile(source):
            shutil.copy2(source, os.path.join(directory, name))
    return directory
