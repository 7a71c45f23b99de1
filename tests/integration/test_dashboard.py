"""The dashboard served for real (``vboxlab dashboard``, uvicorn) and driven in Debian's Chromium.

The module starts the dashboard on an empty lab folder, opens it in a browser,
and then brings a two-node lab ``up``: the page shows it appear, counts a
ping on its link, stops, starts, snapshots and restores a machine by clicks,
runs a command, changes a link. Screenshots go to reports/ (CI artefacts; the
README's pictures are copies of them). The security rules are broken once
each against the real server too.
"""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from vboxlab.paths import cache_dir
from vboxlab.pytest.policy import require_tool

from .helpers import CLI, cli, qemu_pids, wait_for

KEEP_A_LAB = """
import sys
from pathlib import Path
from vboxlab.lab import Lab
with Lab(base=Path(sys.argv[1]), keep=True, accel="tcg") as lab:
    vm = lab.vm("k")
    vm.snapshot("clean")
    vm.succeed("touch /root/later")
print(lab.id)
"""
PAIR = """\
name: web
nodes:
  a: {}
  b: {}
links:
  - between: [a, b]
    delay: 1ms
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``vboxlab dashboard`` on an empty lab folder; yields (url with token, base, folder)."""
    folder = tmp_path_factory.mktemp("web")
    base = folder / "labs"
    base.mkdir(mode=0o700)
    templates = folder / "templates"  # a template of our own that is not built yet
    shutil.copytree(Path(__file__).parents[2] / "fixtures" / "templates" / "tiny",
                    templates / "tiny-web")
    definition = templates / "tiny-web" / "template.toml"
    definition.write_text(definition.read_text().replace('name = "tiny"', 'name = "tiny-web"'))
    env = {**os.environ, "VBOXLAB_TEMPLATE_PATH": str(templates)}
    server = subprocess.Popen([*CLI, "dashboard", "--port", "0", "--lab-dir", str(base)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = server.stdout.readline()
    found = re.search(r"(http://127\.0\.0\.1:\d+)/\?token=(\S+)", line)
    assert found, line + server.stderr.read()
    try:
        yield found.group(0), base, folder
    finally:
        try:
            for left in sorted(base.iterdir()):
                cli("down", left.name, "--lab-dir", str(base))
        finally:
            server.send_signal(signal.SIGINT)
            status = server.wait(timeout=30)
            errors = server.stderr.read()
            for pipe in (server.stdout, server.stderr):
                with contextlib.suppress(OSError, ValueError):
                    pipe.close()
        subprocess.run([*CLI, "templates", "remove", "tiny-web@1.0.0"], env=env,
                       capture_output=True, check=False)
        shutil.rmtree(cache_dir() / "templates" / "tiny-web", ignore_errors=True)  # its lock
        assert status == 0, errors
        assert qemu_pids(str(base)) == []


@pytest.fixture(scope="module")
def page(served):
    chromium = require_tool("chromium", "chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium,
                                             args=["--no-sandbox", "--disable-gpu"])
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1300})
            problems = []
            tab.on("pageerror", lambda error: problems.append(str(error)))
            tab.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            # which request failed: the console says only "Failed to load resource ... 403"
            tab.on("response", lambda r: problems.append(f"HTTP {r.status} {r.request.method} "
                                                         f"{r.url.split('?')[0]}")
                   if r.status >= 400 else None)
            tab.problems = problems
            yield tab
        finally:
            browser.close()


def shot(request, page, name):
    folder = request.config.rootpath / "reports"
    folder.mkdir(exist_ok=True)
    page.screenshot(path=str(folder / name), full_page=True)


def test_the_real_server_enforces_token_host_origin_and_csrf(served):
    url, _, _ = served
    origin, token = url.split("/?token=")
    assert httpx.get(f"{origin}/").status_code == 403
    first = httpx.get(url)
    assert first.status_code == 303 and "HttpOnly" in first.headers["set-cookie"]
    cookies = {"vboxlab_token": token}
    assert httpx.get(f"{origin}/api/labs", cookies=cookies).status_code == 200
    port = origin.rsplit(":", 1)[1]
    rebound = httpx.get(f"{origin}/api/labs", cookies=cookies,
                        headers={"Host": f"attacker.example:{port}"})
    assert rebound.status_code == 403
    page = httpx.get(f"{origin}/", cookies=cookies).text
    csrf = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page).group(1)
    cross = httpx.post(f"{origin}/api/clean", cookies=cookies,
                       headers={"Origin": "http://attacker.example", "X-CSRF-Token": csrf})
    assert cross.status_code == 403
    same = httpx.post(f"{origin}/api/clean", cookies=cookies,
                      headers={"Origin": origin, "X-CSRF-Token": csrf})
    assert same.status_code == 200
    assert "script-src 'self'" in same.headers["content-security-policy"]


def test_without_the_token_the_browser_sees_nothing(served, page):
    url, _, _ = served
    # a page of its own: the browser's later favicon request is refused too (403), and that
    # console error must not land in the shared page's problems
    stranger = page.context.browser.new_page()
    try:
        stranger.goto(url.split("/?token=")[0] + "/")
        assert "no valid token" in stranger.content()
    finally:
        stranger.close()


def test_a_lab_brought_up_appears_and_its_link_counts_a_ping(served, page, request):
    url, base, folder = served
    page.problems.clear()
    page.goto(url)
    expect(page.locator("#labs p.empty")).to_contain_text("No labs")
    expect(page.locator("#connection")).to_have_text("live")
    topology = folder / "web.yaml"
    topology.write_text(PAIR)
    cli("up", str(topology), "--lab-dir", str(base), "--accel", "tcg",
        "--until-pid", str(os.getpid()))
    card = page.locator("section.lab[data-lab=web]")
    expect(card).to_be_visible(timeout=15000)
    expect(card.locator("tr.machine[data-machine=a] [data-field=state]")).to_have_text("running")
    packets = card.locator("tr.link[data-direction=a_to_b] [data-field=packets]")
    expect(packets).to_have_text(re.compile(r"^\d+$"))
    before = int(packets.inner_text())
    pinging = subprocess.Popen([*CLI, "exec", "web", "a", "ping -c 6 -i 0.5 b", "--lab-dir",
                                str(base)], stdout=subprocess.DEVNULL)
    try:
        expect(packets).not_to_have_text(str(before), timeout=10000)
        assert int(packets.inner_text()) > before
    finally:
        assert pinging.wait(timeout=60) == 0
    shot(request, page, "dashboard-overview.png")
    assert page.problems == []


def test_stop_start_snapshot_and_restore_by_clicking(served, page):
    _, base, _ = served
    row = page.locator("section.lab[data-lab=web] tr.machine[data-machine=b]")
    row.locator("button[data-action=stop]").click()
    expect(row.locator("[data-field=state]")).to_have_text("stopped", timeout=60000)
    row.locator("button[data-action=start]").click()
    expect(row.locator("[data-field=state]")).to_have_text("running", timeout=90000)
    expect(row.locator("button[data-action=start]")).to_be_disabled()
    row.locator("button[data-action=snapshot]").click()
    details = page.locator("section.lab[data-lab=web] details[data-machine=b]")
    details.locator("summary").click()
    node = details.locator(".timeline g.snapshot")
    expect(node).to_have_count(1, timeout=15000)
    command = details.locator("input.command")
    command.fill("touch /root/after-snapshot && echo made")
    details.locator("button[data-action=run]").click()
    expect(details.locator("pre.output").first).to_contain_text("made\n[exit status 0]")
    node.first.click()
    expect(details.locator(".chosen")).to_contain_text("snapshot snap-1")
    details.locator("button[data-action=restore]").click()
    expect(page.locator("#log li.ok").last).to_contain_text("restore b to snap-1: done",
                                                             timeout=60000)
    gone = cli("exec", "web", "b", "test -e /root/after-snapshot", "--lab-dir", str(base),
               check=False)
    assert gone.returncode == 1
    assert page.problems == []


def test_a_link_changed_from_the_page_and_errors_shown_as_vboxlab_says(served, page, request):
    base = served[1]
    form = page.locator("section.lab[data-lab=web] tr.link-actions[data-link=a-b]")
    form.locator("input[data-property=delay]").fill("40ms")
    form.locator("button[data-action=link-set]").click()
    properties = page.locator("section.lab[data-lab=web] tr.link[data-direction=a_to_b] "
                              "[data-field=properties]")
    expect(properties).to_have_text("delay 40ms", timeout=10000)
    status = cli("status", "web", "--lab-dir", str(base)).stdout
    assert "a -> b\tup\tdelay 40ms" in status
    origin = served[0].split("/?token=")[0]
    picture = page.request.get(f"{origin}/api/labs/web/topology.svg").text()
    assert 'data-link="a--b" data-impairment="delay 40ms"' in picture  # drawn as it is now
    form.locator("input[data-property=delay]").fill("-3ms")
    form.locator("button[data-action=link-set]").click()
    expect(page.locator("#log li.failed").last).to_contain_text(
        "link a<->b: delay: '-3ms' is negative")
    form.locator("button[data-action=link-down]").click()
    state = page.locator("section.lab[data-lab=web] tr.link[data-direction=b_to_a] "
                         "[data-field=state]")
    expect(state).to_have_text("DOWN", timeout=10000)
    form.locator("button[data-action=link-up]").click()
    expect(state).to_have_text("up", timeout=10000)
    shot(request, page, "dashboard-actions.png")
    page.locator("section.lab[data-lab=web] button[data-action=down]").click()
    expect(page.locator("#log li.ok").last).to_contain_text("down web: done", timeout=60000)
    expect(page.locator("section.lab[data-lab=web]")).to_have_count(0, timeout=10000)
    assert not (base / "web").exists()
    # the action refused above answers 400; pictures of the lab just removed answer 404
    assert [p for p in page.problems if "400" not in p and "404" not in p] == []


def test_a_lab_drawn_by_mouse_checks_exports_and_deploys(served, page, request):
    url, base, folder = served
    origin = url.split("/?token=")[0]
    page.problems.clear()
    page.goto(f"{origin}/builder")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    canvas = page.locator("#canvas")
    box = canvas.bounding_box()
    tiny = page.locator("button.kind[data-kind='vm:tiny']")
    tiny.drag_to(canvas, target_position={"x": 150, "y": 150})  # a drag from the palette
    tiny.drag_to(canvas, target_position={"x": 450, "y": 300})
    page.click("#add-link")  # then a link drawn from one node to the other
    page.mouse.move(box["x"] + 150, box["y"] + 150)
    page.mouse.down()
    page.mouse.move(box["x"] + 300, box["y"] + 220, steps=5)
    page.mouse.move(box["x"] + 450, box["y"] + 300, steps=5)
    page.mouse.up()
    expect(page.locator("#verdict")).to_have_text("valid")
    expect(page.locator("#export-yaml")).to_have_value(re.compile(r"between:\n  - h1\n  - h2"))
    page.mouse.click(box["x"] + 150, box["y"] + 150)  # select h1: its fields and hardware
    expect(page.locator("#hardware svg[data-machine=h1] [data-nic=eth1]")).to_have_count(1)
    memory = page.locator("#selection input[name=memory]")
    memory.fill("10")
    expect(page.locator("#selection .field-error[data-for=memory]")).to_contain_text(
        "greater than or equal to 64")
    expect(page.locator("#verdict")).to_have_text("1 problem(s)")
    memory.fill("128")
    expect(page.locator("#verdict")).to_have_text("valid")
    page.fill("#lab-name", "drawn")
    exported = page.locator("#export-yaml")
    expect(exported).to_have_value(re.compile(r"name: drawn\n(.|\n)*memory: 128"))
    written = folder / "drawn.yaml"
    written.write_text(exported.input_value())
    checked = cli("topology", "check", str(written)).stdout
    assert "node h1 (qemu, tiny, 128 MiB, 1 cpu)" in checked and "link h1 <-> h2" in checked
    shot(request, page, "dashboard-builder.png")
    page.click("#deploy")
    expect(page.locator("#deployed")).to_contain_text("lab drawn is up", timeout=120000)
    assert "drawn\tup" in cli("status", "--lab-dir", str(base)).stdout
    page.click("#deployed a")
    expect(page.locator("section.lab[data-lab=drawn] tr.machine")).to_have_count(2)
    cli("down", "drawn", "--lab-dir", str(base))
    assert page.problems == []


def test_an_example_is_imported_into_the_builder(served, page):
    origin = served[0].split("/?token=")[0]
    page.goto(served[0])  # the token's visit sets the cookie
    page.goto(f"{origin}/builder")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    page.select_option("#examples", "line.yaml")
    page.click("#import")
    expect(page.locator("#verdict")).to_have_text("valid")
    exported = page.locator("#export-yaml")
    expect(exported).to_have_value(re.compile(r"name: line"))
    for node in ("h1:", "r1:", "h2:"):
        assert node in exported.input_value()
    page.fill("#import-yaml", "nodes: {Bad_Name: {}}")
    page.click("#import")
    expect(page.locator("#errors li.error-text")).to_contain_text("Bad_Name")


def test_a_template_not_built_is_built_from_the_builder(served, page):
    origin = served[0].split("/?token=")[0]
    page.goto(served[0])  # the token's visit sets the cookie
    page.goto(f"{origin}/builder")
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    page.click("button.kind[data-kind='vm:tiny-web']")
    advice = page.locator("#recommendations .recommendation[data-kind=template]")
    expect(advice).to_contain_text("template tiny-web is not built")
    advice.locator("button[data-action=build]").click()  # a later check may redraw the advice
    expect(page.locator("#log li.ok").last).to_contain_text("template tiny-web built",
                                                             timeout=600000)
    expect(page.locator("#recommendations .recommendation[data-kind=template]")).to_have_count(0)
    expect(page.locator("#verdict")).to_have_text("valid")


def test_a_kept_labs_snapshots_are_restored_and_the_lab_removed_from_the_dashboard(served):
    url, base, _ = served
    origin, token = url.split("/?token=")
    made = subprocess.run([sys.executable, "-c", KEEP_A_LAB, str(base)], capture_output=True,
                          text=True, timeout=180, check=True)  # a run that ended: its lab kept
    lab_id = made.stdout.strip()
    cookies = {"vboxlab_token": token}
    page = httpx.get(f"{origin}/", cookies=cookies).text
    headers = {"Origin": origin,
               "X-CSRF-Token": re.search(r'name="csrf-token" content="([0-9a-f]+)"', page)[1]}

    def act(action, **args):
        return httpx.post(f"{origin}/api/labs/{lab_id}/action", cookies=cookies,
                          headers=headers, json={"action": action, "args": args}, timeout=120)

    def shown_kept():
        listed = httpx.get(f"{origin}/api/labs", cookies=cookies).json()["labs"]
        return any(item["id"] == lab_id and item["status"] == "kept" for item in listed)

    wait_for(shown_kept, 10, "the kept lab to be shown")  # the next sample, within a second
    restored = act("snapshot.restore", machine="k", name="clean")
    assert restored.status_code == 200, restored.text
    assert restored.json()["result"]["state"] == "running"
    assert cli("ssh", lab_id, "k", "test", "-e", "/root/later", "--lab-dir", str(base),
               check=False).returncode == 1
    refused = act("machine.stop", machine="k")
    assert refused.status_code == 400 and "is not a `vboxlab up` lab" in refused.json()["error"]
    assert act("snapshot.restore", machine="k", name="nope").status_code == 400
    removed = act("down")
    assert removed.status_code == 200 and removed.json()["result"]["was"] == "kept"
    assert not (base / lab_id).exists() and qemu_pids(str(base)) == []
