"""``vboxlab cost``: what a lab or topology would cost as cloud instances, and what to shrink.

Each machine maps to the cheapest instance of the shipped price table
(``fixtures/prices/instances.yaml``: list prices with their source and date,
never fetched at run time) that has at least its CPUs and memory. For a lab
that ran, its ``usage.json`` (see :mod:`vboxlab.usage`) gives the run's
duration (so the cost of the run) and each machine's peak resident memory and
CPU: a machine whose peak, with 25 % headroom, fits a smaller size gets a
recommendation with what it saves per month.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vboxlab.errors import ConfigError
from vboxlab.security.datafiles import load_yaml, shipped

HEADROOM = 1.25
MIN_MEMORY_MIB = 128


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Instance(_Strict):
    cpus: int = Field(ge=1, le=1024)
    memory_mib: int = Field(ge=64)
    hourly: float = Field(gt=0)


class PriceTable(_Strict):
    as_of: str
    currency: str
    hours_per_month: int = Field(730, ge=1)
    providers: dict[str, dict[str, dict[str, Instance]]]

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        path = path or shipped("prices") / "instances.yaml"
        raw = load_yaml(path, "price table")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"price table {path}: {where}: {err['msg']}") from None

    def region(self, provider: str, region: str | None) -> tuple[str, dict[str, Instance]]:
        regions = self.providers.get(provider)
        if regions is None:
            raise ConfigError(f"no prices for provider {provider!r}; the table has "
                              f"{', '.join(sorted(self.providers))}")
        if region is None:
            region = next(iter(regions))
        if region not in regions:
            raise ConfigError(f"no {provider} prices for region {region!r}; the table has "
                              f"{', '.join(regions)} (add a region to the table, or give "
                              "--prices FILE)")
        return region, regions[region]


@dataclass(frozen=True)
class Need:
    """A machine's size, and what it used when it ran (None: not measured)."""

    name: str
    cpus: int
    memory_mib: int
    peak_rss_mib: float | None = None
    peak_cpu_percent: float | None = None


@dataclass(frozen=True)
class MachineCost:
    need: Need
    instance: str
    hourly: float
    per_run: float | None
    #: (memory MiB, cpus, instance, saving per month) when a smaller size fits the peak
    smaller: tuple[int, int, str, float] | None


@dataclass(frozen=True)
class CostReport:
    provider: str
    region: str
    currency: str
    as_of: str
    hours_per_month: int
    duration_s: float | None
    machines: list[MachineCost]

    @property
    def hourly(self) -> float:
        return sum(m.hourly for m in self.machines)

    @property
    def per_run(self) -> float | None:
        if self.duration_s is None:
            return None
        return sum(m.per_run or 0.0 for m in self.machines)

    def recommendations(self) -> list[str]:
        lines = []
        for m in self.machines:
            if m.smaller is None or m.need.peak_rss_mib is None:
                continue
            memory, cpus, instance, saving = m.smaller
            cpu_part = f", {m.need.cpus} -> {cpus} CPUs" if cpus != m.need.cpus else ""
            lines.append(f"{m.need.name}: {m.need.memory_mib} MiB asked, "
                         f"{m.need.peak_rss_mib:.0f} MiB peak -> {memory} MiB{cpu_part} "
                         f"({instance}) saves {saving:.2f} {self.currency}/month")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "region": self.region, "currency": self.currency,
                "prices_as_of": self.as_of, "duration_s": self.duration_s,
                "hourly": round(self.hourly, 6), "per_run": self.per_run,
                "monthly": round(self.hourly * self.hours_per_month, 2),
                "machines": [{"name": m.need.name, "cpus": m.need.cpus,
                              "memory_mib": m.need.memory_mib, "instance": m.instance,
                              "hourly": m.hourly, "per_run": m.per_run,
                              "peak_rss_mib": m.need.peak_rss_mib,
                              "peak_cpu_percent": m.need.peak_cpu_percent,
                              "smaller": None if m.smaller is None else {
                                  "memory_mib": m.smaller[0], "cpus": m.smaller[1],
                                  "instance": m.smaller[2], "saves_monthly": m.smaller[3]}}
                             for m in self.machines],
                "recommendations": self.recommendations()}


def cheapest_fit(instances: dict[str, Instance], cpus: int, memory_mib: int) -> tuple[str,
                                                                                      Instance]:
    """The cheapest instance with at least ``cpus`` and ``memory_mib``."""
    fits = [(i.hourly, i.cpus, i.memory_mib, name, i) for name, i in instances.items()
            if i.cpus >= cpus and i.memory_mib >= memory_mib]
    if not fits:
        raise ConfigError(f"no instance in the table has {cpus} CPUs and {memory_mib} MiB")
    *_, name, instance = min(fits)
    return name, instance


def right_size(need: Need) -> tuple[int, int] | None:
    """(memory MiB, cpus) that fit the measured peaks with headroom, or None if unmeasured."""
    if need.peak_rss_mib is None:
        return None
    memory = max(MIN_MEMORY_MIB, 1 << math.ceil(math.log2(need.peak_rss_mib * HEADROOM)))
    cpus = need.cpus
    if need.peak_cpu_percent is not None:
        cpus = max(1, min(need.cpus, math.ceil(need.peak_cpu_percent / 100 * HEADROOM)))
    return min(memory, need.memory_mib), cpus


def estimate(needs: list[Need], table: PriceTable, provider: str, region: str | None,
             duration_s: float | None) -> CostReport:
    """The cost of ``needs`` on ``provider`` (and right-sizing where peaks were measured)."""
    region, instances = table.region(provider, region)
    costs = []
    for need in needs:
        name, instance = cheapest_fit(instances, need.cpus, need.memory_mib)
        smaller = None
        sized = right_size(need)
        if sized is not None and sized != (need.memory_mib, need.cpus):
            small_name, small = cheapest_fit(instances, sized[1], sized[0])
            if small.hourly < instance.hourly:
                smaller = (sized[0], sized[1], small_name,
                           round((instance.hourly - small.hourly) * table.hours_per_month, 2))
        per_run = None if duration_s is None else round(instance.hourly * duration_s / 3600, 6)
        costs.append(MachineCost(need, name, instance.hourly, per_run, smaller))
    return CostReport(provider, region, table.currency, table.as_of, table.hours_per_month,
                      duration_s, costs)


def needs_of_lab(machines: dict[str, dict[str, Any]],
                 usage: dict[str, Any] | None) -> tuple[list[Need], float | None]:
    """Each machine of a lab folder (its launch) with its measured peaks; the run's length."""
    measured = (usage or {}).get("machines", {})
    needs = []
    for name, info in sorted(machines.items()):
        launch = info.get("launch") or {}
        seen = measured.get(name) or {}
        rss = seen.get("peak_rss")
        needs.append(Need(name, int(launch.get("cpus") or seen.get("cpus") or 1),
                          int(launch.get("memory") or seen.get("memory_mib") or 256),
                          rss / 1048576 if isinstance(rss, int) and rss > 0 else None,
                          seen.get("peak_cpu_percent") if seen.get("samples", 0) > 1 else None))
    duration = usage.get("duration_s") if usage else None
    return needs, float(duration) if isinstance(duration, int | float) else None
