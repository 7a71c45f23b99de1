"""Long-lived labs: ``vboxlab up`` starts a supervisor that owns a lab and serves a control socket.

The CLI (``vboxlab status/down/exec/machine/link/capture``), the dashboard and
the MCP server act on such a lab only through that socket
(:class:`~vboxlab.control.protocol.ControlClient`), and the supervisor carries
each action out with the library's own objects (:mod:`vboxlab.control.actions`).
"""
