"""Trust boundaries with real VMs: the disk chain, commas in paths, restricted user networks,
machines booted from threads, and errors that are all vboxlab's own."""

import http.server
import json
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vboxlab.errors import (
    ChannelError,
    ConfigError,
    GuestFileNotFound,
    HostFileNotFound,
    MachineDied,
    VboxlabError,
    WaitTimeout,
)
from vboxlab.lab import Lab
from vboxlab.pytest.policy import require_tool
from vboxlab.templates import TemplateRepository

from .helpers import qemu_pids


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    base = tmp_path_factory.mktemp("trust") / "labs"
    with Lab(base=base) as the_lab:
        yield the_lab
    assert qemu_pids(str(base)) == []
    assert list(base.iterdir()) == []


@pytest.fixture(scope="module")
def pooled(lab):
    """Two VMs booted from a thread pool that has ended by the time the tests use them."""
    with ThreadPoolExecutor(2) as pool:
        machines = list(pool.map(lab.vm, ["p1", "p2"]))
    return machines


def test_vms_booted_from_a_thread_pool_live_as_long_as_the_lab(pooled):
    time.sleep(1.0)  # the pool and its threads are gone
    for machine in pooled:
        assert machine.succeed("hostname").strip() == machine.name
        assert machine.state.value == "running"
    assert repr(pooled[0]).startswith("<Machine p1 running (<QemuMachine p1 running (tiny ")


@pytest.fixture
def host_web():
    """A web server on the host's loopback (the guests see the host as 10.0.2.2)."""

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"hello from the host\n")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_a_restricted_guest_reaches_nothing_but_its_forwards(lab, pooled, host_web):
    url = f"http://10.0.2.2:{host_web}/"
    # (busybox wget -T crashes in Debian 12's busybox-static: bound it with timeout instead)
    assert pooled[0].succeed(f"timeout 10 wget -q -O - {url}") == "hello from the host\n"
    walled = lab.vm("walled", restrict=True, kernel_args="quiet loglevel=3")
    try:
        # a kernel booted quiet printed only errors; its log was appended once SSH answered
        console = walled.console_log.read_text(errors="replace")
        head, _, appended = console.partition("--- kernel log (dmesg)")
        assert "Linux version" not in head and "Linux version" in appended
        assert "--- end of the kernel log ---" in appended
        walled.fail(f"timeout 5 wget -q -O - {url}")
        walled.succeed("mkdir -p /tmp/www && echo inside > /tmp/www/i && httpd -p 8080 -h "
                       "/tmp/www")
        walled.wait_for_port(8080)
        port = walled.forward_port(8080)  # the lab's own forwards still work
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/i", timeout=10) as reply:
            assert reply.read() == b"inside\n"
        pid = json.loads((lab.dir / "walled" / "machine.json").read_text())["pid"]
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert any(b"user,id=n0,restrict=on," in arg for arg in argv)
    finally:
        lab.remove_vm("walled")


def test_templates_built_elsewhere_are_restricted_unless_the_lab_says_otherwise(tmp_path):
    local = TemplateRepository()
    built = local.built("tiny")
    cache = tmp_path / "cache"
    copy = cache / "templates" / "tiny" / built.template.version
    copy.mkdir(parents=True)
    for name in built.manifest["files"]:
        (copy / name).hardlink_to(built.folder / name)
    manifest = dict(built.manifest, imported={"from": "x.tar.gz", "foreign": True})
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with Lab(base=tmp_path / "labs", repository=TemplateRepository(cache=cache, search=[])) \
            as other:
        assert other.create("foreign").handle.launch.restrict
        assert not other.create("trusted", restrict=False).handle.launch.restrict
        assert other.create("own", template="tiny", restrict=None).handle.launch.restrict


@pytest.fixture
def short_tmp():
    """A short folder in /tmp (UNIX socket paths are limited to 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="vbl-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_comma_in_the_lab_dir_is_part_of_the_path_not_options(short_tmp):
    base = short_tmp / "a,readonly=on,b"
    with Lab(base=base) as comma_lab:
        vm = comma_lab.vm("comma")
        vm.succeed("echo kept > /data/proof && sync")  # a read-only disk would refuse this
        vm.snapshot("s1")
        vm.succeed("rm /data/proof")
        vm.restore("s1")
        assert vm.succeed("cat /data/proof") == "kept\n"
        assert (base / comma_lab.id / "comma" / "console.log").stat().st_size > 0
        assert (base / comma_lab.id / "comma" / "qmp.sock").exists()
    assert qemu_pids(str(base)) == []


def test_the_template_disk_brings_no_backing_file_of_its_own(lab, tmp_path):
    """QEMU is told the whole chain: what an overlay header says about backing is ignored."""
    secret = tmp_path / "secret.raw"
    with secret.open("wb") as out:
        out.write(b"HOST-SECRET-" * 100_000)
        out.truncate(64 << 20)
    machine = lab.create("chain")
    try:
        subprocess.run([require_tool("qemu-img", "qemu-utils"), "rebase", "-u", "-f", "qcow2",
                        "-b", str(secret), "-F", "raw", str(machine.handle.overlay)], check=True)
        lab.boot(machine)
        assert machine.succeed("head -c 2000000 /dev/vda | grep -c HOST-SECRET || true") == "0\n"
        assert "/dev/vda /data ext4" in machine.succeed("cat /proc/mounts")  # the template's disk
    finally:
        lab.remove_vm("chain")


def test_every_error_is_a_vboxlab_error_and_modes_survive_copies(lab, pooled, tmp_path):
    vm = pooled[0]
    with pytest.raises(HostFileNotFound) as missing:
        vm.copy_to(tmp_path / "missing", "/tmp/x")
    assert isinstance(missing.value, FileNotFoundError)
    with pytest.raises(GuestFileNotFound) as gone:
        vm.copy_from("/no/such/file", tmp_path / "out")
    assert isinstance(gone.value, VboxlabError) and isinstance(gone.value, FileNotFoundError)
    script = tmp_path / "tool.sh"
    script.write_text("#!/bin/sh\necho tool\n")
    script.chmod(0o750)
    with pytest.raises(ChannelError):
        vm.copy_to(script, "/no/such/folder/tool.sh")
    with pytest.raises(ChannelError):
        vm.copy_to(script, "/tmp")  # a folder, not a file: SFTP says no
    vm.copy_to(script, "/tmp/tool.sh")
    assert vm.succeed("stat -c %a /tmp/tool.sh && /tmp/tool.sh") == "750\ntool\n"
    vm.succeed("chmod 604 /tmp/tool.sh")
    vm.copy_from("/tmp/tool.sh", tmp_path / "back.sh")
    assert (tmp_path / "back.sh").stat().st_mode & 0o777 == 0o604
    with pytest.raises(ConfigError):
        vm.wait_for_port(0)
    with pytest.raises(ConfigError):
        vm.forward_port(70000)
    with pytest.raises(ConfigError, match=r"bad: kernel_args: characters \['\\n'\]"):
        lab.vm("bad", kernel_args="quiet\ninit=/bin/sh")
    assert "bad" not in lab.machines


def test_waits_never_last_longer_than_their_timeout(pooled):
    vm = pooled[1]
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match="timed out after 2 s"):
        vm.wait_until_succeeds("sleep 20; false", timeout=2)
    assert time.monotonic() - started < 8  # each try used to run its command to the end
    assert vm.succeed("echo still fine") == "still fine\n"


def test_the_console_log_tells_the_boot_story(pooled):
    text = pooled[0].console_log.read_text(errors="replace")
    assert "Linux version" in text  # the kernel's own boot messages
    assert "Run /init as init process" in text or "Freeing unused kernel" in text


def test_a_failed_boot_is_readable_from_the_console(lab):
    with pytest.raises(MachineDied, match="Kernel panic - not syncing: VFS: Unable to mount"):
        lab.vm("broken", kernel_args="rdinit=/no/such/init")
    text = lab["broken"].console_log.read_text(errors="replace")
    assert "Kernel command line: " in text and "rdinit=/no/such/init" in text
    lab.remove_vm("broken")


def test_large_output_arrives_whole_and_background_commands_still_return(pooled):
    """sshd may send the exit status before the last output: nothing may be cut off."""
    vm = pooled[1]
    assert vm.succeed("head -c 3000000 /dev/zero | tr '\\0' a") == "a" * 3_000_000
    assert len(vm.succeed("dmesg")) == int(vm.succeed("dmesg | wc -c"))
    vm.succeed("sleep 60 &", timeout=10)  # holds stdout open: returns at its exit all the same
