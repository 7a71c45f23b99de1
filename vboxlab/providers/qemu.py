"""The QEMU provider: qemu-system-x86_64 driven through QMP (the ``qemu.qmp`` package).

Each VM gets, in its work folder: a qcow2 overlay over the template's disk (the
template is opened read-only with an explicit, empty backing chain and is never
written), its own files (host key, authorized key, hostname, lab interfaces) as a
small archive that QEMU hands over through fw_cfg beside the template's shared
initrd (or appended to a copy of it, see :mod:`vboxlab.providers.vmfiles`), the serial
console in ``console.log``, QEMU's stderr in ``qemu.log``, the QMP socket and
``machine.json`` (the launch description, pid and forwards). SSH reaches the
guest through a user-mode network forward bound to 127.0.0.1 on a port the
kernel picks (no races between parallel runs).

The same class drives a VM a finished run kept: :meth:`QemuProvider.attach`
reads ``machine.json`` and takes over the process (or restarts it from the
recorded launch), so the CLI and a live session share one snapshot path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paramiko

from vboxlab import procs
from vboxlab.accel import AccelChoice, choose
from vboxlab.channels.agent import AgentChannel
from vboxlab.channels.ssh import SSHChannel
from vboxlab.errors import ConfigError, HostError, MachineDied, NotSupported, ProviderError
from vboxlab.hosttools import QEMU_BINARY, require, run
from vboxlab.keys import public_key_from_line
from vboxlab.ledger import Ledger
from vboxlab.logs import tail
from vboxlab.net.wire import socket_pair
from vboxlab.providers.base import (
    Capability,
    MachineSpec,
    MachineState,
    NicSpec,
    ProviderOptions,
)
from vboxlab.providers.direct_kernel import NoDirectBoot, direct_kernel
from vboxlab.providers.nocloud import write_seed
from vboxlab.providers.qemu_argv import (
    DISK_NODE,
    LaunchMedia,
    LaunchNic,
    NicWiring,
    QemuLaunch,
    build_argv,
)
from vboxlab.providers.qmp import QmpConnection, run_job, snapshot_args
from vboxlab.providers.vmfiles import (
    agent_files,
    cpio_of,
    prefix_for,
    shared_initrd,
    uses_fw_cfg,
    vm_files,
    write_initrd,
)
from vboxlab.templates.chain import check_template_disks, disk_chain
from vboxlab.waiting import wait_until

if TYPE_CHECKING:
    from vboxlab.channels.base import Channel

MAX_SOCKET_PATH = 107
#: under TCG: QEMU's default CPU plus RDRAND (from the host's getrandom), so the guest's
#: random pool is ready at once and sshd, which waits for it, listens 1.5 s sooner
TCG_CPU = "qemu64,+rdrand"
#: QEMU's minimal firmware (package qemu-system-data): it only loads the kernel, which SeaBIOS
#: takes longer to get to; boot media keep SeaBIOS or OVMF
QBOOT = Path("/usr/share/qemu/qboot.rom")
INFO_FILE = "machine.json"
_FORWARD_RE = re.compile(
    r"TCP\[HOST_FORWARD\]\s+\d+\s+127\.0\.0\.1\s+(\d+)\s+\S+\s+(\d+)")


def forwards_in(usernet: str) -> list[tuple[int, int]]:
    """(host port, guest port) of each TCP forward in HMP ``info usernet`` output."""
    return [(int(h), int(g)) for h, g in _FORWARD_RE.findall(usernet)]


def block_snapshots(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The snapshots of our disk node in a ``query-named-block-nodes`` reply."""
    for node in nodes:
        if node.get("node-name") == DISK_NODE:
            return list(node.get("image", {}).get("snapshots", []))
    raise ProviderError(f"QEMU reports no block node {DISK_NODE}")


def offline_snapshots(overlay: Path) -> list[dict[str, Any]]:
    """Snapshots in a disk no QEMU is running on (``qemu-img info``)."""
    out = run([require("qemu-img", "to read snapshots"), "info", "-U", "--output=json",
               str(overlay)], what=f"reading snapshots of {overlay}", error=ProviderError)
    return snapshots_in_info(out)


def snapshots_in_info(info_json: str) -> list[dict[str, Any]]:
    """The snapshots ``qemu-img info --output=json`` lists."""
    return [{"name": s["name"], "vm-state-size": s.get("vm-state-size", 0)}
            for s in json.loads(info_json).get("snapshots", [])]


def offline_delete(overlay: Path, tag: str) -> None:
    """Delete a snapshot from a disk no QEMU is running on (``qemu-img snapshot -d``)."""
    run([require("qemu-img", "to edit snapshots"), "snapshot", "-d", tag, str(overlay)],
        what=f"deleting snapshot {tag} of {overlay}", error=ProviderError)


class QemuProvider:
    """Creates QEMU machines; picks KVM only when the probe shows it works."""

    name = "qemu"
    needs_template = True

    def __init__(self, options: ProviderOptions | None = None, binary: str | None = None) -> None:
        accel = (options or ProviderOptions()).accel
        self.channel = (options or ProviderOptions()).channel
        if accel not in ("auto", "kvm", "tcg"):
            raise ConfigError(f"unknown accelerator {accel!r}; use auto, kvm or tcg")
        self.binary = binary or require(QEMU_BINARY, "to run QEMU virtual machines")
        self.requested_accel = accel
        self._accel: AccelChoice | None = None
        self._accel_lock = threading.Lock()

    @property
    def chosen_accel(self) -> AccelChoice | None:
        """The accelerator chosen for this lab's machines (None before the first boot)."""
        return self._accel

    def accel_for(self, kernel: Path | None, log: logging.Logger) -> AccelChoice:
        """The accelerator (chosen once per provider; ``kernel`` boots the KVM probe)."""
        with self._accel_lock:
            if self._accel is None and kernel is None:  # no probe: decide for this one only
                return choose(self.requested_accel, self.binary, None)
            if self._accel is None:
                self._accel = choose(self.requested_accel, self.binary, kernel)
                log.info("QEMU accelerator: %s (%s)", self._accel.accel, self._accel.reason)
            return self._accel

    def preflight(self, names: list[str]) -> None:
        """QEMU was found when the provider was made; nothing else to check up front."""

    def create(self, spec: MachineSpec, ledger: Ledger) -> QemuMachine:
        built = spec.template
        if built is None:
            raise ConfigError(f"{spec.name}: a QEMU machine needs a template")
        check_template_disks(built)
        definition = built.template.definition
        work = spec.workdir
        qmp_path = work / "qmp.sock"
        if len(str(qmp_path)) > MAX_SOCKET_PATH:
            raise ConfigError(
                f"lab folder {work} is too deep: the QMP socket path would be "
                f"{len(str(qmp_path))} bytes, over the {MAX_SOCKET_PATH}-byte limit of UNIX "
                "sockets; choose a shorter --lab-dir")
        media = None
        if spec.media is not None:
            ovmf = None
            if spec.media.firmware == "uefi":
                from vboxlab.media.bootloaders import ovmf_firmware

                ovmf = str(ovmf_firmware())
            media = LaunchMedia(str(spec.media.path), spec.media.kind, spec.media.firmware, ovmf)
        disk_boot = built.firmware if built.firmware != "kernel" else None
        accel = self.accel_for(None if disk_boot else built.kernel, spec.log)
        agent = None
        if self.channel == "auto" and definition.access.channels[0] == "agent" and not disk_boot:
            agent = str(work / "agent.sock")
        kernel: str | None = None if disk_boot else str(built.kernel)
        # the template's initrd shared by its VMs, each VM's own files through fw_cfg
        fw_cfg = kernel is not None and media is None and uses_fw_cfg(built)
        initrd = None if disk_boot else str(work / "initrd.img")
        if fw_cfg:
            initrd = str(shared_initrd(built, agent=agent is not None))
        if media is None and kernel is not None:
            try:  # no decompression in the guest: 4 s less under TCG
                kernel = str(direct_kernel(built.kernel))
            except (NoDirectBoot, OSError) as exc:
                spec.log.info("%s: boots the template's compressed kernel (%s)", spec.name, exc)
        launch = QemuLaunch(
            name=spec.name, binary=self.binary, accel=accel.accel, memory=spec.memory,
            cpus=spec.cpus, overlay=str(work / "disk.qcow2"), base_disk=str(built.disk),
            base_format=str(built.manifest.get("disk_format", "qcow2")),
            console=str(work / "console.log"), qmp=str(qmp_path),
            ssh_port=definition.access.port, kernel=kernel,
            initrd=initrd, vm_files=str(work / "vm-files.cpio") if fw_cfg else None,
            cmdline=f"{definition.boot.cmdline} {spec.kernel_args}".strip(), media=media,
            nics=tuple(LaunchNic(n.name, n.mac, _backend(n), n.vde, n.vhost) for n in spec.nics),
            restrict=spec.restrict, agent=agent,
            cpu=TCG_CPU if accel.accel == "tcg" else None,
            kernel_firmware=str(QBOOT) if media is None and QBOOT.is_file() and not disk_boot
            else None,
            disk_boot=disk_boot, firmware_code=_uefi_code() if disk_boot == "uefi" else None,
            seed=str(work / "seed.iso") if disk_boot else None, base_chain=disk_chain(built))
        machine = self._machine(launch, spec, ledger)
        machine.wire(spec)
        machine.prepare(spec)
        return machine

    def _machine(self, launch: QemuLaunch, spec: MachineSpec, ledger: Ledger) -> QemuMachine:
        """The machine object for a launch (a provider built on this one returns its own)."""
        assert spec.template is not None
        definition = spec.template.template.definition
        return QemuMachine(launch, spec.workdir, ledger, spec.log, tied=spec.tied,
                           ssh_user=definition.access.user,
                           host_key_line=spec.host_key.public_line if spec.host_key else "",
                           template=(spec.template.template.name,
                                     spec.template.template.version))

    def attach(self, workdir: Path, ledger: Ledger, log: logging.Logger, *,
               unplug_nics: bool = False) -> QemuMachine:
        """Take over a VM a finished run kept in ``workdir``, running or stopped."""
        try:
            info = json.loads((workdir / INFO_FILE).read_text())
            # the binary is this provider's own, whatever the file says
            launch = dataclasses.replace(QemuLaunch.from_dict(info["launch"]), binary=self.binary)
            host_key_line = (workdir / "known_hosts.pub").read_text().strip()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{workdir}: not a VM vboxlab can take over: machine.json or "
                              f"known_hosts.pub is missing or damaged ({type(exc).__name__}: "
                              f"{exc})") from None
        machine = QemuMachine(launch, workdir, ledger, log, tied=False,
                              ssh_user=str(info.get("ssh", {}).get("user", "root")),
                              host_key_line=host_key_line,
                              template=(str(info.get("template")), str(info.get("version"))))
        machine.adopt(info, unplug_nics=unplug_nics)
        return machine


class QemuMachine:
    """One QEMU VM: its files, its process and its QMP connection."""

    capabilities = frozenset({Capability.SNAPSHOTS, Capability.PORT_FORWARD,
                              Capability.RESTART, Capability.BOOT_MEDIA, Capability.LAB_NICS,
                              Capability.GUEST_POWEROFF, Capability.ATTACH})

    def __init__(self, launch: QemuLaunch, workdir: Path, ledger: Ledger,
                 log: logging.Logger, *, tied: bool, ssh_user: str, host_key_line: str,
                 template: tuple[str, str]) -> None:
        self.name = launch.name
        self.launch = launch
        self.workdir = workdir
        self.tied = tied
        self.template = template
        self._ledger = ledger
        self._log = log
        self._ssh_user = ssh_user
        self._host_key_line = host_key_line
        self._proc: subprocess.Popen[bytes] | procs.Adopted | None = None
        self._proc_rid: int | None = None
        self._qmp: QmpConnection | None = None
        self._state = MachineState.CREATED
        self._ssh_port: int | None = None
        self._forwards: dict[int, int] = {}
        self._job_counter = 0
        self._last_returncode: int | None = None
        self._life = threading.RLock()  # state changes may come from a watchdog thread
        self._stderr: io.BufferedWriter | None = None
        self._adopted = False
        self._unplugged = False
        self._nic_fds: list[int] = []  # QEMU's ends of the datagram NICs, in NIC order
        self._own_sockets: list[socket.socket] = []
        self._fabric_ends: list[socket.socket] = []
        self.qmp_path = Path(launch.qmp)
        self.overlay = Path(launch.overlay)
        self.initrd = Path(launch.initrd) if launch.initrd else workdir / "initrd.img"

    def __repr__(self) -> str:
        return f"<QemuMachine {self.name} {self.state().value} ({self.template[0]} " \
               f"{self.template[1]}, {self.launch.accel})>"

    # -- files ----------------------------------------------------------
    def wire(self, spec: MachineSpec) -> None:
        """Make the sockets of this VM's lab NICs (fabric ports get a pair each)."""
        for nic in spec.nics:
            if nic.vde is not None or nic.vhost is not None:
                continue
            if nic.fd is not None:
                self._nic_fds.append(nic.fd)
                continue
            near, far = socket_pair()
            self._own_sockets += [near, far]
            self._fabric_ends.append(far)
            self._nic_fds.append(near.fileno())

    def prepare(self, spec: MachineSpec) -> None:
        """Create the overlay and the VM's own initrd (or NoCloud seed)."""
        assert spec.template is not None and spec.host_key is not None
        self._create_overlay()
        if self.launch.seed is not None:
            self._ledger.add("file", f"seed {self.name}", path=self.launch.seed)
            write_seed(Path(self.launch.seed), spec, user=self._ssh_user)
            (self.workdir / "console.log").touch()
            (self.workdir / "known_hosts.pub").write_text(self._host_key_line + "\n")
            return
        own = vm_files(spec)
        if self.launch.vm_files is not None:  # the shared initrd, and these through fw_cfg
            path = Path(self.launch.vm_files)
            self._ledger.add("file", f"files of {self.name}", path=str(path))
            with path.open("wb") as out:
                os.fchmod(out.fileno(), 0o600)  # it holds the VM's private host key
                out.write(cpio_of(own))
        else:
            if self.launch.agent is not None:
                own += agent_files()
            self._ledger.add("file", f"initrd {self.name}", path=str(self.initrd))
            write_initrd(self.initrd, spec.template.initrd, cpio_of(own, prefix_for(spec.template)))
        (self.workdir / "console.log").touch()
        (self.workdir / "known_hosts.pub").write_text(self._host_key_line + "\n")

    def _create_overlay(self) -> None:
        """The copy-on-write overlay over the template's disk."""
        qemu_img = require("qemu-img", "to create copy-on-write overlays")
        self._ledger.add("file", f"overlay {self.name}", path=str(self.overlay))
        run([qemu_img, "create", "-q", "-f", "qcow2", "-F", self.launch.base_format, "-b",
             self.launch.base_disk, str(self.overlay)],
            what=f"creating the overlay of {self.name}", error=ProviderError)

    def adopt(self, info: dict[str, Any], *, unplug_nics: bool) -> None:
        """Take over the process recorded in ``machine.json`` (if it still runs)."""
        self._adopted = True
        self._unplugged = unplug_nics
        pid, start = info.get("pid"), info.get("start")
        if isinstance(pid, int) and isinstance(start, int) and procs.is_alive(pid, start):
            self._proc = procs.Adopted(pid, start)
            self._state = MachineState.RUNNING
            ssh = info.get("ssh", {})
            self._ssh_port = ssh.get("port") if isinstance(ssh.get("port"), int) else None
            self._forwards = {int(g): int(h) for g, h in info.get("forwards", {}).items()}
        else:
            self._state = MachineState.STOPPED

    @property
    def ssh_user(self) -> str:
        """The user SSH logs in as."""
        return self._ssh_user

    @property
    def console_log(self) -> Path:
        return Path(self.launch.console)

    @property
    def qemu_log(self) -> Path:
        return self.workdir / "qemu.log"

    def boot_initrd(self) -> Path:
        return self.initrd

    def fabric_fds(self) -> list[int]:
        return [sock.fileno() for sock in self._fabric_ends]

    def channel(self, user_key: paramiko.PKey | None) -> Channel:
        """The guest agent where the VM has one, else SSH."""
        if self.launch.agent is not None:
            return AgentChannel(self.name, Path(self.launch.agent), self.check_alive)
        return self.ssh_channel(user_key)

    def ssh_channel(self, user_key: paramiko.PKey | None) -> SSHChannel:
        """SSH to the guest, with its host key pinned (whatever channel commands use)."""
        if user_key is None:
            raise ConfigError(f"{self.name}: an SSH key is needed to reach a QEMU machine")
        return SSHChannel(self.name, self.ssh_endpoint, self._ssh_user, user_key,
                          public_key_from_line(self._host_key_line), self.check_alive)

    def on_ready(self, channel: Channel) -> None:
        """Append the guest's kernel log to the console log if the kernel booted ``quiet``.

        A quiet kernel prints only errors on the serial console (it boots faster:
        see benchmarks/console.py); its whole log is read over the channel once the
        guest answers, so the console log still tells the boot's story.
        """
        if "quiet" not in self.launch.cmdline.split():
            return
        result = channel.run("dmesg", timeout=20)
        with self.console_log.open("a") as console:
            console.write("\n--- kernel log (dmesg), read over the command channel once the "
                          "guest answered: this kernel booted quiet ---\n")
            console.write(result.stdout if result.rc == 0 else
                          f"(dmesg failed with exit status {result.rc}: {result.stderr})\n")
            console.write("--- end of the kernel log ---\n")

    def shell_hint(self, lab_id: str, base: Path) -> str:
        return f"vboxlab ssh {lab_id} {self.name} --lab-dir {base}"

    def _wiring(self) -> NicWiring:
        fd_nics = [n for n in self.launch.nics if n.backend in ("fd", "vhost-user")]
        if not fd_nics:
            return NicWiring()
        if self._adopted:
            if not self._unplugged:
                names = ", ".join(n.name for n in fd_nics)
                raise NotSupported(
                    f"{self.name} was wired to its lab's network ({names}); that network's "
                    "fabric ended with the run that made it, so QEMU cannot be started with "
                    "those NICs connected. Restore it with its lab NICs unplugged (vboxlab "
                    "snapshots restore --unplugged: the links come up down, eth0 and SSH "
                    "work), or keep the whole lab running with --lab-keep")
            return NicWiring(unplugged=True)
        return NicWiring(fds=tuple(self._nic_fds))

    # -- life -----------------------------------------------------------
    def start(self, loadvm: str | None = None) -> None:
        """Start QEMU and connect QMP; returns once the VM runs (not yet booted).

        With ``loadvm``, QEMU resumes from that snapshot instead of booting.
        """
        if self.state() is MachineState.RUNNING:
            raise ProviderError(f"{self.name} is already running")
        wiring = self._wiring()
        if wiring.unplugged and any(n.backend == "vhost-user" for n in self.launch.nics):
            wiring = dataclasses.replace(wiring, stand_in=self._start_stand_in())
        argv = build_argv(self.launch, wiring, loadvm=loadvm)
        self.qmp_path.unlink(missing_ok=True)
        self._proc_rid = self._ledger.add("process", f"qemu {self.name}")
        self._ledger.add("socket", f"qmp {self.name}", path=str(self.qmp_path))
        if self.launch.agent is not None:
            Path(self.launch.agent).unlink(missing_ok=True)
            self._ledger.add("socket", f"agent {self.name}", path=self.launch.agent)
        self._log.info("%s: starting %s", self.name, " ".join(argv))
        try:
            if self._adopted:  # outlives this short-lived process (the CLI)
                pid = procs.spawn_detached(argv, self.qemu_log)
                self._proc = procs.Adopted(pid, procs.start_time(pid))
            else:
                self._stderr = self.qemu_log.open("ab")
                self._proc = procs.spawn(argv, tied=self.tied, stderr=self._stderr,
                                         cwd=self.workdir, pass_fds=wiring.fds)
        except OSError as exc:
            raise HostError(f"could not run {self.launch.binary}: {exc}") from exc
        self._ledger.set(self._proc_rid, pid=self._proc.pid,
                         start=procs.start_time(self._proc.pid))
        self._state = MachineState.RUNNING
        try:
            self._qmp = wait_until(self._connect_qmp, timeout=30, what=f"QMP of {self.name}",
                                   interval=0.02, abort=self._abort_if_dead)
            self._ssh_port = self._forward_for(self.launch.ssh_port)
            if wiring.unplugged:
                for index, _ in enumerate(self.launch.nics):
                    self.qmp("set_link", name=f"lab{index}", up=False)
        except BaseException:
            self.kill()
            raise
        self._write_info()

    def _start_stand_in(self) -> tuple[str, ...]:
        """A fabric of this VM's own for its vhost-user NICs while they are unplugged.

        QEMU restores a vhost-user NIC's state only onto a vhost-user back end ("saved image
        requires vnet_hdr=on" otherwise), and the lab's fabric ended with its run. This one
        carries nothing: each port is alone on its segment, both its directions down. Like
        the VM it outlives this process; the lab's ledger has it, so `vboxlab clean` ends it.
        """
        from vboxlab.net.fabric import Fabric

        # in the VM's own folder, beside qmp.sock and agent.sock (a UNIX socket's path is
        # at most 107 bytes: no deeper)
        fabric = Fabric(self.workdir, tied=False, ledger=self._ledger)
        fabric.start()
        paths = []
        try:
            vhost = [n for n in self.launch.nics if n.backend == "vhost-user"]
            for port, nic in enumerate(vhost):
                path = self.workdir / f"{nic.name}.vu"
                fabric.add_vport(port, port, path)
                fabric.set(f"p{port}.in", up=0)
                fabric.set(f"p{port}.out", up=0)
                paths.append(str(path))
        except BaseException:
            fabric.close()
            raise
        fabric.detach()
        return tuple(paths)

    def _connect_qmp(self) -> QmpConnection | None:
        if not self.qmp_path.exists():
            return None
        qmp = QmpConnection(self.qmp_path, f"vboxlab-{self.name}")
        try:
            qmp.connect(timeout=5)
        except Exception:
            qmp.close()
            return None
        return qmp

    def _abort_if_dead(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._state = MachineState.CRASHED
            raise ProviderError(
                f"{self.name}: QEMU exited with status {self._proc.returncode} while starting: "
                f"{self._qemu_errors()}")

    def _qemu_errors(self) -> str:
        try:
            return self.qemu_log.read_text(errors="replace").strip()[-1500:] or "(no message)"
        except FileNotFoundError:
            return "(no message)"

    def hmp(self, command: str) -> str:
        """Run a human-monitor command through QMP."""
        qmp = self._require_qmp()
        try:
            result: Any = qmp.cmd("human-monitor-command", {"command-line": command})
        except Exception as exc:
            self._check_died()
            raise ProviderError(f"{self.name}: monitor command {command!r} failed: {exc}") from exc
        return str(result)

    def qmp(self, command: str, **arguments: Any) -> Any:
        """Run one QMP command and return its result."""
        qmp = self._require_qmp()
        try:
            return qmp.cmd(command, arguments)
        except Exception as exc:
            self._check_died()
            raise ProviderError(f"{self.name}: QMP {command} failed: {exc}") from exc

    # -- snapshots ------------------------------------------------------
    def _run_job(self, command: str, timeout: float, **arguments: Any) -> None:
        """Run a QMP job to its end; raise ProviderError with QEMU's reason if it failed."""
        self._job_counter += 1
        try:
            run_job(self._require_qmp(), command, f"{command}-{self._job_counter}", timeout,
                    **arguments)
        except Exception as exc:
            self._check_died()
            raise ProviderError(f"{self.name}: {exc}") from exc

    def snapshot_save(self, tag: str, timeout: float = 120) -> None:
        """Save memory, devices and disk as snapshot ``tag`` (replacing none)."""
        if any(s["name"] == tag for s in self.snapshot_list()):
            raise ProviderError(f"{self.name}: a snapshot called {tag!r} exists already")
        self._run_job("snapshot-save", timeout, **snapshot_args(tag, DISK_NODE))

    def snapshot_load(self, tag: str, timeout: float = 120) -> None:
        """Return the whole machine to snapshot ``tag``; it runs on afterwards."""
        self._run_job("snapshot-load", timeout, **snapshot_args(tag, DISK_NODE))
        if self.qmp("query-status")["status"] != "running":
            self.qmp("cont")

    def snapshot_delete(self, tag: str, timeout: float = 60) -> None:
        """Delete snapshot ``tag`` from the disk (through qemu-img when QEMU is not running)."""
        if self.state() is not MachineState.RUNNING:
            offline_delete(self.overlay, tag)
            return
        self._run_job("snapshot-delete", timeout, **snapshot_args(tag, DISK_NODE, False))

    def snapshot_list(self) -> list[dict[str, Any]]:
        """Snapshots in the disk, as QEMU lists them: name, vm-state-size, date-sec, ..."""
        if self.state() is not MachineState.RUNNING:
            return offline_snapshots(self.overlay)
        return block_snapshots(self.qmp("query-named-block-nodes", flat=True))

    def _require_qmp(self) -> QmpConnection:
        self.check_alive()
        if self._qmp is None and self._adopted:
            qmp = self._connect_qmp()
            if qmp is None:
                raise ProviderError(f"cannot reach the QMP socket of {self.name} "
                                    f"({self.qmp_path})")
            self._qmp = qmp
        if self._qmp is None:
            raise ProviderError(f"{self.name} is not running")
        return self._qmp

    def _forwards_now(self) -> list[tuple[int, int]]:
        return forwards_in(self.hmp("info usernet"))

    def _forward_for(self, guest_port: int) -> int:
        for host, guest in self._forwards_now():
            if guest == guest_port:
                return host
        raise ProviderError(f"{self.name}: QEMU reports no forward to guest port {guest_port}")

    def forward_port(self, guest_port: int) -> int:
        """Forward a port on 127.0.0.1 to ``guest_port`` in the guest; returns the host port."""
        if not isinstance(guest_port, int) or not 0 < guest_port < 65536:
            raise ConfigError(f"guest port must be 1..65535, got {guest_port!r}")
        if guest_port in self._forwards:
            return self._forwards[guest_port]
        before = {h for h, _ in self._forwards_now()}
        reply = self.hmp(f"hostfwd_add n0 tcp:127.0.0.1:0-:{guest_port}")
        if reply.strip():
            raise ProviderError(f"{self.name}: could not forward guest port {guest_port}: {reply}")
        new = [h for h, g in self._forwards_now() if g == guest_port and h not in before]
        if not new:
            raise ProviderError(f"{self.name}: forward to guest port {guest_port} not found")
        self._forwards[guest_port] = new[0]
        self._write_info()
        return new[0]

    def ssh_endpoint(self) -> tuple[str, int]:
        if self._ssh_port is None:
            raise ProviderError(f"{self.name} is not running")
        return "127.0.0.1", self._ssh_port

    def state(self) -> MachineState:
        with self._life:
            if self._state is MachineState.RUNNING and self._proc is not None and \
                    self._proc.poll() is not None:
                self._state = MachineState.CRASHED
                self._reap_locked()
            return self._state

    def _check_died(self, grace: float = 2.0) -> None:
        """After a QMP failure: if QEMU is ending, wait for it and raise MachineDied."""
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
        self.check_alive()

    def check_alive(self) -> None:
        state = self.state()
        if state is not MachineState.RUNNING:
            code = self._proc.returncode if self._proc is not None else self._last_returncode
            raise MachineDied(
                f"{self.name} is not running ({state.value}, QEMU exit status {code}). "
                f"QEMU said: {self._qemu_errors()}\n--- last console lines ---\n"
                f"{tail(self.console_log)}")

    def stop(self, timeout: float = 30) -> None:
        """Power off through ACPI, then quit, then kill: whatever ends QEMU first."""
        if self._proc is None or self.state() is not MachineState.RUNNING:
            self._reap()
            return
        self._state = MachineState.STOPPED
        proc = self._proc
        steps: list[tuple[str, float]] = [("system_powerdown", timeout), ("quit", 5)]
        for command, wait in steps:
            if proc.poll() is not None:
                break
            try:
                qmp = self._qmp or (self._connect_qmp() if self._adopted else None)
                self._qmp = qmp
                if qmp is not None:
                    qmp.cmd(command)
            except Exception as exc:
                self._log.info("%s: QMP %s: %s", self.name, command, exc)
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        if proc.poll() is None:
            proc.kill()
        self._reap()

    def wait_exit(self, timeout: float) -> bool:
        """Wait for QEMU to end by itself (the guest powered off); True if it did."""
        if self._proc is None:
            return True
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        self._state = MachineState.STOPPED
        self._reap()
        return True

    def kill(self) -> None:
        """End QEMU at once (SIGKILL)."""
        with self._life:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
                if self._state is MachineState.RUNNING:
                    self._state = MachineState.STOPPED
            self._reap_locked()

    def _reap(self) -> None:
        with self._life:
            self._reap_locked()

    def _reap_locked(self) -> None:
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._last_returncode = self._proc.returncode
            if self._proc_rid is not None:
                self._ledger.done(self._proc_rid)
                self._proc_rid = None
            self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self._forwards.clear()
        self._ssh_port = None

    def destroy(self) -> None:
        """Kill QEMU, close the NIC sockets and delete the VM's files."""
        self.kill()
        self.detach()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def detach(self) -> None:
        """Close QMP and this process's NIC sockets; QEMU, if running, keeps its own."""
        with self._life:
            if self._qmp is not None:
                self._qmp.close()
                self._qmp = None
        for sock in self._own_sockets:
            sock.close()
        self._own_sockets.clear()
        self._fabric_ends.clear()

    def _write_info(self) -> None:
        proc = self._proc
        info = {
            "name": self.name,
            "provider": "qemu",
            "template": self.template[0],
            "version": self.template[1],
            "pid": proc.pid if proc else None,
            "start": procs.start_time(proc.pid) if proc else None,
            "ssh": {"host": "127.0.0.1", "port": self._ssh_port,
                    "guest_port": self.launch.ssh_port, "user": self._ssh_user},
            "forwards": {str(g): h for g, h in self._forwards.items()},
            "launch": self.launch.to_dict(),
            "qmp": str(self.qmp_path),
            "updated": time.time(),
        }
        tmp = self.workdir / f".{INFO_FILE}.tmp"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(self.workdir / INFO_FILE)


def _uefi_code() -> str:
    from vboxlab.media.bootloaders import ovmf_firmware

    return str(ovmf_firmware())


def _backend(nic: NicSpec) -> str:
    """How QEMU reaches a lab NIC's other end (qemu_argv.LaunchNic.backend)."""
    if nic.vde is not None:
        return "vde"
    return "fd" if nic.vhost is None else "vhost-user"
