// The timeline page: plain JS over /api/v1 (no build step). Same-origin fetches carry the login cookie.
"use strict";
const API = "/api/v1";
const POLL_MS = 3000;
const $ = (id) => document.getElementById(id);
const state = { streams: [], sid: null, stream: null, chunks: new Map(), gaps: [], alerts: [], pps: 0,
  fitted: false, brush: null, asking: null, searched: null, randomWeights: false };

function fmt(s) {
  if (s == null || !isFinite(s)) return "end";
  const m = Math.floor(s / 60), sec = s - m * 60;
  return m ? `${m}:${sec.toFixed(1).padStart(4, "0")}` : `${sec.toFixed(1)}s`;
}
const wall = (u) => (u ? new Date(u * 1000).toLocaleString() : "");
function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v;
    else if (k === "style") e.style.cssText = v;  // CSSOM: the CSP allows no inline style attribute
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
}
async function getJSON(path) {
  const r = await fetch(API + path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (r.status === 401) { location.href = "/login"; throw new Error("signed out"); }
  const body = await r.json();
  if (!r.ok) throw new Error(body.error ? `${body.error.code}: ${body.error.message}` : r.statusText);
  return body;
}

// ---- streams -------------------------------------------------------------------------------------------
async function loadStreams() {
  const { streams, random_weights: randomWeights } = await getJSON("/streams");
  state.streams = streams;
  noteModel(randomWeights);
  const ul = $("streams");
  ul.replaceChildren(...streams.map((s) => el("li", {}, el("button", {
    type: "button", class: "stream-button", "data-sid": s.stream_id, "aria-current": String(s.stream_id === state.sid),
    onclick: () => select(s.stream_id),
  }, `${s.name || s.stream_id} `, el("span", { class: `state ${s.state}`, text: s.state })))));
  $("empty").hidden = streams.length > 0;
  if (state.sid && !streams.some((s) => s.stream_id === state.sid)) { // deleted meanwhile: no more reads of it
    state.sid = null; $("stream").hidden = true;
  }
  if (!state.sid && streams.length) {
    const want = new URLSearchParams(location.hash.slice(1)).get("stream");
    select(streams.some((s) => s.stream_id === want) ? want : streams[streams.length - 1].stream_id);
  }
}

async function select(sid) {
  state.sid = sid; state.chunks = new Map(); state.gaps = []; state.alerts = []; state.fitted = false;
  history.replaceState(null, "", `#stream=${encodeURIComponent(sid)}`);
  for (const b of document.querySelectorAll(".stream-button")) b.setAttribute("aria-current", String(b.dataset.sid === sid));
  $("stream").hidden = false; $("viewer").hidden = true;
  if (state.asking) state.asking.abort();
  $("question").value = ""; // a question is about the stream it was asked of
  $("answer").textContent = ""; delete $("answer").dataset.done; $("evidence").replaceChildren();
  $("answer-status").textContent = ""; $("answer-status").classList.remove("error");
  setBrush(null); setSearched(null);
  await refresh();
}

async function refresh() {
  const sid = state.sid;
  if (!sid) return;
  const [info, gaps, alerts] = await Promise.all([getJSON(`/streams/${enc(sid)}`), getJSON(`/streams/${enc(sid)}/gaps`),
    getJSON(`/streams/${enc(sid)}/alerts`)]);
  let after = state.chunks.size ? Math.max(...state.chunks.keys()) : -1;
  const fresh = [];
  for (;;) {
    const page = await getJSON(`/streams/${enc(sid)}/chunks?after=${after}&limit=500`);
    if (page.total < state.chunks.size + fresh.length) { state.chunks = new Map(); after = -1; fresh.length = 0; continue; }
    fresh.push(...page.chunks);
    if (page.next_after == null) break;
    after = page.next_after;
  }
  if (sid !== state.sid) return;
  for (const c of fresh) state.chunks.set(c.chunk_id, c);
  state.stream = info; state.gaps = gaps.gaps; state.alerts = alerts.alerts;
  showHead(info);
  if (!state.fitted && state.chunks.size) { fit(); state.fitted = true; } else render();
}
const enc = encodeURIComponent;

// the server's answering model has random weights (`vigil ask` prints the same note): its text is noise
function noteModel(randomWeights) {
  if (typeof randomWeights !== "boolean") return;
  state.randomWeights = randomWeights;
  $("model-note").hidden = !randomWeights;
}

function showHead(s) {
  $("stream-title").textContent = s.name ? `${s.name} (${s.stream_id})` : s.stream_id;
  const st = $("stream-state"); st.textContent = s.state; st.className = `state ${s.state}`;
  $("stream-facts").textContent = `${s.kind} · ${state.chunks.size} chunks · ${fmt(s.duration_s)} stored` +
    (s.reconnects ? ` · ${s.reconnects} reconnects` : "") + ` · ${s.source}`;
  const err = $("stream-error"); err.hidden = !s.error; err.textContent = s.error || "";
}

// ---- the timeline ----------------------------------------------------------------------------------------
function extent() {
  let end = state.stream ? state.stream.duration_s : 0;
  for (const c of state.chunks.values()) end = Math.max(end, c.end_s);
  for (const g of state.gaps) end = Math.max(end, g.end_s ?? g.start_s);
  return Math.max(end, 1);
}
const x = (t) => Math.round(t * state.pps);
function fit() { state.pps = Math.max(2, ($("timeline").clientWidth - 4) / extent()); render(); }
function zoom(factor, anchorPx) {
  const tl = $("timeline");
  const ax = anchorPx ?? tl.clientWidth / 2;
  const t = (tl.scrollLeft + ax) / state.pps;
  state.pps = Math.min(2000, Math.max(0.05, state.pps * factor));
  render();
  tl.scrollLeft = t * state.pps - ax;
}

function render() {
  const end = extent();
  const track = $("track");
  track.style.width = `${x(end) + 2}px`;
  $("zoom-level").textContent = `${state.pps.toFixed(state.pps < 10 ? 1 : 0)} px/s`;
  // axis: a tick every "nice" step of at least 80 px
  const steps = [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200];
  const step = steps.find((s) => s * state.pps >= 80) || 7200;
  const ticks = [];
  for (let t = 0; t <= end; t += step) ticks.push(el("span", { class: "tick", style: `left:${x(t)}px`, text: fmt(t) }));
  $("axis").replaceChildren(...ticks);
  const lanes = [];
  const chunks = [...state.chunks.values()].sort((a, b) => a.start_s - b.start_s);
  for (const c of chunks) {
    const w = Math.max(8, x(c.end_s) - x(c.start_s) - 2);
    const label = `Chunk ${c.chunk_id}: ${fmt(c.start_s)} to ${fmt(c.end_s)}` + (c.on_screen_text ? `; text: ${c.on_screen_text}` : "") +
      (c.labels ? `; ${c.labels}` : "");
    const img = el("img", { src: c.keyframe_url, loading: "lazy", alt: "", decoding: "async" });
    const hit = state.cursor != null && c.start_s <= state.cursor && state.cursor < c.end_s;
    lanes.push(el("button", { type: "button", class: hit ? "thumb hit" : "thumb", "data-chunk": c.chunk_id, "data-start": c.start_s,
      style: `left:${x(c.start_s) + 1}px;width:${w}px`, title: label, "aria-label": label,
      onclick: () => showKeyframe(c) }, img));
    if (c.scene_cuts > 0) lanes.push(el("span", { class: "cut", style: `left:${x(c.start_s)}px`, title: `scene cut near ${fmt(c.start_s)}` }));
    for (const s of c.speech || []) lanes.push(speechMark(s));
  }
  for (const g of state.gaps) {
    const gEnd = g.end_s ?? end;
    const text = `gap ${fmt(g.start_s)} to ${fmt(gEnd)}: ${g.reason || "no footage"}` +
      (g.wall_start_unix ? ` (${wall(g.wall_start_unix)} to ${wall(g.wall_end_unix) || "now"})` : "");
    lanes.push(el("div", { class: "gap", style: `left:${x(g.start_s)}px;width:${Math.max(4, x(gEnd) - x(g.start_s))}px`,
      title: text, role: "note", "aria-label": text, "data-start": g.start_s, "data-end": gEnd, text: g.reason || "gap" }));
  }
  for (const a of state.alerts) {
    const text = `alert ${a.rule} (${a.kind}) at ${fmt(a.start_s)}${a.matched_text ? `: "${a.matched_text}"` : ""}` +
      (a.wall_start_unix ? `, ${wall(a.wall_start_unix)}` : "");
    lanes.push(el("button", { type: "button", class: "alert", style: `left:${x(a.start_s)}px`, title: text, "aria-label": text,
      onclick: () => scrollToTime(a.start_s) }));
  }
  $("lanes").replaceChildren(...lanes);
  drawBrush(); drawCursor(); drawSearched();
  renderSide();
}

// what was said: a bar under the thumbnails over each transcribed segment, its text as the label
function speechMark(s) {
  const text = `said at ${fmt(s.start_s)}: ${s.text}` + (s.wall_start_unix ? ` (${wall(s.wall_start_unix)})` : "");
  return el("button", { type: "button", class: "speech", "data-start": s.start_s, "data-end": s.end_s, title: text,
    "aria-label": text, style: `left:${x(s.start_s)}px;width:${Math.max(6, x(s.end_s) - x(s.start_s))}px`,
    onclick: () => scrollToTime(s.start_s), text: s.text });
}

function renderSide() {
  $("gap-list").replaceChildren(...(state.gaps.length ? state.gaps.map((g) => el("li", {},
    el("button", { type: "button", class: "link", onclick: () => scrollToTime(g.start_s),
      text: `${fmt(g.start_s)} to ${fmt(g.end_s)}` }),
    ` ${g.reason || ""}${g.wall_start_unix ? ` (${wall(g.wall_start_unix)} to ${wall(g.wall_end_unix) || "now"})` : ""}`))
    : [el("li", { text: "none" })]));
  $("alert-list").replaceChildren(...(state.alerts.length ? state.alerts.map((a) => el("li", {},
    el("button", { type: "button", onclick: () => scrollToTime(a.start_s), text: fmt(a.start_s) }),
    ` ${a.rule} (${a.kind})${a.matched_text ? `: ${a.matched_text}` : ""}`)) : [el("li", { text: "none" })]));
}

function showKeyframe(c) {
  // a chunk whose text was read off its keyframe shows the frame it was read in
  const text = c.text_frame_url != null;
  $("viewer-img").src = text ? c.text_frame_url : c.keyframe_url;
  $("viewer-img").alt = `${text ? "frame with the on-screen text" : "keyframe"} of chunk ${c.chunk_id}`;
  $("viewer-caption").textContent = (text ? `Frame at ${fmt(c.text_frame_s)}, where its text was read (keyframe at ${fmt(c.keyframe_s)})`
    : `Keyframe at ${fmt(c.keyframe_s)}`) + ` (chunk ${c.chunk_id}, ${fmt(c.start_s)} to ${fmt(c.end_s)})` +
    (c.wall_start_unix ? `, ${wall(c.wall_start_unix)}` : "") + (c.on_screen_text ? `; on screen: ${c.on_screen_text}` : "") +
    ((c.speech || []).length ? `; said: ${c.speech.map((s) => s.text).join(" ")}` : "");
  $("viewer").hidden = false;
  $("viewer-close").focus();
  scrollToTime(c.start_s, false);
}

function scrollToTime(t, smooth = true) {
  state.cursor = t;
  drawCursor();
  const tl = $("timeline");
  tl.scrollTo({ left: Math.max(0, x(t) - tl.clientWidth / 2), behavior: smooth ? "smooth" : "auto" });
  for (const b of document.querySelectorAll(".thumb")) {
    const c = state.chunks.get(Number(b.dataset.chunk));
    b.classList.toggle("hit", !!c && c.start_s <= t && t < c.end_s);
  }
}
function drawCursor() {
  const cur = $("cursor");
  cur.hidden = state.cursor == null;
  if (state.cursor != null) { cur.style.left = `${x(state.cursor)}px`; cur.dataset.t = state.cursor; }
}

// brushing: drag on the track sets the question's window (a click without movement stays a click)
function setBrush(b) {
  state.brush = b;
  $("win-start").value = b ? b[0].toFixed(1) : "";
  $("win-end").value = b ? b[1].toFixed(1) : "";
  drawBrush();
}
function drawBrush() {
  const br = $("brush"), b = state.brush;
  br.hidden = !b;
  if (b) { br.style.left = `${x(b[0])}px`; br.style.width = `${Math.max(1, x(b[1]) - x(b[0]))}px`; }
}
// the window the last answer searched: a line under the question and a band on the timeline, kept after the answer
const SOURCES = { all: "the whole stream", request: "the window you set", question: "from the question's time words" };
function setSearched(w) {
  state.searched = w;
  const p = $("searched");
  p.hidden = !w;
  p.textContent = w ? `Searched ${fmt(w.start_s)} to ${w.end_s == null ? "the end" : fmt(w.end_s)} ` +
    `(${SOURCES[w.source] || w.source}${w.phrase ? `: "${w.phrase}"` : ""}).` : "";
  drawSearched();
}
function drawSearched() {
  const band = $("searched-band"), w = state.searched;
  band.hidden = !w || w.source === "all";
  if (!band.hidden) {
    const hi = w.end_s == null ? extent() : w.end_s;
    band.style.left = `${x(w.start_s)}px`; band.style.width = `${Math.max(2, x(hi) - x(w.start_s))}px`;
    band.title = $("searched").textContent;
  }
}

function trackTime(ev) {
  const r = $("track").getBoundingClientRect();
  return Math.max(0, Math.min(extent(), (ev.clientX - r.left) / state.pps));
}
function wireBrush() {
  const track = $("track");
  let start = null, startX = 0, dragging = false;
  track.addEventListener("pointerdown", (ev) => { if (ev.button === 0) { start = trackTime(ev); startX = ev.clientX; dragging = false; } });
  track.addEventListener("pointermove", (ev) => {
    if (start == null) return;
    if (!dragging && Math.abs(ev.clientX - startX) > 5) { dragging = true; track.setPointerCapture(ev.pointerId); }
    if (dragging) { const t = trackTime(ev); setBrush([Math.min(start, t), Math.max(start, t)]); }
  });
  const end = (ev) => {
    if (dragging) { ev.preventDefault(); track.addEventListener("click", (e) => e.stopPropagation(), { capture: true, once: true }); }
    start = null; dragging = false;
  };
  track.addEventListener("pointerup", end);
  track.addEventListener("pointercancel", () => { start = null; dragging = false; });
}

// ---- asking (fetch + ReadableStream over the server-sent events) ---------------------------------------
async function* events(resp) {
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i); buf = buf.slice(i + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      yield { event, data: data ? JSON.parse(data) : null };
    }
  }
}

async function ask(ev) {
  ev.preventDefault();
  const question = $("question").value.trim();
  if (!question || !state.sid) return;
  if (state.asking) state.asking.abort();
  const ctl = new AbortController(); state.asking = ctl;
  const body = { question };
  const lo = parseFloat($("win-start").value), hi = parseFloat($("win-end").value);
  if (isFinite(lo) || isFinite(hi)) body.window = { start_s: isFinite(lo) ? lo : 0, end_s: isFinite(hi) ? hi : 0 };
  const answer = $("answer"), status = $("answer-status"), evidence = $("evidence");
  answer.textContent = ""; delete answer.dataset.done; evidence.replaceChildren(); setSearched(null);
  status.textContent = "Searching the stream's memory…";
  $("ask-button").disabled = true;
  const t0 = performance.now();
  try {
    const resp = await fetch(`${API}/streams/${enc(state.sid)}/ask`, { method: "POST", signal: ctl.signal,
      credentials: "same-origin", headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify(body) });
    if (!resp.ok) {
      const err = await resp.json().catch(() => ({}));
      status.textContent = err.error ? `${err.error.code}: ${err.error.message}` : `HTTP ${resp.status}`;
      status.classList.add("error");
      return;
    }
    status.classList.remove("error");
    for await (const { event, data } of events(resp)) {
      if (event === "evidence") {
        noteModel(data.random_weights);
        setSearched(data.searched_window);
        status.textContent = `Answering from ${data.evidence.length} chunks` +
          (data.gaps.length ? `; ${data.gaps.length} gap(s) in the window` : "") + "…";
        // best match first (the API lists evidence in time order)
        const best = [...data.evidence].sort((a, b) => a.rank - b.rank);
        evidence.replaceChildren(...best.map(evidenceItem));
      } else if (event === "delta") {
        answer.textContent += data.text;
      } else if (event === "done") {
        answer.textContent = data.answer;
        status.classList.remove("error");
        status.textContent = `Answered in ${(data.latency_ms / 1000).toFixed(1)} s (first text after ` +
          `${state.firstMs ? (state.firstMs / 1000).toFixed(1) : "?"} s).`;
        answer.dataset.done = "true";
      } else if (event === "error") {
        status.textContent = `${data.code}: ${data.message}`; status.classList.add("error");
      }
      if (event === "delta" && !state.firstMs) state.firstMs = performance.now() - t0;
    }
  } catch (e) {
    if (e.name !== "AbortError") { status.textContent = String(e); status.classList.add("error"); }
  } finally {
    $("ask-button").disabled = false; state.firstMs = 0;
    if (state.asking === ctl) state.asking = null;
  }
}

// one piece of evidence: its frame, rank, time, the signals that found it and the text read on screen, all visible
function evidenceItem(e) {
  const signals = [...e.signals].sort((a, b) => a.rank - b.rank)
    .map((s) => `${s.signal} #${s.rank} (${Number(s.score).toFixed(2)})`).join(", ");
  const kids = [el("img", { src: e.keyframe_url, alt: `evidence ${e.rank}: frame at ${fmt(e.keyframe_s)}` }),
    el("span", { class: "ev-head" }, el("strong", { class: "ev-rank", text: `#${e.rank}` }),
      ` ${fmt(e.start_s)}–${fmt(e.end_s)}`),
    el("span", { class: "ev-signals", text: `found by ${signals || "none"}` })];
  if (e.on_screen_text) kids.push(el("span", { class: "ev-text" }, "on screen: ", el("q", { text: e.on_screen_text })));
  if (e.labels) kids.push(el("span", { class: "ev-labels muted", text: e.labels }));
  if ((e.speech || []).length) kids.push(el("span", { class: "said", text: `said: “${e.speech.map((s) => s.text).join(" ")}”` }));
  return el("li", {}, el("button", { type: "button", class: "evidence", "data-start": e.start_s, "data-chunk": e.chunk_id,
    "data-rank": e.rank, onclick: () => scrollToTime(e.start_s) }, ...kids));
}

// ---- wiring -------------------------------------------------------------------------------------------
function init() {
  $("zoom-in").addEventListener("click", () => zoom(2));
  $("zoom-out").addEventListener("click", () => zoom(0.5));
  $("zoom-fit").addEventListener("click", fit);
  $("viewer-close").addEventListener("click", () => { $("viewer").hidden = true; });
  $("win-clear").addEventListener("click", () => setBrush(null));
  for (const id of ["win-start", "win-end"]) $(id).addEventListener("change", () => {
    const lo = parseFloat($("win-start").value), hi = parseFloat($("win-end").value);
    state.brush = isFinite(lo) && isFinite(hi) && hi > lo ? [lo, hi] : null; drawBrush();
  });
  $("ask-form").addEventListener("submit", ask);
  const tl = $("timeline");
  tl.addEventListener("wheel", (ev) => {
    if (Math.abs(ev.deltaY) <= Math.abs(ev.deltaX)) return; // horizontal: native scroll
    ev.preventDefault();
    zoom(ev.deltaY < 0 ? 1.25 : 0.8, ev.clientX - tl.getBoundingClientRect().left);
  }, { passive: false });
  tl.addEventListener("keydown", (ev) => {
    if (ev.key === "+" || ev.key === "=") zoom(2);
    else if (ev.key === "-") zoom(0.5);
    else if (ev.key === "0") fit();
    else if (ev.key === "ArrowRight") tl.scrollLeft += tl.clientWidth / 4;
    else if (ev.key === "ArrowLeft") tl.scrollLeft -= tl.clientWidth / 4;
    else return;
    ev.preventDefault();
  });
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") $("viewer").hidden = true; });
  wireBrush();
  const tick = () => loadStreams().then(refresh).catch((e) => console.warn(e)); // the list first: a deleted stream is let go
  loadStreams().catch((e) => console.warn(e));
  setInterval(() => { if (!document.hidden) tick(); }, POLL_MS);
}
document.addEventListener("DOMContentLoaded", init);
