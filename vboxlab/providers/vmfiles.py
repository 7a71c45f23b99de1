"""A VM's own files (host key, authorized key, names, lab interfaces) and how they reach it.

Two ways, chosen by what the template's build supports (its manifest's ``vm_files``):

* ``fw_cfg``: QEMU boots the template's initrd itself, shared by every VM of the template
  (with the guest agent appended once per template and agent build, in the user cache), and
  the VM's few files come as a small cpio through QEMU's firmware configuration device
  (``-fw_cfg name=opt/org.vboxlab/vm``), which the template's early init unpacks from
  ``/sys/firmware/qemu_fw_cfg``. The initrd is then one file that QEMU maps read-only in
  every VM: mapped once, whatever the number of machines.
* ``initrd`` (templates built before, and boot media, which carry no fw_cfg): one initrd per
  VM, the template's with the VM's cpio appended.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import threading
from pathlib import Path

from vboxlab.agent import GUEST_PATH, agent_binary
from vboxlab.paths import cache_dir
from vboxlab.providers.base import MachineSpec
from vboxlab.templates.cpio import CpioWriter
from vboxlab.templates.repository import BuiltTemplate, file_sha256

#: a rootfs template's hook copies this folder of the initramfs onto the root filesystem
ROOTFS_PREFIX = "vboxlab/root/"


def vm_files(spec: MachineSpec) -> list[tuple[str, bytes, int]]:
    """A VM's own files: host key, authorized key, names, lab interfaces and routes."""
    assert spec.host_key is not None
    files = [
        ("etc/ssh/ssh_host_ed25519_key", spec.host_key.private_openssh, 0o600),
        ("etc/ssh/ssh_host_ed25519_key.pub", spec.host_key.public_line.encode() + b"\n", 0o644),
        ("etc/ssh/authorized_keys", spec.authorized_key.encode() + b"\n", 0o644),
        ("etc/hostname", spec.name.encode() + b"\n", 0o644),
        ("etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {spec.name}\n{spec.hosts}".encode(),
         0o644),
        ("etc/vboxlab/interfaces", "".join(f"{nic.name} {nic.address or '-'} {nic.mac}\n"
                                           for nic in spec.nics).encode(), 0o644),
        ("etc/vboxlab/routes", "".join(f"{network} {via}\n"
                                       for network, via in spec.routes).encode(), 0o644),
    ]
    if spec.forward:
        files.append(("etc/vboxlab/forward", b"1\n", 0o644))
    return files


def agent_files() -> list[tuple[str, bytes, int]]:
    """The guest agent, built by this host (so it always speaks this host's protocol)."""
    return [(GUEST_PATH, agent_binary().read_bytes(), 0o755)]


def cpio_of(files: list[tuple[str, bytes, int]], prefix: str = "") -> bytes:
    """A newc archive of ``files`` (path, data, mode), each under ``prefix``."""
    buffer = io.BytesIO()
    cpio = CpioWriter(buffer)
    for name, data, mode in files:
        cpio.add_tree_dirs(str(Path(prefix + name).parent))
        cpio.add_file(prefix + name, data, mode)
    cpio.close()
    return buffer.getvalue()


def write_initrd(target: Path, base: Path, extra: bytes, mode: int = 0o600) -> None:
    """``base`` with the cpio ``extra`` appended, written to ``target`` with ``mode``."""
    with target.open("wb") as out, base.open("rb") as source:
        os.fchmod(out.fileno(), mode)
        shutil.copyfileobj(source, out, 1 << 20)
        # the kernel reads a following cpio only at a 4-byte boundary (zeros are skipped):
        # a compressed base (Debian's zstd initrd) ends anywhere
        out.write(b"\0" * (-out.tell() % 512))
        out.write(extra)


def uses_fw_cfg(built: BuiltTemplate) -> bool:
    """Whether the template's early init reads its VMs' files from fw_cfg."""
    return built.manifest.get("vm_files") == "fw_cfg"


def prefix_for(built: BuiltTemplate) -> str:
    """Where in an appended cpio the files go: the root, or the rootfs hook's folder."""
    return ROOTFS_PREFIX if built.template.definition.boot.files_into == "rootfs" else ""


_shared_lock = threading.Lock()


def shared_initrd(built: BuiltTemplate, *, agent: bool, cache: Path | None = None) -> Path:
    """The initrd every VM of ``built`` boots: the template's own, or (with the agent) the
    template's with the agent appended, made once per template and agent build under
    ``cache`` (default ``<cache>/initrds``; written under a scratch name and renamed, so
    parallel runs never see half)."""
    if not agent:
        return built.initrd
    cache = cache if cache is not None else cache_dir() / "initrds"
    # named by what it is made of, so a VM whose file is already there reads nothing: the
    # template's initrd digest, the agent build (its path holds its source's digest) and where
    # in the initrd the agent goes
    identity = hashlib.sha256()
    identity.update((built.manifest.get("files", {}).get("initrd.cpio")
                     or file_sha256(built.initrd)).encode())
    identity.update(f"\0{agent_binary()}\0{prefix_for(built)}".encode())
    # the name TemplateRepository.remove looks for: NAME-VERSION-16 hex digits.cpio
    target = cache / f"{built.template.name}-{built.template.version}-" \
                     f"{identity.hexdigest()[:16]}.cpio"
    if target.is_file():
        return target
    with _shared_lock:
        if not target.is_file():
            cache.mkdir(parents=True, exist_ok=True, mode=0o700)
            scratch = target.with_name(f".{target.name}.{os.getpid()}")
            write_initrd(scratch, built.initrd, cpio_of(agent_files(), prefix_for(built)),
                         mode=0o644)
            scratch.replace(target)
    return target
