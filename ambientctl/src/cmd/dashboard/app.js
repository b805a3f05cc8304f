// The dashboard page: polls /api/graph and draws the service graph as SVG (view.js decides
// what is shown and where: callers left of callees, one box per namespace), plus tables of
// workloads, proxies and certificates.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";

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

function drawLock(parent, x, y) {
  const g = svg("g", { class: "lock", transform: `translate(${x - 5},${y - 7})` }, parent);
  svg("circle", { cx: 5, cy: 7, r: 10, fill: "#fff", stroke: "none" }, g).setAttribute("class", "lock-bg");
  svg("path", { d: "M2 6 V4 a3 3 0 0 1 6 0 V6" }, g);
  svg("rect", { x: 0, y: 6, width: 10, height: 7, rx: 1 }, g);
  return g;
}

// Where an edge runs: a curve from caller to callee, and the point its label sits on.
function edgeGeometry(e, a, b, r) {
  if (e.source === e.destination) {
    // A loop on the node's outer side (up, unless the layout says which way is out).
    const out = a.outward === undefined ? -Math.PI / 2 : a.outward;
    const at = (angle, dist) => [a.x + dist * Math.cos(angle), a.y + dist * Math.sin(angle)];
    const [x1, y1] = at(out - 0.45, r);
    const [c1x, c1y] = at(out - 0.7, r * 3.4);
    const [c2x, c2y] = at(out + 0.7, r * 3.4);
    const [x2, y2] = at(out + 0.45, r + 2);
    const [mx, my] = at(out, r * 2.8);
    return {
      d: `M${x1.toFixed(1)} ${y1.toFixed(1)} C${c1x.toFixed(1)} ${c1y.toFixed(1)} ${c2x.toFixed(1)} ${c2y.toFixed(1)} ${x2.toFixed(1)} ${y2.toFixed(1)}`,
      mx,
      my,
    };
  }
  if (a.box === b.box && b.layer > a.layer) {
    // Forward in its layout: left to right.
    const x1 = a.x + r, y1 = a.y, x2 = b.x - r - 2, y2 = b.y;
    const dx = (x2 - x1) / 2;
    return {
      d: `M${x1} ${y1} C${x1 + dx} ${y1} ${x2 - dx} ${y2} ${x2} ${y2}`,
      mx: (x1 + 3 * (x1 + dx) + 3 * (x2 - dx) + x2) / 8,
      my: (y1 + 3 * y1 + 3 * y2 + y2) / 8,
    };
  }
  if (a.box === b.box) {
    // Back or same-layer edge: an arc below both nodes.
    const x1 = a.x, y1 = a.y + r, x2 = b.x, y2 = b.y + r + 2;
    const low = Math.max(y1, y2) + r * 3;
    return {
      d: `M${x1} ${y1} C${x1} ${low} ${x2} ${low} ${x2} ${y2}`,
      mx: (x1 + 3 * x1 + 3 * x2 + x2) / 8,
      my: (y1 + 3 * low + 3 * low + y2) / 8,
    };
  }
  // Between namespace boxes: a gentle bend, to its right as it goes, so that the two
  // directions between the same pair do not overlap.
  const dx = b.x - a.x;
  const dy = b.y - a.y;
  const len = Math.hypot(dx, dy) || 1;
  const bend = Math.min(70, len * 0.12);
  const cx = (a.x + b.x) / 2 - (dy / len) * bend;
  const cy = (a.y + b.y) / 2 + (dx / len) * bend;
  const toward = (p, gap) => {
    const vx = cx - p.x;
    const vy = cy - p.y;
    const l = Math.hypot(vx, vy) || 1;
    return { x: p.x + (vx / l) * gap, y: p.y + (vy / l) * gap };
  };
  const s = toward(a, r);
  const t = toward(b, r + 2);
  return {
    d: `M${s.x.toFixed(1)} ${s.y.toFixed(1)} Q${cx.toFixed(1)} ${cy.toFixed(1)} ${t.x.toFixed(1)} ${t.y.toFixed(1)}`,
    mx: 0.25 * s.x + 0.5 * cx + 0.25 * t.x,
    my: 0.25 * s.y + 0.5 * cy + 0.25 * t.y,
  };
}

function edgeTitle(e) {
  const t = e.totals;
  const merged = e.members ? `${e.members.length} edges: ` : "";
  return `${merged}${e.source} → ${e.destination} (${e.protocol}${e.mtls ? ", mTLS" : ", plain text"}` +
    `${e.via ? ", via waypoint " + e.via : ""})\n` +
    `requests: ${num(e.signals.requests_per_second)}/s, errors ${pct(e.signals.error_rate)}, p99 ${ms(e.signals.p99_ms)}\n` +
    `bytes: ${bytes(e.signals.bytes_received_per_second)}/s →, ← ${bytes(e.signals.bytes_sent_per_second)}/s\n` +
    `since start: ${t.requests} requests, ${t.errors} errors, ${bytes(t.bytes_received)} →, ← ${bytes(t.bytes_sent)}`;
}

function drawEdge(e, a, b, r, view, parent) {
  const health = edgeHealth(e);
  const lit = view.focus && (e.source === view.focus || e.destination === view.focus);
  const cross = view.boxes.length > 0 && a.box !== b.box;
  const tcpRate = e.signals.bytes_sent_per_second === null && e.signals.bytes_received_per_second === null
    ? "" : (e.signals.bytes_sent_per_second || 0) + (e.signals.bytes_received_per_second || 0);
  const g = svg("g", {
    class: "edge " + health + (lit ? " hl" : "") + (cross ? " cross" : ""),
    "data-edge": e.id,
    "data-source": e.source,
    "data-destination": e.destination,
    "data-mtls": e.mtls ? "true" : "false",
    "data-protocol": e.protocol,
    "data-rps": e.signals.requests_per_second === null ? "" : e.signals.requests_per_second,
    "data-error-rate": e.signals.error_rate === null ? "" : e.signals.error_rate,
    "data-p99-ms": e.signals.p99_ms === null ? "" : e.signals.p99_ms,
    "data-bytes-per-second": tcpRate,
  }, parent);
  if (e.via) g.setAttribute("data-via", e.via);
  if (e.members) g.setAttribute("data-members", e.members.length);
  const { d, mx, my } = edgeGeometry(e, a, b, r);
  const rps = e.signals.requests_per_second || 0;
  const widthPx = (view.dense ? 1 : 1.5) + Math.min(4, Math.log10(1 + rps) * 1.5);
  svg("path", { d, class: "edge-path", "stroke-width": widthPx.toFixed(1), "marker-end": `url(#arrow-${health})` }, g);
  // Plain text is always called out; locks, labels and waypoints are details that a dense
  // graph shows on the focused or hovered node's edges only (style.css).
  if (e.mtls) drawLock(g, mx, my);
  else svg("text", { x: mx, y: my + 4, "text-anchor": "middle", class: "nolock" }, g).textContent = "plain";
  svg("text", { x: mx, y: my - 13, "text-anchor": "middle", class: "edge-label" }, g).textContent = edgeLabel(e);
  if (e.via) {
    svg("text", { x: mx, y: my + 20, "text-anchor": "middle", class: "edge-via" }, g).textContent =
      "via " + e.via.split("/").pop();
  }
  svg("title", {}, g).textContent = edgeTitle(e);
}

function drawNode(n, p, r, view, parent) {
  const cert = certClass(n.certificate_expires_in_seconds);
  const lit = view.focus === n.id;
  const g = svg("g", {
    class: "node " + n.kind + (cert ? " cert-" + cert : "") + (lit ? " hl focus" : "") +
      (view.context.has(n.id) ? " context" : ""),
    "data-node": n.id,
    "data-kind": n.kind,
    "data-namespace": n.namespace,
    transform: `translate(${p.x},${p.y})`,
  }, parent);
  if (n.kind === "namespace") {
    // A collapsed namespace: a stack of cards.
    for (const off of [6, 3]) {
      svg("rect", { x: -r * 1.6 + off, y: -r - off, width: 3.2 * r, height: 2 * r, rx: 6, class: "node-shape namespace behind" }, g);
    }
    svg("rect", { x: -r * 1.6, y: -r, width: 3.2 * r, height: 2 * r, rx: 6, class: "node-shape namespace" }, g);
  } else if (n.kind === "service") {
    svg("rect", { x: -r, y: -r, width: 2 * r, height: 2 * r, rx: 8, class: "node-shape service" }, g);
  } else if (n.kind === "unknown") {
    svg("rect", { x: -r, y: -r, width: 2 * r, height: 2 * r, class: "node-shape unknown" }, g);
  } else {
    svg("circle", { r, class: "node-shape " + n.kind }, g);
  }
  const count = n.kind === "namespace" ? n.members.length : n.workloads.length;
  svg("text", { y: 4, "text-anchor": "middle", class: "node-ns" }, g).textContent = count > 1 ? "×" + count : "";
  svg("text", { y: r + 14, "text-anchor": "middle", class: "node-name" }, g).textContent = n.name;
  let line = r + 26;
  // In a namespace's box the box says the namespace.
  if (p.box === null && n.kind !== "namespace") {
    svg("text", { y: line, "text-anchor": "middle", class: "node-ns" }, g).textContent = n.namespace;
    line += 12;
  }
  const s = n.signals;
  const stats = [];
  if (s.requests_per_second) stats.push(num(s.requests_per_second) + " rps in");
  if (s.p99_ms !== null && s.p99_ms !== undefined) stats.push("p99 " + ms(s.p99_ms));
  if (n.certificate_expires_in_seconds !== undefined && n.certificate_expires_in_seconds !== null) {
    stats.push("cert " + duration(n.certificate_expires_in_seconds));
  }
  svg("text", { y: line, "text-anchor": "middle", class: "node-stats" }, g).textContent = stats.join(" · ");
  const members = n.kind === "namespace" ? `\nmembers: ${n.members.join(", ")}` : "";
  svg("title", {}, g).textContent =
    `${n.id} (${n.kind})${members}\nworkloads: ${n.workloads.join(", ") || "–"}\n` +
    `services: ${n.services.join(", ") || "–"}\nidentities: ${n.principals.join(", ") || "–"}` +
    (n.kind === "namespace" ? "\n(click to expand)" : "\n(click to focus)");
}

function drawBox(b, parent) {
  const g = svg("g", {
    class: "ns-box",
    "data-box": b.key || View.OUTSIDE,
    "data-box-x": b.x,
    "data-box-y": b.y,
    "data-box-w": b.w,
    "data-box-h": b.h,
  }, parent);
  svg("rect", { x: b.x, y: b.y, width: b.w, height: b.h, rx: 10, class: "ns-box-shape" }, g);
  const title = svg("text", { x: b.x + 12, y: b.y + 18, class: "ns-box-title" }, g);
  title.textContent = `${b.label} · ${b.count}`;
  svg("title", {}, g).textContent = `namespace ${b.label}: ${b.count} nodes (click the title to collapse)`;
}

// Lights a node's edges and neighbours while the pointer is on it.
function hover(root, id, on) {
  root.classList.toggle("hovering", on);
  for (const e of root.querySelectorAll(".edge")) {
    const touches = e.dataset.source === id || e.dataset.destination === id;
    e.classList.toggle("hover", on && touches);
    if (on && touches) {
      for (const end of [e.dataset.source, e.dataset.destination]) {
        const n = root.querySelector(`.node[data-node="${CSS.escape(end)}"]`);
        if (n) n.classList.add("hover");
      }
    }
  }
  if (!on) for (const n of root.querySelectorAll(".node.hover")) n.classList.remove("hover");
}

let view = View.parse(location.hash);
let lastGraph = null;

function setView(change) {
  view = Object.assign({}, view, change);
  const hash = View.format(view);
  history.replaceState(null, "", hash || location.pathname);
  if (lastGraph) draw(lastGraph);
}

window.addEventListener("hashchange", () => {
  view = View.parse(location.hash);
  if (lastGraph) draw(lastGraph);
});

function drawGraph(graph) {
  const root = document.getElementById("graph");
  while (root.firstChild) root.removeChild(root.firstChild);
  const defs = svg("defs", {}, root);
  for (const h of ["ok", "warn", "bad", "idle"]) {
    const m = svg("marker", { id: "arrow-" + h, viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" }, defs);
    svg("path", { d: "M0 0 L10 5 L0 10 z", class: "arrow-" + h }, m);
  }
  const v = View.compute(graph, view);
  v.focus = view.focus;
  root.classList.toggle("dense", v.dense);
  root.classList.toggle("many", v.many);
  root.classList.toggle("focused", !!view.focus);
  document.querySelector("main").classList.toggle("stacked", v.many);
  drawToolbar(v);
  if (!v.nodes.length) {
    root.removeAttribute("viewBox");
    root.style.maxWidth = "";
    root.setAttribute("width", 600);
    root.setAttribute("height", 120);
    svg("text", { x: 20, y: 60, class: "empty" }, root).textContent = graph.nodes.length
      ? "Nothing matches the filter."
      : "No traffic seen yet: send some requests between the mesh's workloads.";
    return;
  }
  // Fit the panel's width (never larger than life).
  root.setAttribute("viewBox", `0 0 ${v.width} ${v.height}`);
  root.setAttribute("width", "100%");
  root.removeAttribute("height");
  root.style.maxWidth = v.width + "px";
  const boxLayer = svg("g", { class: "boxes" }, root);
  const edgeLayer = svg("g", { class: "edges" }, root);
  const nodeLayer = svg("g", { class: "nodes" }, root);
  for (const b of v.boxes) if (!b.bare) drawBox(b, boxLayer);
  for (const e of v.edges) {
    const a = v.pos.get(e.source);
    const b = v.pos.get(e.destination);
    if (a && b) drawEdge(e, a, b, v.size.r, v, edgeLayer);
  }
  for (const n of v.nodes) drawNode(n, v.pos.get(n.id), v.size.r, v, nodeLayer);

  for (const el of nodeLayer.querySelectorAll(".node")) {
    const id = el.dataset.node;
    el.addEventListener("mouseenter", () => hover(root, id, true));
    el.addEventListener("mouseleave", () => hover(root, id, false));
    el.addEventListener("click", () => {
      if (el.dataset.kind === "namespace") {
        const ns = el.dataset.namespace || View.OUTSIDE;
        // Expand it: in the namespace view, by looking at it alone.
        if (view.group === "namespace") setView({ group: "workload", namespaces: [ns], focus: "" });
        else setView({ collapsed: view.collapsed.filter((c) => c !== ns) });
      } else {
        setView({ focus: view.focus === id ? "" : id });
      }
    });
  }
  for (const el of boxLayer.querySelectorAll(".ns-box")) {
    el.querySelector(".ns-box-title").addEventListener("click", () => {
      setView({ collapsed: [...view.collapsed, el.dataset.box] });
    });
  }
}

// The toolbar shows the view and changes it.
function drawToolbar(v) {
  document.getElementById("view-group").value = view.group;
  const q = document.getElementById("view-query");
  if (document.activeElement !== q) q.value = view.query;
  document.getElementById("view-idle").checked = view.hideIdle;
  const chips = document.getElementById("view-namespaces");
  chips.textContent = "";
  for (const ns of v.namespaces) {
    const on = view.namespaces.includes(ns);
    const c = html("button", { type: "button", class: "chip" + (on ? " on" : ""), "data-chip": ns }, chips, ns);
    c.addEventListener("click", () => {
      setView({ namespaces: on ? view.namespaces.filter((x) => x !== ns) : [...view.namespaces, ns], focus: "" });
    });
  }
  const focus = document.getElementById("view-focus");
  focus.textContent = "";
  if (view.focus) {
    html("span", {}, focus, "focus: " + view.focus + " ");
    html("button", { type: "button", class: "chip on", title: "show everything" }, focus, "✕")
      .addEventListener("click", () => setView({ focus: "" }));
  }
  if (view.collapsed.length) {
    html("button", { type: "button", class: "chip", title: "expand every namespace" }, focus, "expand all")
      .addEventListener("click", () => setView({ collapsed: [] }));
  }
  document.getElementById("view-count").textContent =
    `${v.nodes.length} nodes, ${v.edges.length} edges drawn (mesh: ${v.totalNodes} nodes, ${v.totalEdges} edges)`;
}

function wireToolbar() {
  document.getElementById("view-group").addEventListener("change", (ev) => setView({ group: ev.target.value, focus: "" }));
  document.getElementById("view-query").addEventListener("input", (ev) => setView({ query: ev.target.value.trim(), focus: "" }));
  document.getElementById("view-idle").addEventListener("change", (ev) => setView({ hideIdle: ev.target.checked }));
}

function drawTables(graph) {
  const wl = document.querySelector("#workloads tbody");
  wl.textContent = "";
  const q = view.query.toLowerCase();
  for (const w of graph.workloads) {
    // The rows of the namespaces and names the graph is filtered to.
    if (view.namespaces.length && !view.namespaces.includes(w.namespace)) continue;
    if (q && !w.id.toLowerCase().includes(q)) continue;
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
      draw(graph);
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

function draw(graph) {
  lastGraph = graph;
  drawGraph(graph);
  drawTables(graph);
}

wireToolbar();
poll();
