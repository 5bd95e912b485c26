"""A tool that hangs until the test releases it, so hung-tool tests control exactly when threads return.

The gates are files in the directory named by FCA_TEST_GATE_DIR in the server's environment (the test sets it).
"""

import os
import re
import time
from pathlib import Path

from function_calling_agent.tools import tool

MAX_HOLD_S = 60.0


@tool
def blocking_tool(gate: str) -> str:
    """Blocks until the test opens its gate (a file in FCA_TEST_GATE_DIR), at most 60 seconds.

    Args:
        gate: Name of the gate to wait for (letters and digits).
    """
    if not re.fullmatch(r"[a-z0-9]{1,16}", gate):
        raise ValueError("gate must be 1-16 lowercase letters or digits")
    path = Path(os.environ["FCA_TEST_GATE_DIR"]) / f"gate-{gate}"
    deadline = time.monotonic() + MAX_HOLD_S
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return "released"
