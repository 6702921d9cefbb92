"""A small synchronous client for the CLI and tests."""
from __future__ import annotations

import ipaddress
from pathlib import Path

import grpc

from services.wire import ingest_pb2, ingest_pb2_grpc, qa_pb2, qa_pb2_grpc

STATE_NAMES = {v: k for k, v in ingest_pb2.StreamState.items()}


def state_name(value: int) -> str:
    return STATE_NAMES.get(value, "STREAM_STATE_UNSPECIFIED").removeprefix("STREAM_STATE_").lower()


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


class Client:
    """`tls_ca`: the CA bundle to trust (PEM path or bytes); `tls_cert` + `tls_key`: this client's certificate for
    mutual TLS; `server_name`: the name to check the server's certificate against (default: the address's host).
    Any of them, or `tls=True` (the system's trusted CAs), makes the channel TLS; none: plaintext."""

    def __init__(self, address: str, token: str | None = None, max_message_bytes: int = 8 * 1024 * 1024, *,
                 tls_ca: Pem | None = None, tls_cert: Pem | None = None, tls_key: Pem | None = None,
                 server_name: str | None = None, tls: bool = False) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("a client certificate needs its key: give both tls_cert and tls_key, or neither")
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
        self.channel.close()

    def start(self, source: str, fps: float = 0.0, clip_frames: int = 0,
              memory: ingest_pb2.MemoryOptions | None = None) -> ingest_pb2.StreamInfo:
        return self.ingest.StartStream(
            ingest_pb2.StartStreamRequest(source=source, fps=fps, clip_frames=clip_frames, memory=memory),
            metadata=self.metadata)

    def push(self, chunks, name: str = "", fmt: str = "mpegts", fps: float = 0.0, clip_frames: int = 0,
             live: bool = False, timeout: float | None = None,
             memory: ingest_pb2.MemoryOptions | None = None) -> ingest_pb2.StreamInfo:
        """Push byte chunks (an iterable of bytes) as one stream; returns when it is ingested."""
        def messages():
            yield ingest_pb2.PushStreamRequest(config=ingest_pb2.PushConfig(
                name=name, format=fmt, fps=fps, clip_frames=clip_frames, live=live, memory=memory))
            for data in chunks:
                yield ingest_pb2.PushStreamRequest(data=data)
            yield ingest_pb2.PushStreamRequest(end=ingest_pb2.PushEnd())  # every byte sent: a complete push
        return self.ingest.PushStream(messages(), metadata=self.metadata, timeout=timeout)

    def watch(self, stream_id: str, timeout: float | None = None):
        """StreamEvents: a snapshot, then state changes, gaps and progress until the stream ends."""
        return self.ingest.WatchStream(ingest_pb2.WatchStreamRequest(stream_id=stream_id),
                                       metadata=self.metadata, timeout=timeout)

    def describe(self, stream_id: str) -> ingest_pb2.StreamInfo:
        return self.ingest.DescribeStream(ingest_pb2.DescribeStreamRequest(stream_id=stream_id), metadata=self.metadata)

    def list(self, page_size: int = 0) -> list[ingest_pb2.StreamInfo]:
        """Every stream, fetched a page at a time."""
        out, token = [], ""
        while True:
            page = self.list_page(page_size, token)
            out += page.streams
            if not (token := page.next_page_token):
                return out

    def list_page(self, page_size: int = 0, page_token: str = "") -> ingest_pb2.ListStreamsResponse:
        return self.ingest.ListStreams(ingest_pb2.ListStreamsRequest(page_size=page_size, page_token=page_token),
                                       metadata=self.metadata)

    def delete(self, stream_id: str) -> ingest_pb2.DeleteStreamResponse:
        return self.ingest.DeleteStream(ingest_pb2.DeleteStreamRequest(stream_id=stream_id), metadata=self.metadata)

    def stop(self, stream_id: str) -> ingest_pb2.StreamInfo:
        return self.ingest.StopStream(ingest_pb2.StopStreamRequest(stream_id=stream_id), metadata=self.metadata)

    def ask(self, stream_id: str, question: str, top_k: int = 0, window: tuple[float, float] | None = None,
            max_new_tokens: int = 0, include_keyframes: bool = False, timeout: float | None = None,
            example_image: bytes = b"", signals: list[str] | tuple[str, ...] = ()) -> qa_pb2.AskResponse:
        req = qa_pb2.AskRequest(stream_id=stream_id, question=question, top_k=top_k,
                                max_new_tokens=max_new_tokens, include_keyframes=include_keyframes,
                                example_image=example_image, signals=list(signals))
        if window is not None:
            req.window.start_s, req.window.end_s = window
        return self.qa.Ask(req, metadata=self.metadata, timeout=timeout)
