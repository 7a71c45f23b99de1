"""Long actions the dashboard starts (a template build): run in a thread, followed by polling.

A job records its steps (the progress lines the library reports), its state
(``running``, ``done``, ``failed``), the error's message and the result. One
job per key runs at a time: asking to build a template being built returns the
running job.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vboxlab.errors import VboxlabError

MAX_STEPS = 200


@dataclass
class Job:
    """One long action and what it reported."""

    id: str
    key: str
    what: str
    state: str = "running"
    steps: list[str] = field(default_factory=list)
    error: str | None = None
    result: Any = None
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "what": self.what, "state": self.state, "steps": self.steps,
                "error": self.error, "result": self.result, "started": self.started,
                "finished": self.finished}


class Jobs:
    """The dashboard's jobs, by id."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Jobs {len(self._jobs)}>"

    def start(self, key: str, what: str,
              work: Callable[[Callable[[str], None]], Any]) -> Job:
        """Run ``work(progress)`` in a thread (unless a job with ``key`` is running)."""
        with self._lock:
            for job in self._jobs.values():
                if job.key == key and job.state == "running":
                    return job
            job = Job(secrets.token_hex(8), key, what)
            self._jobs[job.id] = job

        def progress(step: str) -> None:
            job.steps = [*job.steps[-(MAX_STEPS - 1):], step]

        def run() -> None:
            try:
                job.result = work(progress)
                job.state = "done"
            except VboxlabError as exc:
                job.error, job.state = str(exc), "failed"
            except Exception as exc:
                job.error, job.state = f"{type(exc).__name__}: {exc}", "failed"
            finally:
                job.finished = time.time()

        threading.Thread(target=run, name=f"vboxlab-job-{job.id}", daemon=True).start()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)
