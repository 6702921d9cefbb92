"""The timeline page in a real browser (Debian's Chromium driven by Playwright) against a real server (tiny model,
real Redis, real footage; the frame index's real OCR where the page shows on-screen text). Screenshots land in
tests/.cache/screens/."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.client import Client, state_name
from tests.conftest import wait_done

import playwright.sync_api as playwright_sync  # a test extra: scripts/setup.sh test installs it, and Chromium

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # missing: the browser fixture fails, naming it

TOKEN = "browser-test-token-0123456789abcdef"
SCREENS = Path(__file__).resolve().parents[1] / ".cache" / "screens"
FPS, CLIP = 2.0, 4


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}: run scripts/setup.sh test (apt-get install chromium)"
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    console: list[str] = []
    pg.on("console", lambda m: console.append(m.text))
    yield pg
    ctx.close()
    # the server's Content-Security-Policy (own script and style only) must not break the page
    blocked = [m for m in console if "Content Security Policy" in m]
    assert not blocked, blocked


@pytest.fixture
def served(make_server, pattern_video):
    srv, addr = make_server(http_port=-1, auth_token=TOKEN)
    with Client(addr, token=TOKEN) as c:
        info = wait_done(c, c.start(str(pattern_video), fps=FPS, clip_frames=CLIP).stream_id)
    assert state_name(info.state) == "finished" and info.chunks >= 3
    return srv, info


def sign_in(page, port: int, token: str = TOKEN):
    page.goto(f"http://127.0.0.1:{port}/login")
    page.fill("#token", token)
    page.click("button[type=submit]")


def test_thumbnails_ask_evidence_and_scroll(served, page):
    srv, info = served
    sign_in(page, srv.http_port)
    page.wait_for_selector("#stream-state.finished")  # filled in by the first poll
    # one thumbnail per chunk, every one a decoded image
    page.wait_for_function("n => document.querySelectorAll('.thumb img').length === n", arg=info.chunks)
    page.wait_for_function("() => [...document.querySelectorAll('.thumb img')].every(i => i.complete && "
                           "i.naturalWidth > 0)")
    assert page.locator(".cut").count() >= 1  # the pattern's scene cuts are marked

    # clicking a thumbnail shows its keyframe large, with its time
    page.locator(".thumb").nth(1).click()
    page.wait_for_function("() => { const i = document.getElementById('viewer-img'); "
                           "return !document.getElementById('viewer').hidden && i.complete && i.naturalWidth > 0 }")
    assert "Keyframe at" in page.text_content("#viewer-caption")

    # brushing the second half of the timeline sets the question's window
    box = page.locator("#track").bounding_box()
    width = page.evaluate("() => document.getElementById('track').scrollWidth")
    y = box["y"] + 30
    page.mouse.move(box["x"] + width * 0.5, y)
    page.mouse.down()
    page.mouse.move(box["x"] + width * 0.7, y, steps=5)
    page.mouse.move(box["x"] + width * 0.95, y, steps=5)
    page.mouse.up()
    lo, hi = float(page.input_value("#win-start")), float(page.input_value("#win-end"))
    assert 0.4 * info.duration_s < lo < hi and hi > 0.85 * info.duration_s
    assert page.locator("#brush").is_visible()

    page.fill("#question", "What is happening in the video?")
    page.press("#question", "Enter")
    page.wait_for_selector(".evidence img")
    page.wait_for_function("() => document.getElementById('answer').textContent.trim().length > 0")
    page.wait_for_selector("#answer[data-done=true]")
    page.wait_for_function("() => [...document.querySelectorAll('.evidence img')].every(i => i.complete && "
                           "i.naturalWidth > 0)")
    starts = [float(s) for s in page.eval_on_selector_all(".evidence", "es => es.map(e => e.dataset.start)")]
    assert starts and all(s + CLIP / FPS > lo for s in starts)  # every piece of evidence overlaps the window
    SCREENS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENS / "timeline.png"), full_page=True)

    # zoomed in and scrolled to the start, the latest evidence is off screen; clicking it brings it into view
    for _ in range(4):
        page.click("#zoom-in")
    page.evaluate("() => { document.getElementById('timeline').scrollLeft = 0 }")
    target = max(starts)
    visible = ("t => { const tl = document.getElementById('timeline').getBoundingClientRect(); "
               "const c = document.getElementById('cursor'); if (c.hidden) return false; "
               "const r = c.getBoundingClientRect(); return r.left >= tl.left && r.right <= tl.right }")
    page.evaluate("() => { document.getElementById('cursor').hidden = true }")
    assert page.evaluate("() => document.getElementById('timeline').scrollWidth > "
                         "3 * document.getElementById('timeline').clientWidth")
    page.locator(".evidence").nth(starts.index(target)).click()
    page.wait_for_function(visible, arg=target)
    assert float(page.get_attribute("#cursor", "data-t")) == pytest.approx(target)
    assert page.evaluate("() => document.getElementById('timeline').scrollLeft") > 0
    # the thumbnail of that time is marked
    assert page.locator(".thumb.hit").count() == 1
    page.screenshot(path=str(SCREENS / "timeline-zoomed.png"))


def test_a_missing_or_wrong_token_gets_the_login_page(served, page):
    srv, _ = served
    resp = page.goto(f"http://127.0.0.1:{srv.http_port}/")
    assert resp.status == 401
    assert page.locator("form#login input#token").is_visible()
    sign_in(page, srv.http_port, "not-the-token-0123456789")
    assert page.locator("p.error[role=alert]").is_visible()
    assert page.url.endswith("/login")
    # without the cookie the API refuses too
    assert page.evaluate("() => fetch('/api/v1/streams').then(r => r.status)") == 401
    sign_in(page, srv.http_port)
    page.wait_for_selector("#stream:not([hidden])")
    assert page.evaluate("() => fetch('/api/v1/streams').then(r => r.status)") == 200
    # signing out (the page's form, from its own origin) ends the session: back to the login form, API refused
    cookie = next(c for c in page.context.cookies() if c["name"] == "vigil_session")
    page.click("form.logout button[type=submit]")
    page.wait_for_selector("form#login input#token")
    assert page.evaluate("() => fetch('/api/v1/streams').then(r => r.status)") == 401
    page.context.add_cookies([cookie])  # the old cookie put back: revoked server-side, it no longer works
    assert page.evaluate("() => fetch('/api/v1/streams').then(r => r.status)") == 401


@pytest.mark.timeout(240)
def test_a_killed_camera_shows_as_a_shaded_gap_with_its_reason(make_server, page):
    """A live RTSP camera killed and restarted: the page (polling while the stream runs) shades the outage on the
    timeline and lists it with its reason and wall-clock times."""
    import time

    from testkit import rtsp
    from tests.conftest import wait_for as until
    from tests.services.test_live_streams import LIVE

    srv, addr = make_server(http_port=-1, auth_token=TOKEN, live=LIVE)
    with rtsp.RtspServer(rtsp.long_bikes()) as cam, Client(addr, token=TOKEN) as c:
        sid = c.start(cam.url, fps=2, clip_frames=4).stream_id

        until(lambda: c.describe(sid).chunks >= 2, 60, "chunks from the camera")
        sign_in(page, srv.http_port)
        page.wait_for_selector("#stream-state.running")
        assert page.locator("#track .gap").count() == 0
        cam.kill()
        until(lambda: state_name(c.describe(sid).state) == "reconnecting", 15, "reconnecting after the kill")
        page.wait_for_selector("#stream-state.reconnecting")  # the live state reaches the page
        time.sleep(2.0)
        cam.restart()
        until(lambda: len(c.describe(sid).gaps) == 1, 60, "the outage recorded as a gap")
        gap = page.wait_for_selector("#track .gap")  # the next poll draws it
        box = gap.bounding_box()
        assert box["width"] >= 4 and box["height"] > 0
        label = gap.get_attribute("aria-label")
        assert label.startswith("gap ") and c.describe(sid).gaps[0].reason in label
        page.wait_for_function("() => document.getElementById('gap-list').children.length === 1")
        page.click("#gap-list button")  # the listed gap scrolls the timeline to it: the shading is on screen
        page.wait_for_function("""() => { const g = document.querySelector('#track .gap').getBoundingClientRect(),
            t = document.getElementById('timeline').getBoundingClientRect();  // the visible, scrolling part
            return g.left < t.right && g.right > t.left }""")
        SCREENS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENS / "timeline-gap.png"))
        c.stop(sid)


# ---- what the CLI shows, the page shows too (issue 25) ------------------------------------------------------------

from tests.services.test_evidence_frame import QUESTION, SIGN, read_text, text_off_keyframe_clip  # noqa: E402


def console_failures(page) -> list[str]:
    """Every resource the page fails to load (404, 401, ...) and every console error, collected as the page runs."""
    seen: list[str] = []
    page.on("console", lambda m: seen.append(f"console {m.type}: {m.text} at {m.location.get('url')}")
            if m.type == "error" else None)
    page.on("response", lambda r: seen.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
    page.on("pageerror", lambda e: seen.append(f"page error: {e}"))
    return seen


@pytest.fixture(scope="module")
def shared(module_server, media_dir, pattern_video):
    """One server for the tests below (they only read): the test pattern, then a clip whose sign is read off its
    keyframe (the frame index on, so the page has on-screen text to show). The page opens on the newest: the sign."""
    srv, addr = module_server(http_port=-1, auth_token=TOKEN, frame_index=True)
    with Client(addr, token=TOKEN) as c:
        pattern = wait_done(c, c.start(str(pattern_video), fps=FPS, clip_frames=CLIP).stream_id)
        sign = wait_done(c, c.start(str(text_off_keyframe_clip(media_dir)), fps=2, clip_frames=4).stream_id)
    assert state_name(sign.state) == "finished" and sign.chunks == 4
    return srv, sign, pattern


def test_the_page_notes_random_weights_shows_evidence_best_first_and_keeps_the_window(shared, page, describer):
    srv, sign, pattern = shared
    failures = console_failures(page)
    sign_in(page, srv.http_port)
    page.wait_for_selector("#stream-state.finished")
    assert page.text_content("#stream-title") == sign.stream_id
    # the tiny model's weights are random: said before any question, as `vigil ask` says it
    note = page.locator("#model-note")
    assert note.is_visible() and "random weights" in note.text_content() and "noise" in note.text_content()

    page.fill("#win-start", "3")
    page.fill("#win-end", "8")
    page.fill("#question", QUESTION)
    page.press("#question", "Enter")
    page.wait_for_selector("#answer[data-done=true]")
    page.wait_for_function("() => [...document.querySelectorAll('.evidence img')].every(i => i.complete && "
                           "i.naturalWidth > 0)")
    cards = page.locator("#evidence .evidence")
    ranks = [int(r) for r in page.eval_on_selector_all("#evidence .evidence", "es => es.map(e => e.dataset.rank)")]
    starts = [float(v) for v in page.eval_on_selector_all("#evidence .evidence", "es => es.map(e => e.dataset.start)")]
    assert len(ranks) >= 2 and ranks == sorted(ranks) and ranks[0] == 1  # best first ...
    assert starts[0] == pytest.approx(4.0) and min(starts) < starts[0]  # ... which is not time order here
    best = cards.first
    text = best.locator(".ev-text")  # rank, signals and the text read on screen, on the page (not in a tooltip)
    assert text.is_visible() and SIGN.replace(" ", "") in text.text_content().replace(" ", "").upper()
    assert best.locator(".ev-rank").is_visible() and best.locator(".ev-rank").text_content() == "#1"
    assert best.locator(".ev-signals").is_visible() and "ocr #1" in best.locator(".ev-signals").text_content()
    # its image is the frame the text was read in
    src = best.locator("img").get_attribute("src")
    assert src.endswith("?frame=text")
    shown = page.request.get(f"http://127.0.0.1:{srv.http_port}{src}")
    assert shown.ok and SIGN.replace(" ", "") in read_text(describer, shown.body())

    # the searched window stays in view once the answer is done, and after the next poll redraws the timeline
    searched, band = page.locator("#searched"), page.locator("#searched-band")
    assert searched.is_visible() and "3.0s to 8.0s" in searched.text_content()
    assert "the window you set" in searched.text_content() and band.is_visible()
    with page.expect_response(lambda r: "/chunks?" in r.url):
        pass
    page.wait_for_function("() => !document.getElementById('searched-band').hidden")
    assert searched.is_visible() and note.is_visible()
    SCREENS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENS / "timeline-evidence.png"), full_page=True)

    # the thumbnail of that chunk opens the frame with the text, too
    page.locator(".thumb[data-chunk='2']").click()
    page.wait_for_function("() => { const i = document.getElementById('viewer-img'); "
                           "return !document.getElementById('viewer').hidden && i.complete && i.naturalWidth > 0 }")
    assert page.get_attribute("#viewer-img", "src").endswith("?frame=text")
    assert "where its text was read" in page.text_content("#viewer-caption")

    # another stream: the question, its answer and its window do not carry over
    page.click(f".stream-button[data-sid='{pattern.stream_id}']")
    page.wait_for_function("id => document.getElementById('stream-title').textContent === id", arg=pattern.stream_id)
    assert page.input_value("#question") == ""
    assert not searched.is_visible() and page.locator("#evidence .evidence").count() == 0
    assert page.text_content("#answer") == ""
    page.wait_for_selector("#stream-state.finished")
    assert failures == []  # nothing 404s (the favicon is served), no console error


def test_the_alerts_panel_names_the_rule_once(shared, page):
    """An alert as the ingest worker records it (the event log entry, through the store) listed on the page."""
    from services import alerts

    srv, sign, _ = shared
    a = alerts.Alert(id=f"{sign.stream_id}:forklift:c2", stream_id=sign.stream_id, camera="yard", rule="forklift",
                     kind="query", start_s=4.0, end_s=6.0, matched_text="FORKLIFT3MOVING", score=0.71, signal="ocr",
                     chunk_id=2, keyframe_s=4.0, fired_unix=1.0)
    srv.rt.store.event(sign.stream_id, alerts.EVENT_KIND, alert=a.to_json(),
                       message="forklift (query): FORKLIFT3MOVING")  # what services/alerts writes
    sign_in(page, srv.http_port)  # the page opens on the newest stream: the sign's
    item = page.wait_for_selector("#alert-list li button")
    line = page.eval_on_selector("#alert-list li", "li => li.textContent")
    assert item.text_content() == "4.0s"
    assert line == "4.0s forklift (query): FORKLIFT3MOVING"


def test_the_empty_page_gives_a_command_that_works(make_server, page, pattern_video):
    from services.cli.parser import build_parser

    srv, _ = make_server(http_port=-1, auth_token=TOKEN)  # a namespace of its own: no streams
    failures = console_failures(page)
    sign_in(page, srv.http_port)
    empty = page.wait_for_selector("#empty:not([hidden])")
    assert empty.is_visible() and not page.locator("#stream").is_visible()
    commands = page.eval_on_selector_all("#empty code.cli", "cs => cs.map(c => c.textContent)")
    assert commands and commands[0] == "vigil ingest PATH_OR_URL"
    parser = build_parser()
    real = {"PATH_OR_URL": str(pattern_video), "FILE": str(pattern_video)}
    for command in commands:  # each, with a real path for its placeholder, is what the CLI accepts
        words = [real.get(w, w) for w in command.split()]
        assert words[0] == "vigil"
        args = parser.parse_args(words[1:])
        assert args.cmd == words[1] and str(pattern_video) in vars(args).values()
    with pytest.raises(SystemExit):  # what the page said before: refused by the parser
        parser.parse_args(["ingest", "start", str(pattern_video)])
    page.wait_for_timeout(200)
    assert failures == []


EVIL_PAGE = """<!doctype html><html><body><script>
const target = "http://127.0.0.1:%(port)d/api/v1/streams/%(sid)s/ask";
const body = JSON.stringify({question: "what is happening?"});
window.results = [];
// a read, to show the cookie goes along from this page (it answers 200, not 401; the page cannot read it)
fetch("http://127.0.0.1:%(port)d/api/v1/streams", {mode: "no-cors", credentials: "include"});
// a "simple" request (no preflight): the cookie goes along (SameSite=Strict does not separate ports)
fetch(target, {method: "POST", mode: "no-cors", credentials: "include", headers: {"Content-Type": "text/plain"},
               body}).then(() => results.push("plain sent"), () => results.push("plain failed"));
// a JSON one needs a preflight the server does not grant
fetch(target, {method: "POST", mode: "cors", credentials: "include", headers: {"Content-Type": "application/json"},
               body}).then(r => results.push("json " + r.status), () => results.push("json blocked"));
</script></body></html>"""


def test_a_page_on_another_port_cannot_post_with_the_signed_in_cookie(served, page):
    """A signed-in browser opens a page served from another port of 127.0.0.1; its cross-origin POSTs to /ask
    carry the login cookie, and are refused (and a question never runs)."""
    import http.server
    import threading

    srv, info = served
    sign_in(page, srv.http_port)
    page.wait_for_selector("#stream:not([hidden])")
    html = (EVIL_PAGE % {"port": srv.http_port, "sid": info.stream_id}).encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(html)))
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args):
            pass

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    asked = srv.rt.metrics.registry.get_sample_value
    before = asked("vigil_question_seconds_count", {"outcome": "ok"}) or 0.0
    seen: list[tuple[str, int, str]] = []
    page.on("response", lambda r: seen.append((r.request.method, r.status, r.url.rsplit("/", 1)[-1]))
            if "/api/" in r.url else None)
    try:
        page.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        page.wait_for_function("() => window.results && window.results.length === 2")
        page.wait_for_timeout(200)  # the read's response event
        results = sorted(page.evaluate("() => window.results"))
    finally:
        evil.shutdown()
        evil.server_close()
    assert ("GET", 200, "streams") in seen, f"the cookie did not go along: nothing tested ({seen})"
    posts = [status for method, status, _ in seen if method == "POST"]
    assert posts and all(status in (403, 415) for status in posts), seen
    assert results[0] == "json blocked", results  # its preflight is not granted: the POST is never sent
    assert (asked("vigil_question_seconds_count", {"outcome": "ok"}) or 0.0) == before
