"""The Lab: everything one run creates (machines, networks, files, processes), and its cleanup.

A lab lives in ``<state base>/<lab id>/``: ``lease.json`` names the owning
process, ``ledger.jsonl`` lists every resource before it is created, ``lab.log``
is the lab's log, and each machine has a folder of its own. When the lab
closes, every step of the teardown runs even if an earlier one fails, pending
resources are released newest first, and the folder is removed. A lab whose
owner died is found by ``vboxlab clean`` (and by the next pytest run) through
its lease (see :mod:`vboxlab.labdirs`).

Every machine, whatever its provider (a QEMU VM, a namespace host), is made by
the same path: the provider creates it from a :class:`MachineSpec`, the lab
registers it, boots it and announces it. A lab may be used from several
threads at once: booting two VMs from a thread pool works, and the VMs live as
long as the lab.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from vboxlab import procs
from vboxlab.boottimeline import BootTimeline
from vboxlab.bringup import (
    BootStep,
    BringUpError,
    Listener,
    bring_up,
    check_parallel,
    default_parallel,
    terminal,
)
from vboxlab.errors import ConfigError, HostError, MachineNotFound, VboxlabError
from vboxlab.kernelargs import check_kernel_args
from vboxlab.keys import KeyPair, load_or_create
from vboxlab.labdirs import LEASE, LEDGER
from vboxlab.ledger import Ledger
from vboxlab.machine import Machine
from vboxlab.names import check_name
from vboxlab.net.fabric.fabricset import MAX_PORTS, FabricSet
from vboxlab.net.placement import local_free_mb, parse_hosts, place, unplaced
from vboxlab.net.topology import Topology, load_topology
from vboxlab.net.wire import DirectWire
from vboxlab.paths import private_dir, state_base
from vboxlab.providers import Provider, ProviderOptions, load_provider
from vboxlab.providers.base import BootMedia, MachineSpec, NicSpec
from vboxlab.templates import TemplateRepository
from vboxlab.templates.trust import is_foreign
from vboxlab.usage import UsageRecorder

if TYPE_CHECKING:
    from vboxlab.net.fabric import Fabric
    from vboxlab.net.fabric.remote import RemoteFabric
    from vboxlab.net.network import LinkHandle, Network
    from vboxlab.net.plan import NetworkPlan



def new_lab_id(worker: str | None = None) -> str:
    """A name unique on this host: time, pid, randomness and the xdist worker."""
    parts = [time.strftime("%m%d%H%M%S"), str(os.getpid()), secrets.token_hex(2)]
    if worker:
        parts.append(worker)
    return "-".join(parts)


def host_memory_available_mb() -> int:
    """MemAvailable from /proc/meminfo, in MiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


class Lab:
    """One run's machines and state; use as a context manager or call :meth:`close`."""

    def __init__(self, *, base: Path | None = None, provider: str = "qemu",
                 template: str = "tiny", keep: bool = False, worker: str | None = None,
                 accel: str = "auto", repository: TemplateRepository | None = None,
                 boot_timeout: float = 90.0, channel: str = "auto", name: str | None = None,
                 role: str = "session", libvirt_uri: str | None = None,
                 hosts: dict[str, str] | None = None, parallel: int | None = None) -> None:
        self.base = private_dir(Path(base) if base is not None else state_base())
        self.id = check_name(name, "lab") if name is not None else new_lab_id(worker)
        self.dir = self.base / self.id
        if role not in ("session", "up"):
            raise ConfigError(f"lab role {role!r}: use 'session' (a test run's) or 'up' (a "
                              "long-lived lab's supervisor)")
        #: "session" (a test run or a script owns it) or "up" (a supervisor serves it)
        self.role = role
        self.keep = keep
        self.default_template = template
        self.default_provider = provider
        self.boot_timeout = boot_timeout
        #: how many VMs may boot at once (``--lab-parallel``); None: the host's cores, or
        #: fewer if its free memory holds fewer
        self.parallel = check_parallel(parallel, "lab parallel") if parallel is not None \
            else None
        self.repository = repository or TemplateRepository()
        if channel not in ("auto", "ssh"):
            raise ConfigError(f"command channel {channel!r}: use auto (the template's agent "
                              "where it has one, else SSH) or ssh")
        self._options = ProviderOptions(accel=accel, channel=channel, libvirt_uri=libvirt_uri)
        #: hosts topologies' unplaced nodes are spread over (``--lab-hosts``): name -> URI
        self.hosts = parse_hosts([f"{k}={v}" for k, v in (hosts or {}).items()])
        self._providers: dict[str, Provider] = {}
        self.machines: dict[str, Machine] = {}
        #: called with each machine once it first answers (the plugin's hook uses it)
        self.on_machine_ready: list[Callable[[Machine], None]] = []
        #: called at each bring-up step of a machine: (name, state, seconds since its set
        #: started); ``vboxlab up`` passes them to the command's live lines
        self.on_bring_up: list[Listener] = []
        self._wires: list[DirectWire] = []
        self._network: Network | None = None
        self._building_network = False
        self._reserved: set[str] = set()
        self._lock = threading.RLock()
        #: keep the state (machines stopped) at close, e.g. for failure snapshots
        self.keep_stopped = False
        self._closed = False
        try:
            self.dir.mkdir(mode=0o700)
        except FileExistsError:
            raise ConfigError(f"a lab called {self.id!r} already exists in {self.base}; see it "
                              f"with `vboxlab status {self.id}`, remove it with `vboxlab down "
                              f"{self.id}`, or choose another name") from None
        self._write_lease(kept=False)
        self.ledger = Ledger(self.dir / LEDGER)
        self.log = logging.getLogger(f"vboxlab.lab.{self.id}")
        self.log.setLevel(logging.DEBUG)
        self.log.propagate = False
        self._log_handler = logging.FileHandler(self.dir / "lab.log")
        self._log_handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(message)s"))
        self.log.addHandler(self._log_handler)
        self.log.info("lab %s created by pid %d: %s", self.id, os.getpid(), " ".join(sys.argv))
        self.user_key = load_or_create(self.dir / "id_ed25519", f"vboxlab-{self.id}")
        #: peak CPU and memory of each machine while the lab runs (``vboxlab cost``)
        self.usage = UsageRecorder(self.dir).start()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("kept" if self.keep else "open")
        network = f", network {self._network.topology.name}" if self._network else ""
        return (f"<Lab {self.id} {state}: {len(self.machines)} machines "
                f"({', '.join(self.machines) or 'none'}){network}; {self.dir}>")

    __str__ = __repr__

    # -- lease ----------------------------------------------------------
    def _write_lease(self, *, kept: bool) -> None:
        lease = {"id": self.id, "pid": os.getpid(), "start": procs.start_time(os.getpid()),
                 "kept": kept, "created": time.time(), "argv": sys.argv[:8], "role": self.role}
        tmp = self.dir / f".{LEASE}.tmp"
        tmp.write_text(json.dumps(lease, indent=2) + "\n")
        tmp.replace(self.dir / LEASE)

    # -- providers ------------------------------------------------------
    def provider_for(self, name: str | None = None, host_uri: str | None = None) -> Provider:
        """The provider called ``name`` (default: the lab's), loaded once; with ``host_uri``,
        the libvirt provider of that remote host (one per host)."""
        name = name or self.default_provider
        if host_uri == self._options.libvirt_uri:
            host_uri = None  # the lab's own libvirt host: its default provider
        key = name if host_uri is None else f"{name} on {host_uri}"
        with self._lock:
            if key not in self._providers:
                options = self._options if host_uri is None else \
                    dataclasses.replace(self._options, libvirt_uri=host_uri)
                self._providers[key] = load_provider(name, options)
            return self._providers[key]

    def accelerators(self) -> dict[str, str]:
        """Provider name -> the accelerator its machines run with, once chosen."""
        with self._lock:
            providers = dict(self._providers)
        found = {}
        for name, provider in providers.items():
            choice = getattr(provider, "chosen_accel", None)
            if choice is not None:
                found[name] = f"{choice.accel} ({choice.reason})"
        return found

    @property
    def provider(self) -> Provider:
        """The lab's default provider."""
        return self.provider_for(None)

    # -- machines -------------------------------------------------------
    def _reserve(self, name: str) -> None:
        check_name(name, "machine")
        with self._lock:
            if self._closed:
                raise ConfigError(f"lab {self.id} is closed")
            if name in self.machines or name in self._reserved:
                raise ConfigError(f"lab {self.id} already has a machine called {name!r}")
            self._reserved.add(name)

    def create(self, name: str, *, provider: str | None = None, template: str | None = None,
               memory: int | None = None, cpus: int | None = None, rollback: bool = False,
               nics: Sequence[NicSpec] = (), hosts: str = "",
               routes: Sequence[tuple[str, str]] = (), forward: bool = False,
               media: BootMedia | None = None, restrict: bool | None = None,
               kernel_args: str = "", host_uri: str | None = None) -> Machine:
        """Create a machine through its provider without starting it (see :meth:`vm`);
        ``host_uri``: the remote host a libvirt machine runs on (a topology's ``host:``)."""
        try:
            kernel_args = check_kernel_args(kernel_args)
        except ValueError as exc:
            raise ConfigError(f"{name}: kernel_args: {exc}") from None
        self._reserve(name)
        workdir = self.dir / name
        try:
            chosen = self.provider_for(provider, host_uri)
            built = None
            if chosen.needs_template:
                built = self.repository.built(template or self.default_template)
                resources = built.template.definition.resources
                memory = memory or resources.memory
                cpus = cpus or resources.cpus
                self._check_resources(name, memory, cpus)
                if restrict is None:
                    restrict = is_foreign(built.manifest) or \
                        built.template.definition.network.restrict
            workdir.mkdir(mode=0o700)
            spec = MachineSpec(
                name=name, workdir=workdir, log=self.log, tied=not self.keep, template=built,
                memory=memory or 0, cpus=cpus or 0,
                host_key=KeyPair.generate(f"{name}@{self.id}"),
                authorized_key=self.user_key.public_line, lab_id=self.id, nics=tuple(nics),
                hosts=hosts, routes=tuple(routes), forward=forward, media=media,
                restrict=bool(restrict), kernel_args=kernel_args)
            handle = chosen.create(spec, self.ledger)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            with self._lock:
                self._reserved.discard(name)
            raise
        machine = Machine(name, handle, handle.channel(self.user_key.paramiko_key()), self.log,
                          boot_timeout=self.boot_timeout, state_dir=workdir, rollback=rollback)
        machine.template = built
        machine.provider = chosen.name
        with self._lock:
            self._reserved.discard(name)
            self.machines[name] = machine
        if restrict:
            self.log.info("%s: its user network is restricted (no way out but the lab's "
                          "forwards)", name)
        return machine

    def _check_resources(self, name: str, memory: int, cpus: int) -> None:
        if memory < 64:
            raise ConfigError(f"memory={memory} MiB is too small; give at least 64")
        available = host_memory_available_mb()
        if memory > available:
            raise HostError(f"VM {name!r} asks for {memory} MiB of memory but this host has only "
                            f"{available} MiB available; ask for less (memory=...) or stop "
                            "other VMs")
        if cpus < 1 or cpus > (os.cpu_count() or 1) * 4:
            raise ConfigError(f"cpus={cpus} is out of range for this host "
                              f"({os.cpu_count()} CPUs)")

    def vm(self, name: str, template: str | None = None, memory: int | None = None,
           cpus: int | None = None, boot: bool = True, rollback: bool = False,
           nics: Sequence[NicSpec] = (), hosts: str = "",
           routes: Sequence[tuple[str, str]] = (), forward: bool = False,
           media: BootMedia | None = None, *, provider: str | None = None,
           restrict: bool | None = None, kernel_args: str = "") -> Machine:
        """Create a machine and (by default) boot it until its command channel answers.

        ``provider`` picks who runs it (default: the lab's, ``qemu``). With
        ``rollback``, the pytest plugin returns the machine after every test to
        the state it had when the first test using it started. ``restrict``
        cuts the guest's user network off from everything but the lab's own
        forwards (default: on for templates imported from another machine, else
        the template's ``[network] restrict``). ``kernel_args`` are added to the
        template's kernel command line (``"loglevel=7"``).
        """
        machine = self.create(name, provider=provider, template=template, memory=memory,
                              cpus=cpus, rollback=rollback, nics=nics, hosts=hosts,
                              routes=routes, forward=forward, media=media, restrict=restrict,
                              kernel_args=kernel_args)
        if boot:
            self.boot(machine)
        return machine

    def netns_host(self, name: str, nics: Sequence[NicSpec] = (), hosts: str = "",
                   routes: Sequence[tuple[str, str]] = (), forward: bool = False) -> Machine:
        """A network-namespace host (root only): ``vm(name, provider="netns", ...)``."""
        return self.vm(name, provider="netns", nics=nics, hosts=hosts, routes=routes,
                       forward=forward)

    #: what :meth:`vms` takes for each machine (:meth:`vm`'s keyword arguments)
    VM_SETTINGS = frozenset({"template", "memory", "cpus", "rollback", "nics", "hosts", "routes",
                             "forward", "media", "provider", "restrict", "kernel_args"})

    def vms(self, machines: Mapping[str, Mapping[str, Any]], *,
            parallel: int | None = None) -> dict[str, Machine]:
        """Create and boot several machines side by side; returns them by name.

        ``lab.vms({"web": {"template": "dev-web"}, "db": {"memory": 512}})``: each
        value holds :meth:`vm`'s keyword arguments. At most ``parallel`` VMs boot at
        once (default: the lab's limit). If one fails, the others are stopped and
        removed, and :class:`~vboxlab.bringup.BringUpError` names it, says why and
        shows its console's last lines.
        """
        steps = []
        for name, settings in machines.items():
            if not isinstance(settings, Mapping):
                raise ConfigError(f"lab.vms: {name}: give a dict of settings (like "
                                  f"{{'template': 'tiny'}}), not {settings!r}")
            unknown = sorted(set(settings) - self.VM_SETTINGS)
            if unknown:
                raise ConfigError(f"lab.vms: {name}: unknown setting {unknown[0]!r}; use "
                                  f"{', '.join(sorted(self.VM_SETTINGS))}")
            steps.append(BootStep(name, functools.partial(self.create, name, **settings),
                                  counted=settings.get("provider") != "netns"))
        memory = max((self._memory_of(s.get("template"), s.get("memory"))
                      for s in machines.values()), default=0)
        try:
            return self._bring_up(steps, memory, parallel)
        except BringUpError as exc:
            for machine in exc.created:
                if machine.name in self.machines:
                    self.remove_vm(machine.name)
            raise

    def _memory_of(self, template: str | None, memory: int | None) -> int:
        """A machine's memory in MiB, for the bring-up limit (256 if it cannot be known yet)."""
        if memory:
            return int(memory)
        try:
            built = self.repository.built(template or self.default_template)
        except VboxlabError:
            return 256  # create() reports the problem with the machine's name
        return built.template.definition.resources.memory

    def _bring_up(self, steps: Sequence[BootStep], memory: int,
                  parallel: int | None = None) -> dict[str, Machine]:
        limit = check_parallel(parallel, "parallel") if parallel is not None else \
            self.parallel or default_parallel(memory, host_memory_available_mb())
        machines = bring_up(steps, parallel=limit, log=self.log, wait_answer=self._wait_answer,
                            configure=self._configure, progress_stream=terminal(),
                            listeners=list(self.on_bring_up))
        with self._lock:  # in the order asked for, not the order threads created them
            for name in machines:
                self.machines[name] = self.machines.pop(name)
        return machines

    def boot(self, machine: Machine) -> None:
        """Start a created machine, wait until it answers, and announce it."""
        started = time.monotonic()
        try:
            machine.power_on()
        except Exception:
            self.log.exception("%s did not start", machine.name)
            self._discard(machine)
            raise
        self._wait_ready(machine, started)

    def _wait_ready(self, machine: Machine, started: float) -> None:
        self._wait_answer(machine)
        self._configure(machine, started)

    def _wait_answer(self, machine: Machine) -> None:
        """Wait until the machine's command channel answers; kill it if it never does."""
        try:
            machine.wait_ready()
        except Exception:
            self.log.exception("%s did not boot", machine.name)
            self._discard(machine)
            raise

    def _configure(self, machine: Machine, started: float) -> None:
        """A machine that answers: its boot timeline, the provider's after-boot step, and the
        callbacks (the plugin's hook)."""
        answered = time.monotonic()
        self.log.info("%s answered its command channel %.2f s after start", machine.name,
                      answered - started)
        facts = getattr(machine.channel, "ready_facts", None)
        if facts:
            first = time.monotonic()
            machine.execute("true", timeout=30)
            machine.boot_timeline = BootTimeline.from_facts(started, answered, facts,
                                                            time.monotonic() - first)
            if machine.boot_timeline is not None:
                self.log.info("%s: boot timeline: %s", machine.name,
                              machine.boot_timeline.describe())
        try:
            machine.handle.on_ready(machine.channel)
        except VboxlabError as exc:  # a missing kernel log is no reason to fail the boot
            self.log.warning("%s: after-boot step failed: %s", machine.name, exc)
        for callback in list(self.on_machine_ready):
            callback(machine)

    def _discard(self, machine: Machine) -> None:
        """A machine that failed to come up: kill it, keep its files for the report."""
        try:
            machine.kill()
        except Exception:
            self.log.exception("could not kill %s", machine.name)

    def wire(self, a: str, b: str, *, a_address: str | None = None,
             b_address: str | None = None, interface: str = "eth1") -> DirectWire:
        """A direct cable between two VMs to be created: pass ``wire.nic(name)`` to ``vm()``."""
        with self._lock:
            if self._closed:
                raise ConfigError(f"lab {self.id} is closed")
            made = DirectWire(a, b, lab_id=self.id, interface=interface, a_address=a_address,
                              b_address=b_address)
            self._wires.append(made)
        return made

    def remove_vm(self, name: str) -> None:
        """Destroy a machine now: kill it and delete its files."""
        with self._lock:
            machine = self.machines.pop(name, None)
        if machine is None:
            raise self._unknown(name)
        machine.channel.close()
        machine.handle.destroy()

    def __getitem__(self, name: str) -> Machine:
        with self._lock:
            machine = self.machines.get(name)
        if machine is None:
            raise self._unknown(name)
        return machine

    def _unknown(self, name: str) -> MachineNotFound:
        return MachineNotFound(f"lab {self.id} has no machine {name!r}; machines: "
                               f"{', '.join(self.machines) or 'none'}")

    def __iter__(self) -> Iterator[Machine]:
        with self._lock:
            return iter(list(self.machines.values()))

    # -- networks -------------------------------------------------------
    @property
    def current_network(self) -> Network | None:
        """The network built in this lab, if one is running."""
        return self._network

    def place(self, topology: Topology) -> Topology:
        """``topology`` with its unplaced nodes spread over the lab's hosts by memory (each
        host's free memory asked now); unchanged without ``hosts``."""
        todo = unplaced(topology)
        if not self.hosts or not todo:
            return topology
        free: dict[str, int] = {}
        for name, uri in self.hosts.items():
            if uri == "local":
                free[name] = local_free_mb()
            else:
                provider = self.provider_for("libvirt", uri)
                free[name] = int(provider.free_memory_mb())  # type: ignore[attr-defined]
        chosen = place(todo, free)
        self.log.info("placed nodes of %s by memory: %s", topology.name,
                      ", ".join(f"{n} on {h}" for n, h in sorted(chosen.items())))
        return topology.placed({node: (host, None if self.hosts[host] == "local" else
                                       self.hosts[host]) for node, host in chosen.items()})

    def network(self, topology: Topology | str | Path, *, seed: int | None = None) -> Network:
        """Build a topology (a file or a Topology) into this lab: fabric, NICs and machines.

        Returns the running :class:`~vboxlab.net.network.Network`, a context
        manager: closing it removes its machines and fabric, after which the lab
        can build another. Without ``seed`` a random one is drawn and logged
        (``network.seed``) so a failure can be replayed.
        """
        from vboxlab.net.fabric import Fabric
        from vboxlab.net.network import Network
        from vboxlab.net.plan import NodePlan, fabric_settings, plan_network

        if not isinstance(topology, Topology):
            topology = load_topology(topology)  # a bad file is reported before anything else
        with self._lock:
            if self._closed:
                raise ConfigError(f"lab {self.id} is closed")
            if self._network is not None or self._building_network:
                running = self._network.topology.name if self._network else "one being built"
                raise ConfigError(f"lab {self.id} already runs a network ({running}); close it "
                                  "first (net.close(), or build it with `with lab.network(...) "
                                  "as net:`)")
            clash = set(topology.nodes) & (set(self.machines) | self._reserved)
            if clash:
                raise ConfigError(f"lab {self.id} already has machines called "
                                  f"{', '.join(sorted(clash))}; rename the topology's nodes")
            self._building_network = True
        try:
            topology = self.place(topology)
            plan = plan_network(topology, self.id)
            for (provider, host_uri), names in plan.providers.items():
                self.provider_for(provider, host_uri).preflight(names)
            if seed is None:
                seed = secrets.randbits(48)
            if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 63:
                raise ConfigError(f"seed {seed!r}: give an integer from 0 to 2**63-1")
            self.log.info("network %s: seed %d (replay it with seed=%d)", topology.name, seed,
                          seed)
            local = Fabric(self.dir, tied=not self.keep, ledger=self.ledger)
            where = {n.name: self._remote_host_of(n.provider, n.host_uri) for n in plan.nodes}
            remote_hosts = sorted({where[n.name] or "" for n in plan.nodes
                                   if where[n.name] and n.nics})
            fabric: Fabric | FabricSet = FabricSet(local) if remote_hosts else local
            created: list[str] = []
            try:
                local.start()
                remote_fabrics = self._start_remote_fabrics(fabric, remote_hosts, plan, where)
                fabric.seed(seed)
                for trunk in plan.trunks:
                    fabric.add_trunk(trunk.id, trunk.segment_a, trunk.segment_b)
                settings: dict[str, dict[str, float | int | str]] = {}
                for link in plan.links:
                    settings[link.a_to_b_dir] = fabric_settings(link.a_to_b)
                    settings[link.b_to_a_dir] = fabric_settings(link.b_to_a)
                for direction, values in settings.items():
                    if direction.startswith("t"):  # trunks exist now; ports with their node
                        fabric.set(direction, **values)

                def step(node: NodePlan) -> BootStep:
                    """One node: created with its NICs; its ports join the fabric (with their
                    links' settings) as soon as it starts, before it is waited for."""
                    on_host = remote_fabrics.get(where[node.name] or "")
                    specs: list[NicSpec] = []
                    vhost = topology.spec.datapath == "vhost-user" and \
                        node.provider == "qemu" and where[node.name] is None

                    def create() -> Machine:
                        specs.extend(NicSpec(n.name, n.mac, n.address, udp=self._remote_port(
                            on_host, n.port, n.segment) if on_host else None,
                            vhost=self._vhost_port(local, n.port, n.segment) if vhost else None)
                            for n in node.nics)
                        machine = self.create(
                            node.name, provider=node.provider, host_uri=node.host_uri,
                            template=node.template, memory=node.memory, cpus=node.cpus,
                            nics=specs, hosts=plan.hosts, routes=node.routes,
                            forward=node.forward)
                        created.append(node.name)
                        return machine

                    def started(machine: Machine) -> None:
                        handed = [n for n, spec in zip(node.nics, specs, strict=True)
                                  if spec.udp is None and spec.vhost is None]
                        for nic, fd in zip(handed, machine.handle.fabric_fds(), strict=True):
                            fabric.add_port(nic.port, fd, nic.segment)
                        for nic in node.nics:
                            for direction in (f"p{nic.port}.in", f"p{nic.port}.out"):
                                if direction in settings:
                                    fabric.set(direction, **settings[direction])

                    return BootStep(node.name, create, started,
                                    counted=node.provider != "netns")

                memory = max((self._memory_of(n.template, n.memory) for n in plan.nodes
                              if n.provider != "netns"), default=0)
                machines = self._bring_up([step(node) for node in plan.nodes], memory)
            except BaseException:
                self._teardown_network(created, fabric)
                raise
            built = Network(topology, plan, fabric, machines, seed=seed, state_dir=self.dir,
                            on_close=self._network_closed)
            with self._lock:
                self._network = built
            return built
        finally:
            with self._lock:
                self._building_network = False

    def _vhost_port(self, fabric: Fabric, port: int, segment: int) -> str:
        """A vhost-user port of this machine's fabric: the socket its QEMU connects to."""
        folder = self.dir / "vhost"
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / f"p{port}.sock"
        fabric.add_vport(port, segment, path)
        return str(path)

    def _remote_host_of(self, provider: str, host_uri: str | None) -> str | None:
        """The remote host a node runs on: its ``host:``, or the lab's libvirt URI for a
        libvirt node when that is remote; None for this machine."""
        from vboxlab.providers.remote_host import is_remote

        if host_uri is not None:
            return host_uri
        lab_uri = self._options.libvirt_uri or os.environ.get("VBOXLAB_LIBVIRT_URI")
        if provider == "libvirt" and lab_uri and is_remote(lab_uri):
            return lab_uri
        return None

    def _start_remote_fabrics(self, fabric: Fabric | FabricSet, hosts: list[str],
                              plan: NetworkPlan,
                              where: dict[str, str | None]) -> dict[str, RemoteFabric]:
        """One fabric on each remote host with lab NICs, and a tunnel port on each side for
        every segment that host shares with others (a star through this machine's fabric)."""
        from vboxlab.net.fabric.remote import RemoteFabric
        from vboxlab.providers.remote_host import address_toward

        started: dict[str, RemoteFabric] = {}
        if not isinstance(fabric, FabricSet):
            return started
        segments_on: dict[str | None, set[int]] = {}
        for node in plan.nodes:
            segments_on.setdefault(where[node.name], set()).update(n.segment for n in node.nics)
        tunnel = MAX_PORTS  # tunnel ports count down from the top; NICs count up from 0
        for uri in hosts:
            provider = self.provider_for("libvirt", uri)
            remote = provider.remote  # type: ignore[attr-defined]
            remote_fabric = RemoteFabric(remote, self.id, ledger=self.ledger)
            fabric.add_remote(remote_fabric)
            remote_fabric.start()
            started[uri] = remote_fabric
            for node in plan.nodes:
                if where[node.name] == uri:
                    for nic in node.nics:
                        fabric.own(nic.port, remote_fabric)
            host_address = remote.address()
            here = address_toward(host_address)
            shared = {s for other, segs in segments_on.items() if other != uri for s in segs}
            for segment in sorted(segments_on[uri] & shared):
                tunnel -= 1
                far_port = remote_fabric.add_uport(tunnel, segment, host_address, here, 0)
                end = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    end.bind((here, 0))
                    end.connect((host_address, far_port))
                    fabric.add_port(tunnel, end.fileno(), segment)
                    remote_fabric.connect_port(tunnel, here, end.getsockname()[1])
                finally:
                    end.close()  # the fabric holds its own copy
                self.log.info("tunnel %d: segment %d between here (%s) and %s", tunnel, segment,
                              here, remote.target.label)
        return started

    def _remote_port(self, fabric: RemoteFabric, port: int, segment: int) -> tuple[int, int]:
        """A NIC port of a remote host's fabric: (QEMU's port there, the fabric's)."""
        qemu_port = fabric.remote.free_udp_port()
        fabric_port = fabric.add_uport(port, segment, "127.0.0.1", "127.0.0.1", qemu_port)
        return qemu_port, fabric_port

    def _network_closed(self, network: Network) -> None:
        """Called once by ``network.close()``: remove its machines, then its fabric."""
        with self._lock:
            if self._network is network:
                self._network = None
        if self._closed:
            return  # the lab's own teardown releases everything
        self._teardown_network(list(network.machines), network.fabric)

    def _teardown_network(self, names: list[str], fabric: Fabric | FabricSet) -> None:
        for name in reversed(names):
            if name in self.machines:
                try:
                    self.remove_vm(name)
                except Exception:
                    self.log.exception("could not remove %s", name)
        try:
            fabric.close()
        except Exception:
            self.log.exception("could not stop the fabric")

    def remove_network(self) -> None:
        """Tear the running network down (its machines, then the fabric), if there is one."""
        network = self._network
        if network is not None:
            network.close()

    def node(self, name: str) -> Machine:
        """A machine of this lab's network."""
        if self._network is None:
            raise ConfigError(f"lab {self.id} has no network; build one with lab.network(...)")
        return self._network.node(name)

    def link(self, a: str, b: str) -> LinkHandle:
        """A link of this lab's network, to change while the test runs."""
        if self._network is None:
            raise ConfigError(f"lab {self.id} has no network; build one with lab.network(...)")
        return self._network.link(a, b)

    # -- the end --------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def access_text(self) -> str:
        """How to reach a kept lab's machines."""
        where = f" --lab-dir {self.base}"
        lines = [f"vboxlab kept lab {self.id} in {self.dir}:"]
        for name, machine in self.machines.items():
            state = machine.state.value
            snaps = ", ".join(n.name for n in machine.snapshots) or "none"
            if state == "running":
                lines.append(f"  {name} (running): "
                             f"{machine.handle.shell_hint(self.id, self.base)}")
            else:
                lines.append(f"  {name} ({state}; snapshots: {snaps}): vboxlab snapshots restore "
                             f"{self.id} {name} SNAPSHOT{where}")
        lines.append(f"  remove it with: vboxlab clean --lab {self.id}{where}")
        return "\n".join(lines)

    def close(self) -> None:
        """Release everything (or, with keep, leave the state for later).

        Every step runs even when an earlier one fails; failures are logged.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        steps: list[tuple[str, Callable[[], None]]] = [("recording usage", self.usage.stop),
                                                       ("closing channels", self._close_channels)]
        if self.keep or self.keep_stopped:
            steps += [("stopping machines", self._stop_for_keeping),
                      ("writing the lease", lambda: self._write_lease(kept=True)),
                      ("logging access", lambda: self.log.info("lab kept: %s",
                                                               self.access_text()))]
        else:
            steps += [("killing machines", self._kill_machines),
                      ("stopping the fabric", self._stop_fabric),
                      ("releasing the ledger", self._release_ledger),
                      ("closing wires", self._close_wires)]
        steps.append(("closing the log", self._close_log))
        if not (self.keep or self.keep_stopped):
            steps.append(("removing the lab folder",
                          lambda: shutil.rmtree(self.dir, ignore_errors=True)))
        for what, step in steps:
            try:
                step()
            except Exception:
                logging.getLogger(__name__).exception("lab %s: %s failed", self.id, what)

    def _close_channels(self) -> None:
        for machine in list(self.machines.values()):
            machine.channel.close()

    def _stop_for_keeping(self) -> None:
        stopping = self.keep_stopped and not self.keep
        for machine in list(self.machines.values()):
            try:
                if stopping:
                    machine.handle.stop(timeout=0.5)  # a clean QEMU exit keeps qcow2 whole
                machine.handle.detach()
            except Exception:
                self.log.exception("could not stop %s", machine.name)
        network = self._network
        if network is not None:  # stopped machines need no fabric; running ones keep theirs
            if stopping:
                network.fabric.close()
            else:
                network.fabric.detach()

    def _kill_machines(self) -> None:
        for machine in reversed(list(self.machines.values())):
            try:
                machine.handle.destroy()
            except Exception:
                self.log.exception("could not kill %s", machine.name)

    def _stop_fabric(self) -> None:
        network, self._network = self._network, None
        if network is not None:
            network.close()
            network.fabric.close()

    def _release_ledger(self) -> None:
        errors = self.ledger.release_all()
        if errors:
            logging.getLogger(__name__).warning("lab %s: %d resources not released: %s",
                                                self.id, len(errors), "; ".join(errors))

    def _close_wires(self) -> None:
        for made in self._wires:
            made.close()

    def _close_log(self) -> None:
        self.log.removeHandler(self._log_handler)
        self._log_handler.close()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
