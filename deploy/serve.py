"""The README's main command: the agent on a real CPU tritonserver, with a real checkpoint when one can be had.

    ./serve.sh                          # default model from the Hugging Face hub (cached under .serve/)
    ./serve.sh --model /path/to/ckpt    # a local Hugging Face checkpoint (Hermes/ChatML tool-calling format)
    ./serve.sh --plumbing-check         # tiny random model: checks the wiring only, its answers are noise

It assembles the cpu profile (function_calling_agent + the CPU engine in the tensorrt_llm slot) with
deploy/configure_repository.py, starts tritonserver on ports 8000/8001/8002, sends one demo request through the
client, and keeps serving until Ctrl-C. On a machine with an NVIDIA GPU and Docker, use the gpu profile instead:
`docker compose --profile gpu up` (see README).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from deploy.configure_repository import configure
from deploy.triton_launcher import TritonServer

REPO_ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = REPO_ROOT / ".serve"
# Qwen2.5-1.5B-Instruct: the largest model within the 1.5B budget that was trained for Hermes-style tool calls
# (<tool_call> JSON, <tool_response> results, ChatML); its chat template carries the tool format.
DEFAULT_MODEL = "Qwen/Qwen2.5-1.5B-Instruct"
DEMO_PROMPT = "Give me Rivian (RIVN) news and stock price"
_WEIGHTS = ("*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.py")


def log(message: str) -> None:
    print(f"serve: {message}", flush=True)


def hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    port = urlparse(endpoint).port or 443
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def fetch_checkpoint(model_id: str) -> Path | None:
    target = STATE_DIR / "checkpoints" / model_id.replace("/", "--")
    marker = target / ".download-complete"
    if marker.is_file():
        return target
    if not hub_reachable():
        return None
    from huggingface_hub import snapshot_download

    log(f"downloading {model_id} into {target} (once)")
    snapshot_download(model_id, local_dir=target, allow_patterns=list(_WEIGHTS))
    marker.write_text(model_id, encoding="utf-8")
    return target


def plumbing_checkpoint() -> Path:
    # The offline stand-ins the tests use: a Hermes-shaped tokenizer and a random 2-layer Llama.
    from function_calling_agent.offline_models.hermes_tokenizer import build_hermes_tokenizer
    from function_calling_agent.offline_models.tiny_llama import build_tiny_llama

    base = STATE_DIR / "plumbing-check"
    tokenizer = build_hermes_tokenizer(base / "tokenizer")
    return Path(build_tiny_llama(base / "model", tokenizer))


def resolve_model(args) -> tuple[Path, bool]:
    """Returns (checkpoint dir, is_plumbing_check)."""
    if args.plumbing_check:
        return plumbing_checkpoint(), True
    candidate = Path(args.model).expanduser()
    if candidate.is_dir():
        if not (candidate / "config.json").is_file():
            sys.exit(f"serve: {candidate} has no config.json: point --model at a Hugging Face checkpoint directory")
        return candidate.resolve(), False
    checkpoint = fetch_checkpoint(args.model)
    if checkpoint is not None:
        return checkpoint, False
    log(f"cannot reach the Hugging Face hub to fetch {args.model}; run ./serve.sh --model /path/to/checkpoint to "
        "serve a local copy. Starting a PLUMBING CHECK instead: a tiny random model, its answers are noise.")
    return plumbing_checkpoint(), True


def run_demo(server: TritonServer, plumbing: bool) -> None:
    label = " (plumbing check: random weights, expect noise)" if plumbing else ""
    log(f"demo request{label}: {DEMO_PROMPT!r}")
    command = [sys.executable, str(REPO_ROOT / "client" / "client.py"), "-u", server.urls["grpc"], "--streaming",
               "--output-len", "256", "-v", "--prompt", DEMO_PROMPT]
    subprocess.run(command, check=False, timeout=900)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("FCA_MODEL", DEFAULT_MODEL),
                        help=f"Hugging Face model id or local checkpoint dir (default {DEFAULT_MODEL}, env FCA_MODEL)")
    parser.add_argument("--plumbing-check", action="store_true", help="serve a tiny random model (wiring check)")
    parser.add_argument("--tool-modules", default="function_calling_agent.tools.finance", help="comma list of tool modules to offer")
    parser.add_argument("--max-context-tokens", type=int, default=4096)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--no-demo", action="store_true", help="do not send the demo request once ready")
    args = parser.parse_args(argv)

    checkpoint, plumbing = resolve_model(args)
    repository = STATE_DIR / "model_repository"
    configure("cpu", repository, {"tokenizer_dir": str(checkpoint), "model_dir": str(checkpoint),
                                  "tool_modules": args.tool_modules,
                                  "max_context_tokens": str(args.max_context_tokens)}, overwrite=True)
    log(f"model repository {repository} (cpu profile, checkpoint {checkpoint})")
    server = TritonServer(repository, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port, host=args.host, log_path=STATE_DIR / "tritonserver.log")
    stop = {"requested": False}

    def on_signal(signum, _frame):
        stop["requested"] = True

    signal.signal(signal.SIGTERM, on_signal)
    server.start()
    try:
        log(f"starting tritonserver (log: {STATE_DIR / 'tritonserver.log'})")
        server.wait_ready(timeout=900)
        http = server.urls["http"]
        log(f"ready: HTTP {http}  gRPC {server.urls['grpc']}  metrics {server.urls['metrics']}")
        log(f"try: curl -X POST {http}/v2/models/function_calling_agent/generate_stream -d "
            f"'{{\"text_input\": \"{DEMO_PROMPT}\", \"max_tokens\": 256, \"stream\": true}}'")
        if not args.no_demo:
            run_demo(server, plumbing)
        log("serving until Ctrl-C")
        while server.is_alive() and not stop["requested"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        log("stopping tritonserver")
        code = server.stop()
    return 0 if stop["requested"] or code in (0, None, -signal.SIGTERM) else 1


if __name__ == "__main__":
    sys.exit(main())
