"""A topology running in a lab: its fabric, machines and links, to steer while a test runs.

The lab builds it from a :class:`~vboxlab.net.plan.NetworkPlan` (``lab.network``)
and hands it the fabric and the machines; the network knows nothing of the lab
beyond the function it calls once when closed. Use it as a context manager::

    with lab.network("topologies/line.yaml", seed=7) as net:
        net.node("h1").succeed("ping -c1 h2")
    # its machines and fabric are gone; the lab can build another network
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from vboxlab.errors import ConfigError
from vboxlab.net.fabric import CaptureRing, Fabric
from vboxlab.net.fabric.fabricset import FabricSet
from vboxlab.net.flows import Flows, Rate, flows_of_links, rates
from vboxlab.net.pcaps import ring_files
from vboxlab.net.plan import LinkPlan, NetworkPlan, fabric_settings
from vboxlab.net.topology import Impairment, Topology, describe_impairment

if TYPE_CHECKING:
    from vboxlab.machine import Machine


class LinkHandle:
    """One link of a running network, to change while the test runs."""

    def __init__(self, fabric: Fabric | FabricSet, plan: LinkPlan) -> None:
        self._fabric = fabric
        self.a, self.b = plan.a, plan.b
        self.a_to_b_dir, self.b_to_a_dir = plan.a_to_b_dir, plan.b_to_a_dir
        self.a_to_b: Impairment = plan.a_to_b
        self.b_to_a: Impairment = plan.b_to_a

    def __repr__(self) -> str:
        return (f"<Link {self.a}<->{self.b}: {self.a}->{self.b} "
                f"{describe_impairment(self.a_to_b)}; {self.b}->{self.a} "
                f"{describe_impairment(self.b_to_a)}>")

    __str__ = __repr__

    def _directions(self, direction: str | None) -> list[str]:
        if direction not in (None, "a_to_b", "b_to_a"):
            raise ConfigError(f"direction {direction!r}: use 'a_to_b', 'b_to_a' or None (both)")
        return ["a_to_b", "b_to_a"] if direction is None else [direction]

    def set(self, direction: str | None = None, **properties: Any) -> LinkHandle:
        """Change properties (model units: ``delay="80ms"``, ``loss="2%"``, ``rate="10mbit"``).

        ``loss`` replaces a ``loss_model`` and the other way round.
        """
        for which in self._directions(direction):
            current: Impairment = getattr(self, which)
            try:
                updated = current.merged(properties)
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'])}: "
                    + (f"not a link property (use {', '.join(Impairment.model_fields)})"
                       if e["type"] == "extra_forbidden"
                       else e["msg"].removeprefix("Value error, "))
                    for e in exc.errors())
                raise ConfigError(f"link {self.a}<->{self.b}: {problems}") from None
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"link {self.a}<->{self.b}: {exc}") from None
            self._fabric.set(getattr(self, f"{which}_dir"), **fabric_settings(updated))
            setattr(self, which, updated)
        return self

    def down(self, direction: str | None = None) -> LinkHandle:
        """Cut the link (both directions unless one is named): a partition."""
        return self.set(direction, up=False)

    def up(self, direction: str | None = None) -> LinkHandle:
        return self.set(direction, up=True)

    def counters(self) -> dict[str, dict[str, int]]:
        """Packets, bytes and drops by cause (and capture ring drops), per direction."""
        stats = self._fabric.stats()
        return {"a_to_b": stats[self.a_to_b_dir], "b_to_a": stats[self.b_to_a_dir]}


class Network:
    """The fabric, machines and links of one topology in a lab."""

    def __init__(self, topology: Topology, plan: NetworkPlan, fabric: Fabric | FabricSet,
                 machines: dict[str, Machine], *, seed: int, state_dir: Path,
                 on_close: Callable[[Network], None]) -> None:
        self.topology = topology
        self.plan = plan
        self.fabric = fabric
        self.machines = machines
        #: the seed every link direction's generator derives from (replay with it)
        self.seed = seed
        self.state_dir = state_dir
        self._on_close = on_close
        self._closed = False
        self._links = {frozenset((p.a, p.b)): LinkHandle(fabric, p) for p in plan.links}
        #: every pcap file this network has written to
        self.captured: set[Path] = set()
        self._captures: dict[frozenset[str], dict[str, Path]] = {}

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return (f"<Network {self.topology.name} {state}: nodes {', '.join(self.machines)}; "
                f"{len(self._links)} links; seed {self.seed}>")

    __str__ = __repr__

    @property
    def closed(self) -> bool:
        return self._closed

    def node(self, name: str) -> Machine:
        if name not in self.machines:
            raise ConfigError(f"no node {name!r} in topology {self.topology.name}; nodes: "
                              f"{', '.join(self.machines)}")
        return self.machines[name]

    def link(self, a: str, b: str) -> LinkHandle:
        handle = self._links.get(frozenset((a, b)))
        if handle is None:
            known = ", ".join(f"{h.a}<->{h.b}" for h in self._links.values())
            raise ConfigError(f"no link between {a!r} and {b!r} in topology "
                              f"{self.topology.name}; links: {known}")
        return handle

    @property
    def links(self) -> list[LinkHandle]:
        return list(self._links.values())

    def _start_capture(self, handle: LinkHandle, folder: Path,
                       ring: CaptureRing | None) -> dict[str, Path]:
        paths = {"a_to_b": folder / f"{handle.a}-to-{handle.b}.pcap",
                 "b_to_a": folder / f"{handle.b}-to-{handle.a}.pcap"}
        self.fabric.capture(handle.a_to_b_dir, paths["a_to_b"], ring=ring)
        self.fabric.capture(handle.b_to_a_dir, paths["b_to_a"], ring=ring)
        self.captured.update(paths.values())
        self._captures[frozenset((handle.a, handle.b))] = paths
        return paths

    @contextmanager
    def capture(self, a: str, b: str, folder: Path | None = None, *,
                ring: CaptureRing | None = None) -> Iterator[dict[str, Path]]:
        """Capture both directions of a link to pcap files while the block runs.

        ``ring`` bounds each direction's files (the newest bytes and/or seconds kept).
        """
        paths = self.start_capture(a, b, folder, ring=ring)
        try:
            yield paths
        finally:
            self.stop_capture(a, b)

    def start_capture(self, a: str, b: str, folder: Path | None = None, *,
                      ring: CaptureRing | None = None) -> dict[str, Path]:
        """Start capturing both directions of a link (until :meth:`stop_capture`)."""
        handle = self.link(a, b)
        folder = folder or (self.state_dir / "captures")
        folder.mkdir(parents=True, exist_ok=True)
        return self._start_capture(handle, folder, ring)

    def stop_capture(self, a: str, b: str) -> None:
        """Stop a link's capture; its files stay complete and readable."""
        handle = self.link(a, b)
        self.fabric.capture(handle.a_to_b_dir, None)
        self.fabric.capture(handle.b_to_a_dir, None)

    def capture_all(self, folder: Path, *, ring: CaptureRing | None = None) -> list[Path]:
        """Capture every direction of every link into ``folder`` while the fabric runs."""
        folder.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        for handle in self._links.values():
            paths.extend(self._start_capture(handle, folder, ring).values())
        return paths

    def is_captured(self, a: str, b: str) -> bool:
        """Whether the link ``a``-``b`` has been captured (its files may be read)."""
        return frozenset((a, b)) in self._captures

    def capture_files(self, a: str, b: str) -> dict[str, list[Path]]:
        """The files holding a link's latest capture, per direction (a ring's older half first).

        Pending frames are flushed first, so the files are complete up to now.
        """
        handle = self.link(a, b)
        paths = self._captures.get(frozenset((handle.a, handle.b)))
        if paths is None:
            raise ConfigError(f"link {a}<->{b} of topology {self.topology.name} was not "
                              f"captured; capture it with network.capture({a!r}, {b!r}) or "
                              f"network.capture_all(folder) (the network fixture captures all)")
        if not self._closed:
            self.fabric.flush()
        return {"a_to_b": ring_files(paths["a_to_b"]), "b_to_a": ring_files(paths["b_to_a"])}

    @property
    def addresses(self) -> dict[str, str]:
        """Address -> node name, for every interface of the topology."""
        return {str(i.address): i.node for i in self.topology.interfaces}

    def flows(self, a: str | None = None, b: str | None = None) -> Flows:
        """Flows seen on the link ``a``-``b``, or on every captured link (one per conversation).

        Read from the captures (flushed first), so it works while the test runs
        and after the network is closed.
        """
        if (a is None) != (b is None):
            raise ConfigError("network.flows(a, b) takes both ends of a link, or neither "
                              "for every captured link")
        if a is not None and b is not None:
            handles = [self.link(a, b)]
        else:
            handles = [h for h in self._links.values() if self.is_captured(h.a, h.b)]
        links = {}
        for handle in handles:
            files = self.capture_files(handle.a, handle.b)
            links[f"{handle.a}<->{handle.b}"] = files["a_to_b"] + files["b_to_a"]
        return flows_of_links(links, self.addresses, {i.network for i in self.topology.interfaces})

    def rates(self, a: str, b: str, interval: float = 1.0) -> dict[str, list[Rate]]:
        """Packets and bytes per ``interval`` seconds on each direction of a link."""
        files = self.capture_files(a, b)
        return {direction: rates(paths, interval) for direction, paths in files.items()}

    def close(self) -> None:
        """Remove the network's machines and stop its fabric (once; later calls do nothing)."""
        if self._closed:
            return
        self._closed = True
        self._on_close(self)

    def __enter__(self) -> Network:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
