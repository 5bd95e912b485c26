"""llama.cpp engine (`tensorrt_llm` contract on a GGUF through llama-cpp-python): the generation core against the
torch reference, batching, prefix reuse, stop/cancel, the vocabulary check, the HF -> GGUF converter and quantizer,
GGUF resolution, the config, and a real tritonserver refusing a GGUF that does not match the tokenizer.

The contract on a real server (streaming, stop requests, cancellation, bad requests) is tests/test_cpu_engine.py,
run for both engines; the agent end to end on this engine is tests/test_cpu_profile.py.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deploy.triton_launcher import free_port
from function_calling_agent.cpu_engine import (
    ConfigError,
    FinishReason,
    GenerationRequest,
    SamplingParams,
    StopSignalBoard,
    parse_word_list,
    stop_signals,
)
from function_calling_agent.llamacpp_engine import LlamaCppConfig, VocabularyMismatch, check_vocabulary
from function_calling_agent.llamacpp_engine.binding import ContextSettings, LlamaModel
from function_calling_agent.llamacpp_engine.convert import ConversionError, quantize_gguf, write_gguf
from function_calling_agent.llamacpp_engine.engine import LlamaCppEngine
from function_calling_agent.llamacpp_engine.load import open_engine
from function_calling_agent.llamacpp_engine.resolve import GgufUnavailable, resolve_gguf

REPO_ROOT = Path(__file__).resolve().parent.parent
LLAMACPP_MODEL_DIR = REPO_ROOT / "model_repository" / "tensorrt_llm_llamacpp"
TORCH_MODEL_DIR = REPO_ROOT / "model_repository" / "tensorrt_llm_cpu"
PROMPT = (1, 17, 42, 99, 123, 7, 300, 12, 55, 801, 64, 33)


def word_list(*words) -> np.ndarray:
    """TensorRT-LLM word-list tensor [1, 2, L]."""
    ids = [t for w in words for t in w]
    offsets = list(np.cumsum([len(w) for w in words]))
    array = np.zeros((1, 2, max(len(ids), len(offsets))), dtype=np.int32)
    array[0, 1, :] = -1
    array[0, 0, : len(ids)] = ids
    array[0, 1, : len(offsets)] = offsets
    return array


def load_tokenizer(directory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


@pytest.fixture(scope="module")
def torch_model(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()


def greedy_reference(model, prompt, n) -> list[int]:
    """Greedy decoding on transformers/torch without any KV cache: a full forward over the sequence per token."""
    sequence = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            sequence.append(int(model(torch.tensor([sequence])).logits[0, -1].argmax()))
    return sequence[len(prompt):]


@pytest.fixture
def make_engine(tiny_llama_gguf):
    engines = []

    def make(kv_cache_tokens=2048, max_sequences=4, prefill_chunk_tokens=64, **kwargs) -> LlamaCppEngine:
        model = LlamaModel(tiny_llama_gguf, ContextSettings(
            n_ctx=kv_cache_tokens, n_seq_max=max_sequences, n_batch=prefill_chunk_tokens + max_sequences,
            n_threads=1, n_threads_batch=1, kv_cache_type="f32"))
        engine = LlamaCppEngine(model, prefill_chunk_tokens=prefill_chunk_tokens, **kwargs)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def run_all(engine, requests, timeout=60):
    """Submit every request at once; return their results in order."""
    queues = []
    for request in requests:
        updates: queue.Queue = queue.Queue()
        engine.submit(request, updates.put)
        queues.append(updates)
    results = []
    for updates in queues:
        tokens = []
        while True:
            update = updates.get(timeout=timeout)
            assert update.error is None, update.error
            tokens.extend(update.token_ids)
            if update.final:
                results.append((tuple(tokens), update.finish_reason, update.stats))
                break
    return results


# ---- generation core --------------------------------------------------------------------------------------------


def test_greedy_matches_the_torch_reference_and_is_deterministic(make_engine, torch_model):
    engine = make_engine()
    first = engine.generate(GenerationRequest(PROMPT, 24), timeout=60)
    second = engine.generate(GenerationRequest(PROMPT, 24), timeout=60)
    assert list(first.token_ids) == greedy_reference(torch_model, PROMPT, 24)
    assert second.token_ids == first.token_ids
    assert first.finish_reason is FinishReason.LENGTH
    assert first.stats.prefilled_tokens == len(PROMPT) and first.stats.reused_tokens == 0


def test_concurrent_requests_are_batched_and_each_matches_its_solo_run(make_engine, torch_model):
    engine = make_engine(prefill_chunk_tokens=8)  # several steps of prefill interleaved with the others' decoding
    prompts = [PROMPT, tuple(range(400, 431)), PROMPT[:5] + (900, 901, 902), tuple(range(50, 60))]
    results = run_all(engine, [GenerationRequest(p, 12 + i) for i, p in enumerate(prompts)])
    for i, (prompt, (tokens, reason, _)) in enumerate(zip(prompts, results)):
        assert list(tokens) == greedy_reference(torch_model, prompt, 12 + i), i
        assert reason is FinishReason.LENGTH


def test_more_requests_than_sequences_wait_their_turn(make_engine, torch_model):
    # Two sequences and a KV cache of 64 cells: the others queue until a slot and room are free.
    engine = make_engine(kv_cache_tokens=64, max_sequences=2, max_seq_len=40)
    prompts = [tuple(range(100 + 30 * i, 110 + 30 * i)) for i in range(5)]
    results = run_all(engine, [GenerationRequest(p, 20) for p in prompts])
    for prompt, (tokens, _, _) in zip(prompts, results):
        assert list(tokens) == greedy_reference(torch_model, prompt, 20)


def test_prefix_reuse_evaluates_only_new_tokens_and_keeps_greedy_output(make_engine):
    cached = make_engine()
    uncached = make_engine(prefix_reuse=False)
    first = cached.generate(GenerationRequest(PROMPT, 16), timeout=60)
    # The agent's next turn: previous prompt + reply + new tokens. The last sampled token was never fed back,
    # so its KV is not cached.
    extended = PROMPT + first.token_ids + (5, 6, 7, 8)
    second = cached.generate(GenerationRequest(extended, 16), timeout=60)
    assert second.stats.reused_tokens == len(PROMPT) + len(first.token_ids) - 1
    assert second.stats.prefilled_tokens == len(extended) - second.stats.reused_tokens
    reference = uncached.generate(GenerationRequest(extended, 16), timeout=60)
    assert second.token_ids == reference.token_ids and reference.stats.reused_tokens == 0
    # A prompt that diverges midway reuses exactly the shared part.
    diverged = PROMPT[:5] + (900, 901)
    third = cached.generate(GenerationRequest(diverged, 4), timeout=60)
    assert third.stats.reused_tokens == 5
    assert third.token_ids == uncached.generate(GenerationRequest(diverged, 4), timeout=60).token_ids


def test_prefix_reuse_after_end_id_covers_prompt_and_whole_reply(make_engine):
    engine = make_engine()
    reference = make_engine(prefix_reuse=False).generate(GenerationRequest(PROMPT, 12), timeout=60).token_ids
    end_id = reference[6]
    first = engine.generate(GenerationRequest(PROMPT, 12, end_id=end_id), timeout=60)
    assert first.finish_reason is FinishReason.END_ID
    assert first.token_ids == reference[: reference.index(end_id)]  # end_id itself is not returned
    second = engine.generate(GenerationRequest(PROMPT + first.token_ids + (end_id, 11, 12), 4), timeout=60)
    assert second.stats.reused_tokens == len(PROMPT) + len(first.token_ids)


def test_a_request_sharing_a_prefix_leaves_the_longer_cached_sequence_intact(make_engine):
    # A second conversation starting like the first must not cut the first one's cached later turns.
    engine = make_engine()
    first = engine.generate(GenerationRequest(PROMPT, 16), timeout=60)
    assert engine.generate(GenerationRequest(PROMPT, 4), timeout=60).stats.reused_tokens == len(PROMPT) - 1
    extended = PROMPT + first.token_ids + (5, 6)
    assert engine.generate(GenerationRequest(extended, 4), timeout=60).stats.reused_tokens == len(PROMPT) + 15


def test_request_is_never_fully_served_from_cache(make_engine):
    engine = make_engine()
    first = engine.generate(GenerationRequest(PROMPT, 8), timeout=60)
    again = engine.generate(GenerationRequest(PROMPT, 8), timeout=60)
    assert again.stats.reused_tokens == len(PROMPT) - 1 and again.stats.prefilled_tokens == 1
    assert again.token_ids == first.token_ids


def test_cached_prefixes_are_bounded_by_the_slots_with_lru_eviction(make_engine):
    engine = make_engine(max_sequences=2)
    prompts = [tuple(range(start, start + 20)) for start in (10, 200, 400, 600)]
    for prompt in prompts:
        engine.generate(GenerationRequest(prompt, 5), timeout=60)
    assert [seq[:20] for seq in engine.cached_sequences()] == [prompts[-2], prompts[-1]]  # the two oldest evicted
    assert engine.generate(GenerationRequest(prompts[0], 2), timeout=60).stats.reused_tokens == 0
    assert engine.generate(GenerationRequest(prompts[-1], 2), timeout=60).stats.reused_tokens == 19


def test_a_running_requests_prefix_is_shared_with_a_new_one(make_engine):
    engine = make_engine(kv_cache_tokens=4096)
    long_updates: queue.Queue = queue.Queue()
    handle = engine.submit(GenerationRequest(PROMPT, 4000), long_updates.put)
    assert not long_updates.get(timeout=30).final  # its prompt is evaluated and it is decoding
    shared = engine.generate(GenerationRequest(PROMPT[:8] + (700, 701), 4), timeout=60)
    handle.stop()
    while not (update := long_updates.get(timeout=30)).final:
        pass
    # Still running when the second request ended: the 8 tokens were copied from its sequence, not recomputed.
    assert update.finish_reason is FinishReason.STOPPED
    assert shared.stats.reused_tokens == 8
    uncached = make_engine(prefix_reuse=False).generate(GenerationRequest(PROMPT[:8] + (700, 701), 4), timeout=60)
    assert shared.token_ids == uncached.token_ids


def test_kv_cache_eviction_makes_room_for_new_requests(make_engine, torch_model):
    # Cached prefixes fill the 96 cells; a new long request evicts them instead of failing.
    engine = make_engine(kv_cache_tokens=96, max_sequences=3, max_seq_len=90)
    for start in (100, 300):
        engine.generate(GenerationRequest(tuple(range(start, start + 40)), 4), timeout=60)
    prompt = tuple(range(500, 570))
    result = engine.generate(GenerationRequest(prompt, 15), timeout=60)
    assert list(result.token_ids) == greedy_reference(torch_model, prompt, 15)


def test_stop_words_end_generation_and_are_returned(make_engine):
    engine = make_engine()
    reference = engine.generate(GenerationRequest(PROMPT, 20), timeout=60).token_ids
    stop_word = reference[8:10]
    result = engine.generate(
        GenerationRequest(PROMPT, 20, stop_words=parse_word_list(word_list((4, 4, 4), stop_word))), timeout=60)
    assert result.finish_reason is FinishReason.STOP_WORDS
    assert result.token_ids[-2:] == stop_word and len(result.token_ids) <= 10


def test_bad_words_are_never_completed(make_engine):
    engine = make_engine()
    reference = engine.generate(GenerationRequest(PROMPT, 6), timeout=60).token_ids
    single = engine.generate(GenerationRequest(PROMPT, 6, bad_words=((reference[0],),)), timeout=60)
    assert single.token_ids[0] != reference[0]
    pair = engine.generate(GenerationRequest(PROMPT, 6, bad_words=((reference[0], reference[1]),)), timeout=60)
    assert pair.token_ids[0] == reference[0] and pair.token_ids[1] != reference[1]


def test_max_seq_len_caps_output_and_rejects_long_prompts(make_engine):
    engine = make_engine(max_seq_len=len(PROMPT) + 5)
    assert len(engine.generate(GenerationRequest(PROMPT, 50), timeout=60).token_ids) == 5
    with pytest.raises(ValueError, match="max_seq_len"):
        engine.submit(GenerationRequest(tuple(range(1, 40)), 5), lambda update: None)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.submit(GenerationRequest((1, 2, 99999), 5), lambda update: None)
    with pytest.raises(ValueError, match="kv_cache_tokens"):
        make_engine(kv_cache_tokens=256, max_seq_len=4096)


def test_sampling_is_seeded_and_penalties_apply(make_engine):
    engine = make_engine()
    sampled = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, seed=7)
    a = engine.generate(GenerationRequest(PROMPT, 16, sampling=sampled), timeout=60).token_ids
    b = engine.generate(GenerationRequest(PROMPT, 16, sampling=sampled), timeout=60).token_ids
    c = engine.generate(GenerationRequest(PROMPT, 16, sampling=SamplingParams(temperature=1.0, top_k=50, seed=8)),
                        timeout=60).token_ids
    assert a == b and a != c
    greedy = SamplingParams(temperature=0.0, presence_penalty=1e4)
    penalized = engine.generate(GenerationRequest(PROMPT, 16, sampling=greedy), timeout=60).token_ids
    assert len(set(penalized)) == len(penalized) and not set(penalized) & set(PROMPT)
    repeated = SamplingParams(temperature=0.0, repetition_penalty=1e4)
    assert not set(engine.generate(GenerationRequest(PROMPT, 8, sampling=repeated), timeout=60).token_ids) & set(PROMPT)


def test_stop_and_cancel_act_between_steps(make_engine):
    engine = make_engine()
    outcomes = {}
    for action in ("stop", "cancel"):
        updates: queue.Queue = queue.Queue()
        handle = engine.submit(GenerationRequest(PROMPT, 3000), updates.put)
        assert not updates.get(timeout=30).final
        getattr(handle, action)()
        tokens = 0
        while not (update := updates.get(timeout=30)).final:
            tokens += len(update.token_ids)
        outcomes[action] = update.finish_reason
        assert tokens < 3000
    assert outcomes == {"stop": FinishReason.STOPPED, "cancel": FinishReason.CANCELLED}
    # The engine is free again, and the cancelled request left no KV behind to reuse.
    assert engine.generate(GenerationRequest(PROMPT, 3), timeout=60).stats.reused_tokens == len(PROMPT) - 1


def test_stop_posted_by_another_process_stops_generation(make_engine, tmp_path):
    engine = make_engine()
    board = StopSignalBoard(str(tmp_path / "stops"))
    updates: queue.Queue = queue.Queue()
    engine.submit(GenerationRequest(PROMPT, 3000), updates.put, should_stop=board.watch("req-1"))
    assert not updates.get(timeout=30).final
    post = (
        "import importlib.util, sys; spec = importlib.util.spec_from_file_location('stop_signals', sys.argv[1]); "
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
        "module.StopSignalBoard(sys.argv[2]).post('req-1')"
    )
    subprocess.run([sys.executable, "-c", post, stop_signals.__file__, str(tmp_path / "stops")], check=True, timeout=60)
    generated = 0
    while not (update := updates.get(timeout=30)).final:
        generated += len(update.token_ids)
    assert update.finish_reason is FinishReason.STOPPED and generated < 3000


def test_close_cancels_running_and_queued_requests(tiny_llama_gguf):
    model = LlamaModel(tiny_llama_gguf, ContextSettings(512, 1, 65, 1, 1))
    engine = LlamaCppEngine(model, prefill_chunk_tokens=64)
    running: queue.Queue = queue.Queue()
    queued: queue.Queue = queue.Queue()
    engine.submit(GenerationRequest(PROMPT, 400), running.put)
    engine.submit(GenerationRequest(PROMPT, 400), queued.put)  # one sequence: this one waits
    assert not running.get(timeout=30).final
    engine.close()
    while not (update := running.get(timeout=30)).final:
        pass
    assert update.finish_reason is FinishReason.CANCELLED
    assert queued.get(timeout=30).finish_reason is FinishReason.CANCELLED
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(GenerationRequest(PROMPT, 4), lambda update: None)


# ---- vocabulary check -------------------------------------------------------------------------------------------


def _edited_tokenizer(source: str, target: Path, edit) -> str:
    shutil.copytree(source, target)
    data = json.loads((target / "tokenizer.json").read_text(encoding="utf-8"))
    edit(data)
    (target / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    config = json.loads((target / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("added_tokens_decoder", None)  # ids come from tokenizer.json alone
    (target / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return str(target)


def _swap_tool_call_tags(data) -> None:
    ids = {t["content"]: t["id"] for t in data["added_tokens"]}
    a, b = ids["<tool_call>"], ids["</tool_call>"]
    for token in data["added_tokens"]:
        token["id"] = {a: b, b: a}.get(token["id"], token["id"])
    vocab = data["model"]["vocab"]
    vocab["<tool_call>"], vocab["</tool_call>"] = b, a


def _drop_common_merges(data) -> None:
    del data["model"]["merges"][:50]  # the most frequent pairs: every English text tokenizes differently


@pytest.fixture(scope="module")
def gguf_vocabulary(tiny_llama_gguf):
    model = LlamaModel(tiny_llama_gguf, ContextSettings(256, 1, 64, 1, 1))
    yield model
    model.close()


def test_vocabulary_check_accepts_the_tokenizer_the_gguf_was_made_from(gguf_vocabulary, hermes_tokenizer_dir):
    from transformers import AutoTokenizer

    check_vocabulary(gguf_vocabulary, AutoTokenizer.from_pretrained(hermes_tokenizer_dir))


@pytest.mark.parametrize("edit, expected", [
    (_swap_tool_call_tags, r"<tool_call>: id 5 in the tokenizer, 4 in the GGUF file.*</tool_call>: id 4"),
    (_drop_common_merges, r"the sample text tokenizes differently from token \d+"),
])
def test_vocabulary_check_refuses_a_mismatched_tokenizer(gguf_vocabulary, hermes_tokenizer_dir, tmp_path, edit,
                                                         expected):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_edited_tokenizer(hermes_tokenizer_dir, tmp_path / "tok", edit))
    with pytest.raises(VocabularyMismatch, match=expected) as error:
        check_vocabulary(gguf_vocabulary, tokenizer)
    assert "Use the tokenizer of the model the GGUF was made from" in str(error.value)


def test_open_engine_refuses_to_load_a_mismatched_tokenizer(tiny_llama_gguf, hermes_tokenizer_dir, tmp_path):
    tokenizer_dir = _edited_tokenizer(hermes_tokenizer_dir, tmp_path / "tok", _swap_tool_call_tags)
    config = LlamaCppConfig.from_parameters({"gguf_path": tiny_llama_gguf, "tokenizer_dir": tokenizer_dir,
                                             "kv_cache_tokens": "256", "threads": "1"})
    with pytest.raises(VocabularyMismatch, match=re.escape(tokenizer_dir)):
        open_engine(config)
    good = LlamaCppConfig.from_parameters({"gguf_path": tiny_llama_gguf, "tokenizer_dir": hermes_tokenizer_dir,
                                           "kv_cache_tokens": "256", "threads": "1"})
    engine = open_engine(good)
    try:
        assert len(engine.generate(GenerationRequest(PROMPT, 3), timeout=60).token_ids) == 3
    finally:
        engine.close()


# ---- converter, quantizer, resolution -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_qwen2_dir(tmp_path_factory, hermes_tokenizer_dir):
    """A tiny random Qwen2 (the default model's architecture: q/k/v biases, tied embeddings, NeoX rotary)."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    directory = tmp_path_factory.mktemp("tiny-qwen2")
    tokenizer = AutoTokenizer.from_pretrained(hermes_tokenizer_dir)
    config = Qwen2Config(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, rope_theta=1000000.0)
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:  # random biases, so a dropped or misnamed bias shows in the output
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def test_qwen2_checkpoint_converts_and_matches_torch(tiny_qwen2_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    path = write_gguf(tiny_qwen2_dir, tmp_path / "qwen2.gguf", dtype="f32")
    model = LlamaModel(path, ContextSettings(512, 1, 64, 1, 1, "f32"))
    # The vocabulary is padded to the model's embedding rows with tokens that are never produced.
    tokenizer = load_tokenizer(tiny_qwen2_dir)
    assert model.n_vocab == 2048 > len(tokenizer)
    check_vocabulary(model, tokenizer)
    engine = LlamaCppEngine(model, prefill_chunk_tokens=64)
    try:
        result = engine.generate(GenerationRequest(PROMPT, 16), timeout=60)
    finally:
        engine.close()
    reference = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.float32).eval()
    assert list(result.token_ids) == greedy_reference(reference, PROMPT, 16)


def test_quantized_gguf_is_smaller_and_still_generates(tiny_qwen2_dir, tmp_path):
    f16 = write_gguf(tiny_qwen2_dir, tmp_path / "qwen2-f16.gguf", dtype="f16")
    q4 = quantize_gguf(f16, tmp_path / "qwen2-q4_0.gguf", "Q4_0", threads=1)
    assert q4.stat().st_size < f16.stat().st_size
    engine = LlamaCppEngine(LlamaModel(q4, ContextSettings(512, 1, 64, 1, 1)), prefill_chunk_tokens=64)
    try:
        assert len(engine.generate(GenerationRequest(PROMPT, 8), timeout=60).token_ids) == 8
    finally:
        engine.close()
    with pytest.raises(ValueError, match="quant must be one of"):
        quantize_gguf(f16, tmp_path / "x.gguf", "Q3_FANCY")


def test_converter_refuses_what_it_does_not_cover(tiny_llama_dir, tmp_path):
    checkpoint = Path(shutil.copytree(tiny_llama_dir, tmp_path / "gpt2ish"))
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    (checkpoint / "config.json").write_text(json.dumps({**config, "model_type": "mistral",
                                                        "architectures": ["MistralForCausalLM"]}), encoding="utf-8")
    with pytest.raises(ConversionError, match="model_type 'mistral' is not converted here"):
        write_gguf(checkpoint, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_resolve_gguf_from_a_file_a_checkpoint_and_the_hub(tiny_llama_dir, tiny_llama_gguf, hermes_tokenizer_dir,
                                                          tmp_path):
    local = resolve_gguf(tiny_llama_gguf, tokenizer_dir=hermes_tokenizer_dir, cache_dir=tmp_path)
    assert str(local.gguf_path) == tiny_llama_gguf and local.tokenizer_dir == Path(hermes_tokenizer_dir).resolve()
    with pytest.raises(GgufUnavailable, match="needs its Hugging Face tokenizer"):
        resolve_gguf(tiny_llama_gguf, cache_dir=tmp_path)
    with pytest.raises(GgufUnavailable, match="does not exist"):
        resolve_gguf(str(tmp_path / "missing.gguf"), tokenizer_dir=hermes_tokenizer_dir, cache_dir=tmp_path)

    messages: list[str] = []
    converted = resolve_gguf(tiny_llama_dir, cache_dir=tmp_path / "cache", quant="Q8_0", log=messages.append)
    assert converted.gguf_path.is_file() and converted.gguf_path.name.endswith("-q8_0.gguf")
    assert converted.tokenizer_dir == Path(tiny_llama_dir).resolve()
    assert any("converting" in m for m in messages)
    again = resolve_gguf(tiny_llama_dir, cache_dir=tmp_path / "cache", quant="Q8_0", log=messages.append)
    assert again.gguf_path == converted.gguf_path and sum("converting" in m for m in messages) == 1  # cached
    model = LlamaModel(converted.gguf_path, ContextSettings(256, 1, 64, 1, 1))
    try:
        check_vocabulary(model, load_tokenizer(converted.tokenizer_dir))
    finally:
        model.close()

    with pytest.raises(GgufUnavailable, match="Qwen/Qwen2.5-1.5B-Instruct is not cached and downloads are off"):
        resolve_gguf("Qwen/Qwen2.5-1.5B-Instruct", cache_dir=tmp_path / "cache", allow_download=False)

    # The CLI scripts call (JSON on stdout, the reason on stderr and exit status 2 when there is no GGUF).
    command = [sys.executable, "-m", "function_calling_agent.llamacpp_engine.resolve", "--cache-dir",
               str(tmp_path / "cache")]
    done = subprocess.run(command + [tiny_llama_gguf, "--tokenizer", hermes_tokenizer_dir], capture_output=True,
                          text=True, timeout=120, check=True)
    assert json.loads(done.stdout) == {"gguf_path": tiny_llama_gguf, "tokenizer_dir": str(Path(hermes_tokenizer_dir)
                                                                                          .resolve()),
                                       "origin": "local GGUF file"}
    offline = subprocess.run(command + ["--offline", "Qwen/Qwen2.5-0.5B-Instruct"], capture_output=True, text=True,
                             timeout=120)
    assert offline.returncode == 2 and "local .gguf file with its tokenizer directory" in offline.stderr
    # A hub that cannot be reached (a refused port here): one line saying so and what to pass, no traceback.
    unreachable = subprocess.run(command + ["Qwen/Qwen2.5-0.5B-Instruct"], capture_output=True, text=True, timeout=120,
                                 env={**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    assert unreachable.returncode == 2, unreachable.stderr
    lines = unreachable.stderr.strip().splitlines()
    assert lines[-1].startswith("resolve: fetching Qwen/Qwen2.5-0.5B-Instruct from the Hugging Face hub failed (")
    assert "Traceback" not in unreachable.stderr


# ---- config -------------------------------------------------------------------------------------------------------


def test_config_is_parsed_strictly():
    config = LlamaCppConfig.from_parameters({"gguf_path": "/m.gguf", "tokenizer_dir": "/t", "max_sequences": "2",
                                             "enable_kv_cache_reuse": "false", "stop_signal_dir": ""})
    assert config.max_sequences == 2 and not config.enable_kv_cache_reuse and config.kv_cache_tokens == 16384
    assert config.thread_count >= 1
    with pytest.raises(ConfigError, match="unfilled"):
        LlamaCppConfig.from_parameters({"gguf_path": "${gguf_path}", "tokenizer_dir": "/t"})
    with pytest.raises(ConfigError, match="tokenizer_dir"):
        LlamaCppConfig.from_parameters({"gguf_path": "/m.gguf"})
    with pytest.raises(ConfigError, match="unknown"):
        LlamaCppConfig.from_parameters({"gguf_path": "/m.gguf", "tokenizer_dir": "/t", "model_dir": "/m"})
    with pytest.raises(ConfigError, match="kv_cache_type"):
        LlamaCppConfig.from_parameters({"gguf_path": "/m.gguf", "tokenizer_dir": "/t", "kv_cache_type": "q4"})
    with pytest.raises(ConfigError, match="must not exceed kv_cache_tokens"):
        LlamaCppConfig.from_parameters({"gguf_path": "/m.gguf", "tokenizer_dir": "/t", "max_seq_len": "9000",
                                        "kv_cache_tokens": "4096"})


def _parse_config(path: Path, values: dict):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    text = path.read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("${" + key + "}", value)
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_config_template_speaks_exactly_the_torch_engines_contract():
    text = (LLAMACPP_MODEL_DIR / "config.pbtxt").read_text(encoding="utf-8")
    assert set(re.findall(r"\$\{(\w+)\}", text)) == {"gguf_path", "tokenizer_dir", "engine_instance_count"}
    ours = _parse_config(LLAMACPP_MODEL_DIR / "config.pbtxt",
                         {"gguf_path": "/m.gguf", "tokenizer_dir": "/t", "engine_instance_count": "1"})
    torch_engine = _parse_config(TORCH_MODEL_DIR / "config.pbtxt", {"model_dir": "/m", "engine_instance_count": "1"})
    assert list(ours.input) == list(torch_engine.input) and list(ours.output) == list(torch_engine.output)
    assert ours.max_batch_size == torch_engine.max_batch_size and ours.model_transaction_policy.decoupled
    assert ours.name == "" and ours.backend == "python"
    LlamaCppConfig.from_model_config(
        {"parameters": {k: {"string_value": v.string_value} for k, v in ours.parameters.items()}})


# ---- real tritonserver --------------------------------------------------------------------------------------------


def _engine_model(repo: Path, name: str, gguf: str, tokenizer_dir: str) -> None:
    target = repo / name
    shutil.copytree(LLAMACPP_MODEL_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
    config = target / "config.pbtxt"
    text = config.read_text(encoding="utf-8")
    for key, value in (("gguf_path", gguf), ("tokenizer_dir", tokenizer_dir), ("engine_instance_count", "1")):
        text = text.replace("${" + key + "}", value)
    text = re.sub(r'(key: "threads"\s*value: \{ string_value: )"0"', r'\1"1"', text)
    config.write_text(text, encoding="utf-8")


@pytest.mark.integration
def test_server_refuses_to_load_a_gguf_that_does_not_match_the_tokenizer(triton_server_factory, tiny_llama_gguf,
                                                                        hermes_tokenizer_dir, tmp_path):
    from tritonclient.utils import InferenceServerException

    mismatched = _edited_tokenizer(hermes_tokenizer_dir, tmp_path / "tok", _swap_tool_call_tags)
    repo = tmp_path / "repo"
    _engine_model(repo, "tensorrt_llm", tiny_llama_gguf, hermes_tokenizer_dir)
    _engine_model(repo, "tensorrt_llm_mismatched", tiny_llama_gguf, mismatched)
    server = triton_server_factory(repo, model_control_mode="explicit", load_models=["tensorrt_llm"])
    client = server.http_client()
    with pytest.raises(InferenceServerException) as error:
        client.load_model("tensorrt_llm_mismatched")
    message = str(error.value)
    assert "does not match" in message and "<tool_call>" in message, message
    assert not client.is_model_ready("tensorrt_llm_mismatched")
    assert client.is_model_ready("tensorrt_llm")  # the server keeps serving the good one
