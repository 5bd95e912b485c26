"""function_calling_agent: a function-calling agent that runs inside NVIDIA Triton Inference Server.

The agent core (this package's top-level modules) is plain Python and never imports Triton:

    run.AgentRun              one request, from the first prompt to the final answer
    turn.run_engine_turn      one engine turn: stream ids, decode, split answer text from tool calls
    transcript.Transcript     what happened (messages, turns, calls), and usage computed from it
    chat_format.ChatFormat    prompts as token ids, from the model's own chat template
    tool_call_parser          `<tool_call>` blocks found in a stream of text
    engine.EngineClient       the one protocol the loop uses to reach an engine

Subpackages: `tools` (the `@tool` decorator, registry, execution, the built-in finance tools), `adapter` (the Triton
side: config.pbtxt parameters, the client tensor contract, the BLS engine client, metrics), `cpu_engine` (the
`tensorrt_llm` contract on transformers/torch), `scripted_engine` (a scripted engine for tests and benchmarks) and
`offline_models` (small tokenizers and models built without a model hub).
"""

__version__ = "0.2.0"
