// Search across every camera (POST /api/v1/search): results as a grid of keyframes (camera, time, text); each opens
// its camera's timeline at that moment (timeline.js's `select` and `scrollToTime`). Kept apart from timeline.js.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const fmtTime = (s) => { const m = Math.floor(s / 60), sec = s - m * 60; return m ? `${m}:${sec.toFixed(1).padStart(4, "0")}` : `${sec.toFixed(1)}s`; };
  function node(tag, attrs = {}, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
    }
    for (const k of kids) e.append(k);
    return e;
  }

  async function open(m) {
    await select(m.stream_id); // timeline.js: loads the stream's timeline
    history.replaceState(null, "", `#stream=${encodeURIComponent(m.stream_id)}&t=${m.start_s}`);
    scrollToTime((m.start_s + m.end_s) / 2);
    $("stream").scrollIntoView({ block: "start" });
  }

  async function search(ev) {
    ev.preventDefault();
    const question = $("search-q").value.trim();
    if (!question) return;
    const status = $("search-status"), grid = $("search-results");
    status.textContent = "Searching every camera…"; grid.replaceChildren();
    const r = await fetch("/api/v1/search", { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ question, top_k: 12 }) });
    if (r.status === 401) { location.href = "/login"; return; }
    const body = await r.json();
    if (!r.ok) { status.textContent = body.error ? body.error.message : r.statusText; return; }
    const searched = body.streams.filter((s) => !s.skipped).length;
    status.textContent = `${body.moments.length} moments across ${searched} cameras (${Math.round(body.latency_ms)} ms)`;
    grid.replaceChildren(...body.moments.map((m) => node("button", {
      type: "button", class: "moment", "data-stream": m.stream_id, "data-camera": m.camera || m.stream_id,
      "data-start": m.start_s, "data-chunk": m.chunk_id, onclick: () => open(m),
      title: `rank ${m.rank}, found by ${m.signals.map((s) => s.signal).join(", ")}`,
    }, node("img", { src: m.keyframe_url, alt: `keyframe of ${m.camera || m.stream_id} at ${fmtTime(m.keyframe_s)}`, loading: "lazy" }),
    node("span", { class: "moment-camera", text: m.camera || m.stream_id }),
    node("span", { class: "moment-time", text: `${fmtTime(m.start_s)}–${fmtTime(m.end_s)}` +
      (m.wall_start_unix ? ` · ${new Date(m.wall_start_unix * 1000).toLocaleString()}` : "") }),
    node("span", { class: "moment-text", text: m.on_screen_text || "" }))));
  }

  // a link to a moment (#stream=ID&t=SECONDS, a result's timeline_url): once that stream's timeline is loaded
  function openLinkedMoment() {
    const h = new URLSearchParams(location.hash.slice(1));
    const t = parseFloat(h.get("t")), sid = h.get("stream");
    if (!sid || !isFinite(t)) return;
    const started = Date.now();
    const wait = setInterval(() => {
      if (state.sid === sid && state.chunks.size) { clearInterval(wait); scrollToTime(t); }
      else if (Date.now() - started > 30000) clearInterval(wait);
    }, 200);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("search-form").addEventListener("submit", search);
    openLinkedMoment();
  });
})();
