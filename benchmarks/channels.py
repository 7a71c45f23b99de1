"""Command channels side by side in one tiny VM: vboxlab's agent, QEMU's guest agent, SSH. JSON.

    python benchmarks/channels.py --rounds 5 --commands 40 --output benchmarks/results/channels.json

The same guest serves all three at once: ``vboxlab-agent`` on its virtio-serial
port (the default channel), Debian 12's ``qemu-ga`` (package qemu-guest-agent,
unpacked on the host with its libraries, copied in and started on a second port
hot-plugged through QMP), and OpenSSH's sshd over the forwarded port. Rounds
alternate between the three so drift on a shared machine hits all alike.

* round trip: run ``true`` and get its exit status and output. vboxlab agent:
  one EXEC frame, answers streamed back. qemu-ga: ``guest-exec`` of
  ``/bin/sh -c true`` with captured output, then ``guest-exec-status`` polled
  (every 1 ms, its fastest) until it has exited, as a client must. SSH: a
  session on the open, pinned connection.
* copy in: a 1 MiB file to the guest. vboxlab agent: WRITE frames. qemu-ga:
  ``guest-file-open``/``guest-file-write`` (base64, 48 KiB per call, as
  libvirt's client does)/``guest-file-close``. SSH: SFTP.

The QGA client here is the benchmark's own few lines of JSON over the socket:
the protocol is QMP's framing without its greeting, which qemu.qmp expects.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from boot import emit, summary

from vboxlab.lab import Lab
from vboxlab.machine import Machine
from vboxlab.templates import TemplateRepository, debs
from vboxlab.templates.elf import library_closure

QGA_PORT = "org.qemu.guest_agent.0"
QGA_CHUNK = 48 * 1024


class GuestAgentClient:
    """Just enough of the QEMU guest agent protocol: one JSON command, one JSON answer."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.sock.settimeout(30)
        self.buffer = b""
        self._sync()

    def _sync(self) -> None:
        """guest-sync-delimited: skip whatever a previous client left in the channel."""
        token = int.from_bytes(os.urandom(4), "little")
        self.sock.sendall(b"\xff" + json.dumps({"execute": "guest-sync-delimited",
                                                 "arguments": {"id": token}}).encode())
        while True:
            answer = self._read()
            if answer.get("return") == token:
                return

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise RuntimeError("qemu-ga closed the channel")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        line = line.lstrip(b"\xff")
        return json.loads(line) if line.strip() else self._read()

    def call(self, command: str, **arguments: Any) -> Any:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self.sock.sendall(json.dumps(message).encode())
        answer = self._read()
        if "error" in answer:
            raise RuntimeError(f"qemu-ga {command}: {answer['error']}")
        return answer.get("return")

    def run(self, command: str) -> tuple[int, bytes]:
        pid = self.call("guest-exec", path="/bin/sh", arg=["-c", command],
                        **{"capture-output": True})["pid"]
        while True:
            status = self.call("guest-exec-status", pid=pid)
            if status["exited"]:
                return status["exitcode"], base64.b64decode(status.get("out-data", ""))
            time.sleep(0.001)

    def put(self, local: Path, remote: str) -> None:
        handle = self.call("guest-file-open", path=remote, mode="w")
        data = local.read_bytes()
        for start in range(0, len(data), QGA_CHUNK):
            self.call("guest-file-write", handle=handle,
                      **{"buf-b64": base64.b64encode(data[start:start + QGA_CHUNK]).decode()})
        self.call("guest-file-close", handle=handle)

    def close(self) -> None:
        self.sock.close()


def qemu_ga_files(scratch: Path) -> dict[str, Path]:
    """qemu-ga and the shared libraries it needs, unpacked from Debian's packages."""
    packages = list(debs.library_closure(["qemu-guest-agent"]).values())
    for deb in debs.download(packages, TemplateRepository().cache / "debs"):
        debs.extract(deb, scratch)
    binary = scratch / "usr/sbin/qemu-ga"
    files = {"qemu-ga": binary}
    for image_path, source in library_closure(scratch, [binary]).items():
        files[Path(image_path).name] = source
    return files


def start_qemu_ga(vm: Machine, files: dict[str, Path], folder: Path) -> GuestAgentClient:
    """Hot-plug a second virtio-serial port, copy qemu-ga in, start it there, connect."""
    handle = vm.handle
    qga_socket = folder / "qga.sock"
    handle.qmp("chardev-add", id="qga", backend={"type": "socket", "data": {
        "addr": {"type": "unix", "data": {"path": str(qga_socket)}},
        "server": True, "wait": False}})
    handle.qmp("device_add", driver="virtserialport", bus="vser0.0", chardev="qga",
               name=QGA_PORT, id="qgaport")
    vm.succeed("mkdir -p /tmp/qga")
    for name, path in files.items():
        vm.copy_to(path, f"/tmp/qga/{name}")
    port = vm.wait_until_succeeds(
        f"grep -l {QGA_PORT} /sys/class/virtio-ports/*/name", timeout=30).split("/")[4]
    vm.succeed(f"(/lib64/ld-linux-x86-64.so.2 --library-path /tmp/qga /tmp/qga/qemu-ga "
               f"-m virtio-serial -p /dev/{port} -t /tmp/qga -f /tmp/qga/pid >/tmp/qga/log 2>&1 &)")
    deadline = time.monotonic() + 30
    while True:
        try:
            return GuestAgentClient(qga_socket)
        except (OSError, RuntimeError):
            if time.monotonic() > deadline:
                raise SystemExit("qemu-ga did not answer: "
                                 + vm.execute("cat /tmp/qga/log").stdout) from None
            time.sleep(0.1)


def timed(action: Any, count: int) -> list[float]:
    values = []
    for _ in range(count):
        started = time.perf_counter()
        action()
        values.append((time.perf_counter() - started) * 1000)
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="Alternations of the channels")
    parser.add_argument("--commands", type=int, default=40, help="Round trips per round")
    parser.add_argument("--copies", type=int, default=3, help="1 MiB copies per round")
    parser.add_argument("--output", type=Path, help="Also write the JSON here")
    args = parser.parse_args()
    trips: dict[str, list[float]] = {"vboxlab_agent": [], "qemu_ga": [], "ssh": []}
    copies: dict[str, list[float]] = {name: [] for name in trips}
    with tempfile.TemporaryDirectory(prefix="vbl-ch-") as folder, \
            Lab(base=Path(folder) / "labs") as lab:
        files = qemu_ga_files(Path(folder) / "qga-root")
        qga_size = sum(path.stat().st_size for path in files.values())
        vm = lab.vm("channels")
        qga = start_qemu_ga(vm, files, Path(folder))
        ssh = vm.handle.ssh_channel(lab.user_key.paramiko_key())
        ssh.connect(timeout=60)
        payload = Path(folder) / "payload"
        payload.write_bytes(os.urandom(1 << 20))
        digest = hashlib.md5(payload.read_bytes()).hexdigest()
        assert qga.run("echo qga")[1] == b"qga\n"
        run = {"vboxlab_agent": lambda: vm.channel.run("true", 30),
               "qemu_ga": lambda: qga.run("true"),
               "ssh": lambda: ssh.run("true", 30)}
        put = {"vboxlab_agent": lambda: vm.channel.put(payload, "/tmp/payload"),
               "qemu_ga": lambda: qga.put(payload, "/tmp/payload"),
               "ssh": lambda: ssh.put(payload, "/tmp/payload")}
        for name in trips:  # warm every path once before timing
            timed(run[name], 5)
        for _ in range(args.rounds):
            for name in trips:
                trips[name] += timed(run[name], args.commands)
                copies[name] += timed(put[name], args.copies)
                assert vm.succeed("md5sum < /tmp/payload").split()[0] == digest
        qga.close()
        ssh.close()
    agent_p50 = statistics.median(trips["vboxlab_agent"])
    result = {
        "benchmark": "channels",
        "host_cpus": os.cpu_count(),
        "rounds": args.rounds,
        "round_trip_ms": {name: summary(values, 2) for name, values in trips.items()},
        "copy_1mib_ms": {name: summary(values, 1) for name, values in copies.items()},
        "qemu_ga_bytes_in_guest": qga_size,
        "agent_vs_qemu_ga_round_trip": round(statistics.median(trips["qemu_ga"]) / agent_p50, 2),
        "agent_vs_ssh_round_trip": round(statistics.median(trips["ssh"]) / agent_p50, 2),
        "target_round_trip_p50_ms": 5.0,
        "met": agent_p50 <= 5.0,
    }
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
