"""pytest-testinfra on a lab machine: ``vm.host.service("ssh").is_running``.

:class:`MachineBackend` is a testinfra backend whose ``run()`` is
:meth:`vboxlab.machine.Machine.execute`, so testinfra's modules (package,
service, file, socket, user, sysctl, ...) work over whatever channel the machine
uses: the guest agent, SSH, or a namespace host's shell.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vboxlab.errors import HostError

if TYPE_CHECKING:
    import testinfra.host

    from vboxlab.machine import Machine

#: seconds one testinfra command may take
COMMAND_TIMEOUT = 120.0


def testinfra_host(machine: Machine) -> testinfra.host.Host:
    """A ``testinfra.host.Host`` bound to ``machine``."""
    try:
        import testinfra.host
        from testinfra.backend.base import BaseBackend, CommandResult
    except ImportError:
        raise HostError("vm.host needs the pytest-testinfra package: pip install "
                        "pytest-testinfra") from None

    class MachineBackend(BaseBackend):  # type: ignore[misc]
        """Runs testinfra's commands with ``Machine.execute``."""

        NAME = "vboxlab"

        def __init__(self, target: Machine, **kwargs: Any) -> None:
            super().__init__(target.name, **kwargs)
            self.machine = target

        def run(self, command: str, *args: str, **kwargs: Any) -> CommandResult:
            text = self.get_command(command, *args)
            result = self.machine.execute(text, timeout=COMMAND_TIMEOUT)
            return self.result(result.rc, self.encode(text), result.stdout.encode(),
                               result.stderr.encode())

    backend = MachineBackend(machine)
    host = testinfra.host.Host(backend)
    backend.set_host(host)
    return host
