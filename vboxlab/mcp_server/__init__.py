"""``vboxlab mcp``: an MCP server over the lab library (see :mod:`vboxlab.mcp_server.tools`)."""
