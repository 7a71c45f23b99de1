"""Spreading nodes over hosts by memory, and --lab-hosts entries."""

import pytest

from vboxlab.errors import ConfigError
from vboxlab.net.placement import RESERVE_MB, parse_hosts, place, unplaced
from vboxlab.net.topology import Topology


def test_nodes_go_largest_first_to_the_host_with_most_left():
    free = {"a": 4096 + RESERVE_MB, "b": 2048 + RESERVE_MB}
    chosen = place({"big": 2048, "m1": 1024, "m2": 1024, "s": 512}, free)
    assert chosen == {"big": "a", "m1": "b", "m2": "a", "s": "b"}  # ties: the first host
    assert place({"x": 256, "y": 256}, {"h1": 2000, "h2": 2000}) == {"x": "h1", "y": "h2"}


def test_a_node_that_fits_nowhere_is_refused_with_every_hosts_memory():
    with pytest.raises(ConfigError, match=r"node huge needs 9000 MiB .* h1 2000 MiB free"):
        place({"huge": 9000}, {"h1": 2000, "h2": 3000})


def test_only_nodes_without_a_host_and_not_namespace_hosts_are_placed():
    topology = Topology.from_dict({"hosts": {"here": "local"},
                                   "nodes": {"a": {"host": "here"}, "b": {"memory": 512},
                                             "c": {"provider": "netns"}}})
    assert unplaced(topology) == {"b": 512}
    moved = topology.placed({"b": ("h2", "qemu+ssh://root@10.0.0.9/system")})
    assert moved.nodes["b"].provider == "libvirt" and moved.nodes["b"].host == "h2"
    assert topology.nodes["b"].host is None  # the original is untouched


def test_host_entries_are_checked():
    assert parse_hosts(["here=local"]) == {"here": "local"}
    for bad, message in [("nohost", "write NAME=local"), ("a=local", "given twice"),
                         ("x=qemu:///system", "neither 'local' nor")]:
        with pytest.raises(ConfigError, match=message):
            parse_hosts(["a=local", bad] if bad.startswith("a=") else [bad])
