"""Prompts as token ids, rendered by the model's own chat template, with the ids the model generated kept as generated.

Every turn's prompt is the template's rendering of the whole conversation so far (so a template that puts tool results
in a `user` turn, drops reasoning from history or re-renders the last assistant turn gets exactly its own format),
tokenized by reusing the previous prompt's ids and the generated ids for as long as their text matches, and
tokenizing only the rest. So each turn usually extends the previous one token for token (the engine's KV cache is
reused) and is still exact where a template renders earlier turns differently.

Every piece of text that comes from a user, a client's `messages` or a tool is tokenized so that no markup token can
come out of it: each occurrence of a special or added token's text is cut (Qwen flags `<tool_call>`, `<think>` and
their kin as added tokens that are not special, so `split_special_tokens` alone would not split them). Only the
template's own markup becomes control tokens.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import re
import secrets
from typing import Any, Callable, Iterable, Optional, Sequence

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
BUILTIN = "builtin"

# Told to the model when it must answer without further tool calls (iteration limit, repair limit or deadline).
FINAL_ANSWER_NOTE = (
    "Tool calls are no longer available for this request. Answer the user's question now with the information you "
    "already have, and say what you could not find out."
)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
# Token texts that end an assistant turn when the model generates them (those the tokenizer has).
_TURN_END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|im_start|>")

_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "probe_tool",
        "description": "Probe.",
        "parameters": {"type": "object", "properties": {"x": {"type": "string", "description": "X."}}},
    },
}


_TEMPLATE_IDS_KEPT = 256


class ChatTemplateError(ValueError):
    """The chat template cannot render a tool conversation, or altered content it must copy through."""


@dataclasses.dataclass(frozen=True)
class TemplateInfo:
    """Which template is used (`tokenizer`, `tokenizer:tool_use`, `builtin` or `file:<path>`) and a short hash."""

    source: str
    sha: str

    def __str__(self) -> str:
        return f"{self.source} sha256:{self.sha}"


@dataclasses.dataclass(frozen=True)
class ReasoningFormat:
    """How the template handles reasoning (`<think>` blocks), found by rendering it at load.

    `opens_in_prompt[v]`: the generation prompt for `enable_thinking=v` (None: not passed) ends inside an open think
    block, so the model's turn starts with reasoning (QwQ, Qwen3 *-Thinking). `switch`: the template reacts to
    `enable_thinking` (Qwen3 hybrid).
    """

    opens_in_prompt: dict
    switch: bool
    has_think_tokens: bool

    def starts_in_reasoning(self, enable_thinking: Optional[bool]) -> bool:
        return self.opens_in_prompt.get(enable_thinking, False)


@dataclasses.dataclass(frozen=True)
class _Block:
    """Consecutive prompt ids and their text; `generated` blocks hold ids exactly as the engine generated them."""

    ids: tuple[int, ...]
    text: str
    generated: bool


class Prompt:
    """A prompt as token ids, kept as blocks of rendered and generated ids with their text."""

    __slots__ = ("blocks", "ids", "text")

    def __init__(self, blocks: Iterable[_Block]):
        self.blocks = tuple(b for b in blocks if b.ids)
        self.ids: list[int] = [i for b in self.blocks for i in b.ids]
        self.text = "".join(b.text for b in self.blocks)

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self):
        return iter(self.ids)

    def __getitem__(self, index):
        return self.ids[index]

    def count(self, token_id: int) -> int:
        return self.ids.count(token_id)

    def reused_from(self, other: "Prompt") -> int:
        """How many leading ids this prompt shares with `other` (the engine can reuse their KV cache)."""
        n = 0
        for a, b in zip(self.ids, other.ids):
            if a != b:
                break
            n += 1
        return n


class ChatFormat:
    """Renders conversations for one tokenizer and one chat template and keeps the token form canonical.

    `chat_template`: None uses the tokenizer's own template (its `tool_use` entry when it has several), `"builtin"`
    the built-in Hermes-2-Pro tool template, any other string is template text. `extra_end_ids`: the checkpoint's
    `generation_config.json` end ids. Raises `ChatTemplateError` when the template cannot render tool conversations.
    """

    def __init__(self, tokenizer, chat_template: Optional[str] = None, *, template_source: Optional[str] = None,
                 extra_end_ids: Iterable[int] = ()):
        self.tokenizer = tokenizer
        self._template_ids: collections.OrderedDict[str, tuple[int, ...]] = collections.OrderedDict()
        self.template, source = self._pick_template(tokenizer, chat_template)
        self.template_info = TemplateInfo(template_source or source,
                                          hashlib.sha256(self.template.encode("utf-8")).hexdigest()[:12])
        self.end_id = _required_token_id(tokenizer, "<|im_end|>")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_id
        # Every id that ends the model's turn: its end token, the tokenizer's eos, the checkpoint's
        # generation_config end ids, other end-of-text tokens, and <|im_start|> (the model starting a new turn).
        candidates = [self.end_id, tokenizer.eos_token_id, *extra_end_ids,
                      *(_token_id(tokenizer, t) for t in _TURN_END_TOKENS)]
        self.stop_ids = frozenset(i for i in candidates if i is not None)
        # The markup the parsers read as text; every other special token is dropped from decoded text.
        self.markup_ids = frozenset(
            i for i in (_token_id(tokenizer, t) for t in (TOOL_CALL_OPEN, TOOL_CALL_CLOSE, THINK_OPEN, THINK_CLOSE))
            if i is not None)
        self.dropped_ids = frozenset(tokenizer.all_special_ids) - self.markup_ids - self.stop_ids
        self.tool_call_words = (tuple(self.tokenizer.encode(TOOL_CALL_OPEN, add_special_tokens=False)),)
        # Single-token stop words for the engine: every turn end except the end_id it is told directly.
        self.stop_words = tuple((i,) for i in sorted(self.stop_ids - {self.end_id}))
        markup = sorted((t for t in tokenizer.get_added_vocab() if len(t) >= 2), key=len, reverse=True)
        self._markup_pattern = re.compile("|".join(re.escape(t) for t in markup)) if markup else None
        self._check_renders_tools()
        self.reasoning = self._probe_reasoning()
        # The role of the final-answer note after tool results: system where the template renders a system message
        # there, else user (templates that only render a leading system message would drop it).
        self.note_role = "system" if self._renders_late_system() else "user"

    # ---- template choice ------------------------------------------------------------------------------------------
    @staticmethod
    def _pick_template(tokenizer, chat_template: Optional[str]) -> tuple[str, str]:
        if chat_template == BUILTIN:
            return BUILTIN_HERMES_TEMPLATE, BUILTIN
        if chat_template:
            return chat_template, "given"
        template = getattr(tokenizer, "chat_template", None)
        if isinstance(template, dict):
            if "tool_use" in template:
                return template["tool_use"], "tokenizer:tool_use"
            template = template.get("default")
        if not isinstance(template, str) or not template.strip():
            raise ChatTemplateError(
                "the tokenizer has no chat template: set the chat_template parameter to 'builtin' (the Hermes-2-Pro "
                "tool format) or to a .jinja file")
        return template, "tokenizer"

    def _check_renders_tools(self) -> None:
        messages = [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": "probe_tool", "arguments": {"x": "1"}}}]},
            {"role": "tool", "tool_call_id": "call_0", "name": "probe_tool", "content": "RESULT-0"},
        ]
        where = f"the {self.template_info.source} chat template"
        try:
            text = self._apply(messages, [_PROBE_TOOL], True)
            self._apply(messages[:1], [], True)  # narrowed to no tools (templates may loop over tools regardless)
        except Exception as exc:
            raise ChatTemplateError(f"{where} fails to render a tool conversation ({type(exc).__name__}: {exc}); set "
                                    "the chat_template parameter to 'builtin' or to a .jinja file") from None
        missing = [part for part in ("probe_tool", TOOL_CALL_OPEN, "<tool_response>", "RESULT-0") if part not in text]
        if missing:
            raise ChatTemplateError(
                f"{where} does not render tools, tool calls and tool results in the Hermes format (missing "
                f"{', '.join(missing)}); set the chat_template parameter to 'builtin' (the Hermes-2-Pro tool format) "
                "or to a .jinja file")
        if not self.generation_prompt(None).strip():
            raise ChatTemplateError(f"{where} renders no generation prompt (add_generation_prompt has no effect)")

    def _renders_late_system(self) -> bool:
        messages = [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": "probe_tool", "arguments": {}}}]},
            {"role": "tool", "tool_call_id": "call_0", "name": "probe_tool", "content": "RESULT-0"},
            {"role": "system", "content": "NOTE-PROBE"},
        ]
        try:
            return "NOTE-PROBE" in self._apply(messages, [_PROBE_TOOL], True)
        except Exception:
            return False

    def generation_prompt(self, enable_thinking: Optional[bool]) -> str:
        """The text the template adds for `add_generation_prompt`, after a user message."""
        messages = [{"role": "user", "content": "hello"}]
        with_prompt = self._apply(messages, [], True, enable_thinking)
        without = self._apply(messages, [], False, enable_thinking)
        return with_prompt[len(without):] if with_prompt.startswith(without) else ""

    def _probe_reasoning(self) -> ReasoningFormat:
        prompts = {value: self.generation_prompt(value) for value in (None, True, False)}
        opens = {value: _opens_think(text) for value, text in prompts.items()}
        return ReasoningFormat(opens_in_prompt=opens, switch=prompts[True] != prompts[False],
                               has_think_tokens=_token_id(self.tokenizer, THINK_CLOSE) is not None)

    # ---- rendering ------------------------------------------------------------------------------------------------
    def render_prompt(self, messages: Sequence[dict], tools: Sequence[dict], *,
                      enable_thinking: Optional[bool] = None) -> Prompt:
        """The whole conversation, ending with the assistant generation prompt."""
        pieces = self._render_pieces(messages, tools, enable_thinking)
        return Prompt([self._encode_pieces(pieces)])

    def continue_prompt(self, prompt: Prompt, generated_ids: Sequence[int], messages: Sequence[dict],
                        tools: Sequence[dict], *, enable_thinking: Optional[bool] = None) -> Prompt:
        """The next turn's prompt after the model generated `generated_ids` on `prompt`.

        `messages` is the whole conversation so far, ending with what follows the generated turn (tool results).
        The result's text is the template's rendering of `messages`; its ids are the ids of `prompt` and
        `generated_ids` for as long as their text matches (generated ids stay as generated, also when the template
        drops text around them), then the rest of the rendering, tokenized.
        """
        pieces = self._render_pieces(messages, tools, enable_thinking)
        target = "".join(text for text, _ in pieces)
        old = list(prompt.blocks) + [_Block(tuple(generated_ids), self.decode(generated_ids), True)]
        kept: list[_Block] = []
        pos = 0
        i = 0
        while i < len(old):
            block = old[i]
            if target.startswith(block.text, pos):
                kept.append(block)
                pos += len(block.text)
                i += 1
                continue
            count, length = self._matching_prefix(block, target, pos)
            if count:
                kept.append(_Block(block.ids[:count], block.text[:length], block.generated))
                pos += length
            # Generated ids that follow in the rendering after text the template dropped or changed (a reasoning
            # block stripped from history, content dropped before tool calls, an empty think block left out).
            later = i if block.generated else i + 1
            first = count if later == i else 0  # never reuse ids already kept
            resumed = (self._resume(old[later], target, pos, first)
                       if later < len(old) and old[later].generated else None)
            if resumed is None:
                break
            kept.append(resumed)
            pos += len(resumed.text)
            i = later + 1
        rest = self._encode_pieces(_slice_pieces(pieces, pos))
        return Prompt(kept + [rest])

    def _matching_prefix(self, block: _Block, target: str, pos: int) -> tuple[int, int]:
        """(ids, characters) of the longest token prefix of `block` whose text is `target[pos:...]`."""
        limit = _common_prefix_len(block.text, target, pos)
        best = (0, 0)
        length = 0
        for count, piece in enumerate(self._token_texts(block.ids), start=1):
            if piece is None:
                continue  # a token inside a multi-byte character: no cut here
            length += len(piece)
            if length > limit:
                break
            best = (count, length)
        return best

    def _resume(self, block: _Block, target: str, pos: int, first: int = 0) -> Optional[_Block]:
        """The longest token suffix of `block` whose text continues `target` at `pos` exactly (at least one
        character), or None."""
        texts = list(self._token_texts(block.ids))
        suffix = ""
        best = None
        for start in range(len(texts) - 1, first - 1, -1):
            piece = texts[start]
            if piece is None:
                continue
            suffix = piece + suffix
            if start > 0 and texts[start - 1] is None:
                continue  # the cut would split a multi-byte character
            if suffix and target.startswith(suffix, pos):
                best = _Block(block.ids[start:], suffix, True)
        return best

    def _token_texts(self, ids: Sequence[int]) -> list[Optional[str]]:
        """Each id's text when decoded in sequence; None for an id whose bytes complete only with the next one.

        A None's bytes are carried by the next piece, so a piece may hold the text of several ids."""
        stream = DecodeStream(skip_special_tokens=False)
        backend = self.tokenizer.backend_tokenizer
        return [stream.step(backend, i) for i in ids]

    def call_prefix(self, in_reasoning: bool) -> tuple[int, ...]:
        """The start of a turn that must call a tool (tool_choice), as the template's own markup: the call tag,
        after closing the think block the generation prompt opened, if it did."""
        text = (THINK_CLOSE + "\n\n" if in_reasoning else "") + TOOL_CALL_OPEN + "\n"
        return tuple(self.tokenizer.encode(text, add_special_tokens=False))

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

    def encode_untrusted(self, text: str) -> list[int]:
        """Ids of text from a user, a client or a tool: no special or added token's text becomes that token."""
        if not text:
            return []
        if self._markup_pattern is None:
            return self._encode_plain(text)
        ids: list[int] = []
        start = 0
        while True:
            match = self._markup_pattern.search(text, start)
            if match is None:
                break
            cut = match.start() + 1  # tokenized apart, the two halves cannot form the token
            ids += self._encode_plain(text[start:cut])
            start = cut
        return ids + self._encode_plain(text[start:])

    def _encode_plain(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True) if text else []

    # ---- internals ------------------------------------------------------------------------------------------------
    def _apply(self, messages, tools, add_generation_prompt, enable_thinking=None) -> str:
        extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        return self.tokenizer.apply_chat_template(
            list(messages), tools=list(tools), chat_template=self.template, tokenize=False,
            add_generation_prompt=add_generation_prompt, **extra)

    def _render_pieces(self, messages, tools, enable_thinking) -> list[tuple[str, bool]]:
        """The rendering as (text, untrusted) pieces."""
        masked, contents = _mask_contents(_split_reasoning(messages))
        text = self._apply(masked, tools, True, enable_thinking)
        return _split_masks(text, contents)

    def _encode_pieces(self, pieces: Sequence[tuple[str, bool]]) -> _Block:
        ids: list[int] = []
        for text, untrusted in pieces:
            if untrusted:
                ids += self.encode_untrusted(text)
            elif text:
                ids += self._encode_template_text(text)
        return _Block(tuple(ids), "".join(text for text, _ in pieces), False)

    def _encode_template_text(self, text: str) -> tuple[int, ...]:
        """Ids of text the template wrote. The system prompt with the tool schemas is the same for every request
        offering the same tools (about 1 ms to tokenize with five tools), so recent texts are kept (LRU)."""
        ids = self._template_ids.get(text)
        if ids is not None:
            self._template_ids.move_to_end(text)
            return ids
        ids = tuple(self.tokenizer.encode(text, add_special_tokens=False))
        self._template_ids[text] = ids
        if len(self._template_ids) > _TEMPLATE_IDS_KEPT:
            self._template_ids.popitem(last=False)
        return ids


def load_chat_format(tokenizer, tokenizer_dir: str, chat_template: str = "") -> ChatFormat:
    """The ChatFormat for a served model: `chat_template` "" (the tokenizer's), "builtin" or a .jinja file path;
    the end ids of `tokenizer_dir/generation_config.json`, when it has one, end turns too."""
    template, source = None, None
    if chat_template == BUILTIN:
        template = BUILTIN
    elif chat_template:
        with open(chat_template, encoding="utf-8") as f:
            template, source = f.read(), f"file:{chat_template}"
    return ChatFormat(tokenizer, template, template_source=source,
                      extra_end_ids=generation_config_end_ids(tokenizer_dir))


def generation_config_end_ids(directory: str) -> tuple[int, ...]:
    """`eos_token_id` of `directory/generation_config.json` (an id or a list of ids); () when there is none."""
    path = os.path.join(directory, "generation_config.json")
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return ()
    values = value if isinstance(value, list) else [value]
    return tuple(v for v in values if isinstance(v, int) and not isinstance(v, bool))


def _opens_think(generation_prompt: str) -> bool:
    opened = generation_prompt.rfind(THINK_OPEN)
    return opened >= 0 and generation_prompt.find(THINK_CLOSE, opened) < 0


def _common_prefix_len(text: str, target: str, pos: int) -> int:
    """Length of the common prefix of `text` and `target[pos:]`."""
    low, high = 0, min(len(text), len(target) - pos)
    while low < high:  # binary search over prefix equality, each test a C-level compare
        middle = (low + high + 1) // 2
        if target.startswith(text[:middle], pos):
            low = middle
        else:
            high = middle - 1
    return low


def _slice_pieces(pieces: Sequence[tuple[str, bool]], pos: int) -> list[tuple[str, bool]]:
    out = []
    offset = 0
    for text, untrusted in pieces:
        end = offset + len(text)
        if end > pos:
            out.append((text[max(0, pos - offset):], untrusted))
        offset = end
    return out


def _split_reasoning(messages: Sequence[dict]) -> list[dict]:
    """Assistant messages whose content holds a `<think>` block get it as `reasoning_content` (as Qwen3's template
    splits it), so the reasoning is handled by the template and not masked inside the content."""
    out = []
    for message in messages:
        content = message.get("content")
        if (message.get("role") == "assistant" and isinstance(content, str) and THINK_CLOSE in content
                and not isinstance(message.get("reasoning_content"), str)):
            reasoning, _, answer = content.partition(THINK_CLOSE)
            message = {**message, "reasoning_content": reasoning.split(THINK_OPEN)[-1].strip("\n"),
                       "content": answer.lstrip("\n")}
        out.append(message)
    return out


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
        for field in ("content", "name", "reasoning_content"):
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


def _split_masks(text: str, contents: dict[str, str]) -> list[tuple[str, bool]]:
    pattern = re.compile(_MARK_RE.format(nonce=re.escape(contents["__nonce__"])))
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for match in pattern.finditer(text):
        pieces.append((text[pos: match.start()], False))
        value = contents[match.group(2)]
        pieces.append((value if match.group(1) == "r" else json.dumps(value, ensure_ascii=False)[1:-1], True))
        pos = match.end()
    pieces.append((text[pos:], False))
    template_text = "".join(p for p, untrusted in pieces if not untrusted).lower()
    if "@@fca" + contents["__nonce__"] in template_text:
        raise ChatTemplateError("the chat template altered message content (it must copy content through verbatim)")
    return pieces


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
