"""Questions wait for the model on their own bounded queue (services/work.py): control calls never wait behind
them, the excess is refused with RESOURCE_EXHAUSTED, and a question whose client has gone is never run."""
from __future__ import annotations

import os
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.client import Client, state_name
from services.errors import LimitExceeded, status_for
from services.wire import ingest_pb2, qa_pb2
from services.work import Expired, WorkQueue
from tests.conftest import wait_done

# more questions accepted (running + queued) than the event loop's default pool has threads (asyncio's
# min(32, cpus + 4)): if they ran there, no thread would be left for the control calls
WORKERS, QUEUED, ASKS = 2, min(32, (os.cpu_count() or 1) + 4), 50


def until(cond, timeout_s: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached in {timeout_s}s")


def code_of(fut) -> grpc.StatusCode:
    try:
        fut.result()
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


@pytest.fixture
def busy(make_server, pattern_video):
    """A server with one finished stream and a small question queue, and the model's own lock to hold."""
    srv, addr = make_server(question_workers=WORKERS, max_queued_questions=QUEUED)
    client = Client(addr)
    info = wait_done(client, client.start(str(pattern_video), fps=2, clip_frames=4).stream_id)
    assert state_name(info.state) == "finished"
    yield srv, client, info
    if srv.rt.model_lock.locked():  # a failed test must not leave the server's shutdown waiting on the model
        srv.rt.model_lock.release()
    client.channel.close()


def test_control_calls_answer_while_the_model_is_busy_and_excess_questions_are_refused(busy):
    srv, c, info = busy
    req = qa_pb2.AskRequest(stream_id=info.stream_id, question="what happens?", top_k=2)
    assert srv.rt.model_lock.acquire(timeout=60)  # the real lock every question's model work waits on
    try:
        asks = [c.qa.Ask.future(req, timeout=120) for _ in range(ASKS)]
        accepted = WORKERS + QUEUED
        until(lambda: sum(f.done() for f in asks) == ASKS - accepted, what="the excess questions refused")
        assert srv.work.in_flight == accepted and srv.work.waiting == QUEUED
        refused = [f for f in asks if f.done()]
        assert {code_of(f) for f in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert f"{QUEUED} questions are queued" in refused[0].exception().details()

        # every control call completes while the questions still wait for the model (more at once than the
        # event loop's default pool has threads, which is where the questions used to wait)
        describe = ingest_pb2.DescribeStreamRequest(stream_id=info.stream_id)
        describes = [c.ingest.DescribeStream.future(describe, timeout=10) for _ in range(12)]
        assert all(d.result().chunks == info.chunks for d in describes)
        assert [s.stream_id for s in c.list()].count(info.stream_id) == 1
        snapshot = list(c.watch(info.stream_id, timeout=10))
        assert snapshot and snapshot[0].info.chunks == info.chunks
        health = health_pb2_grpc.HealthStub(c.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert not any(f.done() for f in asks if f not in refused)  # still waiting: the lock was never free
    finally:
        srv.rt.model_lock.release()
    answered = [f.result(timeout=120) for f in asks if f not in refused]
    assert len(answered) == accepted and all(len(a.evidence) == 2 for a in answered)
    until(lambda: srv.work.in_flight == 0, what="the queue drained")
    assert len(c.ask(info.stream_id, "and now?", top_k=1).evidence) == 1  # room again


def test_a_question_whose_deadline_passes_in_the_queue_is_dropped_unrun(busy):
    srv, c, info = busy
    req = qa_pb2.AskRequest(stream_id=info.stream_id, question="what happens?", top_k=2)
    assert srv.rt.model_lock.acquire(timeout=60)
    try:
        running = [c.qa.Ask.future(req, timeout=120) for _ in range(WORKERS)]
        until(lambda: srv.work.in_flight == WORKERS, what="the workers taken")
        short = [c.qa.Ask.future(req, timeout=1.0) for _ in range(3)]
        cancelled = c.qa.Ask.future(req, timeout=120)
        until(lambda: srv.work.in_flight == WORKERS + 4, what="the questions queued")
        cancelled.cancel()
        assert {code_of(f) for f in short} == {grpc.StatusCode.DEADLINE_EXCEEDED}
        # the server drops them from the queue while the model is still busy: they never reach a worker
        until(lambda: srv.work.in_flight == WORKERS, timeout_s=10, what="the expired questions dropped")
        assert not any(f.done() for f in running)
    finally:
        srv.rt.model_lock.release()
    assert all(len(f.result(timeout=120).evidence) == 2 for f in running)


def test_work_queue_bounds_and_skips_expired_work():
    """WorkQueue alone, on real threads: one worker, two queued, the fourth refused; an expired call not run."""
    q = WorkQueue(workers=1, max_queued=2)
    gate, ran = threading.Event(), []

    def job(i):
        gate.wait(30)
        ran.append(i)
        return i

    try:
        futs = [q.submit(job, i) for i in range(3)]
        with pytest.raises(LimitExceeded, match="2 questions are queued") as err:
            q.submit(job, 3)
        assert status_for(err.value) == grpc.StatusCode.RESOURCE_EXHAUSTED
        gate.set()
        assert [f.result(30) for f in futs] == [0, 1, 2]
        until(lambda: q.in_flight == 0, what="done")
        late = q.submit(job, 9, deadline=time.monotonic() - 1)
        with pytest.raises(Expired, match="deadline passed"):
            late.result(30)
        stop = threading.Event()
        stop.set()
        with pytest.raises(Expired, match="cancelled"):
            q.submit(job, 10, cancelled=stop).result(30)
        assert 9 not in ran and 10 not in ran
        assert status_for(Expired("x")) == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        gate.set()
        q.shutdown()
    with pytest.raises(LimitExceeded, match="shutting down"):
        q.submit(job, 11)
