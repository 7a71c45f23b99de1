"""The kinds of check a compliance rule can make, each run over the machine's channel.

Every value from a profile is validated by its model and quoted with
``shlex.quote`` before it reaches the guest's shell.
"""

from __future__ import annotations

import enum
import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from vboxlab.machine import Machine

_PATH = r"^/[^\x00\n]*$"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.+:@-]*$"
COMMAND_TIMEOUT = 120.0


class Status(enum.StrEnum):
    PASS = "pass"  # noqa: S105 - a status, not a password
    FAIL = "fail"
    ERROR = "error"  # the check could not run
    NOT_APPLICABLE = "notapplicable"


@dataclass(frozen=True)
class Outcome:
    status: Status
    evidence: str


class Probe:
    """A machine as one profile run sees it: each read-only command runs once, then is reused
    (ten sshd rules cost one ``sshd -T``)."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self._seen: dict[str, tuple[int, str]] = {}

    def run(self, command: str) -> tuple[int, str]:
        if command not in self._seen:
            result = self.machine.execute(command, timeout=COMMAND_TIMEOUT)
            self._seen[command] = (result.rc, (result.stdout + result.stderr).strip())
        return self._seen[command]

    def file_lines(self, path: str) -> list[str] | Outcome:
        """The lines of a guest file, or an ``error`` outcome saying why it cannot be read."""
        rc, out = self.run(f"cat {shlex.quote(path)}")
        if rc != 0:
            return Outcome(Status.ERROR, f"cannot read {path}: {out}")
        return out.splitlines()

    def has(self, tool: str) -> bool:
        return self.run(f"command -v {shlex.quote(tool)} >/dev/null 2>&1")[0] == 0

    def listening_ports(self) -> set[int]:
        if "listening ports" not in self._seen:
            self._seen["listening ports"] = (0, " ".join(
                map(str, sorted(self.machine.listening_ports()))))
        return {int(p) for p in self._seen["listening ports"][1].split()}


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def evaluate(self, probe: Probe) -> Outcome:  # pragma: no cover - every kind overrides
        raise NotImplementedError


class FileExists(Check):
    """The file exists (``present: true``) or does not."""

    kind: Literal["file_exists"]
    path: str = Field(pattern=_PATH)
    present: bool = True

    def evaluate(self, probe: Probe) -> Outcome:
        rc, _ = probe.run(f"test -e {shlex.quote(self.path)}")
        exists = rc == 0
        ok = exists == self.present
        return Outcome(Status.PASS if ok else Status.FAIL,
                       f"{self.path} {'exists' if exists else 'does not exist'}")


class FileMode(Check):
    """The file's permission bits are no wider than ``max_mode`` (octal)."""

    kind: Literal["file_mode"]
    path: str = Field(pattern=_PATH)
    max_mode: str = Field(pattern=r"^0?[0-7]{3,4}$")
    missing_ok: bool = False

    def evaluate(self, probe: Probe) -> Outcome:
        rc, out = probe.run(f"stat -c %a {shlex.quote(self.path)}")
        if rc != 0:
            return Outcome(Status.NOT_APPLICABLE if self.missing_ok else Status.FAIL,
                           f"{self.path}: {out or 'cannot stat'}")
        mode, allowed = int(out.split()[0], 8), int(self.max_mode, 8)
        extra = mode & ~allowed
        return Outcome(Status.FAIL if extra else Status.PASS,
                       f"{self.path} has mode {mode:04o}" + (
                           f", wider than {allowed:04o} (extra bits {extra:04o})" if extra
                           else f" (at most {allowed:04o})"))


class FileOwner(Check):
    """The file belongs to ``user`` (and ``group`` if given)."""

    kind: Literal["file_owner"]
    path: str = Field(pattern=_PATH)
    user: str = Field(pattern=_NAME)
    group: list[str] | None = None

    def evaluate(self, probe: Probe) -> Outcome:
        rc, out = probe.run(f"stat -c '%U %G' {shlex.quote(self.path)}")
        if rc != 0:
            return Outcome(Status.FAIL, f"{self.path}: {out or 'cannot stat'}")
        user, group = out.split()[:2]
        ok = user == self.user and (self.group is None or group in self.group)
        return Outcome(Status.PASS if ok else Status.FAIL,
                       f"{self.path} is owned by {user}:{group}")


class FileContains(Check):
    """A line of the file matches ``pattern`` (a Python regex) when ``present`` (else none)."""

    kind: Literal["file_contains"]
    path: str = Field(pattern=_PATH)
    pattern: str
    present: bool = True

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        re.compile(value)
        return value

    def evaluate(self, probe: Probe) -> Outcome:
        rc, out = probe.run(f"cat {shlex.quote(self.path)}")
        if rc != 0:
            return Outcome(Status.NOT_APPLICABLE if not self.present else Status.FAIL,
                           f"{self.path}: {out or 'cannot read'}")
        found = [line for line in out.splitlines() if re.search(self.pattern, line)]
        ok = bool(found) == self.present
        evidence = (f"{self.path}: {len(found)} lines match /{self.pattern}/"
                    + (f": {found[0].strip()[:120]}" if found else ""))
        return Outcome(Status.PASS if ok else Status.FAIL, evidence)


class SshdSetting(Check):
    """``sshd -T``'s effective value of ``setting`` is one of ``allowed`` (or at most ``max``)."""

    kind: Literal["sshd_setting"]
    setting: str = Field(pattern=r"^[a-z0-9]+$")
    allowed: list[str] | None = None
    max: int | None = None

    def evaluate(self, probe: Probe) -> Outcome:
        if not probe.has("sshd"):
            return Outcome(Status.NOT_APPLICABLE, "no sshd on this machine")
        rc, out = probe.run("sshd -T")
        if rc != 0:
            return Outcome(Status.ERROR, f"sshd -T exited with status {rc}: {out[-300:]}")
        values = [line.split(None, 1)[1] if " " in line else ""
                  for line in out.splitlines() if line.split(None, 1)[:1] == [self.setting]]
        if not values:
            return Outcome(Status.ERROR, f"sshd -T prints no {self.setting}")
        value = values[0].strip()
        if self.max is not None:
            try:
                ok = int(value.split(":")[0]) <= self.max
            except ValueError:
                return Outcome(Status.ERROR, f"sshd {self.setting} is {value!r}, not a number")
            return Outcome(Status.PASS if ok else Status.FAIL,
                           f"sshd {self.setting} {value} (at most {self.max} wanted)")
        allowed = [a.lower() for a in self.allowed or []]
        ok = value.lower() in allowed
        return Outcome(Status.PASS if ok else Status.FAIL,
                       f"sshd {self.setting} {value} (wanted {' or '.join(allowed)})")


class Sysctl(Check):
    """The kernel parameter ``key`` has ``value``."""

    kind: Literal["sysctl"]
    key: str = Field(pattern=r"^[a-z0-9_.-]+$")
    value: str = Field(pattern=r"^[-0-9 ]+$")

    def evaluate(self, probe: Probe) -> Outcome:
        path = "/proc/sys/" + self.key.replace(".", "/")
        rc, out = probe.run(f"cat {shlex.quote(path)}")
        if rc != 0:
            return Outcome(Status.NOT_APPLICABLE, f"{self.key}: not in this kernel ({out})")
        have = " ".join(out.split())
        return Outcome(Status.PASS if have == self.value else Status.FAIL,
                       f"{self.key} = {have} (wanted {self.value})")


class ServiceRunning(Check):
    """A process named ``process`` runs (``running: false``: none does)."""

    kind: Literal["service_running"]
    process: str = Field(pattern=_NAME)
    running: bool = True

    def evaluate(self, probe: Probe) -> Outcome:
        rc, out = probe.run(f"pidof {shlex.quote(self.process)}")
        running = rc == 0 and bool(out.strip())
        return Outcome(Status.PASS if running == self.running else Status.FAIL,
                       f"{self.process} " + (f"runs (pids {out.strip()})" if running
                                             else "is not running"))


class ServiceEnabled(Check):
    """A systemd unit is enabled (``enabled: false``: it is not); n/a without systemd."""

    kind: Literal["service_enabled"]
    unit: str = Field(pattern=_NAME)
    enabled: bool = True

    def evaluate(self, probe: Probe) -> Outcome:
        if not probe.has("systemctl"):
            return Outcome(Status.NOT_APPLICABLE, "no systemd on this machine")
        _, out = probe.run(f"systemctl is-enabled {shlex.quote(self.unit)}")
        state = out.splitlines()[-1].strip() if out else "unknown"
        enabled = state in ("enabled", "enabled-runtime", "static", "alias")
        return Outcome(Status.PASS if enabled == self.enabled else Status.FAIL,
                       f"{self.unit} is {state}")


class PackageState(Check):
    """A Debian package is installed (``package_installed``) or absent (``package_absent``)."""

    kind: Literal["package_installed", "package_absent"]
    package: str = Field(pattern=_NAME)

    def evaluate(self, probe: Probe) -> Outcome:
        if not probe.has("dpkg-query"):
            return Outcome(Status.NOT_APPLICABLE, "no dpkg on this machine")
        _, out = probe.run("dpkg-query -W -f='${Status} ${Version}' "
                               f"{shlex.quote(self.package)}")
        installed = "install ok installed" in out
        ok = installed == (self.kind == "package_installed")
        return Outcome(Status.PASS if ok else Status.FAIL,
                       f"{self.package}: " + (out.split()[-1] + " installed" if installed
                                              else "not installed"))


class PortListening(Check):
    """Something listens on TCP ``port`` (``listening: false``: nothing does)."""

    kind: Literal["port_listening"]
    port: int = Field(gt=0, lt=65536)
    listening: bool = True

    def evaluate(self, probe: Probe) -> Outcome:
        ports = probe.listening_ports()
        ok = (self.port in ports) == self.listening
        return Outcome(Status.PASS if ok else Status.FAIL,
                       f"TCP {self.port} {'listens' if self.port in ports else 'is not listening'}"
                       f"; listening: {', '.join(map(str, sorted(ports))) or 'none'}")


class ListeningPorts(Check):
    """Nothing listens on TCP beyond ``allowed``."""

    kind: Literal["listening_ports"]
    allowed: list[int]

    def evaluate(self, probe: Probe) -> Outcome:
        extra = sorted(probe.listening_ports() - set(self.allowed))
        return Outcome(Status.FAIL if extra else Status.PASS,
                       f"listening beyond {self.allowed}: {', '.join(map(str, extra)) or 'none'}")


class NoEmptyPasswords(Check):
    """No account in /etc/shadow has an empty password field."""

    kind: Literal["no_empty_passwords"]

    def evaluate(self, probe: Probe) -> Outcome:
        lines = probe.file_lines("/etc/shadow")
        if isinstance(lines, Outcome):
            return lines
        empty = [f[0] for f in (line.split(":") for line in lines) if len(f) > 1 and f[1] == ""]
        return Outcome(Status.FAIL if empty else Status.PASS,
                       f"accounts without a password: {', '.join(empty) or 'none'}")


class OnlyRootUid0(Check):
    """root is the only account with UID 0."""

    kind: Literal["only_root_uid0"]

    def evaluate(self, probe: Probe) -> Outcome:
        lines = probe.file_lines("/etc/passwd")
        if isinstance(lines, Outcome):
            return lines
        zero = [f[0] for f in (line.split(":") for line in lines) if len(f) > 2 and f[2] == "0"]
        return Outcome(Status.PASS if zero == ["root"] else Status.FAIL,
                       f"accounts with UID 0: {', '.join(zero) or 'none'}")


class FindFiles(Check):
    """Files under ``paths`` that are world-writable or SUID/SGID, against an allowed list."""

    kind: Literal["world_writable", "suid_files"]
    paths: list[Annotated[str, Field(pattern=_PATH)]] = Field(default_factory=lambda: ["/"])
    allowed: list[Annotated[str, Field(pattern=_PATH)]] = Field(default_factory=list)

    def evaluate(self, probe: Probe) -> Outcome:
        test = ("-perm -0002" if self.kind == "world_writable"
                else r"\( -perm -4000 -o -perm -2000 \)")
        command = (f"find {' '.join(map(shlex.quote, self.paths))} -xdev -type f {test} "
                   "-print 2>/dev/null")
        _, out = probe.run(command)
        found = sorted(set(out.splitlines()) - set(self.allowed))
        label = "world-writable" if self.kind == "world_writable" else "SUID/SGID"
        shown = ", ".join(found[:20]) + (f" (+{len(found) - 20})" if len(found) > 20 else "")
        return Outcome(Status.FAIL if found else Status.PASS,
                       f"{label} files under {', '.join(self.paths)} not allowed: "
                       f"{shown or 'none'}")


AnyCheck = Annotated[
    FileExists | FileMode | FileOwner | FileContains | SshdSetting | Sysctl | ServiceRunning
    | ServiceEnabled | PackageState | PortListening | ListeningPorts | NoEmptyPasswords
    | OnlyRootUid0 | FindFiles,
    Field(discriminator="kind")]
