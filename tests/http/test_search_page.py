"""The page's search over every camera in a real browser (Chromium via Playwright): two named cameras with text
rendered at known times, a question about one camera's text; the grid shows that camera's moment first with its
keyframe, time and text, and clicking it opens that camera's timeline at that moment."""
from __future__ import annotations

import uuid

import pytest

from services.client import Client
from testkit import media
from tests.conftest import wait_done
from tests.http.test_timeline_browser import SCREENS, browser, page, sign_in  # noqa: F401  (fixtures)

TOKEN = "search-page-token-0123456789abcdef"


@pytest.fixture(scope="module")
def cameras(module_server, tmp_path_factory):
    tag = uuid.uuid4().hex[:6]
    names = {"gate": f"gate-{tag}", "dock": f"dock-{tag}"}
    files = {"gate": media.captioned_footage("bikes.mp4", [(4.0, 10.0, "GATE 7 CLOSED")], seconds=16, fps=5,
                                             size=(480, 204)),
             "dock": media.captioned_footage("bikes.mp4", [(20.0, 26.0, "TRUCK 22 ARRIVED")], seconds=32, fps=5,
                                             size=(480, 204))}
    cfg = tmp_path_factory.mktemp("cfg") / "vigil.toml"
    cfg.write_text("".join(f'[[cameras]]\nname = "{names[c]}"\nsource = "{files[c]}"\nfps = 1\nclip_frames = 4\n\n'
                           for c in names))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VIGIL_CONFIG", str(cfg))
        srv, addr = module_server(frame_index=True, http_port=-1, auth_token=TOKEN)
    with Client(addr, token=TOKEN) as c:
        ids = {k: c.describe(n).stream_id for k, n in names.items()}
        for sid in ids.values():
            wait_done(c, sid)
    return srv, names, ids


def test_the_search_box_finds_the_camera_and_opens_its_timeline_there(cameras, page):
    srv, names, ids = cameras
    sign_in(page, srv.http_port, TOKEN)
    page.wait_for_selector("#stream-state.finished")
    page.fill("#search-q", "When did truck 22 arrive?")
    page.press("#search-q", "Enter")
    page.wait_for_selector("#search-results .moment")
    first = page.locator("#search-results .moment").first
    assert first.get_attribute("data-camera") == names["dock"]
    assert "TRUCK" in first.text_content().upper() and names["dock"] in first.text_content()
    start = float(first.get_attribute("data-start"))
    assert 16.0 <= start < 26.0
    page.wait_for_function("() => [...document.querySelectorAll('#search-results img')].every(i => i.complete && "
                           "i.naturalWidth > 0)")
    cams = set(page.eval_on_selector_all("#search-results .moment", "ms => ms.map(m => m.dataset.camera)"))
    assert cams <= set(names.values())
    SCREENS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENS / "search.png"), full_page=True)

    # the gate's timeline is open (the newest stream first); the dock's moment opens the dock's timeline there
    page.evaluate("sid => select(sid)", ids["gate"])
    page.wait_for_function("name => document.getElementById('stream-title').textContent.startsWith(name)",
                           arg=names["gate"])
    first.click()
    page.wait_for_function("name => document.getElementById('stream-title').textContent.startsWith(name)",
                           arg=names["dock"])
    assert f"stream={ids['dock']}" in page.evaluate("() => location.hash")
    page.wait_for_function("() => !document.getElementById('cursor').hidden")
    t = float(page.get_attribute("#cursor", "data-t"))
    assert start <= t < start + 4.0
    hit = page.eval_on_selector_all(".thumb.hit", "bs => bs.map(b => Number(b.dataset.start))")
    assert hit and all(h <= t for h in hit)


def test_a_moments_timeline_url_opens_that_camera_there(cameras, page):
    import json

    from tests.http.test_api import call

    srv, names, ids = cameras
    status, _, raw = call(srv.http_port, "/api/v1/search", token=TOKEN,
                          body={"question": "When did the sign say that gate seven was closed?", "top_k": 3})
    assert status == 200, raw
    top = json.loads(raw)["moments"][0]
    assert top["camera"] == names["gate"] and top["timeline_url"].startswith(f"/#stream={ids['gate']}&t=")
    sign_in(page, srv.http_port, TOKEN)
    page.wait_for_selector("#stream-state.finished")
    page.goto("about:blank")  # a fresh load (a change of the hash alone reloads nothing)
    page.goto(f"http://127.0.0.1:{srv.http_port}{top['timeline_url']}")
    page.wait_for_function("name => document.getElementById('stream-title').textContent.startsWith(name)",
                           arg=names["gate"])
    page.wait_for_function("() => !document.getElementById('cursor').hidden")
    assert float(page.get_attribute("#cursor", "data-t")) == pytest.approx(top["start_s"])
