"""Intrusion detection over the lab's own traffic: Suricata on each link's captures.

Offline, after (or during) a test: for every captured link both directions
(and a capture ring's older half) are merged in time order with ``mergecap``
(with one direction only, Suricata misses rules on TCP streams), then Suricata
reads the merged file (``-r FILE -k none``) with a configuration written here
(``$HOME_NET`` = the topology's subnets; only the alert records of eve.json)
and the rule files: the shipped ``fixtures/rules/*.rules`` plus the user's.
Alerts come back as :class:`Alert` with the link, the packet time and the flow.
Links are inspected in parallel, one Suricata per link.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vboxlab.errors import ConfigError, HostError, ScanFailed
from vboxlab.hosttools import require
from vboxlab.security.malware import rule_files
from vboxlab.security.results import Case, text_table

if TYPE_CHECKING:
    from vboxlab.net.network import Network

DEFAULT_HOME_NET = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
CONFIG = """%YAML 1.1
---
vars:
  address-groups:
    HOME_NET: "[{home}]"
    EXTERNAL_NET: "!$HOME_NET"
    HTTP_SERVERS: "$HOME_NET"
    SMTP_SERVERS: "$HOME_NET"
    SQL_SERVERS: "$HOME_NET"
    DNS_SERVERS: "$HOME_NET"
  port-groups:
    HTTP_PORTS: "[80,8000,8080]"
    SHELLCODE_PORTS: "!80"
    ORACLE_PORTS: "1521"
    SSH_PORTS: "22"
    FTP_PORTS: "21"
    FILE_DATA_PORTS: "[$HTTP_PORTS,110,143]"
default-log-dir: .
stats:
  enabled: no
outputs:
  - eve-log:
      enabled: yes
      filetype: regular
      filename: eve.json
      types:
        - alert:
            metadata: yes
{classification}
pcap-file:
  checksum-checks: auto
logging:
  default-log-level: warning
  outputs:
    - console:
        enabled: yes
"""


@dataclass(frozen=True)
class Alert:
    """One Suricata alert: the rule, where and when it fired, and the flow."""

    sid: int
    rev: int
    signature: str
    category: str
    severity: int  # Suricata's priority: 1 is the most severe
    time: float
    #: the links that saw it (one alert per event, however many links it crossed)
    links: tuple[str, ...]
    protocol: str
    source: str
    source_port: int
    target: str
    target_port: int
    app: str | None = None

    @property
    def rule(self) -> str:
        return f"sid:{self.sid}"

    @property
    def link(self) -> str:
        return self.links[0]

    def event(self) -> tuple[object, ...]:
        """What makes two links' alerts one event: the rule and the flow."""
        return (self.sid, self.protocol, self.source, self.source_port, self.target,
                self.target_port)

    def __str__(self) -> str:
        ends = (f"{self.source}:{self.source_port} -> {self.target}:{self.target_port}"
                if self.protocol in ("TCP", "UDP") else f"{self.source} -> {self.target}")
        stamp = datetime.fromtimestamp(self.time).strftime("%H:%M:%S.%f")[:-3]
        return (f"sid:{self.sid} {self.signature} ({self.protocol} {ends} on "
                f"{', '.join(self.links)} at {stamp})")

    def to_dict(self) -> dict[str, Any]:
        return {"sid": self.sid, "rev": self.rev, "signature": self.signature,
                "category": self.category, "severity": self.severity, "time": self.time,
                "links": list(self.links), "protocol": self.protocol, "source": self.source,
                "source_port": self.source_port, "target": self.target,
                "target_port": self.target_port, "app": self.app}


def parse_sid(value: object) -> int:
    """``"sid:1000001"``, ``"1000001"`` or ``1000001`` -> 1000001, else a clear error."""
    text = str(value).strip()
    number = text[4:] if text.lower().startswith("sid:") else text
    if not number.isdigit():
        raise ConfigError(f"{value!r} is not a rule id: write it as 'sid:1000001' or 1000001")
    return int(number)


def read_eve(path: Path, link: str, *, growing: bool = False) -> list[Alert]:
    """The alert records of a Suricata eve.json (one JSON object per line).

    ``growing``: Suricata is still writing it; a last line without its newline waits.
    """
    alerts: list[Alert] = []
    if not path.is_file():
        return alerts
    text = path.read_text(errors="replace")
    if growing and not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HostError(f"{path} line {number}: Suricata wrote something that is not "
                            f"JSON ({exc})") from None
        if record.get("event_type") != "alert":
            continue
        rule = record["alert"]
        alerts.append(Alert(
            int(rule["signature_id"]), int(rule.get("rev", 0)), str(rule.get("signature", "")),
            str(rule.get("category", "")), int(rule.get("severity", 3)),
            datetime.strptime(record["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp(),
            (link,), str(record.get("proto", "")), str(record.get("src_ip", "")),
            int(record.get("src_port", 0)), str(record.get("dest_ip", "")),
            int(record.get("dest_port", 0)), record.get("app_proto")))
    return alerts


class Suricata:
    """Suricata with a set of rule files, run offline on capture files."""

    def __init__(self, rules: Sequence[Path] = (), *, extra: Sequence[Path] = (),
                 home_net: Iterable[str] = DEFAULT_HOME_NET) -> None:
        #: the shipped rule files plus ``extra`` (files or folders of .rules files)
        self.rules = list(rules) or rule_files(list(extra), (".rules",), builtin="rules")
        if not self.rules:
            raise ConfigError("no Suricata rule files given (want .rules files)")
        self.home_net = sorted(set(home_net)) or list(DEFAULT_HOME_NET)
        self.binary = require("suricata", "to inspect the lab's traffic (IDS)")

    def __repr__(self) -> str:
        return f"<Suricata {len(self.rules)} rule files, HOME_NET {','.join(self.home_net)}>"

    def config_text(self, home_net: Sequence[str] | None = None) -> str:
        classification = Path("/etc/suricata/classification.config")
        return CONFIG.format(
            home=",".join(home_net or self.home_net),
            classification=f"classification-file: {classification}"
            if classification.is_file() else "")

    def argv(self, workdir: Path, home_net: Sequence[str] | None = None) -> list[str]:
        """Suricata's command line over ``workdir`` (its config, rules and logs go there)."""
        return self._argv(workdir, home_net)

    def _argv(self, workdir: Path, home_net: Sequence[str] | None = None) -> list[str]:
        config = workdir / "suricata.yaml"
        config.write_text(self.config_text(home_net))
        rules = workdir / "all.rules"
        with rules.open("w") as out:  # one file: -S takes one; line numbers name the source
            for source in self.rules:
                out.write(f"# from {source}\n")
                try:
                    out.write(source.read_text())
                except (OSError, UnicodeDecodeError) as exc:
                    raise ConfigError(f"Suricata rules {source}: cannot read it: {exc}") from None
                out.write("\n")
        return [self.binary, "-c", str(config), "-S", str(rules), "-l", str(workdir), "-k", "none"]

    def check_rules(self, workdir: Path) -> None:
        """Load the rules (``suricata -T``); a bad rule is a ConfigError quoting Suricata."""
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [*self._argv(workdir), "-T"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            said = "\n".join(line for line in (done.stdout + done.stderr).splitlines()
                             if "rror" in line)[-2000:]
            raise ConfigError(f"Suricata refused the rules ({', '.join(map(str, self.rules))})"
                              f":\n{said or done.stderr[-2000:]}")

    def run(self, pcap: Path, workdir: Path, *, link: str,
            home_net: Sequence[str] | None = None) -> list[Alert]:
        """Suricata over one capture file; its alerts. ``home_net``: the lab's subnets."""
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "eve.json").unlink(missing_ok=True)
        argv = [*self._argv(workdir, home_net), "-r", str(pcap)]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise HostError(f"Suricata took over 600 s on {pcap}") from None
        if done.returncode != 0:
            said = (done.stderr or done.stdout)[-2000:]
            if "rror" in said and ("rule" in said or "signature" in said):
                raise ConfigError(f"Suricata refused the rules "
                                  f"({', '.join(map(str, self.rules))}):\n{said}")
            raise HostError(f"Suricata failed on {pcap} (exit status {done.returncode}):\n{said}")
        return read_eve(workdir / "eve.json", link)


def merge_directions(files: Sequence[Path], target: Path) -> Path:
    """Both directions of a link (and ring halves) as one capture in time order."""
    mergecap = require("mergecap", "to merge both directions of a link for the IDS")
    done = subprocess.run([mergecap, "-F", "pcap", "-w", str(target), *map(str, files)],
                          capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise HostError(f"mergecap could not merge {', '.join(map(str, files))}: "
                        f"{done.stderr.strip()}")
    return target


@dataclass
class IdsReport:
    """The alerts of one IDS run over a lab's links."""

    target: str
    alerts: list[Alert] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)
    seconds: float = 0.0
    kind: str = "ids"
    #: frames a live IDS was too slow for (dropped by the fabric, never seen by Suricata)
    dropped: int = 0
    #: why the links could not be inspected (the report is then empty for that reason)
    error: str | None = None

    def __bool__(self) -> bool:
        return bool(self.alerts)

    def __len__(self) -> int:
        return len(self.alerts)

    @property
    def sids(self) -> set[int]:
        return {a.sid for a in self.alerts}

    def by_sid(self, sid: int | str) -> list[Alert]:
        number = parse_sid(sid)
        return [a for a in self.alerts if a.sid == number]

    def unexpected(self, expect: Iterable[int | str] = (),
                   forbid: str | Iterable[int | str] = "any") -> list[Alert]:
        """Alerts that break ``forbid``: ``"any"`` (all but the expected), ``"none"``, or sids."""
        expected = {parse_sid(s) for s in expect}
        if forbid == "none":
            return []
        if forbid == "any":
            return [a for a in self.alerts if a.sid not in expected]
        if isinstance(forbid, str):
            raise ConfigError(f"forbid={forbid!r}: use 'any', 'none' or a list of rule ids")
        forbidden = {parse_sid(s) for s in forbid}
        return [a for a in self.alerts if a.sid in forbidden]

    def missing(self, expect: Iterable[int | str]) -> list[int]:
        return sorted({parse_sid(s) for s in expect} - self.sids)

    def check(self, expect: Iterable[int | str] = (),
              forbid: str | Iterable[int | str] = "any") -> None:
        """Raise :class:`ScanFailed` naming unexpected alerts and expected ones that never came."""
        expected = list(expect)
        wrong, missing = self.unexpected(expected, forbid), self.missing(expected)
        if not wrong and not missing:
            return
        parts = []
        if wrong:
            shown = "\n  ".join(str(a) for a in wrong[:20])
            more = f"\n  ... and {len(wrong) - 20} more" if len(wrong) > 20 else ""
            parts.append(f"{len(wrong)} unexpected IDS alert(s):\n  {shown}{more}")
        if missing:
            parts.append("expected IDS alert(s) never raised: "
                         + ", ".join(f"sid:{s}" for s in missing))
        raise ScanFailed(f"{self.target}: " + "\n".join(parts) + f"\n(links inspected: "
                         f"{', '.join(self.links) or 'none'})")

    def assert_clean(self) -> None:
        self.check()

    def summary(self) -> str:
        if self.error is not None:
            return f"IDS could not inspect the links: {self.error}"
        missed = (f"; {self.dropped} frames went past the IDS unseen (it was too slow)"
                  if self.dropped else "")
        if not self.alerts:
            return f"no IDS alerts on {len(self.links)} link(s) ({self.seconds:.2f} s){missed}"
        counts: dict[int, int] = {}
        for alert in self.alerts:
            counts[alert.sid] = counts.get(alert.sid, 0) + 1
        listed = ", ".join(f"sid:{sid} x{n}" for sid, n in sorted(counts.items()))
        return f"{len(self.alerts)} IDS alert(s) on {len(self.links)} link(s): {listed}{missed}"

    def table(self) -> str:
        rows = [[a.rule, a.signature, ", ".join(a.links), a.protocol,
                 f"{a.source}:{a.source_port}", f"{a.target}:{a.target_port}"]
                for a in self.alerts]
        return text_table(["rule", "signature", "link", "proto", "from", "to"], rows)

    def cases(self) -> list[Case]:
        return [Case(f"{a.rule} {a.signature}", f"vboxlab.ids.{a.link.replace('<->', '--')}",
                     failure=str(a)) for a in self.alerts] or [
            Case("no alerts", "vboxlab.ids", output=", ".join(self.links))]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "links": self.links,
                "rules": self.rules, "seconds": self.seconds, "dropped": self.dropped,
                "error": self.error,
                "alerts": [a.to_dict() for a in self.alerts]}


def merge_links(alerts: Iterable[Alert], within: float = 1.0) -> list[Alert]:
    """One alert per event: the same rule on the same flow within ``within`` seconds on
    several links (a packet crossing a switch is captured on each link) becomes one."""
    merged: list[Alert] = []
    latest: dict[tuple[object, ...], int] = {}
    for alert in sorted(alerts, key=lambda a: (a.time, a.sid, a.links)):
        index = latest.get(alert.event())
        if index is not None and alert.time - merged[index].time <= within \
                and not set(alert.links) & set(merged[index].links):
            seen = merged[index]
            merged[index] = replace(seen, links=seen.links + alert.links)
            continue
        latest[alert.event()] = len(merged)
        merged.append(alert)
    return merged


def inspect_links(links: Mapping[str, Sequence[Path]], engine: Suricata, workdir: Path, *,
                  target: str, home_net: Sequence[str] | None = None) -> IdsReport:
    """Suricata over each link's capture files (link name -> files), links in parallel.

    A link's files (both directions, a ring's halves) are merged in time order
    first; alerts of one event seen on several links become one.
    """
    from vboxlab.net.pcaps import check_capture

    started = time.monotonic()
    jobs = [(name, list(files)) for name, files in links.items() if files]
    for _, files in jobs:
        for path in files:
            check_capture(path)
    report = IdsReport(target, links=[name for name, _ in jobs],
                       rules=[str(p) for p in engine.rules])
    workdir.mkdir(parents=True, exist_ok=True)

    def one(index: int, name: str, files: list[Path]) -> list[Alert]:
        folder = workdir / f"link{index}"  # not the name: it may come from a file's name
        folder.mkdir(parents=True, exist_ok=True)
        merged = files[0] if len(files) == 1 else merge_directions(files,
                                                                   folder / "merged.pcap")
        return engine.run(merged, folder, link=name, home_net=home_net)

    with ThreadPoolExecutor(max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        runs = [pool.submit(one, i, name, files) for i, (name, files) in enumerate(jobs)]
        found = [alert for run in runs for alert in run.result()]
    report.alerts = merge_links(found)
    report.seconds = time.monotonic() - started
    return report


def inspect_network(network: Network, engine: Suricata, workdir: Path,
                    links: Sequence[tuple[str, str]] | None = None) -> IdsReport:
    """Suricata over each captured link of ``network`` (flushed first)."""
    chosen = links if links is not None else [
        (h.a, h.b) for h in network.links if network.is_captured(h.a, h.b)]
    files = {}
    for a, b in chosen:
        both = network.capture_files(a, b)
        files[f"{a}<->{b}"] = both["a_to_b"] + both["b_to_a"]
    return inspect_links(files, engine, workdir, target=f"network {network.topology.name}",
                         home_net=sorted({str(i.network) for i in network.topology.interfaces}))


def inspect_files(files: Sequence[Path], engine: Suricata, workdir: Path, *,
                  link: str = "capture") -> IdsReport:
    """Suricata over capture files taken as one link."""
    return inspect_links({link: files}, engine, workdir, target=link)
