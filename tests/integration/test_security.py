"""Security scans as assertions against real machines: a namespace host scanning a VM, the tiny
template, debian-12 and the deliberately weak vulnlab, each scanner proven both ways."""

import json
import subprocess
import textwrap
import xml.etree.ElementTree as ET

import pytest

from vboxlab.errors import ScanFailed
from vboxlab.lab import Lab
from vboxlab.pytest.policy import missing_capability, require_root
from vboxlab.security.aptlists import package_lists, read_list, stanzas
from vboxlab.security.debian_security import newer
from vboxlab.templates import TemplateRepository

EICAR = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


@pytest.fixture(scope="module")
def scan_lab(tmp_path_factory):
    """topologies/scan-lab.yaml: the VM ``web`` serving HTTP, the namespace host ``client``."""
    require_root("a namespace host")
    with Lab(base=tmp_path_factory.mktemp("scanlab") / "labs") as lab, \
            lab.network("topologies/scan-lab.yaml", seed=11):
        lab.node("web").succeed("mkdir -p /srv && echo hi > /srv/index.html && "
                                "httpd -p 80 -h /srv")
        lab.node("web").wait_for_port(22)  # sshd starts beside the agent, a moment later
        yield lab


@pytest.fixture(scope="module")
def debian_and_vulnlab(tmp_path_factory):
    """A clean debian-12 machine and a vulnlab one, booted side by side."""
    for name in ("debian-12", "vulnlab"):
        status = TemplateRepository().status(name)
        if status != "built":
            missing_capability(f"template {name} is {status} (`vboxlab templates build {name}` "
                               "as root)")
    with Lab(base=tmp_path_factory.mktemp("weak") / "labs", boot_timeout=240) as lab:
        booted = lab.vms({"clean": {"template": "debian-12"}, "weak": {"template": "vulnlab"}})
        machines = booted["clean"], booted["weak"]
        machines[1].wait_for_port(31337)
        machines[0].wait_for_unit("ssh.service")  # debian-12 answers before its services run
        yield machines


def test_ports_of_a_vm_scanned_from_a_namespace_host(scan_lab, scan):
    scan.lab = scan_lab  # this module's own lab, not the session's
    web = scan_lab.node("web")
    report = scan.ports(web, from_node="client")
    assert report.open_ports == {22, 80}
    assert report.address == "192.168.60.10"
    assert report.scanned_from == "client"
    assert report.service(80).service == "http"
    with pytest.raises(ScanFailed, match=r"unexpected open ports: 80/tcp http.*"
                                          r"expected but not open: 443"):
        report.assert_open({22, 443})
    detail = scan.ports(web, from_node="client", ports=[22], versions="light")
    assert detail.service(22).product == "OpenSSH"


def test_yara_over_the_payloads_that_crossed_a_link(scan_lab, scan, tmp_path):
    scan.lab = scan_lab
    network = scan_lab.current_network
    scan_lab.node("web").succeed(f"printf '%s' '{EICAR}' > /srv/eicar.com")
    with network.capture("web", "lan", tmp_path):
        scan_lab.node("client").succeed("curl -sf -o /dev/null http://192.168.60.10/eicar.com")
    report = scan.captures(network)
    [detection] = report.detections
    assert detection.name == "EICAR_embedded"  # behind the HTTP headers, not at offset 0
    assert detection.path.startswith("web-to-lan.pcap: tcp 192.168.60.10:80 -> ")
    assert report.scanned >= 2  # the request's stream and the response's


def test_ports_from_the_host_count_only_what_the_guest_listens_on(vm, scan):
    # QEMU accepts on a forwarded port even when nothing in the guest listens behind it
    vm.wait_for_port(22)
    report = scan.ports(vm, ports=[22, 8080])
    assert report.open_ports == {22}
    assert report.service(8080).state == "closed"


def test_malware_in_guest_files_built_at_test_time(vm, scan):
    vm.succeed(f"mkdir -p /data/www && printf '%s' '{EICAR}' > /data/www/eicar.com && "
               "echo '<?php system($_GET[\"c\"]); ?>' > /data/www/x.php && "
               "dd if=/dev/zero of=/data/www/big.bin bs=1024 count=2048 2>/dev/null && "
               "echo hello > /data/www/index.html")
    report = scan.malware(vm, ["/data/www", "/etc"], file_limit=1024 * 1024)
    assert {(d.path, d.engine, d.name) for d in report.detections} == {
        ("/data/www/eicar.com", "yara", "EICAR_test_file"),
        ("/data/www/eicar.com", "clamav", "Vboxlab.Test.EICAR-body.UNOFFICIAL"),
        ("/data/www/x.php", "yara", "php_webshell_request_exec")}
    assert report.skipped == [("/data/www/big.bin",
                               "2097152 bytes, over the 1048576 byte limit")]
    assert report.scanned >= 3
    assert any("vboxlab-eicar.ndb" in e for e in report.engines)
    with pytest.raises(ScanFailed, match=r"eicar\.com"):
        report.assert_clean()
    clean = scan.malware(vm, ["/etc", "/bin", "/nowhere"])
    assert not clean
    assert clean.skipped == [("(listing)", "find: /nowhere: No such file or directory")]


def test_ssh_baseline_passes_on_tiny_and_names_a_weakened_setting(vm, scan):
    scan.compliance(vm, profile="ssh-baseline").assert_passed()
    scan.compliance(vm, profile="tiny-baseline").assert_passed()
    vm.succeed("sed -i '1i PermitRootLogin yes' /etc/ssh/sshd_config && "
               "chmod 0666 /etc/passwd")
    ssh = scan.compliance(vm, profile="ssh-baseline")
    assert {r.rule.id for r in ssh.failed} == {"ssh-permit-root-login"}
    with pytest.raises(ScanFailed, match=r"FAIL ssh-permit-root-login.*permitrootlogin yes"):
        ssh.assert_passed()
    tiny = scan.compliance(vm, profile="tiny-baseline")
    assert {r.rule.id for r in tiny.failed} == {"tiny-passwd-mode",
                                                "tiny-etc-not-world-writable"}


def expected_behind(inventory_text):
    """Independently of vboxlab: packages whose installed version apt's security list beats,
    compared with the host's own dpkg."""
    security = {}
    for path in package_lists("bookworm-security"):
        for listed in stanzas(read_list(path)):
            security[listed.name] = listed.version
    behind = set()
    for line in inventory_text.splitlines():
        name, version = line.split("\t")
        if name in security and subprocess.run(
                ["dpkg", "--compare-versions", version, "lt", security[name]],
                check=False).returncode == 0:
            behind.add(name)
    return behind


def test_vulnerabilities_of_debian_12_come_from_the_security_suite(debian_and_vulnlab, scan):
    clean, weak = debian_and_vulnlab
    listing = "dpkg-query -W -f='${Package}\\t${Version}\\n'"
    for machine in (clean, weak):
        installed = machine.succeed(listing)
        report = scan.vulnerabilities(machine)
        assert len(report.inventory) == len(installed.splitlines())
        assert report.packages == expected_behind(installed)
        assert report.findings
        assert all(newer(f.fixed, f.installed) for f in report.findings)
    # the CVE ids come from the updated packages' changelogs
    assert any(i.startswith("CVE-") for f in report.findings for i in f.ids)
    assert "unzip" in report.packages  # vulnlab pins it behind its security update


def test_every_scanner_finds_the_weaknesses_of_vulnlab_and_none_on_debian_12(
        debian_and_vulnlab, scan):
    clean, weak = debian_and_vulnlab
    assert scan.ports(clean, ports=[22, 31337]).open_ports == {22}
    assert scan.ports(weak, ports=[22, 31337]).open_ports == {22, 31337}
    assert not scan.malware(clean, ["/root", "/etc"])
    assert scan.malware(weak, ["/root", "/etc"]).detected_paths == {"/root/eicar.com"}
    scan.compliance(clean, profile="ssh-baseline").assert_passed()
    weak_ssh = scan.compliance(weak, profile="ssh-baseline")
    assert {r.rule.id for r in weak_ssh.failed} == {"ssh-permit-root-login",
                                                   "ssh-password-authentication"}
    clean_cis = scan.compliance(clean, profile="debian-12-baseline")
    weak_cis = scan.compliance(weak, profile="debian-12-baseline")
    new_failures = {r.rule.id for r in weak_cis.failed} - {r.rule.id for r in clean_cis.failed}
    assert new_failures == {"cis-5.1.20-permit-root-login", "cis-7.1.11-world-writable"}
    assert "/etc/vulnlab-shared.conf" in next(
        r.evidence for r in weak_cis.failed if r.rule.id == "cis-7.1.11-world-writable")
    # what a fresh debootstrap system fails of the benchmark, every rule reported
    assert {r.rule.id for r in clean_cis.failed} >= {"cis-5.1.8-x11-forwarding"}
    assert not clean_cis.errors


def test_scan_results_land_in_the_report_as_json_and_junit(pytester, tmp_path):
    require_root("a namespace host")
    profile = tmp_path / "host-rules.yaml"
    profile.write_text(textwrap.dedent("""\
        name: host-rules
        title: two rules, one failing
        rules:
          - id: has-passwd
            title: /etc/passwd exists
            check: {kind: file_exists, path: /etc/passwd}
          - id: no-passwd
            title: /etc/passwd does not exist
            severity: high
            check: {kind: file_exists, path: /etc/passwd, present: false}
        """))
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.compliance(profile={str(profile)!r})
        def test_host(lab, scan):
            node = lab.netns_host("n1") if "n1" not in lab.machines else lab["n1"]
            scan.compliance(node, profile={str(profile)!r}).assert_passed()
    """)
    scans = tmp_path / "scans"
    result = pytester.runpytest_subprocess(f"--lab-dir={tmp_path / 'labs'}",
                                           f"--lab-scan-dir={scans}", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*FAIL no-passwd ?high? /etc/passwd does not exist: "
                                 "/etc/passwd exists*",
                                 "*vboxlab scan: compliance of n1*",
                                 "*no-passwd*fail*high*/etc/passwd exists*"])
    data = json.loads(next(scans.glob("*.json")).read_text())
    assert [r["status"] for r in data[0]["results"]] == ["pass", "fail"]
    junit = next(scans.glob("*.xml")).read_text()
    assert 'tests="2"' in junit and 'failures="1"' in junit
    # a test per rule: JUnit shows one line each
    per_rule = pytester.runpytest_subprocess(
        f"--lab-dir={tmp_path / 'labs'}", "--lab-compliance-as-tests",
        f"--junitxml={tmp_path / 'rules.xml'}", "-p", "no:cacheprovider")
    per_rule.assert_outcomes(passed=1, failed=1)
    cases = ET.parse(tmp_path / "rules.xml").getroot().iter("testcase")
    assert sorted(c.get("name") for c in cases) == ["test_host[has-passwd]",
                                                    "test_host[no-passwd]"]


def test_lynis_audits_the_guest_and_sees_a_weakened_sshd(vm, scan):
    vm.succeed("sed -i '1i PermitRootLogin yes' /etc/ssh/sshd_config")
    report = scan.lynis(vm, groups="ssh")
    assert report.version.startswith("3.")
    assert 0 <= report.hardening_index <= 100
    assert "SSH-7408" in report.tests_executed
    assert any(s.test == "SSH-7408" and "PermitRootLogin" in s.details
               for s in report.suggestions), report.table()
    assert vm.execute("test -e /tmp/vboxlab-lynis").failed  # nothing left in the guest


def test_flows_of_real_traffic_and_cleartext_credentials(scan_lab, tmp_path):
    network = scan_lab.current_network
    client = scan_lab.node("client")
    with network.capture("client", "lan", tmp_path):
        client.succeed("curl -sf -o /dev/null http://192.168.60.10/")
        client.succeed("curl -sf -o /dev/null -u alice:s3cret http://192.168.60.10/")
    flows = network.flows("client", "lan")
    web = flows.between("client", "web")
    assert web.ports == {80} and web.apps == {"http"}
    assert not flows.to_outside()
    assert len(web.protocol("tcp")) == 2
    first = web[0]
    assert (first.client_node, first.server_node, first.server_port) == ("client", "web", 80)
    assert {"SYN", "ACK", "FIN"} <= first.tcp_flags and first.packets_to_client >= 2
    counters = network.link("client", "lan").counters()
    captured = sum(f.packets for f in flows)
    assert captured <= counters["a_to_b"]["tx_packets"] + counters["b_to_a"]["tx_packets"]
    [credential] = flows.cleartext_credentials()
    assert (credential.kind, credential.user) == ("HTTP basic", "alice")
    assert "s3cret" not in str(credential)
    rates = network.rates("client", "lan", interval=0.5)
    assert sum(r.packets for r in rates["a_to_b"]) == sum(
        f.packets_to_server for f in flows if f.client_node == "client")


def test_real_attacks_each_raise_their_alert_and_clean_traffic_none(scan_lab, tmp_path):
    import sys

    from vboxlab.security.ids import Suricata, inspect_network

    network = scan_lab.current_network
    client, web = scan_lab.node("client"), scan_lab.node("web")
    engine = Suricata()
    with network.capture("client", "lan", tmp_path / "clean"):
        client.succeed("curl -sf -o /dev/null http://192.168.60.10/")
        client.succeed("ping -c 2 192.168.60.10")
    link = [("client", "lan")]  # the module's network has other captures from earlier tests
    clean = inspect_network(network, engine, tmp_path / "ids-clean", link)
    assert clean.links == ["client<->lan"]
    clean.assert_clean()
    web.succeed("(nc -l -p 4444 > /tmp/got 2>&1 &); sleep 0.3")
    with network.capture("client", "lan", tmp_path / "attacks"):
        client.succeed("nmap -sS -Pn -n -p 1-200 192.168.60.10")
        client.succeed(  # failing logins, again and again
            "for i in 1 2 3 4 5 6; do ssh -o BatchMode=yes -o ConnectTimeout=5 "
            "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
            "nobody@192.168.60.10 true || true; done")
        client.fail("curl -sf -o /dev/null http://192.168.60.10/vboxlab-canary")
        client.succeed(f"{sys.executable} -c \"import socket; s = socket.create_connection("
                       f"('192.168.60.10', 4444)); s.sendall(b'id\\n'); s.close()\"")
        web.wait_until_succeeds("grep -q id /tmp/got", timeout=10)
    report = inspect_network(network, engine, tmp_path / "ids-attacks", link)
    assert {1000001, 1000002, 1000003, 1000004} <= report.sids
    [canary] = report.by_sid(1000003)
    assert (canary.source, canary.target, canary.target_port, canary.link) == (
        "192.168.60.1", "192.168.60.10", 80, "client<->lan")
    report.check(expect=[1000001, 1000002, 1000003, 1000004], forbid=[1000007, 1000008])
    with pytest.raises(ScanFailed, match="unexpected IDS alert"):
        report.assert_clean()
