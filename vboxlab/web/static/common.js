/* vboxlab dashboard: helpers shared by the pages (no framework, no build step). */
"use strict";

const VBL = (() => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const SVG = "http://www.w3.org/2000/svg";

  /** An element with attributes and children; text is always set as text, never as HTML. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  /** A line in the action log (bottom right): what was done and how it ended. */
  function log(text, kind) {
    const list = document.getElementById("log");
    const item = el("li", {class: kind || ""}, text);
    list.append(item);
    setTimeout(() => item.remove(), kind === "failed" ? 15000 : 6000);
    return item;
  }

  async function request(method, url, body) {
    const options = {method, headers: {"Accept": "application/json"}, credentials: "same-origin"};
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.headers["X-CSRF-Token"] = csrf;
      options.body = JSON.stringify(body);
    }
    const response = await fetch(url, options);
    const text = await response.text();
    let data;
    try { data = JSON.parse(text); } catch (e) { data = {error: text.trim()}; }
    if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
    return data;
  }

  /** Run an action on a lab; the button shows progress, the log shows the result or vboxlab's error. */
  async function act(lab, action, args, button, label) {
    const what = label || `${lab}: ${action}`;
    const before = button ? button.textContent : "";
    if (button) { button.disabled = true; button.textContent = before + "…"; }
    const pending = log(`${what}…`);
    try {
      const data = await request("POST", `/api/labs/${encodeURIComponent(lab)}/action`,
                                 {action, args: args || {}});
      pending.remove();
      log(`${what}: done`, "ok");
      return data.result;
    } catch (error) {
      pending.remove();
      log(`${what} failed: ${error.message}`, "failed");
      throw error;
    } finally {
      if (button) { button.disabled = false; button.textContent = before; }
    }
  }

  function bytes(value) {
    if (value === null || value === undefined) return "-";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let n = value, i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(n < 10 && i ? 1 : 0)} ${units[i]}`;
  }

  function uptime(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    const s = Math.floor(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    return h ? `${h}h${String(m).padStart(2, "0")}m` : `${m}m${String(s % 60).padStart(2, "0")}s`;
  }

  /** A small SVG line chart of the values (the last 10 minutes), drawn by us. */
  function sparkline(values, width, height, max) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("width", width); svg.setAttribute("height", height);
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const clean = values.map(v => (typeof v === "number" && isFinite(v)) ? v : 0);
    const top = Math.max(max || 0, ...clean, 1e-9);
    const step = clean.length > 1 ? width / (clean.length - 1) : width;
    const points = clean.map((v, i) => `${(i * step).toFixed(1)},${(height - 1 - (v / top) * (height - 2)).toFixed(1)}`);
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.join(" ") || `0,${height - 1} ${width},${height - 1}`);
    line.setAttribute("fill", "none"); line.setAttribute("stroke", "#1565c0"); line.setAttribute("stroke-width", "1.5");
    svg.append(line);
    return svg;
  }

  return {el, log, request, act, bytes, uptime, sparkline, csrf};
})();
