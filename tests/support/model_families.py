"""Offline stand-ins for the tokenizers and chat templates of the model families the agent serves.

No model hub is reachable here and published templates must not be copied into the project, so each family is
reproduced by a tokenizer we train and a template we wrote, each with the behaviours the real checkpoints have
(shared/reference/model-formats.md):

  hermes_tool_use  Hermes-2-Pro-Llama-3 / Hermes-3-Llama-3.1: `chat_template` is a dict {default, tool_use}; the
                   tool_use template loops over `tools` unconditionally (rendering with tools=None raises
                   TypeError), renders an assistant message with tool calls without its content, and puts
                   consecutive tool results in one `tool` turn. Tool tags are special tokens.
  qwen2.5          Qwen2.5-Instruct: tools under "# Tools" inside <tools></tools> in the system turn, a default
                   system prompt, tool results in a `user` turn, each in <tool_response>, grouped. <|im_start|>,
                   <|im_end|>, <|endoftext|> are special; <tool_call>, </tool_call>, <tool_response>,
                   </tool_response>, <think>, </think> are added tokens NOT flagged special. generation_config.json
                   lists two end ids (<|im_end|>, <|endoftext|>).
  qwen3            Qwen3 hybrid: qwen2.5's tool format plus reasoning: an assistant message after the last real user
                   query renders `<think>\\n{reasoning}\\n</think>\\n\\n{content}` (reasoning from reasoning_content,
                   else split out of content at </think>); when it is the last message and has no reasoning, an
                   empty think block is added; earlier assistant messages lose their reasoning;
                   enable_thinking=false makes the generation prompt `assistant\\n<think>\\n\\n</think>\\n\\n`.
  thinking         QwQ-32B / Qwen3 *-Thinking-2507: the generation prompt ends inside an open think block
                   (`assistant\\n<think>\\n`); reasoning is stripped from every assistant message in history.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from function_calling_agent.offline_models.hermes_tokenizer import _training_corpus

CHATML_DEFAULT = (
    "{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + (m.content or '') + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Hermes tool_use behaviours (written for these tests).
HERMES_TOOL_USE = (
    "{{- bos_token }}"
    "{{- '<|im_start|>system\\nYou are a function calling AI model. Here are the available tools: <tools> ' }}"
    "{%- for tool in tools %}{{- tool | tojson }}{{- ' ' }}{%- endfor %}"  # unconditional: tools=None raises
    "{{- '</tools> Call a tool with <tool_call>\\n{\"name\": <function-name>, \"arguments\": <args-dict>}\\n"
    "</tool_call>' }}"
    "{%- if messages[0].role == 'system' %}{{- '\\n' + messages[0].content }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'assistant' and message.tool_calls %}"
    "{{- '<|im_start|>assistant' }}"  # the content of a message with tool calls is not rendered
    "{%- for tc in message.tool_calls %}{%- set f = tc.function %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + f.name + '\", \"arguments\": ' }}"
    "{%- if f.arguments is string %}{{- f.arguments }}{%- else %}{{- f.arguments | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.previtem is defined and loop.previtem.role != 'tool' %}{{- '<|im_start|>tool\\n' }}{%- endif %}"
    "{{- '<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or loop.nextitem.role != 'tool' %}{{- '<|im_end|>\\n' }}{%- else %}{{- '\\n' }}{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_QWEN_TOOLS = (
    "{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided "
    "with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\\n</tool_call>' }}"
)
_QWEN_CALLS = (
    "{%- for tc in message.tool_calls %}{%- set f = tc.function %}"
    "{%- if content or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' + f.name + '\", \"arguments\": ' }}"
    "{%- if f.arguments is string %}{{- f.arguments }}{%- else %}{{- f.arguments | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}{%- endfor %}"
)
_QWEN_TOOL_RESULT = (
    "{%- if loop.first or loop.previtem.role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or loop.nextitem.role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
)

QWEN25 = (
    "{%- set default_system = 'You are Qwen, a helpful assistant.' %}"
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' + (messages[0].content if messages[0].role == 'system' else default_system) }}"
    + _QWEN_TOOLS + "{{- '<|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- set content = message.content if message.content is string else '' %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' + content }}"
    + _QWEN_CALLS + "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}" + _QWEN_TOOL_RESULT +
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# The last real user query: the highest index of a user message (tool results are `tool` messages).
_QWEN3_QUERY = (
    "{%- set ns = namespace(last_query=-1) %}"
    "{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last_query = loop.index0 %}{%- endif %}"
    "{%- endfor %}"
)

QWEN3 = (
    _QWEN3_QUERY +
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' + (messages[0].content + '\\n\\n' if messages[0].role == 'system' else '') }}"
    "{{- 'You are a helpful assistant.' }}" + _QWEN_TOOLS + "{{- '<|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- set content = message.content if message.content is string else '' %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set reasoning = '' %}"
    "{%- if message.reasoning_content is string %}{%- set reasoning = message.reasoning_content %}"
    "{%- elif '</think>' in content %}"
    "{%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{%- if loop.index0 > ns.last_query and (loop.last or reasoning) %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + content }}{%- endif %}"
    + _QWEN_CALLS + "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}" + _QWEN_TOOL_RESULT +
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

THINKING = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' + (messages[0].content + '\\n\\n' if messages[0].role == 'system' else '') }}"
    "{{- 'You are a helpful assistant.' }}" + _QWEN_TOOLS + "{{- '<|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- set content = message.content if message.content is string else '' %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"  # reasoning never stays in history
    "{{- '<|im_start|>assistant\\n' + content }}"
    + _QWEN_CALLS + "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}" + _QWEN_TOOL_RESULT +
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}"
)

QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_ADDED = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>")
HERMES_SPECIAL = ("<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>",
                  "<tools>", "</tools>", "<tool_response>", "</tool_response>", "<|eot_id|>")


@dataclass(frozen=True)
class Family:
    name: str
    template: object  # str, or dict of named templates
    special: tuple[str, ...]
    added: tuple[str, ...]  # added tokens not flagged special
    bos: str | None
    eos: str
    pad: str
    generation_eos: tuple[str, ...]  # generation_config.json eos_token_id
    reasoning: bool  # the model writes <think> blocks
    opens_think: bool  # the generation prompt opens the think block

    @property
    def uses_user_turn_for_results(self) -> bool:
        return self.name != "hermes_tool_use"


FAMILIES = {
    "hermes_tool_use": Family("hermes_tool_use", {"default": CHATML_DEFAULT, "tool_use": HERMES_TOOL_USE},
                              HERMES_SPECIAL, (), "<|begin_of_text|>", "<|im_end|>", "<|end_of_text|>",
                              ("<|im_end|>",), reasoning=False, opens_think=False),
    "qwen2.5": Family("qwen2.5", QWEN25, QWEN_SPECIAL, QWEN_ADDED, None, "<|im_end|>", "<|endoftext|>",
                      ("<|im_end|>", "<|endoftext|>"), reasoning=False, opens_think=False),
    "qwen3": Family("qwen3", QWEN3, QWEN_SPECIAL, QWEN_ADDED, None, "<|im_end|>", "<|endoftext|>",
                    ("<|im_end|>", "<|endoftext|>"), reasoning=True, opens_think=False),
    "thinking": Family("thinking", THINKING, QWEN_SPECIAL, QWEN_ADDED, None, "<|im_end|>", "<|endoftext|>",
                       ("<|im_end|>", "<|endoftext|>"), reasoning=True, opens_think=True),
}


def build_family_tokenizer(directory: str | os.PathLike, family: str) -> str:
    """Train and save the family's tokenizer (with its template and generation_config.json); return the path."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = FAMILIES[family]
    directory = os.fspath(directory)
    if os.path.isfile(os.path.join(directory, "tokenizer.json")):
        return directory
    os.makedirs(directory, exist_ok=True)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, min_frequency=2, special_tokens=list(spec.special),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(_training_corpus(), trainer=trainer)
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec.added])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=spec.bos, eos_token=spec.eos,
                                        pad_token=spec.pad, clean_up_tokenization_spaces=False)
    tokenizer.chat_template = spec.template
    tokenizer.save_pretrained(directory)
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in spec.generation_eos]
    with open(os.path.join(directory, "generation_config.json"), "w", encoding="utf-8") as f:
        json.dump({"eos_token_id": eos_ids if len(eos_ids) > 1 else eos_ids[0]}, f)
    return directory
