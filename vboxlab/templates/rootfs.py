"""The ``debootstrap`` recipe: a real Debian system on an ext4 disk, booted with its own kernel.

debootstrap installs Debian (systemd, OpenSSH, apt, the packages the definition
lists) into a scratch folder; vboxlab then configures it for labs:

* no SSH host keys of its own (every VM gets its own, pinned) and key-only login;
* eth0 on QEMU's user network, configured statically (10.0.2.15), lab NICs
  (eth1, ...), routes and forwarding from ``/etc/vboxlab`` by ``vboxlab-net.service``;
* an initramfs script that puts the VM's own files (host key, authorized key,
  hostname, hosts, lab interfaces) into the root filesystem before it starts: it
  unpacks them from QEMU's fw_cfg (``qemu_fw_cfg`` is in the initramfs), and copies
  ``/vboxlab/root/`` of the initramfs (the guest agent; on boot media, the VM's files
  too, appended to the initrd).

The image holds ``vmlinuz`` and ``initrd.cpio`` (from the system's /boot) and
``disk.qcow2`` (the root filesystem, made with ``mke2fs -d``, no mounting).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vboxlab.errors import BuildError
from vboxlab.hosttools import require, run
from vboxlab.providers.qemu_argv import FW_CFG_GUEST_PATH
from vboxlab.templates.definition import Template

RECIPE_VERSION = "2"
Progress = Callable[[str], None]
#: always installed: what makes the system bootable, reachable and manageable
BASE_PACKAGES = ("systemd-sysv", "udev", "openssh-server", "iproute2", "ifupdown",
                 "linux-image-amd64", "initramfs-tools", "apt", "ca-certificates", "procps",
                 "kmod", "iputils-ping")

SSHD_CONFIG = """\
# vboxlab: per-VM host key (injected at boot), keys only
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/authorized_keys
UseDNS no
"""
INTERFACES = """\
# vboxlab: eth0 (QEMU's user network, always 10.0.2.15/24 via 10.0.2.2) and the lab NICs are
# configured by vboxlab-net.service as soon as they exist: ifupdown would wait for
# `udevadm settle` (5 s under TCG) and hold its lock for seconds more
auto lo
iface lo inet loopback
"""
HOOK = f"""\
#!/bin/sh
# vboxlab: the VM's own files into the root filesystem: from QEMU's fw_cfg, and what the
# initramfs carries under /vboxlab/root (the guest agent; boot media: the VM's files too)
PREREQ=""
prereqs() {{ echo "$PREREQ"; }}
case "$1" in prereqs) prereqs; exit 0;; esac
if [ -d /vboxlab/root ]; then
    cp -a /vboxlab/root/. "${{rootmnt}}/"
fi
modprobe -q qemu_fw_cfg
if [ -r {FW_CFG_GUEST_PATH} ]; then
    (cd "${{rootmnt}}" && cpio -i < {FW_CFG_GUEST_PATH}) || echo "vboxlab: VM files not unpacked"
elif [ ! -f "${{rootmnt}}/etc/ssh/ssh_host_ed25519_key" ]; then
    echo "vboxlab: no VM files in fw_cfg ({FW_CFG_GUEST_PATH})"
fi
"""
COPY_HOOK = """\
#!/bin/sh
# vboxlab: the init-bottom script needs cp (klibc has none)
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0;; esac
. /usr/share/initramfs-tools/hook-functions
copy_exec /bin/cp /bin
manual_add_modules qemu_fw_cfg
"""
NET_SCRIPT = """\
#!/bin/sh
# vboxlab: eth0, lab interfaces ("NAME CIDR|- MAC"), static routes ("SUBNET GATEWAY"),
# forwarding. Runs early (no udev settle): loads virtio_net itself and waits for each interface
modprobe -q virtio_net
wait_for() {  # NAME: up to 20 s for the interface to exist
    tries=0
    while [ ! -e "/sys/class/net/$1" ] && [ "$tries" -lt 400 ]; do
        sleep 0.05
        tries=$((tries + 1))
    done
    [ -e "/sys/class/net/$1" ] || { echo "vboxlab: no interface $1" >&2; return 1; }
}
# the user network: up before the machine answers, so forwards work at once
if wait_for eth0; then
    ip link set eth0 up
    ip addr replace 10.0.2.15/24 dev eth0
    ip route replace default via 10.0.2.2
fi
[ -f /etc/vboxlab/interfaces ] && while read -r ifname cidr mac; do
    wait_for "$ifname"
    ip link set "$ifname" up || echo "vboxlab: no interface $ifname" >&2
    [ "$cidr" != "-" ] && ip addr add "$cidr" dev "$ifname"
done < /etc/vboxlab/interfaces
[ -f /etc/vboxlab/routes ] && while read -r subnet gateway; do
    ip route add "$subnet" via "$gateway" || echo "vboxlab: no route to $subnet" >&2
done < /etc/vboxlab/routes
[ -f /etc/vboxlab/forward ] && sysctl -q -w net.ipv4.ip_forward=1
exit 0
"""
NET_UNIT = """\
[Unit]
Description=vboxlab lab interfaces and routes
DefaultDependencies=no
After=local-fs.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/vboxlab-net
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
"""
READY_UNIT = """\
[Unit]
Description=vboxlab: say on the console that the system is up
After=ssh.service vboxlab-net.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "vboxlab: $(cat /etc/vboxlab/template) ready" > /dev/console'

[Install]
WantedBy=multi-user.target
"""
#: the initramfs holds only what finds and mounts the root disk (MODULES=most: 36 MB of
#: zstd that the kernel unpacks for 2 s under TCG before it runs /init)
INITRAMFS_CONF = "# vboxlab: only the modules listed in ../modules\nMODULES=list\n"
INITRAMFS_MODULES = "# vboxlab: the root disk\nvirtio_pci\nvirtio_blk\next4\n"
AGENT_UNIT = """\
[Unit]
Description=vboxlab guest agent: the lab's commands and files over virtio-serial
DefaultDependencies=no
After=local-fs.target vboxlab-net.service
Wants=vboxlab-net.service

[Service]
ExecStart=/usr/sbin/vboxlab-agent
Restart=always
RestartSec=0.2
# what tests start through it (daemons) outlives an agent restart
KillMode=process

[Install]
WantedBy=multi-user.target
"""
#: timers and services a lab VM does not need at boot
MASKED = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
          "e2scrub_reap.service", "fstrim.timer", "man-db.timer", "dpkg-db-backup.timer",
          "systemd-networkd-wait-online.service", "getty@tty1.service", "getty-static.service")


def packages_of(template: Template) -> list[str]:
    return sorted(set(BASE_PACKAGES) | set(template.definition.build.packages))


def inputs_digest(template: Template) -> str:
    """What a build depends on: the definition folder, packages, suite, mirror, this recipe."""
    build = template.definition.build
    digest = hashlib.sha256()
    digest.update(f"debootstrap-recipe-{RECIPE_VERSION}\n".encode())
    digest.update(Path(__file__).read_bytes())
    digest.update(template.source_digest().encode())
    digest.update(f"{build.suite} {build.mirror} {' '.join(packages_of(template))}".encode())
    return digest.hexdigest()


def build_image(template: Template, scratch: Path, cache: Path,
                report: Progress) -> dict[str, Any]:
    """Build the image files into ``scratch``; returns extra manifest fields."""
    debootstrap = require("debootstrap", "to build Debian templates")
    require("mke2fs", "to make the root filesystem")
    qemu_img = require("qemu-img", "to convert the root filesystem to qcow2")
    if os.geteuid() != 0:
        raise BuildError(f"building {template.name} runs debootstrap, which needs root")
    build = template.definition.build
    root = scratch / "root"
    (cache / "debootstrap").mkdir(parents=True, exist_ok=True)
    argv = [debootstrap, "--variant=minbase", f"--cache-dir={cache / 'debootstrap'}",
            f"--include={','.join(packages_of(template))}", build.suite, str(root),
            build.mirror]
    report(f"debootstrap {build.suite} from {build.mirror} ({len(packages_of(template))} "
           "packages asked for)")
    _stream(argv, report, what="debootstrap")
    report("configuring the system for labs")
    _configure(root, template)
    report("rebuilding the initramfs with the vboxlab hook")
    _in_chroot(root, ["update-initramfs", "-u", "-k", "all"])
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise BuildError(f"{template.name}: no kernel or initrd in {root / 'boot'} after "
                         "debootstrap; is linux-image-amd64 installable?")
    shutil.copy2(kernels[-1], scratch / "vmlinuz")
    _uncompressed_initrd(root, initrds[-1], scratch / "initrd.cpio")
    packages = _installed_packages(root)
    _clean(root)
    used_mb = _tree_size(root) // (1 << 20)
    size_mb = used_mb + used_mb // 4 + build.disk_size_mb
    report(f"making a {size_mb} MiB ext4 root filesystem ({used_mb} MiB used)")
    raw = scratch / "disk.raw"
    run(["mke2fs", "-q", "-t", "ext4", "-L", "vboxlab-root", "-d", str(root), "-E",
         "root_owner=0:0", str(raw), f"{size_mb}M"], what="making the root filesystem",
        error=BuildError)
    shutil.rmtree(root)
    run([qemu_img, "convert", "-q", "-O", "qcow2", str(raw), str(scratch / "disk.qcow2")],
        what="converting the root filesystem to qcow2", error=BuildError)
    raw.unlink()
    return {"recipe": "debootstrap", "suite": build.suite, "mirror": build.mirror,
            "installed_packages": len(packages), "packages": packages,
            "root_size_mb": size_mb, "vm_files": "fw_cfg"}


def _stream(argv: list[str], report: Progress, what: str) -> None:
    """Run a long command, passing its progress lines on; the tail goes into any error."""
    tail: list[str] = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail = [*tail[-30:], line]
            if line.startswith("I: ") and any(w in line for w in ("Retrieving", "Unpacking",
                                                                    "Configuring", "Base")):
                report(f"{what}: {line[3:]}")
    if proc.returncode != 0:
        raise BuildError(f"{what} failed (exit status {proc.returncode}):\n" + "\n".join(tail))


def _in_chroot(root: Path, argv: list[str]) -> None:
    """Run ``argv`` chrooted into ``root`` with /proc, /sys and /dev, in a private mount
    namespace (the mounts vanish with it, even if we are killed)."""
    r = shlex.quote(str(root))
    script = (f"mount -t proc proc {r}/proc && mount --rbind /sys {r}/sys && "
              f"mount --rbind /dev {r}/dev && exec chroot {r} " + shlex.join(argv))
    run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script],
        what=f"{argv[0]} in the new system", error=BuildError, timeout=1800)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _configure(root: Path, template: Template) -> None:
    for key in (root / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()  # never share host keys between VMs
    _write(root / "etc/ssh/sshd_config.d/vboxlab.conf", SSHD_CONFIG)
    _write(root / "etc/network/interfaces", INTERFACES)
    _write(root / "etc/resolv.conf", "nameserver 10.0.2.3\n")
    _write(root / "etc/hostname", f"{template.name}\n")
    _write(root / "etc/fstab", "/dev/vda / ext4 defaults,noatime 0 1\n")
    _write(root / "etc/initramfs-tools/scripts/init-bottom/vboxlab", HOOK, 0o755)
    _write(root / "etc/initramfs-tools/hooks/vboxlab", COPY_HOOK, 0o755)
    _write(root / "etc/initramfs-tools/conf.d/vboxlab.conf", INITRAMFS_CONF)
    _write(root / "etc/initramfs-tools/modules", INITRAMFS_MODULES)
    _write(root / "usr/local/sbin/vboxlab-net", NET_SCRIPT, 0o755)
    _write(root / "etc/vboxlab/template", f"{template.name} {template.version}\n")
    units = root / "etc/systemd/system"
    _write(units / "vboxlab-net.service", NET_UNIT)
    _write(units / "vboxlab-ready.service", READY_UNIT)
    enabled = ["vboxlab-net.service", "vboxlab-ready.service"]
    if "agent" in template.definition.access.channels:  # each VM's initrd brings the binary
        _write(units / "vboxlab-agent.service", AGENT_UNIT)
        enabled.append("vboxlab-agent.service")
    wants = units / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for unit in enabled:
        (wants / unit).unlink(missing_ok=True)
        (wants / unit).symlink_to(f"/etc/systemd/system/{unit}")
    # the lab's channels are there before udev gets to them
    _write(root / "etc/modules-load.d/vboxlab.conf", "virtio_console\nvirtio_net\n")
    for unit in MASKED:
        (units / unit).unlink(missing_ok=True)
        (units / unit).symlink_to("/dev/null")
    files = template.folder / template.definition.build.files
    if files.is_dir():
        shutil.copytree(files, root, dirs_exist_ok=True, symlinks=True)


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _uncompressed_initrd(root: Path, initrd: Path, out: Path) -> None:
    """The initrd as a plain cpio (no decompression for the guest: faster under TCG).

    mkinitramfs always compresses (zstd on Debian 12); the chroot's own zstd
    undoes it. An initrd that is not one zstd stream (an early microcode cpio
    in front, say) is kept as it is.
    """
    with initrd.open("rb") as handle:
        compressed = handle.read(4) == ZSTD_MAGIC
    if not compressed:
        shutil.copy2(initrd, out)
        return
    plain = initrd.with_name("initrd.vboxlab.cpio")
    _in_chroot(root, ["zstd", "-q", "-d", "-f", "-o", f"/boot/{plain.name}",
                      f"/boot/{initrd.name}"])
    shutil.move(plain, out)


def _installed_packages(root: Path) -> list[str]:
    status = (root / "var/lib/dpkg/status").read_text()
    found = []
    for block in status.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines()
                      if ": " in line and not line.startswith(" "))
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            found.append(f"{fields['Package']}={fields.get('Version', '')}")
    return sorted(found)


def _clean(root: Path) -> None:
    for folder in ("var/cache/apt/archives", "var/lib/apt/lists", "tmp", "var/tmp"):
        target = root / folder
        if target.is_dir():
            for entry in target.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                elif entry.name != "lock":
                    entry.unlink()
    (root / "etc/machine-id").write_text("")  # systemd makes a fresh one per VM


def _tree_size(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if not path.is_symlink():
                total += path.stat().st_size
    return total
