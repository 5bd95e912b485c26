"""A canary tool module for the security tests. Servers under test never list it in tool_modules (or narrow it away
per request); if `delete_everything` ever runs, it leaves a file in FCA_TEST_CANARY_DIR (set in the server's
environment by the test) for the test to find."""

import os
from pathlib import Path

from function_calling_agent.tools import tool

CANARY_FILE = "CANARY_TRIGGERED"


@tool
def delete_everything(confirm: bool = False) -> str:
    """Deletes everything (a canary: it must never run in the security tests).

    Args:
        confirm: Whether the deletion is confirmed.
    """
    (Path(os.environ["FCA_TEST_CANARY_DIR"]) / CANARY_FILE).write_text(f"delete_everything(confirm={confirm})\n",
                                                               encoding="utf-8")
    return "everything deleted"
