"""Security scanning without a VM: parsers, advisory matching, allowlists, engines, profiles."""

import datetime
import json
import shutil
import socket
import subprocess
import threading
import xml.etree.ElementTree as ET
import zipfile

import pytest

from vboxlab.errors import ConfigError, ScanError, ScanFailed
from vboxlab.pytest.policy import missing_capability
from vboxlab.security.allowlist import Allowlist
from vboxlab.security.checks import Status
from vboxlab.security.compliance import ComplianceReport, RuleResult, load_profile
from vboxlab.security.debian_security import SecuritySuite, SuiteUpdate, changelog_cves
from vboxlab.security.inventory import (
    InstalledPackage,
    Inventory,
    parse_dpkg_status,
    source_of,
)
from vboxlab.security.malware import ClamavEngine, YaraEngine
from vboxlab.security.osv import OsvDatabase
from vboxlab.security.ports import PortReport, nmap_argv, parse_nmap_xml, port_list
from vboxlab.security.results import Severity, write_json, write_junit
from vboxlab.security.vulns import VulnerabilityScanner

EICAR = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def need(tool):
    if shutil.which(tool) is None:
        missing_capability(f"{tool} is not installed (make deps installs it)")


# -- ports ---------------------------------------------------------------------------------
def test_nmap_output_of_a_real_scan_parses_into_typed_ports():
    need("nmap")
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def greet():
        with server:
            for _ in range(3):
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:
                    conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")

    threading.Thread(target=greet, daemon=True).start()
    argv = nmap_argv("127.0.0.1", ports=f"{port},1", versions="light")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True).stdout
    address, ports = parse_nmap_xml(out, what="test")
    server.close()
    assert address == "127.0.0.1"
    by_number = {p.number: p for p in ports}
    assert by_number[port].state == "open"
    assert by_number[port].service == "ssh"
    assert by_number[port].product == "OpenSSH"
    assert by_number[1].state == "closed"


def test_broken_nmap_output_is_a_scan_error_quoting_it():
    with pytest.raises(ScanError, match="does not parse"):
        parse_nmap_xml("<nmaprun><host>", what="scan of x")
    with pytest.raises(ScanError, match="no host"):
        parse_nmap_xml("<nmaprun><runstats/></nmaprun>", what="scan of x")


@pytest.mark.parametrize("bad", ["22;rm -rf /", "0", "70000", "1-2-3", "a"])
def test_port_specs_are_checked_before_nmap_sees_them(bad):
    with pytest.raises(ConfigError, match="ports"):
        port_list(bad)


def test_script_names_are_checked():
    with pytest.raises(ConfigError, match="script"):
        nmap_argv("10.0.0.1", ports=None, versions=False, scripts=["x;reboot"])
    with pytest.raises(ConfigError, match="versions"):
        nmap_argv("10.0.0.1", ports=None, versions="heavy")  # type: ignore[arg-type]


def test_assert_open_names_the_unexpected_and_missing_ports():
    xml = ("<nmaprun><host><address addr='10.0.0.5' addrtype='ipv4'/><ports>"
           "<port protocol='tcp' portid='22'><state state='open'/><service name='ssh' "
           "product='OpenSSH' version='9.2p1'/></port>"
           "<port protocol='tcp' portid='80'><state state='open'/><service name='http'/></port>"
           "</ports></host></nmaprun>")
    address, ports = parse_nmap_xml(xml, what="t")
    report = PortReport("web", address, "client", ["nmap"], ports, 0.1)
    assert report.open_ports == {22, 80}
    assert report.service(22).product == "OpenSSH"
    report.assert_open({22, 80})
    with pytest.raises(ScanFailed) as failed:
        report.assert_open({22, 443})
    assert "unexpected open ports: 80/tcp http" in str(failed.value)
    assert "expected but not open: 443" in str(failed.value)
    with pytest.raises(KeyError, match="22/tcp ssh"):
        report.service(443)


# -- inventory and the Debian security suite ------------------------------------------------
def test_dpkg_status_gives_installed_packages_and_their_sources():
    status = ("Package: libssl3\nStatus: install ok installed\nVersion: 3.0.11-1~deb12u2\n"
              "Source: openssl\n\nPackage: gone\nStatus: deinstall ok config-files\n"
              "Version: 1\n\nPackage: libpcre2-8-0\nStatus: install ok installed\n"
              "Version: 10.42-1\nSource: pcre2 (10.42-1)\n")
    packages = parse_dpkg_status(status)
    assert packages == [InstalledPackage("libssl3", "3.0.11-1~deb12u2", "openssl",
                                         "3.0.11-1~deb12u2"),
                        InstalledPackage("libpcre2-8-0", "10.42-1", "pcre2", "10.42-1")]
    assert source_of("linux-image-amd64", "6.1", "linux-signed-amd64 (6.1.2)") == (
        "linux-signed-amd64", "6.1.2")


def test_security_suite_marks_older_packages_from_apt_lists(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "deb.debian.org_debian-security_dists_bookworm-security_main_binary-amd64_Packages"
     ).write_text("Package: openssl\nVersion: 3.0.15-1~deb12u1\nFilename: pool/o/openssl.deb\n"
                  "Size: 100\n\nPackage: libssl3\nSource: openssl\nVersion: 3.0.15-1~deb12u1\n"
                  "Size: 50\n")
    suite = SecuritySuite(lists=lists, cache=tmp_path / "cache")
    installed = (InstalledPackage("openssl", "3.0.11-1~deb12u2", "openssl", "3.0.11-1~deb12u2"),
                 InstalledPackage("libssl3", "3.0.15-1~deb12u1", "openssl", "3.0.15-1~deb12u1"),
                 InstalledPackage("bash", "5.2.15-2+b2", "bash", "5.2.15-2+b2"))
    updates = suite.updates(installed)
    assert [(u.package.name, u.fixed.version) for u in updates] == [
        ("openssl", "3.0.15-1~deb12u1")]
    assert isinstance(updates[0], SuiteUpdate)
    with pytest.raises(ScanError, match="apt-get update"):
        SecuritySuite("trixie-security", lists=lists)


def test_changelog_cves_are_those_between_installed_and_fixed():
    text = (
        "openssl (3.0.15-1~deb12u1) bookworm-security; urgency=medium\n\n"
        "  * Fix CVE-2024-5535 and CVE-2024-9143.\n\n"
        " -- A <a@example.org>  Mon, 21 Oct 2024 10:00:00 +0000\n\n"
        "openssl (3.0.14-1~deb12u1) bookworm-security; urgency=medium\n\n"
        "  * CVE-2024-4741\n\n"
        " -- A <a@example.org>  Mon, 01 Jul 2024 10:00:00 +0000\n\n"
        "openssl (3.0.11-1~deb12u2) bookworm; urgency=medium\n\n"
        "  * CVE-2023-5363 (already installed)\n\n"
        " -- A <a@example.org>  Mon, 01 Jan 2024 10:00:00 +0000\n")
    assert changelog_cves(text, "3.0.11-1~deb12u2", "3.0.15-1~deb12u1") == [
        "CVE-2024-5535", "CVE-2024-9143", "CVE-2024-4741"]
    assert changelog_cves(text, "3.0.11-1~deb12u2", "3.0.14-1~deb12u1") == ["CVE-2024-4741"]


# -- OSV -----------------------------------------------------------------------------------
def osv_record(ident="DSA-0001-1", source="openssl", fixed="3.0.15-1~deb12u1", **extra):
    record = {"schema_version": "1.6.0", "id": ident, "modified": "2024-10-21T00:00:00Z",
              "aliases": ["CVE-2024-5535"], "summary": "openssl: buffer over-read",
              "affected": [{"package": {"ecosystem": "Debian:12", "name": source},
                            "ranges": [{"type": "ECOSYSTEM", "events": [
                                {"introduced": "0"}, {"fixed": fixed}]}]}]}
    record.update(extra)
    return record


def inventory(*packages):
    return Inventory("m", tuple(InstalledPackage(*p) for p in packages), "test")


def test_osv_records_match_source_versions_with_severity(tmp_path):
    folder = tmp_path / "osv"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps(osv_record(severity=[
        {"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N"}])))
    (folder / "b.json").write_text(json.dumps(osv_record("DSA-0002-1", source="bash",
                                                         fixed="5.0")))
    database = OsvDatabase(folder)
    assert database.records == 2
    inv = inventory(("libssl3", "3.0.11-1~deb12u2", "openssl", "3.0.11-1~deb12u2"),
                    ("openssl", "3.0.15-1~deb12u1", "openssl", "3.0.15-1~deb12u1"),
                    ("bash", "5.2.15-2+b2", "bash", "5.2.15-2+b2"))
    report = VulnerabilityScanner([database]).assess(inv)
    assert [(f.package, f.severity, f.ids) for f in report.findings] == [
        ("libssl3", Severity.HIGH, ("DSA-0001-1", "CVE-2024-5535"))]
    assert report.findings[0].fixed == "3.0.15-1~deb12u1"
    critical_only = VulnerabilityScanner([database],
                                         min_severity=Severity.CRITICAL).assess(inv)
    assert not critical_only
    assert critical_only.filtered_out == 1
    assert "libssl3" in repr(report)


def test_osv_records_that_break_the_schema_are_refused_naming_file_and_field(tmp_path):
    folder = tmp_path / "osv"
    folder.mkdir()
    bad = osv_record()
    bad["affected"][0]["package"]["name"] = 12
    (folder / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=r"bad\.json breaks the OSV schema at "
                                          r"affected/0/package/name: 12 is not of type"):
        OsvDatabase(folder)
    del bad["modified"]
    (folder / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="'modified' is a required property"):
        OsvDatabase(folder)
    (folder / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"bad\.json is not JSON"):
        OsvDatabase(folder)
    with pytest.raises(ConfigError, match="no such file or folder"):
        OsvDatabase(tmp_path / "missing")


def test_osv_zip_is_read_in_memory_and_size_checked(tmp_path, monkeypatch):
    archive = tmp_path / "osv.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("../../escape.json", json.dumps(osv_record()))
        z.writestr("README.txt", "ignored")
    database = OsvDatabase(archive)
    assert database.records == 1
    assert not (tmp_path.parent / "escape.json").exists()
    monkeypatch.setattr("vboxlab.security.osv.MAX_RECORD_BYTES", 10)
    with pytest.raises(ConfigError, match="over 10 bytes"):
        OsvDatabase(archive)


# -- allowlist -----------------------------------------------------------------------------
def test_allowlist_moves_findings_aside_and_expired_entries_fail(tmp_path):
    folder = tmp_path / "osv"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps(osv_record()))
    inv = inventory(("libssl3", "3.0.11-1~deb12u2", "openssl", "3.0.11-1~deb12u2"))
    source = OsvDatabase(folder)
    good = tmp_path / "allow.yaml"
    tomorrow = datetime.date.today() + datetime.timedelta(days=1)
    good.write_text(f"- id: CVE-2024-5535\n  reason: not reachable in the lab\n"
                    f"  expires: {tomorrow}\n")
    report = VulnerabilityScanner([source], allowlist=Allowlist.load(good)).assess(inv)
    assert not report
    assert [(f.package, why) for f, why in report.allowed] == [
        ("libssl3", "not reachable in the lab")]
    assert [c.skipped for c in report.cases()] == ["allowlisted: not reachable in the lab"]
    expired = tmp_path / "old.yaml"
    expired.write_text("- package: openssl\n  reason: waiting for upstream\n"
                       "  expires: 2020-01-01\n")
    with pytest.raises(ScanFailed, match="openssl expired on 2020-01-01"):
        VulnerabilityScanner([source], allowlist=Allowlist.load(expired)).assess(inv)


@pytest.mark.parametrize(("text", "message"), [
    ("- id: CVE-1\n  expires: 2030-01-01\n", "entry 1: reason"),
    ("- reason: why not\n  expires: 2030-01-01\n", "id, package or both"),
    ("- id: CVE-1\n  reason: fine\n  expires: soon\n", "entry 1: expires"),
    ("id: CVE-1\n", "expected a list"),
])
def test_allowlist_errors_name_the_entry_and_field(tmp_path, text, message):
    path = tmp_path / "allow.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        Allowlist.load(path)


# -- malware engines ----------------------------------------------------------------------
def test_yara_finds_eicar_built_at_test_time_and_bad_rules_are_named(tmp_path):
    engine = YaraEngine()
    found = engine.match("/x/eicar.com", EICAR.encode())
    assert [(d.name, d.source, d.tags) for d in found] == [("EICAR_test_file", "eicar",
                                                            ("test",))]
    assert engine.match("/x/clean", b"hello") == []
    shell = engine.match("/srv/x.php", b"<?php system($_GET['c']); ?>")
    assert [d.name for d in shell] == ["php_webshell_request_exec"]
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "broken.yar").write_text("rule broken { condition: nonsense_here }")
    with pytest.raises(ConfigError, match="do not compile"):
        YaraEngine([rules])
    with pytest.raises(ConfigError, match="no such rules file"):
        YaraEngine([tmp_path / "nowhere"])


def test_clamav_signatures_catch_eicar_also_inside_a_zip(tmp_path):
    need("clamscan")
    engine = ClamavEngine()
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "0").write_text(EICAR)
    with zipfile.ZipFile(folder / "1", "w") as z:
        z.writestr("inner/eicar.com", EICAR)
    (folder / "2").write_text("clean")
    found = engine.scan_folder(folder, {"0": "/root/eicar.com", "1": "/srv/a.zip",
                                        "2": "/etc/motd"})
    assert {d.path for d in found} == {"/root/eicar.com", "/srv/a.zip"}
    assert all(d.name.startswith("Vboxlab.Test.EICAR") for d in found)
    assert "vboxlab-eicar.hdb" in engine.describe()


# -- compliance profiles and reports -------------------------------------------------------
def test_shipped_profiles_load_and_cis_rules_cite_their_section():
    for name in ("ssh-baseline", "tiny-baseline", "debian-12-baseline"):
        profile = load_profile(name)
        assert len({r.id for r in profile.rules}) == len(profile.rules)
    cis = load_profile("debian-12-baseline")
    assert all(r.reference.startswith("CIS Debian Linux 12 Benchmark")
               for r in cis.rules if r.id.startswith("cis-"))


@pytest.mark.parametrize(("text", "message"), [
    ("name: p\ntitle: t\nrules:\n  - id: r1\n    title: x\n    check: {kind: teleport}\n",
     r"rules\[0\] \(id r1\)\.check"),
    ("name: p\ntitle: t\nrules:\n  - id: r1\n    title: x y\n    check: {kind: sshd_setting, "
     "setting: permitrootlogin, allowed: [no]}\n", "allowed.0: Input should be a valid string"),
    ("name: p\ntitle: t\nrules:\n  - id: r1\n    title: x y\n    severity: dire\n"
     "    check: {kind: only_root_uid0}\n", "severity 'dire'"),
    ("name: p\ntitle: t\nrules:\n  - id: r1\n    title: x y\n    check: {kind: file_mode, "
     "path: etc/passwd, max_mode: '0644'}\n", "path"),
    ("name: p\ntitle: t\nrules: []\n", "rules"),
])
def test_profile_errors_name_the_rule_and_field(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_profile(path)


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match="profiles: debian-12-baseline, ssh-baseline"):
        load_profile("pci-dss")
    with pytest.raises(ConfigError, match="give a profile name"):
        load_profile("../../etc/passwd")


def test_results_serialise_to_json_and_junit_one_case_per_rule(tmp_path):
    profile = load_profile("ssh-baseline")
    statuses = [Status.PASS, Status.FAIL, Status.ERROR, Status.NOT_APPLICABLE]
    results = [RuleResult(rule, statuses[i % 4], f"evidence {i}")
               for i, rule in enumerate(profile.rules)]
    report = ComplianceReport("web", profile, results, seconds=0.5)
    assert not report.passed
    with pytest.raises(ScanFailed, match="FAIL ssh-password-authentication"):
        report.assert_passed()
    suites = ET.parse(write_junit([report], tmp_path / "r.xml")).getroot()
    suite = suites.find("testsuite")
    assert suite is not None
    assert suite.get("tests") == str(len(profile.rules))
    assert suite.get("failures") == str(len(report.failed))
    assert suite.get("errors") == str(len(report.errors))
    data = json.loads(write_json([report], tmp_path / "r.json").read_text())
    assert data[0]["profile"] == "ssh-baseline"
    assert [r["status"] for r in data[0]["results"]][:4] == [
        "pass", "fail", "error", "notapplicable"]


def test_lynis_report_is_parsed():
    from vboxlab.security.lynis import parse_report

    text = ("# Lynis Report\nlynis_version=3.0.8\nhardening_index=55\n"
            "warning[]=AUTH-9308|No password set for single mode|-|-|\n"
            "suggestion[]=SSH-7408|Consider hardening SSH configuration|"
            "PermitRootLogin (set YES to NO)|-|\n"
            "tests_executed=SSH-7408|AUTH-9308|\ntests_skipped=PKGS-7392|\n")
    report = parse_report(text, "web")
    assert report.hardening_index == 55
    assert [w.describe() for w in report.warnings] == [
        "AUTH-9308: No password set for single mode"]
    assert report.suggestions[0].details == "PermitRootLogin (set YES to NO)"
    assert report.tests_skipped == ["PKGS-7392"]
    assert report and next(c.failure for c in report.cases()).startswith("AUTH-9308")


def test_capture_streams_are_reassembled_so_rules_match_across_segments(tmp_path):
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    from vboxlab.security.captures import flows, scan_captures

    body = b"HTTP/1.0 200 OK\r\n\r\n" + EICAR.encode()
    first, second = body[:40], body[40:]
    def seg(seq, data):
        return (Ether() / IP(src="10.0.0.1", dst="10.0.0.2")
                / TCP(sport=80, dport=40000, seq=seq, flags="PA") / data)
    packets = [seg(1000 + len(first), second), seg(1000, first), seg(1000, first),
               Ether() / IP(src="10.0.0.2", dst="10.0.0.9") / UDP(sport=5, dport=53) / b"q"]
    pcap = tmp_path / "a-to-b.pcap"
    wrpcap(str(pcap), packets)
    found = flows(pcap)
    assert found[("tcp", "10.0.0.1", 80, "10.0.0.2", 40000)] == body
    assert found[("udp", "10.0.0.2", 5, "10.0.0.9", 53)] == b"q"
    report = scan_captures([tmp_path], YaraEngine(), target="lab")
    assert [(d.path, d.name) for d in report.detections] == [
        ("a-to-b.pcap: tcp 10.0.0.1:80 -> 10.0.0.2:40000", "EICAR_embedded")]
    (tmp_path / "junk.pcap").write_text("not a capture")
    with pytest.raises(ConfigError, match="not a pcap"):
        flows(tmp_path / "junk.pcap")


def test_debsecan_feed_marks_packages_by_binary_or_source_version(tmp_path):
    import zlib

    from vboxlab.security.debsecan import DebsecanFeed

    feed = "\n".join([
        "VERSION 1",
        "CVE-2024-0001,,openssl: heap overflow in X",
        "CVE-2024-0002,,bash: minor",
        "CVE-2024-0003,,zlib: no fix anywhere",
        "",
        "openssl,0,SHRF,3.0.15-1,3.0.15-1~deb12u1 3.0.11-1~deb12u9",
        "bash,1,BL F,5.3-1,",
        "zlib,2,S  ?,,",
        "",
        "openssl,libssl3 openssl",
        "",
    ]).encode()
    path = tmp_path / "bookworm"
    path.write_bytes(zlib.compress(feed))
    database = DebsecanFeed(path)
    inv = inventory(
        ("libssl3", "3.0.11-1~deb12u2", "openssl", "3.0.11-1~deb12u2"),   # behind: found
        ("openssl", "3.0.15-1~deb12u1", "openssl", "3.0.15-1~deb12u1"),   # a fixed version
        ("bash", "5.2.15-2+b2", "bash", "5.2.15-2+b2"),                   # binary entry
        ("zlib1g", "1:1.2.13.dfsg-1", "zlib", "1:1.2.13.dfsg-1"))          # no fix yet
    found = {(f.package, f.ids[0], f.severity, f.fixed) for f in database.findings(
        inv, cve_ids=False)}
    assert found == {("libssl3", "CVE-2024-0001", Severity.HIGH, "3.0.15-1"),
                     ("bash", "CVE-2024-0002", Severity.LOW, "5.3-1"),
                     ("zlib1g", "CVE-2024-0003", Severity.UNKNOWN, "no fix yet")}
    note = next(f.note for f in database.findings(inv, cve_ids=False) if f.package == "libssl3")
    assert note == "openssl: heap overflow in X (remotely exploitable)"
    report = VulnerabilityScanner([database], min_severity=Severity.HIGH,
                                  keep_unknown=False).assess(inv)
    assert report.packages == {"libssl3"}
    path.write_bytes(b"VERSION 1\nCVE-1,,x\n\npkg,7,S   ,,\n")
    with pytest.raises(ConfigError, match="line 4: index 7"):
        DebsecanFeed(path)
    path.write_bytes(b"\x00garbage")
    with pytest.raises(ConfigError, match="neither text nor zlib"):
        DebsecanFeed(path)
