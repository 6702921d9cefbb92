#!/usr/bin/python3
"""A real RTSP server for tests: serves an H.264 mp4 as it is (no re-encoding), at real-time pace, with its AAC
audio track beside the video when it has one (``appsrc ! aacparse ! rtpmp4gpay pt=97 name=pay1``).

Run it with the SYSTEM python (PyGObject and the GStreamer RTSP server bindings are Debian
packages, not in the venv):

    /usr/bin/python3 testkit/rtsp_server.py --port 8554 --path /cam --file clip.mp4 [--loop]

The file's H.264 access units are read once at start-up (qtdemux ! h264parse ! appsink, no
decoding). Every client gets its own pipeline (the media is not shared) that starts at the
beginning of the file: ``appsrc ! h264parse ! rtph264pay pt=96 name=pay0``. The RTSP server's
sinks sync to the clock, so the stream goes out at real-time pace. With ``--loop`` the access
units are pushed again and again with their timestamps shifted by the file's duration each
time, so the stream never ends and its RTP timestamps keep increasing.

Listens on 127.0.0.1 only and prints ``ready rtsp://127.0.0.1:PORT/PATH`` once it is.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstApp, GstRtspServer  # noqa: E402,F401


@dataclass
class Clip:
    caps: Gst.Caps
    buffers: list  # Gst.Buffer, one H.264 access unit each, in decoding order
    period_ns: int  # how far the timestamps move on per loop


def read_audio(path: Path, period_ns: int) -> Clip | None:
    """The file's AAC audio frames as parsed (not decoded), looping with the video's period; None: no AAC track."""
    pipe = Gst.parse_launch(
        "filesrc name=src ! qtdemux name=d d.audio_0 ! aacparse ! audio/mpeg ! appsink name=sink sync=false"
    )
    pipe.get_by_name("src").set_property("location", str(path))
    sink = pipe.get_by_name("sink")
    pipe.set_state(Gst.State.PLAYING)
    buffers, caps = [], None
    while True:
        sample = sink.emit("try-pull-sample", 2 * Gst.SECOND)
        if sample is None:
            break
        caps = caps or sample.get_caps()
        buffers.append(sample.get_buffer())
    pipe.set_state(Gst.State.NULL)
    return Clip(caps=caps, buffers=buffers, period_ns=period_ns) if buffers and caps is not None else None


def read_clip(path: Path) -> Clip:
    """The file's H.264 access units, as parsed (not decoded) by GStreamer."""
    pipe = Gst.parse_launch(
        "filesrc name=src ! qtdemux ! h264parse ! video/x-h264,alignment=au ! appsink name=sink sync=false"
    )
    pipe.get_by_name("src").set_property("location", str(path))
    sink = pipe.get_by_name("sink")
    pipe.set_state(Gst.State.PLAYING)
    buffers, caps = [], None
    while True:
        sample = sink.emit("try-pull-sample", 10 * Gst.SECOND)
        if sample is None:
            break
        caps = caps or sample.get_caps()
        buffers.append(sample.get_buffer())
    msg = pipe.get_bus().pop_filtered(Gst.MessageType.ERROR)
    pipe.set_state(Gst.State.NULL)
    if msg is not None:
        err, debug = msg.parse_error()
        raise SystemExit(f"cannot read {path}: {err.message} ({debug})")
    if not buffers or caps is None:
        raise SystemExit(f"cannot read {path}: no H.264 video in it")
    start = min(b.pts for b in buffers if b.pts != Gst.CLOCK_TIME_NONE)
    end = max(b.pts + (b.duration if b.duration != Gst.CLOCK_TIME_NONE else 0)
              for b in buffers if b.pts != Gst.CLOCK_TIME_NONE)
    return Clip(caps=caps, buffers=buffers, period_ns=max(end - start, Gst.SECOND // 100))


_COPY = Gst.BufferCopyFlags.FLAGS | Gst.BufferCopyFlags.TIMESTAMPS | Gst.BufferCopyFlags.META | Gst.BufferCopyFlags.MEMORY
_WHOLE = 2**64 - 1  # (gsize)-1: up to the end of the buffer


class Feeder:
    """Feeds one client's appsrc with the clip's access units, looping if asked."""

    def __init__(self, appsrc: Gst.Element, clip: Clip, loop: bool) -> None:
        self.appsrc, self.clip, self.loop = appsrc, clip, loop
        self.index = 0
        self.offset = 0
        self.done = False
        appsrc.set_property("caps", clip.caps)
        appsrc.set_property("format", Gst.Format.TIME)
        appsrc.set_property("max-bytes", 1 << 20)
        appsrc.connect("need-data", self.on_need_data)

    def on_need_data(self, appsrc: Gst.Element, _length: int) -> None:
        # Push a handful per call; appsrc asks again while its queue is below max-bytes.
        for _ in range(8):
            if self.done:
                return
            if self.index == len(self.clip.buffers):
                if not self.loop:
                    self.done = True
                    appsrc.emit("end-of-stream")
                    return
                self.index = 0
                self.offset += self.clip.period_ns
            src = self.clip.buffers[self.index]
            self.index += 1
            buf = src.copy_region(_COPY, 0, _WHOLE)  # a new buffer sharing the memory; timestamps are its own
            if src.pts != Gst.CLOCK_TIME_NONE:
                buf.pts = src.pts + self.offset
            if src.dts != Gst.CLOCK_TIME_NONE:
                buf.dts = src.dts + self.offset
            if appsrc.emit("push-buffer", buf) != Gst.FlowReturn.OK:
                self.done = True
                return


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/cam")
    ap.add_argument("--file", required=True, help="an mp4 holding H.264 video")
    ap.add_argument("--loop", action="store_true", help="repeat the file forever")
    ap.add_argument("--exit-on-stdin-eof", action="store_true",
                    help="quit when stdin closes (a test harness passes a pipe, so the server dies with it)")
    args = ap.parse_args(argv)

    path = Path(args.file).resolve()
    if not path.is_file():
        print(f"no such file: {path}", file=sys.stderr)
        return 2
    mount = args.path if args.path.startswith("/") else "/" + args.path

    Gst.init(None)
    clip = read_clip(path)
    audio = read_audio(path, clip.period_ns)  # served beside the video when the file has an AAC track

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    launch = "appsrc name=src ! h264parse ! rtph264pay pt=96 config-interval=-1 name=pay0"
    if audio is not None:
        launch += " appsrc name=asrc ! aacparse ! rtpmp4gpay pt=97 name=pay1"
    factory.set_launch(f"( {launch} )")
    factory.set_shared(False)  # every client gets its own pipeline from the start of the file
    feeders: dict[int, Feeder] = {}

    def on_configure(_factory, media):
        feeder = Feeder(media.get_element().get_by_name("src"), clip, args.loop)
        feeders[id(media)] = feeder
        if audio is not None:
            feeders[id(media) + 1] = Feeder(media.get_element().get_by_name("asrc"), audio, args.loop)
        media.connect("unprepared", lambda m: (feeders.pop(id(m), None), feeders.pop(id(m) + 1, None)))

    factory.connect("media-configure", on_configure)
    server.get_mount_points().add_factory(mount, factory)

    if server.attach(None) == 0:
        print(f"could not listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1
    loop = GLib.MainLoop()
    # Drop the sessions of clients that went away without a TEARDOWN.
    GLib.timeout_add_seconds(2, lambda: (server.get_session_pool().cleanup(), True)[1])
    for sig in (signal.SIGINT, signal.SIGTERM):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, lambda: (loop.quit(), False)[1])
    if args.exit_on_stdin_eof:
        def on_stdin(fd, _cond):
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                loop.quit()
                return False
            return True

        GLib.io_add_watch(sys.stdin.fileno(), GLib.PRIORITY_DEFAULT, GLib.IO_IN | GLib.IO_HUP | GLib.IO_ERR, on_stdin)
    print(f"ready rtsp://127.0.0.1:{server.get_bound_port()}{mount}", flush=True)
    loop.run()
    sys.stdout.flush()
    os._exit(0)  # no slow teardown of live pipelines: nothing here needs it


if __name__ == "__main__":
    sys.exit(main())
