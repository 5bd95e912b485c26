"""Tiny Llamas trained in seconds to drive the agent through real tool rounds where no checkpoint can be had.

A random model never emits a tool call, so an end-to-end run over the CPU engine would stop after one turn. These
models are trained (CPU, seconds to a minute) on the exact token ids the agent itself produces: every `Conversation`
is run through the agent's own loop (`function_calling_agent.run.AgentRun`) against an in-process engine that replays
its completions, with the tools the server offers, so the prompts are the ones the served agent sends, token for
token. Greedy decoding then gives each completion back.

- A conversation may continue an earlier one (`follows`): its request is the earlier run's `messages` (as the trace
  returns them, decoded the way the server decodes a client's `messages`) plus a new user message.
- Every conversation runs under each `ToolVariant` (the same tools and schemas, different results, e.g. several texts
  of one network error), so the completions do not hang on the exact text of a result. `held_out` variants are not
  trained on and must give the same completions (checked after training: a model that only learned its examples by
  heart is refused).
- Models are cached in `cache_dir/<key>`. The key hashes what shapes the model: the training prompts and completions
  (token ids) and the training settings. A code change that alters the agent's prompts changes the key, so the model
  is trained again; `extra_variants` are trained on but not part of the key (text observed on this machine at build
  time, such as the real network error, which must not make every start retrain).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from ..chat_format import ChatFormat
from ..run import AgentLimits
from ..scripted_engine.replay import replay_prompts
from ..tools.spec import ToolSpec

MARKER = ".tiny-tool-model-complete"
# The served config's values that shape prompts (cpu profile / function_calling_agent config.pbtxt).
MAX_CONTEXT_TOKENS = 4096
MAX_TOOL_RESULT_CHARS = 4000
MAX_TOKENS = 64  # max_tokens of the requests the model is trained for

MAX_STEPS = 2000
# Each completion token must beat the runner-up logit by this much on the trained prompts, so KV-cache and
# chunked-prefill rounding in the engine cannot flip a greedy choice; held-out prompts need a smaller positive margin.
MIN_MARGIN = 3.0
MIN_HELD_OUT_MARGIN = 0.5
MODEL_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2}
LEARNING_RATE = 3e-3
BATCH_SEQUENCES = 8  # sequences per step, drawn at random
CHECK_EVERY = 50  # steps between margin checks over every sequence


class TinyModelError(RuntimeError):
    """The conversations did not run as planned, or the model could not learn them."""


@dataclasses.dataclass(frozen=True)
class Conversation:
    """One request the model learns: the user's message and what the model says on each engine turn (tool calls in
    Hermes `<tool_call>` form, the last one the answer). `follows` names a conversation whose messages come first."""

    name: str
    user: str
    completions: tuple[str, ...]
    follows: Optional[str] = None

    @property
    def answer(self) -> str:
        return self.completions[-1]


@dataclasses.dataclass(frozen=True)
class ToolVariant:
    """The tools a conversation runs with (same names and schemas as the served ones; results may differ)."""

    name: str
    tools: Mapping[str, ToolSpec]


@dataclasses.dataclass(frozen=True)
class Transcript:
    """One conversation under one tool variant, as the agent ran it."""

    conversation: str
    variant: str
    prompts: tuple[tuple[int, ...], ...]  # what the agent sent the engine on each turn
    completions: tuple[tuple[int, ...], ...]  # what the engine must answer (each ending with <|im_end|>)
    answer: str  # the agent's final answer
    call_statuses: tuple[str, ...]
    messages: tuple[dict, ...]  # the trace's conversation, to continue it
    engine_turns: int


def completion_ids(tokenizer, conversation: Conversation) -> tuple[tuple[int, ...], ...]:
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return tuple(tuple(tokenizer.encode(text, add_special_tokens=False)) + (end_id,)
                 for text in conversation.completions)


def _as_served_messages(messages: Sequence[dict]) -> tuple[dict, ...]:
    """`messages` the way the server decodes them from a client's JSON `messages` input."""
    import numpy as np

    from ..adapter.contract import decode_request

    inputs = {"messages": np.array([[json.dumps(list(messages), ensure_ascii=False).encode("utf-8")]], dtype=object),
              "max_tokens": np.array([[MAX_TOKENS]], dtype=np.int32)}
    return decode_request(inputs, max_tokens_limit=MAX_CONTEXT_TOKENS - 1, max_input_chars=200_000,
                          engine_inputs=()).messages


def agent_transcripts(tokenizer, conversations: Sequence[Conversation], variant: ToolVariant) -> dict[str, Transcript]:
    """Runs each conversation (in order) through the agent loop with an engine that replays its completions."""
    chat = ChatFormat(tokenizer)
    done: dict[str, Transcript] = {}
    for conversation in conversations:
        completions = completion_ids(tokenizer, conversation)
        user = {"role": "user", "content": conversation.user}
        if conversation.follows is not None:
            if conversation.follows not in done:
                raise TinyModelError(f"conversation {conversation.name!r} follows {conversation.follows!r}, "
                                     "which must come before it")
            messages = _as_served_messages(done[conversation.follows].messages + (user,))
        else:
            messages = (user,)
        prompts, result = replay_prompts(
            chat, variant.tools, messages, completions, max_tokens=MAX_TOKENS,
            limits=AgentLimits(max_context_tokens=MAX_CONTEXT_TOKENS, max_tool_result_chars=MAX_TOOL_RESULT_CHARS))
        if result.finish_reason != "stop" or len(prompts) != len(completions):
            raise TinyModelError(f"conversation {conversation.name!r} ({variant.name}) did not run as planned: "
                                 f"{json.dumps(result.trace(), default=str)[:2000]}")
        trace = result.trace()
        done[conversation.name] = Transcript(
            conversation=conversation.name, variant=variant.name, prompts=tuple(prompts), completions=completions,
            answer=result.text, call_statuses=tuple(c.status for c in result.calls),
            messages=tuple(trace["messages"]), engine_turns=result.usage["engine_turns"])
    return done


def _training_sequence(transcript: Transcript) -> tuple[list[int], list[int]]:
    """All turns of one transcript in one sequence (each prompt extends the previous turn) and the positions whose
    next token is a completion token."""
    full = list(transcript.prompts[-1]) + list(transcript.completions[-1])
    targets = []
    for prompt, completion in zip(transcript.prompts, transcript.completions):
        if tuple(full[: len(prompt)]) != prompt or tuple(full[len(prompt): len(prompt) + len(completion)]) != completion:
            raise TinyModelError("the agent's prompts do not extend each other token for token")
        targets.extend(range(len(prompt) - 1, len(prompt) + len(completion) - 1))
    return full, targets


def training_key(transcripts: Sequence[Transcript]) -> str:
    """Hash of everything that shapes the trained model, given its tokenizer (the ids already depend on it)."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"shape": MODEL_SHAPE, "steps": MAX_STEPS, "margin": MIN_MARGIN, "lr": LEARNING_RATE,
                              "batch": BATCH_SEQUENCES, "check_every": CHECK_EVERY,
                              "held_out_margin": MIN_HELD_OUT_MARGIN}, sort_keys=True).encode())
    for transcript in transcripts:
        digest.update(json.dumps([transcript.prompts, transcript.completions]).encode())
    return digest.hexdigest()[:16]


class _Batch:
    """Training sequences as one shared prefix (the system prompt with the tool schemas, most of every sequence) and
    right-padded suffixes; `rows`/`positions`/`labels` index the completion tokens within the suffixes."""

    def __init__(self, sequences: Sequence[tuple[list[int], list[int]]], pad_id: int):
        import torch

        inputs = [full[:-1] for full, _ in sequences]
        shared = min(len(i) for i in inputs)
        for other in inputs[1:]:
            shared = next((k for k, (a, b) in enumerate(zip(inputs[0][:shared], other)) if a != b), shared)
        # Every completion position stays in the suffixes, where the loss is taken.
        shared = min([shared] + [min(targets) for _, targets in sequences])
        self.prefix = torch.tensor([inputs[0][:shared]])
        length = max(len(i) for i in inputs) - shared
        ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), shared + length), dtype=torch.long)
        mask[:, :shared] = 1
        rows, positions, labels = [], [], []
        for row, ((full, targets), tokens) in enumerate(zip(sequences, inputs)):
            ids[row, : len(tokens) - shared] = torch.tensor(tokens[shared:])
            mask[row, shared: len(tokens)] = 1  # right padding: causal attention never looks at it
            rows += [row] * len(targets)
            positions += [t - shared for t in targets]
            labels += [full[t + 1] for t in targets]
        self.ids, self.mask = ids, mask
        self.rows, self.positions, self.labels = torch.tensor(rows), torch.tensor(positions), torch.tensor(labels)

    def logits(self, model, rows=None):
        """(logits, labels) at the completion positions of `rows` (all if None); the LM head runs only there."""
        import torch

        if rows is None:
            rows = torch.arange(self.ids.shape[0])
        pick = torch.isin(self.rows, rows)
        prefix = model.model(input_ids=self.prefix, use_cache=True).past_key_values
        prefix.batch_repeat_interleave(len(rows))
        hidden = model.model(input_ids=self.ids[rows], attention_mask=self.mask[rows], past_key_values=prefix,
                             use_cache=True).last_hidden_state
        index = torch.searchsorted(rows, self.rows[pick])
        return model.lm_head(hidden[index, self.positions[pick]]), self.labels[pick]

    def margins(self, model):
        import torch

        with torch.no_grad():
            logits, labels = self.logits(model)
        correct = logits.gather(1, labels[:, None])[:, 0]
        logits.scatter_(1, labels[:, None], float("-inf"))
        return correct - logits.max(dim=1).values


def greedy_completion(model, prompt, end_id: int, max_new_tokens: int = MAX_TOKENS) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([list(prompt)]), max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=end_id, pad_token_id=end_id)
    return out[0, len(prompt):].tolist()


def build_tiny_tool_model(
    cache_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    conversations: Sequence[Conversation],
    variants: Sequence[ToolVariant],
    *,
    extra_variants: Callable[[], Sequence[ToolVariant]] = tuple,
    held_out: Sequence[ToolVariant] = (),
    announce: Optional[Callable[[], None]] = None,
) -> str:
    """Train (or find in the cache) a model that gives `conversations`' completions under every tool variant; return
    its directory (`cache_dir/<key>`, holding the model and the tokenizer files). `announce` is called before a
    training starts; `extra_variants()` is called only then. Raises `TinyModelError`."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer_dir))
    keyed = [t for v in variants for t in agent_transcripts(tokenizer, conversations, v).values()]
    directory = Path(cache_dir) / training_key(keyed)
    if (directory / MARKER).is_file():
        return str(directory)
    if announce is not None:
        announce()
    extra = [t for v in extra_variants() for t in agent_transcripts(tokenizer, conversations, v).values()]
    checks = [t for v in held_out for t in agent_transcripts(tokenizer, conversations, v).values()]
    model, report = _train(tokenizer, keyed + extra, checks)

    from transformers import GenerationConfig

    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=end_id, pad_token_id=tokenizer.pad_token_id)
    staging = directory.with_name(f".{directory.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    from transformers.utils import logging as transformers_logging

    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # no "Writing model shards" bar in serve's output
    try:
        model.save_pretrained(staging, safe_serialization=True)
    finally:
        if bars:
            transformers_logging.enable_progress_bar()
    tokenizer.save_pretrained(staging)
    (staging / MARKER).write_text(report + "\n", encoding="utf-8")
    if directory.exists():  # another process finished the same model first
        shutil.rmtree(staging, ignore_errors=True)
    else:
        os.replace(staging, directory)
    return str(directory)


def _train(tokenizer, transcripts: Sequence[Transcript], checks: Sequence[Transcript]):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    started = time.monotonic()
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    train = _Batch([_training_sequence(t) for t in transcripts], tokenizer.pad_token_id)
    config = LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=MAX_CONTEXT_TOKENS, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=end_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, **MODEL_SHAPE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same weights on every machine and run
    try:
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        model.train()
        step = 0
        sequences = train.ids.shape[0]
        order = torch.Generator().manual_seed(0)
        for step in range(1, MAX_STEPS + 1):
            rows = torch.randperm(sequences, generator=order)[:BATCH_SEQUENCES].sort().values
            logits, labels = train.logits(model, rows)
            loss = torch.nn.functional.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % CHECK_EVERY == 0:
                model.eval()
                if train.margins(model).min().item() >= MIN_MARGIN:
                    break
                model.train()
        model.eval()
        margin = train.margins(model).min().item()
        if margin < MIN_MARGIN:
            raise TinyModelError(f"the tiny tool model did not fit in {MAX_STEPS} steps (min margin {margin:.2f})")
        held_out_margin = None
        if checks:
            held_out_margin = _Batch([_training_sequence(t) for t in checks], tokenizer.pad_token_id).margins(
                model).min().item()
            if held_out_margin < MIN_HELD_OUT_MARGIN:
                raise TinyModelError(
                    f"the tiny tool model does not generalise to held-out tool results (min margin "
                    f"{held_out_margin:.2f} < {MIN_HELD_OUT_MARGIN})")
        # The margins are teacher-forced; one greedy decode per conversation confirms the generate path agrees.
        for transcript in {t.conversation: t for t in transcripts}.values():
            for prompt, completion in zip(transcript.prompts, transcript.completions):
                generated = greedy_completion(model, prompt, end_id)
                if tuple(generated) != completion:
                    raise TinyModelError(f"greedy decoding gives {tokenizer.decode(generated)!r}, expected "
                                         f"{tokenizer.decode(completion)!r}")
    finally:
        torch.set_num_threads(threads)
    report = (f"steps={step} min_margin={margin:.2f} held_out_min_margin="
              f"{'n/a' if held_out_margin is None else f'{held_out_margin:.2f}'} sequences={len(transcripts)} "
              f"held_out={len(checks)} seconds={time.monotonic() - started:.1f}")
    return model, report
