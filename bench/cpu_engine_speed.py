"""Prefill and decode speed of the CPU engine on this machine, with random weights of real model architectures.

No download: the models are built from their published configs (Qwen2.5-0.5B/1.5B-Instruct) with random weights,
which run exactly as fast as trained ones (same shapes, no denormals). Each configuration runs through
cpu_generation.GenerationEngine, the code path Triton uses: one request prefills the prompt, a second one extends
it (served from the prefix cache) and decodes. Slow configurations are cut at a time budget; the table then says
how much work was measured. Other processes on the same cores slow it down a lot (see the load average printed).

    python bench/cpu_engine_speed.py [--prompt-tokens 512] [--new-tokens 32] [--dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import gc
import os
import queue
import sys
import time
from dataclasses import dataclass

import torch

from function_calling_agent.cpu_engine import GenerationEngine, GenerationRequest

ARCHITECTURES = {
    "qwen2.5-0.5b": dict(
        hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864
    ),
    "qwen2.5-1.5b": dict(
        hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, intermediate_size=8960
    ),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class Measurement:
    arch: str
    dtype: str
    params_m: float
    build_s: float
    prefill_tokens: int
    prefill_s: float
    reused_tokens: int
    decode_tokens: int
    decode_s: float


def build_model(arch: str, dtype: torch.dtype):
    """Random weights, made fast: allocate uninitialised, then tile one random block over every matrix
    (a seeded normal init of 1.5B parameters takes longer than the measurement)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=151936,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        dtype=dtype,
        **ARCHITECTURES[arch],
    )
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    model = model.to_empty(device="cpu").to(dtype)
    block = (torch.rand(1 << 20, generator=torch.Generator().manual_seed(0)) * 0.06 - 0.03).to(dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            flat = param.view(-1)
            if param.dim() == 1:
                flat.fill_(1.0 if "norm" in name else 0.0)
                continue
            for start in range(0, flat.numel(), block.numel()):
                chunk = flat[start : start + block.numel()]
                chunk.copy_(block[: chunk.numel()])
        # Buffers computed at construction (rotary frequencies) were lost on the meta device; so was the tie.
        model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    model.tie_weights()
    return model.eval()


def run_until(engine: GenerationEngine, request: GenerationRequest, budget_s: float):
    """Run one request, stopping it once `budget_s` has passed; returns (stats, first_token_time, last_token_time,
    tokens, start)."""
    updates: queue.Queue = queue.Queue()
    start = time.perf_counter()
    engine.submit(request, updates.put, should_stop=lambda: time.perf_counter() - start > budget_s)
    first = last = None
    tokens = 0
    while True:
        update = updates.get()
        if update.error is not None:
            raise update.error
        if update.token_ids:
            last = time.perf_counter()
            first = first or last
            tokens += len(update.token_ids)
        if update.final:
            return update.stats, first, last, tokens, start


def measure(arch: str, dtype_name: str, prompt_tokens: int, new_tokens: int, prefill_budget_s: float,
            decode_budget_s: float, threads: int) -> Measurement:
    started = time.perf_counter()
    model = build_model(arch, DTYPES[dtype_name])
    build_s = time.perf_counter() - started
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    engine = GenerationEngine(
        model, prefix_cache_max_tokens=prompt_tokens + new_tokens + 8, prefill_chunk_tokens=128, torch_threads=threads
    )
    try:
        generator = torch.Generator().manual_seed(1)
        prompt = tuple(torch.randint(100, 150000, (prompt_tokens,), generator=generator).tolist())
        # 1) Prefill (chunks of 128 so a slow configuration can be cut at the budget).
        stats, first, _, _, start = run_until(engine, GenerationRequest(prompt, 1), prefill_budget_s)
        prefilled = stats.prefilled_tokens
        prefill_s = (first or time.perf_counter()) - start
        # 2) Decode after the prefilled context: the next request extends it, so its KV comes from the prefix cache.
        context = prompt[: max(prefilled, 1)] + (101,)
        stats, first, last, tokens, _ = run_until(engine, GenerationRequest(context, new_tokens), decode_budget_s)
        # Decode rate over tokens after the first (the first one still pays the tiny prefill of the new token).
        decode_tokens = max(tokens - 1, 0)
        decode_s = (last - first) if decode_tokens else float("nan")
        return Measurement(arch, dtype_name, params_m, build_s, prefilled, prefill_s, stats.reused_tokens,
                           decode_tokens, decode_s)
    finally:
        engine.close()
        del engine, model
        gc.collect()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default=",".join(ARCHITECTURES))
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prefill-budget-s", type=float, default=30.0)
    parser.add_argument("--decode-budget-s", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores; prompt {args.prompt_tokens}, "
          f"decode {args.new_tokens} tokens; load average {os.getloadavg()[0]:.1f} (other processes share these cores)",
          flush=True)
    header = (f"{'model':<14} {'dtype':<9} {'params':>7} {'build s':>7} {'prefill tok':>11} {'prefill tok/s':>13} "
              f"{'TTFT 512 s':>10} {'reused':>6} {'decode tok':>10} {'decode tok/s':>12} {'ms/token':>8}")
    print(header)
    print("-" * len(header), flush=True)
    total = time.perf_counter()
    for arch in args.archs.split(","):
        for dtype_name in args.dtypes.split(","):
            m = measure(arch, dtype_name, args.prompt_tokens, args.new_tokens, args.prefill_budget_s,
                        args.decode_budget_s, args.threads)
            prefill_rate = m.prefill_tokens / m.prefill_s
            decode_rate = m.decode_tokens / m.decode_s if m.decode_tokens else float("nan")
            cut = "*" if m.prefill_tokens < args.prompt_tokens or m.decode_tokens < args.new_tokens - 1 else " "
            print(f"{arch:<14} {dtype_name:<9} {m.params_m:>6.0f}M {m.build_s:>7.1f} {m.prefill_tokens:>11d} "
                  f"{prefill_rate:>13.1f} {args.prompt_tokens / prefill_rate:>10.1f} {m.reused_tokens:>6d} "
                  f"{m.decode_tokens:>10d} {decode_rate:>12.2f} {1000 / decode_rate:>8.0f}{cut}", flush=True)
    print(f"total {time.perf_counter() - total:.0f} s, load average {os.getloadavg()[0]:.1f}; "
          "* = cut at the time budget (rates from the work done); TTFT 512 = prompt / prefill rate", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
