"""The pytest plugin end to end, through pytester in subprocesses."""

import json
import re
import subprocess
import sys

from .helpers import qemu_pids


def test_options_are_registered(pytester):
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines([
        "*--lab-provider=LAB_PROVIDER*", "*--lab-template=LAB_TEMPLATE*", "*--lab-dir=LAB_DIR*",
        "*--lab-keep*", "*--lab-accel=*",
    ])


def test_markers_are_registered(pytester):
    result = pytester.runpytest_subprocess("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.vm:*", "@pytest.mark.root:*"])


def test_vm_marker_is_added_to_tests_that_use_machines(pytester):
    pytester.makepyfile("""
        def test_with_vm(vm):
            pass

        def test_without():
            pass
    """)
    result = pytester.runpytest_subprocess("-m", "not vm", "--strict-markers")
    result.assert_outcomes(passed=1, deselected=1)


def test_a_failing_test_report_carries_console_and_lab_log(pytester, base):
    pytester.makepyfile("""
        def test_fails(vm):
            vm.succeed("echo about to fail; exit 4")
    """)
    result = pytester.runpytest_subprocess("--lab-dir", str(base))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*GuestCommandError*exit 4*status 4*",
        "*vboxlab console of vm*",
        "*vboxlab: tiny 1.0.0 ready*",
        "*vboxlab lab log*",
        "*answered its command channel*",
    ])
    assert qemu_pids(str(base)) == []


def test_a_template_option_that_does_not_exist_fails_clearly(pytester, base):
    pytester.makepyfile("""
        def test_it(vm):
            pass
    """)
    result = pytester.runpytest_subprocess("--lab-dir", str(base), "--lab-template", "nosuch")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*unknown template 'nosuch'; known templates: *tiny*"])


def test_lab_fixture_with_several_machines_and_options(pytester, base):
    pytester.makepyfile("""
        def test_lab(lab):
            a = lab.vm("a", memory=160)
            b = lab.vm("b", cpus=2)
            assert a.succeed("grep -c ^processor /proc/cpuinfo").strip() == "1"
            assert b.succeed("grep -c ^processor /proc/cpuinfo").strip() == "2"
            total = int(a.succeed("awk '/MemTotal/ {print $2}' /proc/meminfo"))
            assert 100_000 < total < 160 * 1024
    """)
    result = pytester.runpytest_subprocess("--lab-dir", str(base), "--lab-accel", "tcg")
    result.assert_outcomes(passed=1)


def test_lab_keep_leaves_machines_reachable_with_vboxlab_ssh(pytester, base):
    pytester.makepyfile("""
        def test_keep(vm):
            vm.succeed("echo kept-state > /tmp/state")
            eicar = "X5O!P%@AP[4\\\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
            vm.succeed(f"mkdir -p /tmp/www && printf '%s' '{eicar}' > /tmp/www/eicar.com")
    """)
    result = pytester.runpytest_subprocess("--lab-dir", str(base), "--lab-keep")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*vboxlab: kept labs*", "*vm (running): vboxlab ssh * vm *"])
    lab_id = re.search(r"vboxlab ssh (\S+) vm ", result.stdout.str()).group(1)
    cli = [sys.executable, "-m", "vboxlab.cli"]
    try:
        assert qemu_pids(str(base)), "a kept VM must outlive its run"
        labs = subprocess.run([*cli, "labs", "--lab-dir", str(base)], capture_output=True,
                              text=True, check=True).stdout
        assert lab_id in labs and "vm (running)" in labs
        ssh = subprocess.run([*cli, "ssh", lab_id, "vm", "--lab-dir", str(base), "cat",
                              "/tmp/state"], capture_output=True, text=True, timeout=60,
                             check=False)
        assert ssh.returncode == 0, ssh.stderr
        assert ssh.stdout == "kept-state\n"
        # vboxlab scan: the same scans as the fixture, on the kept machine
        where = ["--lab-dir", str(base)]
        compliance = subprocess.run([*cli, "scan", "compliance", lab_id, "vm", "--profile",
                                     "ssh-baseline", "--json", *where], capture_output=True,
                                    text=True, timeout=120, check=False)
        assert compliance.returncode == 0, compliance.stderr
        assert {r["status"] for r in json.loads(compliance.stdout)["results"]} == {"pass"}
        junit = base.parent / "malware.xml"
        malware = subprocess.run([*cli, "scan", "malware", lab_id, "vm", "/tmp/www", "--junit",
                                  str(junit), *where], capture_output=True, text=True,
                                 timeout=120, check=False)
        assert malware.returncode == 1, malware.stderr  # a detection
        assert "/tmp/www/eicar.com" in malware.stdout and 'failures="2"' in junit.read_text()
        ports = subprocess.run([*cli, "scan", "ports", lab_id, "vm", "--ports", "22,8080",
                                "--expect", "22", *where], capture_output=True, text=True,
                               timeout=120, check=False)
        assert ports.returncode == 0, ports.stdout + ports.stderr
        plain_clean = subprocess.run([*cli, "clean", "--lab-dir", str(base)],
                                     capture_output=True, text=True, check=True).stdout
        assert "removed 0 lab(s)" in plain_clean
    finally:
        removed = subprocess.run([*cli, "clean", "--lab-dir", str(base), "--lab", lab_id],
                                 capture_output=True, text=True, check=True).stdout
    assert f"removed 1 lab(s): {lab_id}" in removed
    assert qemu_pids(str(base)) == []
    assert list(base.iterdir()) == []


def test_other_plugins_hook_into_the_lab(pytester, base):
    pytester.makeconftest("""
        seen = []

        def pytest_vboxlab_lab_created(lab, config):
            seen.append(("lab", lab.id))

        def pytest_vboxlab_machine_ready(machine, lab):
            machine.succeed("echo hooked > /tmp/hook")
            seen.append(("machine", machine.name))
    """)
    pytester.makepyfile("""
        from conftest import seen

        def test_hooks(lab):
            vm = lab.vm("hooked")
            assert vm.succeed("cat /tmp/hook") == "hooked\\n"
            assert [kind for kind, _ in seen] == ["lab", "machine"]
    """)
    result = pytester.runpytest_subprocess("--lab-dir", str(base))
    result.assert_outcomes(passed=1)
