"""AskStream and multi-turn conversations over real gRPC servers (tiny Qwen2.5-VL, real Redis, real footage):
evidence before text, the same final text as Ask, cancellation that stops the model, ingest that goes on while
an answer streams, and conversations any QA replica continues."""
from __future__ import annotations

import json
import logging
import os
import pty
import select
import subprocess
import time

import grpc
import pytest
import redis

from encoders.base import Turn
from memory.conversations import MAX_STORED, ConversationStore, recent_turns
from services import qa
from services.client import Client, state_name
from testkit import media
from tests.conftest import wait_done
from tests.services.test_cli import VIGIL, run, serve_process  # noqa: F401  (serve_process: a fixture)

FPS, CLIP = 2.0, 4
QUESTION = "What is happening in the video?"


@pytest.fixture(scope="module")
def stream(module_server, pattern_video):
    srv, addr = module_server()
    with Client(addr) as c:
        info = wait_done(c, c.start(str(pattern_video), fps=FPS, clip_frames=CLIP).stream_id)
    assert state_name(info.state) == "finished" and info.chunks >= 3
    return srv, addr, info.stream_id


def kinds(msgs) -> list[str]:
    return [m.WhichOneof("msg") for m in msgs]


def until(cond, timeout_s: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (got := cond()):
            return got
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout_s}s")


# ---- AskStream ------------------------------------------------------------------------------------------

def test_evidence_comes_first_and_the_final_text_is_asks(stream):
    _, addr, sid = stream
    with Client(addr) as c:
        msgs = list(c.ask_stream(sid, QUESTION, top_k=2, max_new_tokens=24, include_keyframes=True))
        resp = c.ask(sid, QUESTION, top_k=2, max_new_tokens=24, include_keyframes=True)
    k = kinds(msgs)
    assert k[0] == "evidence" and k[-1] == "done" and set(k[1:-1]) == {"delta"} and len(k) >= 3, k
    ev, done = msgs[0].evidence, msgs[-1].done
    deltas = [m.delta.text for m in msgs[1:-1]]
    assert all(deltas)
    assert done.answer == "".join(deltas).strip() == resp.answer and resp.answer  # greedy: deterministic
    assert [e.chunk_id for e in ev.evidence] == [e.chunk_id for e in resp.evidence] and len(ev.evidence) == 2
    assert [e.keyframe_jpeg[:2] for e in ev.evidence] == [b"\xff\xd8"] * 2  # JPEGs, before any text
    assert ev.memory_tokens == done.memory_tokens == resp.memory_tokens > 0
    assert ev.random_weights and resp.random_weights and ev.model == resp.model
    assert ev.window_source == resp.window_source and done.latency_ms > 0
    assert not ev.conversation_id and not done.conversation_id  # none asked for


def test_ask_stream_errors_are_statuses(stream):
    _, addr, sid = stream
    with Client(addr) as c:
        for kwargs, code in [(dict(stream_id="nosuchstream"), grpc.StatusCode.NOT_FOUND),
                             (dict(window=(50.0, 60.0)), grpc.StatusCode.INVALID_ARGUMENT),
                             (dict(window=(5.0, 1.0)), grpc.StatusCode.INVALID_ARGUMENT),
                             (dict(question="  "), grpc.StatusCode.INVALID_ARGUMENT)]:
            args = dict(stream_id=sid, question=QUESTION) | kwargs
            with pytest.raises(grpc.RpcError) as err:
                list(c.ask_stream(args.pop("stream_id"), args.pop("question"), **args))
            assert err.value.code() == code, kwargs


def test_a_cancelled_answer_stops_at_the_next_token(make_server, pattern_video, caplog):
    """One question worker: after the cancel, another question gets it; the server's log says how many pieces
    the cancelled answer made, far fewer than the whole answer has; a cancelled turn is not recorded."""
    srv, addr = make_server(question_workers=1, max_new_tokens_cap=512)
    caplog.set_level(logging.INFO, logger="vigil.qa")
    with Client(addr) as c:
        sid = wait_done(c, c.start(str(pattern_video), fps=FPS, clip_frames=CLIP).stream_id).stream_id
        gen = c.ask_stream(sid, QUESTION, max_new_tokens=512, new_conversation=True)
        first = next(gen)
        assert first.WhichOneof("msg") == "evidence" and first.evidence.conversation_id
        assert next(gen).WhichOneof("msg") == "delta"
        gen.close()  # cancels the call
        stopped = until(lambda: [r for r in caplog.records if "stopped after" in r.getMessage()],
                        what="the cancelled answer's log line")
        made = int(stopped[0].getMessage().split("stopped after ")[1].split()[0])
        whole = c.ask(sid, QUESTION, max_new_tokens=512)  # completes: the worker is free again
    assert whole.answer
    full = srv.rt.adapter.count_tokens(whole.answer)
    assert full > 100 and 1 <= made < full // 2, (made, full)
    conv = qa.conversations(srv.rt).get(first.evidence.conversation_id)
    assert conv.turns == ()  # the cancelled answer was not added to its conversation


def test_ingest_keeps_storing_chunks_while_an_answer_streams(make_server, media_dir):
    """The answer holds the model lock one decoding step at a time: an ingest started before it stores chunks
    between the answer's first and last message."""
    video = media.shared_synthetic_video(media_dir / "pattern-600s.mp4", seconds=600, fps=4, scenes=6)
    srv, addr = make_server(max_new_tokens_cap=512)
    with Client(addr) as c:
        sid = c.start(str(video), fps=FPS, clip_frames=CLIP).stream_id
        until(lambda: c.describe(sid).chunks >= 2, what="the first chunks")
        before = after = None
        t_first = t_last = 0.0
        for msg in c.ask_stream(sid, QUESTION, top_k=2, max_new_tokens=512):
            if before is None:
                before, t_first = c.describe(sid), time.time()
            t_last = time.time()
        after = c.describe(sid)
        c.stop(sid)
    assert msg.WhichOneof("msg") == "done"
    assert state_name(before.state) == "running", "the stream ended before the answer began: use a longer video"
    assert after.chunks > before.chunks, (before.chunks, after.chunks)
    # and the store's own clock agrees: chunk events (one per stored chunk) were written between the messages
    stored, last = [], "0-0"
    while batch := srv.rt.store.read_events(sid, last, None):
        last = batch[-1][0]
        stored += [float(body["time"]) for _, body in batch if body.get("kind") == "progress"]
    assert any(t_first < t < t_last for t in stored)


# ---- conversations ---------------------------------------------------------------------------------------

T1 = Turn("What colour is the first scene?", "It is red, with a white square.")
T2 = Turn("And after that?", "A green scene follows.")


def test_history_is_rendered_with_the_chat_template_before_the_question(tiny_adapter, smollm2):
    q3 = "Which came last?"
    # Qwen2.5-VL (ChatML): the first question closes the user turn that holds the video, then assistant/user turns
    text = tiny_adapter.tok.decode(tiny_adapter.suffix_ids(q3, [T1, T2]))
    assert text == (f"{T1.question}<|im_end|>\n<|im_start|>assistant\n{T1.answer}<|im_end|>\n<|im_start|>user\n"
                    f"{T2.question}<|im_end|>\n<|im_start|>assistant\n{T2.answer}<|im_end|>\n<|im_start|>user\n"
                    f"{q3}<|im_end|>\n<|im_start|>assistant\n")
    assert tiny_adapter.suffix_ids(q3, []) == tiny_adapter.suffix_ids(q3)  # no history: the prompt as before
    # the text adapter: prefix + (empty stream) + suffix is exactly what its tokenizer's own template renders
    from encoders.text_lm import QUESTION as Q

    tok = smollm2.tok
    messages = [{"role": "system", "content": smollm2.system_prompt},
                {"role": "user", "content": Q.format(q=T1.question)}, {"role": "assistant", "content": T1.answer},
                {"role": "user", "content": T2.question}, {"role": "assistant", "content": T2.answer},
                {"role": "user", "content": q3}]
    want = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tok.decode(smollm2.prefix_ids() + smollm2.suffix_ids(q3, [T1, T2])) == want


def test_the_token_bound_drops_the_oldest_turns_first(tiny_adapter):
    count = tiny_adapter.count_tokens
    turns = [Turn(f"question {i} about the footage?", f"answer {i}") for i in range(5)]
    cost = [count(t.question) + count(t.answer) for t in turns]
    assert recent_turns(turns, sum(cost), count) == tuple(turns)
    assert recent_turns(turns, sum(cost) - 1, count) == tuple(turns[1:])  # the oldest goes first
    assert recent_turns(turns, cost[-1] + cost[-2], count) == tuple(turns[-2:])
    assert recent_turns(turns, cost[-1] - 1, count) == ()  # never a turn in part
    assert recent_turns(turns, 0, count) == ()


def test_a_conversation_continues_on_a_second_qa_server(make_server, pattern_video, redis_url, namespace):
    a, addr_a = make_server()
    b, addr_b = make_server(role="qa")  # same Redis namespace: any replica continues any conversation
    qs = ["What colour is the first scene?", "And what comes after it?", "Which one came last?"]
    with Client(addr_a) as ca, Client(addr_b) as cb:
        sid = wait_done(ca, ca.start(str(pattern_video), fps=FPS, clip_frames=CLIP).stream_id).stream_id
        r1 = ca.ask(sid, qs[0], max_new_tokens=8, new_conversation=True)
        cid = r1.conversation_id
        assert cid and r1.history_turns == 0
        r2 = cb.ask(sid, qs[1], max_new_tokens=8, conversation_id=cid)
        assert r2.conversation_id == cid and r2.history_turns == 1
        # what the third turn's prompt is built from, read from Redis by the first server
        history = qa.conversation_of(a.rt, sid, cid)
        assert history == (Turn(qs[0], r1.answer), Turn(qs[1], r2.answer))
        prompt = a.rt.adapter.tok.decode(a.rt.adapter.suffix_ids(qs[2], history))
        assert prompt.index(qs[0]) < prompt.index(qs[1]) < prompt.index(qs[2])
        msgs = list(ca.ask_stream(sid, qs[2], max_new_tokens=8, conversation_id=cid))
        assert msgs[0].evidence.conversation_id == cid and msgs[0].evidence.history_turns == 2
        r3 = msgs[-1].done
        stored = ConversationStore(redis.Redis.from_url(redis_url), namespace, 60).get(cid)
        assert [t.question for t in stored.turns] == qs and stored.appended == 3
        assert [t.answer for t in stored.turns] == [r1.answer, r2.answer, r3.answer]
        assert stored.stream_id == sid
        # a bound that holds only the newest turn: a third server, same namespace, continues with that one
        count = a.rt.adapter.count_tokens
        newest = count(qs[2]) + count(r3.answer)
        c_srv, addr_c = make_server(role="qa", max_conversation_tokens=newest)
        assert qa.conversation_of(c_srv.rt, sid, cid) == (Turn(qs[2], r3.answer),)
        with Client(addr_c) as cc:
            assert cc.ask(sid, "Anything else?", max_new_tokens=4, conversation_id=cid).history_turns == 1


def test_unknown_expired_and_foreign_conversations_are_refused(make_server, pattern_video, redis_url, namespace):
    srv, addr = make_server()
    with Client(addr) as c:
        sid = wait_done(c, c.start(str(pattern_video), fps=FPS, clip_frames=CLIP).stream_id).stream_id
        other = wait_done(c, c.start(str(pattern_video), fps=1.0, clip_frames=CLIP).stream_id).stream_id

        def code(**kw):
            with pytest.raises(grpc.RpcError) as err:
                c.ask(kw.pop("sid", sid), QUESTION, max_new_tokens=4, **kw)
            return err.value.code(), err.value.details()

        assert code(conversation_id="0123456789abcdef")[0] == grpc.StatusCode.NOT_FOUND
        assert code(conversation_id="not an id!")[0] == grpc.StatusCode.INVALID_ARGUMENT
        cid = c.ask(sid, QUESTION, max_new_tokens=4, new_conversation=True).conversation_id
        assert code(conversation_id=cid, new_conversation=True)[0] == grpc.StatusCode.INVALID_ARGUMENT
        got, details = code(sid=other, conversation_id=cid)
        assert got == grpc.StatusCode.INVALID_ARGUMENT and "is about stream" in details
        # its keys expire after the TTL of no use, and every use restarts the clock
        r = redis.Redis.from_url(redis_url)
        keys = [f"{namespace}:conv:{{{cid}}}:meta", f"{namespace}:conv:{{{cid}}}:turns"]
        ttl_ms = srv.settings.conversation_ttl_s * 1000
        assert all(0 < r.pttl(k) <= ttl_ms for k in keys)
        for k in keys:
            r.pexpire(k, 60_000)
        assert c.ask(sid, QUESTION, max_new_tokens=4, conversation_id=cid).history_turns == 1
        assert all(60_000 < r.pttl(k) <= ttl_ms for k in keys)
        r.delete(*keys)  # what expiry does
        got, details = code(conversation_id=cid)
        assert got == grpc.StatusCode.NOT_FOUND and "unused for longer than" in details
        with pytest.raises(grpc.RpcError) as err:
            list(c.ask_stream(sid, QUESTION, conversation_id=cid))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_stored_turns_are_capped(redis_url, namespace):
    store = ConversationStore(redis.Redis.from_url(redis_url), namespace, 60)
    conv = store.create("s1")
    for i in range(MAX_STORED + 3):
        store.append(conv.conversation_id, Turn(f"q{i}", f"a{i}"))
    got = store.get(conv.conversation_id)
    assert len(got.turns) == MAX_STORED and got.turns[0].question == "q3" and got.appended == MAX_STORED + 3


# ---- the CLI -------------------------------------------------------------------------------------------

def test_chat_reads_questions_until_eof_and_keeps_the_conversation(serve_process, pattern_video):
    addr, env = serve_process
    with Client(addr) as c:
        sid = wait_done(c, c.start(str(pattern_video), fps=FPS, clip_frames=CLIP).stream_id).stream_id
    args = [VIGIL, "chat", sid, "--max-new-tokens", "6", "--server", addr]
    lines = "What colour is it?\n\nWhat happens next?\n"  # an empty line is skipped
    out = subprocess.run([*args, "--json"], input=lines, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    answers = [json.loads(line) for line in out.stdout.splitlines()]
    assert [a["question"] for a in answers] == ["What colour is it?", "What happens next?"]
    assert answers[0]["conversation_id"] and answers[0]["conversation_id"] == answers[1]["conversation_id"]
    assert [a["history_turns"] for a in answers] == [0, 1] and all(a["answer"] for a in answers)
    plain = subprocess.run(args, input=lines, env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.count("evidence:") == 2 and "random weights" in plain.stdout
    cid = [ln for ln in plain.stdout.splitlines() if "evidence:" in ln]  # the id the README promises, a turn or two
    assert "(conversation " in cid[0] and "; 0 earlier turns in the prompt)" in cid[0]
    assert cid[0].split("(conversation ")[1].split(";")[0] == cid[1].split("(conversation ")[1].split(";")[0]
    assert "; 1 earlier turn in the prompt)" in cid[1]


def test_ask_streams_text_on_a_terminal(serve_process, pattern_video):
    """stdout a terminal: `vigil ask` uses AskStream, printing the text as it arrives, then the evidence."""
    addr, env = serve_process
    with Client(addr) as c:
        sid = wait_done(c, c.start(str(pattern_video), fps=FPS, clip_frames=CLIP).stream_id).stream_id
        want = c.ask(sid, QUESTION, max_new_tokens=12).answer
    master, slave = pty.openpty()
    proc = subprocess.Popen([VIGIL, "ask", sid, QUESTION, "--max-new-tokens", "12", "--server", addr], env=env,
                            stdout=slave, stderr=subprocess.PIPE, text=True)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 300)
        if not ready:
            break
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed its end
            break
        if not data:
            break
        out += data
    os.close(master)
    assert proc.wait(60) == 0, proc.stderr.read()
    text = out.decode().replace("\r\n", "\n")
    assert f"Answer: {want}\n" in text, text
    assert "Evidence (" in text and "random weights" in text
    as_json = run(["ask", sid, QUESTION, "--max-new-tokens", "12", "--json", "--server", addr], env)
    assert json.loads(as_json.stdout)["answer"] == want  # not a terminal: one final object, as before
