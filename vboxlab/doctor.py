"""What this host can do for vboxlab, and for each missing thing, the fix."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vboxlab.accel import probe_kvm
from vboxlab.errors import HostError, VboxlabError
from vboxlab.hosttools import QEMU_BINARY
from vboxlab.memshare import SWITCH_ON, ksm_state
from vboxlab.templates import TemplateRepository


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    essential: bool = False


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else ""


def _tool(name: str, package: str, purpose: str, essential: bool = False) -> Check:
    path = shutil.which(name)
    if path is None:
        return Check(name, False, f"not found ({purpose})", f"apt-get install {package}",
                     essential)
    return Check(name, True, path, essential=essential)


def _netem() -> Check:
    if os.geteuid() != 0:
        return Check("kernel netem", False, "not probed: needs root", "run as root")
    if shutil.which("tc") is None or shutil.which("unshare") is None:
        return Check("kernel netem", False, "tc or unshare missing", "apt-get install iproute2")
    probe = subprocess.run(
        ["unshare", "--net", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
        capture_output=True, text=True, timeout=10, check=False)
    if probe.returncode == 0:
        return Check("kernel netem", True, "tc netem works here; vboxlab's links still run in "
                     "its userspace fabric (the same on every host)")
    return Check("kernel netem", False,
                 f"not in this kernel ({probe.stderr.strip()[:80]}); not needed: link "
                 "impairments run in vboxlab's userspace fabric",
                 "optional: a kernel with CONFIG_NET_SCH_NETEM")


def _fabric() -> Check:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return Check("network fabric", False, "no C compiler: the fabric is compiled on first use",
                     "apt-get install gcc libc6-dev")
    return Check("network fabric", True, f"userspace fabric (compiled with {compiler}): every "
                 "impairment, any user, VMs and netns hosts")


def _vhost_user(qemu: str | None) -> Check:
    name = "vhost-user data path"
    if qemu is None:
        return Check(name, False, "no QEMU", "apt-get install qemu-system-x86")
    try:
        backends = subprocess.run([qemu, "-netdev", "help"], capture_output=True, text=True,
                                  timeout=10, check=False).stdout.split()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check(name, False, f"could not ask QEMU for its netdevs: {exc}",
                     "apt-get install --reinstall qemu-system-x86")
    if "vhost-user" not in backends:
        return Check(name, False, "this QEMU has no vhost-user netdev: topologies with "
                     "`datapath: vhost-user` cannot start", "apt-get install qemu-system-x86")
    return Check(name, True, "`datapath: vhost-user`: the fabric reads and writes guests' rings "
                 "(faster; guest memory is shared, so KSM does not merge it)")


def _netns() -> Check:
    from vboxlab.providers.netns import require_root

    try:
        require_root("provider: netns")
    except HostError as exc:
        return Check("netns hosts", False, str(exc), "run as root; modprobe tun")
    missing = [t for t in ("unshare", "nsenter") if shutil.which(t) is None]
    if missing:
        return Check("netns hosts", False, f"missing: {', '.join(missing)}",
                     "apt-get install util-linux")
    return Check("netns hosts", True, "namespaces and tap devices available")


def _ksm() -> Check:
    state = ksm_state()
    if not state.available:
        return Check("memory sharing (KSM)", False, "this kernel has no KSM: VMs of one "
                     "template keep their own copies of the pages they have alike")
    if not state.running:
        return Check("memory sharing (KSM)", False, "KSM is off: VMs of one template keep "
                     "their own copies of the pages they have alike",
                     f"optional, host-wide: {SWITCH_ON}")
    return Check("memory sharing (KSM)", True, f"KSM runs: {state.saved_mb:.0f} MiB saved now")


def run_checks(repository: TemplateRepository | None = None, probe: bool = True) -> list[Check]:
    """Every check, in the order the report prints them."""
    repository = repository or TemplateRepository()
    checks = [Check("python", True, _version(["python3", "--version"]))]
    qemu = shutil.which(QEMU_BINARY)
    if qemu is None:
        checks.append(Check("qemu", False, f"{QEMU_BINARY} not found",
                            "apt-get install qemu-system-x86", essential=True))
    else:
        checks.append(Check("qemu", True, f"{qemu}: {_version([qemu, '--version'])}",
                            essential=True))
        accels = _version([qemu, "-accel", "help"]) + " " + subprocess.run(
            [qemu, "-accel", "help"], capture_output=True, text=True, check=False).stdout
        checks.append(Check("TCG", "tcg" in accels, "software emulation available"
                            if "tcg" in accels else "this QEMU has no TCG", essential=True))
    checks.append(_tool("qemu-img", "qemu-utils", "overlays and snapshots", essential=True))
    checks.append(_tool("setpriv", "util-linux", "tying VMs to the test run", essential=True))
    checks.append(_tool("ssh", "openssh-client", "`vboxlab ssh` into kept VMs"))
    for tool, package in (("apt-get", "apt"), ("dpkg-deb", "dpkg"), ("mke2fs", "e2fsprogs")):
        checks.append(_tool(tool, package, "building templates"))
    if not Path("/dev/kvm").exists():
        checks.append(Check("KVM", False, "/dev/kvm missing; QEMU uses TCG",
                            "optional: enable virtualisation (modprobe kvm_intel or kvm_amd)"))
    elif qemu is not None and probe:
        try:
            kernel = repository.built("tiny").kernel
        except VboxlabError:
            checks.append(Check("KVM", False, "/dev/kvm present; not probed until the tiny "
                                "template is built", "vboxlab templates build tiny"))
        else:
            choice = probe_kvm(qemu, kernel)
            checks.append(Check("KVM", choice.accel == "kvm", choice.reason,
                                "" if choice.accel == "kvm" else "none needed: vboxlab uses TCG"))
    checks.append(Check("root", os.geteuid() == 0,
                        "running as root" if os.geteuid() == 0 else "not root",
                        "" if os.geteuid() == 0 else
                        "only network namespaces and USB writing need root"))
    checks += [_fabric(), _vhost_user(qemu), _netns(), _netem(), _ksm()]
    try:
        definitions = repository.definitions()
    except VboxlabError as exc:
        checks.append(Check("templates", False, str(exc), "fix the template definition"))
        definitions = {}
    for name, template in sorted(definitions.items()):
        status = repository.status(name)
        checks.append(Check(f"template {name}", status == "built",
                            f"{template.version}: {status}",
                            "" if status == "built" else f"vboxlab templates build {name}",
                            essential=name == "tiny"))
    return checks
