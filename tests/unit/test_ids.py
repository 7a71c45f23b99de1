"""Suricata over crafted captures: each shipped rule fires on its attack and stays quiet on
ordinary traffic; the alerts, the expect/forbid check and bad rules read clearly."""

import json
import shutil

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from vboxlab.errors import ConfigError, ScanFailed
from vboxlab.pytest.policy import missing_capability
from vboxlab.security.ids import IdsReport, Suricata, inspect_files, parse_sid

from .test_flows import tcp_session


@pytest.fixture(scope="module")
def suricata():
    if shutil.which("suricata") is None:
        missing_capability("suricata is not installed (make deps installs it from backports)")
    return Suricata()


def write(tmp_path, frames, name="t.pcap"):
    path = tmp_path / name
    wrpcap(str(path), frames)
    return path


def run(suricata, tmp_path, frames):
    return inspect_files([write(tmp_path, frames)], suricata, tmp_path / "ids", link="a<->b")


def test_a_canary_request_raises_its_alert_with_the_flow(suricata, tmp_path):
    frames = tcp_session("10.0.0.1", "10.0.0.2", 40000, 80,
                         [b"GET /vboxlab-canary HTTP/1.1\r\nHost: x\r\n\r\n"],
                         [b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"])
    report = run(suricata, tmp_path, frames)
    [alert] = report.alerts
    assert (alert.sid, alert.link, alert.app) == (1000003, "a<->b", "http")
    assert (alert.source, alert.source_port, alert.target, alert.target_port) == (
        "10.0.0.1", 40000, "10.0.0.2", 80)
    assert alert.time == pytest.approx(1000.04, abs=0.02)  # the packet's time, not now
    assert "sid:1000003 VBOXLAB canary URI requested (TCP 10.0.0.1:40000 -> 10.0.0.2:80" in str(
        alert)
    report.check(expect=["sid:1000003"])
    with pytest.raises(ScanFailed, match=r"1 unexpected IDS alert\(s\):\n  sid:1000003"):
        report.check()
    with pytest.raises(ScanFailed, match="never raised: sid:1000004"):
        report.check(expect=[1000003, "1000004"], forbid="none")
    assert json.loads(json.dumps(report.to_json()))["alerts"][0]["sid"] == 1000003


def test_ordinary_traffic_raises_nothing(suricata, tmp_path):
    frames = tcp_session("10.0.0.1", "10.0.0.2", 40000, 80,
                         [b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"],
                         [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"])
    frames += tcp_session("10.0.0.1", "10.0.0.2", 40001, 22, [b"SSH-2.0-OpenSSH_9.2\r\n"],
                          [b"SSH-2.0-OpenSSH_9.2\r\n"], start=1001)
    report = run(suricata, tmp_path, frames)
    assert not report and report.summary().startswith("no IDS alerts on 1 link")
    report.assert_clean()


def test_a_syn_scan_repeated_ssh_sessions_and_a_forbidden_port(suricata, tmp_path):
    scan = []
    for port in range(20, 60):
        syn = Ether() / IP(src="10.0.0.9", dst="10.0.0.2", flags=0) / TCP(
            sport=61000, dport=port, flags="S", window=1024, options=[("MSS", 1460)])
        rst = Ether() / IP(src="10.0.0.2", dst="10.0.0.9") / TCP(sport=port, dport=61000,
                                                                  flags="RA")
        syn.time, rst.time = 1000 + port / 100, 1000 + port / 100 + 0.001
        scan += [syn, rst]
    brute = []
    for attempt in range(6):
        brute += tcp_session("10.0.0.9", "10.0.0.2", 42000 + attempt, 22,
                             [b"SSH-2.0-libssh_0.10\r\n"], [b"SSH-2.0-OpenSSH_9.2\r\n"],
                             start=1010 + attempt)
    shell = tcp_session("10.0.0.2", "10.0.0.9", 43000, 4444, [b"id\n"], [b""], start=1020)
    datagram = Ether() / IP(src="10.0.0.2", dst="10.0.0.9") / UDP(sport=5000, dport=4444) / b"x"
    datagram.time = 1021
    report = run(suricata, tmp_path, scan + brute + shell + [datagram])
    assert report.sids == {1000001, 1000005, 1000002, 1000004, 1000006}
    assert len(report.by_sid("sid:1000001")) == 1  # once per minute and source, not per probe
    assert report.unexpected(forbid=[1000004]) == report.by_sid(1000004)
    assert "sid:1000002 x1" in report.summary()


def test_user_rules_join_the_shipped_ones_and_a_bad_rule_is_named(tmp_path):
    if shutil.which("suricata") is None:
        missing_capability("suricata is not installed")
    mine = tmp_path / "mine.rules"
    mine.write_text('alert udp any any -> any 9999 (msg:"MINE"; sid:2000001; rev:1;)\n')
    engine = Suricata(extra=[mine])
    assert [p.name for p in engine.rules][-1] == "mine.rules"
    packet = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=9999) / b"x"
    packet.time = 5.0
    assert run(engine, tmp_path, [packet]).sids == {2000001}
    mine.write_text('alert udp any any -> any 9999 (msg:"broken"; sid:2000002; bogus:1;)\n')
    with pytest.raises(ConfigError, match=r"Suricata refused the rules.*mine\.rules"):
        Suricata(extra=[mine]).check_rules(tmp_path / "check")
    with pytest.raises(ConfigError, match="no such rules file"):
        Suricata(extra=[tmp_path / "absent.rules"])
    with pytest.raises(ConfigError, match="not a pcap"):
        inspect_files([mine], engine, tmp_path / "x")


def test_rule_ids_and_forbid_values_are_checked():
    assert parse_sid("sid:1000001") == parse_sid("1000001") == parse_sid(1000001) == 1000001
    with pytest.raises(ConfigError, match="'ssh' is not a rule id"):
        parse_sid("ssh")
    with pytest.raises(ConfigError, match="forbid='all'"):
        IdsReport("x").unexpected(forbid="all")


def test_the_traffic_command_reads_a_folder_of_link_captures(suricata, tmp_path):
    from click.testing import CliRunner

    from vboxlab.cli import main

    frames = tcp_session("10.0.0.1", "10.0.0.2", 40000, 80,
                         [b"GET /vboxlab-canary HTTP/1.1\r\nHost: x\r\nAuthorization: Basic "
                          b"YWxpY2U6czNjcmV0\r\n\r\n"], [b"HTTP/1.1 404 Not Found\r\n\r\n"])
    folder = tmp_path / "pcaps"
    folder.mkdir()
    outgoing = [f for f in frames if f[IP].src == "10.0.0.1"]
    write(folder, outgoing, "client-to-lan.pcap")
    write(folder, [f for f in frames if f[IP].src != "10.0.0.1"], "lan-to-client.pcap")
    runner = CliRunner()
    flows = runner.invoke(main, ["traffic", "flows", str(folder), "--node", "10.0.0.1=client",
                                 "--json"])
    assert flows.exit_code == 0, flows.output
    [flow] = json.loads(flows.output)
    assert (flow["client_node"], flow["server_port"], flow["links"]) == (
        "client", 80, ["client<->lan"])
    creds = runner.invoke(main, ["traffic", "flows", str(folder), "--credentials"])
    assert creds.exit_code == 1 and "HTTP basic credentials for user 'alice'" in creds.output
    alerts = runner.invoke(main, ["traffic", "ids", str(folder), "--json"])
    assert alerts.exit_code == 1  # alerts, none expected
    assert {a["sid"] for a in json.loads(alerts.stdout)["alerts"]} == {1000003, 1000007}
    junit = tmp_path / "ids.xml"
    allowed = runner.invoke(main, ["traffic", "ids", str(folder), "--expect", "sid:1000003",
                                   "--expect", "1000007", "--junit", str(junit)])
    assert allowed.exit_code == 0, allowed.output
    assert 'failures="2"' in junit.read_text()
    missing = runner.invoke(main, ["traffic", "ids", str(tmp_path / "none")])
    assert missing.exit_code != 0 and "no such capture file or folder" in missing.output
