"""A local file's bytes for PushStream: sent as they are when the server can read them as they arrive (MPEG-TS,
fragmented MP4), else remuxed into MPEG-TS on the fly (PyAV, packets copied, no re-encoding).

A plain MP4 keeps its index (`moov`) at the end, after the media data: a reader that cannot seek back, as a pushed
stream's cannot, finds nothing to decode before the end (PyAV's EOFError). Remuxed, the same packets arrive as
MPEG-TS, which carries its own timing with every packet.
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

TS_PACKET = 188
BLOCK = 256 * 1024


class CannotRemux(Exception):
    """The file cannot be turned into MPEG-TS here (not a video, or a codec MPEG-TS does not carry)."""


def sniff(path: Path) -> str:
    """"mpegts", "fmp4" (fragmented MP4: `moof` boxes), "mp4" (the index in one `moov`), or "other"."""
    with open(path, "rb") as fh:
        head = fh.read(TS_PACKET * 3)
        if len(head) > TS_PACKET * 2 and all(head[i * TS_PACKET] == 0x47 for i in range(3)):
            return "mpegts"
        if head[4:8] not in (b"ftyp", b"moov", b"free", b"skip", b"mdat", b"wide", b"styp"):
            return "other"
        fh.seek(0)
        kinds = set()
        while len(box := fh.read(8)) == 8:  # top-level boxes only: a few, whatever the file's size
            size, kind = struct.unpack(">I4s", box)
            if size == 1:
                size = struct.unpack(">Q", fh.read(8))[0] - 8
            elif size == 0:  # to the end of the file
                kinds.add(kind)
                break
            kinds.add(kind)
            if kind == b"moof":
                return "fmp4"
            if size < 8:
                break
            fh.seek(size - 8, 1)
        return "mp4" if b"moov" in kinds else "other"


class _Sink:
    """What the muxer writes, taken out in blocks (write-only: MPEG-TS never seeks back)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        self.size += len(data)
        return len(data)

    def take(self) -> bytes:
        out, self.parts, self.size = b"".join(self.parts), [], 0
        return out


def file_blocks(path: Path, block: int = BLOCK) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while data := fh.read(block):
            yield data


def mpegts_blocks(path: Path, block: int = BLOCK, pace=None) -> Iterator[bytes]:
    """The file's first video stream as MPEG-TS, `block` bytes at a time (packets copied; audio left out: the
    server reads video only). The file is opened and the output set up on the first `next()`, so an unreadable file
    or a codec MPEG-TS cannot carry fails there, before anything is sent. `pace(media_s)`, when given, is called
    before each packet with its decode time (seconds) and may wait (streamer.push.RealtimePacer); what is muxed
    is then handed out after every packet, not in blocks."""
    import av

    sink = _Sink()
    try:
        src = av.open(str(path))
    except av.FFmpegError as exc:
        raise CannotRemux(f"{path}: not a video PyAV can read ({exc.__class__.__name__}: {exc})") from None
    with src:
        if not src.streams.video:
            raise CannotRemux(f"{path}: has no video stream")
        vin = src.streams.video[0]
        codec = vin.codec_context.name
        try:
            out = av.open(sink, mode="w", format="mpegts")
            vout = out.add_stream_from_template(vin)
        except (av.FFmpegError, ValueError) as exc:
            raise CannotRemux(f"{path}: its {codec} video cannot be carried in MPEG-TS ({exc})") from None
        try:
            for packet in src.demux(vin):
                if packet.dts is None:  # the demuxer's flush packet
                    continue
                if pace is not None:
                    t = packet.dts if packet.dts is not None else packet.pts
                    if t is not None and packet.time_base is not None:
                        if sink.size:
                            yield sink.take()  # what is due goes before the wait
                        pace(float(t * packet.time_base))
                packet.stream = vout
                out.mux(packet)
                if sink.size >= block:
                    yield sink.take()
        except av.FFmpegError as exc:
            raise CannotRemux(f"{path}: reading its {codec} video failed while remuxing ({exc})") from None
        finally:
            try:
                out.close()
            except av.FFmpegError:
                pass
    if sink.size:
        yield sink.take()
