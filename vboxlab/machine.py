"""The Machine: the verbs a test uses, written once over a provider handle and a channel."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from vboxlab.channels import CommandResult, SSHChannel
from vboxlab.errors import GuestCommandError, WaitTimeout
from vboxlab.logs import tail
from vboxlab.providers.base import MachineState, ProviderMachine
from vboxlab.waiting import wait_until

DEFAULT_TIMEOUT = 120.0


class Machine:
    """A running lab machine.

    >>> vm.succeed("echo hello")          # doctest: +SKIP
    'hello\\n'
    """

    def __init__(self, name: str, handle: ProviderMachine, channel: SSHChannel,
                 log: logging.Logger, boot_timeout: float = 60.0) -> None:
        self.name = name
        self.handle = handle
        self.channel = channel
        self.boot_timeout = boot_timeout
        self._log = log

    def __repr__(self) -> str:
        return f"<Machine {self.name} {self.state.value}>"

    # -- state ----------------------------------------------------------
    @property
    def state(self) -> MachineState:
        return self.handle.state()

    @property
    def console_log(self) -> Path:
        """Path of the serial console log (kept across restarts)."""
        return self.handle.console_log

    def console_tail(self, lines: int = 30) -> str:
        """The last lines of the serial console."""
        return tail(self.console_log, lines)

    # -- commands -------------------------------------------------------
    def execute(self, command: str, timeout: float = DEFAULT_TIMEOUT) -> CommandResult:
        """Run ``command`` (a shell string) and return its result, whatever the exit status."""
        self._log.debug("%s$ %s", self.name, command)
        result = self.channel.run(command, timeout)
        self._log.debug("%s: exit %d", self.name, result.rc)
        return result

    def succeed(self, command: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Run ``command``; return its stdout, or raise GuestCommandError if it fails."""
        result = self.execute(command, timeout)
        if result.rc != 0:
            raise GuestCommandError(self.name, command, result.rc, result.stdout, result.stderr)
        return result.stdout

    def fail(self, command: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Run ``command``; return its stdout, or raise GuestCommandError if it succeeds."""
        result = self.execute(command, timeout)
        if result.rc == 0:
            raise GuestCommandError(self.name, command, result.rc, result.stdout, result.stderr,
                                    expected="a non-zero exit status")
        return result.stdout

    def wait_until_succeeds(self, command: str, timeout: float = 60.0) -> str:
        """Retry ``command`` until it succeeds; return its stdout."""
        last: list[CommandResult] = []

        def attempt() -> str | None:
            result = self.execute(command, timeout=max(1.0, timeout))
            last[:] = [result]
            return result.stdout if result.rc == 0 else None

        return wait_until(attempt, timeout=timeout, what=f"{command!r} to succeed on {self.name}",
                          interval=0.2, abort=self.handle.check_alive,
                          last_seen=lambda: _describe(last))

    def wait_until_fails(self, command: str, timeout: float = 60.0) -> str:
        """Retry ``command`` until it fails; return its stdout."""
        last: list[CommandResult] = []

        def attempt() -> str | None:
            result = self.execute(command, timeout=max(1.0, timeout))
            last[:] = [result]
            return result.stdout if result.rc != 0 else None

        return wait_until(attempt, timeout=timeout, what=f"{command!r} to fail on {self.name}",
                          interval=0.2, abort=self.handle.check_alive,
                          last_seen=lambda: _describe(last))

    def wait_for_port(self, port: int, timeout: float = 60.0) -> None:
        """Wait until something in the guest listens on TCP ``port``.

        Reads /proc/net/tcp and tcp6 in the guest, so it needs no netstat or ss.
        """
        if not 0 < port < 65536:
            raise ValueError(f"port must be 1..65535, got {port}")
        pattern = f" [0-9A-Fa-f]+:{port:04X} [0-9A-Fa-f]+:[0-9A-Fa-f]{{4}} 0A "
        command = f"grep -Eq {shlex.quote(pattern)} /proc/net/tcp /proc/net/tcp6 2>/dev/null"
        try:
            self.wait_until_succeeds(command, timeout=timeout)
        except WaitTimeout:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for a listener on TCP "
                              f"port {port} in {self.name}") from None

    # -- files ----------------------------------------------------------
    def copy_to(self, local: str | Path, remote: str) -> None:
        """Copy a host file or folder into the guest."""
        local = Path(local)
        if not local.exists():
            raise FileNotFoundError(f"copy_to: {local} does not exist on the host")
        self.channel.put(local, remote)

    def copy_from(self, remote: str, local: str | Path) -> None:
        """Copy a guest file or folder to the host."""
        self.channel.get(remote, Path(local))

    # -- network --------------------------------------------------------
    def forward_port(self, guest_port: int) -> int:
        """Expose guest TCP ``guest_port`` on 127.0.0.1; returns the host port."""
        return self.handle.forward_port(guest_port)

    # -- power ----------------------------------------------------------
    def boot(self) -> None:
        """Start the VM (if needed) and wait until its channel answers."""
        if self.handle.state() is not MachineState.RUNNING:
            self.handle.start()
        self.channel.connect(timeout=self.boot_timeout)

    def start(self) -> None:
        """Start a stopped machine and wait until it answers."""
        self.boot()

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the guest down cleanly (``poweroff``), forcing it after ``timeout``."""
        if self.handle.state() is not MachineState.RUNNING:
            return
        try:
            self.channel.run("(sleep 0.2; poweroff) >/dev/null 2>&1 &", timeout=5)
        except Exception as exc:
            self._log.info("%s: poweroff over SSH failed (%s); stopping through QEMU",
                           self.name, exc)
        self.channel.close()
        self.handle.stop(timeout=timeout)

    def kill(self) -> None:
        """Pull the plug."""
        self.channel.close()
        self.handle.kill()


def _describe(last: list[CommandResult]) -> str:
    if not last:
        return "no attempt finished"
    result = last[0]
    return (f"exit status {result.rc}, stdout {result.stdout[-300:]!r}, "
            f"stderr {result.stderr[-300:]!r}")
