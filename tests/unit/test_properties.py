"""Property-based tests: random and mutated input gives vboxlab's own errors, nothing else.

The topology loader, template definitions, boot specs and archive import get
random text, random data and mutations of valid input; every outcome must be
success or a :class:`VboxlabError` whose message names the file or field, never
another exception, a hang or a crash. The fabric gets random control lines and
frames and must keep answering.
"""

import contextlib
import copy
import gzip
import io
import json
import socket
import struct
import tarfile
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vboxlab.errors import ConfigError, UntrustedImage
from vboxlab.media.bootspec import BootSpec
from vboxlab.media.tree import MediaError
from vboxlab.net import Topology, load_topology
from vboxlab.net.fabric import FabricError
from vboxlab.net.plan import describe, plan_network
from vboxlab.templates import TemplateRepository
from vboxlab.templates.archive import ArchiveError, export_template, import_template
from vboxlab.templates.definition import load_template
from vboxlab.templates.trust import check_disk
from vboxlab.waiting import wait_until

from .helpers import install, small_qcow2
from .test_fabric import running_fabric

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGIES = sorted((ROOT / "topologies").glob("*.yaml"))
DEFINITIONS = sorted((ROOT / "fixtures" / "templates").glob("*/template.toml"))
FAST = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=24)
           | st.sampled_from(["10ms", "2%", "10mbit", "64k", "tiny", "qemu", "netns", "lan",
                              "10.1.0.0/24", "10.1.0.300", "a--b", "café", "eth1", "-1ms"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=10) | st.sampled_from(
                          ["nodes", "links", "between", "segments", "subnet", "delay",
                           "loss", "loss_model", "a_to_b", "provider", "p", "r"]),
                          inner, max_size=4), max_leaves=16)


def mutate(document, data):
    """Change one place of a nested document: replace, delete or add a value."""
    path = []
    node = document
    while isinstance(node, dict | list) and node and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(list(node) if isinstance(node, dict)
                                        else list(range(len(node)))))
        path.append(key)
        node = node[key]
    if not path:
        if isinstance(document, dict):
            document[data.draw(st.text(max_size=8))] = data.draw(values)
        return document
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    action = data.draw(st.sampled_from(["replace", "delete", "duplicate"]))
    if action == "replace":
        parent[path[-1]] = data.draw(values)
    elif action == "delete":
        del parent[path[-1]]
    elif isinstance(parent, list):
        parent.append(copy.deepcopy(parent[path[-1]]))
    return document


# -- topologies -------------------------------------------------------------------------------
@FAST
@given(st.data())
def test_mutated_topologies_give_only_config_errors(data):
    document = yaml.safe_load(data.draw(st.sampled_from(TOPOLOGIES)).read_text())
    for _ in range(data.draw(st.integers(1, 4))):
        document = mutate(document, data)
    try:
        topology = Topology.from_dict(document)
    except ConfigError as exc:
        assert str(exc)
        return
    assert describe(topology)  # what validates can be described and planned
    assert plan_network(topology, "x").topology == topology.name


@FAST
@given(values)
def test_random_data_gives_a_topology_or_a_config_error(document):
    with contextlib.suppress(ConfigError):
        Topology.from_dict(document)


@FAST
@given(st.text(max_size=400) | st.sampled_from(["[" * 5000, "{a: " * 3000, "a: &x [1]\nb: *x",
                                                "nodes: !!python/object:os.system {}"]))
def test_random_topology_files_give_errors_that_name_the_file(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "random.yaml"
        path.write_text(text)
        try:
            load_topology(path)
        except ConfigError as exc:
            assert "random.yaml" in str(exc)


# -- template definitions and boot specs ------------------------------------------------------
def toml_value(value):
    return json.dumps(value) if isinstance(value, str | int | bool) else '"x"'


@FAST
@given(st.data())
def test_mutated_template_definitions_give_errors_that_name_the_file(data):
    lines = data.draw(st.sampled_from(DEFINITIONS)).read_text().splitlines()
    for _ in range(data.draw(st.integers(1, 3))):
        index = data.draw(st.integers(0, max(0, len(lines) - 1)))
        choice = data.draw(st.sampled_from(["drop", "value", "garbage"]))
        if choice == "drop" and lines:
            del lines[index]
        elif choice == "value" and lines and "=" in lines[index]:
            key = lines[index].split("=")[0]
            lines[index] = f"{key}= {toml_value(data.draw(scalars))}"
        else:
            lines.insert(index, data.draw(st.text(max_size=30)))
    with tempfile.TemporaryDirectory() as folder:
        template = Path(folder) / "tiny"
        template.mkdir()
        (template / "template.toml").write_text("\n".join(lines))
        try:
            load_template(template)
        except ConfigError as exc:
            assert "template.toml" in str(exc)


@FAST
@given(st.text(max_size=300) | st.sampled_from(["a = " + "[" * 3000, "[entry]\nkernel = 1"]))
def test_random_boot_specs_give_media_errors(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "boot.toml"
        path.write_text(text)
        try:
            BootSpec.from_file(path)
        except MediaError as exc:
            assert "boot.toml" in str(exc)


# -- archives ---------------------------------------------------------------------------------
def _archive_bytes():
    with tempfile.TemporaryDirectory() as folder:
        repo = TemplateRepository(cache=Path(folder) / "a", search=[])
        install(repo, "shared", "1.2.0")
        built = repo.installed("shared")[0]
        return export_template(built, Path(folder) / "x.tar.gz").read_bytes()


ARCHIVE = _archive_bytes()


def try_import(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        archive = Path(folder) / "in.tar.gz"
        archive.write_bytes(raw)
        target = TemplateRepository(cache=Path(folder) / "b", search=[])
        try:
            import_template(archive, target)
        except (ArchiveError, ConfigError):
            assert target.installed() == []
            assert not list(target.images.glob(".import-*"))


@SLOW
@given(st.lists(st.tuples(st.integers(0, len(ARCHIVE) - 1), st.integers(0, 255)), max_size=6),
       st.integers(1, len(ARCHIVE)))
def test_damaged_archives_are_refused_cleanly(flips, keep):
    raw = bytearray(ARCHIVE[:keep])
    for offset, value in flips:
        if offset < len(raw):
            raw[offset] = value
    try_import(bytes(raw))


@SLOW
@given(st.data())
def test_archives_with_mutated_manifests_are_refused_cleanly(data):
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(ARCHIVE))) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    manifest = json.loads(members[0][1])
    for _ in range(data.draw(st.integers(1, 3))):
        manifest = mutate(manifest, data)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member, content in members:
            if member.name.endswith("manifest.json"):
                content = json.dumps(manifest).encode()
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))
    try_import(gzip.compress(buffer.getvalue()))


# -- template disk headers ---------------------------------------------------------------------
def _qcow2_header() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        return small_qcow2(Path(folder) / "d.qcow2").read_bytes()[:4096]


QCOW2 = _qcow2_header()


@SLOW
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=8),
       st.integers(0, len(QCOW2)))
def test_damaged_disk_headers_are_refused_or_accepted_never_a_crash(flips, keep):
    raw = bytearray(QCOW2[:keep])
    for offset, value in flips:
        if offset < len(raw):
            raw[offset] = value
    with tempfile.TemporaryDirectory() as folder:
        disk = Path(folder) / "disk.qcow2"
        disk.write_bytes(bytes(raw))
        with contextlib.suppress(UntrustedImage):
            check_disk(disk)


# -- the fabric -------------------------------------------------------------------------------
words = st.sampled_from(["port", "trunk", "set", "capture", "flush", "stats", "seed", "p0.in",
                         "p1.out", "t0.ab", "delay_ns=5", "loss=0.5", "ge=0.1,0.2,0,1",
                         "mtu=0", "rate_bps=1", "queue_bytes=1", "up=0", "off", "/dev/null",
                         "-1", "0", "1", "255", "256", "99999999999", "reorder=1", "dup=1"])
lines = st.lists(words | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126),
                                 max_size=12), max_size=8).map(" ".join)


@SLOW
@given(st.lists(lines, max_size=12), st.lists(st.binary(max_size=200), max_size=20),
       st.binary(max_size=300))
def test_the_fabric_survives_random_commands_and_frames(commands, frames, raw):
    with tempfile.TemporaryDirectory() as folder, \
            running_fabric(Path(folder), [0, 0]) as (fab, nears):
        fab.add_trunk(0, 0, 1)
        for line in commands:
            if line.startswith("quit"):
                continue
            try:
                fab.command(line)
            except FabricError as exc:
                assert "refused" in str(exc) or "one line" in str(exc)
        for index, frame in enumerate(frames):
            nears[index % 2].send(frame or b"\0")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw_client:
            raw_client.connect(str(fab.control_path))
            raw_client.sendall(raw.replace(b"quit", b"q"))
        assert "p0.in" in fab.stats()  # still answering on its own connection


def test_a_frame_header_is_not_trusted_by_the_switch(tmp_path):
    """Multicast sources, tiny frames and giant ones are dropped or passed, never a crash."""
    with running_fabric(tmp_path, [0, 0]) as (fab, nears):
        for frame in (b"", b"\x01", b"\xff" * 13, b"\x01" * 14, b"\xff" * 6 + b"\x01" * 8,
                      b"\x00" * 65000, struct.pack("!6s6sH", b"\xff" * 6, b"\x02" * 6, 0)):
            nears[0].send(frame or b"\0")
        wait_until(lambda: fab.stats()["p0.in"]["rx_packets"] >= 6, timeout=10,
                   what="the fabric to read the frames")
        assert fab.stats()["p0.in"]["rx_packets"] <= 7
