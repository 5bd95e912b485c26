"""deploy/configure_repository.py: both profiles fill every placeholder, every config parses, mistakes are rejected.

The gpu profile runs on tests/fixtures/stock_inflight_batcher_llm: our own templates in the stock layout of the pinned
TensorRT-LLM release (the real ones are fetched at deploy time). The cpu profile runs on the real model_repository/.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from deploy.configure_repository import (
    GPU_DEFAULTS,
    MODEL_REPOSITORY,
    configure,
    find_placeholders,
    main,
)
from function_calling_agent.adapter.parameters import parse_parameters
from function_calling_agent.model_config import ModelConfigError

STOCK_FIXTURE = Path(__file__).parent / "fixtures" / "stock_inflight_batcher_llm"
STOCK_MODELS = {"preprocessing", "tensorrt_llm", "postprocessing", "ensemble", "tensorrt_llm_bls"}
GPU_VALUES = {"tokenizer_dir": "/checkpoints/Hermes-2-Pro-Llama-3-8B", "engine_dir": "/engines/hermes-bf16"}
CPU_VALUES = {"tokenizer_dir": "/checkpoints/Hermes-2-Pro-Llama-3-8B", "model_dir": "/checkpoints/Hermes-2-Pro-Llama-3-8B"}


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def parameter(config: model_config_pb2.ModelConfig, key: str) -> str:
    assert key in config.parameters, f"{config.name} has no parameter {key!r}"
    return config.parameters[key].string_value


def configs_by_model(written: list[Path]) -> dict[str, model_config_pb2.ModelConfig]:
    configs = {path.parent.name: parse(path) for path in written}
    for path in written:
        assert find_placeholders(path.read_text(encoding="utf-8")) == frozenset(), f"unfilled variable in {path}"
        assert configs[path.parent.name].name == path.parent.name
    return configs


def copy_tree(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__"))
    return destination


def test_cpu_profile_fills_the_agent_and_puts_the_cpu_engine_in_the_tensorrt_llm_slot(tmp_path):
    written = configure("cpu", tmp_path / "repo", CPU_VALUES)

    configs = configs_by_model(written)
    assert set(configs) == {"function_calling_agent", "tensorrt_llm"}
    agent, engine = configs["function_calling_agent"], configs["tensorrt_llm"]
    assert agent.max_batch_size == 64
    assert agent.model_transaction_policy.decoupled
    assert agent.instance_group[0].count == 1
    assert parameter(agent, "tokenizer_dir") == CPU_VALUES["tokenizer_dir"]
    assert parameter(agent, "tool_modules") == "function_calling_agent.tools.finance"
    assert parameter(agent, "max_context_tokens") == "4096"
    parsed = parse_parameters({k: v.string_value for k, v in agent.parameters.items()}, check_paths=False)
    assert parsed.tensorrt_llm_model_name == "tensorrt_llm"  # the default: the engine sits in the tensorrt_llm slot
    assert engine.backend == "python"
    assert engine.instance_group[0].count == 1
    assert CPU_VALUES["model_dir"] in {p.string_value for p in engine.parameters.values()}
    # The engine's Python code came along with its config.
    assert (tmp_path / "repo" / "tensorrt_llm" / "1" / "model.py").is_file()
    assert (tmp_path / "repo" / "function_calling_agent" / "1" / "model.py").is_file()


def test_gpu_profile_fills_every_stock_model_and_ours(tmp_path):
    written = configure("gpu", tmp_path / "repo", GPU_VALUES, stock_dir=STOCK_FIXTURE)

    configs = configs_by_model(written)
    assert set(configs) == STOCK_MODELS | {"function_calling_agent"}
    engine = configs["tensorrt_llm"]
    assert engine.backend == "tensorrtllm"
    assert engine.max_batch_size == 64
    assert engine.model_transaction_policy.decoupled
    assert engine.dynamic_batching.max_queue_delay_microseconds == 0
    assert parameter(engine, "gpt_model_path") == GPU_VALUES["engine_dir"]
    assert parameter(engine, "gpt_model_type") == "inflight_fused_batching"
    assert parameter(engine, "enable_kv_cache_reuse") == "true"
    assert parameter(engine, "enable_chunked_context") == "true"
    assert parameter(engine, "exclude_input_in_output") == "true"
    assert parameter(engine, "kv_cache_free_gpu_mem_fraction") == "0.85"
    assert parameter(engine, "batch_scheduler_policy") == "guaranteed_no_evict"
    assert parameter(engine, "tokenizer_dir") == GPU_VALUES["tokenizer_dir"]
    assert parameter(engine, "cross_kv_cache_fraction") == ""  # must stay unset for a decoder-only engine
    types = {tensor.name: tensor.data_type for tensor in [*engine.input, *engine.output]}
    assert types["encoder_input_features"] == model_config_pb2.TYPE_FP16
    assert types["context_logits"] == types["generation_logits"] == model_config_pb2.TYPE_FP32

    bls = configs["tensorrt_llm_bls"]
    assert bls.model_transaction_policy.decoupled
    assert bls.instance_group[0].count == 8
    assert parameter(bls, "tensorrt_llm_model_name") == "tensorrt_llm"
    for name in ("preprocessing", "postprocessing"):
        assert parameter(configs[name], "tokenizer_dir") == GPU_VALUES["tokenizer_dir"]
        assert configs[name].instance_group[0].count == 4
    assert [step.model_name for step in configs["ensemble"].ensemble_scheduling.step] == [
        "preprocessing", "tensorrt_llm", "postprocessing"]
    agent = configs["function_calling_agent"]
    assert parameter(agent, "max_context_tokens") == "8192"
    assert agent.max_batch_size == engine.max_batch_size


def test_gpu_defaults_cover_exactly_the_pinned_templates_variables():
    used = set().union(*(find_placeholders((STOCK_FIXTURE / m / "config.pbtxt").read_text()) for m in STOCK_MODELS))
    used |= find_placeholders((MODEL_REPOSITORY / "function_calling_agent" / "config.pbtxt").read_text())
    assert used - set(GPU_DEFAULTS) == {"tokenizer_dir"}  # the checkpoint: always given by the caller
    # Defaults no 1.0.0 template uses: variables of later releases, applied only where present (1.0.0 comments
    # enable_trt_overlap out; later templates make it live again and add hf_model_path to preprocessing).
    assert set(GPU_DEFAULTS) - used == {"prompt_embedding_table_data_type", "enable_trt_overlap", "hf_model_path"}


def test_later_templates_hf_model_path_is_filled_empty(tmp_path):
    # Post-1.0 preprocessing templates add ${hf_model_path}; its model reads it only beside a multimodal_model_path.
    stock = copy_tree(STOCK_FIXTURE, tmp_path / "stock")
    config = stock / "preprocessing" / "config.pbtxt"
    config.write_text(config.read_text()
                      + 'parameters: { key: "hf_model_path" value: { string_value: "${hf_model_path}" } }\n')
    configs = configs_by_model(configure("gpu", tmp_path / "repo", GPU_VALUES, stock_dir=stock))
    assert parameter(configs["preprocessing"], "hf_model_path") == ""
    assert parameter(configs["preprocessing"], "multimodal_model_path") == ""


def test_missing_variable_is_rejected_naming_it_and_its_templates(tmp_path):
    output = tmp_path / "repo"
    with pytest.raises(ModelConfigError) as caught:
        configure("gpu", output, {"engine_dir": "/engines/x"}, stock_dir=STOCK_FIXTURE)

    message = str(caught.value)
    assert "${tokenizer_dir}" in message
    for model in ("preprocessing", "postprocessing", "tensorrt_llm", "function_calling_agent"):
        assert f"{model}/config.pbtxt" in message
    assert not output.exists()
    assert not list(tmp_path.iterdir()), "the staging directory was left behind"


def test_new_template_variable_without_a_value_is_rejected(tmp_path):
    stock = copy_tree(STOCK_FIXTURE, tmp_path / "stock")
    config = stock / "tensorrt_llm" / "config.pbtxt"
    config.write_text(config.read_text() + 'parameters: { key: "x" value: { string_value: "${brand_new_knob}" } }\n')

    with pytest.raises(ModelConfigError, match=r"\$\{brand_new_knob\} \(used in .*tensorrt_llm/config\.pbtxt\)"):
        configure("gpu", tmp_path / "repo", GPU_VALUES, stock_dir=stock)


def test_cpu_profile_requires_the_checkpoint_dirs(tmp_path):
    with pytest.raises(ModelConfigError) as caught:
        configure("cpu", tmp_path / "repo", {})
    assert "${tokenizer_dir}" in str(caught.value) and "${model_dir}" in str(caught.value)


def test_a_key_no_template_uses_is_rejected_with_a_suggestion(tmp_path):
    with pytest.raises(ModelConfigError, match=r"'enable_kv_cache_resue' \(did you mean 'enable_kv_cache_reuse'\?\)"):
        configure("gpu", tmp_path / "repo", {**GPU_VALUES, "enable_kv_cache_resue": "true"}, stock_dir=STOCK_FIXTURE)
    with pytest.raises(ModelConfigError, match="no template uses 'engine_dir'"):
        configure("cpu", tmp_path / "repo", {**CPU_VALUES, "engine_dir": "/engines/x"})


def test_cli_rejects_a_missing_variable_and_a_typo(tmp_path, capsys):
    common = ["--profile", "gpu", "--stock-dir", str(STOCK_FIXTURE), "--output", str(tmp_path / "repo")]
    assert main([*common, "--set", "engine_dir=/engines/x"]) == 2
    assert "${tokenizer_dir}" in capsys.readouterr().err
    assert main([*common, "--set", "tokenizer_dir=/t", "--set", "decoupled_mod=true"]) == 2
    assert "'decoupled_mod'" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


def test_cli_values_file_and_set_override_the_defaults(tmp_path, capsys):
    values = tmp_path / "values.env"
    values.write_text("# agent tuning\ntokenizer_dir=/ckpt\nmodel_dir=/ckpt\nagent_instance_count=3\n")
    output = tmp_path / "repo"
    assert main(["--profile", "cpu", "--output", str(output), "--values", str(values),
                 "--set", "agent_instance_count=2", "--set", "max_context_tokens=2048"]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(printed) == sorted(str(p) for p in output.glob("*/config.pbtxt"))
    agent = parse(output / "function_calling_agent" / "config.pbtxt")
    assert agent.instance_group[0].count == 2
    assert parameter(agent, "max_context_tokens") == "2048"


def test_json_values_file(tmp_path):
    values = tmp_path / "values.json"
    values.write_text(json.dumps({**GPU_VALUES, "triton_max_batch_size": 32, "decoupled_mode": True}))
    output = tmp_path / "repo"
    assert main(["--profile", "gpu", "--stock-dir", str(STOCK_FIXTURE), "--output", str(output),
                 "--values", str(values)]) == 0
    engine = parse(output / "tensorrt_llm" / "config.pbtxt")
    assert engine.max_batch_size == 32 and engine.model_transaction_policy.decoupled


def test_a_value_that_breaks_the_config_is_reported_with_the_file(tmp_path):
    with pytest.raises(ModelConfigError, match=r"tensorrt_llm/config\.pbtxt: not a valid Triton model config: .*TYPE_FLOAT"):
        configure("gpu", tmp_path / "repo", {**GPU_VALUES, "logits_datatype": "TYPE_FLOAT"}, stock_dir=STOCK_FIXTURE)


def test_model_names_follow_their_folders(tmp_path):
    source = copy_tree(MODEL_REPOSITORY, tmp_path / "source")
    engine_config = source / "tensorrt_llm_cpu" / "config.pbtxt"
    text = engine_config.read_text()
    lines = [line for line in text.splitlines(keepends=True) if not line.startswith("name:")]
    engine_config.write_text('name: "tensorrt_llm_cpu"\n' + "".join(lines))
    agent_config = source / "function_calling_agent" / "config.pbtxt"
    agent_config.write_text("".join(l for l in agent_config.read_text().splitlines(True) if not l.startswith("name:")))

    configs = configs_by_model(configure("cpu", tmp_path / "repo", CPU_VALUES, model_repository=source))
    assert configs["tensorrt_llm"].name == "tensorrt_llm"
    assert configs["function_calling_agent"].name == "function_calling_agent"


def test_caches_are_not_copied(tmp_path):
    source = copy_tree(MODEL_REPOSITORY, tmp_path / "source")
    cache = source / "function_calling_agent" / "1" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "model.cpython-311.pyc").write_bytes(b"\0")
    configure("cpu", tmp_path / "repo", CPU_VALUES, model_repository=source)
    assert not list((tmp_path / "repo").rglob("__pycache__"))
    assert not list((tmp_path / "repo").rglob("*.pyc"))


def test_an_existing_output_is_replaced_only_when_asked(tmp_path):
    output = tmp_path / "repo"
    output.mkdir()
    (output / "stale").write_text("old")
    with pytest.raises(ModelConfigError, match="exists and is not empty"):
        configure("cpu", output, CPU_VALUES)
    configure("cpu", output, CPU_VALUES, overwrite=True)
    assert sorted(p.name for p in output.iterdir()) == ["function_calling_agent", "tensorrt_llm"]


def test_profile_and_stock_dir_must_agree(tmp_path):
    with pytest.raises(ModelConfigError, match="needs --stock-dir"):
        configure("gpu", tmp_path / "repo", GPU_VALUES)
    with pytest.raises(ModelConfigError, match="only for the gpu profile"):
        configure("cpu", tmp_path / "repo", CPU_VALUES, stock_dir=STOCK_FIXTURE)
    stock = copy_tree(STOCK_FIXTURE, tmp_path / "stock")
    shutil.rmtree(stock / "tensorrt_llm_bls")
    with pytest.raises(ModelConfigError, match=r"missing model template: .*tensorrt_llm_bls/config\.pbtxt"):
        configure("gpu", tmp_path / "repo", GPU_VALUES, stock_dir=stock)


def test_ensemble_steps_must_name_models_in_the_repository(tmp_path):
    stock = copy_tree(STOCK_FIXTURE, tmp_path / "stock")
    ensemble = stock / "ensemble" / "config.pbtxt"
    ensemble.write_text(ensemble.read_text().replace('model_name: "postprocessing"', 'model_name: "detokenizer"'))
    with pytest.raises(ModelConfigError, match="refers to models not in the repository: detokenizer"):
        configure("gpu", tmp_path / "repo", GPU_VALUES, stock_dir=stock)


def test_placeholders_in_comments_are_ignored_and_malformed_ones_rejected():
    text = (
        '# parameters { key: "enable_trt_overlap" value: { string_value: "${enable_trt_overlap}" } }\n'
        'parameters { key: "a#b" value: { string_value: "${real}" } }  # ${trailing_comment}\n'
    )
    assert find_placeholders(text) == {"real"}
    with pytest.raises(ModelConfigError, match="malformed placeholder"):
        find_placeholders('max_batch_size: ${triton-max-batch-size}\n', "x/config.pbtxt")


def test_agent_parameters_no_template_uses_are_set_in_the_agent_config(tmp_path):
    # A user's --set of any function_calling_agent parameter lands in its config.pbtxt (README "Configuration"); a
    # key that is neither a placeholder nor a parameter is still refused.
    written = configure("cpu", tmp_path / "repo", {**CPU_VALUES, "max_iterations": "3", "tool_path": "/tools:/more"})
    agent = configs_by_model(written)["function_calling_agent"]
    assert parameter(agent, "max_iterations") == "3" and parameter(agent, "tool_path") == "/tools:/more"
    parsed = parse_parameters({k: v.string_value for k, v in agent.parameters.items()}, check_paths=False)
    assert parsed.limits.max_iterations == 3 and parsed.tool_path == ("/tools", "/more")
    with pytest.raises(ModelConfigError, match=r"'max_iteration' \(did you mean 'max_iterations'\?\)"):
        configure("cpu", tmp_path / "other", {**CPU_VALUES, "max_iteration": "3"})


def test_help_lists_the_keys_of_each_profile_and_the_agent_parameters(capsys):
    from deploy.configure_repository import CPU_DEFAULTS
    from function_calling_agent.adapter.parameters import PARAMETERS

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    cpu = text[text.index("keys of the cpu profile"):text.index("keys of the gpu profile")]
    gpu = text[text.index("keys of the gpu profile"):text.index("Any parameter of function_calling_agent")]
    assert "required: model_dir, tokenizer_dir" in cpu
    cpu_templates = [MODEL_REPOSITORY / "function_calling_agent" / "config.pbtxt",
                     MODEL_REPOSITORY / "tensorrt_llm_cpu" / "config.pbtxt"]
    for key in set().union(*(find_placeholders(p.read_text(encoding="utf-8")) for p in cpu_templates)):
        assert (f"{key}={CPU_DEFAULTS[key]}" if key in CPU_DEFAULTS else key) in cpu, key
    assert "required: tokenizer_dir" in gpu
    for key, value in GPU_DEFAULTS.items():
        assert f"{key}={value if value else repr(value)}" in gpu, key
    agent = text[text.index("Any parameter of function_calling_agent"):]
    assert all(name in agent for name in PARAMETERS)


LLAMACPP_VALUES = {"engine": "llamacpp", "tokenizer_dir": "/models/Qwen2.5-1.5B-Instruct",
                   "gguf_path": "/models/qwen2.5-1.5b-instruct-q4_k_m.gguf"}


def test_cpu_profile_can_put_the_llamacpp_engine_in_the_tensorrt_llm_slot(tmp_path):
    from function_calling_agent.llamacpp_engine import LlamaCppConfig

    written = configure("cpu", tmp_path / "repo", LLAMACPP_VALUES)

    configs = configs_by_model(written)
    assert set(configs) == {"function_calling_agent", "tensorrt_llm"}
    agent, engine = configs["function_calling_agent"], configs["tensorrt_llm"]
    assert engine.backend == "python" and engine.model_transaction_policy.decoupled
    # The engine checks the GGUF against the very tokenizer the agent uses.
    assert parameter(engine, "tokenizer_dir") == parameter(agent, "tokenizer_dir") == LLAMACPP_VALUES["tokenizer_dir"]
    assert parameter(engine, "gguf_path") == LLAMACPP_VALUES["gguf_path"]
    parsed = LlamaCppConfig.from_model_config(
        {"parameters": {k: {"string_value": v.string_value} for k, v in engine.parameters.items()}})
    assert parsed.gguf_path == LLAMACPP_VALUES["gguf_path"] and parsed.enable_kv_cache_reuse
    model_py = (tmp_path / "repo" / "tensorrt_llm" / "1" / "model.py").read_text(encoding="utf-8")
    assert "llamacpp_engine" in model_py
    # The torch engine stays the default and keeps its own template.
    torch_repo = configure("cpu", tmp_path / "torch", CPU_VALUES)
    assert "model_dir" in configs_by_model(torch_repo)["tensorrt_llm"].parameters


def test_engine_choice_is_checked(tmp_path):
    with pytest.raises(ModelConfigError, match="unknown engine 'vllm': choose one of torch, llamacpp"):
        configure("cpu", tmp_path / "a", {**LLAMACPP_VALUES, "engine": "vllm"})
    # Each engine has its own model variable: a torch checkpoint does not stand in for a GGUF file.
    with pytest.raises(ModelConfigError) as error:
        configure("cpu", tmp_path / "b", {"engine": "llamacpp", "tokenizer_dir": "/t", "model_dir": "/ckpt"})
    assert "no value for ${gguf_path}" in str(error.value) and "'model_dir'" in str(error.value)
    with pytest.raises(ModelConfigError, match="cpu profile"):
        configure("gpu", tmp_path / "c", {**GPU_VALUES, "engine": "llamacpp"}, stock_dir=STOCK_FIXTURE)
    assert not any(tmp_path.iterdir())


def test_cli_selects_the_llamacpp_engine(tmp_path, capsys):
    args = ["--profile", "cpu", "--output", str(tmp_path / "repo")]
    args += [arg for key, value in LLAMACPP_VALUES.items() for arg in ("--set", f"{key}={value}")]
    assert main(args) == 0
    engine = parse(tmp_path / "repo" / "tensorrt_llm" / "config.pbtxt")
    assert parameter(engine, "gguf_path") == LLAMACPP_VALUES["gguf_path"]
    assert str(tmp_path / "repo" / "tensorrt_llm" / "config.pbtxt") in capsys.readouterr().out


def test_readme_configuration_lists_every_parameter():
    from function_calling_agent.adapter.parameters import PARAMETERS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("### Configuration"):readme.index("## Tools")]
    assert [name for name in PARAMETERS if f"`{name}`" not in table] == []
