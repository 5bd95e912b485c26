#!/usr/bin/env bash
# Prepare everything the project needs on this machine: .venv with requirements.txt and the project's package
# (editable), Debian's libb64 for perf_analyzer, and the tritonserver backends dir. Idempotent; a second run takes
# seconds.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
PYTHON="${PYTHON:-python3}"
VENV="$REPO_ROOT/.venv"
STAMP="$VENV/.requirements.sha256"

step() { printf '[setup_env] %s\n' "$*"; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "[setup_env] error: $PYTHON not found (set PYTHON to a Python >= 3.10)" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
    echo "[setup_env] error: $("$PYTHON" --version 2>&1) is too old; Python >= 3.10 is required" >&2
    exit 1
fi

if [[ -x "$VENV/bin/python" ]]; then
    step "venv: $VENV exists ($("$VENV/bin/python" --version 2>&1))"
else
    step "venv: creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi

want_sha="$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
have_sha="$(cat "$STAMP" 2>/dev/null || true)"
if [[ "$want_sha" == "$have_sha" ]]; then
    step "requirements: up to date"
else
    step "requirements: installing requirements.txt (this takes a few minutes the first time)"
    # This machine's pip config lists local index folders that may not exist; drop only those warnings.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt 2>&1 \
        | { grep -v "^WARNING: Location 'file://.*' is ignored" || true; }
    step "package: installing function_calling_agent (src/) editable"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 \
        | { grep -v "^WARNING: Location 'file://.*' is ignored" || true; }
    echo "$want_sha" > "$STAMP"
fi

# perf_analyzer (tritonclient 2.51 wheel) links against Debian's libb64.so.0d.
if dpkg -s libb64-0d >/dev/null 2>&1; then
    step "libb64-0d: installed"
elif [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
    step "libb64-0d: installing with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libb64-0d >/dev/null 2>&1 \
        || { echo "[setup_env] error: apt-get install libb64-0d failed" >&2; exit 1; }
else
    step "libb64-0d: missing and not root; perf_analyzer falls back to the copy bundled with nvidia-pytriton"
fi

step "tritonserver: $("$VENV/bin/python" -m deploy.triton_launcher --prepare | tr '\n' ' ')"
