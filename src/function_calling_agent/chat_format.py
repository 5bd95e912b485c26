"""Hermes-2-Pro prompts as token ids: the first prompt from a chat template, later turns appended token for token.

Every piece of text that comes from a user, a client's `messages` or a tool is tokenized with special tokens split,
so typing `<|im_start|>` or `</tool_response>` yields ordinary text tokens and can never forge a turn. Only the
template's own markup becomes control tokens.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any, Callable, Optional, Sequence

from tokenizers.decoders import DecodeStream

# Hermes-2-Pro's tool-use format (NousResearch/Hermes-Function-Calling), written out so that it renders correctly:
# tools listed in the system turn, calls as <tool_call> JSON, consecutive tool results grouped into one `tool` turn.
BUILTIN_HERMES_TEMPLATE = (
    "{%- if bos_token %}{{- bos_token }}{%- endif %}"
    "{%- if tools %}"
    "{{- '<|im_start|>system\\nYou are a function calling AI model. You are provided with function signatures within "
    "<tools></tools> XML tags. You may call one or more functions to assist with the user query. Don\\'t make "
    "assumptions about what values to plug into functions. Here are the available tools: <tools> ' }}"
    "{%- for tool in tools %}{{- tool | tojson }}{%- if not loop.last %}{{- ' ' }}{%- endif %}{%- endfor %}"
    "{{- ' </tools> Use the following pydantic model json schema for each tool call you will make: "
    "{\"properties\": {\"name\": {\"title\": \"Name\", \"type\": \"string\"}, \"arguments\": {\"title\": \"Arguments\", "
    "\"type\": \"object\"}}, \"required\": [\"name\", \"arguments\"], \"title\": \"FunctionCall\", \"type\": \"object\"}\\n"
    "For each function call return a json object with function name and arguments within <tool_call></tool_call> "
    "XML tags as follows:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": <args-dict>}\\n</tool_call>' }}"
    "{%- if messages and messages[0].role == 'system' %}{{- '\\n\\n' + messages[0].content }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first and tools %}"
    "{%- elif message.role == 'assistant' and message.tool_calls %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if message.content %}{{- message.content + '\\n' }}{%- endif %}"
    "{%- for call in message.tool_calls %}"
    "{%- set fn = call.function if call.function is defined else call %}"
    "{{- '<tool_call>\\n{\"name\": \"' + fn.name + '\", \"arguments\": ' }}"
    "{%- if fn.arguments is string %}{{- fn.arguments }}{%- else %}{{- fn.arguments | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}{%- if not loop.last %}{{- '\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>tool\\n' }}{%- endif %}"
    "{{- '<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}"
    "{%- else %}{{- '\\n' }}{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Told to the model when it must answer without further tool calls (iteration limit, repair limit or deadline).
FINAL_ANSWER_NOTE = (
    "Tool calls are no longer available for this request. Answer the user's question now with the information you "
    "already have, and say what you could not find out."
)

_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "probe_tool",
        "description": "Probe.",
        "parameters": {"type": "object", "properties": {"x": {"type": "string", "description": "X."}}},
    },
}


class ChatTemplateError(ValueError):
    """The chat template cannot render a Hermes tool conversation."""


class ChatFormat:
    """Renders conversations for one tokenizer and keeps the token form canonical."""

    def __init__(self, tokenizer, chat_template: Optional[str] = None):
        self.tokenizer = tokenizer
        self.template = chat_template or self._pick_template(tokenizer)
        self.end_id = _required_token_id(tokenizer, "<|im_end|>")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_id
        # Any of these ends an assistant turn: the engine's end token, or the model starting a new turn.
        self.stop_ids = frozenset(
            i for i in (self.end_id, tokenizer.eos_token_id, _token_id(tokenizer, "<|im_start|>"),
                        _token_id(tokenizer, "<|eot_id|>"), _token_id(tokenizer, "<|end_of_text|>"))
            if i is not None
        )
        # Special tokens that must reach the parser as text; every other special token is dropped from the answer.
        self.tool_tag_ids = frozenset(
            i for i in (_token_id(tokenizer, "<tool_call>"), _token_id(tokenizer, "</tool_call>")) if i is not None
        )
        self.dropped_ids = frozenset(tokenizer.all_special_ids) - self.tool_tag_ids - self.stop_ids
        self.tool_call_words = tuple(
            tuple(self.tokenizer.encode(word, add_special_tokens=False)) for word in ("<tool_call>",)
        )
        self._newline_ids = self.tokenizer.encode("\n", add_special_tokens=False)
        self._check_template()

    # ---- template choice -------------------------------------------------------------------------------------
    @staticmethod
    def _pick_template(tokenizer) -> str:
        template = getattr(tokenizer, "chat_template", None)
        if isinstance(template, dict):
            template = template.get("tool_use")
        if isinstance(template, str) and _renders_tools(tokenizer, template):
            return template
        return BUILTIN_HERMES_TEMPLATE

    def _check_template(self) -> None:
        if not _renders_tools(self.tokenizer, self.template):
            raise ChatTemplateError("the chat template does not render tools and tool calls in the Hermes format")

    # ---- rendering ------------------------------------------------------------------------------------------
    def render_prompt(self, messages: Sequence[dict], tools: Sequence[dict]) -> list[int]:
        """Token ids of the whole conversation, ending with the assistant generation prompt."""
        masked, contents = _mask_contents(messages)
        text = self._apply(masked, tools=list(tools) or None, add_generation_prompt=True)
        return self._encode_masked(text, contents)

    def close_assistant_turn(self, generated_ids: Sequence[int]) -> list[int]:
        """Ids to append after a generated turn so it ends `<|im_end|>\\n`, whether or not the engine sent the end."""
        if generated_ids and generated_ids[-1] == self.end_id:
            return list(self._newline_ids)
        return [self.end_id, *self._newline_ids]

    def tool_turn(self, results: Sequence[tuple[str, str]], note: Optional[str] = None) -> list[int]:
        """Ids of the tool turn for `(tool name, content)` results, then the assistant generation prompt.

        Rendered by the chat template itself as the difference between a conversation with and without the tool
        messages, so a model whose template puts tool results elsewhere (e.g. a `user` turn) gets its own format.
        """
        calls = [{"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": "{}"}}
                 for i, (name, _) in enumerate(results)]
        before = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "", "tool_calls": calls}]
        added = [{"role": "tool", "tool_call_id": f"call_{i}", "name": name, "content": content}
                 for i, (name, content) in enumerate(results)]
        if note:
            added.append({"role": "system", "content": note})
        masked_after, contents = _mask_contents(before + added)
        head = self._apply(masked_after[: len(before)], tools=None, add_generation_prompt=False)
        full = self._apply(masked_after, tools=None, add_generation_prompt=True)
        if not full.startswith(head):
            raise ChatTemplateError("the chat template renders earlier turns differently once tool results follow")
        return self._encode_masked(full[len(head):], contents)

    @staticmethod
    def tool_response_content(name: str, content_json: str) -> str:
        """The Hermes tool-result payload `{"name": ..., "content": ...}`; `content_json` is already JSON text."""
        return '{"name": ' + json.dumps(name, ensure_ascii=False) + ', "content": ' + content_json + "}"

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def incremental_decoder(self) -> Callable[[int], Optional[str]]:
        """A decoder for one generated stream: `step(id)` returns the new text, or None until a multi-byte
        character is complete (decoding ids one at a time with `decode` would break such characters)."""
        stream = DecodeStream(skip_special_tokens=False)
        backend = self.tokenizer.backend_tokenizer
        return lambda token: stream.step(backend, token)

    # ---- internals ------------------------------------------------------------------------------------------
    def _apply(self, messages, tools, add_generation_prompt) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=tools, chat_template=self.template, tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    def _encode_masked(self, text: str, contents: dict[str, str]) -> list[int]:
        ids: list[int] = []
        for piece in _split_masks(text, contents):
            if isinstance(piece, _Content):
                ids += self.tokenizer.encode(piece.text, add_special_tokens=False, split_special_tokens=True)
            elif piece:
                ids += self.tokenizer.encode(piece, add_special_tokens=False)
        return ids


class _Content(str):
    """Untrusted text to tokenize with special tokens split."""

    @property
    def text(self) -> str:
        return str(self)


# Markers are printable ASCII so templates copy them through unchanged, also inside `tojson`.
_MARK = "@@fca{nonce}{kind}{key}@@"
_MARK_RE = r"@@fca{nonce}([rj])(\d+)@@"


def _mask_contents(messages: Sequence[dict]) -> tuple[list[dict], dict[str, str]]:
    """Replaces every untrusted string in the messages by a marker.

    Contents get raw markers (`r`), replaced by the text itself. Tool-call arguments are passed as objects whose
    strings are JSON markers (`j`): templates render them with `tojson`, so each marker stands inside a JSON string
    and is replaced by the JSON-escaped text.
    """
    nonce = secrets.token_hex(4)
    contents: dict[str, str] = {"__nonce__": nonce}

    def mark(value: str, kind: str) -> str:
        key = str(len(contents))
        contents[key] = value
        return _MARK.format(nonce=nonce, kind=kind, key=key)

    def mark_json(value: Any) -> Any:
        if isinstance(value, str):
            return mark(value, "j")
        if isinstance(value, dict):
            return {mark_json(str(k)): mark_json(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mark_json(v) for v in value]
        return value

    masked = []
    for message in messages:
        m = dict(message)
        for field in ("content", "name"):
            if isinstance(m.get(field), str) and m[field]:
                m[field] = mark(m[field], "r")
        if m.get("tool_calls"):
            calls = []
            for call in m["tool_calls"]:
                fn = dict(call.get("function", call))
                if isinstance(fn.get("name"), str):
                    fn["name"] = mark(fn["name"], "r")
                arguments = fn.get("arguments", {})
                if isinstance(arguments, str):
                    try:
                        decoded = json.loads(arguments) if arguments.strip() else {}
                    except json.JSONDecodeError:
                        decoded = None
                    if isinstance(decoded, (dict, list)):
                        arguments = decoded  # else the template gets the original text as an opaque string
                fn["arguments"] = mark(arguments, "r") if isinstance(arguments, str) else mark_json(arguments)
                calls.append({**call, "function": fn} if "function" in call else fn)
            m["tool_calls"] = calls
        masked.append(m)
    return masked, contents


def _split_masks(text: str, contents: dict[str, str]) -> list:
    pattern = re.compile(_MARK_RE.format(nonce=re.escape(contents["__nonce__"])))
    pieces: list = []
    pos = 0
    for match in pattern.finditer(text):
        pieces.append(text[pos: match.start()])
        value = contents[match.group(2)]
        pieces.append(_Content(value if match.group(1) == "r" else json.dumps(value, ensure_ascii=False)[1:-1]))
        pos = match.end()
    pieces.append(text[pos:])
    template_text = "".join(p for p in pieces if not isinstance(p, _Content)).lower()
    if "@@fca" + contents["__nonce__"] in template_text:
        raise ChatTemplateError("the chat template altered message content (it must copy content through verbatim)")
    return pieces


def _renders_tools(tokenizer, template: str) -> bool:
    messages = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "probe_tool", "arguments": {"x": "1"}}}]},
        {"role": "tool", "tool_call_id": "call_0", "name": "probe_tool", "content": "RESULT-0"},
    ]
    try:
        text = tokenizer.apply_chat_template(
            messages, tools=[_PROBE_TOOL], chat_template=template, tokenize=False, add_generation_prompt=True)
    except Exception:
        return False
    return (
        "<tools>" in text and "probe_tool" in text and "<tool_call>" in text and "<tool_response>" in text
        and "RESULT-0" in text and text.rstrip().endswith("assistant")
    )


def _token_id(tokenizer, token: str) -> Optional[int]:
    ids = tokenizer.convert_tokens_to_ids([token])
    tid = ids[0] if ids else None
    if tid is None or tid == tokenizer.unk_token_id:
        return None
    return tid


def _required_token_id(tokenizer, token: str) -> int:
    tid = _token_id(tokenizer, token)
    if tid is None:
        raise ChatTemplateError(f"the tokenizer has no {token!r} token; a ChatML (Hermes-format) tokenizer is required")
    return tid
