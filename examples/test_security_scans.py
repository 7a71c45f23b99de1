"""Security scans as plain assertions (README: Security scanning)."""

import pytest


@pytest.mark.lab(topology="topologies/scan-lab.yaml")
def test_web_exposes_only_ssh_and_http(network, lab, scan):
    web = lab.node("web")
    web.succeed("mkdir -p /srv && echo hi > /srv/index.html && httpd -p 80 -h /srv")
    web.wait_for_port(22)  # a machine answers over its agent before its sshd listens
    report = scan.ports(web, from_node="client")  # the host's nmap in the namespace host
    report.assert_open({22, 80})
    assert report.service(80).service == "http"


def test_tiny_is_not_behind_any_security_update(vm, scan):
    report = scan.vulnerabilities(vm)
    assert not report, report.table()
    assert len(report.inventory) > 20  # the Debian packages tiny was made from


def test_ssh_hardening_and_no_malware_in_etc(vm, scan):
    scan.compliance(vm, profile="ssh-baseline").assert_passed()
    scan.malware(vm, ["/etc"]).assert_clean()
