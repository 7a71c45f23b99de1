"""The guest side of the agent channel: ``agent.c``, compiled once on the host (static)."""

from __future__ import annotations

from pathlib import Path

from vboxlab.hosttools import compile_c

SOURCE = Path(__file__).with_name("agent.c")
#: where each VM's initrd places it (the template's init starts it from there)
GUEST_PATH = "usr/sbin/vboxlab-agent"


def agent_binary() -> Path:
    """The static ``vboxlab-agent`` for x86-64 guests, built once per source version."""
    return compile_c(SOURCE, "vboxlab-agent", "the guest agent", ("-static", "-s"))
