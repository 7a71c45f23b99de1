"""What the visual lab builder asks the server: the palette, checks, recommendations, examples.

A drawn lab is sent as the topology's own structure (what its YAML holds); it
is turned into YAML and validated by :func:`vboxlab.net.topology.parse_topology`,
the validator ``vboxlab topology check`` uses, so a lab the builder accepts is
a file the command line accepts, and the YAML it exports is that very text.
Errors carry the path of the field they concern (``nodes.h1.memory``);
recommendations come from what this host knows (memory, cores, the
accelerator, built templates, root). A loop of trunks is not a recommendation
but an error: the validator refuses it, naming the trunk that closes it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from vboxlab.accel import cached_verdict
from vboxlab.errors import ConfigError
from vboxlab.hosttools import QEMU_BINARY
from vboxlab.lab import host_memory_available_mb
from vboxlab.net.plan import describe
from vboxlab.net.topology import Topology, TopologyError, parse_topology
from vboxlab.templates import TemplateRepository

#: the largest drawn lab the builder checks (nodes, segments and links together)
MAX_ELEMENTS = 500


def palette(repository: TemplateRepository) -> dict[str, Any]:
    """Node kinds (each template, a namespace host, a segment) and the host's facts."""
    templates = []
    for name, template in sorted(repository.definitions().items()):
        resources = template.definition.resources
        templates.append({"name": name, "version": template.version,
                          "description": template.definition.description,
                          "memory": resources.memory, "cpus": resources.cpus,
                          "status": repository.status(name)})
    return {"templates": templates, "providers": ["qemu", "netns"], "host": host_facts()}


def host_facts() -> dict[str, Any]:
    """Cores, available memory, root, and whether KVM works (only a cached probe says so)."""
    qemu = shutil.which(QEMU_BINARY)
    verdict = cached_verdict(qemu) if qemu else None
    return {"cores": os.cpu_count() or 1, "memory_available_mb": host_memory_available_mb(),
            "root": os.geteuid() == 0, "kvm": verdict is not None and verdict.accel == "kvm"}


def to_yaml(model: dict[str, Any]) -> str:
    """The drawn lab as topology YAML (keys in the order a person writes them)."""
    order = ["name", "defaults", "segments", "nodes", "links", "routing"]
    ordered = {key: model[key] for key in order if key in model}
    ordered.update({k: v for k, v in model.items() if k not in ordered})
    return yaml.safe_dump(ordered, sort_keys=False, default_flow_style=False, width=100)


def _count(model: dict[str, Any]) -> int:
    return sum(len(model.get(key) or ()) for key in ("nodes", "segments", "links")
               if isinstance(model.get(key), dict | list))


def check(*, model: dict[str, Any] | None = None, text: str | None = None,
          repository: TemplateRepository | None = None) -> dict[str, Any]:
    """Validate a drawn lab (``model``) or a YAML text; errors, recommendations, the YAML."""
    if (model is None) == (text is None):
        raise ConfigError("send a drawn lab (model) or a topology's YAML text (yaml), not both")
    if model is not None:
        if not isinstance(model, dict):
            raise ConfigError("the drawn lab must be an object with nodes, segments and links")
        if _count(model) > MAX_ELEMENTS:
            raise ConfigError(f"the drawn lab has over {MAX_ELEMENTS} nodes, segments and "
                              "links; split it")
        text = to_yaml(model)
    assert text is not None
    answer: dict[str, Any] = {"ok": False, "errors": [], "yaml": text, "recommendations": []}
    try:
        topology = parse_topology(text, "the drawn lab" if model is not None else "the YAML")
    except TopologyError as exc:
        answer["errors"] = [{"path": [str(p) for p in exc.path], "message": str(exc)}]
        return answer
    except ConfigError as exc:
        answer["errors"] = [{"path": [], "message": str(exc)}]
        return answer
    answer["ok"] = True
    answer["describe"] = describe(topology)
    answer["model"] = yaml.safe_load(text)
    answer["recommendations"] = recommendations(topology, repository or TemplateRepository())
    return answer


def recommendations(topology: Topology, repository: TemplateRepository) -> list[dict[str, Any]]:
    """Advice from what this host knows; each names the field it concerns."""
    host = host_facts()
    found: list[dict[str, Any]] = []
    vms = [n for n in topology.nodes.values() if n.provider != "netns"]
    memory = sum(n.memory for n in vms)
    if memory > host["memory_available_mb"]:
        found.append({"path": ["nodes"], "kind": "memory",
                      "text": f"the VMs ask for {memory} MiB together; this host has "
                              f"{host['memory_available_mb']} MiB available: give them less "
                              "memory or fewer VMs"})
    for node in vms:
        if not host["kvm"] and node.cpus > host["cores"]:
            found.append({"path": ["nodes", node.name, "cpus"], "kind": "cpus",
                          "text": f"{node.name}: {node.cpus} vCPUs under TCG on a host with "
                                  f"{host['cores']} cores run slower, not faster; give it at "
                                  f"most {host['cores']}"})
    for name in sorted({n.template for n in vms}):
        state = repository.status(name) if name in repository.definitions() else "unknown"
        if state != "built":
            users = [n.name for n in vms if n.template == name]
            found.append({"path": ["nodes", users[0], "template"], "kind": "template",
                          "template": name,
                          "text": f"template {name} is {state}: build it first (vboxlab "
                                  f"templates build {name}); used by {', '.join(users)}"})
    for name in topology.spec.segments:
        spec = topology.spec.segments[name]
        if spec is None or spec.subnet is None:
            found.append({"path": ["segments", name, "subnet"], "kind": "subnet",
                          "text": f"segment {name} has no subnet: {topology.segments[name]} "
                                  "was chosen; write one to keep addresses stable"})
    netns = [n.name for n in topology.nodes.values() if n.provider == "netns"]
    if netns and not host["root"]:
        found.append({"path": ["nodes", netns[0], "provider"], "kind": "root",
                      "text": f"namespace hosts ({', '.join(netns)}) need root; run vboxlab "
                              "as root or make them qemu nodes"})
    return found


def examples(folder: Path | None) -> dict[str, str]:
    """The topology files in ``folder`` (the project's topologies/), by file name."""
    if folder is None or not folder.is_dir():
        return {}
    return {path.name: path.read_text() for path in sorted(folder.glob("*.yaml"))
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 1 << 20}
