"""Build the benchmark model repository: scripted engine, agents, and the seed tutorial's text-level model.

    repository/
      tensorrt_llm/                      scripted engine (tests/models/scripted_engine): fixed ms per generated token
                                         and per prefilled token, replaying bench/scenarios.py
      function_calling_agent/            the agent, tools from bench/tool_modules/bench_tools.py (fixed latency,
                                         copied with its latency file into the run's tools/ folder, the tool_path),
                                         tool calls of one turn run concurrently (tool_workers 32, the default)
      function_calling_agent_seqtools/   the same agent with tool_workers=1: the calls of a turn run one after another
      seed_text_model/                   text in / text out over the same engine (bench/models/seed_text_model)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from bench.scenarios import engine_script
from deploy.configure_repository import make_agent_model
from function_calling_agent.model_config import fill_placeholders
from function_calling_agent.offline_models.hermes_tokenizer import build_hermes_tokenizer
from function_calling_agent.scripted_engine.repository import make_scripted_engine

BENCH_DIR = Path(__file__).resolve().parent
TOOL_MODULE = BENCH_DIR / "tool_modules" / "bench_tools.py"
SEED_MODEL_SOURCE = BENCH_DIR / "models" / "seed_text_model"

AGENT = "function_calling_agent"
AGENT_SEQUENTIAL_TOOLS = "function_calling_agent_seqtools"
SEED_MODEL = "seed_text_model"
ENGINE = "tensorrt_llm"


@dataclasses.dataclass(frozen=True)
class EngineTiming:
    """What the scripted engine and the tools cost: the budget the agent's overhead is measured against."""

    token_latency_ms: float  # before each generated token (the end token included)
    prefill_ms_per_token: float  # per prompt token, before the first generated token (no prefix reuse)
    tool_latency_ms: float  # every tool call sleeps this long

    def engine_ms(self, prompt_tokens: int, generated_tokens: int) -> float:
        return prompt_tokens * self.prefill_ms_per_token + generated_tokens * self.token_latency_ms


@dataclasses.dataclass(frozen=True)
class BenchRepository:
    root: Path
    repository: Path
    tokenizer_dir: Path
    engine_dir: Path
    tools_dir: Path  # the agents' tool_path: bench_tools.py and its latency file
    timing: EngineTiming


def _fill(path: Path, values: dict[str, str]) -> None:
    path.write_text(fill_placeholders(path.read_text(encoding="utf-8"), values), encoding="utf-8")


def _tools_dir(root: Path, timing: EngineTiming) -> Path:
    tools_dir = root / "tools"
    if tools_dir.exists():
        shutil.rmtree(tools_dir)
    tools_dir.mkdir()
    shutil.copy(TOOL_MODULE, tools_dir / TOOL_MODULE.name)
    (tools_dir / "bench_tools.json").write_text(json.dumps({"latency_ms": timing.tool_latency_ms}), encoding="utf-8")
    return tools_dir


def build_bench_repository(root: str | Path, timing: EngineTiming, max_context_tokens: int = 4096) -> BenchRepository:
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = Path(build_hermes_tokenizer(root / "tokenizer"))
    repository = root / "repository"
    if repository.exists():
        shutil.rmtree(repository)
    repository.mkdir()
    engine_dir = make_scripted_engine(repository, engine_script(), tokenizer_dir,
                                      token_latency_ms=timing.token_latency_ms,
                                      prefill_latency_ms_per_token=timing.prefill_ms_per_token)
    tools_dir = _tools_dir(root, timing)
    for name, parameters in ((AGENT, {}), (AGENT_SEQUENTIAL_TOOLS, {"tool_workers": "1"})):
        make_agent_model(repository, tokenizer_dir, tool_modules="bench_tools", tool_path=[tools_dir], model_name=name,
                         max_context_tokens=max_context_tokens, parameters={"max_iterations": "5", **parameters})
    seed_dir = repository / SEED_MODEL
    shutil.copytree(SEED_MODEL_SOURCE, seed_dir, ignore=shutil.ignore_patterns("__pycache__"))
    _fill(seed_dir / "config.pbtxt", {"tokenizer_dir": str(tokenizer_dir)})
    return BenchRepository(root=root, repository=repository, tokenizer_dir=tokenizer_dir, engine_dir=engine_dir,
                           tools_dir=tools_dir, timing=timing)
