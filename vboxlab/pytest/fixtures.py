"""The plugin's fixtures: ``lab``, ``vm``, ``boot_media`` and ``network``."""

from __future__ import annotations

import atexit
import itertools
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from vboxlab.bringup import check_parallel
from vboxlab.errors import ConfigError, HostError
from vboxlab.lab import Lab
from vboxlab.labdirs import clean
from vboxlab.machine import Machine
from vboxlab.net.network import Network
from vboxlab.net.placement import parse_hosts
from vboxlab.net.topology import load_topology
from vboxlab.pytest.ids import start_live
from vboxlab.pytest.options import option, state_of, worker_id
from vboxlab.pytest.policy import missing_capability
from vboxlab.pytest.reports import write_timelines
from vboxlab.pytest.rollback import SharedVm

_vm_numbers = itertools.count(1)
_media_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The session's lab: ``lab.vm("name", template=..., memory=..., cpus=...)``."""
    config = request.config
    base = config.getoption("--lab-dir")
    base_path = Path(base) if base else None
    clean(base_path)  # labs of runs that died; never a live run's
    boot_timeout = config.getoption("--lab-boot-timeout") or 90.0
    parallel = option(config, "parallel")
    the_lab = Lab(base=base_path, provider=option(config, "provider"),
                  template=option(config, "template"), keep=config.getoption("--lab-keep"),
                  worker=worker_id(config), accel=option(config, "accel"),
                  boot_timeout=boot_timeout, channel=option(config, "channel"),
                  libvirt_uri=config.getoption("--lab-libvirt-uri") or
                  str(config.getini("lab_libvirt_uri")) or None,
                  hosts=parse_hosts(config.getoption("--lab-hosts") or
                                    list(config.getini("lab_hosts"))),
                  parallel=check_parallel(parallel, "--lab-parallel") if parallel else None)
    state = state_of(config)
    state.lab = the_lab
    if config.pluginmanager.has_plugin("junitxml"):  # seeds and digests as suite properties
        state.lab_report.suite_property = request.getfixturevalue("record_testsuite_property")
    atexit.register(the_lab.close)
    hook = config.hook
    the_lab.on_machine_ready.append(
        lambda machine: hook.pytest_vboxlab_machine_ready(machine=machine, lab=the_lab))
    try:
        hook.pytest_vboxlab_lab_created(lab=the_lab, config=config)
        yield the_lab
    finally:
        _close_lab(the_lab, config)


def _close_lab(the_lab: Lab, config: pytest.Config) -> None:
    """The lab's teardown: timelines, then close; closing happens whatever fails first."""
    state = state_of(config)
    try:
        write_timelines(the_lab, state)
        state.lab_report.on_lab_closing(the_lab, state.timelines)
    finally:
        if state.failure_snapshots and not the_lab.keep:
            the_lab.keep_stopped = True
        the_lab.close()
        atexit.unregister(the_lab.close)
        if the_lab.keep or the_lab.keep_stopped:
            state.kept.append(the_lab.access_text())


@pytest.fixture(scope="session")
def _vboxlab_shared_vm(lab: Lab, request: pytest.FixtureRequest) -> SharedVm:
    shared = SharedVm(lab)
    state_of(request.config).shared = shared
    return shared


@pytest.fixture
def vm(request: pytest.FixtureRequest, lab: Lab) -> Generator[Machine, None, None]:
    """A machine in a clean state for this test.

    One machine per session is restored to its ``clean`` snapshot after each
    test; ``@pytest.mark.fresh_vm`` boots a machine for the test alone.
    """
    if request.node.get_closest_marker("fresh_vm"):
        name = f"fresh{next(_vm_numbers)}"
        machine = lab.vm(name)
        machine.current_test = request.node.nodeid
        yield machine
        if not lab.keep:
            lab.remove_vm(name)
        return
    shared: SharedVm = request.getfixturevalue("_vboxlab_shared_vm")
    machine = shared.get()
    machine.current_test = request.node.nodeid
    yield machine


class BootMediaFixture:
    """The ``boot_media`` fixture: ``boot_media(tree, append=..., way=...)`` -> a booted Machine."""

    def __init__(self, the_lab: Lab) -> None:
        self.lab = the_lab
        self.names: list[str] = []

    def __repr__(self) -> str:
        return f"<boot_media of lab {self.lab.id}: {', '.join(self.names) or 'none yet'}>"

    def __call__(self, tree: str | Path | None = None, *, append: str = "",
                 way: str = "bios-cdrom", device: str | Path | None = None,
                 allow_fixed: bool = False, name: str | None = None,
                 memory: int | None = None, template: str | None = None) -> Machine:
        from vboxlab.media.boot import boot_from_media
        from vboxlab.media.usb import Overrides

        name = name or f"media{next(_media_numbers)}"
        machine = boot_from_media(
            self.lab, name, Path(tree) if tree is not None else None, append=append, way=way,
            device=Path(device) if device is not None else None,
            overrides=Overrides(allow_fixed=allow_fixed), memory=memory, template=template)
        self.names.append(name)
        return machine

    def close(self) -> None:
        for name in self.names:
            if name in self.lab.machines and not self.lab.keep:
                self.lab.remove_vm(name)


@pytest.fixture
def boot_media(lab: Lab) -> Iterator[BootMediaFixture]:
    """Build a folder into a bootable ISO with the template's kernel, boot it, get the Machine.

    ``boot_media(tree, append="lab.role=x", way="uefi-cdrom")``; ways: bios-cdrom,
    bios-usb, uefi-cdrom, uefi-usb (a USB way with ``device=`` writes the image to
    that block device first). The machines go away after the test.
    """
    media = BootMediaFixture(lab)
    try:
        yield media
    finally:
        media.close()


@pytest.fixture
def network(request: pytest.FixtureRequest, lab: Lab) -> Generator[Network, None, None]:
    """The topology of ``@pytest.mark.lab(topology="topologies/x.yaml", seed=N)``, running.

    Its machines are ``network.node(name)`` (or ``lab.node(name)``), its links
    ``lab.link(a, b)``; every link is captured, and everything is torn down
    after the test. Without ``seed`` a random one is drawn; a failing test's
    report names it.
    """
    marker = request.node.get_closest_marker("lab")
    topology = marker.kwargs.get("topology") if marker is not None else None
    if topology is None:
        raise ConfigError("the network fixture needs a topology: mark the test with "
                          "@pytest.mark.lab(topology='topologies/NAME.yaml')")
    path = Path(topology)
    if not path.is_absolute():
        path = request.config.rootpath / path
    model = lab.place(load_topology(path))
    for (provider, host_uri), names in model.providers.items():
        try:
            lab.provider_for(provider, host_uri).preflight(names)
        except HostError as exc:
            missing_capability(f"topology {path.name}: {exc}")
    seed = marker.kwargs.get("seed") if marker is not None else None
    if seed is None:  # a rerun's seed (--lab-seed-file), else one is drawn
        seed = state_of(request.config).seeds.get(request.node.nodeid)
    built = lab.network(model, seed=seed)
    live = None
    try:
        # attached to the report if the test fails; a ring keeps a long test off the disk
        built.capture_all(lab.dir / "captures", ring=state_of(request.config).capture_ring)
        live = start_live(request.node, built, lab.ledger)  # --lab-ids live
        yield built
    finally:
        if live is not None:
            live.close()
        if not lab.keep:
            built.close()
