from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# The repo root is on sys.path through `pythonpath` in pyproject.toml.
from function_calling_agent.offline_models.hermes_tokenizer import build_hermes_tokenizer
from function_calling_agent.offline_models.tiny_llama import build_tiny_llama
from tests.support.triton_server import TritonServerFactory

_FACTORY_KEY = pytest.StashKey[TritonServerFactory]()
# How the agent reaches its engine (its `engine_transport` parameter): gRPC to the server's own endpoint (the default)
# or BLS. Modules whose server fixture takes `engine_transport` run once per transport.
ENGINE_TRANSPORTS = ("grpc", "bls")

# Hypothesis: by default ("ci") every run draws the same examples (derandomize seeds from each test's name and code),
# so a suite that passed cannot fail by luck and a failure found recurs on every rerun; it is also printed with a
# @reproduce_failure blob. Tests keep their own example counts. HYPOTHESIS_PROFILE=explore draws fresh examples.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", print_blob=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: starts a real tritonserver (slower)")


@pytest.fixture
def triton_server_factory(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """`start(model_repository, **TritonServer options) -> RunningServer`, ready; all stopped at teardown."""
    factory = TritonServerFactory(tmp_path_factory.mktemp("triton-logs"))
    request.node.stash[_FACTORY_KEY] = factory
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    factory = item.stash.get(_FACTORY_KEY, None)
    if factory is not None and report.failed and factory.servers:
        report.sections.append(("tritonserver log", factory.log_report()))
    return report


@pytest.fixture(scope="module", params=ENGINE_TRANSPORTS)
def engine_transport(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def hermes_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_hermes_tokenizer(tmp_path_factory.mktemp("hermes-tokenizer"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, hermes_tokenizer_dir: str) -> str:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), hermes_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_llama_gguf(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: str) -> str:
    """The tiny random Llama as a float32 GGUF (exact, so llama.cpp's greedy tokens match torch's)."""
    from function_calling_agent.llamacpp_engine.convert import write_gguf

    return str(write_gguf(tiny_llama_dir, tmp_path_factory.mktemp("tiny-gguf") / "tiny-llama-f32.gguf", dtype="f32"))


@pytest.fixture(scope="module")
def tokenizer(hermes_tokenizer_dir: str):
    """The offline Hermes-shaped tokenizer, loaded once per module."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hermes_tokenizer_dir)


@pytest.fixture(scope="module")
def chat(tokenizer):
    """The agent core's ChatFormat over that tokenizer (the test module puts the agent folder on sys.path)."""
    from function_calling_agent.chat_format import ChatFormat

    return ChatFormat(tokenizer)
