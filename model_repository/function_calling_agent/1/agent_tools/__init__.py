"""Tool modules shipped with the agent. List the ones a server offers in `tool_modules`, e.g. `agent_tools.finance`."""
