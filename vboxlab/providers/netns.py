"""The netns provider: Linux network namespaces as lightweight lab hosts.

A namespace host is a holder process (``unshare`` with new network, mount, UTS,
IPC and PID namespaces running ``sleep`` as its PID 1) plus one tap device per
lab interface. The tap's file descriptor goes to the fabric like a QEMU NIC's
socket, so namespace hosts and VMs share segments and links. Everything started
in the host lives in its PID namespace and dies with the holder, and the holder
dies with the test run (parent-death signal), so a killed run leaves neither
processes, namespaces nor tap devices behind. Commands run through ``nsenter``;
the host shares the machine's filesystem except ``/etc/hosts`` and ``/proc``.
Needs root.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vboxlab import procs
from vboxlab.channels.base import CommandResult, GuestFile
from vboxlab.errors import (
    CommandTimeout,
    GuestFileNotFound,
    HostError,
    MachineDied,
    NotSupported,
    ProviderError,
)
from vboxlab.hosttools import require
from vboxlab.ledger import Ledger
from vboxlab.providers.base import (
    Capability,
    MachineSpec,
    MachineState,
    NicSpec,
    ProviderOptions,
)
from vboxlab.waiting import wait_until

if TYPE_CHECKING:
    import paramiko

    from vboxlab.channels.base import Channel

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
#: commands see this environment, not the test run's
COMMAND_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb"}
NAMESPACES = ("--net", "--mount", "--uts", "--ipc", "--pid")


def require_root(what: str) -> None:
    """Raise HostError unless this process may create namespaces and tap devices."""
    if os.geteuid() != 0:
        raise HostError(f"{what} needs root (network namespaces and tap devices); run the "
                        "tests as root, or give these nodes provider: qemu")
    if not Path("/dev/net/tun").exists():
        raise HostError(f"{what} needs /dev/net/tun (the tun module): modprobe tun")


def open_tap(name: str) -> int:
    """Create a tap device ``name`` (no packet-info header); returns its descriptor.

    The device lives as long as the descriptor (it is not persistent).
    """
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
    except OSError as exc:
        os.close(fd)
        raise HostError(f"could not create tap device {name}: {exc}") from exc
    return fd


class NetnsProvider:
    """Makes namespace hosts; needs root."""

    name = "netns"
    needs_template = False

    def __init__(self, options: ProviderOptions | None = None) -> None:
        self.options = options or ProviderOptions()

    def preflight(self, names: list[str]) -> None:
        require_root(f"netns nodes {', '.join(names)}")

    def create(self, spec: MachineSpec, ledger: Ledger) -> NetnsHost:
        for nic in spec.nics:
            if not nic.is_fabric_port:
                raise NotSupported(f"netns host {spec.name}: NIC {nic.name} must be a fabric "
                                   "port (a tap device); direct wires and VDE are for VMs")
        if spec.media is not None:
            raise NotSupported(f"netns host {spec.name} cannot boot media; use provider qemu")
        return NetnsHost(spec, ledger)

    def attach(self, workdir: Path, ledger: Ledger, log: logging.Logger, *,
               unplug_nics: bool = False) -> NetnsHost:
        raise NotSupported(f"netns host {workdir.name}: a namespace host ends with the run "
                           "that made it; there is nothing to take over")


class NetnsHost:
    """A namespace host as the lab sees it (the ProviderMachine protocol)."""

    #: no snapshots, forwards, restarts or media; ``poweroff`` in a namespace would reach the
    #: real host's init over its sockets, so the guest never powers off by command
    capabilities = frozenset({Capability.LAB_NICS})

    def __init__(self, spec: MachineSpec, ledger: Ledger) -> None:
        name = spec.name
        require_root(f"netns host {name!r}")
        require("unshare", "for netns hosts")
        require("nsenter", "to run commands in netns hosts")
        self.name = name
        self.workdir = spec.workdir
        self.taps: tuple[NicSpec, ...] = spec.nics
        self.routes = spec.routes
        self.forward = spec.forward
        self.tied = spec.tied
        self._ledger = ledger
        self._log = spec.log
        self._lab_id = spec.lab_id
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None
        self._rid: int | None = None
        self._ns_pid: int | None = None
        self._started = False
        self._stopped_on_request = False
        #: tap descriptors, in the order of ``taps``, for the fabric (closed by ``destroy``)
        self.tap_fds: list[int] = []
        (self.workdir / "hosts").write_text(
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n{spec.hosts}")

    # -- life -------------------------------------------------------------
    @property
    def console_log(self) -> Path:
        """The host's log: the holder's messages and every command with its exit status."""
        return self.workdir / "netns.log"

    def start(self, loadvm: str | None = None) -> None:
        """Create the namespaces, the taps inside them, and configure addresses."""
        if loadvm is not None:
            raise NotSupported(f"netns host {self.name} has no snapshots to start from")
        if self._started:
            raise NotSupported(
                f"netns host {self.name} was stopped and cannot start again: its namespaces "
                "and tap devices are gone with it. Use a qemu node to test restarts")
        self._started = True
        self._stderr = self.console_log.open("ab")
        argv = ["unshare", *NAMESPACES, "--fork", "--kill-child", "--mount-proc",
                "--propagation", "private", "--", "sleep", "infinity"]
        self._rid = self._ledger.add("process", f"netns {self.name}")
        self._proc = procs.spawn(argv, tied=self.tied, stderr=self._stderr, cwd=self.workdir)
        started = procs.start_time(self._proc.pid)
        self._ledger.set(self._rid, pid=self._proc.pid, start=started)
        (self.workdir / "machine.json").write_text(json.dumps(
            {"name": self.name, "provider": "netns", "pid": self._proc.pid, "start": started,
             "interfaces": [t.name for t in self.taps]}, indent=2) + "\n")
        self._ns_pid = wait_until(self._namespace_ready, timeout=10, interval=0.005,
                                  what=f"the namespaces of netns host {self.name}")
        self._run_setup(["mount", "--bind", str(self.workdir / "hosts"), "/etc/hosts"])
        self._run_setup(["hostname", self.name])
        self._make_taps()
        self._log.info("%s: netns host up (holder pid %d, namespace pid %d, %d interfaces)",
                       self.name, self._proc.pid, self._ns_pid, len(self.taps))

    def _namespace_ready(self) -> int | None:
        """The pid of the holder's child once it runs ``sleep`` in the new namespaces."""
        self.check_alive()
        assert self._proc is not None
        try:
            children = Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children").read_text()
        except OSError:
            return None
        own_namespace = Path("/proc/self/ns/net").stat().st_ino
        for pid in (int(p) for p in children.split()):
            if procs.cmdline(pid)[:1] == ["sleep"] and \
                    Path(f"/proc/{pid}/ns/net").stat().st_ino != own_namespace:
                return pid
        return None

    def _make_taps(self) -> None:
        from pyroute2 import IPRoute

        assert self._ns_pid is not None
        ns_path = f"/proc/{self._ns_pid}/ns/net"
        # host-side names unique to this lab, host and interface (15 characters at most)
        temporary = [f"vl{self._digest(tap.name)}{index}" for index, tap in enumerate(self.taps)]
        with IPRoute() as host:
            for name in temporary:
                self.tap_fds.append(open_tap(name))
                (link,) = host.link_lookup(ifname=name)
                host.link("set", index=link, net_ns_pid=self._ns_pid)
        with IPRoute(netns=ns_path) as inside:
            (loopback,) = inside.link_lookup(ifname="lo")
            inside.link("set", index=loopback, state="up")
            for tap, name in zip(self.taps, temporary, strict=True):
                (link,) = inside.link_lookup(ifname=name)
                inside.link("set", index=link, ifname=tap.name, address=tap.mac)
                if tap.address:
                    address, _, prefix = tap.address.partition("/")
                    inside.addr("add", index=link, address=address, prefixlen=int(prefix))
                inside.link("set", index=link, state="up")
            for network, via in self.routes:
                inside.route("add", dst=network, gateway=via)
        if self.forward:
            self._run_setup(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])

    def _digest(self, interface: str) -> str:
        return hashlib.sha256(f"{self._lab_id}/{self.name}/{interface}".encode()).hexdigest()[:10]

    def _run_setup(self, argv: list[str]) -> None:
        result = self._nsenter(argv, timeout=10)
        if result.returncode != 0:
            raise ProviderError(f"netns host {self.name}: {' '.join(argv)} failed: "
                                f"{result.stderr.decode(errors='replace').strip()}")

    def _nsenter(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*self.enter_argv(), *argv], capture_output=True, timeout=timeout,
                              env=COMMAND_ENV, check=False)

    def enter_argv(self) -> list[str]:
        """The command prefix that runs a program inside this host."""
        if self._ns_pid is None:
            raise ProviderError(f"netns host {self.name} is not running")
        return ["nsenter", "--target", str(self._ns_pid), *NAMESPACES, "--"]

    def state(self) -> MachineState:
        if self._proc is None:
            return MachineState.CREATED
        if self._proc.poll() is None:
            return MachineState.RUNNING
        return MachineState.STOPPED if self._stopped_on_request else MachineState.CRASHED

    def check_alive(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise MachineDied(f"netns host {self.name} is not running (its holder process is "
                              f"gone); log: {self.console_log}")

    def stop(self, timeout: float = 5.0) -> None:
        """End the host: every process in it and its namespaces (its taps go too)."""
        self._stopped_on_request = True
        self._end(grace=min(timeout, 2.0))

    def kill(self) -> None:
        self._stopped_on_request = False
        self._end(grace=0.0)

    def _end(self, grace: float) -> None:
        if self._proc is not None and self._proc.poll() is None:
            procs.kill(self._proc.pid, procs.start_time(self._proc.pid), grace=grace)
            self._proc.wait()
        if self._rid is not None:
            self._ledger.done(self._rid)
            self._rid = None
        self._ns_pid = None
        for fd in self.tap_fds:  # the fabric holds its own copies
            os.close(fd)
        self.tap_fds.clear()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def detach(self) -> None:
        """Nothing to let go of: the holder runs on, the fabric holds the taps' copies."""

    def destroy(self) -> None:
        """Stop the host (its processes, namespaces and tap devices go) and delete its files."""
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<NetnsHost {self.name} {self.state().value} ({len(self.taps)} interfaces)>"

    def channel(self, user_key: paramiko.PKey | None) -> Channel:
        return NsenterChannel(self)

    def shell_hint(self, lab_id: str, base: Path) -> str:
        return " ".join([*self.enter_argv(), "sh"])

    def fabric_fds(self) -> list[int]:
        return list(self.tap_fds)

    def on_ready(self, channel: Channel) -> None:
        """Nothing to do: a namespace host has no kernel of its own."""

    # -- what namespace hosts do not have -----------------------------------
    def boot_initrd(self) -> Path:
        raise NotSupported(f"netns host {self.name} boots no media; use provider qemu")

    def forward_port(self, guest_port: int) -> int:
        raise NotSupported(
            f"netns host {self.name}: forward_port is for VMs; a namespace host's services are "
            "reached from the other nodes of its topology (or from the host with "
            f"{' '.join(self.enter_argv())} ...)")

    def _no_snapshots(self) -> NotSupported:
        return NotSupported(f"netns host {self.name} cannot be snapshotted: a namespace holds "
                             "no memory image. Give the node provider: qemu to use snapshots")

    def snapshot_save(self, tag: str) -> None:
        raise self._no_snapshots()

    def snapshot_load(self, tag: str) -> None:
        raise self._no_snapshots()

    def snapshot_delete(self, tag: str) -> None:
        raise self._no_snapshots()

    def snapshot_list(self) -> list[dict[str, Any]]:
        return []


class NsenterChannel:
    """Runs commands in a namespace host (the Channel protocol)."""

    def __init__(self, host: NetnsHost) -> None:
        self.host = host

    def connect(self, timeout: float) -> None:
        self.host.check_alive()

    def run(self, command: str, timeout: float) -> CommandResult:
        """Run ``command`` with ``sh -c`` in the host; raise CommandTimeout past ``timeout``.

        Output goes to files, not pipes, so a command that leaves a background
        process holding its stdout returns when the command itself exits (as over SSH).
        """
        self.host.check_alive()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen([*self.host.enter_argv(), "sh", "-c", command],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    env=COMMAND_ENV, start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                out.seek(0)
                raise CommandTimeout(
                    f"{self.host.name}: command {command!r} did not finish within {timeout:g} s; "
                    f"output so far: {out.read().decode(errors='replace')[-500:]!r}") from None
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(errors="replace"), err.read().decode(
                errors="replace")
        self.host.check_alive()  # a command that ended because the host did is not a result
        with self.host.console_log.open("a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} $ {command} -> exit {rc}\n")
        return CommandResult(command, rc, stdout, stderr)

    def put(self, local: Path, remote: str) -> None:
        """Copy a file or folder (the host shares the machine's filesystem)."""
        if local.is_dir():
            shutil.copytree(local, remote, dirs_exist_ok=True)
        else:
            shutil.copy2(local, remote)

    def get(self, remote: str, local: Path) -> None:
        source = Path(remote)
        if not source.exists():
            raise GuestFileNotFound(f"copy_from: {remote} does not exist on {self.host.name}")
        if source.is_dir():
            shutil.copytree(source, local, dirs_exist_ok=True)
        else:
            shutil.copy2(source, local)

    def read_files(self, paths: Sequence[str], limit: int) -> Iterator[GuestFile]:
        """Read regular files of at most ``limit`` bytes (the host's own files)."""
        for path in paths:
            try:
                info = os.lstat(path)
                if not stat.S_ISREG(info.st_mode):
                    yield GuestFile(path, None, "not a regular file")
                    continue
                if info.st_size > limit:
                    yield GuestFile(path, None, f"{info.st_size} bytes, over the {limit} byte "
                                    "limit")
                    continue
                with open(path, "rb") as handle:  # noqa: PTH123 - a guest path string
                    data = handle.read(limit + 1)
            except OSError as exc:
                yield GuestFile(path, None, f"unreadable: {exc.strerror or exc}")
                continue
            yield (GuestFile(path, data) if len(data) <= limit
                   else GuestFile(path, None, f"grew past the {limit} byte limit"))

    def interrupt(self, reason: str) -> None:
        """Namespace hosts have no snapshots; nothing is in flight to fail."""

    def close(self, reason: str = "") -> None:
        """Nothing to close: every command is its own process."""
