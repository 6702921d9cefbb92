"""A small synchronous client for the CLI and tests."""
from __future__ import annotations

import grpc

from services.wire import ingest_pb2, ingest_pb2_grpc, qa_pb2, qa_pb2_grpc

STATE_NAMES = {v: k for k, v in ingest_pb2.StreamState.items()}


def state_name(value: int) -> str:
    return STATE_NAMES.get(value, "STREAM_STATE_UNSPECIFIED").removeprefix("STREAM_STATE_").lower()


class Client:
    def __init__(self, address: str, token: str | None = None, max_message_bytes: int = 8 * 1024 * 1024) -> None:
        self.channel = grpc.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ])
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
        return self.ingest.PushStream(messages(), metadata=self.metadata, timeout=timeout)

    def watch(self, stream_id: str, timeout: float | None = None):
        """StreamEvents: a snapshot, then state changes, gaps and progress until the stream ends."""
        return self.ingest.WatchStream(ingest_pb2.WatchStreamRequest(stream_id=stream_id),
                                       metadata=self.metadata, timeout=timeout)

    def describe(self, stream_id: str) -> ingest_pb2.StreamInfo:
        return self.ingest.DescribeStream(ingest_pb2.DescribeStreamRequest(stream_id=stream_id), metadata=self.metadata)

    def list(self) -> list[ingest_pb2.StreamInfo]:
        return list(self.ingest.ListStreams(ingest_pb2.ListStreamsRequest(), metadata=self.metadata).streams)

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
