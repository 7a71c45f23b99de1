/* vboxlab dashboard, lab builder: draw a topology, check it as `vboxlab topology check` does, deploy it. */
"use strict";

(() => {
  const {el, log, request} = VBL;
  const SVG = "http://www.w3.org/2000/svg";
  const nodes = new Map();  // id -> {id, kind: vm|netns|segment, name, template, memory, cpus, subnet}
  const links = [];         // {id, from, to, props: {}, a_to_b: {}, b_to_a: {}, addresses: {}}
  const PROPS = ["delay", "jitter", "loss", "rate"];
  let palette = {templates: [], host: {}};
  let result = null;        // the last check's answer
  let selected = null;      // {type: "node"|"link", id}
  let counter = 0;
  let timer = null;

  const nodeData = new vis.DataSet();
  const edgeData = new vis.DataSet();
  const canvas = document.getElementById("canvas");
  const network = new vis.Network(canvas, {nodes: nodeData, edges: edgeData}, {
    physics: {enabled: false},  // a dropped node stays where it was dropped; imports are laid out once
    interaction: {hover: true, multiselect: false},
    edges: {smooth: false, width: 2, font: {size: 11, align: "middle"}},
    nodes: {font: {size: 13}},
    manipulation: {enabled: false, addEdge: (edge, done) => { done(null); addLink(edge.from, edge.to); }},
  });
  network.on("stabilizationIterationsDone", () => network.setOptions({physics: false}));

  // -- the model ------------------------------------------------------------
  const byName = name => [...nodes.values()].find(n => n.name === name);
  const freeName = prefix => { let i = 1; while (byName(`${prefix}${i}`)) i++; return `${prefix}${i}`; };

  function look(node) {
    const bad = errorsFor("node", node).length > 0;
    const colour = bad ? "#c62828" : node.kind === "segment" ? "#37474f" : node.kind === "netns" ? "#6a1b9a" : "#1565c0";
    const label = node.kind === "segment" ? `${node.name}\n${node.subnet || "(subnet: auto)"}`
      : node.kind === "netns" ? `${node.name}\nnetns` : `${node.name}\n${node.template}`;
    return {id: node.id, label, shape: node.kind === "segment" ? "box" : "ellipse",
            color: {border: colour, background: node.kind === "segment" ? "#eceff1" : "#ffffff",
                    highlight: {border: "#ef6c00", background: "#fff8e1"}},
            borderWidth: bad ? 3 : 2, font: {color: bad ? "#c62828" : "#1d2733"}};
  }
  function edgeLook(link) {
    const bad = errorsFor("link", link).length > 0;
    const text = PROPS.filter(p => link.props[p]).map(p => `${p} ${link.props[p]}`).join(", ");
    return {id: link.id, from: link.from, to: link.to, label: text || undefined,
            color: {color: bad ? "#c62828" : text ? "#ef6c00" : "#546e7a"}, width: bad ? 4 : 2};
  }

  function addNode(kind, template, position) {
    counter++;
    const id = `n${counter}`;
    const node = {id, kind, name: freeName(kind === "segment" ? "sw" : kind === "netns" ? "ns" : "h"),
                  template: template || "tiny", memory: "", cpus: "", subnet: ""};
    nodes.set(id, node);
    nodeData.add({...look(node), ...(position || {})});
    select({type: "node", id});
    changed();
    return node;
  }

  function addLink(from, to) {
    if (from === to) return log("a link needs two different ends", "failed");
    counter++;
    const link = {id: `l${counter}`, from, to, props: {}, a_to_b: {}, b_to_a: {}, addresses: {}};
    links.push(link);
    edgeData.add(edgeLook(link));
    select({type: "link", id: link.id});
    changed();
  }

  function remove() {
    if (!selected) return;
    if (selected.type === "node") {
      for (let i = links.length - 1; i >= 0; i--) if (links[i].from === selected.id || links[i].to === selected.id) {
        edgeData.remove(links[i].id); links.splice(i, 1);
      }
      nodes.delete(selected.id); nodeData.remove(selected.id);
    } else {
      const index = links.findIndex(l => l.id === selected.id);
      if (index >= 0) { links.splice(index, 1); edgeData.remove(selected.id); }
    }
    select(null);
    changed();
  }

  function clean(object) {
    const out = {};
    for (const [k, v] of Object.entries(object)) if (v !== "" && v !== undefined && v !== null) out[k] = v;
    return out;
  }
  const number = text => (/^\d+$/.test(String(text).trim()) ? Number(text) : text);

  /** The drawn lab as the topology file's structure. */
  function model() {
    const out = {name: document.getElementById("lab-name").value.trim() || "drawn"};
    const segments = {}, spec = {};
    for (const node of nodes.values()) {
      if (node.kind === "segment") segments[node.name] = node.subnet ? {subnet: node.subnet} : {};
      else if (node.kind === "netns") spec[node.name] = {provider: "netns"};
      else spec[node.name] = clean({template: node.template, memory: node.memory === "" ? "" : number(node.memory),
                                    cpus: node.cpus === "" ? "" : number(node.cpus)});
    }
    if (Object.keys(segments).length) out.segments = segments;
    out.nodes = spec;
    if (links.length) out.links = links.map(link => {
      const a = nodes.get(link.from), b = nodes.get(link.to);
      const entry = {between: [a ? a.name : "?", b ? b.name : "?"], ...clean(link.props)};
      const addresses = clean(Object.fromEntries(Object.entries(link.addresses).filter(([n]) => byName(n))));
      if (Object.keys(addresses).length) entry.addresses = addresses;
      if (Object.keys(clean(link.a_to_b)).length) entry.a_to_b = clean(link.a_to_b);
      if (Object.keys(clean(link.b_to_a)).length) entry.b_to_a = clean(link.b_to_a);
      return entry;
    });
    return out;
  }

  /** Replace the drawing with a checked topology (what the server parsed from YAML). */
  function load(data) {
    nodes.clear(); links.length = 0; nodeData.clear(); edgeData.clear(); select(null);
    document.getElementById("lab-name").value = data.name || "imported";
    const defaults = data.defaults || {};
    for (const [name, seg] of Object.entries(data.segments || {})) {
      counter++;
      const node = {id: `n${counter}`, kind: "segment", name, subnet: (seg && seg.subnet) || "", template: "", memory: "", cpus: ""};
      nodes.set(node.id, node); nodeData.add(look(node));
    }
    for (const [name, spec] of Object.entries(data.nodes || {})) {
      const s = spec || {};
      const provider = s.provider || defaults.provider || "qemu";
      counter++;
      const node = {id: `n${counter}`, kind: provider === "netns" ? "netns" : "vm", name,
                    template: s.template || defaults.template || "tiny", memory: s.memory ?? "", cpus: s.cpus ?? "", subnet: ""};
      nodes.set(node.id, node); nodeData.add(look(node));
    }
    for (const entry of data.links || []) {
      const [a, b] = entry.between || [];
      const from = byName(a), to = byName(b);
      if (!from || !to) continue;
      counter++;
      const props = {};
      for (const p of PROPS) if (entry[p] !== undefined) props[p] = String(entry[p]);
      const link = {id: `l${counter}`, from: from.id, to: to.id, props, a_to_b: entry.a_to_b || {},
                    b_to_a: entry.b_to_a || {}, addresses: entry.addresses || {}};
      links.push(link); edgeData.add(edgeLook(link));
    }
    network.setOptions({physics: {enabled: true, stabilization: {iterations: 150}}});
    network.stabilize(150);
    changed();
  }

  // -- checking ---------------------------------------------------------------
  function errorsFor(type, item) {
    if (!result || result.ok) return [];
    return result.errors.filter(e => {
      const [where, key] = e.path;
      if (type === "node") return (where === "nodes" || where === "segments") && key === item.name;
      return where === "links" && Number(key) === links.indexOf(item);
    });
  }

  function changed() {
    clearTimeout(timer);
    document.getElementById("verdict").textContent = "checking…";
    timer = setTimeout(check, 250);
  }

  async function check() {
    try {
      result = await request("POST", "/api/builder/check", {model: model()});
    } catch (error) { log(`check failed: ${error.message}`, "failed"); return; }
    showResult();
  }

  function showResult() {
    const verdict = document.getElementById("verdict");
    verdict.textContent = result.ok ? "valid" : `${result.errors.length} problem(s)`;
    verdict.className = `badge ${result.ok ? "up" : "dead"}`;
    const list = document.getElementById("errors");
    list.replaceChildren(...(result.errors.length ? result.errors.map(e =>
      el("li", {class: "error-text", dataset: {path: e.path.join(".")}, onclick: () => selectPath(e.path)}, e.message))
      : [el("li", {class: "empty"}, "none")]));
    const advice = document.getElementById("recommendations");
    advice.replaceChildren(...(result.recommendations.length ? result.recommendations.map(r =>
      el("div", {class: "recommendation", dataset: {kind: r.kind, path: r.path.join(".")}}, r.text,
        r.kind === "template" ? el("div", {}, el("button", {type: "button", dataset: {action: "build", template: r.template},
          onclick: e => build(r.template, e.target)}, `Build ${r.template}`), el("span", {class: "progress"})) : null))
      : [el("p", {class: "empty"}, "none")]));
    if (result.ok) {
      document.getElementById("export-yaml").value = result.yaml;
      const link = document.getElementById("download");
      if (link.href.startsWith("blob:")) URL.revokeObjectURL(link.href);
      link.href = URL.createObjectURL(new Blob([result.yaml], {type: "application/yaml"}));
      link.download = `${model().name}.yaml`;
    }
    for (const node of nodes.values()) nodeData.update(look(node));
    for (const link of links) edgeData.update(edgeLook(link));
    markFields();
  }

  /** Build a template on the server and follow its progress until it is done. */
  async function build(template, button) {
    const line = button.nextElementSibling;
    button.disabled = true;
    try {
      let job = (await request("POST", "/api/builder/build", {template})).result;
      while (job.state === "running") {
        line.textContent = ` ${job.steps.slice(-1)[0] || "starting"}…`;
        await new Promise(resolve => setTimeout(resolve, 1000));
        job = await request("GET", `/api/jobs/${job.id}`);
      }
      if (job.state === "failed") throw new Error(job.error);
      line.textContent = ` built ${template} ${job.result.version}`;
      log(`template ${template} built`, "ok");
      palette = await request("GET", "/api/builder/palette");
      changed();
    } catch (error) {
      line.textContent = "";
      log(`building ${template} failed: ${error.message}`, "failed");
    } finally { button.disabled = false; }
  }

  function selectPath(path) {
    const [where, key] = path;
    if (where === "nodes" || where === "segments") { const node = byName(key); if (node) { network.selectNodes([node.id]); select({type: "node", id: node.id}); } }
    else if (where === "links" && links[Number(key)]) { network.selectEdges([links[Number(key)].id]); select({type: "link", id: links[Number(key)].id}); }
  }

  /** Errors of the selected element, each shown under the field it concerns. */
  function markFields() {
    const panel = document.getElementById("selection");
    for (const slot of panel.querySelectorAll(".field-error")) slot.textContent = "";
    if (!selected || !result) return;
    const item = selected.type === "node" ? nodes.get(selected.id) : links.find(l => l.id === selected.id);
    if (!item) return;
    for (const error of errorsFor(selected.type, item)) {
      const field = String(error.path[2] ?? "");
      const slot = panel.querySelector(`.field-error[data-for="${CSS.escape(field)}"]`) || panel.querySelector('.field-error[data-for=""]');
      if (slot) slot.textContent = error.message.replace(/^.*?:\d+: [\w.-]+: /, "");
    }
  }

  // -- the side panel -----------------------------------------------------
  function field(label, value, onInput, name, attrs) {
    const input = el("input", {type: "text", value: value ?? "", name, "aria-label": label, ...(attrs || {})});
    input.addEventListener("input", () => onInput(input.value.trim()));
    return [el("label", {}, label), input, el("div", {class: "field-error", dataset: {for: name}})];
  }

  function nicsOf(node) {
    return links.filter(l => l.from === node.id || l.to === node.id).map((l, i) => {
      const peer = nodes.get(l.from === node.id ? l.to : l.from);
      return {link: l, name: `eth${i + 1}`, peer};
    });
  }

  function select(what) {
    selected = what;
    const panel = document.getElementById("selection");
    const hardware = document.getElementById("hardware");
    hardware.replaceChildren();
    if (!what) { panel.replaceChildren(el("p", {class: "empty"}, "Select a node or a link to edit it.")); return; }
    if (what.type === "node") {
      const node = nodes.get(what.id);
      if (!node) return select(null);
      const redraw = () => { nodeData.update(look(node)); drawHardware(node); changed(); };
      const parts = [el("h3", {}, node.kind === "segment" ? "Segment" : node.kind === "netns" ? "Namespace host" : "Virtual machine"),
        el("div", {class: "field-error", dataset: {for: ""}}),
        ...field("name", node.name, v => { node.name = v; redraw(); }, "name")];
      if (node.kind === "segment") parts.push(...field("subnet", node.subnet, v => { node.subnet = v; redraw(); }, "subnet", {placeholder: "10.1.0.0/24 (empty: chosen)"}));
      if (node.kind === "vm") {
        const list = el("datalist", {id: "template-list"}, palette.templates.map(t => el("option", {value: t.name}, `${t.name} ${t.version} (${t.status})`)));
        parts.push(...field("template", node.template, v => { node.template = v; redraw(); }, "template", {list: "template-list", placeholder: "tiny, or debian-12>=1.0,<2"}), list,
          ...field("memory (MiB)", node.memory, v => { node.memory = v; redraw(); }, "memory", {placeholder: "the template's"}),
          ...field("CPUs", node.cpus, v => { node.cpus = v; redraw(); }, "cpus", {placeholder: "the template's"}));
      }
      const nics = nicsOf(node);
      if (nics.length && node.kind !== "segment") {
        parts.push(el("h3", {}, "Interfaces"));
        for (const nic of nics) parts.push(...field(`${nic.name} to ${nic.peer ? nic.peer.name : "?"}: address`, nic.link.addresses[node.name] || "",
          v => { if (v) nic.link.addresses[node.name] = v; else delete nic.link.addresses[node.name]; redraw(); }, "addresses", {placeholder: "chosen from the subnet"}));
      }
      panel.replaceChildren(...parts);
      drawHardware(node);
    } else {
      const link = links.find(l => l.id === what.id);
      if (!link) return select(null);
      const a = nodes.get(link.from), b = nodes.get(link.to);
      const redraw = () => { edgeData.update(edgeLook(link)); changed(); };
      const parts = [el("h3", {}, `Link ${a.name} ↔ ${b.name}`), el("div", {class: "field-error", dataset: {for: ""}}),
        el("div", {class: "field-error", dataset: {for: "between"}}), el("p", {class: "empty"}, "Both directions:")];
      for (const p of PROPS) parts.push(...field(p, link.props[p], v => { if (v) link.props[p] = v; else delete link.props[p]; redraw(); }, p,
        {placeholder: {delay: "20ms", jitter: "2ms", loss: "1%", rate: "10mbit"}[p]}));
      for (const [dir, label] of [["a_to_b", `${a.name} → ${b.name} only`], ["b_to_a", `${b.name} → ${a.name} only`]]) {
        parts.push(el("p", {class: "empty"}, label), el("div", {class: "field-error", dataset: {for: dir}}));
        for (const p of ["delay", "loss", "rate"]) parts.push(...field(`${p} (${label})`, link[dir][p], v => { if (v) link[dir][p] = v; else delete link[dir][p]; redraw(); }, `${dir}.${p}`));
      }
      panel.replaceChildren(...parts);
    }
    markFields();
  }

  /** The selected machine drawn as hardware: CPUs, memory against the host, NICs, disk, firmware. */
  function drawHardware(node) {
    const box = document.getElementById("hardware");
    if (node.kind === "segment") { box.replaceChildren(); return; }
    const template = palette.templates.find(t => t.name === node.template.split(/[<>=!~@ ]/)[0]) || {};
    const cpus = Number(node.cpus) || template.cpus || 1;
    const memory = Number(node.memory) || template.memory || 256;
    const available = palette.host.memory_available_mb || memory;
    const nics = nicsOf(node);
    const width = 320, height = 160 + 22 * nics.length;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("data-machine", node.name);
    const add = (tag, attrs, text) => {
      const e = document.createElementNS(SVG, tag);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
      if (text !== undefined) e.textContent = text;
      svg.append(e); return e;
    };
    add("rect", {x: 1, y: 1, width: width - 2, height: height - 2, rx: 8, fill: "#fafbfc", stroke: "#546e7a"});
    add("text", {x: 10, y: 20, "font-size": 13, "font-weight": "bold"}, node.kind === "netns" ? `${node.name}: namespace host (host kernel)` : `${node.name}: ${node.template}`);
    if (node.kind === "vm") {
      add("text", {x: 10, y: 42, "font-size": 11}, `CPUs: ${cpus}${!palette.host.kvm && cpus > palette.host.cores ? " (more than the host's cores)" : ""}`);
      for (let i = 0; i < Math.min(cpus, 16); i++) add("rect", {x: 90 + i * 16, y: 32, width: 12, height: 12, fill: "#1565c0", "data-cpu": i});
      add("text", {x: 10, y: 66, "font-size": 11}, `memory ${memory} MiB of ${available} MiB available`);
      add("rect", {x: 10, y: 72, width: 300, height: 10, fill: "#e3e8ef"});
      add("rect", {x: 10, y: 72, width: Math.min(300, 300 * memory / available), height: 10, fill: memory > available ? "#c62828" : "#2e7d32", "data-memory": memory});
      add("text", {x: 10, y: 100, "font-size": 11}, `disk: copy-on-write overlay on the ${template.name || node.template} image`);
      add("text", {x: 10, y: 116, "font-size": 11}, "firmware: BIOS (qboot, direct kernel boot)");
      add("text", {x: 10, y: 132, "font-size": 11}, "boot media: none");
    } else {
      add("text", {x: 10, y: 42, "font-size": 11}, "no CPUs, memory or disk of its own: processes in namespaces of this host");
    }
    nics.forEach((nic, i) => {
      const y = 152 + 22 * i;
      add("rect", {x: 10, y: y - 10, width: 14, height: 12, fill: "#ef6c00", "data-nic": nic.name});
      add("text", {x: 30, y, "font-size": 11}, `${nic.name} → ${nic.peer ? nic.peer.name : "?"} ${nic.link.addresses[node.name] || "(address chosen)"}`);
    });
    box.replaceChildren(svg);
  }

  // -- wiring up the page ---------------------------------------------------
  network.on("click", params => {
    if (params.nodes.length) select({type: "node", id: params.nodes[0]});
    else if (params.edges.length) select({type: "link", id: params.edges[0]});
    else select(null);
  });
  canvas.addEventListener("dragover", e => e.preventDefault());
  canvas.addEventListener("drop", e => {
    e.preventDefault();
    const [kind, template] = (e.dataTransfer.getData("text/plain") || "").split(":");
    if (!["vm", "netns", "segment"].includes(kind)) return;
    const rect = canvas.getBoundingClientRect();
    const at = network.DOMtoCanvas({x: e.clientX - rect.left, y: e.clientY - rect.top});
    addNode(kind, template, {x: at.x, y: at.y});
  });
  document.getElementById("add-link").addEventListener("click", () => { network.addEdgeMode(); log("drag from one node to another to link them"); });
  document.getElementById("delete").addEventListener("click", remove);
  document.getElementById("lab-name").addEventListener("input", changed);
  document.getElementById("examples").addEventListener("change", e => {
    const text = examples[e.target.value];
    if (text !== undefined) document.getElementById("import-yaml").value = text;
  });
  document.getElementById("import").addEventListener("click", async () => {
    const text = document.getElementById("import-yaml").value;
    try {
      const answer = await request("POST", "/api/builder/check", {yaml: text});
      if (!answer.ok) { result = answer; showResult(); return log(`not imported: ${answer.errors[0].message}`, "failed"); }
      load(answer.model);
      log(`imported ${answer.model.name || "the topology"}`, "ok");
    } catch (error) { log(`import failed: ${error.message}`, "failed"); }
  });
  document.getElementById("deploy").addEventListener("click", async e => {
    const button = e.target;
    if (!result || !result.ok) return log("fix the problems first: the lab does not check", "failed");
    button.disabled = true; button.textContent = "Deploying…";
    const out = document.getElementById("deployed");
    out.textContent = "starting the machines…";
    try {
      const answer = await request("POST", "/api/builder/deploy", {yaml: result.yaml, name: model().name});
      out.replaceChildren(`lab ${answer.result.lab} is up in ${answer.result.took} s: `,
        el("a", {href: `/#lab-${answer.result.lab}`}, "follow it on the overview"));
      log(`deployed ${answer.result.lab}`, "ok");
    } catch (error) {
      out.textContent = ""; log(`deploy failed: ${error.message}`, "failed");
    } finally { button.disabled = false; button.textContent = "Deploy (vboxlab up)"; }
  });

  let examples = {};
  Promise.all([request("GET", "/api/builder/palette"), request("GET", "/api/builder/examples")]).then(([p, e]) => {
    palette = p; examples = e;
    const kinds = document.getElementById("kinds");
    const item = (label, kind, template, title) => {
      const button = el("button", {type: "button", class: "kind", draggable: "true", title, dataset: {kind: `${kind}:${template || ""}`}}, label);
      button.addEventListener("dragstart", ev => ev.dataTransfer.setData("text/plain", `${kind}:${template || ""}`));
      button.addEventListener("click", () => addNode(kind, template));
      return button;
    };
    kinds.replaceChildren(...palette.templates.map(t => item(`${t.name} VM${t.status === "built" ? "" : " (not built)"}`, "vm", t.name, t.description)),
      item("namespace host", "netns", "", "a network namespace on this host (root)"),
      item("segment (switch)", "segment", "", "one L2 broadcast domain with one subnet"));
    const select = document.getElementById("examples");
    select.append(...Object.keys(examples).map(name => el("option", {value: name}, name)));
    document.body.dataset.ready = "true";
  }).catch(error => log(`could not load the palette: ${error.message}`, "failed"));
})();
