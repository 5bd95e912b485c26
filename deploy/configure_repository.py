"""Assemble a deployable Triton model repository for one profile and fill every `${name}` placeholder in it.

Profiles:
  cpu  ours only: model_repository/function_calling_agent, and one of our CPU engines copied into the `tensorrt_llm`
       slot (the agent calls its engine by that name on both profiles), chosen with the value `engine`:
       `torch` (model_repository/tensorrt_llm_cpu: a Hugging Face checkpoint, ${model_dir}; the default) or
       `llamacpp` (model_repository/tensorrt_llm_llamacpp: a GGUF file, ${gguf_path}, checked against ${tokenizer_dir}).
  gpu  the stock `inflight_batcher_llm` models of the pinned TensorRT-LLM release (--stock-dir, fetched at deploy time
       by deploy/fetch_stock_models.sh, never committed) plus our function_calling_agent.

Values come from, lowest first: the profile's defaults < a values file (--values; JSON object or KEY=VALUE lines) <
`--set key=value`. The fill is strict: a placeholder with no value is an error that names it and its template; a key
given in a values file or with --set that no template uses is an error too, so a typo never passes silently. Profile
defaults a template does not use are fine (the gpu defaults cover optional variables of neighbouring releases, such as
`prompt_embedding_table_data_type`, added to the stock templates after 1.0). Placeholders inside `#` comments are
left as they are: Triton never reads comments (the stock templates keep a commented-out `${enable_trt_overlap}`).

Empty values (gpu): the stock `fill_template.py` substitutes with `string.Template.safe_substitute`, so a variable it
is not given stays in the file as the literal `${name}`, and the backends treat that literal as "not set". It never
writes an empty value on its own, but it writes one whenever it is handed `key:` (the stock CI does this, e.g.
`sink_token_length:`). We must leave no `${...}`, so "not set" is written as the empty string, and only for
parameters whose readers treat "" exactly like the literal: every `parameters { string_value }` read by the TensorRT-LLM
C++ backend in a try/catch (an empty number or bool fails to parse and falls back to the default; an empty
encoder_model_path fails the exists() check like the literal; gpu_device_ids/participant_ids split into an empty list;
guided_decoding_backend/xgrammar_tokenizer_info_path are tested with `.empty()`), the BLS parameters (its
`get_valid_param_value` maps "" and `${...}` to the same default) and preprocessing's multimodal_model_path /
max_num_images (checked for "" / isdigit) and hf_model_path (templates after 1.0; read only together with a
multimodal_model_path, which "" leaves unset). Structural fields (max_batch_size, data types, decoupled, instance
counts, queue settings) always get real values, and so does every parameter whose backend default we rely on.

Every generated config.pbtxt is parsed with Triton's ModelConfig proto (tritonclient.grpc.model_config_pb2), its
`name` is set to its folder, and models it names (ensemble steps, `tensorrt_llm_model_name`) must be in the repository.

CLI: python -m deploy.configure_repository --profile cpu|gpu --output DIR [--stock-dir DIR] [--values FILE]
                                          [--set key=value ...] [--force]
     e.g. --profile cpu --set engine=llamacpp --set gguf_path=/m/model-q4_k_m.gguf --set tokenizer_dir=/m/tokenizer
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from function_calling_agent.adapter.parameters import DEFAULT_ENGINE_MODEL, DEFAULT_TOOL_MODULES
from function_calling_agent.adapter.parameters import PARAMETERS as AGENT_PARAMETERS
from function_calling_agent.model_config import (
    ModelConfigError,
    fill_placeholders,
    find_placeholders,
    parse_model_config,
    set_parameter,
    split_comment,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO_ROOT / "model_repository"

AGENT_MODEL = "function_calling_agent"
ENGINE_MODEL = DEFAULT_ENGINE_MODEL
# `engine` (a value of the cpu profile, not a placeholder) -> the model folder that fills the tensorrt_llm slot.
CPU_ENGINES: Mapping[str, str] = {"torch": "tensorrt_llm_cpu", "llamacpp": "tensorrt_llm_llamacpp"}
DEFAULT_CPU_ENGINE = "torch"
ENGINE_SELECTOR = "engine"
STOCK_MODELS = ("preprocessing", "tensorrt_llm", "postprocessing", "ensemble", "tensorrt_llm_bls")
CONFIG_FILE = "config.pbtxt"

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_STRING_LITERAL = re.compile(r"\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*'")
_NAME_STATEMENT = re.compile(r"^(\s*name\s*:\s*)(\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*')(\s*)$")

_AGENT_DEFAULTS = {
    "agent_instance_count": "1",
    "tool_modules": DEFAULT_TOOL_MODULES,
    "mcp_servers": "",
    "engine_transport": "grpc",
    # This server's own gRPC endpoint, wherever the launcher or tritonserver's --grpc-port put it.
    "engine_url": "self",
}

CPU_DEFAULTS: Mapping[str, str] = {
    **_AGENT_DEFAULTS,
    # One number for both models: the agent mirrors the ensemble/BLS client contract, which needs max_batch_size > 0.
    "triton_max_batch_size": "64",
    "engine_instance_count": "1",
    "max_context_tokens": "4096",
    # A 1.5B model on two cores prefills a first tool prompt in about a minute.
    "request_timeout_seconds": "600",
    "engine_idle_timeout_seconds": "300",
    # tokenizer_dir and model_dir (torch) or gguf_path (llamacpp) have no default: the caller passes the model.
}

# Every variable of the TensorRT-LLM 1.0.0 inflight_batcher_llm templates (deploy/versions.env), valued for the agent.
# tokenizer_dir has no default: it is the Hugging Face checkpoint directory the engine was built from.
GPU_DEFAULTS: Mapping[str, str] = {
    **_AGENT_DEFAULTS,
    "max_context_tokens": "8192",  # the engine's max_seq_len (engine_build/build_engine.sh)
    "request_timeout_seconds": "120",
    "engine_idle_timeout_seconds": "60",
    "triton_max_batch_size": "64",  # the engine's max_batch_size
    # tensorrt_llm: structure
    "triton_backend": "tensorrtllm",
    "decoupled_mode": "true",  # streaming, and the agent calls the engine with exec(decoupled=True)
    "batching_strategy": "inflight_fused_batching",
    # The in-flight batcher admits new requests every iteration; holding them back only adds latency to each turn.
    "max_queue_delay_microseconds": "0",
    "max_queue_size": "0",  # Triton: 0 = unbounded
    "engine_dir": "/engines/Hermes-2-Pro-Llama-3-8B/bfloat16-tp1-bs64-seq8192-in7168",  # build_engine.sh default
    "logits_datatype": "TYPE_FP32",
    "encoder_input_features_data_type": "TYPE_FP16",
    "prompt_embedding_table_data_type": "TYPE_FP16",  # templates after 1.0 only
    # tensorrt_llm: runtime
    "max_beam_width": "1",
    "decoding_mode": "top_k_top_p",
    "batch_scheduler_policy": "guaranteed_no_evict",
    "kv_cache_free_gpu_mem_fraction": "0.85",
    "enable_kv_cache_reuse": "true",  # agent turns share the system prompt and all earlier turns; needs paged context FMHA
    "enable_chunked_context": "true",  # 8k prompts; the engine is built with use_paged_context_fmha
    "exclude_input_in_output": "true",  # responses carry only new tokens
    "kv_cache_onboard_blocks": "true",
    "kv_cache_host_memory_bytes": "0",
    "normalize_log_probs": "true",
    "multi_block_mode": "true",
    "enable_context_fmha_fp32_acc": "false",
    "cuda_graph_mode": "false",
    "cuda_graph_cache_size": "0",
    "enable_trt_overlap": "false",  # commented out (deprecated) in 1.0.0's template; live again in later releases
    "gpu_weights_percent": "1.0",
    "num_nodes": "1",
    "cancellation_check_period_ms": "100",
    "stats_check_period_ms": "100",
    "iter_stats_max_iterations": "1000",
    "request_stats_max_iterations": "0",
    "speculative_decoding_fast_logits": "false",
    "lora_cache_optimal_adapter_size": "8",
    "lora_cache_max_adapter_size": "64",
    "lora_cache_gpu_memory_fraction": "0.05",
    "lora_cache_host_memory_bytes": "1073741824",
    # tensorrt_llm: not set (see the module docstring for why "" is safe for each)
    "max_tokens_in_paged_kv_cache": "",  # bounded by kv_cache_free_gpu_mem_fraction instead
    "max_attention_window_size": "",  # = max_seq_len
    "sink_token_length": "",
    "cross_kv_cache_fraction": "",  # encoder-decoder models only; must stay unset for a decoder-only engine
    "encoder_engine_dir": "",
    "gpu_device_ids": "",  # all visible GPUs
    "participant_ids": "",
    "lora_prefetch_dir": "",
    "medusa_choices": "",
    "eagle_choices": "",
    "lookahead_window_size": "",  # read only with decoding_mode lookahead
    "lookahead_ngram_size": "",
    "lookahead_verification_set_size": "",
    "guided_decoding_backend": "",
    "xgrammar_tokenizer_info_path": "",
    # preprocessing / postprocessing / tensorrt_llm_bls (ensemble and BLS stay available as baselines)
    "preprocessing_instance_count": "4",
    "postprocessing_instance_count": "4",
    "bls_instance_count": "8",
    "add_special_tokens": "true",
    "skip_special_tokens": "true",
    "accumulate_tokens": "false",
    "tensorrt_llm_model_name": ENGINE_MODEL,
    "tensorrt_llm_draft_model_name": "",
    "multimodal_encoders_name": "",
    "multimodal_model_path": "",
    "max_num_images": "",
    "hf_model_path": "",  # templates after 1.0 only; preprocessing reads it for multimodal models alone
}


class ConfigureError(ModelConfigError):
    """The repository could not be assembled; the message says what to change."""


@dataclass(frozen=True)
class ModelSource:
    folder: Path  # the model folder to copy (holds config.pbtxt)
    target: str  # its folder name in the generated repository


@dataclass(frozen=True)
class Profile:
    name: str
    defaults: Mapping[str, str]
    uses_stock_models: bool

    def sources(self, model_repository: Path, stock_dir: Path | None,
                engine: str = DEFAULT_CPU_ENGINE) -> list[ModelSource]:
        agent = ModelSource(model_repository / AGENT_MODEL, AGENT_MODEL)
        if not self.uses_stock_models:
            return [agent, ModelSource(model_repository / CPU_ENGINES[engine], ENGINE_MODEL)]
        assert stock_dir is not None
        return [ModelSource(stock_dir / name, name) for name in STOCK_MODELS] + [agent]


PROFILES: Mapping[str, Profile] = {
    "cpu": Profile("cpu", CPU_DEFAULTS, uses_stock_models=False),
    "gpu": Profile("gpu", GPU_DEFAULTS, uses_stock_models=True),
}


@dataclass(frozen=True)
class _Template:
    source: Path  # where the template came from (named in errors)
    copy: Path  # the config.pbtxt inside the staging repository
    target: str
    placeholders: frozenset[str]


def _render(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, str):
        raise ConfigureError(f"value of {key!r} must be a string, number or bool, not {type(value).__name__}")
    if "\n" in value or "\r" in value:
        raise ConfigureError(f"value of {key!r} must be a single line")
    if "${" in value:
        raise ConfigureError(f"value of {key!r} must not contain '${{': {value!r}")
    return value


def _check_key(key: str, origin: str) -> str:
    if not _KEY.match(key):
        raise ConfigureError(f"{origin}: {key!r} is not a valid variable name")
    return key


def load_values_file(path: str | Path) -> dict[str, str]:
    """A JSON object, or KEY=VALUE lines (blank lines and `#` comments skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigureError(f"cannot read values file {path}: {exc}") from exc
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigureError(f"{path}: not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigureError(f"{path}: must hold a JSON object of variable names to values")
        return {_check_key(k, str(path)): _render(k, v) for k, v in data.items()}
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigureError(f"{path}:{number}: expected KEY=VALUE, got {raw!r}")
        if key in values:
            raise ConfigureError(f"{path}:{number}: {key!r} is set twice")
        values[_check_key(key, f"{path}:{number}")] = _render(key, value)
    return values


def parse_set_arguments(pairs: Sequence[str]) -> dict[str, str]:
    """`key=value` strings (from --set) as a dict; a later key wins."""
    values: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigureError(f"--set expects key=value, got {pair!r}")
        values[_check_key(key.strip(), "--set")] = _render(key, value)
    return values


def _with_model_name(text: str, name: str, source: Path) -> str:
    """Set the top-level `name:` to `name`, adding it after the leading comment block when absent."""
    lines = text.splitlines(keepends=True)
    depth = 0
    for index, line in enumerate(lines):
        code, _ = split_comment(line.rstrip("\r\n"))
        if depth == 0:
            match = _NAME_STATEMENT.match(code)
            if match:
                ending = line[len(line.rstrip("\r\n")):]
                lines[index] = f'{match.group(1)}"{name}"{match.group(3)}{ending}'
                return "".join(lines)
        stripped = _STRING_LITERAL.sub("", code)
        depth += stripped.count("{") + stripped.count("[") - stripped.count("}") - stripped.count("]")
    if parse_model_config(text, source).name:
        raise ConfigureError(f"{source}: cannot find its top-level `name:` line to set it to {name!r}")
    header = 0
    while header < len(lines) and (not lines[header].strip() or lines[header].lstrip().startswith("#")):
        header += 1
    return "".join(lines[:header] + [f'name: "{name}"\n'] + lines[header:])


def _referenced_models(config) -> set[str]:
    names = {step.model_name for step in config.ensemble_scheduling.step}
    if "tensorrt_llm_model_name" in config.parameters:
        value = config.parameters["tensorrt_llm_model_name"].string_value
        if value:
            names.add(value)
    elif config.name == AGENT_MODEL:
        names.add(DEFAULT_ENGINE_MODEL)
    return names


def _copy_models(sources: Sequence[ModelSource], staging: Path) -> list[_Template]:
    templates = []
    for source in sources:
        config = source.folder / CONFIG_FILE
        if not config.is_file():
            raise ConfigureError(f"missing model template: {config}")
        destination = staging / source.target
        if destination.exists():
            raise ConfigureError(f"two sources for the model folder {source.target!r}")
        shutil.copytree(source.folder, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        text = config.read_text(encoding="utf-8")
        templates.append(_Template(config, destination / CONFIG_FILE, source.target, find_placeholders(text, config)))
    return templates


def _check_values(templates: Sequence[_Template], defaults: Mapping[str, str], user_values: Mapping[str, str]):
    """(values for the placeholders, agent parameters to set). A key that is no placeholder but a parameter of
    function_calling_agent (README "Configuration") is set in the agent's config.pbtxt; any other key is an error."""
    used = set().union(*(t.placeholders for t in templates))
    values = {**defaults, **user_values}
    agent_parameters = {k: v for k, v in user_values.items() if k not in used and k in AGENT_PARAMETERS}
    problems = []
    missing: dict[str, list[str]] = {}
    for template in templates:
        for name in sorted(template.placeholders - values.keys()):
            missing.setdefault(name, []).append(str(template.source))
    for name, files in sorted(missing.items()):
        problems.append(f"no value for ${{{name}}} (used in {', '.join(files)}): pass --set {name}=VALUE")
    for key in sorted(user_values.keys() - used - agent_parameters.keys()):
        hint = difflib.get_close_matches(key, sorted(used | set(AGENT_PARAMETERS)), n=1)
        problems.append(f"no template uses {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                        + " and function_calling_agent has no such parameter")
    if problems:
        raise ConfigureError("cannot fill the templates:\n  " + "\n  ".join(problems))
    return values, agent_parameters


def configure(
    profile: str,
    output: str | Path,
    values: Mapping[str, object],
    stock_dir: str | Path | None = None,
    *,
    model_repository: str | Path = MODEL_REPOSITORY,
    overwrite: bool = False,
) -> list[Path]:
    """Write the filled repository for `profile` to `output`; return its config.pbtxt paths (sorted by model).

    `values` are the caller's (values file and --set): they override the profile defaults and must all be used.
    """
    if profile not in PROFILES:
        raise ConfigureError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    chosen = PROFILES[profile]
    if chosen.uses_stock_models and stock_dir is None:
        raise ConfigureError(f"the {profile} profile needs --stock-dir (the stock inflight_batcher_llm folder)")
    if not chosen.uses_stock_models and stock_dir is not None:
        raise ConfigureError(f"--stock-dir is only for the gpu profile, not {profile!r}")
    user_values = {_check_key(k, "values"): _render(k, v) for k, v in values.items()}
    engine = user_values.pop(ENGINE_SELECTOR, DEFAULT_CPU_ENGINE)
    if chosen.uses_stock_models and ENGINE_SELECTOR in values:
        raise ConfigureError(f"{ENGINE_SELECTOR!r} chooses the engine of the cpu profile; the {profile} profile "
                             "runs the stock TensorRT-LLM models")
    if engine not in CPU_ENGINES:
        raise ConfigureError(f"unknown {ENGINE_SELECTOR} {engine!r}: choose one of {', '.join(CPU_ENGINES)}")
    output = Path(output).resolve()
    if output.exists() and not (output.is_dir() and not any(output.iterdir())) and not overwrite:
        raise ConfigureError(f"{output} exists and is not empty (use --force to replace it)")
    sources = chosen.sources(Path(model_repository), Path(stock_dir) if stock_dir is not None else None, engine)

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the server may run as another user
        templates = _copy_models(sources, staging)
        filled_values, agent_parameters = _check_values(templates, chosen.defaults, user_values)
        configs = {}
        for template in templates:
            text = fill_placeholders(template.copy.read_text(encoding="utf-8"), filled_values)
            if template.target == AGENT_MODEL:
                for key, value in agent_parameters.items():
                    text = set_parameter(text, key, value)
            text = _with_model_name(text, template.target, template.source)
            config = parse_model_config(text, template.source)
            if config.name != template.target:
                raise ConfigureError(f"{template.source}: name is {config.name!r}, expected {template.target!r}")
            template.copy.write_text(text, encoding="utf-8")
            configs[template.target] = (template, config)
        for target, (template, config) in configs.items():
            unknown = sorted(_referenced_models(config) - configs.keys())
            if unknown:
                raise ConfigureError(f"{template.source} refers to models not in the repository: {', '.join(unknown)}")
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(output / target / CONFIG_FILE for target in configs)


def make_agent_model(
    repo_dir: str | Path,
    tokenizer_dir: str | Path,
    *,
    tool_modules: str = DEFAULT_TOOL_MODULES,
    tool_path: Sequence[str | Path] = (),
    parameters: Mapping[str, str] | None = None,
    max_context_tokens: int = 4096,
    instance_count: int = 1,
    model_name: str = AGENT_MODEL,
) -> Path:
    """Put one function_calling_agent into `repo_dir/model_name`, its template filled and `parameters` set (tests and
    benchmarks assemble their own repositories around a scripted or CPU engine this way). Returns the model folder."""
    target = Path(repo_dir) / model_name
    shutil.copytree(MODEL_REPOSITORY / AGENT_MODEL, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    values = {**CPU_DEFAULTS, "agent_instance_count": str(instance_count), "tokenizer_dir": str(Path(tokenizer_dir).resolve()),
              "tool_modules": tool_modules, "max_context_tokens": str(max_context_tokens),
              "request_timeout_seconds": "120", "engine_idle_timeout_seconds": "60"}
    config_path = target / CONFIG_FILE
    text = fill_placeholders(config_path.read_text(encoding="utf-8"), values)
    extra = dict(parameters or {})
    if tool_path:
        extra.setdefault("tool_path", ":".join(str(Path(p).resolve()) for p in tool_path))
    for key, value in extra.items():
        text = set_parameter(text, key, str(value))
    text = _with_model_name(text, model_name, config_path)
    parse_model_config(text, config_path)
    config_path.write_text(text, encoding="utf-8")
    return target


def _profile_keys(profile: Profile) -> tuple[list[str], dict[str, str]]:
    """(required keys, keys with their defaults) a profile fills. The gpu templates come from --stock-dir, so its keys
    are the defaults, which cover the pinned release's templates exactly (tests check that), plus the agent's."""
    used: set[str] = set()
    if profile.uses_stock_models:
        used |= set(profile.defaults)
        sources = [ModelSource(MODEL_REPOSITORY / AGENT_MODEL, AGENT_MODEL)]
    else:
        sources = profile.sources(MODEL_REPOSITORY, None)
    for source in sources:
        config = source.folder / CONFIG_FILE
        used |= find_placeholders(config.read_text(encoding="utf-8"), config)
    required = sorted(used - set(profile.defaults))
    return required, {key: profile.defaults[key] for key in sorted(used & set(profile.defaults))}


def _keys_help(width: int = 116) -> str:
    import textwrap

    lines = []
    for name, profile in PROFILES.items():
        required, defaults = _profile_keys(profile)
        lines.append(f"keys of the {name} profile (--set KEY=VALUE or --values):")
        lines.append(textwrap.fill("required: " + ", ".join(required), width, initial_indent="  ",
                                   subsequent_indent="    "))
        shown = ", ".join(f"{key}={value!r}" if value == "" else f"{key}={value}" for key, value in defaults.items())
        lines.append(textwrap.fill("with defaults: " + shown, width, initial_indent="  ", subsequent_indent="    ",
                                   break_on_hyphens=False))
    lines.append(textwrap.fill(
        "Any parameter of function_calling_agent may be --set too, and is written into its config.pbtxt (README "
        "\"Configuration\"): " + ", ".join(sorted(AGENT_PARAMETERS)), width, break_on_hyphens=False))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.configure_repository",
        description="Assemble and fill a Triton model repository for the cpu or gpu profile.",
        epilog=_keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", required=True, choices=sorted(PROFILES),
                        help="cpu: our agent + the CPU engine; gpu: the stock TensorRT-LLM models + our agent")
    parser.add_argument("--output", required=True, help="directory to write the repository to")
    parser.add_argument("--stock-dir", help="gpu: the stock triton_backend/all_models/inflight_batcher_llm folder")
    parser.add_argument("--values", help="values file: a JSON object or KEY=VALUE lines")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="set one variable (repeatable; wins over --values)")
    parser.add_argument("--model-repository", default=str(MODEL_REPOSITORY), help="where our model templates live")
    parser.add_argument("--force", action="store_true", help="replace --output if it exists")
    args = parser.parse_args(argv)
    try:
        values = load_values_file(args.values) if args.values else {}
        values.update(parse_set_arguments(args.sets))
        written = configure(args.profile, args.output, values, args.stock_dir,
                            model_repository=args.model_repository, overwrite=args.force)
    except ModelConfigError as exc:
        print(f"configure_repository: error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
