import ipaddress
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from vboxlab.cli import main
from vboxlab.errors import ConfigError
from vboxlab.net import Topology, load_topology

TOPOLOGIES = sorted((Path(__file__).parents[2] / "topologies").glob("*.yaml"))


def write(tmp_path, text):
    path = tmp_path / "t.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("path", TOPOLOGIES, ids=lambda p: p.name)
def test_shipped_topologies_are_valid(path):
    topology = load_topology(path)
    assert topology.nodes and topology.links
    for node in topology.nodes:
        assert topology.addresses(node), f"{node} has no address"


def test_there_are_the_four_example_topologies():
    assert {p.stem for p in TOPOLOGIES} >= {"star", "line", "two-sites-wan",
                                             "cluster-partition"}


def test_addresses_interfaces_and_names():
    topology = Topology.from_dict({
        "segments": {"lan": {"subnet": "192.168.7.0/24"}},
        "nodes": {"web": None, "db": {"memory": 512}, "cli": {"provider": "netns"}},
        "links": [
            {"between": ["web", "lan"], "addresses": {"web": "192.168.7.80"}},
            {"between": ["db", "lan"]},
            {"between": ["cli", "web"], "delay": "10ms"},
        ]})
    assert topology.addresses("web") == [ipaddress.ip_address("192.168.7.80"),
                                         ipaddress.ip_address("10.250.0.2")]
    assert topology.addresses("db") == [ipaddress.ip_address("192.168.7.1")]
    assert [(i.node, i.name) for i in topology.interfaces if i.node == "web"] == [
        ("web", "eth1"), ("web", "eth2")]
    assert topology.nodes["db"].memory == 512 and topology.nodes["web"].template == "tiny"
    assert "192.168.7.80 web\n" in topology.hosts_file()
    assert topology.providers == {("qemu", None): ["web", "db"], ("netns", None): ["cli"]}
    assert topology.link("web", "cli").a_to_b.delay == pytest.approx(0.010)


def test_per_direction_overrides_and_units():
    topology = Topology.from_dict({
        "nodes": {"a": None, "b": None},
        "links": [{"between": ["a", "b"], "delay": "40ms", "jitter": "500us", "loss": "1.5%",
                   "rate": "10mbit", "queue": "64k", "duplicate": "0.1%", "mtu": 1400,
                   "a_to_b": {"rate": "2mbps", "loss": "5%"}}]})
    link = topology.link("a", "b")
    assert link.a_to_b.rate == 16_000_000 and link.b_to_a.rate == 10_000_000
    assert link.a_to_b.loss == pytest.approx(0.05) and link.b_to_a.loss == pytest.approx(0.015)
    assert link.a_to_b.delay == pytest.approx(0.04) and link.b_to_a.jitter == pytest.approx(5e-4)
    assert link.b_to_a.queue == 65536 and link.b_to_a.mtu == 1400


def test_trunked_segments_share_a_subnet():
    topology = Topology.from_dict({
        "segments": {"a": {"subnet": "10.9.0.0/24"}, "b": None},
        "nodes": {"x": None, "y": None},
        "links": [{"between": ["x", "a"]}, {"between": ["y", "b"]}, {"between": ["a", "b"]}]})
    assert topology.segments["a"] == topology.segments["b"]
    assert [str(i.address) for i in topology.interfaces] == ["10.9.0.1", "10.9.0.2"]
    assert [i.segment for i in topology.interfaces] == ["a", "b"]


@pytest.mark.parametrize(("text", "line", "message"), [
    ("""
     nodes:
       a: {}
     links:
       - between: [a, nowhere]
     """, 5, "'nowhere' is neither a node nor a segment; nodes: a"),
    ("""
     segments:
       one: {subnet: 10.1.0.0/16}
       two: {subnet: 10.1.2.0/24}
     nodes: {a: {}}
     """, 4, "10.1.2.0/24 overlaps 10.1.0.0/16 of segment one"),
    ("""
     nodes: {a: {}, b: {}}
     links:
       - between: [a, b]
         delay: -5ms
     """, 5, "is negative"),
    ("""
     nodes: {a: {}, b: {}}
     links:
       - between: [a, b]
         loss: 120%
     """, 5, "over 100%"),
    ("""
     nodes: {a: {}, b: {}}
     links:
       - between: [a, b]
         rate: 0mbit
     """, 5, "must be above zero"),
    ("""
     segments: {lan: {subnet: 10.5.0.0/24}}
     nodes: {a: {}}
     links:
       - between: [a, lan]
         addresses: {a: 10.6.0.1}
     """, 6, "10.6.0.1 is not a host address of lan's subnet 10.5.0.0/24"),
    ("""
     nodes: {a: {}}
     links:
       - between: [a, a]
     """, 4, "links 'a' to itself"),
    ("""
     nodes: {a: {}, b: {}}
     links:
       - between: [a, b]
       - between: [b, a]
     """, 5, "linked twice"),
    ("""
     nodes:
       a: {colour: red}
     """, 3, "Extra inputs are not permitted"),
    ("""
     segments:
       x: {subnet: 10.1.0.0/24}
       y: {subnet: 10.2.0.0/24}
     nodes: {a: {}}
     links:
       - between: [x, y]
     """, 4, "trunked segments share one subnet"),
    ("""
     nodes: {a: {}, b: {}}
     links:
       - between: [a, b]
         a_to_b: {speed: 3}
     """, 5, "unknown link properties ['speed']"),
    ("""
     nodes: {Bad_Name: {}}
     """, 2, "use 1-20 lower-case letters"),
    ("""
     nodes: {a: {}}
     datapath: vhost
     """, 3, "datapath: Input should be 'sockets' or 'vhost-user' (got 'vhost')"),
])
def test_errors_name_the_file_the_line_and_the_value(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert f"{path}:{line}:" in str(info.value)
    assert message in str(info.value)


def test_broken_yaml_and_wrong_shapes(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_topology(write(tmp_path, "nodes: [a\n"))
    with pytest.raises(ConfigError, match="a topology is a mapping"):
        load_topology(write(tmp_path, "- a\n"))
    with pytest.raises(ConfigError, match="no such topology file"):
        load_topology(tmp_path / "missing.yaml")


def test_cli_check_prints_addresses_and_fails_on_errors(tmp_path):
    runner = CliRunner()
    good = runner.invoke(main, ["topology", "check", str(TOPOLOGIES[0])])
    assert good.exit_code == 0 and "eth1" in good.output
    assert "(data path: sockets)" in good.output.splitlines()[0]
    fast = write(tmp_path, "datapath: vhost-user\nnodes: {a: {}, b: {}}\nlinks:\n"
                           "  - between: [a, b]\n")
    assert "(data path: vhost-user)" in runner.invoke(main, ["topology", "check", str(fast)]).output
    bad = write(tmp_path, "nodes: {a: {}}\nlinks:\n  - between: [a, b]\n")
    result = runner.invoke(main, ["topology", "check", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:3:" in result.output


def test_trunks_that_close_a_loop_are_refused_with_the_line(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text(textwrap.dedent("""\
        nodes: {a: null, b: null}
        segments: {s1: null, s2: null, s3: null}
        links:
          - between: [a, s1]
          - between: [b, s3]
          - between: [s1, s2]
          - between: [s2, s3]
          - between: [s3, s1]
        """))
    with pytest.raises(ConfigError, match=r"loop.yaml:8: links.4.between: the trunk s3 <-> s1 "
                                          r"closes a loop"):
        load_topology(path)


def test_loss_and_loss_model_exclude_each_other_on_a_link_or_a_direction():
    model = {"p": 0.1, "r": 0.5}
    with pytest.raises(ConfigError, match="loss and loss_model exclude each other"):
        Topology.from_dict({"nodes": {"a": None, "b": None},
                            "links": [{"between": ["a", "b"], "loss": "1%", "loss_model": model}]})
    with pytest.raises(ConfigError, match="loss and loss_model exclude each other"):
        Topology.from_dict({"nodes": {"a": None, "b": None},
                            "links": [{"between": ["a", "b"],
                                       "a_to_b": {"loss": "1%", "loss_model": model}}]})
    # a direction's override of one replaces the other
    topology = Topology.from_dict({"nodes": {"a": None, "b": None},
                                   "links": [{"between": ["a", "b"], "loss": "1%",
                                              "a_to_b": {"loss_model": model}}]})
    link = topology.link("a", "b")
    assert link.a_to_b.loss == 0 and link.a_to_b.loss_model is not None
    assert link.b_to_a.loss == pytest.approx(0.01) and link.b_to_a.loss_model is None
    assert link.a_to_b.merged({"loss": "5%"}).loss_model is None
    assert link.b_to_a.merged({"loss_model": model}).loss == 0


@pytest.mark.parametrize("value", ["nan", "inf", float("nan"), float("inf"), "1e400ms",
                                   "99999999999999999999ms", "-1ms", "7200s"])
def test_absurd_delays_are_refused(value):
    with pytest.raises(ConfigError, match=r"links.0"):
        Topology.from_dict({"nodes": {"a": None, "b": None},
                            "links": [{"between": ["a", "b"], "delay": value}]})


def test_an_unknown_provider_is_named_with_the_known_ones():
    with pytest.raises(ConfigError, match="unknown provider 'vbox'; available providers: "):
        Topology.from_dict({"nodes": {"a": {"provider": "vbox"}}})
