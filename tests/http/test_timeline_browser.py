"""The timeline page in a real browser (Debian's Chromium driven by Playwright) against a real server (tiny model,
real Redis, real footage). Screenshots land in tests/.cache/screens/."""
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
