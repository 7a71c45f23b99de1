"""Command channels: how commands reach a guest."""

from vboxlab.channels.base import Channel, CommandResult
from vboxlab.channels.ssh import SSHChannel

__all__ = ["Channel", "CommandResult", "SSHChannel"]
