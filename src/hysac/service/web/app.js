// HySAC web page: search the index with a text or an image under a safety mode, show the results with safety
// badges, and plot the query before/after redirection among its neighbours on the Poincaré disk.
// Plain browser JavaScript, no build step, no external resources. All data is inserted with textContent.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const MODE_HELP = {
    "off": "Plain nearest neighbours in hyperbolic space.",
    "filter": "Nearest neighbours whose safety score is under the threshold of their modality.",
    "redirect": "The query is pulled toward the origin (the safe region) before the search; under the shipped model's rule only a query judged unsafe moves (the status line says what happened).",
    "redirect+filter": "Redirect the query, then drop the unsafe items that remain.",
    "seek-unsafe": "The query is pushed away from the origin, toward unsafe content (for auditing).",
  };
  let health = null;
  let busy = false;
  let seq = 0;

  function fmt(x, d = 3) {
    return (typeof x === "number" && isFinite(x)) ? x.toFixed(d) : "–";
  }

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }

  function svg(tag, attrs, ...children) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      e.setAttribute(k, String(v));
    }
    for (const c of children) if (c) e.append(c);
    return e;
  }

  function showError(msg) {
    const box = $("error");
    box.textContent = msg;
    box.hidden = !msg;
  }

  function setStatus(msg) { $("status").textContent = msg || ""; }

  function currentMode() {
    const r = document.querySelector('input[name="mode"]:checked');
    return r ? r.value : "off";
  }

  function imageFile() {
    const f = $("image").files;
    return f && f.length ? f[0] : null;
  }

  function badge(unsafe, score) {
    return el("span", { class: "badge " + (unsafe ? "unsafe" : "safe"),
                        title: "safety score = distance from the origin" },
              (unsafe ? "unsafe " : "safe ") + fmt(score));
  }

  function topCategory(tc) {
    if (!tc) return null;
    return el("span", { class: "cat", title: "most likely unsafe category" },
              tc.name + " " + fmt(tc.probability, 2));
  }

  // ------------------------------------------------------------------------------------------ requests
  async function postQuery(path, fields) {
    const file = imageFile();
    let init;
    if (file) {
      const fd = new FormData();
      fd.append("image", file, file.name);
      for (const [k, v] of Object.entries(fields)) if (v !== null && v !== undefined && v !== "") fd.append(k, String(v));
      init = { method: "POST", body: fd };
    } else {
      const body = { text: $("query").value };
      for (const [k, v] of Object.entries(fields)) if (v !== null && v !== undefined && v !== "") body[k] = v;
      init = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
    }
    const resp = await fetch(path, init);
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) {
      const msg = data && data.error ? data.error : ("HTTP " + resp.status);
      throw new Error(msg);
    }
    return data;
  }

  async function run() {
    const file = imageFile();
    const text = $("query").value;
    if (!file && !text.trim()) {
      showError("Type a query or choose an image.");
      return;
    }
    const mode = currentMode();
    const k = parseInt($("k").value, 10) || 12;
    const modality = $("modality").value || null;
    const mine = ++seq;
    busy = true;
    $("submit").disabled = true;
    showError("");
    setStatus("searching…");
    $("results").dataset.state = "loading";
    $("plot").dataset.state = "loading";
    try {
      const res = await postQuery("/search", { mode, k, modality });
      if (mine !== seq) return;
      renderQuery(res.query, mode, null, res.moves);
      renderResults(res);
      setStatus(`${res.results.length} result${res.results.length === 1 ? "" : "s"} · mode ${mode} · ${fmt(res.took_ms, 0)} ms`);
      const direction = mode === "seek-unsafe" ? "out" : "in";
      const tr = await postQuery("/traverse", { direction, target: modality, k: Math.min(k, 12) });
      if (mine !== seq) return;
      renderQuery(res.query, mode, tr, res.moves);
      renderPlot(tr);
    } catch (err) {
      if (mine !== seq) return;
      showError(err.message || String(err));
      setStatus("");
      $("results").dataset.state = "error";
      $("plot").dataset.state = "error";
    } finally {
      if (mine === seq) {
        busy = false;
        $("submit").disabled = false;
      }
    }
  }

  // ------------------------------------------------------------------------------------------ rendering
  function renderQuery(q, mode, tr, moves) {
    const card = $("query-card");
    card.replaceChildren();
    card.append(el("strong", { text: q.modality === "image" ? "Image query" : "Query" }));
    card.append(el("span", { class: "qtext", text: q.modality === "image" ? (q.image || "image") : q.text }));
    card.append(badge(q.unsafe, q.safety_score));
    card.append(el("span", { class: "muted small", text: "threshold " + fmt(q.threshold) }));
    if (q.truncated) {
      card.append(el("span", { class: "muted small", id: "cut-note",
                               text: "longer than the model reads: judged and searched by its opening only" }));
    }
    const tc = topCategory(q.top_category);
    if (tc) card.append(tc);
    const moving = mode === "redirect" || mode === "redirect+filter" || mode === "seek-unsafe";
    if (moving && moves && Object.keys(moves).length) {
      // what the search itself did to the query, per sub-gallery (the server's words: hysac.policy)
      const parts = Object.entries(moves).map(([t, mv]) =>
        `${t}s: ${mv.status}` + (mv.moved ? ` (${fmt(q.safety_score)} → ${fmt(mv.score_after)})` : ""));
      card.append(el("span", { class: "small", id: "move-note", text: parts.join(" · ") }));
    } else if (tr) {
      card.append(el("span", { class: "small", id: "move-note",
                               text: tr.status + " (what a redirect mode would search with)" }));
    }
    card.hidden = false;
  }

  function renderResults(res) {
    const grid = $("results");
    grid.replaceChildren();
    if (!res.results.length) {
      grid.append(el("div", { class: "empty", text: "No results (every candidate was filtered out, or the index holds none of that modality)." }));
    }
    for (const r of res.results) {
      const card = el("article", { class: "card " + (r.unsafe ? "unsafe" : "safe"), "data-id": r.id,
                                   "data-modality": r.modality });
      if (r.modality === "image") {
        const name = (r.metadata && r.metadata.relpath) || (r.path || "").split("/").pop();
        card.append(el("img", { class: "thumb", src: r.image_url, alt: name, title: name, loading: "lazy" }));
      } else {
        card.append(el("div", { class: "text", text: r.text }));
      }
      const meta = el("div", { class: "meta" });
      const line = el("div", {}, badge(r.unsafe, r.safety_score), " ", topCategory(r.top_category));
      meta.append(line);
      meta.append(el("span", { class: "rank", text: `#${r.rank} · distance ${fmt(r.distance)}` +
                                                     (r.entailed ? " · entailed" : "") }));
      if (r.metadata && Object.keys(r.metadata).length) meta.title = JSON.stringify(r.metadata);
      card.append(meta);
      grid.append(card);
    }
    grid.dataset.state = "done";
    grid.dataset.count = String(res.results.length);
  }

  function renderPlot(tr) {
    const box = $("plot");
    const p = tr.plot;
    const pts = p.points;
    let maxR = 0;
    for (const q of pts) maxR = Math.max(maxR, q.radius);
    for (const g of p.rings) maxR = Math.max(maxR, g.radius);
    const R = Math.min(1.06, Math.max(0.12, maxR * 1.18));
    const u = R / 1.06; // symbol scale relative to a full-disk view
    const root = svg("svg", { viewBox: `${-R} ${-R} ${2 * R} ${2 * R}`, role: "img",
                              "aria-label": "Poincaré disk plot of the query and its neighbours" });
    root.append(svg("circle", { class: "disk", r: 1 }));
    root.append(svg("line", { class: "axis", x1: -1, y1: 0, x2: 1, y2: 0 }));
    root.append(svg("line", { class: "axis", x1: 0, y1: -1, x2: 0, y2: 1 }));
    p.rings.forEach((g, i) => {
      const kind = g.label.startsWith("text") ? "text" : g.label.startsWith("image") ? "image" : "move";
      const c = svg("circle", { class: "ring " + kind, r: g.radius });
      c.append(svg("title", {}, document.createTextNode(`${g.label}: distance ${fmt(g.distance)}`)));
      root.append(c);
      // labels below the axis (results are drawn mostly above it), spread in angle so close rings stay legible
      const a = (105 + 32 * i) * Math.PI / 180;
      const lab = svg("text", { class: "ring-label " + kind, x: g.radius * Math.cos(a), y: g.radius * Math.sin(a),
                                "text-anchor": "middle", "font-size": 0.042 * u });
      lab.textContent = g.label;
      root.append(lab);
    });
    // SVG y grows downward: flip y so that "above the axis" reads as above
    for (const q of pts.filter((q) => q.role === "result")) {
      const cls = "pt-result " + (q.unsafe ? "unsafe" : "safe") + (q.near_after ? "" : " before-only");
      const c = svg("circle", { class: cls, cx: q.x, cy: -q.y, r: 0.022 * u, "data-id": q.id,
                                "stroke-width": 0.008 * u });
      c.append(svg("title", {}, document.createTextNode(
        `#${q.id} ${q.label}\nsafety ${fmt(q.safety_score)} (${q.unsafe ? "unsafe" : "safe"})` +
        (q.near_before ? "\nnear the original query" : "") + (q.near_after ? "\nnear the moved query" : ""))));
      root.append(c);
    }
    const qb = pts.find((q) => q.role === "query_before");
    const qa = pts.find((q) => q.role === "query_after");
    if (qb && qa && tr.moved) {
      root.append(svg("line", { class: "move-arrow", x1: qb.x, y1: -qb.y, x2: qa.x, y2: -qa.y,
                                "stroke-width": 0.008 * u }));
    }
    if (qb) {
      const c = svg("circle", { class: "pt-query-before", cx: qb.x, cy: -qb.y, r: 0.034 * u,
                                "stroke-width": 0.012 * u });
      c.append(svg("title", {}, document.createTextNode(`query: ${qb.label}\nsafety ${fmt(qb.safety_score)}`)));
      root.append(c);
    }
    if (qa) {
      const c = svg("circle", { class: "pt-query-after", cx: qa.x, cy: -qa.y, r: 0.026 * u,
                                "stroke-width": 0.008 * u });
      c.append(svg("title", {}, document.createTextNode(`query after the move\nsafety ${fmt(qa.safety_score)}`)));
      root.append(c);
    }
    box.replaceChildren(root);
    box.dataset.state = "done";
    box.dataset.points = String(pts.length);
    const zoom = R < 1.0 ? ` Zoomed to radius ${fmt(R, 2)} of the unit disk.` : "";
    $("plot-caption").textContent =
      `Radius = exact Poincaré radius (safety score); angle = exact angle to the query at the origin. ` +
      `${tr.target[0].toUpperCase() + tr.target.slice(1)} items nearest the query before (hollow) and after the move (filled).${zoom}`;
  }

  // ------------------------------------------------------------------------------------------ wiring
  function onImageChange() {
    const file = imageFile();
    const chip = $("image-chip");
    if (file) {
      $("image-name").textContent = file.name;
      const url = URL.createObjectURL(file);
      const img = $("image-preview");
      if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
      img.src = url;
      img.dataset.url = url;
      chip.hidden = false;
      $("query").disabled = true;
      $("query").placeholder = "(searching by image)";
    } else {
      chip.hidden = true;
      $("query").disabled = false;
      $("query").placeholder = "Search the index with a text…";
    }
  }

  function updateModeHelp() { $("mode-help").textContent = MODE_HELP[currentMode()] || ""; }

  async function loadHealth() {
    try {
      const r = await fetch("/health");
      health = await r.json();
      const m = health.model;
      const idx = health.index;
      $("health").textContent = `model ${m.id} · curvature ${fmt(m.curvature)} · ` +
        (idx ? `${idx.items} indexed items (${idx.counts.text} texts, ${idx.counts.image} images)` : "no index loaded");
      if (health.limits && health.limits.max_k) $("k").max = String(health.limits.max_k);
      // text-to-image retrieval is the main use: search images by default when the index holds some, so the
      // grid shows the same gallery as the plot (which shows the items of the redirect target modality)
      if (idx && idx.counts.image > 0 && !$("modality").dataset.touched) $("modality").value = "image";
      if (!idx) showError("The server has no index: start it with `hysac serve --index DIR` to search.");
    } catch (e) {
      $("health").textContent = "server unreachable";
    }
  }

  $("search-form").addEventListener("submit", (ev) => { ev.preventDefault(); run(); });
  $("image").addEventListener("change", onImageChange);
  $("modality").addEventListener("change", () => { $("modality").dataset.touched = "1"; });
  $("image-clear").addEventListener("click", () => { $("image").value = ""; onImageChange(); });
  for (const r of document.querySelectorAll('input[name="mode"]')) {
    r.addEventListener("change", () => {
      updateModeHelp();
      if ($("results").dataset.state === "done" || busy) run();  // newer answers win (seq)
    });
  }
  updateModeHelp();
  onImageChange();
  loadHealth();
})();
