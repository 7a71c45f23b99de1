"""A small synchronous QMP connection over ``qemu.qmp``'s asyncio client.

qemu.qmp's own sync shim (``legacy.QEMUMonitorProtocol``) has no timeout on
connect and shares one event loop per thread; this one owns its loop, bounds
every call with a timeout, and closes everything it opened.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import QMPClient

T = TypeVar("T")


class QmpConnection:
    """One QMP session to a QEMU monitor socket."""

    def __init__(self, path: Path, name: str, timeout: float = 15.0) -> None:
        self.path = path
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient(name)
        self._lock = threading.Lock()  # one event loop: one caller at a time

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        with self._lock:
            if self._loop.is_closed():
                coro.close()
                raise ConnectionError("the QMP connection is closed")
            return self._loop.run_until_complete(
                asyncio.wait_for(coro, timeout or self.timeout))

    def connect(self, timeout: float = 5.0) -> None:
        """Connect and negotiate capabilities (raises on refusal or timeout)."""
        self._run(self._client.connect(str(self.path)), timeout)

    def cmd(self, command: str, arguments: dict[str, Any] | None = None,
            timeout: float | None = None) -> Any:
        """Execute one command; returns its ``return`` value or raises."""
        return self._run(self._client.execute(command, arguments or None), timeout)

    def close(self) -> None:
        """Disconnect (quietly if QEMU is gone) and close the event loop."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._client.disconnect(), 5.0)
        except Exception:  # noqa: S110 - QEMU may already be gone: nothing left to close
            pass
        finally:
            with self._lock:
                self._loop.close()


def run_job(qmp: QmpConnection, command: str, job_id: str, timeout: float,
            **arguments: Any) -> None:
    """Start a QMP job and wait for it to conclude; raise RuntimeError with QEMU's reason."""
    qmp.cmd(command, {"job-id": job_id, **arguments})
    deadline = time.monotonic() + timeout
    while True:
        job = next((j for j in qmp.cmd("query-jobs") if j["id"] == job_id), None)
        if job is None:
            raise RuntimeError(f"QMP job {job_id} vanished")
        if job["status"] == "concluded":
            qmp.cmd("job-dismiss", {"id": job_id})
            if job.get("error"):
                raise RuntimeError(f"{command} failed: {job['error']}")
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{command} did not finish within {timeout:g} s")
        time.sleep(0.005)


def snapshot_args(tag: str, disk: str, with_state: bool = True) -> dict[str, Any]:
    """Arguments of snapshot-save/-load (with_state) and snapshot-delete for one disk."""
    args: dict[str, Any] = {"tag": tag, "devices": [disk]}
    if with_state:
        args["vmstate"] = disk
    return args
