"""The dashboard under load: first paint, idle cost, update latency; JSON.

    python benchmarks/dashboard.py --runs 5 --output benchmarks/results/dashboard.json

Three labs are brought ``up`` (20 machines: 4 tiny VMs on a line, and two star
labs of 8 namespace hosts each), then ``vboxlab dashboard`` is started and
opened in Debian's Chromium (Playwright):

- first paint: from ``page.goto`` to all 20 machine rows drawn, a fresh browser
  page each run (and Chromium's own first-contentful-paint beside it);
- idle cost: the dashboard server's CPU time over 30 s with the page open and
  nothing happening, as % of one core (the sampler's 1 Hz reads included);
- update latency: from a link change made through the control socket (the CLI's
  path) until the page shows it, ``--runs`` times, alternating two delays; and
  from a ping's end until the page's packet counter moves.

Targets (issue 14): first paint <= 1 s, idle <= 2 % of one core, update <= 1.5 s.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from boot import emit, summary
from playwright.sync_api import expect, sync_playwright

from vboxlab.control.launcher import client, down, up
from vboxlab.labdirs import find_lab

TARGETS = {"first_paint_s": 1.0, "idle_cpu_percent": 2.0, "update_latency_s": 1.5}
LINE4 = """name: vms
nodes: {a: {}, b: {}, c: {}, d: {}}
links:
  - {between: [a, b]}
  - {between: [b, c]}
  - {between: [c, d]}
"""


def star(name: str, count: int) -> str:
    nodes = ", ".join(f"n{i}: {{provider: netns}}" for i in range(count))
    return f"name: {name}\nnodes: {{{nodes}}}\nsegments: {{lan: {{subnet: 10.77.0.0/24}}}}\n" \
           "links:\n" + "".join(f"  - {{between: [n{i}, lan]}}\n" for i in range(count))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=float, default=30.0, help="Seconds of idle measurement")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="vbl-dash-"))
    base = folder / "labs"
    base.mkdir(mode=0o700)
    (folder / "vms.yaml").write_text(LINE4)
    (folder / "s1.yaml").write_text(star("ns-one", 8))
    (folder / "s2.yaml").write_text(star("ns-two", 8))
    server = None
    try:
        started = time.monotonic()
        for topology in ("vms", "s1", "s2"):
            up(folder / f"{topology}.yaml", base, accel="tcg", progress=print)
        bring_up = time.monotonic() - started
        server = subprocess.Popen([sys.executable, "-m", "vboxlab.cli", "dashboard", "--port",
                                   "0", "--lab-dir", str(base)], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        url = re.search(r"http://\S+", server.stdout.readline())
        assert url, "the dashboard printed no URL"
        result = measure(url.group(0), base, server.pid, args.runs, args.idle)
        result["bring_up_s"] = round(bring_up, 1)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        for name in ("vms", "ns-one", "ns-two"):
            if (base / name).exists():
                down(base, name)
        shutil.rmtree(folder, ignore_errors=True)
    result["targets"] = TARGETS
    result["met"] = {
        "first_paint_s": result["first_paint_s"]["p50"] <= TARGETS["first_paint_s"],
        "idle_cpu_percent": result["idle_cpu_percent"] <= TARGETS["idle_cpu_percent"],
        "update_latency_s": result["update_latency_s"]["p50"] <= TARGETS["update_latency_s"],
    }
    result["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    emit(result, args.output)
    return 0


def measure(url: str, base: Path, server_pid: int, runs: int, idle: float) -> dict[str, object]:
    paints, fcp, latencies, counter_latencies = [], [], [], []
    control = client(find_lab(base, "vms"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                             args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(viewport={"width": 1400, "height": 1300},
                                      bypass_csp=True)  # only to read performance entries
        page = context.new_page()
        page.goto(url)  # sets the cookie
        for _ in range(runs):
            fresh = context.new_page()
            started = time.perf_counter()
            fresh.goto(url.split("?")[0])
            expect(fresh.locator("tr.machine")).to_have_count(20, timeout=30000)
            paints.append(time.perf_counter() - started)
            fcp.append(fresh.evaluate(
                "performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? 0")
                / 1000)
            fresh.close()
        page.goto(url.split("?")[0])
        expect(page.locator("tr.machine")).to_have_count(20, timeout=30000)
        time.sleep(3)  # let the page settle before the idle window
        before, wall = cpu_seconds(server_pid), time.monotonic()
        time.sleep(idle)
        idle_percent = 100 * (cpu_seconds(server_pid) - before) / (time.monotonic() - wall)
        properties = page.locator("section.lab[data-lab=vms] tr.link[data-direction=a_to_b] "
                                  "[data-field=properties]").first
        for run in range(runs):
            delay = f"{10 + run % 2}ms"
            started = time.perf_counter()
            control.call("link.set", a="a", b="b", properties={"delay": delay})
            expect(properties).to_have_text(f"delay {delay}", timeout=10000)
            latencies.append(time.perf_counter() - started)
        packets = page.locator("section.lab[data-lab=vms] tr.link[data-direction=a_to_b] "
                               "[data-field=packets]").first
        for _ in range(runs):
            seen = packets.inner_text()
            control.call("exec", machine="a", command="ping -c 1 -W 2 b")
            started = time.perf_counter()
            expect(packets).not_to_have_text(seen, timeout=10000)
            counter_latencies.append(time.perf_counter() - started)
        browser.close()
    return {"machines": 20, "labs": 3,
            "first_paint_s": summary(paints),
            "first_contentful_paint_s": summary(fcp),
            "idle_cpu_percent": round(idle_percent, 2), "idle_window_s": idle,
            "update_latency_s": summary(latencies),
            "counter_update_after_ping_s": summary(counter_latencies)}


if __name__ == "__main__":
    sys.exit(main())
