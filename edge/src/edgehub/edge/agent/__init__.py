"""The agent: ReAct loop, prompt, action parsing and tools."""
