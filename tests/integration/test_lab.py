"""Labs with several machines, and bad input that must fail clearly and leave nothing."""

import os
import urllib.request
from pathlib import Path

import pytest

from vboxlab.bringup import BringUpError
from vboxlab.errors import (
    BootTimeout,
    ConfigError,
    HostError,
    TemplateNotBuilt,
    TemplateNotFound,
)
from vboxlab.lab import Lab
from vboxlab.templates import TemplateRepository

from .helpers import qemu_pids


def test_two_machines_talk_through_a_forwarded_port(base):
    with Lab(base=base) as lab:
        machines = lab.vms({"web": {}, "client": {"memory": 192}})  # booted side by side
        web, client = machines["web"], machines["client"]
        web.succeed("mkdir -p /tmp/www && echo served-by-web > /tmp/www/index.html")
        web.succeed("httpd -p 80 -h /tmp/www")
        web.wait_for_port(80)
        port = web.forward_port(80)
        # the guest reaches the host's loopback as 10.0.2.2 through QEMU's user network
        assert client.succeed(f"wget -q -O - http://10.0.2.2:{port}/") == "served-by-web\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.read() == b"served-by-web\n"
        assert client.succeed("free -m | awk '/Mem:/ {print $2}'").strip() != ""
        assert set(lab.machines) == {"web", "client"}
        log = (lab.dir / "lab.log").read_text()
        assert "bring-up: 2 machines, at most" in log
        assert "bring-up: web configured" in log and "bring-up: client configured" in log
        # the kernel booted is the template's, unpacked once for PVH direct boot
        started = [line for line in (lab.dir / "lab.log").read_text().splitlines()
                   if "starting" in line and "-kernel" in line]
        assert len(started) == 2 and all("/kernels/" in line and line.split(
            "-kernel ")[1].split()[0].endswith("/vmlinux") for line in started)


def test_a_machine_failing_among_others_stops_them_and_shows_its_console(base):
    with Lab(base=base, boot_timeout=120) as lab:
        with pytest.raises(BringUpError) as info:
            lab.vms({"good": {}, "broken": {"kernel_args": "rdinit=/bin/false"},
                     "later": {}}, parallel=2)
        message = str(info.value)
        assert info.value.machine == "broken"
        assert message.startswith("broken did not come up")
        assert "Attempted to kill init" in message  # the kernel's own words, from its console
        assert lab.machines == {}  # the set was removed, nothing half up
        assert qemu_pids(str(lab.dir)) == []
        log = (lab.dir / "lab.log").read_text()
        assert "bring-up: broken failed" in log


def test_unknown_template_lists_the_known_ones(base):
    with Lab(base=base) as lab, pytest.raises(TemplateNotFound, match=r"known templates: .*tiny"):
        lab.vm("x", template="nope")


def test_template_not_built_names_the_command(base, tmp_path):
    repo = TemplateRepository(cache=tmp_path / "empty-cache")
    with Lab(base=base, repository=repo) as lab, \
            pytest.raises(TemplateNotBuilt, match="vboxlab templates build tiny"):
        lab.vm("x")


def test_more_memory_than_the_host_has_is_refused(base):
    with Lab(base=base) as lab, pytest.raises(HostError, match="MiB available"):
        lab.vm("big", memory=64 * 1024 * 1024)


def test_guest_that_never_answers_times_out_with_its_console(base):
    with Lab(base=base, boot_timeout=1.5) as lab:
        with pytest.raises(BootTimeout) as info:
            lab.vm("slow")
        assert "guest agent of slow" in str(info.value)
        assert "last try" in str(info.value)
        assert qemu_pids(str(lab.dir)) == []


def test_a_lab_folder_too_deep_for_sockets_fails_before_starting(tmp_path):
    deep = tmp_path / ("d" * 90)
    with Lab(base=deep) as lab, pytest.raises(ConfigError, match="choose a shorter --lab-dir"):
        lab.vm("vm")
    assert qemu_pids(str(deep)) == []


def test_vms_share_the_templates_initrd_and_get_their_own_keys_in_0600_files(base):
    with Lab(base=base) as lab:
        first, second = lab.vms({"keys": {}, "keys2": {}}).values()
        assert os.stat(lab.dir / "id_ed25519").st_mode & 0o777 == 0o600
        launches = [first.handle.launch, second.handle.launch]
        shared = Path(launches[0].initrd)
        assert all(Path(launch.initrd) == shared for launch in launches)
        for vm, launch in zip((first, second), launches, strict=True):
            own = Path(launch.vm_files)
            assert own.parent == lab.dir / vm.name and os.stat(own).st_mode & 0o777 == 0o600
            key = own.read_bytes().split(b"-----BEGIN OPENSSH PRIVATE KEY-----")[1][:200]
            assert len(key) == 200 and key not in shared.read_bytes()  # no secret is shared
            assert vm.succeed("hostname") == f"{vm.name}\n"  # unpacked from fw_cfg
        # QEMU maps the initrd: one file, so its pages are in memory once for all VMs
        mapped = set()
        for pid in qemu_pids(str(lab.dir)):
            lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
            mapped |= {line.split()[4] for line in lines if line.endswith(str(shared))}
        assert len(mapped) == 1 and mapped != {"0"}  # one inode, in both processes
        assert sum(str(shared) in Path(f"/proc/{pid}/maps").read_text()
                   for pid in qemu_pids(str(lab.dir))) == 2


def test_qemu_listens_on_loopback_only(base):
    with Lab(base=base) as lab:
        vm = lab.vm("net")
        vm.forward_port(80)
        pids = qemu_pids(str(lab.dir))
        inodes = set()
        for pid in pids:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        listening = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    listening.append(fields[1].split(":")[0])
        assert listening, "QEMU should listen for the SSH and port forwards"
        assert set(listening) == {"0100007F"}, listening
