"""Find or make the GGUF file and tokenizer directory the llama.cpp engine serves (for the serve command).

    resolve_gguf("/models/qwen2.5-1.5b-instruct-q4_k_m.gguf", tokenizer_dir="/models/Qwen2.5-1.5B-Instruct")
    resolve_gguf("/checkpoints/Qwen2.5-1.5B-Instruct")        # a local HF checkpoint: converted and quantized once
    resolve_gguf("Qwen/Qwen2.5-1.5B-Instruct")                # the hub: official 4-bit GGUF + the model's tokenizer

Everything lands under `cache_dir` and is reused on the next call without network. The hub is optional: offline,
local files work, and a hub id that is not cached raises GgufUnavailable saying what to pass instead.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .convert import quantize_gguf, write_gguf

DEFAULT_QUANT = "Q4_K_M"
# Official GGUF builds published by the model authors (same weights, llama.cpp's converter and quantizer).
OFFICIAL_GGUF = {
    "Qwen/Qwen2.5-1.5B-Instruct": ("Qwen/Qwen2.5-1.5B-Instruct-GGUF", "qwen2.5-1.5b-instruct-{quant}.gguf"),
    "Qwen/Qwen2.5-0.5B-Instruct": ("Qwen/Qwen2.5-0.5B-Instruct-GGUF", "qwen2.5-0.5b-instruct-{quant}.gguf"),
    "Qwen/Qwen2.5-3B-Instruct": ("Qwen/Qwen2.5-3B-Instruct-GGUF", "qwen2.5-3b-instruct-{quant}.gguf"),
    "Qwen/Qwen2.5-7B-Instruct": ("Qwen/Qwen2.5-7B-Instruct-GGUF", "qwen2.5-7b-instruct-{quant}.gguf"),
}
# What the agent and the vocabulary check read from a tokenizer directory.
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json", "config.json", "vocab.json", "merges.txt"]
_COMPLETE = ".complete"


class GgufUnavailable(RuntimeError):
    """No GGUF could be found or made for the request; the message says what to pass instead."""


@dataclass(frozen=True)
class GgufModel:
    gguf_path: Path
    tokenizer_dir: Path
    origin: str  # how it was obtained, for the serve command's log


def _checkpoint_key(checkpoint: Path) -> str:
    """Changes when the checkpoint's weights or tokenizer change (path, sizes and mtimes)."""
    digest = hashlib.sha256(os.fspath(checkpoint.resolve()).encode("utf-8"))
    for path in sorted(checkpoint.iterdir()):
        if path.suffix in (".safetensors", ".json"):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode("utf-8"))
    return digest.hexdigest()[:16]


def convert_checkpoint(checkpoint: str | os.PathLike, cache_dir: str | os.PathLike, quant: str = DEFAULT_QUANT,
                       log: Callable[[str], None] = print) -> Path:
    """A quantized GGUF of a local Hugging Face checkpoint, converted once into `cache_dir` and reused."""
    checkpoint = Path(checkpoint)
    target_dir = Path(cache_dir) / "converted" / f"{checkpoint.name}-{_checkpoint_key(checkpoint)}"
    target = target_dir / f"{checkpoint.name.lower()}-{quant.lower()}.gguf"
    if target.is_file():
        return target
    intermediate = target_dir / f"{checkpoint.name.lower()}-f16.gguf"
    log(f"converting {checkpoint} to GGUF (once; cached in {target_dir})")
    write_gguf(checkpoint, intermediate, dtype="f32" if quant == "F32" else "f16")
    if quant in ("F16", "F32"):
        intermediate.rename(target)
        return target
    log(f"quantizing to {quant} with llama.cpp")
    quantize_gguf(intermediate, target, quant)
    intermediate.unlink()
    return target


def _download_hub_model(model_id: str, cache_dir: Path, quant: str, log: Callable[[str], None]) -> GgufModel:
    from huggingface_hub import hf_hub_download, list_repo_files, snapshot_download

    base = cache_dir / "hub" / model_id.replace("/", "--")
    tokenizer_dir = base / "tokenizer"
    if not (tokenizer_dir / _COMPLETE).is_file():
        log(f"downloading the tokenizer of {model_id}")
        snapshot_download(model_id, local_dir=tokenizer_dir, allow_patterns=TOKENIZER_FILES)
        (tokenizer_dir / _COMPLETE).write_text(model_id, encoding="utf-8")
    repo, pattern = OFFICIAL_GGUF.get(model_id, (f"{model_id}-GGUF", None))
    try:
        files = list_repo_files(repo)
    except Exception:  # no such repository: convert the checkpoint ourselves
        files = []
    wanted = pattern.format(quant=quant.lower()) if pattern else None
    candidates = [f for f in files if f == wanted] or [f for f in files if f.lower().endswith(f"{quant.lower()}.gguf")]
    if candidates:
        log(f"downloading {repo}/{candidates[0]}")
        path = Path(hf_hub_download(repo, candidates[0], local_dir=base / "gguf"))
        return GgufModel(path, tokenizer_dir, f"{repo}/{candidates[0]}")
    log(f"{repo} has no {quant} GGUF: downloading {model_id} to convert it")
    checkpoint = base / "checkpoint"
    if not (checkpoint / _COMPLETE).is_file():
        snapshot_download(model_id, local_dir=checkpoint, allow_patterns=["*.json", "*.safetensors", "*.txt"])
        (checkpoint / _COMPLETE).write_text(model_id, encoding="utf-8")
    return GgufModel(convert_checkpoint(checkpoint, cache_dir, quant, log), tokenizer_dir,
                     f"{model_id} converted to {quant}")


def _cached_hub_model(model_id: str, cache_dir: Path, quant: str) -> GgufModel | None:
    base = cache_dir / "hub" / model_id.replace("/", "--")
    if not (base / "tokenizer" / _COMPLETE).is_file():
        return None
    found = sorted((base / "gguf").glob(f"*{quant.lower()}.gguf")) if (base / "gguf").is_dir() else []
    if found:
        return GgufModel(found[0], base / "tokenizer", f"{model_id} (cached)")
    if (base / "checkpoint" / _COMPLETE).is_file():  # converted earlier: convert_checkpoint finds its cached output
        return GgufModel(convert_checkpoint(base / "checkpoint", cache_dir, quant), base / "tokenizer",
                         f"{model_id} as {quant} (cached)")
    return None


def resolve_gguf(model: str, *, tokenizer_dir: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike = ".serve/gguf", quant: str = DEFAULT_QUANT,
                 allow_download: bool = True, log: Callable[[str], None] = print) -> GgufModel:
    """`model` is a .gguf file (then `tokenizer_dir` is required), a local Hugging Face checkpoint directory
    (converted to `quant` once), or a hub model id (its official GGUF when published, else its checkpoint converted;
    needs the hub the first time). Raises GgufUnavailable with what to pass instead."""
    cache = Path(cache_dir)
    candidate = Path(model).expanduser()
    if candidate.suffix == ".gguf" or candidate.is_file():
        if not candidate.is_file():
            raise GgufUnavailable(f"{candidate} does not exist")
        if tokenizer_dir is None:
            raise GgufUnavailable(f"{candidate} needs its Hugging Face tokenizer: pass the tokenizer directory of the "
                                  "model it was made from (the agent tokenizes with it)")
        return GgufModel(candidate.resolve(), Path(tokenizer_dir).expanduser().resolve(), "local GGUF file")
    if candidate.is_dir():
        if not (candidate / "config.json").is_file():
            raise GgufUnavailable(f"{candidate} is neither a .gguf file nor a Hugging Face checkpoint (no config.json)")
        tokenizer = Path(tokenizer_dir).expanduser().resolve() if tokenizer_dir else candidate.resolve()
        return GgufModel(convert_checkpoint(candidate, cache, quant, log), tokenizer, f"{candidate} as {quant}")
    cached = _cached_hub_model(model, cache, quant)
    if cached is not None:
        return cached
    if not allow_download:
        raise GgufUnavailable(f"{model} is not cached and downloads are off: pass a local .gguf file with its "
                              "tokenizer directory, or a local Hugging Face checkpoint directory")
    try:  # huggingface_hub honours HF_ENDPOINT, HF_TOKEN and the proxy variables
        resolved = _download_hub_model(model, cache, quant, log)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GgufUnavailable(f"fetching {model} from the Hugging Face hub failed ({type(exc).__name__}: {first}): "
                              "pass a local .gguf file with its tokenizer directory, or a local Hugging Face "
                              "checkpoint directory") from exc
    if tokenizer_dir is not None:
        return GgufModel(resolved.gguf_path, Path(tokenizer_dir).expanduser().resolve(), resolved.origin)
    return resolved


def main(argv=None) -> int:
    """CLI for scripts (e.g. the compose service): print {"gguf_path", "tokenizer_dir", "origin"} as JSON."""
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python -m function_calling_agent.llamacpp_engine.resolve",
                                     description="Find or make the GGUF file and tokenizer the llama.cpp engine serves.")
    parser.add_argument("model", help="a .gguf file, a Hugging Face checkpoint directory, or a hub model id")
    parser.add_argument("--tokenizer", help="tokenizer directory (required with a .gguf file)")
    parser.add_argument("--cache-dir", default=".serve/gguf")
    parser.add_argument("--quant", default=DEFAULT_QUANT)
    parser.add_argument("--offline", action="store_true", help="never contact the Hugging Face hub")
    args = parser.parse_args(argv)
    try:
        resolved = resolve_gguf(args.model, tokenizer_dir=args.tokenizer, cache_dir=args.cache_dir, quant=args.quant,
                                allow_download=not args.offline, log=lambda m: print(m, file=sys.stderr, flush=True))
    except GgufUnavailable as exc:
        print(f"resolve: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"gguf_path": str(resolved.gguf_path), "tokenizer_dir": str(resolved.tokenizer_dir),
                      "origin": resolved.origin}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
