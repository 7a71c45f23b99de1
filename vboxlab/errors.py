"""The exceptions vboxlab raises.

Every message says what happened, why, and how to fix it::

    VboxlabError                     root of everything vboxlab raises
     ├── ConfigError                 bad input: an option, a name, a value (a ValueError)
     │    ├── TemplateNotFound       no template definition by that name
     │    ├── TemplateNotBuilt       the definition exists, the image does not
     │    ├── UntrustedImage         a template's files are not what its manifest says
     │    ├── HostFileNotFound       a host path given to vboxlab does not exist
     │    ├── MachineNotFound        no machine by that name in the lab (also a KeyError)
 │    └── LabNotFound            no lab by that name in the state folder
     ├── HostError                   the host lacks a tool, a device or memory
     │    └── UnsafeStateDir         the state folder is not private to this user
     ├── BuildError                  a template build failed
     ├── ProviderError               the hypervisor failed (start, QMP, crash)
     │    ├── MachineDied            the VM process ended while it was needed
     │    └── NotSupported           the provider lacks a capability (snapshots, ...)
     ├── ChannelError                the command channel (SSH) failed
     │    ├── BootTimeout            the guest never answered
     │    └── GuestFileNotFound      a guest path to copy does not exist
     ├── CommandTimeout              a guest command ran past its timeout
     ├── WaitTimeout                 a wait_until_* condition never held
     └── GuestCommandError           the guest said no: a test finding,
                                     also an AssertionError
"""

from __future__ import annotations


class VboxlabError(Exception):
    """Root of every error vboxlab raises."""


class ConfigError(VboxlabError, ValueError):
    """Bad input: an option, a name, a file or a value."""


class TemplateNotFound(ConfigError):
    """No template definition has the requested name."""


class TemplateNotBuilt(ConfigError):
    """The template is defined but its image is not in the cache."""


class UntrustedImage(ConfigError):
    """A template image or archive is not what its manifest says (a backing file, say)."""


class HostFileNotFound(ConfigError, FileNotFoundError):
    """A host file or folder handed to vboxlab does not exist."""


class MachineNotFound(ConfigError, KeyError):
    """The lab has no machine by that name."""

    def __str__(self) -> str:  # KeyError would show the message's repr
        return str(self.args[0]) if self.args else ""


class LabNotFound(ConfigError):
    """No lab by that name in the state folder; the message lists the labs there are."""


class HostError(VboxlabError):
    """The host lacks something vboxlab needs (a tool, memory, a device)."""


class UnsafeStateDir(HostError):
    """The state folder is not a private folder of this user (owner, mode or a symlink)."""


class BuildError(VboxlabError):
    """A template build failed."""


class ProviderError(VboxlabError):
    """The provider (the hypervisor) failed."""


class MachineDied(ProviderError):
    """The VM process ended while a command or a wait needed it."""


class NotSupported(ProviderError):
    """The machine's provider does not offer what was asked (snapshots, port forwards, ...)."""


class ChannelError(VboxlabError):
    """The command channel to a guest failed."""


class BootTimeout(ChannelError):
    """The guest never answered on its command channel."""


class GuestFileNotFound(ChannelError, FileNotFoundError):
    """A guest file or folder to copy does not exist."""


class CommandTimeout(VboxlabError):
    """A guest command did not finish within its timeout."""


class WaitTimeout(VboxlabError):
    """A wait condition did not hold before its timeout."""


class GuestCommandError(VboxlabError, AssertionError):
    """A guest command ended with an unexpected exit status (a test finding)."""

    def __init__(self, machine: str, command: str, rc: int, stdout: str, stderr: str,
                 expected: str = "exit status 0") -> None:
        self.machine = machine
        self.command = command
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"{machine}: command {command!r} exited with status {rc}, expected {expected}\n"
            f"--- stdout ---\n{_tail(stdout)}\n--- stderr ---\n{_tail(stderr)}"
        )


def _tail(text: str, lines: int = 40) -> str:
    parts = text.rstrip("\n").splitlines()
    if len(parts) <= lines:
        return "\n".join(parts)
    return f"[... {len(parts) - lines} lines cut ...]\n" + "\n".join(parts[-lines:])


class ScanError(VboxlabError):
    """A scanner could not run (its tool is missing or failed); not a finding."""


class ScanFailed(VboxlabError, AssertionError):
    """A scan's assertion failed: the findings that broke it are in the message."""
