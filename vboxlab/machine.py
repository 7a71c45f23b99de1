"""The Machine: the verbs a test uses, written once over a provider handle and a channel."""

from __future__ import annotations

import logging
import os
import re
import shlex
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from vboxlab.boottimeline import BootTimeline
from vboxlab.channels import Channel, CommandResult
from vboxlab.errors import (
    CommandTimeout,
    ConfigError,
    GuestCommandError,
    HostFileNotFound,
    MachineDied,
    NotSupported,
    ProviderError,
    WaitTimeout,
)
from vboxlab.logs import tail
from vboxlab.providers.base import Capability, MachineState, ProviderMachine, require, supports
from vboxlab.snapshots import TREE_FILE, SnapshotNode, SnapshotTree, check_name
from vboxlab.sshconfig import SshConfig, ssh_config_for
from vboxlab.testinfra_backend import testinfra_host
from vboxlab.waiting import wait_until

if TYPE_CHECKING:
    import testinfra.host

    from vboxlab.templates.repository import BuiltTemplate

DEFAULT_TIMEOUT = 120.0
SNAPSHOT_SPACE_WARNING_MB = 1024


class Machine:
    """A running lab machine.

    >>> vm.succeed("echo hello")          # doctest: +SKIP
    'hello\\n'
    """

    def __init__(self, name: str, handle: ProviderMachine, channel: Channel,
                 log: logging.Logger, boot_timeout: float = 60.0, *,
                 state_dir: Path, rollback: bool = False) -> None:
        self.name = name
        self.handle = handle
        self.channel = channel
        self.boot_timeout = boot_timeout
        self.state_dir = state_dir
        #: restored to ``baseline`` after every test (the plugin does it)
        self.rollback = rollback
        self.baseline: str | None = None
        #: the test running now, recorded with each snapshot it takes
        self.current_test: str | None = None
        #: the template it was made from (None for providers that run none) and its provider
        self.template: BuiltTemplate | None = None
        self.provider: str | None = None
        #: phases of its last boot, when its channel reports them (the guest agent does)
        self.boot_timeline: BootTimeline | None = None
        self._log = log
        self._tree = SnapshotTree(state_dir / TREE_FILE)
        self._auto = 0
        self._snapshot_lock = threading.RLock()  # schedules snapshot from another thread
        self._testinfra: testinfra.host.Host | None = None

    def __repr__(self) -> str:
        snaps = f", {len(self._tree)} snapshots" if len(self._tree) else ""
        return f"<Machine {self.name} {self.state.value} ({self.handle!r}{snaps})>"

    __str__ = __repr__

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
    def ssh_config(self) -> SshConfig:
        """How plain ``ssh``, ``scp``, ``rsync`` and Ansible reach this machine: address,
        port, user, the lab's key and a known_hosts file holding only its pinned host key
        (``.as_openssh()`` gives a ``Host`` block)."""
        endpoint = getattr(self.handle, "ssh_endpoint", None)
        user = getattr(self.handle, "ssh_user", None)
        if endpoint is None or user is None:
            raise NotSupported(f"{self.name} has no SSH (a {self.provider} machine); use "
                               "vm.execute or vm.host")
        host, port = endpoint()
        return ssh_config_for(self.state_dir, self.name, host, port, user)

    @property
    def host(self) -> testinfra.host.Host:
        """A pytest-testinfra host bound to this machine (its commands run over the
        machine's own channel): ``vm.host.file("/etc/shadow").mode == 0o640``."""
        if self._testinfra is None:
            self._testinfra = testinfra_host(self)
        return self._testinfra

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

    def _wait_for_status(self, command: str, timeout: float, want_success: bool) -> str:
        """Retry ``command`` until its status is what is wanted; never past ``timeout`` in all."""
        deadline = time.monotonic() + timeout
        last: list[CommandResult] = []
        timed_out: list[str] = []

        def attempt() -> str | None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                result = self.execute(command, timeout=remaining)
            except CommandTimeout as exc:
                timed_out[:] = [str(exc)]
                return None
            last[:] = [result]
            return result.stdout if (result.rc == 0) == want_success else None

        def seen() -> str:
            return timed_out[0] if timed_out and not last else _describe(last)

        outcome = "succeed" if want_success else "fail"
        return wait_until(attempt, timeout=timeout, what=f"{command!r} to {outcome} on "
                          f"{self.name}", interval=0.2, abort=self.handle.check_alive,
                          last_seen=seen)

    def wait_until_succeeds(self, command: str, timeout: float = 60.0) -> str:
        """Retry ``command`` until it succeeds; return its stdout. Gives up after ``timeout``."""
        return self._wait_for_status(command, timeout, True)

    def wait_until_fails(self, command: str, timeout: float = 60.0) -> str:
        """Retry ``command`` until it fails; return its stdout. Gives up after ``timeout``."""
        return self._wait_for_status(command, timeout, False)

    def wait_for_port(self, port: int, timeout: float = 60.0) -> None:
        """Wait until something in the guest listens on TCP ``port``.

        Reads /proc/net/tcp and tcp6 in the guest, so it needs no netstat or ss.
        """
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigError(f"port must be 1..65535, got {port!r}")
        pattern = f" [0-9A-Fa-f]+:{port:04X} [0-9A-Fa-f]+:[0-9A-Fa-f]{{4}} 0A "
        command = f"grep -Eq {shlex.quote(pattern)} /proc/net/tcp /proc/net/tcp6 2>/dev/null"
        try:
            self.wait_until_succeeds(command, timeout=timeout)
        except WaitTimeout:
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for a listener on TCP "
                              f"port {port} in {self.name}") from None

    def wait_for_unit(self, unit: str, timeout: float = 60.0) -> None:
        """Wait until the systemd ``unit`` is active; fail at once if it failed.

        A machine answers as soon as its command channel does, while the guest's
        services may still be starting: this is how a test waits for one.
        """
        if not re.fullmatch(r"[A-Za-z0-9:_.@\\-]+", unit):
            raise ConfigError(f"unit {unit!r}: give a systemd unit name such as ssh.service")
        command = f"systemctl show -p ActiveState --value {shlex.quote(unit)}"
        states: list[str] = []

        def active() -> bool | None:
            result = self.execute(command, timeout=30)
            if result.rc != 0:
                raise ConfigError(f"{self.name}: cannot ask systemd about {unit} (exit status "
                                  f"{result.rc}: {result.stderr.strip()[:200]}); does this "
                                  "machine run systemd? Wait with wait_for_port or "
                                  "wait_until_succeeds instead")
            states[:] = [result.stdout.strip()]
            if states[0] == "failed":
                status = self.execute(f"systemctl status --no-pager {shlex.quote(unit)}")
                raise GuestCommandError(self.name, f"systemctl status {unit}", status.rc,
                                        status.stdout, status.stderr,
                                        expected=f"{unit} to become active, not failed")
            return True if states[0] == "active" else None

        wait_until(active, timeout=timeout, what=f"unit {unit} on {self.name} to be active",
                   interval=0.1, abort=self.handle.check_alive,
                   last_seen=lambda: f"ActiveState={states[0]}" if states else "no answer")

    def listening_ports(self) -> set[int]:
        """TCP ports something in the guest listens on (from /proc/net/tcp and tcp6)."""
        out = self.execute("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null").stdout
        found: set[int] = set()
        for line in out.splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A" and ":" in fields[1]:
                found.add(int(fields[1].rsplit(":", 1)[1], 16))
        return found

    # -- files ----------------------------------------------------------
    def copy_to(self, local: str | Path, remote: str) -> None:
        """Copy a host file or folder into the guest."""
        local = Path(local)
        if not local.exists():
            raise HostFileNotFound(f"copy_to: {local} does not exist on the host")
        self.channel.put(local, remote)

    def copy_from(self, remote: str, local: str | Path) -> None:
        """Copy a guest file or folder to the host, keeping permission bits."""
        self.channel.get(remote, Path(local))

    # -- network --------------------------------------------------------
    def forward_port(self, guest_port: int) -> int:
        """Expose guest TCP ``guest_port`` on 127.0.0.1; returns the host port."""
        require(self.handle, Capability.PORT_FORWARD,
                "reach its services from the other nodes of its topology")
        return self.handle.forward_port(guest_port)

    # -- snapshots ------------------------------------------------------
    @property
    def snapshots(self) -> SnapshotTree:
        """This machine's snapshot tree (walk it with ``.walk()``, ``.children(name)``)."""
        return self._tree

    def snapshot(self, name: str | None = None, *, kind: str = "manual") -> SnapshotNode:
        """Save memory, devices and disk as a snapshot; returns its tree node.

        The new snapshot is a child of the current state (the one last taken or
        restored). Commands running meanwhile just pause for the save.
        """
        with self._snapshot_lock:
            return self._snapshot(name, kind)

    def _snapshot(self, name: str | None, kind: str) -> SnapshotNode:
        require(self.handle, Capability.SNAPSHOTS, "give the node provider: qemu to use snapshots")
        if name is None:
            self._auto += 1
            while f"snap-{self._auto}" in self._tree:
                self._auto += 1
            name = f"snap-{self._auto}"
        check_name(name)
        if name in self._tree:
            raise ConfigError(f"{self.name} already has a snapshot {name!r}; pick another name "
                              "or delete it first")
        try:
            self.handle.snapshot_save(name)
        except MachineDied:
            self._drop_partial(name)
            raise
        except ProviderError as exc:
            self._drop_partial(name)
            raise ProviderError(f"{exc}{self._space_hint()}") from exc
        except Exception:
            self._drop_partial(name)
            raise
        sizes = {s["name"]: int(s.get("vm-state-size", 0)) for s in self.handle.snapshot_list()}
        node = self._tree.add(name, size=sizes.get(name, 0), test=self.current_test, kind=kind)
        self._log.info("%s: snapshot %s taken (parent %s, %d bytes)", self.name, name,
                       node.parent, node.size)
        return node

    def _space_hint(self) -> str:
        stats = os.statvfs(self.state_dir)
        free_mb = stats.f_bavail * stats.f_frsize // (1024 * 1024)
        hint = f" (free space where the VM's disk lives, {self.state_dir}: {free_mb} MiB"
        if free_mb < SNAPSHOT_SPACE_WARNING_MB:
            hint += "; the disk is full or nearly: a snapshot needs about the VM's memory size "
            hint += "in free space, so free some or choose a --lab-dir with room"
        return hint + ")"

    def _drop_partial(self, name: str) -> None:
        """After a failed save, make sure no snapshot of that name stays on the disk."""
        try:
            if any(s["name"] == name for s in self.handle.snapshot_list()):
                self.handle.snapshot_delete(name)
                self._log.info("%s: removed the snapshot %s whose save failed", self.name, name)
        except Exception as exc:
            self._log.warning("%s: could not check for a partial snapshot %s: %s", self.name,
                              name, exc)

    def restore(self, name: str) -> None:
        """Return the machine to snapshot ``name``: memory, processes and disk."""
        require(self.handle, Capability.SNAPSHOTS, "give the node provider: qemu to use snapshots")
        self._tree[name]  # an unknown name raises, listing the snapshots there are
        with self._snapshot_lock:
            self._restore(name)

    def _restore(self, name: str) -> None:
        self.channel.interrupt(f"{self.name} was restored to snapshot {name!r}")
        if self.handle.state() is MachineState.RUNNING:
            self.handle.snapshot_load(name)
        else:
            self.handle.start(loadvm=name)
        self._tree.restored(name)
        self.channel.connect(timeout=self.boot_timeout)
        self._log.info("%s: restored snapshot %s", self.name, name)

    def delete_snapshot(self, name: str, *, subtree: bool = False) -> list[str]:
        """Delete a snapshot; one with children only with ``subtree=True`` (all go)."""
        kids = [c.name for c in self._tree.children(self._tree[name].name)]
        if kids and not subtree:
            raise ConfigError(f"snapshot {name!r} of {self.name} has children "
                              f"({', '.join(kids)}); delete them first or pass subtree=True")
        order = self._tree.subtree(name)
        for victim in order:
            self.handle.snapshot_delete(victim)
            self._tree.removed(victim)
        return order

    def sync_snapshots(self) -> None:
        """Reconcile the tree with the snapshots the disk really holds."""
        self._tree.reconcile({s["name"]: int(s.get("vm-state-size", 0))
                              for s in self.handle.snapshot_list()})

    # -- power ----------------------------------------------------------
    def power_on(self) -> None:
        """Start the machine if it is not running (without waiting for it to answer)."""
        if self.handle.state() is not MachineState.RUNNING:
            self.handle.start()
            if len(self._tree):
                self._tree.left()

    def wait_ready(self) -> None:
        """Wait until the command channel answers (``boot_timeout``)."""
        self.channel.connect(timeout=self.boot_timeout)

    def boot(self) -> None:
        """Start the machine (if needed) and wait until its channel answers."""
        self.power_on()
        self.wait_ready()

    def start(self) -> None:
        """Start a stopped machine and wait until it answers."""
        self.boot()

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the guest down cleanly (``poweroff``), forcing it after ``timeout``."""
        if self.handle.state() is not MachineState.RUNNING:
            return
        if supports(self.handle, Capability.GUEST_POWEROFF):
            try:
                self.channel.run("(sleep 0.2; poweroff) >/dev/null 2>&1 &", timeout=5)
            except Exception as exc:
                self._log.info("%s: poweroff over SSH failed (%s); stopping through the "
                               "provider", self.name, exc)
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
