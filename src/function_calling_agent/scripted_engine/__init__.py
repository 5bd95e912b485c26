"""A scripted `tensorrt_llm` engine (model_repository/scripted_engine) that replays completions from a JSON script:
for tests, benchmarks and trying tool modules without model weights."""
