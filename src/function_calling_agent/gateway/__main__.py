"""CLI: python -m function_calling_agent.gateway [--host H] [--port P] [--triton-url HOST:PORT] [--model NAME]
[--served-model-name ID] [--default-max-tokens N]. The API key, if any, comes from FCA_OPENAI_API_KEY."""

from __future__ import annotations

import argparse
import os

from . import API_KEY_ENV, DEFAULT_PORT


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m function_calling_agent.gateway", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--triton-url", default="localhost:8001", help="Triton's gRPC endpoint")
    parser.add_argument("--model", default="function_calling_agent", help="the agent's Triton model name")
    parser.add_argument("--served-model-name", default=None, help="the model id clients send (default: --model)")
    parser.add_argument("--default-max-tokens", type=int, default=1024,
                        help="max_tokens per engine turn when a request sets neither max_tokens field")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    import uvicorn

    from .app import GatewaySettings, create_app

    settings = GatewaySettings(triton_url=args.triton_url, model=args.model,
                               served_model_name=args.served_model_name, api_key=os.environ.get(API_KEY_ENV) or None,
                               default_max_tokens=args.default_max_tokens)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
