// What the service graph shows and where: the view the toolbar and the address's #fragment
// ask for (filters, grouping by namespace, a focused node), applied to /api/graph's nodes and
// edges, and the layout. No DOM here; app.js draws the result.
"use strict";

const View = (() => {
  // Past these, the graph is drawn compact: smaller nodes, edge labels only on the focused
  // or hovered node's edges, tables under the graph rather than beside it.
  const DENSE_NODES = 24;
  const DENSE_EDGES = 20;

  const SIZES = {
    roomy: { r: 22, col: 260, row: 120 },
    dense: { r: 14, col: 150, row: 64 },
  };
  // Inside a namespace box: room for its title above and the node names below.
  const BOX_PAD = { x: 46, top: 40, bottom: 40 };
  const BOX_GAP = 36;
  const MARGIN = { x: 90, y: 60 };
  // Boxes are packed in rows aiming at this width-to-height ratio (a landscape screen).
  const ASPECT = 2.4;
  const OUTSIDE = "outside the mesh";

  // --- The view state, kept in location.hash ---------------------------------------------

  function parse(hash) {
    const p = new URLSearchParams((hash || "").replace(/^#/, ""));
    const list = (k) => (p.get(k) || "").split(",").map((s) => s.trim()).filter(Boolean);
    return {
      group: p.get("group") === "namespace" ? "namespace" : "workload",
      namespaces: list("ns"),
      query: (p.get("q") || "").trim(),
      focus: (p.get("focus") || "").trim(),
      hideIdle: p.get("idle") === "hide",
      collapsed: list("collapsed"),
    };
  }

  function format(v) {
    const p = new URLSearchParams();
    if (v.group === "namespace") p.set("group", "namespace");
    if (v.namespaces.length) p.set("ns", v.namespaces.join(","));
    if (v.query) p.set("q", v.query);
    if (v.focus) p.set("focus", v.focus);
    if (v.hideIdle) p.set("idle", "hide");
    if (v.collapsed.length) p.set("collapsed", v.collapsed.join(","));
    const s = p.toString();
    return s ? "#" + s : "";
  }

  // --- Filtering -------------------------------------------------------------------------

  function busy(e) {
    const s = e.signals;
    return (s.requests_per_second || 0) > 0 ||
      (s.bytes_sent_per_second || 0) + (s.bytes_received_per_second || 0) > 0;
  }

  // The namespace box a node belongs in ("" for traffic from or to outside the mesh).
  function namespaceOf(n) {
    return n.namespace || "";
  }

  // The nodes asked for (namespaces, text, focus), their direct neighbours as context, and
  // the edges touching an asked-for node.
  function filter(graph, v) {
    const byId = new Map(graph.nodes.map((n) => [n.id, n]));
    let edges = graph.edges.filter((e) => byId.has(e.source) && byId.has(e.destination));
    if (v.hideIdle) edges = edges.filter(busy);
    const q = v.query.toLowerCase();
    let core;
    if (v.focus && byId.has(v.focus)) {
      core = new Set([v.focus]);
    } else if (v.namespaces.length || q) {
      core = new Set(graph.nodes
        .filter((n) => !v.namespaces.length || v.namespaces.includes(namespaceOf(n) || OUTSIDE))
        .filter((n) => !q || n.id.toLowerCase().includes(q))
        .map((n) => n.id));
    } else {
      return { nodes: graph.nodes, edges, context: new Set() };
    }
    edges = edges.filter((e) => core.has(e.source) || core.has(e.destination));
    const keep = new Set(core);
    for (const e of edges) {
      keep.add(e.source);
      keep.add(e.destination);
    }
    const context = new Set([...keep].filter((id) => !core.has(id)));
    return { nodes: graph.nodes.filter((n) => keep.has(n.id)), edges, context };
  }

  // --- Grouping: a collapsed namespace is one node, its edges summed -----------------------

  function namespaceNodeId(ns) {
    return "namespace:" + (ns || OUTSIDE);
  }

  // Combines two values that may be missing (null or undefined): `f` of both, else whichever
  // is there, else null.
  function combine(f, a, b) {
    const missing = (x) => x === null || x === undefined;
    if (missing(a)) return missing(b) ? null : b;
    if (missing(b)) return a;
    return f(a, b);
  }
  const sumOrNull = (a, b) => combine((x, y) => x + y, a, b);
  const maxOrNull = (a, b) => combine(Math.max, a, b);
  const minOrNull = (a, b) => combine(Math.min, a, b);

  // Adds one edge's or node's signals into an aggregate: rates summed, the error rate
  // weighted by requests, p99 the worst (a sum of histograms is not at hand here).
  function addSignals(into, s) {
    const rps = s.requests_per_second || 0;
    into._errors = (into._errors || 0) + (s.error_rate || 0) * rps;
    into.requests_per_second = sumOrNull(into.requests_per_second, s.requests_per_second);
    into.bytes_sent_per_second = sumOrNull(into.bytes_sent_per_second, s.bytes_sent_per_second);
    into.bytes_received_per_second = sumOrNull(into.bytes_received_per_second, s.bytes_received_per_second);
    into.p99_ms = maxOrNull(into.p99_ms, s.p99_ms);
    into.error_rate = into.requests_per_second ? into._errors / into.requests_per_second : null;
  }

  function addTotals(into, t) {
    for (const k of ["requests", "errors", "bytes_sent", "bytes_received"]) {
      into[k] = (into[k] || 0) + (t[k] || 0);
    }
    into.p99_ms = maxOrNull(into.p99_ms, t.p99_ms);
  }

  function group(nodes, edges, v) {
    const collapse = (ns) => v.group === "namespace" || v.collapsed.includes(ns || OUTSIDE);
    const drawnId = new Map();
    const drawn = new Map();
    for (const n of nodes) {
      const ns = namespaceOf(n);
      if (!collapse(ns)) {
        drawnId.set(n.id, n.id);
        drawn.set(n.id, n);
        continue;
      }
      const id = namespaceNodeId(ns);
      drawnId.set(n.id, id);
      let g = drawn.get(id);
      if (!g) {
        g = {
          id, kind: "namespace", namespace: ns, name: ns || OUTSIDE, members: [],
          workloads: [], services: [], principals: [], signals: {}, totals: {},
          certificate_expires_in_seconds: null,
        };
        drawn.set(id, g);
      }
      g.members.push(n.id);
      g.workloads.push(...n.workloads);
      g.services.push(...n.services);
      g.principals.push(...n.principals);
      addSignals(g.signals, n.signals);
      addTotals(g.totals, n.totals);
      g.certificate_expires_in_seconds =
        minOrNull(g.certificate_expires_in_seconds, n.certificate_expires_in_seconds);
    }
    const merged = new Map();
    for (const e of edges) {
      const source = drawnId.get(e.source);
      const destination = drawnId.get(e.destination);
      if (source === e.source && destination === e.destination) {
        merged.set(e.id, e);
        continue;
      }
      const id = source + "->" + destination;
      let m = merged.get(id);
      if (!m) {
        m = {
          id, source, destination, protocol: e.protocol, mtls: true, via: e.via, members: [],
          signals: {}, totals: {},
        };
        merged.set(id, m);
      }
      m.members.push(e.id);
      m.mtls = m.mtls && e.mtls;
      if (m.protocol !== e.protocol) m.protocol = "mixed";
      if (m.via !== e.via) m.via = undefined;
      addSignals(m.signals, e.signals);
      addTotals(m.totals, e.totals);
    }
    return { nodes: [...drawn.values()], edges: [...merged.values()] };
  }

  // --- Layout ------------------------------------------------------------------------------

  // Layers by longest path from the callers, back edges (cycles) ignored; in each layer,
  // nodes ordered by their callers' mean position (fewer crossings). Positions relative to
  // the first node's centre.
  function layered(ids, edges, size) {
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
      for (const w of out.get(u)) {
        if (state.get(w) === 1) back.add(u + "\u0000" + w);
        else if (!state.get(w)) visit(w);
      }
      state.set(u, 2);
    };
    for (const id of order) if (!state.get(id)) visit(id);
    const layer = new Map(ids.map((id) => [id, 0]));
    for (let round = 0; round < ids.length; round++) {
      let changed = false;
      for (const [u, ws] of out) {
        for (const w of ws) {
          if (back.has(u + "\u0000" + w)) continue;
          if (layer.get(w) < layer.get(u) + 1) {
            layer.set(w, layer.get(u) + 1);
            changed = true;
          }
        }
      }
      if (!changed) break;
    }
    const columns = [];
    for (const id of ids) {
      const l = layer.get(id);
      (columns[l] = columns[l] || []).push(id);
    }
    const preds = new Map(ids.map((id) => [id, []]));
    for (const [u, ws] of out) for (const w of ws) preds.get(w).push(u);
    const pos = new Map();
    columns.forEach((col, l) => {
      const bary = (id) => {
        const ys = preds.get(id).filter((p) => pos.has(p)).map((p) => pos.get(p).y);
        return ys.length ? ys.reduce((a, b) => a + b, 0) / ys.length : Infinity;
      };
      col.sort((a, b) => (bary(a) - bary(b)) || a.localeCompare(b));
      col.forEach((id, i) => pos.set(id, { x: l * size.col, y: i * size.row, layer: l }));
    });
    const rows = Math.max(1, ...Array.from(columns, (c) => (c ? c.length : 0)));
    // Centre each column vertically.
    for (const col of columns) {
      if (!col) continue;
      const shift = ((rows - col.length) * size.row) / 2;
      for (const id of col) pos.get(id).y += shift;
    }
    return {
      pos,
      width: Math.max(0, columns.length - 1) * size.col,
      height: (rows - 1) * size.row,
    };
  }

  // Namespaces alone call each other every which way: a circle, each node its own "box" so
  // that every edge is drawn as a bent chord (both directions apart).
  function circle(nodes, size) {
    const radius = Math.max(150, (nodes.length * size.col) / (2 * Math.PI));
    const pos = new Map();
    const ids = nodes.map((n) => n.id).sort();
    ids.forEach((id, i) => {
      const angle = -Math.PI / 2 + (2 * Math.PI * i) / ids.length;
      pos.set(id, {
        x: MARGIN.x + radius + radius * Math.cos(angle),
        y: MARGIN.y + radius + radius * Math.sin(angle),
        layer: 0,
        box: id,
        outward: angle,
      });
    });
    return {
      pos, boxes: [], size,
      width: 2 * (MARGIN.x + radius), height: 2 * (MARGIN.y + radius),
    };
  }

  // Boxes when more than one namespace is drawn expanded; a circle of namespaces when only
  // namespaces are; otherwise one layered layout. Returns node positions (absolute), the
  // boxes, and the drawing's size.
  function layout(nodes, edges, dense) {
    const size = dense ? SIZES.dense : SIZES.roomy;
    if (nodes.length >= 3 && nodes.every((n) => n.kind === "namespace")) return circle(nodes, size);
    const expanded = new Set(nodes.filter((n) => n.kind !== "namespace").map(namespaceOf));
    if (expanded.size < 2) {
      const l = layered(nodes.map((n) => n.id), edges, size);
      for (const p of l.pos.values()) {
        p.x += MARGIN.x;
        p.y += MARGIN.y;
        p.box = null;
      }
      return {
        pos: l.pos, boxes: [], size,
        width: MARGIN.x * 2 + l.width + 60, height: MARGIN.y * 2 + l.height + 40,
      };
    }

    // One box per namespace (a collapsed namespace is a box of its own node, drawn bare).
    const members = new Map();
    for (const n of nodes) {
      const key = n.kind === "namespace" ? n.id : namespaceOf(n);
      if (!members.has(key)) members.set(key, []);
      members.get(key).push(n);
    }
    const boxOf = new Map();
    for (const [key, ns] of members) for (const n of ns) boxOf.set(n.id, key);
    const boxes = [];
    for (const [key, ns] of members) {
      const ids = ns.map((n) => n.id);
      const inner = edges.filter((e) => boxOf.get(e.source) === key && boxOf.get(e.destination) === key);
      const l = layered(ids, inner, size);
      const bare = ns.length === 1 && ns[0].kind === "namespace";
      boxes.push({
        key, bare, inner: l,
        namespace: bare ? ns[0].namespace : key,
        label: bare ? "" : (key || OUTSIDE),
        count: ns.length,
        w: l.width + 2 * BOX_PAD.x,
        h: l.height + BOX_PAD.top + BOX_PAD.bottom,
      });
    }

    // Order the boxes as their traffic flows (callers first), then pack them in rows.
    const rank = layered(boxes.map((b) => b.key),
      edges.map((e) => ({ source: boxOf.get(e.source), destination: boxOf.get(e.destination) })),
      { col: 1, row: 1 }).pos;
    boxes.sort((a, b) => (rank.get(a.key).x - rank.get(b.key).x) ||
      (a.key === "" ? 1 : 0) - (b.key === "" ? 1 : 0) || a.key.localeCompare(b.key));
    const area = boxes.reduce((s, b) => s + (b.w + BOX_GAP) * (b.h + BOX_GAP), 0);
    const target = Math.max(...boxes.map((b) => b.w), Math.sqrt(area * ASPECT));
    let x = 0;
    let y = 0;
    let rowH = 0;
    let width = 0;
    for (const b of boxes) {
      if (x > 0 && x + b.w > target) {
        x = 0;
        y += rowH + BOX_GAP;
        rowH = 0;
      }
      b.x = MARGIN.x / 2 + x;
      b.y = MARGIN.y / 2 + y;
      x += b.w + BOX_GAP;
      rowH = Math.max(rowH, b.h);
      width = Math.max(width, x - BOX_GAP);
    }
    const pos = new Map();
    for (const b of boxes) {
      for (const [id, p] of b.inner.pos) {
        pos.set(id, { x: b.x + BOX_PAD.x + p.x, y: b.y + BOX_PAD.top + p.y, layer: p.layer, box: b.key });
      }
      delete b.inner;
    }
    return { pos, boxes, size, width: MARGIN.x + width, height: MARGIN.y + y + rowH };
  }

  // Everything app.js draws, for one graph and one view.
  function compute(graph, v) {
    const f = filter(graph, v);
    const g = group(f.nodes, f.edges, v);
    const many = g.nodes.length > DENSE_NODES;
    const dense = many || g.edges.length > DENSE_EDGES;
    const l = layout(g.nodes, g.edges, many);
    const namespaces = [...new Set(graph.nodes.map((n) => namespaceOf(n) || OUTSIDE))].sort();
    return {
      nodes: g.nodes, edges: g.edges, context: f.context, dense, many, namespaces,
      totalNodes: graph.nodes.length, totalEdges: graph.edges.length, ...l,
    };
  }

  return { parse, format, filter, group, layout, compute, busy, namespaceNodeId, OUTSIDE };
})();
