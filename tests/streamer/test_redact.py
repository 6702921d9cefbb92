"""streamer.redact: credentials out of URLs and text, everything else kept as it was."""
from __future__ import annotations

import pytest

from streamer import live
from streamer.redact import is_secret_name, redact_source, redact_text, redact_url


@pytest.mark.parametrize("url, shown", [
    # user info -> ***@ ; secret parameters' values -> *** ; the rest verbatim (order, encoding, port as written)
    ("rtsp://admin:s3cret@10.0.0.5:554/cam?token=abc&channel=2", "rtsp://***@10.0.0.5:554/cam?token=***&channel=2"),
    ("rtsp://admin@cam/live", "rtsp://***@cam/live"),
    ("rtsps://u:p@[fe80::1]:322/x", "rtsps://***@[fe80::1]:322/x"),
    ("rtsp://cam/x?Password=1&pass=2&PWD=3&key=4&apikey=5&api_key=6&secret=7&auth=8",
     "rtsp://cam/x?Password=***&pass=***&PWD=***&key=***&apikey=***&api_key=***&secret=***&auth=***"),
    ("http://h/x?signature=1&sig=2&access_token=3&credential=4&credentials=5&session=6&subtype=0",
     "http://h/x?signature=***&sig=***&access_token=***&credential=***&credentials=***&session=***&subtype=0"),
    ("https://h/x?x-api-key=1&AuthToken=2&client_secret=3&sessionid=4&width=640",
     "https://h/x?x-api-key=***&AuthToken=***&client_secret=***&sessionid=***&width=640"),
    ("rtsp://h/x?api%5Fkey=1&a+b=2", "rtsp://h/x?api%5Fkey=***&a+b=2"),  # names are matched decoded
    ("rtsp://h/x?token=&flag&channel=2;token=9", "rtsp://h/x?token=&flag&channel=2;token=***"),  # ; separates too
    ("https://h/cb#access_token=abc&state=ok", "https://h/cb#access_token=***&state=ok"),  # a fragment as params
    ("https://h/page#section-2", "https://h/page#section-2"),
    # unescaped "#", "?", "/" in a password: still hidden whole
    ("rtsp://admin:pa#ss@cam/x?channel=2", "rtsp://***@cam/x?channel=2"),
    ("rtsp://admin:pa?ss@cam/x", "rtsp://***@cam/x"),
    ("rtsp://admin:pa/ss@cam/x", "rtsp://***@cam/x"),
    ("rtsp://a:b@c@cam/x", "rtsp://***@cam/x"),
    # an "@" in a query value is no user info
    ("http://h/x?email=a@b.com&password=1", "http://h/x?email=a@b.com&password=***"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown
    assert redact_url(shown) == shown  # idempotent


@pytest.mark.parametrize("url", [
    "rtsp://127.0.0.1:8554/cam", "rtsp://cam/live?channel=2&subtype=0", "http://h:80/a/b.mp4",
    "udp://239.0.0.1:1234", "srt://h:9000?mode=caller&latency=200", "rtsp://[::1]/x",
])
def test_urls_without_secrets_are_unchanged(url):
    assert redact_url(url) == url


def test_secret_names():
    for name in ("token", "TOKEN", "x-api-key", "X-Amz-Signature", "refresh_token", "passphrase", "sessionId"):
        assert is_secret_name(name), name
    for name in ("channel", "subtype", "width", "fps", "mode", "latency", "stream"):
        assert not is_secret_name(name), name


def test_redact_text_finds_urls_and_bare_userinfo_in_any_text():
    ffmpeg = ("Error opening input: 'rtsp://admin:hunter2@10.0.0.5/ch1?token=T0K&channel=2': "
              "Connection refused; retry srt://h:1?passphrase=PP, then (https://u:p@x.y/z?sig=SG).")
    out = redact_text(ffmpeg)
    assert out == ("Error opening input: 'rtsp://***@10.0.0.5/ch1?token=***&channel=2': "
                   "Connection refused; retry srt://h:1?passphrase=***, then (https://***@x.y/z?sig=***).")
    assert redact_text("camera admin:hunter2@10.0.0.5:554 is down") == "camera ***@10.0.0.5:554 is down"
    assert (redact_text("admin:hunter2@10.0.0.5/cam?token=T0K&channel=2: no such file")
            == "***@10.0.0.5/cam?token=***&channel=2: no such file")  # a URL pasted without its scheme
    assert redact_text('open "rtmp://live:key@ingest/app"') == 'open "rtmp://***@ingest/app"'
    multi = "a rtsp://u:one@h1/x b\nc udp://h2:5?key=two d RTSP://U:three@H3/"
    assert not any(s in redact_text(multi) for s in ("one", "two", "three"))
    assert "h1" in redact_text(multi) and "H3" in redact_text(multi)


def test_redact_text_leaves_ordinary_text_alone():
    for text in ("stream ab12 failed: 127.0.0.1:554: connection refused (nothing listens there)",
                 "mail ops@example.com at 12:30", "ratio 16:9 and [::1]:554", "", "plain",
                 "keyframes=3 tokens=5", "a?channel=2&width=640"):
        assert redact_text(text) == text
    assert redact_text(None) is None


def test_redact_source_touches_only_urls():
    assert redact_source("rtsp://a:b@h/x?token=1") == "rtsp://***@h/x?token=***"
    assert redact_source("push:alice@site") == "push:alice@site"  # a push name's "@" is no credential
    assert redact_source("/media/a.mp4") == "/media/a.mp4"


def test_streamer_live_reexports_it():
    assert live.redact_url is redact_url
    with pytest.raises(live.SourceUnavailable) as info:
        live.LiveSource("http://admin:pw@h/x?token=SECRET", live.LiveOptions())
    assert "pw" not in str(info.value) and "SECRET" not in str(info.value) and "http://***@h/x" in str(info.value)
