/* vboxlab dashboard, overview page: every lab, live resource use, quick actions. */
"use strict";

(() => {
  const {el, act, request, bytes, uptime, sparkline, log} = VBL;
  const HISTORY = 600;
  let history = [];
  let shape = "";
  const cells = new Map();       // key -> element updated on every sample
  const timelineSeen = new Map(); // "lab/vm" -> snapshot signature last drawn
  const selected = new Map();    // "lab/vm" -> snapshot name chosen in the timeline
  const openDetails = new Set();

  const key = (...parts) => parts.join("|");
  const hash = text => { let h = 0; for (const c of text) h = (h * 31 + c.charCodeAt(0)) | 0; return (h >>> 0).toString(16); };
  const machineOf = (sample, lab, vm) => {
    const found = (sample.labs || []).find(l => l.id === lab);
    return found ? found.machines.find(m => m.name === vm) : undefined;
  };
  const linkOf = (sample, lab, a, b) => {
    const found = (sample.labs || []).find(l => l.id === lab);
    return found ? (found.links || []).find(k => k.a === a && k.b === b) : undefined;
  };
  const series = pick => history.map(s => { try { return pick(s); } catch (e) { return 0; } });

  function cell(k, node) { cells.set(k, node); return node; }
  function set(k, text) { const node = cells.get(k); if (node && node.textContent !== String(text)) node.textContent = text; }
  function setSpark(k, values, width, max) {
    const node = cells.get(k);
    if (node) node.replaceChildren(sparkline(values.slice(-120), width || 90, 18, max));
  }

  function shapeOf(sample) {
    return JSON.stringify((sample.labs || []).map(l => [l.id, l.status, l.machines.map(m => m.name),
      (l.links || []).map(k => [k.a, k.b])]));
  }

  // -- host ----------------------------------------------------------------
  function renderHost(host) {
    if (!host || host.memory_total === undefined) return;
    const box = document.getElementById("host");
    const used = host.memory_total - host.memory_available;
    box.replaceChildren(
      el("span", {class: "metric", id: "host-cpu"}, `CPU ${host.cpu_percent ?? "-"}% of ${host.cores} `,
         sparkline(series(s => s.host.cpu_percent).slice(-120), 80, 16, 100)),
      el("span", {class: "metric", id: "host-memory"}, `memory ${bytes(used)} / ${bytes(host.memory_total)}`),
      el("span", {class: "metric", id: "host-disk"}, `disk free ${bytes(host.disk_free)}`));
  }

  // -- building the cards --------------------------------------------------
  function labCard(lab) {
    const writable = lab.status === "up";
    const title = el("h2", {},
      el("span", {class: "lab-id"}, lab.id),
      el("span", {class: `badge ${lab.status}`, dataset: {field: "status"}}, lab.status === "session" ? "session (read-only)" : lab.status),
      lab.topology ? el("span", {class: "badge"}, `topology ${lab.topology}`) : null,
      lab.seed !== null && lab.seed !== undefined ? el("span", {class: "badge"}, `seed ${lab.seed}`) : null,
      lab.status !== "session" ? el("button", {type: "button", class: "danger", dataset: {action: "down"},
        onclick: e => act(lab.id, "down", {}, e.target, `down ${lab.id}`).catch(() => {})}, lab.status === "up" ? "Down" : "Remove") : null);
    const card = el("section", {class: "lab", id: `lab-${lab.id}`, dataset: {lab: lab.id, status: lab.status}}, title);
    if (lab.error) card.append(el("p", {class: "error-text"}, lab.error));
    card.append(machinesTable(lab, writable));
    if ((lab.links || []).length) card.append(el("h3", {}, "Links"), linksTable(lab, writable));
    if (lab.topology) card.append(el("h3", {}, "Network"),
      cell(key(lab.id, "topology"), el("img", {class: "picture", alt: `topology of ${lab.id}`})));
    return card;
  }

  function machinesTable(lab, writable) {
    const head = el("tr", {}, ["machine", "state", "template", "provider", "CPUs", "memory", "uptime", "CPU %", "RSS", "disk", "snapshots", "reach it", writable ? "actions" : null]
      .filter(x => x !== null).map(h => el("th", {}, h)));
    const body = el("tbody");
    for (const m of lab.machines) {
      const k = (...p) => key(lab.id, "m", m.name, ...p);
      const ssh = el("code", {}, "");
      const row = el("tr", {class: "machine", dataset: {machine: m.name}},
        el("td", {}, el("strong", {}, m.name)),
        el("td", {}, cell(k("state"), el("span", {class: "badge", dataset: {field: "state"}}, m.state))),
        el("td", {}, m.template ? `${m.template}@${m.version}` : "-"),
        el("td", {}, m.provider),
        el("td", {class: "num"}, m.cpus ?? "-"),
        el("td", {class: "num"}, m.memory ? `${m.memory} MiB` : "-"),
        el("td", {class: "num"}, cell(k("uptime"), el("span"))),
        el("td", {class: "num"}, cell(k("cpu"), el("span", {dataset: {field: "cpu"}})), " ", cell(k("cpuspark"), el("span"))),
        el("td", {class: "num"}, cell(k("rss"), el("span"))),
        el("td", {class: "num"}, cell(k("disk"), el("span"))),
        el("td", {class: "num"}, cell(k("snapshots"), el("span"))),
        el("td", {}, cell(k("ssh"), ssh), " ",
           el("button", {type: "button", title: "copy the SSH command", onclick: () => copy(ssh.textContent)}, "copy")),
        writable ? el("td", {class: "actions"},
          cell(k("start"), el("button", {type: "button", dataset: {action: "start"}, onclick: e => act(lab.id, "machine.start", {machine: m.name}, e.target, `start ${m.name}`).catch(() => {})}, "Start")),
          cell(k("stop"), el("button", {type: "button", dataset: {action: "stop"}, onclick: e => act(lab.id, "machine.stop", {machine: m.name}, e.target, `stop ${m.name}`).catch(() => {})}, "Stop")),
          cell(k("kill"), el("button", {type: "button", class: "danger", dataset: {action: "kill"}, onclick: e => act(lab.id, "machine.kill", {machine: m.name}, e.target, `kill ${m.name}`).catch(() => {})}, "Kill")),
          cell(k("snap"), el("button", {type: "button", dataset: {action: "snapshot"}, onclick: e => act(lab.id, "snapshot.take", {machine: m.name}, e.target, `snapshot ${m.name}`).catch(() => {})}, "Snapshot"))) : null);
      body.append(row, el("tr", {class: "machine-more", dataset: {machine: m.name}},
        el("td", {colspan: writable ? 13 : 12}, machineDetails(lab, m, writable, writable || lab.status === "kept"))));
    }
    return el("table", {class: "machines"}, el("thead", {}, head), body);
  }

  function machineDetails(lab, m, writable, snapshotsWritable) {
    const id = key(lab.id, m.name);
    const details = el("details", {dataset: {machine: m.name}});
    details.open = openDetails.has(id);
    details.addEventListener("toggle", () => details.open ? openDetails.add(id) : openDetails.delete(id));
    details.append(el("summary", {}, `${m.name}: ${writable ? "command, " : ""}snapshots, console`));
    if (writable) {
      const input = el("input", {class: "command", type: "text", placeholder: "a shell command, e.g. ip -br addr", "aria-label": `command for ${m.name}`});
      const output = el("pre", {class: "output", hidden: true});
      const run = async button => {
        if (!input.value.trim()) return;
        try {
          const result = await act(lab.id, "exec", {machine: m.name, command: input.value, timeout: 60}, button, `${m.name}$ ${input.value}`);
          output.hidden = false;
          output.replaceChildren(result.stdout, el("span", {class: "stderr"}, result.stderr),
            `\n[exit status ${result.status}]${result.note ? " " + result.note : ""}`);
        } catch (error) {
          output.hidden = false;
          output.replaceChildren(el("span", {class: "stderr"}, error.message));
        }
      };
      input.addEventListener("keydown", e => { if (e.key === "Enter") run(null); });
      details.append(el("div", {class: "command-form"}, input, " ",
        el("button", {type: "button", dataset: {action: "run"}, onclick: e => run(e.target)}, "Run")), output);
    }
    const timeline = cell(key(lab.id, "m", m.name, "timeline"), el("div", {class: "timeline", dataset: {machine: m.name}}));
    const chosen = cell(key(lab.id, "m", m.name, "chosen"), el("span", {class: "chosen"}, "click a snapshot to act on it"));
    details.append(el("h3", {}, "Snapshot timeline"), timeline);
    if (snapshotsWritable) {
      details.append(el("div", {}, chosen, " ",
        el("button", {type: "button", dataset: {action: "restore"}, onclick: e => {
          const name = selected.get(id); if (!name) return log("choose a snapshot in the timeline first", "failed");
          act(lab.id, "snapshot.restore", {machine: m.name, name}, e.target, `restore ${m.name} to ${name}`).catch(() => {});
        }}, "Restore"),
        el("button", {type: "button", class: "danger", dataset: {action: "delete-snapshot"}, onclick: e => {
          const name = selected.get(id); if (!name) return log("choose a snapshot in the timeline first", "failed");
          act(lab.id, "snapshot.delete", {machine: m.name, name}, e.target, `delete snapshot ${name} of ${m.name}`)
            .then(() => selected.delete(id)).catch(() => {});
        }}, "Delete")));
    }
    const consoleOut = el("pre", {class: "output", hidden: true});
    if (writable) details.append(el("h3", {}, "Console"),
      el("button", {type: "button", dataset: {action: "console"}, onclick: async e => {
        try {
          const result = await act(lab.id, "machine.console", {machine: m.name, lines: 40}, e.target, `console of ${m.name}`);
          consoleOut.hidden = false; consoleOut.textContent = result.console;
        } catch (error) { /* logged */ }
      }}, "Show the last 40 lines"), consoleOut);
    return details;
  }

  function linksTable(lab, writable) {
    const head = el("tr", {}, ["direction", "state", "properties", "packets/s", "bytes/s", "drops/s", "packets", "bytes"]
      .map(h => el("th", {}, h)));
    const body = el("tbody");
    for (const link of lab.links) {
      for (const [dir, src, dst] of [["a_to_b", link.a, link.b], ["b_to_a", link.b, link.a]]) {
        const k = (...p) => key(lab.id, "l", link.a, link.b, dir, ...p);
        body.append(el("tr", {class: "link", dataset: {link: `${link.a}-${link.b}`, direction: dir}},
          el("td", {}, `${src} → ${dst}`),
          el("td", {}, cell(k("state"), el("span", {class: "badge", dataset: {field: "state"}}))),
          el("td", {}, cell(k("text"), el("span", {dataset: {field: "properties"}}))),
          el("td", {class: "num"}, cell(k("pps"), el("span", {dataset: {field: "pps"}}))),
          el("td", {class: "num"}, cell(k("bps"), el("span")), " ", cell(k("spark"), el("span"))),
          el("td", {class: "num"}, cell(k("drops"), el("span"))),
          el("td", {class: "num"}, cell(k("packets"), el("span", {dataset: {field: "packets"}}))),
          el("td", {class: "num"}, cell(k("bytes"), el("span")))));
      }
      if (writable) body.append(el("tr", {class: "link-actions", dataset: {link: `${link.a}-${link.b}`}},
        el("td", {colspan: 8}, linkActions(lab, link))));
    }
    return el("table", {class: "links"}, el("thead", {}, head), body);
  }

  function linkActions(lab, link) {
    const name = `${link.a}<->${link.b}`;
    const args = extra => Object.assign({a: link.a, b: link.b}, extra);
    const field = (label, placeholder) => el("input", {class: "short", type: "text", placeholder, "aria-label": `${label} of ${name}`, dataset: {property: label}});
    const delay = field("delay", "delay 20ms"), loss = field("loss", "loss 1%"), rate = field("rate", "rate 10mbit");
    const downloads = el("span", {class: "downloads"});
    return el("div", {class: "link-form"}, el("strong", {}, name), " ",
      el("button", {type: "button", dataset: {action: "link-down"}, onclick: e => act(lab.id, "link.down", args({}), e.target, `${name} down`).catch(() => {})}, "Down"),
      el("button", {type: "button", dataset: {action: "link-up"}, onclick: e => act(lab.id, "link.up", args({}), e.target, `${name} up`).catch(() => {})}, "Up"),
      " ", delay, loss, rate,
      el("button", {type: "button", dataset: {action: "link-set"}, onclick: e => {
        const properties = {};
        for (const input of [delay, loss, rate]) if (input.value.trim()) properties[input.dataset.property] = input.value.trim();
        if (!Object.keys(properties).length) return log(`${name}: give a delay, loss or rate first`, "failed");
        act(lab.id, "link.set", args({properties}), e.target, `${name} set ${JSON.stringify(properties)}`).catch(() => {});
      }}, "Apply"), " ",
      el("button", {type: "button", dataset: {action: "capture-start"}, onclick: e => act(lab.id, "capture.start", args({}), e.target, `capture ${name}`).catch(() => {})}, "Start capture"),
      el("button", {type: "button", dataset: {action: "capture-stop"}, onclick: async e => {
        try {
          const files = await act(lab.id, "capture.stop", args({}), e.target, `stop capture of ${name}`);
          downloads.replaceChildren(...Object.values(files).map(f => {
            const file = f.path.split("/").pop();
            return el("a", {href: `/api/labs/${encodeURIComponent(lab.id)}/captures/${encodeURIComponent(file)}`, download: file}, ` ${file} (${bytes(f.bytes)})`);
          }));
        } catch (error) { /* logged */ }
      }}, "Stop capture"), downloads);
  }

  function copy(text) {
    if (!text || text === "-") return;
    (navigator.clipboard ? navigator.clipboard.writeText(text) : Promise.reject(new Error("no clipboard")))
      .then(() => log(`copied: ${text}`, "ok"), () => log(`copy it by hand: ${text}`));
  }

  function build(sample) {
    cells.clear();
    timelineSeen.clear();
    const box = document.getElementById("labs");
    const labs = sample.labs || [];
    box.replaceChildren(...(labs.length ? labs.map(labCard) : [el("p", {class: "empty"}, "No labs. Start one with: vboxlab up topologies/line.yaml")]));
  }

  // -- updating values -----------------------------------------------------
  async function drawTimeline(lab, m) {
    const id = key(lab.id, m.name);
    const signature = JSON.stringify([m.snapshots.map(s => s.name), m.current_snapshot]);
    if (timelineSeen.get(id) === signature) return;
    timelineSeen.set(id, signature);
    const box = cells.get(key(lab.id, "m", m.name, "timeline"));
    if (!box) return;
    if (!m.snapshots.length) { box.replaceChildren(el("p", {class: "empty"}, "no snapshots yet")); return; }
    const response = await fetch(`/api/labs/${encodeURIComponent(lab.id)}/machines/${encodeURIComponent(m.name)}/timeline.svg`, {credentials: "same-origin"});
    if (!response.ok) return;
    const doc = new DOMParser().parseFromString(await response.text(), "image/svg+xml");
    const svg = doc.documentElement;
    if (svg.nodeName !== "svg" || svg.querySelector("script, foreignObject")) return;
    const node = document.importNode(svg, true);
    for (const group of node.querySelectorAll("g.snapshot")) {
      if (group.dataset.name === selected.get(id)) group.classList.add("selected");
      group.addEventListener("click", () => {
        for (const other of node.querySelectorAll("g.snapshot.selected")) other.classList.remove("selected");
        group.classList.add("selected");
        selected.set(id, group.dataset.name);
        set(key(lab.id, "m", m.name, "chosen"), `snapshot ${group.dataset.name}:`);
      });
    }
    box.replaceChildren(node);
  }

  function update(sample) {
    for (const lab of sample.labs || []) {
      const picture = cells.get(key(lab.id, "topology"));
      if (picture) {  // redrawn when a link's properties change
        const version = JSON.stringify((lab.links || []).map(k => [k.a_to_b.settings, k.b_to_a.settings]));
        if (picture.dataset.version !== version) {
          picture.dataset.version = version;
          picture.src = `/api/labs/${encodeURIComponent(lab.id)}/topology.svg?v=${encodeURIComponent(version.length + ":" + hash(version))}`;
        }
      }
      for (const m of lab.machines) {
        const k = (...p) => key(lab.id, "m", m.name, ...p);
        const badge = cells.get(k("state"));
        if (badge) { badge.textContent = m.state; badge.className = `badge ${m.state}`; }
        set(k("uptime"), uptime(m.uptime));
        set(k("cpu"), m.cpu_percent === null || m.cpu_percent === undefined ? "-" : `${m.cpu_percent}%`);
        setSpark(k("cpuspark"), series(s => machineOf(s, lab.id, m.name).cpu_percent), 70, 100);
        set(k("rss"), bytes(m.rss));
        set(k("disk"), bytes(m.disk));
        set(k("snapshots"), m.snapshots.length + (m.current_snapshot ? ` (at ${m.current_snapshot})` : ""));
        const base = lab.folder.slice(0, lab.folder.lastIndexOf("/"));
        set(k("ssh"), m.ssh && m.state === "running" ? `vboxlab ssh ${lab.id} ${m.name} --lab-dir ${base}` : "-");
        const running = m.state === "running";
        for (const [name, enabled] of [["start", !running], ["stop", running], ["kill", running], ["snap", running]]) {
          const button = cells.get(k(name));
          if (button && !button.textContent.endsWith("…")) button.disabled = !enabled;
        }
        drawTimeline(lab, m).catch(() => {});
      }
      for (const link of lab.links || []) {
        for (const dir of ["a_to_b", "b_to_a"]) {
          const k = (...p) => key(lab.id, "l", link.a, link.b, dir, ...p);
          const side = link[dir];
          const badge = cells.get(k("state"));
          const up = side.settings.up !== false;
          if (badge) { badge.textContent = up ? "up" : "DOWN"; badge.className = `badge ${up ? "up" : "DOWN"}`; }
          set(k("text"), side.text || "clean");
          const rates = side.rates || {packets: 0, bytes: 0, drops: 0};
          set(k("pps"), rates.packets);
          set(k("bps"), bytes(rates.bytes) + "/s");
          set(k("drops"), rates.drops);
          set(k("packets"), side.counters.tx_packets);
          set(k("bytes"), bytes(side.counters.tx_bytes));
          setSpark(k("spark"), series(s => linkOf(s, lab.id, link.a, link.b)[dir].rates.bytes), 70);
        }
      }
    }
  }

  function render(sample) {
    if (!sample || !sample.labs) return;
    history.push(sample);
    if (history.length > HISTORY) history = history.slice(-HISTORY);
    renderHost(sample.host);
    const now = shapeOf(sample);
    if (now !== shape) { shape = now; build(sample); }
    update(sample);
    document.body.dataset.samples = String(Number(document.body.dataset.samples || 0) + 1);
  }

  function connect() {
    const status = document.getElementById("connection");
    const source = new EventSource("/api/events");
    source.onopen = () => { status.textContent = "live"; status.className = "badge live"; };
    source.onmessage = event => render(JSON.parse(event.data));
    source.onerror = () => { status.textContent = "reconnecting"; status.className = "badge lost"; };
  }

  document.getElementById("clean").addEventListener("click", async e => {
    const button = e.target;
    button.disabled = true;
    try {
      const data = await request("POST", "/api/clean", {});
      log(`removed ${data.result.removed.length} dead lab(s)`, "ok");
    } catch (error) { log(`clean failed: ${error.message}`, "failed"); }
    finally { button.disabled = false; }
  });

  request("GET", "/api/history").then(data => {
    history = (data.samples || []).slice(0, -1);
    const last = (data.samples || []).slice(-1)[0];
    if (last) render(last); else request("GET", "/api/labs").then(render);
  }).catch(error => log(`could not load the labs: ${error.message}`, "failed")).finally(connect);
})();
