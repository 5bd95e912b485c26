#!/usr/bin/env bash
# The main command: set up (idempotent), then run function_calling_agent on a real CPU tritonserver.
# Options: ./serve.sh --help (deploy/serve.py). On an NVIDIA GPU host use `docker compose --profile gpu up`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
for arg in "$@"; do
    # deploy/serve.py imports only the standard library at the top, so help needs no set-up (minutes the first time).
    if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then
        exec "${PYTHON:-python3}" -m deploy.serve --help
    fi
done
scripts/setup_env.sh
exec .venv/bin/python -m deploy.serve "$@"
