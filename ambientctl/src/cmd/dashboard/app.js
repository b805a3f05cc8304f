// The dashboard page: polls /api/graph and draws the service graph as SVG (a layered
// layout: callers left of callees), plus tables of workloads, proxies and certificates.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const NODE_R = 22;
const COL_W = 260;
const ROW_H = 120;
const MARGIN_X = 90;
const MARGIN_Y = 60;

function svg(name, attrs, parent) {
  const e = document.createElementNS(SVGNS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (parent) parent.appendChild(e);
  return e;
}

function html(name, attrs, parent, text) {
  const e = document.createElement(name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

function num(x, digits) {
  if (x === null || x === undefined) return "–";
  if (x >= 100) return x.toFixed(0);
  if (x >= 10) return x.toFixed(1);
  return x.toFixed(digits === undefined ? 2 : digits);
}

function bytes(x) {
  if (x === null || x === undefined) return "–";
  const units = ["B", "kB", "MB", "GB"];
  let i = 0;
  while (x >= 1000 && i < units.length - 1) { x /= 1000; i++; }
  return num(x, 1) + " " + units[i];
}

function pct(x) {
  if (x === null || x === undefined) return "–";
  return (x * 100).toFixed(x < 0.1 ? 1 : 0) + "%";
}

function ms(x) {
  if (x === null || x === undefined) return "–";
  return num(x, 1) + " ms";
}

function duration(s) {
  if (s === null || s === undefined) return "–";
  const neg = s < 0;
  let a = Math.abs(s);
  let out;
  if (a >= 86400) out = Math.floor(a / 86400) + "d " + Math.floor((a % 86400) / 3600) + "h";
  else if (a >= 3600) out = Math.floor(a / 3600) + "h " + Math.floor((a % 3600) / 60) + "m";
  else if (a >= 60) out = Math.floor(a / 60) + "m " + (a % 60) + "s";
  else out = a + "s";
  return neg ? "expired " + out + " ago" : "in " + out;
}

function certClass(s) {
  if (s === null || s === undefined) return "";
  if (s < 0) return "expired";
  if (s < 3600) return "soon";
  return "";
}

// How busy and how healthy an edge is.
function edgeHealth(e) {
  const s = e.signals;
  const busy = (s.requests_per_second || 0) > 0 ||
    (s.bytes_sent_per_second || 0) + (s.bytes_received_per_second || 0) > 0;
  if (!busy) return "idle";
  const err = s.error_rate || 0;
  if (err >= 0.05) return "bad";
  if (err >= 0.01) return "warn";
  return "ok";
}

function edgeLabel(e) {
  const s = e.signals;
  const t = e.totals;
  const parts = [];
  if (s.requests_per_second !== null && s.requests_per_second !== undefined && s.requests_per_second > 0) {
    parts.push(num(s.requests_per_second) + " rps");
    parts.push(pct(s.error_rate) + " err");
    if (s.p99_ms !== null) parts.push("p99 " + ms(s.p99_ms));
  } else if ((s.bytes_sent_per_second || 0) + (s.bytes_received_per_second || 0) > 0) {
    parts.push(bytes(s.bytes_sent_per_second + s.bytes_received_per_second) + "/s");
    if (s.error_rate) parts.push(pct(s.error_rate) + " err");
  } else if (t.requests > 0) {
    parts.push("idle · " + t.requests.toFixed(0) + " req");
    if (t.p99_ms !== null) parts.push("p99 " + ms(t.p99_ms));
  } else {
    parts.push("idle · " + bytes(t.bytes_sent + t.bytes_received));
  }
  return parts.join(" · ");
}

// Layers: longest path from the callers, back edges (cycles) ignored.
function layout(nodes, edges) {
  const ids = nodes.map((n) => n.id);
  const out = new Map(ids.map((id) => [id, []]));
  const indeg = new Map(ids.map((id) => [id, 0]));
  for (const e of edges) {
    if (e.source === e.destination || !out.has(e.source) || !out.has(e.destination)) continue;
    out.get(e.source).push(e.destination);
    indeg.set(e.destination, indeg.get(e.destination) + 1);
  }
  const state = new Map();
  const back = new Set();
  const order = [...ids].sort((a, b) => (indeg.get(a) - indeg.get(b)) || a.localeCompare(b));
  const visit = (u) => {
    state.set(u, 1);
    for (const v of out.get(u)) {
      if (state.get(v) === 1) back.add(u + "\u0000" + v);
      else if (!state.get(v)) visit(v);
    }
    state.set(u, 2);
  };
  for (const id of order) if (!state.get(id)) visit(id);
  const layer = new Map(ids.map((id) => [id, 0]));
  for (let round = 0; round < ids.length; round++) {
    let changed = false;
    for (const [u, vs] of out) {
      for (const v of vs) {
        if (back.has(u + "\u0000" + v)) continue;
        if (layer.get(v) < layer.get(u) + 1) { layer.set(v, layer.get(u) + 1); changed = true; }
      }
    }
    if (!changed) break;
  }
  const columns = [];
  for (const id of ids) {
    const l = layer.get(id);
    (columns[l] = columns[l] || []).push(id);
  }
  const pos = new Map();
  const preds = new Map(ids.map((id) => [id, []]));
  for (const [u, vs] of out) for (const v of vs) preds.get(v).push(u);
  columns.forEach((col, l) => {
    const bary = (id) => {
      const ys = preds.get(id).filter((p) => pos.has(p)).map((p) => pos.get(p).y);
      return ys.length ? ys.reduce((a, b) => a + b, 0) / ys.length : Infinity;
    };
    col.sort((a, b) => (bary(a) - bary(b)) || a.localeCompare(b));
    col.forEach((id, i) => pos.set(id, { x: MARGIN_X + l * COL_W, y: MARGIN_Y + i * ROW_H, layer: l }));
  });
  const rows = Math.max(1, ...Array.from(columns, (c) => (c ? c.length : 0)));
  // Centre each column vertically.
  for (const col of columns) {
    if (!col) continue;
    const shift = ((rows - col.length) * ROW_H) / 2;
    for (const id of col) pos.get(id).y += shift;
  }
  return { pos, width: MARGIN_X * 2 + Math.max(0, columns.length - 1) * COL_W + 60, height: MARGIN_Y * 2 + (rows - 1) * ROW_H + 40 };
}

function drawLock(parent, x, y) {
  const g = svg("g", { class: "lock", transform: `translate(${x - 5},${y - 7})` }, parent);
  svg("circle", { cx: 5, cy: 7, r: 10, fill: "#fff", stroke: "none" }, g).setAttribute("class", "lock-bg");
  svg("path", { d: "M2 6 V4 a3 3 0 0 1 6 0 V6" }, g);
  svg("rect", { x: 0, y: 6, width: 10, height: 7, rx: 1 }, g);
  return g;
}

function drawGraph(graph) {
  const root = document.getElementById("graph");
  while (root.firstChild) root.removeChild(root.firstChild);
  const defs = svg("defs", {}, root);
  for (const h of ["ok", "warn", "bad", "idle"]) {
    const m = svg("marker", { id: "arrow-" + h, viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, defs);
    svg("path", { d: "M0 0 L10 5 L0 10 z", class: "arrow-" + h }, m);
  }
  if (!graph.nodes.length) {
    root.removeAttribute("viewBox");
    root.style.maxWidth = "";
    root.setAttribute("width", 600);
    root.setAttribute("height", 120);
    svg("text", { x: 20, y: 60, class: "empty" }, root).textContent =
      "No traffic seen yet: send some requests between the mesh's workloads.";
    return;
  }
  const { pos, width, height } = layout(graph.nodes, graph.edges);
  // Fit the panel's width (never larger than life).
  root.setAttribute("viewBox", `0 0 ${width} ${height}`);
  root.setAttribute("width", "100%");
  root.removeAttribute("height");
  root.style.maxWidth = width + "px";
  const edgeLayer = svg("g", { class: "edges" }, root);
  const nodeLayer = svg("g", { class: "nodes" }, root);

  for (const e of graph.edges) {
    const a = pos.get(e.source);
    const b = pos.get(e.destination);
    if (!a || !b) continue;
    const health = edgeHealth(e);
    const g = svg("g", {
      class: "edge " + health,
      "data-edge": e.id,
      "data-source": e.source,
      "data-destination": e.destination,
      "data-mtls": e.mtls ? "true" : "false",
      "data-protocol": e.protocol,
      "data-rps": e.signals.requests_per_second === null ? "" : e.signals.requests_per_second,
      "data-error-rate": e.signals.error_rate === null ? "" : e.signals.error_rate,
      "data-p99-ms": e.signals.p99_ms === null ? "" : e.signals.p99_ms,
    }, edgeLayer);
    if (e.via) g.setAttribute("data-via", e.via);
    let d;
    let mx;
    let my;
    if (e.source === e.destination) {
      d = `M${a.x - 10} ${a.y - NODE_R} C${a.x - 40} ${a.y - 80} ${a.x + 40} ${a.y - 80} ${a.x + 10} ${a.y - NODE_R}`;
      mx = a.x;
      my = a.y - 62;
    } else if (b.layer > a.layer) {
      const x1 = a.x + NODE_R, y1 = a.y, x2 = b.x - NODE_R - 2, y2 = b.y;
      const dx = (x2 - x1) / 2;
      d = `M${x1} ${y1} C${x1 + dx} ${y1} ${x2 - dx} ${y2} ${x2} ${y2}`;
      mx = (x1 + 3 * (x1 + dx) + 3 * (x2 - dx) + x2) / 8;
      my = (y1 + 3 * y1 + 3 * y2 + y2) / 8;
    } else {
      // Back or same-layer edge: an arc below both nodes.
      const x1 = a.x, y1 = a.y + NODE_R, x2 = b.x, y2 = b.y + NODE_R + 2;
      const low = Math.max(y1, y2) + 70;
      d = `M${x1} ${y1} C${x1} ${low} ${x2} ${low} ${x2} ${y2}`;
      mx = (x1 + 3 * x1 + 3 * x2 + x2) / 8;
      my = (y1 + 3 * low + 3 * low + y2) / 8;
    }
    const rps = e.signals.requests_per_second || 0;
    const widthPx = 1.5 + Math.min(4, Math.log10(1 + rps) * 1.5);
    svg("path", { d, class: "edge-path", "stroke-width": widthPx.toFixed(1), "marker-end": `url(#arrow-${health})` }, g);
    if (e.mtls) drawLock(g, mx, my);
    else svg("text", { x: mx, y: my + 4, "text-anchor": "middle", class: "nolock" }, g).textContent = "plain";
    svg("text", { x: mx, y: my - 13, "text-anchor": "middle", class: "edge-label" }, g).textContent = edgeLabel(e);
    if (e.via) {
      svg("text", { x: mx, y: my + 20, "text-anchor": "middle", class: "edge-via" }, g).textContent =
        "via " + e.via.split("/").pop();
    }
    const t = e.totals;
    svg("title", {}, g).textContent =
      `${e.source} → ${e.destination} (${e.protocol}${e.mtls ? ", mTLS" : ", plain text"}` +
      `${e.via ? ", via waypoint " + e.via : ""})\n` +
      `requests: ${num(e.signals.requests_per_second)}/s, errors ${pct(e.signals.error_rate)}, p99 ${ms(e.signals.p99_ms)}\n` +
      `bytes: ${bytes(e.signals.bytes_received_per_second)}/s →, ← ${bytes(e.signals.bytes_sent_per_second)}/s\n` +
      `since start: ${t.requests} requests, ${t.errors} errors, ${bytes(t.bytes_received)} →, ← ${bytes(t.bytes_sent)}`;
  }

  for (const n of graph.nodes) {
    const p = pos.get(n.id);
    const cert = certClass(n.certificate_expires_in_seconds);
    const g = svg("g", {
      class: "node " + n.kind + (cert ? " cert-" + cert : ""),
      "data-node": n.id,
      "data-kind": n.kind,
      transform: `translate(${p.x},${p.y})`,
    }, nodeLayer);
    if (n.kind === "service") {
      svg("rect", { x: -NODE_R, y: -NODE_R, width: 2 * NODE_R, height: 2 * NODE_R, rx: 8, class: "node-shape service" }, g);
    } else if (n.kind === "unknown") {
      svg("rect", { x: -NODE_R, y: -NODE_R, width: 2 * NODE_R, height: 2 * NODE_R, class: "node-shape unknown" }, g);
    } else {
      svg("circle", { r: NODE_R, class: "node-shape " + n.kind }, g);
    }
    svg("text", { y: 4, "text-anchor": "middle", class: "node-ns" }, g).textContent =
      n.workloads.length > 1 ? "×" + n.workloads.length : "";
    svg("text", { y: NODE_R + 14, "text-anchor": "middle", class: "node-name" }, g).textContent = n.name;
    svg("text", { y: NODE_R + 26, "text-anchor": "middle", class: "node-ns" }, g).textContent = n.namespace;
    const s = n.signals;
    const stats = [];
    if (s.requests_per_second) stats.push(num(s.requests_per_second) + " rps in");
    if (s.p99_ms !== null && s.p99_ms !== undefined) stats.push("p99 " + ms(s.p99_ms));
    if (n.certificate_expires_in_seconds !== undefined && n.certificate_expires_in_seconds !== null) {
      stats.push("cert " + duration(n.certificate_expires_in_seconds));
    }
    svg("text", { y: NODE_R + 38, "text-anchor": "middle", class: "node-stats" }, g).textContent = stats.join(" · ");
    svg("title", {}, g).textContent =
      `${n.id} (${n.kind})\nworkloads: ${n.workloads.join(", ") || "–"}\n` +
      `services: ${n.services.join(", ") || "–"}\nidentities: ${n.principals.join(", ") || "–"}`;
  }
}

function drawTables(graph) {
  const wl = document.querySelector("#workloads tbody");
  wl.textContent = "";
  for (const w of graph.workloads) {
    const tr = html("tr", { "data-workload": w.id }, wl);
    const s = w.signals;
    html("td", {}, tr, w.id);
    const rate = s.requests_per_second !== null && s.requests_per_second !== undefined
      ? num(s.requests_per_second) + " rps"
      : (s.bytes_sent_per_second !== null && s.bytes_sent_per_second !== undefined
        ? bytes((s.bytes_sent_per_second || 0) + (s.bytes_received_per_second || 0)) + "/s"
        : "–");
    html("td", { class: "num" }, tr, rate);
    html("td", { class: "num" }, tr, pct(s.error_rate));
    html("td", { class: "num" }, tr, ms(s.p99_ms));
    const exp = w.certificate ? w.certificate.expires_in_seconds : null;
    html("td", { class: "num " + certClass(exp) }, tr, duration(exp));
  }

  const px = document.querySelector("#proxies tbody");
  px.textContent = "";
  for (const p of graph.proxies) {
    const tr = html("tr", { "data-proxy": p.id, "data-reachable": p.reachable ? "true" : "false" }, px);
    html("td", {}, tr, p.id);
    const state = html("td", {}, tr, p.reachable ? "up" : "unreachable");
    if (p.error) html("div", { class: "err" }, state, p.error);
    if (p.certificates_error) html("div", { class: "err" }, state, "certificates: " + p.certificates_error);
    html("td", { class: "num" }, tr, p.series);
  }

  const cs = document.querySelector("#certificates tbody");
  cs.textContent = "";
  for (const c of graph.certificates) {
    const tr = html("tr", { "data-identity": c.identity }, cs);
    html("td", {}, tr, c.identity.replace(/^spiffe:\/\/[^/]+\//, ""));
    html("td", {}, tr, c.node);
    html("td", {}, tr, c.state);
    html("td", { class: "num " + certClass(c.expires_in_seconds) }, tr, duration(c.expires_in_seconds));
  }

  const alerts = document.getElementById("alerts");
  alerts.textContent = "";
  if (graph.error) html("div", { class: "alert", "data-error": "discovery" }, alerts, graph.error);
  for (const p of graph.proxies) {
    if (!p.reachable) {
      html("div", { class: "alert unreachable", "data-unreachable": p.id }, alerts,
        `${p.id} is unreachable: ${p.error || "no answer"}`);
    }
  }
}

function setStatus(text, state) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.setAttribute("data-state", state);
}

let intervalMs = 2000;

async function poll() {
  try {
    const r = await fetch("/api/graph", { cache: "no-store" });
    const graph = await r.json();
    if (!r.ok) {
      setStatus(graph.error || "waiting for the first scrape", "loading");
    } else {
      intervalMs = Math.max(500, (graph.interval_seconds || 2) * 1000);
      drawGraph(graph);
      drawTables(graph);
      const when = new Date(graph.generated_at * 1000).toLocaleTimeString();
      const down = graph.proxies.filter((p) => !p.reachable).length;
      const window = graph.window_seconds ? `rates over ${graph.window_seconds.toFixed(1)} s` : "rates after the next scrape";
      setStatus(`${graph.source} mesh · ${graph.proxies.length} proxies` +
        (down ? ` (${down} unreachable)` : "") + ` · ${window} · updated ${when}`, down ? "error" : "ok");
      document.body.setAttribute("data-rounds", graph.rounds);
    }
  } catch (e) {
    setStatus("dashboard server unreachable: " + e, "error");
  }
  setTimeout(poll, intervalMs);
}

poll();
