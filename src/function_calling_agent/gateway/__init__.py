"""An OpenAI-compatible endpoint for function_calling_agent: a separate process (FastAPI + uvicorn) that speaks
`/v1/chat/completions` and `/v1/models` and talks to the agent over Triton gRPC streaming, one stream per request.

    python -m function_calling_agent.gateway --triton-url localhost:8001 --port 9000

Server-side tools run inside the agent; the request's `tools` are client tools, handed back as `tool_calls`.
`FCA_OPENAI_API_KEY`, when set, is required as a bearer token on every request.
"""

from __future__ import annotations

import json
import sys
from typing import Optional

API_KEY_ENV = "FCA_OPENAI_API_KEY"
DEFAULT_PORT = 9000


def command_line(port: int = DEFAULT_PORT, *, triton_url: str = "localhost:8001", host: str = "127.0.0.1",
                 model: str = "function_calling_agent", served_model_name: Optional[str] = None,
                 python: str = sys.executable) -> list[str]:
    """The command that starts the gateway (for deploy/serve.py and compose). The API key comes from the
    environment (`FCA_OPENAI_API_KEY`), never the command line."""
    command = [python, "-m", "function_calling_agent.gateway", "--host", host, "--port", str(port),
               "--triton-url", triton_url, "--model", model]
    if served_model_name:
        command += ["--served-model-name", served_model_name]
    return command


def usage_examples(base_url: str, model_id: str = "function_calling_agent", *, python: str = "python",
                   prompt: str = "What is NVDA trading at?") -> str:
    """A curl and an `openai` client example for the endpoint at `base_url` (e.g. http://localhost:9000/v1), asking
    `prompt`; `python` is the interpreter that has the `openai` package (e.g. `.venv/bin/python`)."""
    curl_prompt = json.dumps(prompt).replace("'", "'\\''")  # inside the shell's single quotes
    return (
        f"curl -N {base_url}/chat/completions -H 'Content-Type: application/json' \\\n"
        f"  -H \"Authorization: Bearer ${{{API_KEY_ENV}:-none}}\" \\\n"
        f"  -d '{{\"model\": \"{model_id}\", \"stream\": true, \"messages\": "
        f"[{{\"role\": \"user\", \"content\": {curl_prompt}}}]}}'\n"
        f"{python} -c \"from openai import OpenAI; import os; "
        f"c = OpenAI(base_url='{base_url}', api_key=os.environ.get('{API_KEY_ENV}', 'none')); "
        f"r = c.chat.completions.create(model='{model_id}', "
        f"messages=[{{'role': 'user', 'content': {prompt!r}}}]); "
        f"print(r.choices[0].message.content)\""
    )
