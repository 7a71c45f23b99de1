"""The Lab: everything one run creates (machines, files, processes), and its cleanup.

A lab lives in ``<state base>/<lab id>/``: ``lease.json`` names the owning
process, ``ledger.jsonl`` lists every resource before it is created, ``lab.log``
is the lab's log, and each machine has a folder of its own. When the lab
closes, pending resources are released newest first (one failure is logged
and the rest still go) and the folder is removed. A lab whose owner died is
found by ``vboxlab clean`` (and by the next pytest run) through its lease.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from vboxlab import procs
from vboxlab.channels import SSHChannel
from vboxlab.errors import ConfigError, HostError
from vboxlab.keys import KeyPair, load_or_create
from vboxlab.ledger import Ledger
from vboxlab.machine import Machine
from vboxlab.net.topology import Topology, load_topology
from vboxlab.net.wire import DirectWire
from vboxlab.paths import state_base
from vboxlab.providers import Provider, load_provider
from vboxlab.providers.base import BootMedia, MachineSpec, MachineState, NicSpec
from vboxlab.templates import TemplateRepository

if TYPE_CHECKING:
    from vboxlab.net.network import LinkHandle, Network
    from vboxlab.providers.netns import TapSpec

LEASE = "lease.json"
LEDGER = "ledger.jsonl"
_VM_NAME = re.compile(r"^[a-z][a-z0-9-]{0,19}$")


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
                 boot_timeout: float = 90.0) -> None:
        self.base = Path(base) if base is not None else state_base()
        self.id = new_lab_id(worker)
        self.dir = self.base / self.id
        self.keep = keep
        self.default_template = template
        self.boot_timeout = boot_timeout
        self.repository = repository or TemplateRepository()
        self._provider_name = provider
        self._accel = accel
        self._provider: Provider | None = None
        self.machines: dict[str, Machine] = {}
        #: called with each machine once it first answers (the plugin's hook uses it)
        self.on_machine_ready: list[Callable[[Machine], None]] = []
        self._wires: list[DirectWire] = []
        self._network: Network | None = None
        #: keep the state (machines stopped) at close, e.g. for failure snapshots
        self.keep_stopped = False
        self._closed = False
        self.base.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.dir.mkdir(mode=0o700)
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

    # -- lease ----------------------------------------------------------
    def _write_lease(self, *, kept: bool) -> None:
        lease = {"id": self.id, "pid": os.getpid(), "start": procs.start_time(os.getpid()),
                 "kept": kept, "created": time.time(), "argv": sys.argv[:8]}
        tmp = self.dir / f".{LEASE}.tmp"
        tmp.write_text(json.dumps(lease, indent=2) + "\n")
        tmp.replace(self.dir / LEASE)

    # -- machines -------------------------------------------------------
    def _check_new_machine(self, name: str) -> None:
        if self._closed:
            raise ConfigError(f"lab {self.id} is closed")
        if not _VM_NAME.match(name):
            raise ConfigError(f"invalid machine name {name!r}: use 1-20 lower-case letters, "
                              "digits and '-', starting with a letter")
        if name in self.machines:
            raise ConfigError(f"lab {self.id} already has a machine called {name!r}")

    @property
    def provider(self) -> Provider:
        if self._provider is None:
            options = {"accel": self._accel} if self._provider_name == "qemu" else {}
            self._provider = load_provider(self._provider_name, **options)
        return self._provider

    def vm(self, name: str, template: str | None = None, memory: int | None = None,
           cpus: int | None = None, boot: bool = True, rollback: bool = False,
           nics: Sequence[NicSpec] = (), hosts: str = "",
           routes: Sequence[tuple[str, str]] = (), forward: bool = False,
           media: BootMedia | None = None) -> Machine:
        """Create a machine from a template and (by default) boot it until SSH answers.

        With ``rollback``, the pytest plugin returns the machine after every test
        to the state it had when the first test using it started.
        """
        self._check_new_machine(name)
        built = self.repository.built(template or self.default_template)
        resources = built.template.definition.resources
        memory = memory or resources.memory
        cpus = cpus or resources.cpus
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
        workdir = self.dir / name
        workdir.mkdir(mode=0o700)
        spec = MachineSpec(name=name, template=built, memory=memory, cpus=cpus, workdir=workdir,
                           host_key=KeyPair.generate(f"{name}@{self.id}"),
                           authorized_key=self.user_key.public_line, tied=not self.keep,
                           log=self.log, nics=tuple(nics), hosts=hosts, routes=tuple(routes),
                           forward=forward, media=media)
        handle = self.provider.create(spec, self.ledger)
        (workdir / "known_hosts.pub").write_text(spec.host_key.public_line + "\n")
        channel = SSHChannel(name, handle.ssh_endpoint, built.template.definition.access.user,
                             self.user_key.paramiko_key(), spec.host_key.public_key(),
                             handle.check_alive)
        machine = Machine(name, handle, channel, self.log, boot_timeout=self.boot_timeout,
                          state_dir=workdir, rollback=rollback)
        self.machines[name] = machine
        if boot:
            started = time.monotonic()
            try:
                machine.boot()
            except Exception:
                self.log.exception("%s did not boot", name)
                machine.kill()
                raise
            self.log.info("%s answered SSH %.2f s after start", name,
                          time.monotonic() - started)
            for callback in self.on_machine_ready:
                callback(machine)
        return machine

    def netns_host(self, name: str, taps: Sequence[TapSpec] = (), hosts: str = "",
                   routes: Sequence[tuple[str, str]] = (), forward: bool = False) -> Machine:
        """Start a network-namespace host (root only); its ``handle.tap_fds`` go to a fabric.

        Topologies make these for nodes with ``provider: netns``; commands run in
        the namespaces through nsenter, with the Machine verbs of a VM.
        """
        from vboxlab.providers.netns import NetnsHost, NsenterChannel

        self._check_new_machine(name)
        workdir = self.dir / name
        workdir.mkdir(mode=0o700)
        handle = NetnsHost(name, workdir, self.ledger, taps=tuple(taps), hosts=hosts,
                           routes=tuple(routes), forward=forward, tied=not self.keep,
                           log=self.log, lab_id=self.id)
        machine = Machine(name, handle, NsenterChannel(handle), self.log,
                          boot_timeout=self.boot_timeout, state_dir=workdir)
        self.machines[name] = machine
        try:
            machine.boot()
        except Exception:
            self.log.exception("netns host %s did not start", name)
            self.remove_vm(name)
            raise
        for callback in self.on_machine_ready:
            callback(machine)
        return machine

    def wire(self, a: str, b: str, *, a_address: str | None = None,
             b_address: str | None = None, interface: str = "eth1") -> DirectWire:
        """A direct cable between two VMs to be created: pass ``wire.nic(name)`` to ``vm()``."""
        if self._closed:
            raise ConfigError(f"lab {self.id} is closed")
        made = DirectWire(a, b, lab_id=self.id, interface=interface, a_address=a_address,
                          b_address=b_address)
        self._wires.append(made)
        return made

    def network(self, topology: Topology | str | Path, *, seed: int | None = None) -> Network:
        """Build a topology (a file or a Topology) into this lab: fabric, NICs and machines."""
        from vboxlab.net.network import Network

        if self._closed:
            raise ConfigError(f"lab {self.id} is closed")
        if self._network is not None:
            raise ConfigError(f"lab {self.id} already has a network; one per lab")
        if not isinstance(topology, Topology):
            topology = load_topology(topology)
        clash = set(topology.nodes) & set(self.machines)
        if clash:
            raise ConfigError(f"lab {self.id} already has VMs called {', '.join(sorted(clash))}")
        self._network = Network(self, topology, seed=seed)
        return self._network

    def remove_network(self) -> None:
        """Tear the network down: its machines, then the fabric."""
        if self._network is None:
            return
        for name in list(self._network.machines):
            if name in self.machines:
                self.remove_vm(name)
        self._network.close()
        self._network = None

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

    def remove_vm(self, name: str) -> None:
        """Destroy a machine now: kill it and delete its files."""
        machine = self.machines.pop(name)
        machine.channel.close()
        machine.handle.destroy()

    def __getitem__(self, name: str) -> Machine:
        return self.machines[name]

    def __iter__(self) -> Iterator[Machine]:
        return iter(self.machines.values())

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
            enter = getattr(machine.handle, "enter_argv", None)
            if state == "running" and enter is not None:  # a netns host: no SSH
                lines.append(f"  {name} (running netns host): {' '.join(enter())} sh")
            elif state == "running":
                lines.append(f"  {name} (running): vboxlab ssh {self.id} {name}{where}")
            else:
                lines.append(f"  {name} ({state}; snapshots: {snaps}): vboxlab snapshots restore "
                             f"{self.id} {name} SNAPSHOT{where}")
        lines.append(f"  remove it with: vboxlab clean --lab {self.id}{where}")
        return "\n".join(lines)

    def close(self) -> None:
        """Release everything (or, with keep, leave the machines running for later)."""
        if self._closed:
            return
        self._closed = True
        for machine in self.machines.values():
            machine.channel.close()
        if self.keep or self.keep_stopped:
            if self.keep_stopped and not self.keep:
                for machine in self.machines.values():
                    machine.handle.stop(timeout=0.5)  # a clean QEMU exit keeps qcow2 whole
            self._write_lease(kept=True)
            self.log.info("lab kept: %s", self.access_text())
            self._close_log()
            return
        for machine in reversed(list(self.machines.values())):
            try:
                if machine.state is MachineState.RUNNING:
                    machine.kill()
            except Exception:
                self.log.exception("could not kill %s", machine.name)
        if self._network is not None:
            self._network.close()
        errors = self.ledger.release_all()
        for made in self._wires:
            made.close()
        self._close_log()
        if errors:
            logging.getLogger(__name__).warning("lab %s: %d resources not released: %s",
                                                self.id, len(errors), "; ".join(errors))
        shutil.rmtree(self.dir, ignore_errors=True)

    def _close_log(self) -> None:
        self.log.removeHandler(self._log_handler)
        self._log_handler.close()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# -- labs on disk, whoever made them ---------------------------------------
@dataclass(frozen=True)
class LabRecord:
    """A lab folder found on disk."""

    id: str
    dir: Path
    owner_pid: int | None
    owner_alive: bool
    kept: bool
    machines: dict[str, dict[str, object]]

    @property
    def stale(self) -> bool:
        """Owner dead and not kept: what ``vboxlab clean`` removes."""
        return not self.owner_alive and not self.kept


def read_lab(folder: Path) -> LabRecord | None:
    """The lab in ``folder``, or None if it is not one."""
    lease_path = folder / LEASE
    try:
        lease = json.loads(lease_path.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        if folder.is_dir() and (folder / LEDGER).exists():
            return LabRecord(folder.name, folder, None, False, False, {})
        return None
    pid = lease.get("pid")
    alive = isinstance(pid, int) and procs.is_alive(pid, lease.get("start"))
    machines: dict[str, dict[str, object]] = {}
    for info_path in sorted(folder.glob("*/machine.json")):
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError:
            continue
        running = isinstance(info.get("pid"), int) and procs.is_alive(int(info["pid"]), None) \
            and any(f"{info_path.parent}/" in a for a in procs.cmdline(int(info["pid"])))
        info["running"] = running
        machines[info_path.parent.name] = info
    return LabRecord(folder.name, folder, pid, alive, bool(lease.get("kept")), machines)


def list_labs(base: Path | None = None) -> list[LabRecord]:
    """Every lab under the state base."""
    base = base or state_base()
    if not base.is_dir():
        return []
    records = [read_lab(p) for p in sorted(base.iterdir()) if p.is_dir()]
    return [r for r in records if r is not None]


def remove_lab(record: LabRecord) -> list[str]:
    """Release a lab's pending resources and delete its folder; returns errors."""
    errors = Ledger(record.dir / LEDGER).release_all()
    shutil.rmtree(record.dir, ignore_errors=True)
    return errors


def clean(base: Path | None = None, *, include_kept: bool = False,
          only: str | None = None) -> list[str]:
    """Remove labs whose owner is dead (and kept ones when asked); never a live run's lab."""
    removed = []
    for record in list_labs(base):
        if only is not None and record.id != only:
            continue
        if record.owner_alive:
            continue
        if record.kept and not (include_kept or only is not None):
            continue
        remove_lab(record)
        removed.append(record.id)
    if only is not None and not removed:
        known = [r.id for r in list_labs(base)]
        raise ConfigError(f"no removable lab {only!r} (owner alive, or no such lab); labs: "
                          f"{', '.join(known) or 'none'}")
    return removed
