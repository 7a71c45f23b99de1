"""Networks: the topology model (pure data); the fabric that realises it comes next."""

from vboxlab.net.topology import Impairment, Topology, load_topology

__all__ = ["Impairment", "Topology", "load_topology"]
