"""Static routes worked out from topologies: fewest hops, stable, forwarding where needed."""

from ipaddress import ip_address, ip_network

from vboxlab.net import Topology
from vboxlab.net.routing import static_routes


def chain(n):
    """h0 - h1 - ... - h(n-1) over point-to-point links."""
    nodes = {f"h{i}": None for i in range(n)}
    links = [{"between": [f"h{i}", f"h{i + 1}"]} for i in range(n - 1)]
    return Topology.from_dict({"nodes": nodes, "links": links})


def test_a_chain_routes_every_far_subnet_via_the_next_hop():
    topo = chain(4)
    routes = static_routes(topo)
    # h0 reaches h1-h2 and h2-h3 through h1's address on h0-h1
    assert routes["h0"].routes == [(ip_network("10.250.0.4/30"), ip_address("10.250.0.2")),
                                   (ip_network("10.250.0.8/30"), ip_address("10.250.0.2"))]
    assert routes["h3"].routes == [(ip_network("10.250.0.4/30"), ip_address("10.250.0.9")),
                                   (ip_network("10.250.0.0/30"), ip_address("10.250.0.9"))]
    assert [n for n, r in routes.items() if r.forward] == ["h1", "h2"]


def test_the_shortest_path_wins_over_a_longer_one():
    topo = Topology.from_dict({
        "nodes": {"a": None, "b": None, "c": None, "d": None},
        "segments": {"far": {"subnet": "10.99.0.0/24"}},
        "links": [{"between": ["a", "b"]}, {"between": ["b", "c"]}, {"between": ["c", "far"]},
                  {"between": ["a", "d"]}, {"between": ["d", "far"]}],
    })
    routes = dict(static_routes(topo)["a"].routes)
    d_address = next(i.address for i in topo.interfaces if i.node == "d" and i.segment == "a--d")
    assert routes[ip_network("10.99.0.0/24")] == d_address  # two hops via d, not three via b


def test_hosts_on_one_segment_need_no_routes_and_nobody_forwards():
    topo = Topology.from_dict({"segments": {"lan": None},
                               "nodes": {"a": None, "b": None, "c": None},
                               "links": [{"between": [n, "lan"]} for n in "abc"]})
    assert all(r.routes == [] and not r.forward for r in static_routes(topo).values())


def test_the_result_does_not_depend_on_the_order_nodes_are_written_in():
    forward = chain(5)
    spec = {"nodes": {f"h{i}": None for i in reversed(range(5))},
            "links": [{"between": [f"h{i}", f"h{i + 1}"]} for i in range(4)]}
    backward = Topology.from_dict(spec)
    assert static_routes(forward) == static_routes(backward)
