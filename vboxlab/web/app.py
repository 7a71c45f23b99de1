"""The dashboard's routes: pages, the labs as JSON, a live event stream, pictures and actions.

Everything here is a thin layer over the library: labs are described by
:func:`vboxlab.control.launcher.status`, actions on an up lab go through its
control socket (:func:`vboxlab.control.launcher.client`), ``down`` and
``clean`` are :func:`vboxlab.control.launcher.down` and
:func:`vboxlab.labdirs.clean`, and the pictures are the lab report's own SVGs.
The :class:`~vboxlab.web.guard.Guard` in front checks every request.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from vboxlab.control.actions import ACTIONS
from vboxlab.control.launcher import client, down, up
from vboxlab.errors import ConfigError, LabNotFound, VboxlabError
from vboxlab.labdirs import clean, find_lab, kept_machine
from vboxlab.labstatus import TOPOLOGY_COPY
from vboxlab.names import check_name
from vboxlab.net.topology import GilbertElliott, Impairment, load_topology
from vboxlab.report.timeline import render_svg
from vboxlab.report.topology_svg import LiveLinks, render_topology_svg
from vboxlab.snapshots import TREE_FILE, SnapshotTree
from vboxlab.templates import TemplateRepository
from vboxlab.web import builder
from vboxlab.web.guard import Guard, csrf_token
from vboxlab.web.jobs import Jobs
from vboxlab.web.metrics import Sampler
from vboxlab.web.vendor import injected_style_hashes

STATIC = Path(str(resources.files("vboxlab.web") / "static"))
_LAB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,80}")
_MACHINE = re.compile(r"[a-z][a-z0-9-]{0,19}")
_CAPTURE = re.compile(r"[a-z][a-z0-9-]{0,19}-to-[a-z][a-z0-9-]{0,19}\.pcap(\.[0-9]{1,6})?")
MAX_BODY = 256 << 10
#: what the dashboard does to a kept lab (no supervisor): its snapshots, through the provider
KEPT_ACTIONS = {"snapshot.restore", "snapshot.delete"}


class BodyTooLarge(ConfigError):
    """A request body over :data:`MAX_BODY`."""


def _impairment(settings: dict[str, Any]) -> Impairment:
    """An Impairment from its dumped values (already in seconds and fractions: no parsing)."""
    model = settings.get("loss_model")
    return Impairment.model_construct(**{**settings, "loss_model": GilbertElliott(**model)
                                         if isinstance(model, dict) else None})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Dashboard:
    """The state behind the routes: the lab folder, the sampler and the secret."""

    def __init__(self, base: Path, token: str, *, interval: float = 1.0,
                 topologies: Path | None = None) -> None:
        self.base = base
        self.csrf = csrf_token(token)
        self.sampler = Sampler(base, interval)
        self.topologies = topologies
        self.repository = TemplateRepository()
        self.jobs = Jobs()

    def __repr__(self) -> str:
        return f"<Dashboard {self.base}>"

    # -- helpers --------------------------------------------------------
    def lab_folder(self, lab: str) -> Path:
        if not _LAB_ID.fullmatch(lab):
            raise ConfigError(f"lab {lab!r}: not a lab name")
        return find_lab(self.base, lab).dir

    # -- pages ----------------------------------------------------------
    async def page(self, request: Request) -> Response:
        name = "builder.html" if request.url.path == "/builder" else "index.html"
        text = (STATIC / name).read_text().replace("{{csrf}}", escape(self.csrf))
        return HTMLResponse(text)

    # -- the builder ----------------------------------------------------
    async def palette(self, request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(builder.palette, self.repository))

    async def examples(self, request: Request) -> Response:
        return JSONResponse(builder.examples(self.topologies))

    async def _json_body(self, request: Request) -> dict[str, Any]:
        body = await request.body()
        if len(body) > MAX_BODY:
            raise BodyTooLarge(f"request over {MAX_BODY} bytes")
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            raise ConfigError("the request body is not JSON") from None
        if not isinstance(payload, dict):
            raise ConfigError("the request body must be a JSON object")
        return payload

    async def check(self, request: Request) -> Response:
        """POST {"model": {...}} or {"yaml": TEXT}: the checks `vboxlab topology check` does."""
        payload = await self._json_body(request)
        text = payload.get("yaml")
        if text is not None and not isinstance(text, str):
            raise ConfigError("yaml must be a string")
        result = await run_in_threadpool(lambda: builder.check(
            model=payload.get("model"), text=text, repository=self.repository))
        return JSONResponse(result)

    async def deploy(self, request: Request) -> Response:
        """POST {"yaml": TEXT, "name": LAB?}: `vboxlab up` of that text; returns once it is up."""
        payload = await self._json_body(request)
        text, name = payload.get("yaml"), payload.get("name") or None
        if not isinstance(text, str) or (name is not None and not isinstance(name, str)):
            raise ConfigError("send {\"yaml\": TEXT, \"name\": LAB (optional)}")
        checked = await run_in_threadpool(lambda: builder.check(text=text,
                                                                repository=self.repository))
        if not checked["ok"]:
            raise ConfigError(checked["errors"][0]["message"])
        ready = await run_in_threadpool(self._deploy, text, name)
        return JSONResponse({"result": ready})

    async def build(self, request: Request) -> Response:
        """POST {"template": NAME}: build it in the background; poll /api/jobs/ID."""
        payload = await self._json_body(request)
        name = check_name(payload.get("template"), "template")
        self.repository.definition(name)  # unknown: the error lists the known ones

        def work(progress: Callable[[str], None]) -> dict[str, Any]:
            built, ran = self.repository.build(name, progress=progress)
            return {"template": name, "version": built.template.version, "built": ran}

        job = self.jobs.start(f"build {name}", f"building template {name}", work)
        return JSONResponse({"result": job.as_dict()})

    async def job(self, request: Request) -> Response:
        job = self.jobs.get(request.path_params["job"])
        if job is None:
            return _error(404, f"no job {request.path_params['job']!r}")
        return JSONResponse(job.as_dict())

    def _deploy(self, text: str, name: str | None) -> dict[str, Any]:
        fd, path = tempfile.mkstemp(prefix="vboxlab-builder-", suffix=".yaml")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            return up(Path(path), self.base, name=name)
        finally:
            Path(path).unlink(missing_ok=True)

    # -- data -----------------------------------------------------------
    async def labs(self, request: Request) -> Response:
        latest = self.sampler.latest()
        if latest is None:
            latest = await run_in_threadpool(self.sampler.sample)
        return JSONResponse(latest)

    async def history(self, request: Request) -> Response:
        return JSONResponse({"samples": list(self.sampler.history),
                             "actions": {name: {"mutates": a.mutates, "help": a.help}
                                         for name, a in ACTIONS.items()}})

    async def events(self, request: Request) -> Response:
        """Each new sample as a server-sent event (``data: JSON``), about once a second."""

        async def stream() -> AsyncIterator[bytes]:
            count = 0
            yield b"retry: 2000\n\n"
            while True:
                count, sample = await anyio.to_thread.run_sync(
                    self.sampler.wait_newer, count, 2.0)
                if sample is not None:
                    yield b"data: " + json.dumps(sample).encode() + b"\n\n"
                else:
                    yield b": waiting\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"x-accel-buffering": "no"})

    async def topology_svg(self, request: Request) -> Response:
        folder = self.lab_folder(request.path_params["lab"])
        path = folder / TOPOLOGY_COPY
        if not path.is_file():
            return _error(404, f"lab {folder.name} has no topology (only `vboxlab up` labs do)")
        live = self._live_links(folder.name)
        svg = await run_in_threadpool(lambda: render_topology_svg(load_topology(path), live))
        return Response(svg, media_type="image/svg+xml")

    def _live_links(self, lab: str) -> LiveLinks:
        """The links' current properties, from the latest sample of an up lab."""
        latest = self.sampler.latest() or {}
        for item in latest.get("labs", []):
            if item.get("id") == lab:
                return {(link["a"], link["b"]): (_impairment(link["a_to_b"]["settings"]),
                                                 _impairment(link["b_to_a"]["settings"]))
                        for link in item.get("links", [])}
        return {}

    async def timeline_svg(self, request: Request) -> Response:
        folder = self.lab_folder(request.path_params["lab"])
        machine = request.path_params["machine"]
        if not _MACHINE.fullmatch(machine) or not (folder / machine).is_dir():
            return _error(404, f"lab {folder.name} has no machine {machine!r}")
        tree = SnapshotTree(folder / machine / TREE_FILE)
        return Response(render_svg(tree, machine, folder.name), media_type="image/svg+xml")

    async def capture(self, request: Request) -> Response:
        folder = self.lab_folder(request.path_params["lab"])
        name = request.path_params["name"]
        path = folder / "captures" / name
        if not _CAPTURE.fullmatch(name) or not path.is_file() or path.is_symlink():
            return _error(404, f"lab {folder.name} has no capture {name!r}")
        return FileResponse(path, media_type="application/vnd.tcpdump.pcap", filename=name)

    # -- actions --------------------------------------------------------
    async def action(self, request: Request) -> Response:
        """POST {"action": NAME, "args": {...}}: run it on the lab (its supervisor, or down)."""
        lab = request.path_params["lab"]
        try:
            payload = await self._json_body(request)
        except BodyTooLarge as exc:
            return _error(413, str(exc))
        except ConfigError as exc:
            return _error(400, str(exc))
        if not isinstance(payload.get("action"), str):
            return _error(400, "send {\"action\": NAME, \"args\": {...}}")
        name, args = payload["action"], payload.get("args") or {}
        if not isinstance(args, dict):
            return _error(400, "args must be an object")
        try:
            result = await run_in_threadpool(self._act, lab, name, args)
        except VboxlabError as exc:
            return _error(400, str(exc))
        return JSONResponse({"result": result})

    def _act(self, lab: str, name: str, args: dict[str, Any]) -> Any:
        if not _LAB_ID.fullmatch(lab):
            raise ConfigError(f"lab {lab!r}: not a lab name")
        record = find_lab(self.base, lab)
        if name == "down":
            return {"lab": lab, "was": down(self.base, lab)}
        if record.status == "kept" and name in KEPT_ACTIONS:
            return self._kept_action(lab, name, args)
        return client(record).call(name, **args)

    def _kept_action(self, lab: str, name: str, raw: dict[str, Any]) -> dict[str, Any]:
        """A snapshot action on a kept lab's machine, through its provider (as the CLI does)."""
        try:
            args = ACTIONS[name].args.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(f"{name}: {exc.errors()[0]['msg']}") from None
        machine = kept_machine(self.base, lab, str(getattr(args, "machine", "")))
        try:
            if name == "snapshot.restore":
                machine.restore(str(getattr(args, "name", "")))
                return {"machine": machine.name, "snapshot": getattr(args, "name", None),
                        "state": machine.state.value}
            gone = machine.delete_snapshot(str(getattr(args, "name", "")),
                                           subtree=bool(getattr(args, "subtree", False)))
            return {"machine": machine.name, "deleted": gone}
        finally:
            machine.channel.close()

    async def clean(self, request: Request) -> Response:
        removed = await run_in_threadpool(clean, self.base)
        return JSONResponse({"result": {"removed": removed}})


def create_app(base: Path, token: str, hosts: set[str], *, interval: float = 1.0,
               topologies: Path | None = None) -> Guard:
    """The dashboard for the labs in ``base``, answering to ``hosts`` with ``token``.

    ``topologies``: a folder of topology files the builder offers as examples.
    """
    dashboard = Dashboard(base, token, interval=interval, topologies=topologies)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        dashboard.sampler.start()
        try:
            yield
        finally:
            dashboard.sampler.stop()

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, f"no such page: {request.url.path}")

    async def bad_input(request: Request, exc: Exception) -> Response:
        if isinstance(exc, BodyTooLarge):
            return _error(413, str(exc))
        return _error(404 if isinstance(exc, LabNotFound) else 400, str(exc))

    app = Starlette(
        routes=[
            Route("/", dashboard.page),
            Route("/builder", dashboard.page),
            Route("/api/builder/palette", dashboard.palette),
            Route("/api/builder/examples", dashboard.examples),
            Route("/api/builder/check", dashboard.check, methods=["POST"]),
            Route("/api/builder/deploy", dashboard.deploy, methods=["POST"]),
            Route("/api/builder/build", dashboard.build, methods=["POST"]),
            Route("/api/jobs/{job}", dashboard.job),
            Route("/api/labs", dashboard.labs),
            Route("/api/history", dashboard.history),
            Route("/api/events", dashboard.events),
            Route("/api/clean", dashboard.clean, methods=["POST"]),
            Route("/api/labs/{lab}/action", dashboard.action, methods=["POST"]),
            Route("/api/labs/{lab}/topology.svg", dashboard.topology_svg),
            Route("/api/labs/{lab}/machines/{machine}/timeline.svg", dashboard.timeline_svg),
            Route("/api/labs/{lab}/captures/{name}", dashboard.capture),
            Mount("/static", app=StaticFiles(directory=STATIC)),
        ],
        exception_handlers={404: not_found, ConfigError: bad_input},
        lifespan=lifespan,
    )
    app.state.dashboard = dashboard
    return Guard(app, token=token, hosts=hosts,
                 style_hashes=injected_style_hashes(STATIC / "vendor" / "vis-network.min.js"))
