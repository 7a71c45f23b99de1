"""The tools users already have, on lab machines: plain ssh/scp/rsync through an ssh-config,
pytest-testinfra through vm.host, Ansible through vboxlab inventory."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vboxlab.errors import NotSupported
from vboxlab.lab import Lab
from vboxlab.pytest.policy import require_tool

from .helpers import cli

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


@pytest.fixture(scope="module")
def machines(tmp_path_factory):
    """A tiny and a debian-12 machine, booted side by side, in a lab the CLI can find."""
    base = tmp_path_factory.mktemp("tools") / "labs"
    with Lab(base=base, accel="tcg") as lab:
        booted = lab.vms({"tiny1": {}, "deb1": {"template": "debian-12"}})
        tiny_vm, deb_vm = booted["tiny1"], booted["deb1"]
        deb_vm.wait_for_unit("ssh.service")
        yield lab, tiny_vm, deb_vm


def test_plain_ssh_scp_and_rsync_use_the_ssh_config(machines, tmp_path):
    _, tiny, deb = machines
    ssh = require_tool("ssh", "openssh-client")
    config = tmp_path / "ssh_config"
    config.write_text(tiny.ssh_config().as_openssh() + deb.ssh_config().as_openssh())
    run = subprocess.run([ssh, "-F", str(config), "tiny1", "hostname"], capture_output=True,
                         text=True, timeout=60, check=False)
    assert (run.returncode, run.stdout) == (0, "tiny1\n"), run.stderr
    source = tmp_path / "tree"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "data.bin").write_bytes(bytes(range(256)) * 64)
    rsync = require_tool("rsync", "rsync")
    copied = subprocess.run([rsync, "-a", "-e", f"ssh -F {config}", f"{source}/",
                             "deb1:/tmp/tree/"], capture_output=True, text=True, timeout=120,
                            check=False)
    assert copied.returncode == 0, copied.stderr
    assert deb.succeed("sha256sum /tmp/tree/sub/data.bin").split()[0] == \
        subprocess.run(["sha256sum", str(source / "sub" / "data.bin")], capture_output=True,
                       text=True, check=True).stdout.split()[0]
    scp = subprocess.run(["scp", "-F", str(config), "tiny1:/etc/hostname", str(tmp_path / "h")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert scp.returncode == 0 and (tmp_path / "h").read_text() == "tiny1\n", scp.stderr


def test_the_cli_prints_the_same_facts_and_a_different_host_key_is_refused(machines, tmp_path):
    lab, tiny, _ = machines
    printed = cli("ssh-config", lab.id, "tiny1", "--lab-dir", str(lab.base)).stdout
    assert printed == tiny.ssh_config().as_openssh()
    assert "StrictHostKeyChecking yes" in printed and "IdentitiesOnly yes" in printed
    facts = tiny.ssh_config()
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[{facts.host}]:{facts.port} "
                     f"{' '.join(Path(f'{other}.pub').read_text().split()[:2])}\n")
    config = tmp_path / "ssh_config"
    config.write_text(printed.replace(str(facts.known_hosts), str(wrong)))
    run = subprocess.run(["ssh", "-F", str(config), "tiny1", "true"], capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 255 and "Host key verification failed" in run.stderr


def test_testinfra_modules_agree_with_the_machine(machines):
    _, tiny, deb = machines
    for vm in (tiny, deb):
        host = vm.host
        assert host.file("/etc/hostname").content_string == vm.succeed("cat /etc/hostname")
        assert host.user("root").uid == 0
        assert host.sysctl("kernel.hostname") == vm.name
        assert host.file("/etc").is_directory and not host.file("/nonexistent").exists
        assert host.run("exit 3").rc == 3
    assert tiny.host.socket("tcp://0.0.0.0:22").is_listening or \
        tiny.host.socket("tcp://:::22").is_listening
    assert deb.host.user("root").home == "/root"  # getent: not in tiny's busybox
    assert deb.host.package("openssh-server").is_installed
    assert deb.host.package("openssh-server").version == \
        deb.succeed("dpkg-query -W -f='${Version}' openssh-server")
    assert deb.host.service("ssh").is_running and deb.host.service("ssh").is_enabled
    assert deb.host.file("/etc/shadow").mode == 0o640
    assert deb.host.file("/etc/shadow").group == "shadow"


def test_ansible_runs_against_the_inventory(machines, tmp_path):
    lab, _, deb = machines
    playbook_bin = shutil.which("ansible-playbook", path=str(BIN)) or \
        shutil.which("ansible-playbook")
    if playbook_bin is None:
        pytest.fail("ansible-core is a dev dependency (pip install -e '.[dev]')")
    for fmt in ("ini", "yaml", "json"):
        inventory = tmp_path / f"inventory.{fmt}"
        inventory.write_text(cli("inventory", lab.id, "--format", fmt, "--lab-dir",
                                 str(lab.base)).stdout)
        listed = subprocess.run([str(BIN / "ansible-inventory"), "-i", str(inventory),
                                 "--list"], capture_output=True, text=True, check=True).stdout
        assert "template_debian_12" in listed and "deb1" in listed and "tiny1" in listed
    env = {"ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_NOCOLOR": "1", "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
           "LC_ALL": "C.UTF-8", "ANSIBLE_SSH_ARGS": "-o ControlMaster=no"}  # no ssh left behind
    # one run (Python starts slowly under TCG): ping everything, then copy a file to debian-12
    playbook = tmp_path / "play.yml"
    playbook.write_text("- hosts: all\n  gather_facts: false\n  tasks:\n"
                        "    - ping:\n"
                        "    - copy: {content: \"from ansible\\n\", dest: /tmp/by-ansible}\n"
                        "      when: \"'template_debian_12' in group_names\"\n")
    played = subprocess.run([playbook_bin, "-i", str(tmp_path / "inventory.yaml"),
                             str(playbook)], capture_output=True, text=True, timeout=300,
                            check=False, env=env)
    recap = played.stdout.split("PLAY RECAP")[-1]
    assert re.search(r"deb1\s+: ok=2\s+changed=1\s.*failed=0", recap), played.stdout
    assert re.search(r"tiny1\s+: ok=0\s.*failed=1", recap), played.stdout  # tiny: no python
    assert "python3" in played.stdout
    assert deb.succeed("cat /tmp/by-ansible") == "from ansible\n"


def test_namespace_hosts_have_no_ssh_config_but_testinfra_works(tmp_path):
    from tests.providers.conftest import provider_or_skip

    with Lab(base=tmp_path / "labs") as lab:
        provider_or_skip(lab, "netns")
        host = lab.vm("ns1", provider="netns")
        with pytest.raises(NotSupported, match="has no SSH"):
            host.ssh_config()
        assert host.host.run("echo hi").stdout == "hi\n"
