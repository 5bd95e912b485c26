"""The README's main command: function_calling_agent on a real CPU tritonserver.

  ./serve.sh                                    the default model, 4-bit GGUF on llama.cpp, from the Hugging Face hub
                                                (cached under .serve/); where no checkpoint can be had, a tiny offline
                                                model trained to call the built-in finance tools (a demo of the agent,
                                                not a real LLM)
  ./serve.sh --model /path/to/checkpoint        a local Hugging Face checkpoint in the Hermes/ChatML tool format
                                                (converted to 4-bit GGUF once; --engine torch serves it as it is)
  ./serve.sh --model FILE.gguf --tokenizer DIR  a GGUF file and the Hugging Face tokenizer of its model
  ./serve.sh --engine scripted --script FILE    no weights at all: a scripted model says what FILE says; try your
                                                tools this way (docs/tools.md)
  ./serve.sh --tool-path DIR --tool-modules function_calling_agent.tools.finance,my_tools
                                                offer your own tool modules, imported from DIR
  ./serve.sh --plumbing-check                   a tiny random model: checks the wiring only, its answers are noise

It assembles the cpu profile (function_calling_agent + a CPU engine in the tensorrt_llm slot: llama.cpp by default,
torch with --engine torch), starts tritonserver
on ports 8000/8001/8002, sends demo requests (a tool round, then a second request continuing the conversation
through `messages`) and serves until Ctrl-C. A start-up problem ends it with one line that says what to change;
tritonserver's full log is .serve/tritonserver.log. On a machine with an NVIDIA GPU and Docker, use
`docker compose --profile gpu up` instead (README).
"""

# Only the standard library at the top: `./serve.sh --help` runs this with the system python, before the set-up.
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import signal
import socket
import sys
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STATE_DIR = REPO_ROOT / ".serve"
# Qwen2.5-1.5B-Instruct: the largest model within the 1.5B budget that was trained for Hermes-style tool calls
# (<tool_call> JSON, <tool_response> results, ChatML); its chat template carries the tool format.
DEFAULT_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"
DEFAULT_TOOL_MODULES = "function_calling_agent.tools.finance"  # = adapter.parameters.DEFAULT_TOOL_MODULES
# = offline_models.finance_demo.DEMO_PROMPT / FOLLOW_UP_PROMPT: the offline model is trained on exactly these.
DEMO_PROMPT = "Give me Rivian (RIVN) news and stock price"
FOLLOW_UP_PROMPT = "And what is Tesla (TSLA) trading at?"
DEMO_MAX_TOKENS = 256
AGENT = "function_calling_agent"
_WEIGHTS = ("*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.py", "*.jinja")
# The server is local: never through HTTP_PROXY.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_PORT_FLAGS = {"HTTP": "--http-port", "GRPC": "--grpc-port", "Metrics": "--metrics-port"}
# A Hugging Face model id: "name" or "org/name" (anything else is a path).
_MODEL_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?")
# tritonserver's line for a model that failed to load (model_lifecycle.cc), e.g.
#   E1129 16:40:07.123 42 model_lifecycle.cc:654] "failed to load 'function_calling_agent' version 1: Internal: ..."
_LOAD_FAILURE = re.compile(r"failed to load '([^']+)' version \d+: (?:[A-Za-z ]+: )?(.*)")


class ServeError(Exception):
    """Ends the command with one line: what went wrong and what to change."""


def log(message: str) -> None:
    print(f"serve: {message}", flush=True)


def one_line(text: object, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="./serve.sh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("FCA_MODEL"), metavar="ID_OR_DIR",
                        help=f"Hugging Face model id (downloaded once into the state dir) or local checkpoint "
                             f"directory; default {DEFAULT_MODEL}, or the FCA_MODEL environment variable")
    parser.add_argument("--engine", choices=("llamacpp", "torch", "scripted"), default="llamacpp",
                        help="llamacpp: llama.cpp runs a 4-bit GGUF of the model (default; the fastest on a CPU); "
                             "torch: transformers/torch runs the checkpoint in float32; scripted: replay the "
                             "completions of --script, no model weights (try your tools, docs/tools.md)")
    parser.add_argument("--tokenizer", metavar="DIR",
                        help="with --model FILE.gguf: the Hugging Face tokenizer directory of the model the GGUF was "
                             "made from (the agent tokenizes with it; the engine checks they agree)")
    parser.add_argument("--script", metavar="FILE",
                        help="JSON script of the scripted engine (with --engine scripted; format in docs/tools.md); "
                             "edits are picked up while serving")
    parser.add_argument("--plumbing-check", action="store_true",
                        help="serve a tiny random model: checks the wiring only, its answers are noise")
    parser.add_argument("--tool-modules", default=DEFAULT_TOOL_MODULES, metavar="MODULES",
                        help=f"comma list of dotted tool modules to offer (default {DEFAULT_TOOL_MODULES}); only "
                             "their tools can ever run")
    parser.add_argument("--tool-path", action="append", default=[], metavar="DIR",
                        help="folder the tool modules are imported from, before the Python environment "
                             "(repeatable); sets the agent's tool_path parameter")
    parser.add_argument("--max-context-tokens", type=int, default=4096, metavar="N",
                        help="prompt + max_tokens limit of every engine turn (default 4096)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address the endpoints listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--http-port", type=int, default=8000, metavar="PORT", help="HTTP port (default 8000)")
    parser.add_argument("--grpc-port", type=int, default=8001, metavar="PORT", help="gRPC port (default 8001)")
    parser.add_argument("--metrics-port", type=int, default=8002, metavar="PORT",
                        help="Prometheus metrics port (default 8002)")
    parser.add_argument("--demo-prompt", metavar="TEXT",
                        help="send this prompt as the demo instead of the finance demo (the default demo with a "
                             "model; no demo with --engine scripted unless given)")
    parser.add_argument("--no-demo", action="store_true", help="send no demo request once ready")
    parser.add_argument("--openai-port", type=int, default=9000, metavar="PORT",
                        help="port of the OpenAI-compatible endpoint (/v1/chat/completions); 0 disables it "
                             "(default 9000; FCA_OPENAI_API_KEY sets its API key)")
    parser.add_argument("--state-dir", default=os.environ.get("FCA_SERVE_DIR", str(DEFAULT_STATE_DIR)),
                        metavar="DIR",
                        help="downloads, built models, the model repository and tritonserver.log "
                             "(default .serve/, or the FCA_SERVE_DIR environment variable)")
    return parser


# ------------------------------------------------------------------------------------------------------ checks first
def check_ports(host: str, ports: dict[str, int]) -> None:
    """Fails before anything is built when a port is taken; tritonserver would only find out after loading models."""
    seen: dict[int, str] = {}
    for flag, port in ports.items():
        if port in seen:
            raise ServeError(f"{flag} and {seen[port]} are both {port}: give each endpoint its own port")
        seen[port] = flag
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tritonserver binds
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise ServeError(f"port {port} on {host} is in use ({exc.strerror}): stop what is using it, or pass "
                                 f"{flag} with a free port") from None


def tool_path_dirs(values: list[str]) -> list[Path]:
    folders = []
    for value in values:
        for part in value.split(os.pathsep):
            if not part:
                continue
            folder = Path(part).expanduser().resolve()
            if not folder.is_dir():
                raise ServeError(f"--tool-path {part}: no such directory")
            folders.append(folder)
    return folders


# ------------------------------------------------------------------------------------------------------- checkpoints
@dataclasses.dataclass(frozen=True)
class Checkpoint:
    path: Path  # the Hugging Face checkpoint (its tokenizer too), or the tokenizer of a GGUF
    kind: str  # checkpoint | offline-demo | plumbing | scripted
    label: str  # how the serve log names it
    gguf: Path | None = None  # the GGUF file the llama.cpp engine serves, once known


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def probe_hub(model_id: str) -> tuple[str, str] | None:
    """None if `model_id` can be downloaded, else (problem, reason): problem is unreachable | missing | gated | http.

    Asks the hub through huggingface_hub, which honours HTTPS_PROXY / HTTP_PROXY / NO_PROXY, HF_ENDPOINT, HF_TOKEN
    and HF_HUB_OFFLINE."""
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hub_errors

    try:
        HfApi(endpoint=hub_endpoint()).model_info(model_id, timeout=10)
        return None
    except hub_errors.GatedRepoError as exc:
        return "gated", one_line(exc, 200)
    except hub_errors.RepositoryNotFoundError as exc:
        return "missing", one_line(exc, 200)
    except hub_errors.OfflineModeIsEnabled:
        return "unreachable", "HF_HUB_OFFLINE is set"
    except hub_errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return "http", one_line(f"HTTP {status}: {exc}" if status else exc, 200)
    except Exception as exc:  # connection, DNS, proxy and timeout errors of the HTTP client
        return "unreachable", one_line(f"{type(exc).__name__}: {exc}", 200)


def download(model_id: str, target: Path, state_dir: Path) -> None:
    from huggingface_hub import snapshot_download

    details = state_dir / "download.log"
    log(f"downloading {model_id} into {target} (once)")
    try:
        snapshot_download(model_id, local_dir=target, allow_patterns=list(_WEIGHTS), endpoint=hub_endpoint())
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        details.write_text(traceback.format_exc(), encoding="utf-8")
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].removeprefix("Got: ")
        raise ServeError(f"downloading {model_id} from {hub_endpoint()} failed: {one_line(first, 300)} (details in "
                         f"{details}; run again to resume)") from None
    if not (target / "config.json").is_file():
        raise ServeError(f"{model_id} has no config.json: it is not a Hugging Face transformers checkpoint")
    (target / ".download-complete").write_text(model_id, encoding="utf-8")


def resolve_checkpoint(args, state_dir: Path, tool_modules: str, tool_path: list[Path]) -> Checkpoint:
    if args.plumbing_check:
        return Checkpoint(plumbing_checkpoint(state_dir), "plumbing", "plumbing check: tiny random model")
    explicit = args.model is not None
    model = args.model if explicit else DEFAULT_MODEL
    candidate = Path(model).expanduser()
    llamacpp = args.engine == "llamacpp"
    if candidate.suffix == ".gguf" or _is_gguf(candidate):
        if not llamacpp:
            raise ServeError(f"--model {model} is a GGUF file: serve it with --engine llamacpp (the default)")
        if not candidate.is_file():
            raise ServeError(f"--model {model}: no such file")
        if not args.tokenizer or not (Path(args.tokenizer).expanduser() / "tokenizer_config.json").is_file():
            raise ServeError(f"--model {model} is a GGUF file: pass --tokenizer DIR, the Hugging Face tokenizer "
                             "directory of the model it was made from (holding tokenizer_config.json)")
        tokenizer = Path(args.tokenizer).expanduser().resolve()
        return Checkpoint(tokenizer, "checkpoint", f"{candidate.resolve()} with the tokenizer {tokenizer}",
                          gguf=candidate.resolve())
    if candidate.is_dir():
        if not (candidate / "config.json").is_file():
            raise ServeError(f"--model {model} has no config.json: point it at a Hugging Face checkpoint directory")
        return Checkpoint(candidate.resolve(), "checkpoint", str(candidate.resolve()))
    if candidate.exists():
        raise ServeError(f"--model {model} is a file: point it at a Hugging Face checkpoint directory (or a .gguf "
                         "file with --tokenizer DIR)")
    if not _MODEL_ID.fullmatch(model):
        raise ServeError(f"--model {model}: no such directory (and not a Hugging Face model id like org/name)")

    target = state_dir / "checkpoints" / model.replace("/", "--")
    if llamacpp:
        cached = fetch_gguf(model, state_dir, allow_download=False)
        if cached is not None:
            return cached
    elif (target / ".download-complete").is_file():
        return Checkpoint(target, "checkpoint", f"{model} (cached in {target})")
    problem = probe_hub(model)
    if problem is None:
        if llamacpp:
            return fetch_gguf(model, state_dir, allow_download=True)
        download(model, target, state_dir)
        return Checkpoint(target, "checkpoint", f"{model} (downloaded into {target})")
    kind, reason = problem
    where = "" if explicit else " (the default model)"
    not_local = f"--model {model}{where} is not a local directory, and "
    if kind == "gated":
        raise ServeError(not_local + f"it is gated on the hub: accept its license there and set HF_TOKEN ({reason})")
    if kind == "missing":
        raise ServeError(not_local + f"the Hugging Face hub ({hub_endpoint()}) has no such model ({reason})")
    if explicit:
        hint = ("pass a local checkpoint directory, or check the network and HTTPS_PROXY / NO_PROXY"
                if kind == "unreachable" else "try again later, or pass a local checkpoint directory")
        raise ServeError(not_local + f"the Hugging Face hub ({hub_endpoint()}) cannot serve it ({reason}): {hint}")
    return offline_demo_checkpoint(state_dir, reason, tool_modules, tool_path)


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"  # the format's magic
    except OSError:
        return False


def fetch_gguf(model_id: str, state_dir: Path, allow_download: bool) -> Checkpoint | None:
    """The model's 4-bit GGUF and tokenizer: cached, or (allow_download) the official GGUF build from the hub."""
    from function_calling_agent.llamacpp_engine.resolve import GgufUnavailable, resolve_gguf

    try:
        found = resolve_gguf(model_id, cache_dir=state_dir / "gguf", allow_download=allow_download, log=log)
    except GgufUnavailable as exc:
        if not allow_download:
            return None
        raise ServeError(one_line(exc)) from None
    return Checkpoint(found.tokenizer_dir, "checkpoint", f"{found.origin} ({found.gguf_path.name})", gguf=found.gguf_path)


def as_gguf(checkpoint: Checkpoint, state_dir: Path) -> Checkpoint:
    """A local checkpoint converted for llama.cpp (once, cached): 4-bit for a real model, float32 for the tiny
    offline models (their weights are trained to tight margins)."""
    if checkpoint.gguf is not None:
        return checkpoint
    from function_calling_agent.llamacpp_engine.resolve import DEFAULT_QUANT, GgufUnavailable, resolve_gguf

    quant = DEFAULT_QUANT if checkpoint.kind == "checkpoint" else "F32"
    try:
        found = resolve_gguf(str(checkpoint.path), cache_dir=state_dir / "gguf", quant=quant, log=log)
    except (GgufUnavailable, ValueError) as exc:
        raise ServeError(f"{checkpoint.label} cannot be converted for llama.cpp ({one_line(exc)}): serve it with "
                         "--engine torch, or pass an official GGUF with --model FILE.gguf --tokenizer DIR") from None
    return dataclasses.replace(checkpoint, gguf=found.gguf_path, label=f"{checkpoint.label}, {quant} GGUF")


def plumbing_checkpoint(state_dir: Path) -> Path:
    # The offline stand-ins the tests use: a Hermes-shaped tokenizer and a random 2-layer Llama.
    from function_calling_agent.offline_models.hermes_tokenizer import build_hermes_tokenizer
    from function_calling_agent.offline_models.tiny_llama import build_tiny_llama

    base = state_dir / "offline"
    return Path(build_tiny_llama(base / "plumbing-check", build_hermes_tokenizer(base / "tokenizer")))


def offline_demo_checkpoint(state_dir: Path, reason: str, tool_modules: str, tool_path: list[Path]) -> Checkpoint:
    from function_calling_agent.offline_models.finance_demo import FINANCE_MODULE, build_finance_demo_model, has_demo_tools
    from function_calling_agent.offline_models.hermes_tokenizer import build_hermes_tokenizer
    from function_calling_agent.offline_models.tiny_tool_model import TinyModelError
    from function_calling_agent.tools import ToolDefinitionError, load_tool_modules

    try:
        tools = load_tool_modules([m.strip() for m in tool_modules.split(",") if m.strip()],
                                  [str(p) for p in tool_path])
    except ToolDefinitionError as exc:
        raise ServeError(f"{one_line(exc)} (search path: {[str(p) for p in tool_path] or 'none'})") from None
    if not has_demo_tools(tools):
        raise ServeError(f"no checkpoint can be had ({reason}), and the offline demo model needs the finance tools: "
                         f"add {FINANCE_MODULE} to --tool-modules, pass --model /path/to/checkpoint, or try your "
                         "tools without weights with --engine scripted --script FILE (docs/tools.md)")
    log(f"no checkpoint: the Hugging Face hub is unreachable ({reason}); serving a TINY OFFLINE MODEL trained to call "
        "the finance tools, a demo of the agent loop and not a real LLM (for real answers: ./serve.sh --model "
        "/path/to/checkpoint)")
    base = state_dir / "offline"
    try:
        path = build_finance_demo_model(base / "tool-models", build_hermes_tokenizer(base / "tokenizer"), tools,
                                        announce=lambda: log("training the offline demo model (once; one to two "
                                                             f"minutes on two cores; cached in {base / 'tool-models'})"))
    except TinyModelError as exc:
        raise ServeError(f"the offline demo model could not be trained: {one_line(exc)}; use --plumbing-check or "
                         "--model /path/to/checkpoint") from None
    return Checkpoint(Path(path), "offline-demo", f"offline demo model {path}")


# -------------------------------------------------------------------------------------------------------- repository
def build_repository(args, state_dir: Path, tool_path: list[Path]) -> tuple[Path, Checkpoint]:
    repository = state_dir / "model_repository"
    if args.engine == "scripted":
        return build_scripted_repository(args, state_dir, repository, tool_path)
    checkpoint = resolve_checkpoint(args, state_dir, args.tool_modules, tool_path)
    from deploy.configure_repository import configure
    from function_calling_agent.model_config import ModelConfigError

    values = {"tokenizer_dir": str(checkpoint.path), "tool_modules": args.tool_modules,
              "max_context_tokens": str(args.max_context_tokens)}
    if args.engine == "llamacpp":
        checkpoint = as_gguf(checkpoint, state_dir)
        values.update(engine="llamacpp", gguf_path=str(checkpoint.gguf))
    else:
        values["model_dir"] = str(checkpoint.path)
    if tool_path:
        values["tool_path"] = os.pathsep.join(str(p) for p in tool_path)
    try:
        configure("cpu", repository, values, overwrite=True)
    except ModelConfigError as exc:
        raise ServeError(one_line(exc)) from None
    return repository, checkpoint


def build_scripted_repository(args, state_dir: Path, repository: Path, tool_path: list[Path]):
    if not args.script:
        raise ServeError("--engine scripted needs --script FILE, a JSON script of what the model says (docs/tools.md)")
    if args.model is not None or args.plumbing_check or args.tokenizer:
        raise ServeError("--engine scripted replays --script and uses no model: drop --model / --tokenizer / "
                         "--plumbing-check")
    script = Path(args.script).expanduser()
    if not script.is_file():
        raise ServeError(f"--script {args.script}: no such file")
    import shutil

    from deploy.configure_repository import make_agent_model
    from function_calling_agent.offline_models.hermes_tokenizer import build_hermes_tokenizer
    from function_calling_agent.scripted_engine.repository import make_scripted_engine
    from function_calling_agent.scripted_engine.script import ScriptError

    tokenizer = build_hermes_tokenizer(state_dir / "offline" / "tokenizer")
    shutil.rmtree(repository, ignore_errors=True)
    repository.mkdir(parents=True)
    try:
        make_scripted_engine(repository, script, tokenizer, state_dir=state_dir / "scripted-engine")
    except ScriptError as exc:
        raise ServeError(f"--script {args.script}: {one_line(exc)}") from None
    make_agent_model(repository, tokenizer, tool_modules=args.tool_modules, tool_path=tool_path,
                     max_context_tokens=args.max_context_tokens)
    return repository, Checkpoint(script.resolve(), "scripted", f"scripted engine replaying {script}")


# ------------------------------------------------------------------------------------------------------------ server
def load_failures(log_text: str) -> list[tuple[str, str]]:
    """(model, reason) for every model tritonserver could not load, from its log."""
    failures = []
    for line in log_text.splitlines():
        match = _LOAD_FAILURE.search(line)
        if match:
            # The log line is a JSON-style string: the message, then "\n\nAt:\n" and the Python stack.
            reason = match.group(2).strip().removesuffix('"').split("\\nAt:\\n")[0]
            failures.append((match.group(1), reason.replace('\\"', '"').replace("\\n", " ").strip()))
    return failures


def start_server(args, repository: Path, log_path: Path):
    from deploy.triton_launcher import PortInUse, TritonLaunchError, TritonServer

    log_path.unlink(missing_ok=True)  # the log holds this run only, so every error line in it is ours
    server = TritonServer(repository, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port, host=args.host, log_path=log_path)
    log(f"starting tritonserver (log: {log_path})")
    try:
        server.launch(timeout=900)
    except PortInUse as exc:
        raise ServeError(f"port {exc.address} ({exc.service}) is in use: stop what is using it, or pass "
                         f"{_PORT_FLAGS.get(exc.service, 'another port')} with a free port (log: {log_path})") from None
    except TritonLaunchError:
        failures = load_failures(server.log_text())
        if failures:
            model, reason = failures[0]
            raise ServeError(f"model {model} failed to load: {one_line(reason, 600)} (full log: {log_path})") from None
        errors = [line for line in server.log_text().splitlines() if line.startswith("E") or "error" in line.lower()]
        last = one_line(errors[-1], 300) if errors else "no error line"
        raise ServeError(f"tritonserver did not become ready: {last} (full log: {log_path})") from None
    return server


# -------------------------------------------------------------------------------------------------------------- demo
def generate_stream(http: str, payload: dict, timeout: float = 900) -> tuple[str, dict]:
    """POSTs to the generate_stream endpoint, prints the answer as it streams; returns (answer, final event)."""
    request = urllib.request.Request(f"http://{http}/v2/models/{AGENT}/generate_stream",
                                     data=json.dumps(payload).encode("utf-8"),
                                     headers={"Content-Type": "application/json"})
    text, final = "", {}
    print("  answer: ", end="", flush=True)
    try:
        with _LOCAL.open(request, timeout=timeout) as response:
            for raw in response:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[len("data:"):])
                if event.get("error"):
                    raise ServeError(event["error"])
                delta = event.get("text_output") or ""
                text += delta
                print(delta, end="", flush=True)
                final = event
    except urllib.error.HTTPError as exc:
        raise ServeError(one_line(exc.read().decode("utf-8", "replace"))) from None
    finally:
        print(flush=True)
    return text, final


def show_calls(final: dict) -> dict:
    trace = json.loads(final.get("tool_trace") or "{}")
    usage = json.loads(final.get("usage") or "{}")
    for call in trace.get("tool_calls", []):
        outcome = call["status"] + (f": {call['error']}" if call.get("error") else "")
        print(f"  tool call: {call['name']}({json.dumps(call['arguments'])}) -> {outcome}")
    print(f"  finish_reason {final.get('finish_reason')}, {usage.get('engine_turns')} engine turns, "
          f"{usage.get('tool_calls')} tool calls, {usage.get('prompt_tokens')} prompt tokens")
    return trace


def _interpreter() -> str:
    """This interpreter (the venv's, which has the `openai` package) as a user would type it from here."""
    relative = os.path.relpath(sys.executable)
    return shlex.quote(relative if not relative.startswith("..") else sys.executable)


def run_demo(http: str, args, checkpoint: Checkpoint) -> None:
    note = {"plumbing": " (plumbing check: random weights, expect noise)",
            "offline-demo": " (the tiny offline model)"}.get(checkpoint.kind, "")
    prompt = args.demo_prompt or DEMO_PROMPT
    base = {"max_tokens": DEMO_MAX_TOKENS, "stream": True, "return_trace": True}
    log(f"demo request 1{note}: POST /v2/models/{AGENT}/generate_stream "
        f"{json.dumps({'text_input': prompt, **base})}")
    _, final = generate_stream(http, {"text_input": prompt, **base})
    trace = show_calls(final)
    if args.demo_prompt or checkpoint.kind == "scripted":
        return
    messages = trace.get("messages", []) + [{"role": "user", "content": FOLLOW_UP_PROMPT}]
    log(f"demo request 2 continues the conversation: `messages` = request 1's tool_trace.messages + "
        f"{json.dumps(messages[-1])}")
    _, final = generate_stream(http, {"messages": json.dumps(messages), **base})
    show_calls(final)


# -------------------------------------------------------------------------------------------------------------- main
def serve(args) -> int:
    started = time.monotonic()
    state_dir = Path(args.state_dir).expanduser().resolve()
    check_ports(args.host, {"--http-port": args.http_port, "--grpc-port": args.grpc_port,
                            "--metrics-port": args.metrics_port,
                            **({"--openai-port": args.openai_port} if args.openai_port else {})})
    tool_path = tool_path_dirs(args.tool_path)
    state_dir.mkdir(parents=True, exist_ok=True)
    repository, checkpoint = build_repository(args, state_dir, tool_path)
    log(f"model repository {repository} ({checkpoint.label}; tools {args.tool_modules}"
        + (f" from {os.pathsep.join(map(str, tool_path))}" if tool_path else "") + ")")

    stop = {"requested": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
    try:
        server = start_server(args, repository, state_dir / "tritonserver.log")
    except BaseException:
        signal.signal(signal.SIGTERM, previous)
        raise
    gateway = None
    try:
        urls = server.urls
        log(f"ready in {time.monotonic() - started:.1f} s: HTTP {urls['http']}  gRPC {urls['grpc']}  "
            f"metrics {urls['metrics']}")
        if args.openai_port:
            from function_calling_agent.gateway import usage_examples
            from function_calling_agent.gateway.process import GatewayProcess

            try:
                gateway = GatewayProcess(triton_url=urls["grpc"], port=args.openai_port, host=args.host,
                                         log_path=str(state_dir / "gateway.log")).start()
            except RuntimeError as exc:
                raise ServeError(f"the OpenAI-compatible endpoint did not start: {one_line(exc)} (pass "
                                 "--openai-port with a free port, or 0 to run without it)") from None
            log(f"OpenAI-compatible endpoint {gateway.base_url} (log {state_dir / 'gateway.log'}); try:\n"
                + usage_examples(gateway.base_url, python=_interpreter(), prompt=args.demo_prompt or DEMO_PROMPT))
        if not args.no_demo and (args.engine != "scripted" or args.demo_prompt):
            try:
                run_demo(urls["http"], args, checkpoint)
            except (ServeError, OSError, ValueError) as exc:
                log(f"the demo request failed: {one_line(exc)}")
        log(f"serving until Ctrl-C; the tools it offers: curl -s -X POST {urls['http']}/v2/models/{AGENT}/generate "
            "-d '{\"list_tools\": true}'")
        while server.is_alive() and not stop["requested"]:
            time.sleep(0.5)
        if not stop["requested"]:
            raise ServeError(f"tritonserver exited with code {server.process.returncode} (log: "
                             f"{server.log_path})")
    except KeyboardInterrupt:
        pass
    finally:
        if gateway is not None:
            gateway.stop()
        log("stopping tritonserver")
        server.stop()
        signal.signal(signal.SIGTERM, previous)
        log("stopped")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # A shell that starts us in the background sets SIGINT to "ignore"; Ctrl-C / kill -INT must still stop us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return serve(args)
    except ServeError as exc:
        print(f"serve: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("serve: interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
