"""The Python client of a vigil server (synchronous, over gRPC): what the `vigil` CLI and the tests use.

    from services.client import Client, state_name

    with Client("localhost", token=os.environ.get("VIGIL_AUTH_TOKEN")) as c:   # localhost:50051
        info = c.start("/media/dock.mp4", fps=2)                              # a path under VIGIL_MEDIA_ROOTS
        for ev in c.watch(info.stream_id):                                     # until the stream ends
            print(state_name(ev.info.state), ev.info.chunks)
        resp = c.ask(info.stream_id, "when did the truck arrive?")
        print(resp.answer, [(e.start_s, e.end_s) for e in resp.evidence])
        c.delete(info.stream_id)

Every method is one RPC of `proto/vigil/v1/` and returns its message (`StreamInfo`, `AskResponse`, ...); errors are
`grpc.RpcError` with the server's status code and a message that says what to change (`NOT_FOUND`, `INVALID_ARGUMENT`,
`PERMISSION_DENIED` for a path outside the media roots, `UNAVAILABLE` when the server or its store is unreachable).
`as_json(message)` is any message as JSON data: what `vigil ... --json` prints and the HTTP API (/api/v1) serves.
"""
from __future__ import annotations

import base64
import ipaddress
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from services.wire import ingest_pb2, ingest_pb2_grpc, qa_pb2, qa_pb2_grpc

STATE_NAMES = {v: k for k, v in ingest_pb2.StreamState.items()}


def state_name(value: int) -> str:
    return STATE_NAMES.get(value, "STREAM_STATE_UNSPECIFIED").removeprefix("STREAM_STATE_").lower()


# ---- JSON: one rendering of the messages, for `vigil ... --json` and the HTTP API -----------------------------

def as_json(msg) -> dict[str, Any]:
    """A message of the API as JSON data (dicts, lists, str, numbers, bool, None): what `vigil ... --json` prints
    and the HTTP API (/api/v1) serves, so both name and shape every field alike. Every field under its .proto name,
    unset ones with their default, except:

    * an enum: its value's name without the enum's prefix, in lower case (STREAM_STATE_FINISHED: "finished");
    * 64-bit integers: numbers (the proto3 JSON mapping writes them as strings);
    * a float (32 bits): to the digits it holds (0.8, not 0.800000011920929); a double that is not finite (the
      end of a gap still open): null;
    * a wall-clock time (wall_start_unix, wall_end_unix) of 0, none known (a file's gaps and chunks): null;
    * a message field or an `optional` one that is not set: null; of a oneof, only the member that is set;
    * bytes (a keyframe JPEG): base64 under the field's name + "_b64", only when not empty;
    * a TimeWindow's end_s 0 ("to the end"): null;
    * window_source and window_phrase (AskResponse, AnswerEvidence): in searched_window, as "source" and "phrase";
    * MemoryOptions: by option name, as memory/options.py and the command line's flags name them."""
    desc = msg.DESCRIPTOR
    if (special := _SPECIAL.get(desc.full_name)) is not None:
        return special(msg)
    out: dict[str, Any] = {}
    for f in desc.fields:
        oneof = f.containing_oneof
        if oneof is not None and oneof.name != f"_{f.name}" and msg.WhichOneof(oneof.name) != f.name:
            continue  # a member of a real oneof that is not the one set (`_name`: proto3 `optional`'s own oneof)
        value = getattr(msg, f.name)
        if f.type == f.TYPE_BYTES:
            if value:
                out[f"{f.name}_b64"] = base64.b64encode(value).decode()
        elif f.is_repeated:
            out[f.name] = [as_json(v) for v in value] if f.message_type else [_scalar(f, v) for v in value]
        elif f.has_presence and not msg.HasField(f.name):
            out[f.name] = None
        else:
            out[f.name] = as_json(value) if f.message_type else _scalar(f, value)
    if "searched_window" in out and "window_source" in out:
        out["searched_window"] = {**(out["searched_window"] or {}), "source": out.pop("window_source"),
                                  "phrase": out.pop("window_phrase", "")}
    return out


def _scalar(f, value):
    if f.type == f.TYPE_ENUM:
        unset = f.enum_type.values_by_number.get(0)
        prefix = unset.name.removesuffix("UNSPECIFIED") if unset is not None else ""
        named = f.enum_type.values_by_number.get(value)
        return named.name.removeprefix(prefix).lower() if named is not None else value
    if f.type == f.TYPE_FLOAT:
        return _float32(value)
    if f.type == f.TYPE_DOUBLE:
        return None if not math.isfinite(value) or (value == 0 and f.name.startswith("wall_")) else value
    return value


def _float32(x: float) -> float | None:
    """A float field's value (a float32 widened to a double) with the fewest digits that give it back."""
    if not math.isfinite(x):
        return None
    for digits in range(6, 10):
        short = float(f"{x:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", short))[0] == x:
            return short
    return x


def _time_window(w) -> dict[str, Any]:
    return {"start_s": _scalar(w.DESCRIPTOR.fields_by_name["start_s"], w.start_s),
            "end_s": w.end_s if w.end_s > 0 and math.isfinite(w.end_s) else None}  # 0: to the end


def _memory_options(m) -> dict[str, Any]:
    from services import memory_wire

    return memory_wire.overrides_from_proto(m)


_SPECIAL = {"vigil.v1.TimeWindow": _time_window, "vigil.v1.MemoryOptions": _memory_options}


Pem = str | Path | bytes  # a PEM file's path, or its bytes


def _pem(value: Pem | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).expanduser().read_bytes()


def is_local(address: str) -> bool:
    """Whether a gRPC target stays on this host (loopback, a unix socket): a token sent there in plaintext
    crosses no network."""
    a = address.strip()
    if a.startswith(("unix:", "unix-abstract:")):
        return True
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if a.startswith(scheme):
            a = a[len(scheme):]
            break
    if a.startswith("["):
        host = a[1:a.find("]")] if "]" in a else a[1:]
    elif a.count(":") == 1:
        host = a.rsplit(":", 1)[0]
    else:
        host = a  # a bare host, or a bare IPv6 address
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


DEFAULT_PORT = 50051


def server_address(address: str) -> str:
    """A gRPC target with vigil's port when none is given: "localhost" -> "localhost:50051" (gRPC alone would try
    443), "::1" -> "[::1]:50051"; "host:port", "unix:PATH" and other schemes are kept as they are."""
    a = address.strip()
    prefix = ""
    for scheme in ("dns:///", "dns:"):
        if a.startswith(scheme):
            prefix, a = scheme, a[len(scheme):]
            break
    else:
        if ":" in a and a.split(":", 1)[0] in ("unix", "unix-abstract", "ipv4", "ipv6", "vsock"):
            return a
    if a.startswith("["):  # [v6] or [v6]:port
        close = a.find("]")
        if close != -1 and not a[close + 1:].lstrip(":"):
            a = f"{a[:close + 1]}:{DEFAULT_PORT}"
    elif a.count(":") > 1:  # a bare IPv6 address
        a = f"[{a}]:{DEFAULT_PORT}"
    elif ":" not in a or a.endswith(":"):
        a = f"{a.rstrip(':')}:{DEFAULT_PORT}"
    return prefix + a


class Client:
    """A connection to one vigil server. `address`: "host:port" (no port: 50051); `token`: the server's
    VIGIL_AUTH_TOKEN, sent as `authorization: Bearer` on every call (None: no auth).

    `tls_ca`: the CA bundle to trust (PEM path or bytes); `tls_cert` + `tls_key`: this client's certificate for
    mutual TLS; `server_name`: the name to check the server's certificate against (default: the address's host).
    Any of them, or `tls=True` (the system's trusted CAs), makes the channel TLS; none: plaintext."""

    def __init__(self, address: str, token: str | None = None, max_message_bytes: int = 8 * 1024 * 1024, *,
                 tls_ca: Pem | None = None, tls_cert: Pem | None = None, tls_key: Pem | None = None,
                 server_name: str | None = None, tls: bool = False) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("a client certificate needs its key: give both tls_cert and tls_key, or neither")
        address = server_address(address)
        self.address = address
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        self.tls = tls or any(v is not None for v in (tls_ca, tls_cert, tls_key, server_name))
        if self.tls:
            creds = grpc.ssl_channel_credentials(root_certificates=_pem(tls_ca), private_key=_pem(tls_key),
                                                 certificate_chain=_pem(tls_cert))
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            self.channel = grpc.secure_channel(address, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self.metadata = [("authorization", f"Bearer {token}")] if token else None
        self.ingest = ingest_pb2_grpc.IngestServiceStub(self.channel)
        self.qa = qa_pb2_grpc.QAServiceStub(self.channel)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel (what `with Client(...)` does at the end)."""
        self.channel.close()

    def start(self, source: str, fps: float = 0.0, clip_frames: int = 0,
              memory: ingest_pb2.MemoryOptions | None = None) -> ingest_pb2.StreamInfo:
        """Start a stream from `source`: a file path the server can read (under its VIGIL_MEDIA_ROOTS, else
        PERMISSION_DENIED) or an rtsp:// URL. Returns at once with the new stream's StreamInfo (state starting);
        follow it with `watch`. `fps` (sampled frames per second), `clip_frames` (frames per chunk): 0 takes the
        server's VIGIL_FPS / VIGIL_CLIP_FRAMES; `memory`: per-stream memory options (services.memory_wire
        `overrides_to_proto`), unset fields the server's defaults."""
        return self.ingest.StartStream(
            ingest_pb2.StartStreamRequest(source=source, fps=fps, clip_frames=clip_frames, memory=memory),
            metadata=self.metadata)

    def push(self, chunks, name: str = "", fmt: str = "mpegts", fps: float = 0.0, clip_frames: int = 0,
             live: bool = False, timeout: float | None = None,
             memory: ingest_pb2.MemoryOptions | None = None) -> ingest_pb2.StreamInfo:
        """Push a video's bytes as one stream; returns its final StreamInfo once the server ingested them all.

        `chunks`: an iterable of bytes, in a format the server reads as it arrives: `fmt` "mpegts" or "mp4"
        (fragmented MP4 only: a plain MP4's index is at its end; `streamer.remux.mpegts_blocks(path)` turns any file
        PyAV reads into MPEG-TS blocks on the fly). `name`: shown as the source, "push:<name>". `live`: drop frames
        evenly when ingest falls behind instead of slowing the sender. A push that stops before its last chunk
        (the iterable raised, the call was cancelled or timed out) ends the stream failed, as truncated; what was
        stored until then stays answerable."""
        def messages():
            yield ingest_pb2.PushStreamRequest(config=ingest_pb2.PushConfig(
                name=name, format=fmt, fps=fps, clip_frames=clip_frames, live=live, memory=memory))
            for data in chunks:
                yield ingest_pb2.PushStreamRequest(data=data)
            yield ingest_pb2.PushStreamRequest(end=ingest_pb2.PushEnd())  # every byte sent: a complete push
        return self.ingest.PushStream(messages(), metadata=self.metadata, timeout=timeout)

    def watch(self, stream_id: str, timeout: float | None = None):
        """The stream's events (StreamEvent) as they happen: a snapshot first, then state changes, gaps, reconnect
        attempts and progress, each with the stream's StreamInfo at that moment; the iterator ends when the stream
        does (finished, stopped or failed). Cancel it (`.cancel()`) to stop following early."""
        return self.ingest.WatchStream(ingest_pb2.WatchStreamRequest(stream_id=stream_id),
                                       metadata=self.metadata, timeout=timeout)

    def describe(self, stream_id: str) -> ingest_pb2.StreamInfo:
        """One stream's StreamInfo now: state, error, frames, chunks, media time covered, memory bytes, gaps."""
        return self.ingest.DescribeStream(ingest_pb2.DescribeStreamRequest(stream_id=stream_id), metadata=self.metadata)

    def list(self, page_size: int = 0) -> list[ingest_pb2.StreamInfo]:
        """Every stream's StreamInfo, in creation order (fetched `page_size` at a time; 0: the server's page)."""
        out, token = [], ""
        while True:
            page = self.list_page(page_size, token)
            out += page.streams
            if not (token := page.next_page_token):
                return out

    def list_page(self, page_size: int = 0, page_token: str = "") -> ingest_pb2.ListStreamsResponse:
        """One page of streams; pass its `next_page_token` for the next ("" when it was the last)."""
        return self.ingest.ListStreams(ingest_pb2.ListStreamsRequest(page_size=page_size, page_token=page_token),
                                       metadata=self.metadata)

    def delete(self, stream_id: str) -> ingest_pb2.DeleteStreamResponse:
        """Stop the stream if it runs and remove everything stored of it (record, memory, chunks, keyframes,
        events); the response says how many keys went."""
        return self.ingest.DeleteStream(ingest_pb2.DeleteStreamRequest(stream_id=stream_id), metadata=self.metadata)

    def stop(self, stream_id: str) -> ingest_pb2.StreamInfo:
        """Stop a running stream (its last partial clip is stored); what it stored stays answerable."""
        return self.ingest.StopStream(ingest_pb2.StopStreamRequest(stream_id=stream_id), metadata=self.metadata)

    def ask(self, stream_id: str, question: str, top_k: int = 0, window: tuple[float, float] | None = None,
            max_new_tokens: int = 0, include_keyframes: bool = False, timeout: float | None = None,
            example_image: bytes = b"", signals: list[str] | tuple[str, ...] = (), conversation_id: str = "",
            new_conversation: bool = False) -> qa_pb2.AskResponse:
        """Ask a question about a stream; the AskResponse holds the answer and its evidence (chunks with their time
        ranges, retrieval signals and scores, on-screen text, and keyframe JPEGs with `include_keyframes`), the
        window searched and why. `window`: (start_s, end_s) media seconds to search (end 0: to the end; None: time
        words in the question narrow it, else the whole stream); `top_k`, `max_new_tokens`: 0 takes the server's
        defaults; `example_image`: JPEG/PNG bytes to search by instead of (or with) the words; `signals`: retrieval
        signals to use (kv, ocr, labels, image, mean; empty: all, fused); `conversation_id`: continue a
        conversation (multi-turn). A server with role ingest answers UNIMPLEMENTED: ask one with role qa or all."""
        req = self._ask_request(stream_id, question, top_k, window, max_new_tokens, include_keyframes, example_image,
                                signals, conversation_id, new_conversation)
        return self.qa.Ask(req, metadata=self.metadata, timeout=timeout)

    def ask_stream(self, stream_id: str, question: str, top_k: int = 0, window: tuple[float, float] | None = None,
                   max_new_tokens: int = 0, include_keyframes: bool = False, timeout: float | None = None,
                   example_image: bytes = b"", signals: list[str] | tuple[str, ...] = (), conversation_id: str = "",
                   new_conversation: bool = False) -> Iterator[qa_pb2.AskStreamResponse]:
        """AskStream's messages as they arrive: `evidence`, then `delta`s, then `done`. Closing the generator early
        (break, or an exception in the loop) cancels the call: the server stops generating at its next token."""
        req = self._ask_request(stream_id, question, top_k, window, max_new_tokens, include_keyframes, example_image,
                                signals, conversation_id, new_conversation)
        yield from self._streamed(self.qa.AskStream(req, metadata=self.metadata, timeout=timeout))

    def summarize(self, stream_id: str, window: tuple[float, float] | None = None, detail: int = 0,
                  max_new_tokens: int = 0, include_keyframes: bool = False,
                  timeout: float | None = None) -> Iterator[qa_pb2.SummarizeResponse]:
        """Summarize's messages as they arrive: `progress` and `segment` per segment, then `done` (the overview)."""
        req = qa_pb2.SummarizeRequest(stream_id=stream_id, detail=detail, max_new_tokens=max_new_tokens,
                                      include_keyframes=include_keyframes)
        if window is not None:
            req.window.start_s, req.window.end_s = window
        yield from self._streamed(self.qa.Summarize(req, metadata=self.metadata, timeout=timeout))

    @staticmethod
    def _streamed(call) -> Iterator:
        try:
            yield from call
        finally:
            call.cancel()  # a no-op once the call has ended

    @staticmethod
    def _ask_request(stream_id, question, top_k, window, max_new_tokens, include_keyframes, example_image, signals,
                     conversation_id, new_conversation) -> qa_pb2.AskRequest:
        req = qa_pb2.AskRequest(stream_id=stream_id, question=question, top_k=top_k,
                                max_new_tokens=max_new_tokens, include_keyframes=include_keyframes,
                                example_image=example_image, signals=list(signals), conversation_id=conversation_id,
                                new_conversation=new_conversation)
        if window is not None:
            req.window.start_s, req.window.end_s = window
        return req

    # ---- across streams (cameras): Search, AskAcross, Report ----------------------------------------------------

    @staticmethod
    def _across(req, streams, group, window, wall_window, when) -> None:
        """Fill a cross-stream request's selector and window (at most one of window, wall_window, when)."""
        if isinstance(streams, str):
            streams = [streams]
        req.streams.streams.extend(streams or ())
        req.streams.group = group
        if window is not None:
            req.window.start_s, req.window.end_s = window
        if wall_window is not None:
            req.wall_window.start_unix, req.wall_window.end_unix = wall_window
        req.when = when

    def search(self, question: str = "", streams: list[str] | tuple[str, ...] | str = (), group: str = "", *,
               window: tuple[float, float] | None = None, since: float | None = None, until: float | None = None,
               when: str = "", top_k: int = 0, example_image: bytes = b"", signals: list[str] | tuple[str, ...] = (),
               include_keyframes: bool = False, timeout: float | None = None) -> qa_pb2.SearchResponse:
        """Moments ranked across cameras: `streams` (camera names or stream ids), a camera `group` of the server's
        config file, or neither (every stream). The window, at most one of: `window` (start_s, end_s) media seconds
        of each stream; `since`/`until` wall-clock Unix seconds (until None: now); `when` time words read by the
        server ("since 22:00", "last night"). Returns a SearchResponse: `moments` best first, each with its camera,
        stream, media and wall-clock range, fused score, signals, on-screen text and keyframe reference."""
        req = qa_pb2.SearchRequest(question=question, example_image=example_image, top_k=top_k,
                                   signals=list(signals), include_keyframes=include_keyframes)
        wall = None if since is None and until is None else (since or 0.0, until or 0.0)
        self._across(req, streams, group, window, wall, when)
        return self.qa.Search(req, metadata=self.metadata, timeout=timeout)

    def ask_across(self, question: str, streams: list[str] | tuple[str, ...] | str = (), group: str = "", *,
                   window: tuple[float, float] | None = None, since: float | None = None,
                   until: float | None = None, when: str = "", top_k: int = 0, max_cameras: int = 0,
                   max_new_tokens: int = 0, include_keyframes: bool = False, conversation_id: str = "",
                   new_conversation: bool = False, timeout: float | None = None) -> qa_pb2.AskAcrossResponse:
        """A question over several cameras (selector and window as `search`): the answer is generated on the
        memories of the best `max_cameras` cameras found (0: the server default); every evidence Moment names its
        camera, `cameras` holds each camera's part. `conversation_id` / `new_conversation`: multi-turn, as `ask`."""
        req = qa_pb2.AskAcrossRequest(question=question, top_k=top_k, max_cameras=max_cameras,
                                      max_new_tokens=max_new_tokens, include_keyframes=include_keyframes,
                                      conversation_id=conversation_id, new_conversation=new_conversation)
        wall = None if since is None and until is None else (since or 0.0, until or 0.0)
        self._across(req, streams, group, window, wall, when)
        return self.qa.AskAcross(req, metadata=self.metadata, timeout=timeout)

    def report(self, streams: list[str] | tuple[str, ...] | str = (), group: str = "", *,
               window: tuple[float, float] | None = None, since: float | None = None, until: float | None = None,
               when: str = "", detail: int = 0, max_new_tokens: int = 0, include_keyframes: bool = False,
               timeout: float | None = None) -> Iterator[qa_pb2.ReportResponse]:
        """Report's messages as they arrive (selector and window as `search`): per camera `progress`, its
        `segment`s and its `camera` summary, then the overview's `progress` and `done`."""
        req = qa_pb2.ReportRequest(detail=detail, max_new_tokens=max_new_tokens, include_keyframes=include_keyframes)
        wall = None if since is None and until is None else (since or 0.0, until or 0.0)
        self._across(req, streams, group, window, wall, when)
        yield from self._streamed(self.qa.Report(req, metadata=self.metadata, timeout=timeout))
