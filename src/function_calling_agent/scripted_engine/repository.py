"""Put the scripted `tensorrt_llm` engine (model_repository/scripted_engine) into a model repository.

    engine_dir = make_scripted_engine(repo, {"scenarios": [...], "default_turns": ["Hi."]}, tokenizer_dir,
                                      token_latency_ms=5)
    ...
    read_request_log(engine_dir)  # the engine's requests.jsonl, one dict per line

A script given as a dict is written to `<engine_dir>/script.json`; one given as a path (a JSON file) is used in place.
The engine re-reads its script when the file changes, so `write_script(engine_dir, script)`, or editing the file,
re-scripts a running server. The request log lives in `state_dir`
(default `<engine_dir>/state`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

from ..model_config import fill_placeholders, find_placeholders, read_model_config
from ..paths import MODEL_REPOSITORY
from .script import CompletionScript

SCRIPTED_ENGINE_SOURCE = MODEL_REPOSITORY / "scripted_engine"
SCRIPT_FILE = "script.json"
REQUEST_LOG = "requests.jsonl"


def make_scripted_engine(
    repo_dir: str | os.PathLike,
    script: dict | str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    *,
    model_name: str = "tensorrt_llm",
    token_latency_ms: float = 0,
    prefill_latency_ms_per_token: float = 0,
    state_dir: Optional[str | os.PathLike] = None,
    instance_count: int = 1,
) -> Path:
    """Copies the engine into `repo_dir/model_name`, fills its config and writes the script; returns that folder."""
    engine_dir = Path(repo_dir) / model_name
    if engine_dir.exists():
        raise FileExistsError(f"{engine_dir} already exists")
    if isinstance(script, dict):
        script_path = (engine_dir / SCRIPT_FILE).resolve()
    else:
        script_path = Path(script).resolve()
        CompletionScript.load(script_path)  # ScriptError naming the file and the field to fix
    shutil.copytree(SCRIPTED_ENGINE_SOURCE, engine_dir, ignore=shutil.ignore_patterns("__pycache__"))
    if isinstance(script, dict):
        write_script(engine_dir, script)
    values = {
        "script_path": str(script_path),
        "tokenizer_dir": str(Path(tokenizer_dir).resolve()),
        "token_latency_ms": str(token_latency_ms),
        "prefill_latency_ms_per_token": str(prefill_latency_ms_per_token),
        "state_dir": str(Path(state_dir).resolve() if state_dir is not None else (engine_dir / "state").resolve()),
        "instance_count": str(int(instance_count)),
    }
    config_path = engine_dir / "config.pbtxt"
    template = config_path.read_text(encoding="utf-8")
    names = find_placeholders(template, config_path)
    if names != set(values):
        raise ValueError(f"scripted engine placeholders {sorted(names)} != filled values {sorted(values)}")
    config_path.write_text(fill_placeholders(template, values), encoding="utf-8")
    return engine_dir


def write_script(engine_dir: str | os.PathLike, script: dict) -> None:
    """Validates `script` with the engine's own parser and (re)writes it atomically."""
    CompletionScript.from_dict(script)
    path = Path(engine_dir) / SCRIPT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(script, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def state_dir_of(engine_dir: str | os.PathLike) -> Path:
    """The state_dir the engine's filled config names."""
    config = read_model_config(Path(engine_dir) / "config.pbtxt")
    if "state_dir" not in config.parameters:
        raise ValueError(f"{engine_dir}: no state_dir parameter in config.pbtxt")
    return Path(config.parameters["state_dir"].string_value)


def read_request_log(engine_dir: str | os.PathLike) -> list[dict]:
    """Entries of the engine's requests.jsonl: `event` start/end/stop, request_id, turn, scenario, end, ..."""
    path = state_dir_of(engine_dir) / REQUEST_LOG
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    # A line the engine is still appending has no newline yet: it is read next time.
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]
