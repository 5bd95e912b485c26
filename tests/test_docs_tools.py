"""docs/tools.md followed as written: the module and script it shows are written where it says (with `tools/` moved
to a temporary folder), `./serve.sh` runs with its flags (plus free ports and a temporary state dir), and its curl
and client commands run against that server, ending with the scripted model calling the new tool through the real
agent on a real tritonserver."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.serve_process import REPO_ROOT, ServeRun

pytestmark = pytest.mark.integration

DOC = REPO_ROOT / "docs" / "tools.md"
_BLOCK = re.compile(r"<!-- (file|step): (\S+) -->\n```\w*\n(.*?)\n```", re.DOTALL)


def blocks(kind: str) -> dict[str, str]:
    return {name: body for found, name, body in _BLOCK.findall(DOC.read_text(encoding="utf-8")) if found == kind}


def command(step: str, tools: Path) -> list[str]:
    """The step's command as argv, with the doc's `tools` folder moved to `tools`."""
    argv = shlex.split(blocks("step")[step].replace("\\\n", " "))
    return [str(tools / arg[len("tools/"):]) if arg.startswith("tools/") else str(tools) if arg == "tools" else arg
            for arg in argv]


@pytest.mark.parametrize("name", ["my_weather_tools.py", "weather_script.json"])
def test_the_walkthrough_files_are_the_example_files(name):
    # Steps 1 and 2 say `cp examples/custom_tools/<name> tools/` does them: the doc's blocks are those files.
    assert f"cp examples/custom_tools/{name} tools/" in DOC.read_text(encoding="utf-8")
    assert blocks("file")[f"tools/{name}"] + "\n" == (
        REPO_ROOT / "examples" / "custom_tools" / name).read_text(encoding="utf-8")


def test_the_walkthrough_ends_with_the_model_calling_the_new_tool(tmp_path):
    tools = tmp_path / "tools"
    tools.mkdir()
    for name, body in blocks("file").items():
        assert name.startswith("tools/"), name
        (tools / name[len("tools/"):]).write_text(body + "\n", encoding="utf-8")

    serve = command("serve", tools)
    assert serve[:3] == ["./serve.sh", "--engine", "scripted"], serve
    run = ServeRun(serve, {"FCA_SERVE_DIR": str(tmp_path / "state")})
    try:
        run.wait_for_line("serve: serving until Ctrl-C", 600)
        http, grpc = f"127.0.0.1:{run.ports['http']}", f"127.0.0.1:{run.ports['grpc']}"

        curl = [arg.replace("localhost:8000", http) for arg in command("list-tools", tools)]
        assert curl[0] == "curl", curl
        listed = subprocess.run(curl, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        schemas = json.loads(json.loads(listed.stdout)["tool_schemas"])
        assert [s["function"]["name"] for s in schemas] == ["get_example_weather"], schemas
        assert schemas[0]["function"]["parameters"]["properties"]["unit"]["enum"] == ["celsius", "fahrenheit"]

        ask = command("ask", tools)
        assert ask[:2] == [".venv/bin/python", "client/client.py"], ask
        asked = subprocess.run([sys.executable, *ask[1:], "-u", grpc], cwd=REPO_ROOT, capture_output=True,
                               text=True, timeout=120)
        assert asked.returncode == 0, asked.stderr
        assert asked.stdout.startswith("Here is what the weather tool said: "), asked.stdout
        assert '"conditions":"light rain"' in asked.stdout, asked.stdout
        assert 'turn 0: get_example_weather({"city": "Paris"}) -> ok' in asked.stderr, asked.stderr
        assert run.stop() == 0, run.text
    finally:
        run.kill()
