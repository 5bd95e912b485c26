"""Where the project's model templates live, for the tools that assemble repositories from a source checkout (the
configure command, the scripted engine builder, tests and benchmarks). The package is installed editable from there."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
