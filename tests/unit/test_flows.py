"""Flows, rates and cleartext credentials, read from captures crafted with scapy."""

import base64

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from vboxlab.errors import ConfigError
from vboxlab.net.flows import Flows, finish, flows_of_files, merge, rates, read_flows

NODES = {"10.0.0.1": "client", "10.0.0.2": "server"}


def tcp_session(client, server, sport, dport, requests, replies, start=1000.0, syn=True):
    """Frames of one TCP conversation (handshake optional), one data segment per message."""
    frames = []
    t = start
    cseq, sseq = 100, 5000

    def frame(src, dst, sp, dp, flags, seq, ack, data=b""):
        nonlocal t
        t += 0.01
        packet = Ether() / IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags=flags, seq=seq,
                                                      ack=ack) / data
        packet.time = t
        return packet

    if syn:
        frames.append(frame(client, server, sport, dport, "S", cseq, 0))
        frames.append(frame(server, client, dport, sport, "SA", sseq, cseq + 1))
        cseq, sseq = cseq + 1, sseq + 1
        frames.append(frame(client, server, sport, dport, "A", cseq, sseq))
    for request, reply in zip(requests, replies, strict=True):
        if request:
            frames.append(frame(client, server, sport, dport, "PA", cseq, sseq, request))
            cseq += len(request)
        if reply:
            frames.append(frame(server, client, dport, sport, "PA", sseq, cseq, reply))
            sseq += len(reply)
    frames.append(frame(client, server, sport, dport, "FA", cseq, sseq))
    return frames


def write(tmp_path, name, frames):
    path = tmp_path / name
    wrpcap(str(path), frames)
    return path


def test_a_tcp_conversation_becomes_one_flow_with_counts_each_way(tmp_path):
    frames = tcp_session("10.0.0.1", "10.0.0.2", 40000, 80, [b"GET / HTTP/1.0\r\n\r\n"],
                         [b"HTTP/1.0 200 OK\r\n\r\nhello"])
    flows = flows_of_files([write(tmp_path, "a.pcap", frames)], nodes=NODES)
    assert len(flows) == 1
    flow = flows[0]
    assert (flow.protocol, flow.client, flow.client_port, flow.server, flow.server_port) == (
        "tcp", "10.0.0.1", 40000, "10.0.0.2", 80)
    assert (flow.client_node, flow.server_node, flow.app) == ("client", "server", "http")
    assert (flow.packets_to_server, flow.packets_to_client) == (4, 2)
    assert flow.bytes_to_server == sum(len(f) for f in frames if f[IP].src == "10.0.0.1")
    assert flow.tcp_flags == {"SYN", "ACK", "PSH", "FIN"}
    assert flow.first_seen == pytest.approx(1000.01) and flow.last_seen == pytest.approx(1000.06)
    assert flows.between("client", "server").ports == {80}
    assert flows.between("server", "10.0.0.1").ports == {80}
    assert not flows.between("client", "10.0.0.9")
    assert "tcp http client:40000 -> server:80" in repr(flows)


def test_the_client_is_found_without_a_handshake_and_the_app_by_first_bytes(tmp_path):
    # capture started mid-conversation: the server speaks first, from the lower port
    ssh = tcp_session("10.0.0.1", "10.0.0.2", 51000, 2222, [b"SSH-2.0-client\r\n"],
                      [b"SSH-2.0-OpenSSH_9.2\r\n"], syn=False)
    udp = Ether() / IP(src="10.0.0.2", dst="10.0.0.1") / UDP(sport=53, dport=33333) / b"x"
    udp.time = 999.0
    flows = flows_of_files([write(tmp_path, "b.pcap", [*ssh[1:], ssh[0], udp])], nodes=NODES)
    by_port = {f.server_port: f for f in flows}
    assert by_port[2222].client == "10.0.0.1" and by_port[2222].app == "ssh"
    assert by_port[53].client == "10.0.0.1" and by_port[53].app == "dns"
    assert flows.protocol("udp").ports == {53} and flows.protocol("ssh").ports == {2222}


def test_flows_leaving_the_lab_are_found(tmp_path):
    import ipaddress

    out = tcp_session("10.0.0.1", "93.184.216.34", 40001, 443, [b"\x16\x03\x01\x00\x05hello"],
                      [b""])
    inside = tcp_session("10.0.0.1", "10.0.0.2", 40002, 80, [b"GET /"], [b""])
    multicast = Ether() / IP(src="10.0.0.1", dst="224.0.0.251") / UDP(sport=5353, dport=5353)
    ping = Ether() / IP(src="10.0.0.2", dst="10.0.0.7") / ICMP()
    path = write(tmp_path, "c.pcap", [*out, *inside, multicast, ping])
    table = read_flows([path])
    flows = Flows(finish(table, "x", NODES).values(), NODES,
                  [ipaddress.ip_network("10.0.0.0/24")])
    outside = flows.to_outside()
    assert [(f.server, f.server_port, f.app) for f in outside] == [("93.184.216.34", 443, "tls")]
    assert flows.protocol("icmp")[0].server == "10.0.0.7"


def test_one_conversation_on_two_links_is_merged(tmp_path):
    frames = tcp_session("10.0.0.1", "10.0.0.2", 40000, 80, [b"GET /"], [b"HTTP/1.0 200"])
    first = finish(read_flows([write(tmp_path, "l1.pcap", frames)]), "client<->lan", NODES)
    # the second link lost the FIN
    second = finish(read_flows([write(tmp_path, "l2.pcap", frames[:-1])]), "server<->lan",
                    NODES)
    merged = merge([first, second])
    assert len(merged) == 1
    assert merged[0].links == ("client<->lan", "server<->lan")
    assert merged[0].packets == len(frames)


CREDENTIAL_CASES = [
    ("http basic", 80, [b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic "
                        + base64.b64encode(b"alice:s3cret") + b"\r\n\r\n"], [b"HTTP/1.1 200"],
     ("HTTP basic", "alice", "s***** (6 characters)")),
    ("http form", 80, [b"POST /login HTTP/1.1\r\n\r\nuser=bob&password=hunter2"],
     [b"HTTP/1.1 302"], ("HTTP form", None, "h****** (7 characters)")),
    ("ftp", 21, [b"USER carol\r\n", b"PASS letmein\r\n"],
     [b"220 (vsFTPd 3.0.3)\r\n331 Please specify the password.\r\n", b"230 ok\r\n"],
     ("FTP", "carol", "l****** (7 characters)")),
    ("imap", 143, [b"a1 LOGIN dave \"pw12\"\r\n"], [b"* OK IMAP ready\r\n"],
     ("IMAP LOGIN", "dave", "p*** (4 characters)")),
    ("smtp plain", 25, [b"AUTH PLAIN " + base64.b64encode(b"\0erin\0topsecret") + b"\r\n"],
     [b"220 mail ESMTP\r\n"], ("AUTH PLAIN", "erin", "t******** (9 characters)")),
    ("telnet", 23, [b"\xff\xfb\x18", b"f", b"r", b"a", b"n", b"k\r\n", b"pa55\r\n"],
     [b"\xff\xfd\x18login: ", b"", b"", b"", b"", b"Password: ", b"$ "],
     ("Telnet login", "frank", "p*** (4 characters)")),
]


@pytest.mark.parametrize(("name", "port", "requests", "replies", "expected"), CREDENTIAL_CASES,
                         ids=[case[0] for case in CREDENTIAL_CASES])
def test_cleartext_credentials_are_found_and_masked(tmp_path, name, port, requests, replies,
                                                    expected):
    frames = tcp_session("10.0.0.1", "10.0.0.2", 40000, port, requests, replies)
    found = flows_of_files([write(tmp_path, "cred.pcap", frames)],
                           nodes=NODES).cleartext_credentials()
    assert [(c.kind, c.user, c.secret) for c in found] == [expected]
    assert "secret" not in str(found[0]) and "hunter2" not in str(found[0])
    assert f"client:40000 -> server:{port}" in found[0].flow


def test_no_credentials_in_ordinary_traffic(tmp_path):
    frames = tcp_session("10.0.0.1", "10.0.0.2", 40000, 80,
                         [b"GET /index.html?q=password HTTP/1.1\r\n\r\n"], [b"HTTP/1.1 200"])
    ssh = tcp_session("10.0.0.1", "10.0.0.2", 40001, 22, [b"SSH-2.0-x\r\nPASS y\r\n"[:11]],
                      [b"SSH-2.0-y\r\n"])
    assert flows_of_files([write(tmp_path, "ok.pcap", frames + ssh)]).cleartext_credentials() == []


def test_rates_per_interval_and_bad_input(tmp_path):
    frames = []
    for second, count in ((0, 3), (1, 0), (2, 5)):
        for _ in range(count):
            packet = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / (b"x" * 58)
            packet.time = 2000 + second + 0.5
            frames.append(packet)
    series = rates([write(tmp_path, "r.pcap", frames)], interval=1.0)
    assert [(r.start, r.packets, r.bytes) for r in series] == [
        (2000.0, 3, 300), (2001.0, 0, 0), (2002.0, 5, 500)]
    assert series[0].bits_per_second == 2400
    with pytest.raises(ConfigError, match="positive"):
        rates([], interval=0)
    bogus = tmp_path / "notes.pcap"
    bogus.write_text("hello")
    with pytest.raises(ConfigError, match=r"notes\.pcap: not a pcap"):
        flows_of_files([bogus])
    with pytest.raises(ConfigError, match="neither a node"):
        flows_of_files([write(tmp_path, "r2.pcap", frames)], nodes=NODES).between("nobody", "x")


def test_capture_formats_and_damaged_files(tmp_path):
    import struct

    from scapy.utils import PcapNgWriter

    from vboxlab.net.pcaps import frames

    packet = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / b"hello"
    packet.time = 1234.5
    classic = write(tmp_path, "c.pcap", [packet, packet])
    with PcapNgWriter(str(tmp_path / "n.pcapng")) as writer:
        writer.write(packet)
    big_endian = tmp_path / "b.pcap"
    raw = bytes(packet)
    big_endian.write_bytes(struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
                           + struct.pack(">IIII", 1234, 500000, len(raw), len(raw)) + raw)
    for path, count in ((classic, 2), (tmp_path / "n.pcapng", 1), (big_endian, 1)):
        read = list(frames(path))
        assert len(read) == count
        assert read[0] == (pytest.approx(1234.5), raw)
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(classic.read_bytes()[:-3])  # still being written: the whole frames count
    assert len(list(frames(cut))) == 1
    damaged = tmp_path / "damaged.pcap"
    damaged.write_bytes(classic.read_bytes()[:24] + struct.pack("<IIII", 0, 0, 1 << 30, 1 << 30))
    with pytest.raises(ConfigError, match=r"damaged\.pcap: damaged at byte 24"):
        list(frames(damaged))


def test_frames_split_across_read_blocks_come_out_whole(tmp_path, monkeypatch):
    from vboxlab.net import pcaps

    packets = []
    for n in range(50):
        packet = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP() / (bytes([n]) * (n * 7))
        packet.time = 100 + n
        packets.append(packet)
    path = write(tmp_path, "blocks.pcap", packets)
    monkeypatch.setattr(pcaps, "READ_BLOCK", 37)  # every frame straddles blocks
    read = list(pcaps.frames(path))
    assert [frame for _, frame in read] == [bytes(p) for p in packets]
    assert [stamp for stamp, _ in read] == [pytest.approx(100 + n) for n in range(50)]
