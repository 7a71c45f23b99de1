"""Templates for real: debian-12 and netlab boot and work; versions, archives, concurrent and
interrupted builds against a real repository."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from vboxlab.errors import GuestCommandError
from vboxlab.lab import Lab
from vboxlab.pytest.policy import missing_capability
from vboxlab.templates import TemplateRepository
from vboxlab.templates.archive import export_template, import_template

from .helpers import wait_for

VBOXLAB = [sys.executable, "-m", "vboxlab.cli"]


@pytest.fixture
def lab(tmp_path):
    with Lab(base=tmp_path / "labs", boot_timeout=240) as the_lab:
        yield the_lab


@pytest.fixture
def built():
    """Skip (fail under CI) unless the template named by the test's parameter is built."""
    def need(name):
        status = TemplateRepository().status(name)
        if status != "built":
            missing_capability(f"template {name} is {status} "
                               f"(`vboxlab templates build {name}` as root)")
    return need


def test_debian_12_is_a_real_debian_where_apt_works_and_lab_nics_come_up(lab, built):
    built("debian-12")
    wire = lab.wire("deb", "peer", a_address="10.88.0.1/24", b_address="10.88.0.2/24")
    machines = lab.vms({"deb": {"template": "debian-12", "nics": [wire.nic("deb")],
                                "hosts": "10.88.0.2 peer\n"},
                        "peer": {"nics": [wire.nic("peer")]}})
    deb, peer = machines["deb"], machines["peer"]
    assert 'VERSION_CODENAME=bookworm' in deb.succeed("cat /etc/os-release")
    assert deb.succeed("cat /proc/1/comm") == "systemd\n"
    assert deb.succeed("systemctl is-system-running --wait").strip() in ("running", "degraded")
    deb.wait_for_unit("ssh.service")
    deb.succeed("systemctl is-active ssh vboxlab-net vboxlab-agent")
    with pytest.raises(GuestCommandError, match=r"nothing\.service to become active, not failed"):
        deb.succeed("systemd-run --no-block --unit nothing.service -p Type=oneshot "
                    "-p RemainAfterExit=yes false")
        deb.wait_for_unit("nothing.service", timeout=30)
    assert deb.succeed("hostname") == "deb\n"
    assert "10.88.0.1/24" in deb.succeed("ip -4 addr show eth1")
    deb.succeed("ping -c 2 -W 2 peer")
    peer.succeed("ping -c 1 -W 2 10.88.0.1")
    # apt works in the guest: every layered template (netlab, dev-*) was built by apt in a
    # booted debian-12, and test_layers proves their stacks run
    assert deb.succeed("apt-get --version").startswith("apt ")
    # the host key is this VM's own, not one shared by every VM made from the template
    assert (deb.state_dir / "known_hosts.pub").read_text().split()[1] in \
        deb.succeed("cat /etc/ssh/ssh_host_ed25519_key.pub")
    # the console tells the boot's story: the kernel's messages and systemd's
    console = deb.console_log.read_text(errors="replace")
    assert "Linux version" in console and "Reached target" in console


def test_netlab_has_the_network_tools(lab, built):
    built("netlab")
    wire = lab.wire("nl", "target", a_address="10.89.0.1/24", b_address="10.89.0.2/24")
    machines = lab.vms({"nl": {"template": "netlab", "nics": [wire.nic("nl")]},
                        "target": {"nics": [wire.nic("target")]}})
    nl, target = machines["nl"], machines["target"]
    target.wait_for_port(22)  # the machine answers over its agent; sshd starts beside it
    scan = nl.succeed("nmap -Pn -sT -p 22,23 10.89.0.2")
    assert "22/tcp open" in scan and "23/tcp closed" in scan
    nl.succeed("(tcpdump -n -i eth1 -c 3 icmp > /tmp/cap.txt 2>/dev/null &) ; sleep 1")
    target.succeed("ping -c 3 -i 0.3 10.89.0.1")
    nl.wait_until_succeeds("test $(grep -c 'ICMP echo' /tmp/cap.txt) -ge 3", timeout=20)
    nl.succeed("iperf3 -s -D -1 && sleep 0.5")
    report = json.loads(nl.succeed("iperf3 -c 127.0.0.1 -t 1 -J"))
    assert report["end"]["sum_received"]["bytes"] > 0
    assert "ip " in nl.succeed("ip -V") and nl.succeed("ethtool --version")


@pytest.fixture
def own_repo(tmp_path, monkeypatch):
    """A repository with its own cache and a copy of the tiny definition to version."""
    defs = tmp_path / "defs"
    shutil.copytree(TemplateRepository().definition("tiny").folder, defs / "tiny")
    monkeypatch.setenv("VBOXLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VBOXLAB_TEMPLATE_PATH", str(defs))
    monkeypatch.setenv("VBOXLAB_PINS", str(tmp_path / "pins.lock"))
    return TemplateRepository(cache=tmp_path / "cache", search=[defs]), defs / "tiny"


def bump(folder, version):
    toml = folder / "template.toml"
    text = toml.read_text()
    old = next(line for line in text.splitlines() if line.startswith("version = "))
    toml.write_text(text.replace(old, f'version = "{version}"'))


def test_versions_live_side_by_side_are_pinned_shared_and_pruned(own_repo, tmp_path,
                                                                 monkeypatch):
    repo, definition = own_repo
    repo.build("tiny")
    bump(definition, "1.1.0")
    (definition / "rootfs" / "etc" / "motd").write_text("version 1.1.0\n")
    built, ran = repo.build("tiny")
    assert ran and built.template.version == "1.1.0"
    assert [b.template.version for b in repo.installed("tiny")] == ["1.0.0", "1.1.0"]
    run = subprocess.run([*VBOXLAB, "templates", "pin", "tiny@1.0.0"], capture_output=True,
                         text=True, check=True)
    assert "pinned tiny to 1.0.0" in run.stdout
    assert repo.outdated() == [("tiny", "1.0.0 (pinned)", "1.1.0", "installed")]
    assert repo.prune() == []  # the pinned one and the newest stay
    with Lab(base=tmp_path / "l1", repository=repo) as lab:
        # the bare name means the pinned version
        machines = lab.vms({"old": {}, "new": {"template": "tiny>=1.1,<2"}})
        assert machines["old"].fail("cat /etc/motd 2>/dev/null") == ""
        assert machines["new"].succeed("cat /etc/motd") == "version 1.1.0\n"
    # carried to another machine: an archive, imported into an empty repository
    archive = export_template(repo.built("tiny@1.1.0"), tmp_path / "tiny-1.1.0.tar.gz")
    other = TemplateRepository(cache=tmp_path / "other", search=[])
    import_template(archive, other)
    monkeypatch.setenv("VBOXLAB_PINS", str(tmp_path / "elsewhere.lock"))  # no pins there
    with Lab(base=tmp_path / "l2", repository=other) as lab:
        assert lab.vm("imp", template="tiny").succeed("cat /etc/motd") == "version 1.1.0\n"


def test_two_builds_at_once_leave_one_consistent_template(own_repo, tmp_path):
    repo, _ = own_repo
    env = {**os.environ}
    procs = [subprocess.Popen([*VBOXLAB, "templates", "build", "tiny", "--force"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    (built,) = repo.installed("tiny")
    for name, digest in built.manifest["files"].items():
        assert subprocess.run(["sha256sum", str(built.folder / name)], capture_output=True,
                              text=True, check=True).stdout.split()[0] == digest
    assert not list((repo.images / "tiny").glob(".build-*"))


def test_an_interrupted_build_is_never_usable_and_is_cleaned_up(own_repo):
    repo, _ = own_repo
    proc = subprocess.Popen([*VBOXLAB, "templates", "build", "tiny"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: list((repo.images / "tiny").glob(".build-*")), 120, "the build to start")
    time.sleep(1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert repo.installed("tiny") == []
    assert repo.status("tiny") == "not built"
    repo.build("tiny")  # the next build removes what the killed one left
    assert [b.template.version for b in repo.installed("tiny")] == ["1.0.0"]
    assert not list((repo.images / "tiny").glob(".build-*"))


def test_a_missing_host_tool_is_named_with_its_package(own_repo, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("apt-get", "apt-cache", "dpkg-deb", "qemu-img"):  # everything but mke2fs
        (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {**os.environ, "PATH": str(bin_dir)}
    run = subprocess.run([*VBOXLAB, "templates", "build", "tiny"], env=env, capture_output=True,
                         text=True, check=False)
    assert run.returncode == 2
    assert "mke2fs not found" in run.stderr and "apt-get install e2fsprogs" in run.stderr
