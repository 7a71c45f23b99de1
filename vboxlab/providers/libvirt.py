"""The libvirt provider (``--lab-provider libvirt``): lab VMs as libvirt domains.

A machine is prepared exactly as a QEMU one (overlay over the template's image, its own
files with keys, given through fw_cfg beside the template's shared initrd) and then run
by ``libvirtd`` as a *transient* domain (:mod:`vboxlab.providers.libvirt_xml`). Domains
of a lab that dies with its owner are started with ``AUTODESTROY``: libvirt destroys
them when this process's connection closes, SIGKILL included, and each domain is in the
lab's ledger so ``vboxlab clean`` removes any that are left. Commands go over the same
guest agent socket (or SSH through the user network's forward); snapshots are taken and
deleted through libvirt's snapshot API (internal: memory, devices and disk in the
overlay) and loaded with QEMU's own ``loadvm`` through libvirt's monitor (5x faster than
``revertToSnapshot`` here, and it also loads a snapshot libvirt no longer knows, taken
before a stop).

Lab NICs join the fabric as ``<interface type='udp'>``: each NIC gets a pair
of UDP sockets on 127.0.0.1 like a QEMU NIC, but its near end is closed and its
port given to libvirt, whose QEMU binds it (libvirtd cannot inherit our file
descriptors); the far end is the fabric port.

Not yet: boot media, keeping a lab (``--lab-keep``), direct wires and vde
switches: each raises NotSupported saying so.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import threading
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vboxlab import procs
from vboxlab.accel import AccelChoice
from vboxlab.errors import ConfigError, HostError, MachineDied, NotSupported, ProviderError
from vboxlab.ledger import Ledger
from vboxlab.logs import tail
from vboxlab.net.wire import udp_socket_pair
from vboxlab.providers.base import Capability, MachineSpec, MachineState, ProviderOptions
from vboxlab.providers.libvirt_xml import MAX_LAB_NICS, UdpNic, domain_name, domain_xml
from vboxlab.providers.qemu import (
    INFO_FILE,
    QemuMachine,
    QemuProvider,
    offline_delete,
    offline_snapshots,
)
from vboxlab.providers.qemu_argv import QemuLaunch
from vboxlab.providers.remote_host import RemoteHost, RemoteTarget, is_remote
from vboxlab.waiting import wait_until

if TYPE_CHECKING:
    import libvirt

DEFAULT_URI = "qemu:///system"
INSTALL_HINT = ("install it with `pip install libvirt-python` (it builds against Debian's "
                "libvirt-dev: apt-get install libvirt-dev pkg-config gcc)")


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError:
        raise HostError(f"the libvirt provider needs the libvirt-python package; "
                        f"{INSTALL_HINT}") from None
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors come as exceptions
    return libvirt


class LibvirtProvider(QemuProvider):
    """Creates machines as transient libvirt domains on ``uri``."""

    name = "libvirt"
    needs_template = True

    def __init__(self, options: ProviderOptions | None = None, binary: str | None = None) -> None:
        super().__init__(options, binary)
        given = (options or ProviderOptions()).libvirt_uri
        self.uri = given or os.environ.get("VBOXLAB_LIBVIRT_URI") or DEFAULT_URI
        #: the host's SSH side when the hypervisor is remote (``qemu+ssh://``)
        self.remote: RemoteHost | None = None
        if is_remote(self.uri):
            self.remote = RemoteHost(RemoteTarget.parse(self.uri))
        elif urllib.parse.urlsplit(self.uri).scheme != "qemu" or \
                not self.uri.startswith("qemu:///system"):
            raise ConfigError(f"libvirt URI {self.uri!r}: use qemu:///system for this machine's "
                              "libvirtd or qemu+ssh://USER@HOST[:PORT]/system for a remote host")
        self._connection: libvirt.virConnect | None = None
        self._lock = threading.Lock()

    def connection(self) -> libvirt.virConnect:
        """This process's one connection: domains made AUTODESTROY live as long as it (on a
        remote host too: its libvirtd ends them when the SSH session carrying it closes)."""
        with self._lock:
            if self._connection is None:
                lv = _libvirt()
                opened = self.uri
                if self.remote is not None:
                    self.remote.connect()  # SSH errors are clearer from paramiko than libssh
                    opened = self.remote.target.libvirt_uri()
                try:
                    self._connection = lv.open(opened)
                except lv.libvirtError as exc:
                    raise HostError(
                        f"cannot connect to libvirt at {self.uri}: {exc.get_error_message()}; "
                        "is libvirtd running there? (as root: `virtlogd -d && libvirtd -d`, or "
                        "`make libvirt` in vboxlab's checkout)") from None
            return self._connection

    def free_memory_mb(self) -> int:
        """The hypervisor host's free memory, MiB (libvirt's ``getFreeMemory``)."""
        lv = _libvirt()
        try:
            return int(self.connection().getFreeMemory()) >> 20
        except lv.libvirtError as exc:
            raise HostError(f"{self.uri}: cannot read the host's free memory: "
                            f"{exc.get_error_message()}") from None

    @property
    def ledger_uri(self) -> str:
        """The URI ``vboxlab clean`` reopens to remove a left domain."""
        return self.remote.target.libvirt_uri() if self.remote is not None else self.uri

    def accel_for(self, kernel: Path | None, log: logging.Logger) -> AccelChoice:
        """Locally the probe decides; a remote host runs TCG unless KVM is asked for (this
        machine's probe says nothing about another host's KVM)."""
        if self.remote is None:
            return super().accel_for(kernel, log)
        if self.requested_accel == "kvm":
            return AccelChoice("kvm", f"asked for on {self.remote.target.label}")
        return AccelChoice("tcg", f"{self.remote.target.label}: KVM is used there only when "
                                  "asked for (--lab-accel kvm)")

    def preflight(self, names: list[str]) -> None:
        """Connect now, so a missing libvirtd is reported before any machine starts."""
        self.connection()

    def _machine(self, launch: QemuLaunch, spec: MachineSpec, ledger: Ledger) -> QemuMachine:
        assert spec.template is not None
        if launch.disk_boot is not None:
            raise NotSupported(f"{spec.name}: template {spec.template.template.name} boots "
                               "from its own disk; the libvirt provider boots templates' "
                               "kernels only so far (use provider: qemu)")
        if spec.media is not None:
            raise NotSupported(f"{spec.name}: boot media are not supported by the libvirt "
                               "provider yet; use the qemu provider")
        if not spec.tied:
            raise NotSupported(f"{spec.name}: libvirt labs cannot be kept yet (--lab-keep); "
                               "their domains end with the run")
        definition = spec.template.template.definition
        common: dict[str, Any] = {
            "tied": spec.tied, "ssh_user": definition.access.user,
            "host_key_line": spec.host_key.public_line if spec.host_key else "",
            "template": (spec.template.template.name, spec.template.template.version),
            "domain": domain_name(spec.lab_id, spec.name)}
        if self.remote is not None:
            from vboxlab.providers.libvirt_remote import RemoteLibvirtMachine

            # commands go over SSH through the host: the agent's socket would be the host's
            launch = dataclasses.replace(launch, agent=None)
            return RemoteLibvirtMachine(self, launch, spec.workdir, ledger, spec.log,
                                        remote=self.remote, lab_id=spec.lab_id, **common)
        return LibvirtMachine(self, launch, spec.workdir, ledger, spec.log, **common)

    def attach(self, workdir: Path, ledger: Ledger, log: logging.Logger, *,
               unplug_nics: bool = False) -> QemuMachine:
        raise NotSupported(f"{workdir.name}: libvirt machines cannot be taken over by a later "
                           "process yet (their domains end with the run that made them)")


class LibvirtMachine(QemuMachine):
    """One VM as a transient libvirt domain; files and channel as a QEMU machine's."""

    capabilities = frozenset({Capability.SNAPSHOTS, Capability.PORT_FORWARD,
                              Capability.RESTART, Capability.GUEST_POWEROFF,
                              Capability.LAB_NICS})

    def __init__(self, provider: LibvirtProvider, launch: QemuLaunch, workdir: Path,
                 ledger: Ledger, log: logging.Logger, *, domain: str, **kwargs: Any) -> None:
        super().__init__(launch, workdir, ledger, log, **kwargs)
        self.provider = provider
        self.domain_name = domain
        self._domain: libvirt.virDomain | None = None
        self._domain_rid: int | None = None
        self._stopping = False
        self._udp_nics: list[UdpNic] = []

    def __repr__(self) -> str:
        return f"<LibvirtMachine {self.name} {self.state().value} ({self.domain_name})>"

    @property
    def qemu_log(self) -> Path:
        return Path("/var/log/libvirt/qemu") / f"{self.domain_name}.log"

    def wire(self, spec: MachineSpec) -> None:
        """One UDP socket pair per fabric NIC: the far end stays here as the fabric's port,
        the near end's port goes to libvirt (its QEMU binds it once the domain starts)."""
        if len(spec.nics) > MAX_LAB_NICS:
            raise ConfigError(f"{spec.name}: {len(spec.nics)} lab NICs; a libvirt machine takes "
                              f"at most {MAX_LAB_NICS}")
        for nic in spec.nics:
            if nic.udp is not None:  # a port of the fabric on the machine's own host
                self._udp_nics.append(UdpNic(nic.mac, nic.udp[0], nic.udp[1]))
                continue
            if nic.vde is not None or nic.fd is not None or nic.vhost is not None:
                raise NotSupported(
                    f"{spec.name}: NIC {nic.name}: libvirt machines join lab networks through "
                    "the fabric's sockets (a topology); direct wires, vde switches and "
                    "vhost-user NICs need the qemu provider")
            far, qemu_address, qemu_port = self._nic_end()
            fabric_address, fabric_port = far.getsockname()
            self._udp_nics.append(UdpNic(nic.mac, qemu_port, fabric_port, qemu_address,
                                         fabric_address))
            self._own_sockets.append(far)
            self._fabric_ends.append(far)

    def _nic_end(self) -> tuple[socket.socket, str, int]:
        """The fabric's end of one NIC (connected to QEMU's) and the address and port QEMU
        is to bind."""
        near, far = udp_socket_pair()
        port = near.getsockname()[1]
        near.close()
        return far, "127.0.0.1", port

    # -- life -----------------------------------------------------------
    def start(self, loadvm: str | None = None) -> None:
        """Create the transient domain (AUTODESTROY: it ends with this process)."""
        if self.state() is MachineState.RUNNING:
            raise ProviderError(f"{self.name} is already running")
        lv = _libvirt()
        connection = self.provider.connection()
        xml = self._domain_xml(loadvm)
        if self.launch.agent is not None:
            Path(self.launch.agent).unlink(missing_ok=True)
            self._ledger.add("socket", f"agent {self.name}", path=self.launch.agent)
        self._domain_rid = self._ledger.add("libvirt-domain", self.domain_name,
                                            uri=self.provider.ledger_uri)
        self._log.info("%s: creating libvirt domain %s", self.name, self.domain_name)
        try:
            self._domain = self._create_domain(connection, xml)
        except lv.libvirtError as exc:
            self._ledger.done(self._domain_rid)
            self._state = MachineState.CRASHED
            raise ProviderError(f"{self.name}: libvirt could not start domain "
                                f"{self.domain_name}: {exc.get_error_message()}\n"
                                f"{self._qemu_errors()}") from None
        assert self._domain is not None
        self._ledger.set(self._domain_rid, uuid=self._domain.UUIDString())
        self._state = MachineState.RUNNING
        self._stopping = False
        try:
            self._ssh_port = wait_until(lambda: self._find_forward(self.launch.ssh_port),
                                        timeout=30, interval=0.05,
                                        what=f"the SSH forward of {self.name}")
            self._started()
        except BaseException:
            self.kill()
            raise
        self._write_info()

    def _domain_xml(self, loadvm: str | None) -> str:
        return domain_xml(self.launch, self.domain_name, owner=str(self.workdir), loadvm=loadvm,
                          udp_nics=self._udp_nics)

    def _create_domain(self, connection: libvirt.virConnect, xml: str) -> libvirt.virDomain:
        """Start the transient domain; it ends when this process's connection closes."""
        return connection.createXML(xml, _libvirt().VIR_DOMAIN_START_AUTODESTROY)

    def _started(self) -> None:
        """Called once the domain runs and its SSH forward is known."""

    def _qemu_errors(self) -> str:
        return tail(self.qemu_log, 10) or "(no message)"

    def _find_forward(self, guest_port: int) -> int | None:
        return next((h for h, g in self._forwards_now() if g == guest_port), None)

    def _domain_pid(self) -> int | None:
        try:
            return int(Path(f"/run/libvirt/qemu/{self.domain_name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def state(self) -> MachineState:
        with self._life:
            if self._state is MachineState.RUNNING and not self._domain_running():
                self._state = MachineState.STOPPED if self._stopping else MachineState.CRASHED
                self._ended()
            return self._state

    def _domain_running(self) -> bool:
        domain = self._domain
        if domain is None:
            return False
        lv = _libvirt()
        try:
            return bool(domain.isActive())
        except lv.libvirtError:
            return False

    def _ended(self) -> None:
        self._domain = None
        self._forwards.clear()
        self._ssh_port = None
        if self._domain_rid is not None:
            self._ledger.done(self._domain_rid)
            self._domain_rid = None

    def check_alive(self) -> None:
        state = self.state()
        if state is not MachineState.RUNNING:
            raise MachineDied(f"{self.name} (libvirt domain {self.domain_name}) is not running "
                              f"({state.value}). QEMU said: {self._qemu_errors()}\n"
                              f"--- last console lines ---\n{tail(self.console_log)}")

    def stop(self, timeout: float = 30) -> None:
        """ACPI shutdown; destroyed after ``timeout``."""
        domain = self._domain
        if domain is None or self.state() is not MachineState.RUNNING:
            return
        lv = _libvirt()
        self._stopping = True
        try:
            domain.shutdown()
            wait_until(lambda: not self._domain_running(), timeout=timeout, interval=0.1,
                       what=f"{self.name} to power off")
        except (lv.libvirtError, Exception) as exc:
            self._log.info("%s: shutdown did not end the domain (%s); destroying it", self.name,
                           exc)
        self.kill()
        with self._life:
            self._state = MachineState.STOPPED

    def kill(self) -> None:
        """Destroy the domain at once."""
        lv = _libvirt()
        with self._life:
            domain = self._domain
            if domain is not None:
                try:
                    domain.destroy()
                except lv.libvirtError as exc:  # a transient domain that powered off is gone
                    if self._domain_running():
                        raise ProviderError(f"{self.name}: libvirt could not destroy "
                                            f"{self.domain_name}: {exc.get_error_message()}"
                                            ) from None
                if self._state is MachineState.RUNNING:
                    self._state = MachineState.STOPPED
            self._ended()

    def wait_exit(self, timeout: float) -> bool:
        try:
            wait_until(lambda: not self._domain_running(), timeout=timeout, interval=0.1,
                       what=f"{self.name} to end")
        except Exception:
            return False
        self.state()
        return True

    def destroy(self) -> None:
        self.kill()
        self.detach()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def detach(self) -> None:
        """Forget the domain and close the fabric ends of the NICs."""
        self._domain = None
        super().detach()

    # -- the monitor ----------------------------------------------------
    def hmp(self, command: str) -> str:
        """A human-monitor command through libvirt (QEMU's monitor belongs to libvirtd)."""
        self.check_alive()
        import libvirt_qemu

        lv = _libvirt()
        assert self._domain is not None
        try:
            return str(libvirt_qemu.qemuMonitorCommand(
                self._domain, command, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP))
        except lv.libvirtError as exc:
            self.check_alive()
            raise ProviderError(f"{self.name}: monitor command {command!r} failed: "
                                f"{exc.get_error_message()}") from None

    def qmp(self, command: str, **arguments: Any) -> Any:
        """One QMP command through libvirt's monitor passthrough."""
        self.check_alive()
        import libvirt_qemu

        lv = _libvirt()
        assert self._domain is not None
        request = json.dumps({"execute": command, "arguments": arguments})
        try:
            reply = json.loads(libvirt_qemu.qemuMonitorCommand(self._domain, request, 0))
        except lv.libvirtError as exc:
            self.check_alive()
            raise ProviderError(f"{self.name}: QMP {command} failed: "
                                f"{exc.get_error_message()}") from None
        if "error" in reply:
            raise ProviderError(f"{self.name}: QMP {command} failed: {reply['error']}")
        return reply.get("return")

    # -- snapshots ------------------------------------------------------
    def snapshot_save(self, tag: str, timeout: float = 120) -> None:
        """An internal snapshot (memory, devices, disk) through libvirt's snapshot API."""
        if any(s["name"] == tag for s in self.snapshot_list()):
            raise ProviderError(f"{self.name}: a snapshot called {tag!r} exists already")
        self.check_alive()
        lv = _libvirt()
        assert self._domain is not None
        xml = f"<domainsnapshot><name>{tag}</name></domainsnapshot>"
        try:
            self._domain.snapshotCreateXML(xml, 0)
        except lv.libvirtError as exc:
            raise ProviderError(f"{self.name}: libvirt could not take snapshot {tag}: "
                                f"{exc.get_error_message()}") from None

    def _libvirt_snapshot(self, tag: str) -> Any:
        lv = _libvirt()
        if self._domain is None:
            return None
        try:
            return self._domain.snapshotLookupByName(tag, 0)
        except lv.libvirtError:
            return None  # taken in an earlier run of this transient domain: QEMU still has it

    def snapshot_load(self, tag: str, timeout: float = 120) -> None:
        """QEMU's ``loadvm`` through libvirt's monitor: the state libvirt's snapshot API saved,
        loaded in 0.5 s where ``revertToSnapshot`` takes 2.4 s here (benchmarks/providers.py);
        it also loads snapshots libvirt no longer knows (taken before a stop)."""
        started = time.monotonic()
        reply = self.hmp(f"loadvm {tag}")
        if reply.strip():
            raise ProviderError(f"{self.name}: loadvm {tag}: {reply.strip()}")
        if self.qmp("query-status")["status"] != "running":
            self.qmp("cont")
        self._log.info("%s: loaded snapshot %s in %.2f s", self.name, tag,
                       time.monotonic() - started)

    def snapshot_delete(self, tag: str, timeout: float = 60) -> None:
        if self.state() is not MachineState.RUNNING:
            offline_delete(self.overlay, tag)
            return
        lv = _libvirt()
        snapshot = self._libvirt_snapshot(tag)
        try:
            if snapshot is not None:
                snapshot.delete(0)
            else:
                reply = self.hmp(f"delvm {tag}")
                if "error" in reply.lower():
                    raise ProviderError(f"{self.name}: delvm {tag}: {reply.strip()}")
        except lv.libvirtError as exc:
            raise ProviderError(f"{self.name}: libvirt could not delete snapshot {tag}: "
                                f"{exc.get_error_message()}") from None

    def snapshot_list(self) -> list[dict[str, Any]]:
        """The overlay's internal snapshots (read with ``qemu-img -U``, running or not)."""
        return offline_snapshots(self.overlay)

    # -- files ----------------------------------------------------------
    def _published_ports(self) -> tuple[int | None, dict[int, int]]:
        """The SSH port and guest port -> port forwards as this machine reaches them."""
        return self._ssh_port, self._forwards

    def _write_info(self) -> None:
        ssh_port, forwards = self._published_ports()
        pid = self._domain_pid()
        info = {
            "name": self.name, "provider": "libvirt", "domain": self.domain_name,
            "uri": self.provider.uri, "template": self.template[0],
            "version": self.template[1], "pid": pid,
            "start": procs.start_time(pid) if pid else None,
            "ssh": {"host": "127.0.0.1", "port": ssh_port,
                    "guest_port": self.launch.ssh_port, "user": self._ssh_user},
            "forwards": {str(g): h for g, h in forwards.items()},
            "launch": self.launch.to_dict(), "updated": time.time(),
        }
        tmp = self.workdir / f".{INFO_FILE}.tmp"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(self.workdir / INFO_FILE)


def release_domain(name: str, data: dict[str, Any]) -> None:
    """Destroy a lab's domain a dead run left (``vboxlab clean``): only the recorded one."""
    uuid = data.get("uuid")
    if not isinstance(uuid, str):
        return  # never created, or created AUTODESTROY by a connection that is gone
    lv = _libvirt()
    try:
        connection = lv.open(str(data.get("uri", DEFAULT_URI)))
    except lv.libvirtError as exc:
        raise HostError(f"cannot reach libvirt to remove domain {name}: "
                        f"{exc.get_error_message()}") from None
    try:
        domain = connection.lookupByUUIDString(uuid)
    except lv.libvirtError:
        connection.close()
        return  # gone already
    try:
        if domain.name() == name and domain.isActive():
            domain.destroy()
    finally:
        connection.close()

