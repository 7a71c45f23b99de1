"""The QEMU provider: qemu-system-x86_64 driven through QMP (the ``qemu.qmp`` package).

Each VM gets, in its work folder: a qcow2 overlay over the template's base
disk (the template is never written), an initramfs made of the template's
archive plus a small per-VM archive (host key, authorized key, hostname), the
serial console in ``console.log``, QEMU's stderr in ``qemu.log`` and the QMP
socket. SSH reaches the guest through a user-mode network forward bound to
127.0.0.1 on a port the kernel picks (no races between parallel runs).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from vboxlab import procs
from vboxlab.accel import AccelChoice, choose
from vboxlab.errors import HostError, MachineDied, ProviderError
from vboxlab.hosttools import QEMU_BINARY, require, run
from vboxlab.ledger import Ledger
from vboxlab.logs import tail
from vboxlab.providers.base import MachineSpec, MachineState
from vboxlab.providers.qmp import QmpConnection, run_job, snapshot_args
from vboxlab.templates.cpio import CpioWriter
from vboxlab.waiting import wait_until

MAX_SOCKET_PATH = 107
DISK_NODE = "disk0"
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
    return [{"name": s["name"], "vm-state-size": s.get("vm-state-size", 0)}
            for s in json.loads(out).get("snapshots", [])]


def offline_delete(overlay: Path, tag: str) -> None:
    """Delete a snapshot from a disk no QEMU is running on (``qemu-img snapshot -d``)."""
    run([require("qemu-img", "to edit snapshots"), "snapshot", "-d", tag, str(overlay)],
        what=f"deleting snapshot {tag} of {overlay}", error=ProviderError)


class QemuProvider:
    """Creates QEMU machines; picks KVM only when the probe shows it works."""

    name = "qemu"

    def __init__(self, accel: str = "auto", binary: str | None = None) -> None:
        if accel not in ("auto", "kvm", "tcg"):
            raise ProviderError(f"unknown accelerator {accel!r}; use auto, kvm or tcg")
        self.binary = binary or require(QEMU_BINARY, "to run QEMU virtual machines")
        self.requested_accel = accel
        self._accel: AccelChoice | None = None

    def accel_for(self, kernel: Path, log: logging.Logger) -> AccelChoice:
        if self._accel is None:
            self._accel = choose(self.requested_accel, self.binary, kernel)
            log.info("QEMU accelerator: %s (%s)", self._accel.accel, self._accel.reason)
        return self._accel

    def create(self, spec: MachineSpec, ledger: Ledger) -> QemuMachine:
        accel = self.accel_for(spec.template.kernel, spec.log)
        return QemuMachine(self.binary, accel.accel, spec, ledger)


class QemuMachine:
    """One QEMU VM: its files, its process and its QMP connection."""

    can_snapshot = True
    powers_off_by_command = True

    def __init__(self, binary: str, accel: str, spec: MachineSpec, ledger: Ledger) -> None:
        self.name = spec.name
        self.spec = spec
        self._binary = binary
        self._accel = accel
        self._ledger = ledger
        self._log = spec.log
        self._proc: subprocess.Popen[bytes] | None = None
        self._proc_rid: int | None = None
        self._qmp: QmpConnection | None = None
        self._state = MachineState.CREATED
        self._ssh_port: int | None = None
        self._forwards: dict[int, int] = {}
        self._job_counter = 0
        self._last_returncode: int | None = None
        self._life = threading.RLock()  # state changes may come from a watchdog thread
        self._stderr: io.BufferedWriter | None = None
        work = spec.workdir
        self.qmp_path = work / "qmp.sock"
        if len(str(self.qmp_path)) > MAX_SOCKET_PATH:
            raise ProviderError(
                f"lab folder {work} is too deep: the QMP socket path would be "
                f"{len(str(self.qmp_path))} bytes, over the {MAX_SOCKET_PATH}-byte limit of UNIX "
                "sockets; choose a shorter --lab-dir")
        self.overlay = work / "disk.qcow2"
        self.initrd = work / "initrd.img"
        self._prepare()

    # -- files ----------------------------------------------------------
    def _prepare(self) -> None:
        work = self.spec.workdir
        qemu_img = require("qemu-img", "to create copy-on-write overlays")
        self._ledger.add("file", f"overlay {self.name}", path=str(self.overlay))
        run([qemu_img, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
             str(self.spec.template.disk), str(self.overlay)],
            what=f"creating the overlay of {self.name}", error=ProviderError)
        extra = io.BytesIO()
        cpio = CpioWriter(extra)
        for name, data, mode in self._vm_files():
            if self._files_prefix:
                cpio.add_tree_dirs(str(Path(self._files_prefix + name).parent))
            cpio.add_file(self._files_prefix + name, data, mode)
        cpio.close()
        self._ledger.add("file", f"initrd {self.name}", path=str(self.initrd))
        with self.initrd.open("wb") as out, self.spec.template.initrd.open("rb") as base:
            shutil.copyfileobj(base, out, 1 << 20)
            # the kernel reads a following cpio only at a 4-byte boundary (zeros are skipped):
            # a compressed base (Debian's zstd initrd) ends anywhere
            out.write(b"\0" * (-out.tell() % 512))
            out.write(extra.getvalue())
        self.initrd.chmod(0o600)  # it holds the VM's private host key
        (work / "console.log").touch()

    @property
    def _files_prefix(self) -> str:
        """Where the per-VM files go in the appended cpio: the initramfs is the root
        (initramfs templates), or a hook copies ``vboxlab/root/`` into the root disk."""
        into = self.spec.template.template.definition.boot.files_into
        return "vboxlab/root/" if into == "rootfs" else ""

    def _vm_files(self) -> list[tuple[str, bytes, int]]:
        """This VM's own files: host key, authorized key, names, lab interfaces and routes."""
        spec = self.spec
        files = [
            ("etc/ssh/ssh_host_ed25519_key", spec.host_key.private_openssh, 0o600),
            ("etc/ssh/ssh_host_ed25519_key.pub", spec.host_key.public_line.encode() + b"\n",
             0o644),
            ("etc/ssh/authorized_keys", spec.authorized_key.encode() + b"\n", 0o644),
            ("etc/hostname", self.name.encode() + b"\n", 0o644),
            ("etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {self.name}\n{spec.hosts}".encode(),
             0o644),
            ("etc/vboxlab/interfaces", "".join(f"{nic.name} {nic.address or '-'} {nic.mac}\n"
                                               for nic in spec.nics).encode(), 0o644),
            ("etc/vboxlab/routes", "".join(f"{network} {via}\n"
                                           for network, via in spec.routes).encode(), 0o644),
        ]
        if spec.forward:
            files.append(("etc/vboxlab/forward", b"1\n", 0o644))
        return files

    @property
    def console_log(self) -> Path:
        return self.spec.workdir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.spec.workdir / "qemu.log"

    def _boot_argv(self) -> list[str]:
        """The template's kernel and initrd, or boot media (CD or USB stick, BIOS or UEFI)."""
        spec = self.spec
        media = spec.media
        if media is None:
            return ["-kernel", str(spec.template.kernel), "-initrd", str(self.initrd),
                    "-append", spec.template.template.definition.boot.cmdline]
        from vboxlab.media.bootloaders import ovmf_firmware

        argv = ["-bios", str(ovmf_firmware())] if media.firmware == "uefi" else []
        drive = f"if=none,id=media0,format=raw,readonly=on,file={media.path}"
        if media.kind == "cdrom":
            return [*argv, "-drive", f"{drive},media=cdrom",
                    "-device", "ide-cd,drive=media0,bootindex=0"]
        return [*argv, "-device", "qemu-xhci,id=usb", "-drive", drive,
                "-device", "usb-storage,bus=usb.0,drive=media0,bootindex=0,removable=on"]

    def _argv(self, loadvm: str | None = None) -> list[str]:
        spec = self.spec
        definition = spec.template.template.definition
        work = spec.workdir
        argv = [
            self._binary, "-name", f"{spec.name},process=vboxlab-{spec.name}"[:64],
            "-nodefaults", "-no-user-config", "-machine", "q35", "-accel", self._accel,
            "-m", str(spec.memory), "-smp", str(spec.cpus), "-display", "none",
            *self._boot_argv(),
            "-chardev", f"file,id=con,path={work / 'console.log'},append=on",
            "-serial", "chardev:con", "-no-reboot",
            "-blockdev", f"driver=file,filename={self.overlay},node-name=file0,"
                         "cache.direct=off,cache.no-flush=on",
            "-blockdev", f"driver=qcow2,file=file0,node-name={DISK_NODE}",
            "-device", f"virtio-blk-pci,drive={DISK_NODE}",
            "-netdev",
            f"user,id=n0,hostfwd=tcp:127.0.0.1:0-:{definition.access.port}",
            "-device", "virtio-net-pci,netdev=n0",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]
        for index, nic in enumerate(spec.nics):
            backend = (f"vde,id=lab{index},sock={nic.vde}" if nic.vde is not None else
                       f"dgram,id=lab{index},local.type=fd,local.str={nic.fd}")
            argv += ["-netdev", backend,
                     "-device", f"virtio-net-pci,netdev=lab{index},mac={nic.mac}"]
        if self._accel == "kvm":
            argv += ["-cpu", "host"]
        if loadvm is not None:
            argv += ["-loadvm", loadvm]
        return argv

    # -- life -----------------------------------------------------------
    def start(self, loadvm: str | None = None) -> None:
        """Start QEMU and connect QMP; returns once the VM runs (not yet booted).

        With ``loadvm``, QEMU resumes from that snapshot instead of booting.
        """
        if self.state() is MachineState.RUNNING:
            raise ProviderError(f"{self.name} is already running")
        self.qmp_path.unlink(missing_ok=True)
        self._proc_rid = self._ledger.add("process", f"qemu {self.name}",
                                          marker=f"{self.spec.workdir}/")
        self._ledger.add("socket", f"qmp {self.name}", path=str(self.qmp_path))
        self._stderr = self.qemu_log.open("ab")
        argv = self._argv(loadvm)
        self._log.info("%s: starting %s", self.name, " ".join(argv))
        try:
            self._proc = procs.spawn(argv, tied=self.spec.tied, stderr=self._stderr,
                                     cwd=self.spec.workdir,
                                     pass_fds=[nic.fd for nic in self.spec.nics if nic.vde is None])
        except OSError as exc:
            raise HostError(f"could not run {self._binary}: {exc}") from exc
        self._ledger.set(self._proc_rid, pid=self._proc.pid,
                         start=procs.start_time(self._proc.pid))
        self._state = MachineState.RUNNING
        try:
            self._qmp = wait_until(self._connect_qmp, timeout=30, what=f"QMP of {self.name}",
                                   interval=0.02, abort=self._abort_if_dead)
            self._ssh_port = self._forward_for(self.spec.template.template.definition.access.port)
        except BaseException:
            self.kill()
            raise
        self._write_info()

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
                self._reap()
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
                if self._qmp is not None:
                    self._qmp.cmd(command)
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
            self._reap()

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
        """Kill QEMU and delete the VM's files."""
        self.kill()
        shutil.rmtree(self.spec.workdir, ignore_errors=True)

    def _write_info(self) -> None:
        info = {
            "name": self.name,
            "template": self.spec.template.template.name,
            "version": self.spec.template.template.version,
            "pid": self._proc.pid if self._proc else None,
            "ssh": {"host": "127.0.0.1", "port": self._ssh_port,
                    "guest_port": self.spec.template.template.definition.access.port,
                    "user": self.spec.template.template.definition.access.user},
            "forwards": {str(g): h for g, h in self._forwards.items()},
            "argv": self._argv(),
            "qmp": str(self.qmp_path),
            "updated": time.time(),
        }
        (self.spec.workdir / "machine.json").write_text(json.dumps(info, indent=2) + "\n")

