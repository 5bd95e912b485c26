#!/usr/bin/env bash
# The main command: set up (idempotent), then run function_calling_agent on a real CPU tritonserver.
# Options: see `./serve.sh --help` (deploy/serve.py). On an NVIDIA GPU host use `docker compose --profile gpu up`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
scripts/setup_env.sh
exec .venv/bin/python -m deploy.serve "$@"
