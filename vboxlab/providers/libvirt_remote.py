"""A libvirt machine on a remote host (``--lab-libvirt-uri qemu+ssh://USER@HOST/system``).

The machine is prepared here as every QEMU machine is (its own files with keys),
then its files go to the host (:class:`~vboxlab.providers.remote_host.RemoteHost`):
the template's disk, kernel and shared initrd as content-addressed blobs, uploaded
once per host and reused by every later machine; its own files into its folder there; its
overlay made there with the host's ``qemu-img``. The domain is the local one's
with the host's paths, and differs in three ways:

* the serial console is a pty that libvirt streams to this machine's
  ``console.log`` (the domain starts paused until the stream is open, so no
  line is lost);
* commands and files go over SSH through the host: the guest's SSH forward on
  the host's loopback is served on this machine's 127.0.0.1 through the host's
  SSH connection, with the guest's host key pinned as ever (the guest agent's
  socket would be the host's, so remote machines use SSH); ``forward_port``
  gives a port on this machine the same way;
* lab NICs are ports of the fabric the lab runs on that host
  (:mod:`vboxlab.net.fabric.remote`): QEMU and the fabric talk over the host's
  loopback, and segments shared with other hosts are joined by tunnels
  (:mod:`vboxlab.net.fabric.fabricset`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import posixpath
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vboxlab.errors import NotSupported, ProviderError
from vboxlab.providers.base import Capability, MachineSpec, MachineState
from vboxlab.providers.libvirt import LibvirtMachine, _libvirt
from vboxlab.providers.libvirt_xml import domain_xml
from vboxlab.providers.qemu import snapshots_in_info
from vboxlab.providers.qemu_argv import QemuLaunch
from vboxlab.providers.remote_host import RemoteHost, file_digest
from vboxlab.templates.trust import qemu_img_info

if TYPE_CHECKING:
    import libvirt


class RemoteLibvirtMachine(LibvirtMachine):
    """One VM as a transient domain of a remote host's libvirtd."""

    capabilities = frozenset({Capability.SNAPSHOTS, Capability.PORT_FORWARD,
                              Capability.RESTART, Capability.GUEST_POWEROFF,
                              Capability.LAB_NICS})

    def __init__(self, *args: Any, remote: RemoteHost, lab_id: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.remote = remote
        self.lab_id = lab_id
        self.remote_dir = ""
        self._remote_launch: QemuLaunch | None = None
        self._remote_rid: int | None = None
        self._ssh_local: int | None = None
        self._local_forwards: dict[int, int] = {}  # guest port -> port on this machine
        self._console: threading.Thread | None = None

    def __repr__(self) -> str:
        return (f"<RemoteLibvirtMachine {self.name} {self.state().value} ({self.domain_name} "
                f"on {self.remote.target.label})>")

    # -- files ----------------------------------------------------------
    def _nic_end(self) -> tuple[socket.socket, str, int]:
        raise NotSupported(f"{self.name}: a machine on {self.remote.target.label} joins lab "
                           "networks through the fabric on that host, which a topology starts; "
                           "its NICs cannot be wired one by one")

    def _create_overlay(self) -> None:
        """Made on the host, in :meth:`prepare`, once the template's disk is there."""

    def prepare(self, spec: MachineSpec) -> None:
        """The VM's files here (as any QEMU machine's), then everything the domain reads on
        the host: template blobs and the shared initrd (once per host), the VM's own files
        (or its own initrd), the overlay."""
        assert spec.template is not None
        super().prepare(spec)
        remote, built = self.remote, spec.template
        self.remote_dir = remote.machine_dir(self.lab_id, self.name)
        self._remote_rid = self._ledger.add("remote-dir", f"{self.name} on "
                                            f"{remote.target.label}", uri=remote.target.uri,
                                            path=self.remote_dir)
        digests = built.manifest.get("files", {})
        what = f"template {built.template.name} {built.template.version}"
        base = remote.upload_blob(built.disk, digests.get("disk.qcow2") or
                                  file_digest(built.disk), label=f"the disk of {what}")
        chain = tuple(  # a layer's bases: blobs too, opened explicitly by the domain
            remote.upload_blob(b.disk, b.manifest.get("files", {}).get("disk.qcow2") or
                               file_digest(b.disk),
                               label=f"the disk of {b.template.name} {b.template.version}")
            for b in built.bases)
        assert self.launch.kernel is not None
        kernel_file = Path(self.launch.kernel)
        kernel = remote.upload_blob(kernel_file, file_digest(kernel_file),
                                    label=f"the kernel of {what}")
        if self.launch.vm_files is not None:  # the shared initrd once per host, files per VM
            initrd = remote.upload_blob(self.initrd, file_digest(self.initrd),
                                        label=f"the initrd of {what}")
            own = posixpath.join(self.remote_dir, "vm-files.cpio")
            remote.put(Path(self.launch.vm_files), own)
            vm_files: str | None = own
        else:
            initrd = posixpath.join(self.remote_dir, "initrd.img")
            vm_files = None
            remote.put(self.initrd, initrd)
        overlay = posixpath.join(self.remote_dir, "disk.qcow2")
        qemu_img = remote.which("qemu-img", "to create overlays")
        # -u with the size: the blob's own header names its base by a path that exists only
        # in a template cache, so qemu-img must not open the chain to find the size
        size = str(qemu_img_info(built.disk, what, self.launch.base_format)["virtual-size"])
        remote.run([qemu_img, "create", "-q", "-u", "-f", "qcow2", "-F",
                    self.launch.base_format, "-b", base, overlay, size],
                   what=f"creating the overlay of {self.name}")
        firmware = self.launch.kernel_firmware
        if firmware is not None and not remote.exists(firmware):
            firmware = None  # SeaBIOS then: slower to the kernel, same machine
        self._remote_launch = dataclasses.replace(
            self.launch, binary=remote.which("qemu-system-x86_64", "to run VMs"),
            overlay=overlay, base_disk=base, base_chain=chain, kernel=kernel, initrd=initrd,
            vm_files=vm_files,
            console=posixpath.join(self.remote_dir, "console.log"), kernel_firmware=firmware,
            agent=None)

    # -- life -----------------------------------------------------------
    def _domain_xml(self, loadvm: str | None) -> str:
        if self._remote_launch is None:
            raise ProviderError(f"{self.name}: not prepared on {self.remote.target.label}")
        return domain_xml(self._remote_launch, self.domain_name, owner=str(self.workdir),
                          loadvm=loadvm, udp_nics=self._udp_nics, console_pty=True)

    def _create_domain(self, connection: libvirt.virConnect, xml: str) -> libvirt.virDomain:
        """Start paused, attach the console stream, then run: the console misses nothing."""
        lv = _libvirt()
        domain = connection.createXML(xml, lv.VIR_DOMAIN_START_AUTODESTROY |
                                      lv.VIR_DOMAIN_START_PAUSED)
        console: libvirt.virConnect | None = None
        mirrored = False
        try:
            # a connection of its own: a blocking stream read shares a connection badly (an
            # API call on it from another thread could wait for ever behind the read)
            console = lv.open(self.remote.target.libvirt_uri())
            stream = console.newStream(0)
            console.lookupByUUID(domain.UUID()).openConsole(None, stream, 0)
            self._console = threading.Thread(target=self._mirror_console,
                                             args=(console, stream),
                                             name=f"console-{self.name}", daemon=True)
            self._console.start()
            mirrored = True
            domain.resume()
        except BaseException:
            with contextlib.suppress(lv.libvirtError):
                domain.destroy()
            if console is not None and not mirrored:
                with contextlib.suppress(lv.libvirtError):
                    console.close()
            raise
        return domain

    def _mirror_console(self, console: libvirt.virConnect, stream: libvirt.virStream) -> None:
        """Append what the guest writes on its serial console to ``console.log`` until the
        domain ends; then close the console's connection."""
        lv = _libvirt()
        with self.console_log.open("ab") as out:
            while True:
                try:
                    data = stream.recv(65536)
                except lv.libvirtError:
                    break
                if not isinstance(data, bytes) or not data:
                    break
                out.write(data)
                out.flush()
        with contextlib.suppress(lv.libvirtError):
            stream.abort()
        with contextlib.suppress(lv.libvirtError):
            console.close()

    def _started(self) -> None:
        assert self._ssh_port is not None
        self._ssh_local = self.remote.forward_local(self._ssh_port)

    def ssh_endpoint(self) -> tuple[str, int]:
        if self._ssh_local is None:
            raise ProviderError(f"{self.name} is not running")
        return "127.0.0.1", self._ssh_local

    def _domain_pid(self) -> int | None:
        return None  # a process of another host: nothing this machine can check or kill

    def _published_ports(self) -> tuple[int | None, dict[int, int]]:
        """The tunnels on this machine (they live as long as this process)."""
        return self._ssh_local, self._local_forwards

    def forward_port(self, guest_port: int) -> int:
        """A port on this machine's 127.0.0.1 reaching ``guest_port`` (through the host)."""
        if guest_port not in self._local_forwards:
            on_host = super().forward_port(guest_port)
            self._local_forwards[guest_port] = self.remote.forward_local(on_host)
            self._write_info()
        return self._local_forwards[guest_port]

    def _ended(self) -> None:
        for port in [*self._local_forwards.values(), self._ssh_local]:
            if port is not None:
                self.remote.close_forward(port)
        self._local_forwards.clear()
        self._ssh_local = None
        super()._ended()

    def destroy(self) -> None:
        super().destroy()
        if self.remote_dir:
            self.remote.remove_machine_dir(self.remote_dir)
            if self._remote_rid is not None:
                self._ledger.done(self._remote_rid)
                self._remote_rid = None

    def _qemu_errors(self) -> str:
        return self.remote.tail(f"/var/log/libvirt/qemu/{self.domain_name}.log", 10) or \
            "(no message)"

    # -- snapshots ------------------------------------------------------
    def _overlay_on_host(self) -> str:
        if self._remote_launch is None:
            raise ProviderError(f"{self.name}: not prepared on {self.remote.target.label}")
        return self._remote_launch.overlay

    def snapshot_list(self) -> list[dict[str, Any]]:
        """The overlay's internal snapshots, read on the host (``qemu-img info -U``)."""
        out = self.remote.run([self.remote.which("qemu-img", "to read snapshots"), "info",
                               "-U", "--output=json", self._overlay_on_host()],
                              what=f"reading the snapshots of {self.name}")
        return snapshots_in_info(out)

    def snapshot_delete(self, tag: str, timeout: float = 60) -> None:
        if self.state() is MachineState.RUNNING:
            super().snapshot_delete(tag, timeout)
            return
        self.remote.run([self.remote.which("qemu-img", "to edit snapshots"), "snapshot", "-d",
                         tag, self._overlay_on_host()],
                        what=f"deleting snapshot {tag} of {self.name}")
