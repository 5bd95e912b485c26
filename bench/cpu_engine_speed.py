"""Both CPU engines side by side: torch (float32) and llama.cpp (4-bit GGUF), random weights of real architectures.

No download: each model is built from its published config (Qwen2.5-1.5B-Instruct, the default model, and
Qwen2.5-0.5B-Instruct) with random weights, which run exactly as fast as trained ones (same shapes). The torch engine
runs them in float32 (cpu_engine.GenerationEngine); the same weights are converted to GGUF and quantized by llama.cpp
(llamacpp_engine.convert, Q4_K_M by default) for the llama.cpp engine (llamacpp_engine.LlamaCppEngine). Per engine:

- prefill tokens/s and decode ms/token through the engine the Triton model wraps: one request prefills a random
  prompt, a second one extends it (prefix reuse) and decodes;
- the time to the first answer token of the demo request ("Give me Rivian (RIVN) news and stock price" with the five
  finance tools in the prompt) through the whole agent: the cpu profile (deploy/configure_repository.py) on a real
  tritonserver, a fresh server per engine, gRPC streaming, measured at the client.

The tokenizer is the offline Hermes-shaped one (offline_models.hermes_tokenizer) padded to Qwen2.5's 151,936 ids
with tokens no text produces, so the random model's every id decodes to text; its ~2,000-token BPE makes the demo
prompt longer than Qwen's tokenizer would (the prompt length is printed). The servers run one after the other.
Other processes on the same cores slow everything down (see the load average printed): read the ratios.

    python -m bench.cpu_engine_speed [--archs qwen2.5-1.5b,qwen2.5-0.5b] [--quant Q4_K_M] [--no-agent]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import queue
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from function_calling_agent.cpu_engine import GenerationEngine, GenerationRequest

ARCHITECTURES = {
    "qwen2.5-1.5b": dict(
        hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, intermediate_size=8960
    ),
    "qwen2.5-0.5b": dict(
        hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864
    ),
    # Not a real model: a quick run of this script's whole path (--archs tiny).
    "tiny": dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=512),
}
VOCAB_SIZE = 151936
DEMO_PROMPT = "Give me Rivian (RIVN) news and stock price"
FINANCE_TOOLS = "function_calling_agent.tools.finance"


@dataclass
class EngineSpeed:
    prefill_tokens: int
    prefill_s: float
    reused_tokens: int
    decode_tokens: int
    decode_s: float

    @property
    def prefill_rate(self) -> float:
        return self.prefill_tokens / self.prefill_s

    @property
    def decode_ms(self) -> float:
        return 1000 * self.decode_s / self.decode_tokens if self.decode_tokens else float("nan")


@dataclass
class AgentTiming:
    ttft_s: float
    prompt_tokens: int
    load_s: float


def build_model(arch: str):
    """Random float32 weights, made fast: allocate uninitialised, then tile one random block over every matrix
    (a seeded normal init of 1.5B parameters takes longer than the measurement)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=VOCAB_SIZE, max_position_embeddings=32768, tie_word_embeddings=True,
                         rms_norm_eps=1e-6, rope_theta=1000000.0, dtype=torch.float32, **ARCHITECTURES[arch])
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    model = model.to_empty(device="cpu")
    block = torch.rand(1 << 20, generator=torch.Generator().manual_seed(0)) * 0.06 - 0.03
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


def padded_tokenizer(directory: Path) -> Path:
    """The offline Hermes-shaped tokenizer with ids up to VOCAB_SIZE: the extra entries (' ~2001', ...) are in no
    merge, so no text tokenizes into them, but each decodes to text when a random model emits it."""
    from function_calling_agent.offline_models.hermes_tokenizer import build_hermes_tokenizer

    base = Path(build_hermes_tokenizer(directory / "base"))
    data = json.loads((base / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    for token_id in range(max(vocab.values()) + 1, VOCAB_SIZE):
        vocab[f"\u0120~{token_id}"] = token_id  # \u0120: the byte-level form of a leading space
    target = directory / "tokenizer"
    shutil.copytree(base, target, dirs_exist_ok=True)  # its chat templates and config as they are
    (target / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return target


def run_until(engine, request: GenerationRequest, budget_s: float):
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


def measure_engine(engine, prompt: tuple[int, ...], new_tokens: int, prefill_budget_s: float,
                   decode_budget_s: float) -> EngineSpeed:
    """The same two requests on either engine (both have GenerationEngine's submit interface), after a short
    warm-up request (first-touch costs: weight pages, allocator, thread pool)."""
    run_until(engine, GenerationRequest(tuple(reversed(prompt[:32])), 4), decode_budget_s)
    # 1) Prefill (in the engine's chunks; a slow configuration is cut at the budget between chunks).
    stats, first, _, _, start = run_until(engine, GenerationRequest(prompt, 1), prefill_budget_s)
    prefilled = stats.prefilled_tokens
    prefill_s = (first or time.perf_counter()) - start
    # 2) Decode after the prefilled context: the next request extends it, so its KV is reused.
    context = prompt[: max(prefilled, 1)] + (101,)
    stats, first, last, tokens, _ = run_until(engine, GenerationRequest(context, new_tokens), decode_budget_s)
    # Decode rate over tokens after the first (the first one still pays the tiny prefill of the new token).
    decode_tokens = max(tokens - 1, 0)
    return EngineSpeed(prefilled, prefill_s, stats.reused_tokens, decode_tokens,
                       (last - first) if decode_tokens else float("nan"))


def agent_ttft(repository: Path, log_path: Path) -> AgentTiming:
    """Start tritonserver on `repository`, send the demo request once (fresh server, nothing cached), stop."""
    import tritonclient.grpc as grpcclient

    from bench.timed_calls import stream_request, text_request, usage_of
    from deploy.triton_launcher import TritonServer

    server = TritonServer(repository, log_path=log_path)
    started = time.perf_counter()
    server.launch(timeout=900)
    load_s = time.perf_counter() - started
    try:
        client = grpcclient.InferenceServerClient(server.urls["grpc"])
        result = stream_request(client, "function_calling_agent", text_request(DEMO_PROMPT, 8, return_trace=True),
                                timeout_s=1200)
        client.close()
        if result.error or result.t_first is None:
            raise RuntimeError(f"demo request failed ({result.error or 'no answer text'}); log: {log_path}")
        return AgentTiming(result.t_first - result.t_start, usage_of(result)["prompt_tokens"], load_s)
    finally:
        server.stop()


def configure_cpu(out: Path, engine: str, tokenizer_dir: Path, model: Path, threads: int) -> Path:
    from deploy.configure_repository import configure
    from function_calling_agent.model_config import set_parameter

    values = {"engine": engine, "tokenizer_dir": str(tokenizer_dir), "tool_modules": FINANCE_TOOLS}
    values["model_dir" if engine == "torch" else "gguf_path"] = str(model)
    configure("cpu", out, values, overwrite=True)
    if threads:
        config = out / "tensorrt_llm" / "config.pbtxt"
        key = "torch_threads" if engine == "torch" else "threads"
        config.write_text(set_parameter(config.read_text(encoding="utf-8"), key, str(threads)), encoding="utf-8")
    return out


def ratio(torch_value: float, llama_value: float) -> str:
    """torch : llama.cpp, the smaller side written as 1."""
    if not (torch_value > 0 and llama_value > 0):
        return "n/a"
    if torch_value >= llama_value:
        return f"{torch_value / llama_value:.1f} : 1"
    return f"1 : {llama_value / torch_value:.1f}"


def run_arch(arch: str, args, work: Path, tokenizer_dir: Path) -> list[tuple[str, float, float, str]]:
    from function_calling_agent.llamacpp_engine.binding import ContextSettings, LlamaModel
    from function_calling_agent.llamacpp_engine.convert import quantize_gguf, write_gguf
    from function_calling_agent.llamacpp_engine.engine import LlamaCppEngine

    log = lambda message: print(f"  [{arch}] {message}", flush=True)  # noqa: E731
    prompt = tuple(torch.randint(100, VOCAB_SIZE - 100, (args.prompt_tokens,),
                                 generator=torch.Generator().manual_seed(1)).tolist())
    context = args.prompt_tokens + args.new_tokens + 8

    started = time.perf_counter()
    model = build_model(arch)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    log(f"random float32 model, {params_m:.0f}M parameters, built in {time.perf_counter() - started:.0f} s")
    engine = GenerationEngine(model, prefix_cache_max_tokens=context, prefill_chunk_tokens=512,
                              torch_threads=args.threads)
    try:
        torch_speed = measure_engine(engine, prompt, args.new_tokens, args.prefill_budget_s, args.decode_budget_s)
    finally:
        engine.close()
    log(f"torch: prefill {torch_speed.prefill_rate:.1f} tokens/s, decode {torch_speed.decode_ms:.0f} ms/token")

    # The weights are the same on every run (a seeded block), so a --work-dir run reuses what an earlier one wrote.
    checkpoint = work / arch / "checkpoint"
    if not (checkpoint / "config.json").is_file():
        model.to(torch.bfloat16).save_pretrained(checkpoint, safe_serialization=True)  # the torch server casts back
    del model, engine
    gc.collect()

    gguf = work / arch / f"{arch}-{args.quant.lower()}.gguf"
    if gguf.is_file():
        log(f"GGUF {args.quant}: {gguf.stat().st_size / 2**20:.0f} MiB (from an earlier run)")
    else:
        started = time.perf_counter()
        f16 = write_gguf(checkpoint, work / arch / f"{arch}-f16.gguf", dtype="f16", tokenizer_dir=tokenizer_dir)
        converted_s = time.perf_counter() - started
        quantize_gguf(f16, gguf, args.quant)
        f16.unlink()
        log(f"GGUF {args.quant}: {gguf.stat().st_size / 2**20:.0f} MiB (converted in {converted_s:.0f} s, quantized "
            f"in {time.perf_counter() - started - converted_s:.0f} s)")
    threads = args.threads or len(os.sched_getaffinity(0))
    llama = LlamaCppEngine(LlamaModel(gguf, ContextSettings(n_ctx=max(context, 1024), n_seq_max=1, n_batch=513,
                                                            n_threads=threads, n_threads_batch=threads)),
                           prefill_chunk_tokens=512)
    try:
        llama_speed = measure_engine(llama, prompt, args.new_tokens, args.prefill_budget_s, args.decode_budget_s)
    finally:
        llama.close()
    log(f"llama.cpp: prefill {llama_speed.prefill_rate:.1f} tokens/s, decode {llama_speed.decode_ms:.0f} ms/token")

    rows = [(f"prefill tokens/s ({torch_speed.prefill_tokens} : {llama_speed.prefill_tokens} prompt tokens)",
             torch_speed.prefill_rate, llama_speed.prefill_rate, "higher is better"),
            (f"decode ms/token ({torch_speed.decode_tokens} : {llama_speed.decode_tokens} tokens)",
             torch_speed.decode_ms, llama_speed.decode_ms, "lower is better")]
    if args.agent:
        timings = {}
        for engine_name, model_path in (("torch", checkpoint), ("llamacpp", gguf)):
            repository = configure_cpu(work / arch / f"repo-{engine_name}", engine_name, tokenizer_dir, model_path,
                                       args.threads)
            timings[engine_name] = agent_ttft(repository, work / arch / f"tritonserver-{engine_name}.log")
            log(f"agent on {engine_name}: server ready in {timings[engine_name].load_s:.0f} s, first answer token "
                f"after {timings[engine_name].ttft_s:.1f} s ({timings[engine_name].prompt_tokens} prompt tokens)")
        rows.append((f"agent: first answer token, s ({timings['torch'].prompt_tokens} prompt tokens)",
                     timings["torch"].ttft_s, timings["llamacpp"].ttft_s, "lower is better"))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="qwen2.5-1.5b,qwen2.5-0.5b", help=f"from {', '.join(ARCHITECTURES)}")
    parser.add_argument("--quant", default="Q4_K_M", help="llama.cpp quantization of the GGUF (Q4_K_M, Q4_0, Q8_0...)")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prefill-budget-s", type=float, default=120.0)
    parser.add_argument("--decode-budget-s", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=0,
                        help="threads of both engines, in-process and on the servers (0: their defaults, all cores)")
    parser.add_argument("--no-agent", dest="agent", action="store_false", help="skip the agent runs on tritonserver")
    parser.add_argument("--work-dir", help="keep models, repositories and server logs here (default: a temp dir)")
    args = parser.parse_args(argv)

    import llama_cpp

    print(f"torch {torch.__version__} ({args.threads or torch.get_num_threads()} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}), llama-cpp-python {llama_cpp.__version__}, "
          f"{os.cpu_count()} cores; prompt {args.prompt_tokens}, decode {args.new_tokens} tokens; torch float32 vs "
          f"llama.cpp {args.quant}; load average {os.getloadavg()[0]:.1f}", flush=True)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="cpu-engine-speed-"))
    total = time.perf_counter()
    results = {}
    try:
        tokenizer_dir = padded_tokenizer(work / "tokenizer")
        for arch in args.archs.split(","):
            results[arch] = run_arch(arch, args, work, tokenizer_dir)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)

    header = f"| model shape | measure | torch float32 | llama.cpp {args.quant} | torch : llama.cpp |"
    print()
    print(header)
    print("| --- | --- | --- | --- | --- |")
    for arch, rows in results.items():
        for label, torch_value, llama_value, _ in rows:
            print(f"| {arch} | {label} | {torch_value:.1f} | {llama_value:.1f} | {ratio(torch_value, llama_value)} |")
    print(f"\ntotal {time.perf_counter() - total:.0f} s, load average {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
