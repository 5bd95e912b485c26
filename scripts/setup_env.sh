#!/usr/bin/env bash
# Prepare everything the project needs on this machine: .venv with requirements.txt (llama-cpp-python from a wheel
# built once per machine, see below) and the project's package (editable), Debian's libb64 for perf_analyzer, and the
# tritonserver backends dir. Idempotent; a second run takes seconds.
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

# llama-cpp-python is published as an sdist only: it compiles llama.cpp (about 8 minutes on 2 cores). Build its
# wheel once per machine kind into a cache outside .venv, keyed by version + CPU flags + compiler (llama.cpp is built
# with -march=native, so a wheel from another CPU could crash here), and install from that cache: later setups and
# fresh clones on the same machine take seconds.
LLAMA_CPP_VERSION="$(sed -n 's/^llama-cpp-python==\([^ ;#]*\).*/\1/p' requirements.txt)"
LLAMA_CPP_CMAKE_ARGS="-DLLAVA_BUILD=OFF"  # the multimodal library is not used
WHEEL_CACHE="${FCA_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/function_calling_agent/wheels}"
llama_cpp_wheel_dir() {
    local key
    key="$( { uname -m; grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true; c++ --version 2>/dev/null | head -1;
              echo "$LLAMA_CPP_CMAKE_ARGS"; } | sha256sum | cut -c1-12)"
    echo "$WHEEL_CACHE/llama-cpp-python-$LLAMA_CPP_VERSION-$key"
}
build_llama_cpp_wheel() {
    local dir="$1" tmp started
    if ! command -v c++ >/dev/null 2>&1 || ! command -v cmake >/dev/null 2>&1; then
        if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
            step "llama-cpp-python: installing a C++ compiler and cmake with apt-get"
            DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ cmake >/dev/null 2>&1 \
                || { echo "[setup_env] error: apt-get install g++ cmake failed" >&2; exit 1; }
        else
            echo "[setup_env] error: building llama-cpp-python needs a C++ compiler and cmake (apt-get install g++ cmake)" >&2
            exit 1
        fi
    fi
    step "llama-cpp-python $LLAMA_CPP_VERSION: building the wheel for this CPU once (about 8 minutes on 2 cores)"
    tmp="$(mktemp -d)"
    started=$SECONDS
    if ! CMAKE_ARGS="$LLAMA_CPP_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
            "$VENV/bin/python" -m pip wheel --quiet --disable-pip-version-check --no-deps \
            --no-binary llama-cpp-python -w "$tmp" "llama-cpp-python==$LLAMA_CPP_VERSION" >"$tmp/build.log" 2>&1; then
        tail -40 "$tmp/build.log" >&2
        echo "[setup_env] error: building llama-cpp-python failed (log above)" >&2
        exit 1
    fi
    mkdir -p "$dir"
    mv "$tmp"/llama_cpp_python-*.whl "$dir"/
    rm -rf "$tmp"
    step "llama-cpp-python: built in $((SECONDS - started)) s, cached in $dir"
}
LLAMA_CPP_WHEELS="$(llama_cpp_wheel_dir)"

want_sha="$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
have_sha="$(cat "$STAMP" 2>/dev/null || true)"
if [[ "$want_sha" == "$have_sha" ]]; then
    step "requirements: up to date"
else
    if ! compgen -G "$LLAMA_CPP_WHEELS/llama_cpp_python-$LLAMA_CPP_VERSION-*.whl" >/dev/null; then
        build_llama_cpp_wheel "$LLAMA_CPP_WHEELS"
    else
        step "llama-cpp-python $LLAMA_CPP_VERSION: cached wheel in $LLAMA_CPP_WHEELS"
    fi
    step "requirements: installing requirements.txt (this takes a few minutes the first time)"
    # This machine's pip config lists local index folders that may not exist; drop only those warnings.
    # pip takes the cached wheel over the sdist of the same version.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --find-links "$LLAMA_CPP_WHEELS" \
        -r requirements.txt 2>&1 \
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
