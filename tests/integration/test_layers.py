"""Layered templates for real: each shipped development environment boots and its stack works;
a layer is a small qcow2 over its base, which booting never writes; the CLI draws the tree
and refuses to remove a base that a layer needs."""

import json
import os
import subprocess
import sys
import textwrap
import urllib.request

import pytest

from vboxlab.lab import Lab
from vboxlab.pytest.policy import missing_capability
from vboxlab.templates import TemplateRepository
from vboxlab.templates.chain import backing_name

VBOXLAB = [sys.executable, "-m", "vboxlab.cli"]
ENVIRONMENTS = ("dev-python", "dev-web", "dev-c", "dev-node")


@pytest.fixture(scope="module")
def repository():
    repo = TemplateRepository()
    for name in (*ENVIRONMENTS, "netlab"):
        status = repo.status(name)
        if status != "built":
            missing_capability(f"template {name} is {status} (`vboxlab templates build "
                               f"{name}` as root, or `make templates`)")
    return repo


@pytest.fixture(scope="module")
def lab(tmp_path_factory, repository):
    """One VM of each environment, booted side by side."""
    with Lab(base=tmp_path_factory.mktemp("layers"), repository=repository,
             boot_timeout=300) as the_lab:
        the_lab.vms({name.removeprefix("dev-"): {"template": name} for name in ENVIRONMENTS})
        yield the_lab


def test_dev_python_makes_a_venv_and_runs_a_test_in_it(lab):
    vm = lab.machines["python"]
    # without pip in the venv: ensurepip takes a minute under TCG; pip itself is there
    vm.succeed("python3 -m venv --without-pip /opt/venv && pip3 --version", timeout=180)
    vm.succeed("mkdir -p /src && cat > /src/test_sum.py <<'EOF'\n"
               "import unittest\n\n\n"
               "class Sum(unittest.TestCase):\n"
               "    def test_sum(self):\n"
               "        self.assertEqual(sum(range(5)), 10)\n"
               "EOF")
    out = vm.succeed("cd /src && /opt/venv/bin/python -m unittest -v test_sum 2>&1",
                     timeout=120)
    assert "test_sum (test_sum.Sum" in out and "OK" in out
    assert vm.succeed("/opt/venv/bin/python -c 'import sys; print(sys.prefix)'") == \
        "/opt/venv\n"
    vm.succeed("git --version && gcc --version && make --version")


def test_dev_web_serves_a_page_that_reads_a_row_from_the_database(lab):
    vm = lab.machines["web"]
    vm.wait_for_unit("postgresql.service", timeout=120)
    vm.wait_for_unit("nginx.service", timeout=60)
    vm.succeed("runuser -u www-data -- psql -q -d app -c \"INSERT INTO greetings (message) "
               "VALUES ('hello from the lab')\"", timeout=60)
    port = vm.forward_port(80)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/rows", timeout=60) as response:
        assert response.status == 200
        assert response.headers["Server"].startswith("nginx")
        assert response.read().decode() == "1 hello from the lab\n"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=60) as response:
        assert "nginx serves this page" in response.read().decode()


def test_dev_c_builds_a_program_and_valgrind_finds_its_leak(lab):
    vm = lab.machines["c"]
    program = textwrap.dedent("""\
        #include <stdio.h>
        #include <stdlib.h>
        int main(void) {
            char *kept = malloc(16);
            kept[0] = 'x';
            printf("leaked %c\\n", kept[0]);
            return 0;
        }
        """)
    vm.succeed(f"mkdir -p /src && cat > /src/leak.c <<'EOF'\n{program}EOF\n"
               "printf 'leak: leak.c\\n\\tgcc -g -O0 -o leak leak.c\\n' > /src/Makefile")
    vm.succeed("make -C /src", timeout=120)
    assert vm.succeed("/src/leak") == "leaked x\n"
    result = vm.execute("valgrind --leak-check=full --error-exitcode=3 /src/leak 2>&1",
                        timeout=600)
    assert result.rc == 3, result.stdout
    assert "definitely lost: 16 bytes in 1 blocks" in result.stdout
    assert "leak.c:4" in result.stdout  # the allocation, found through the debug info
    trace = vm.succeed("gdb -batch -ex 'break main' -ex run -ex bt /src/leak 2>&1",
                       timeout=300)
    assert "Breakpoint 1, main () at leak.c" in trace


def test_dev_node_runs_a_script_and_npm_works(lab):
    vm = lab.machines["node"]
    vm.succeed("mkdir -p /app && cd /app && npm init -y >/dev/null", timeout=240)
    vm.succeed("cat > /app/index.js <<'EOF'\n"
               "const os = require('os');\n"
               "const pkg = require('./package.json');\n"
               "console.log(`${pkg.name} on ${os.hostname()}: ${[1, 2, 3].map(x => x * 2)}`);\n"
               "EOF")
    assert vm.succeed("cd /app && node index.js", timeout=120) == "app on node: 2,4,6\n"


@pytest.mark.parametrize("name", [*ENVIRONMENTS, "netlab"])
def test_each_environment_is_a_small_layer_over_debian_12(repository, name):
    built = repository.built(name)
    base = built.bases[0]
    assert base.template.name == "debian-12"
    assert built.manifest["base"]["files"] == base.manifest["files"]
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json",
                                      str(built.disk)], check=True, capture_output=True,
                                     text=True).stdout)
    assert info["backing-filename"] == backing_name(base)
    own = built.disk.stat().st_size
    assert own < base.disk.stat().st_size  # the layer holds only what it adds
    assert (built.folder / "vmlinuz").stat().st_ino == (base.folder / "vmlinuz").stat().st_ino
    assert set(built.template.definition.build.packages) <= {
        p.split("=")[0] for p in built.manifest["packages"]}


def test_booting_a_layer_never_writes_its_base(repository, lab):
    base = repository.built("dev-node").bases[0]
    before = base.disk.stat()
    vm = lab.machines["node"]
    vm.succeed("dd if=/dev/zero of=/var/tmp/fill bs=1M count=8 && sync")
    after = base.disk.stat()
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)
    layer = repository.built("dev-node").disk
    assert _read_only(vm, base.disk) and _read_only(vm, layer)  # QEMU opened both read-only


def _qemu_pid(vm):
    return json.loads((vm.state_dir / "machine.json").read_text())["pid"]


def _fd_of(vm, path):
    folder = f"/proc/{_qemu_pid(vm)}/fd"
    for fd in os.listdir(folder):
        try:
            if os.readlink(f"{folder}/{fd}") == str(path):
                return fd
        except OSError:
            continue
    raise AssertionError(f"QEMU has no descriptor of {path}")


def _read_only(vm, path):
    with open(f"/proc/{_qemu_pid(vm)}/fdinfo/{_fd_of(vm, path)}") as fdinfo:
        flags = int(fdinfo.read().split("flags:")[1].split()[0], 8)
    return flags & os.O_ACCMODE == os.O_RDONLY


def test_the_cli_draws_the_tree_and_keeps_a_needed_base(repository):
    listing = subprocess.run([*VBOXLAB, "templates", "list"], capture_output=True, text=True,
                             check=True).stdout
    names = [line.split("\t")[0] for line in listing.splitlines()]  # TSV when piped
    at = names.index("debian-12")
    assert names[at + 1:at + 6] == ["├─ dev-c", "├─ dev-node", "├─ dev-python", "├─ dev-web",
                                    "└─ netlab"]
    base = repository.built("dev-c").bases[0]
    removed = subprocess.run([*VBOXLAB, "templates", "remove",
                              f"debian-12@{base.template.version}"], capture_output=True,
                             text=True)
    assert removed.returncode != 0
    assert f"debian-12 {base.template.version} is the base of " in removed.stdout + \
        removed.stderr
    assert repository.built(f"debian-12@{base.template.version}")


def test_a_layer_over_a_base_from_elsewhere_is_built_by_apt_in_the_guest(tmp_path, repository):
    """A base built on another machine never runs on the host: its layer's packages are
    installed by apt inside the booted base. The layer's files, commands and services land,
    the build VM's host key does not, and the result boots as its own template."""
    base = repository.built("debian-12")
    repo = TemplateRepository(cache=tmp_path / "cache", search=[tmp_path / "defs"])
    copy = repo.images / "debian-12" / base.template.version
    copy.mkdir(parents=True)
    for file in base.manifest["files"]:
        os.link(base.folder / file, copy / file)
    manifest = dict(base.manifest, imported={"from": "elsewhere.tar.gz", "foreign": True,
                                             "at": "2026-11-28T00:00:00Z"})
    (copy / "manifest.json").write_text(json.dumps(manifest))
    definition = tmp_path / "defs" / "hello-layer"
    (definition / "rootfs" / "etc").mkdir(parents=True)
    (definition / "rootfs" / "etc" / "motd.lab").write_text("made by a layer\n")
    (definition / "template.toml").write_text(textwrap.dedent(f"""\
        name = "hello-layer"
        version = "1.0.0"
        description = "hello, from apt in the guest"
        base = "debian-12=={base.template.version}"
        [build]
        recipe = "layer"
        packages = ["hello"]
        commands = ["hello > /etc/hello.txt"]
        services = ["hello-at-boot.service"]
        """))
    (definition / "rootfs" / "etc" / "systemd" / "system").mkdir(parents=True)
    (definition / "rootfs" / "etc" / "systemd" / "system" / "hello-at-boot.service").write_text(
        "[Unit]\nDescription=hello at boot\n[Service]\nType=oneshot\nRemainAfterExit=yes\n"
        "ExecStart=/bin/sh -c 'hello > /run/hello-at-boot'\n"
        "[Install]\nWantedBy=multi-user.target\n")
    said: list[str] = []
    built, ran = repo.build("hello-layer", progress=said.append)
    assert ran and any("installed in the guest (slower)" in s and "another machine" in s
                       for s in said)
    assert "hello" in {p.split("=")[0] for p in built.manifest["packages_added"]}
    with Lab(base=tmp_path / "labs", repository=repo, boot_timeout=240) as lab:
        vm = lab.vm("hi", template="hello-layer")
        assert vm.succeed("hello") == "Hello, world!\n"
        assert vm.succeed("cat /etc/hello.txt /etc/motd.lab") == \
            "Hello, world!\nmade by a layer\n"
        vm.wait_for_unit("hello-at-boot.service")
        assert vm.succeed("cat /run/hello-at-boot") == "Hello, world!\n"
        assert vm.succeed("cat /etc/vboxlab/template") == "hello-layer 1.0.0\n"
        # this VM's own host key (the build VM's was removed), a fresh machine id
        assert (vm.state_dir / "known_hosts.pub").read_text().split()[1] in \
            vm.succeed("cat /etc/ssh/ssh_host_ed25519_key.pub")
        assert vm.succeed("ls /var/lib/apt/lists/ | grep -c _Packages || true").strip() == "0"
