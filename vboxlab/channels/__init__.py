"""Command channels: how commands reach a guest."""

from vboxlab.channels.agent import AgentChannel
from vboxlab.channels.base import Channel, CommandResult
from vboxlab.channels.ssh import SSHChannel

__all__ = ["AgentChannel", "Channel", "CommandResult", "SSHChannel"]
