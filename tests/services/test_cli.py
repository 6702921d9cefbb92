"""The `vigil` console script, run as a user would, in subprocesses."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

VIGIL = shutil.which("vigil", path=os.path.dirname(sys.executable)) or shutil.which("vigil")


def env_for(cache_dir, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(VIGIL_CACHE_DIR=str(cache_dir / "vigil"), VIGIL_HTTP_PORT="0")  # no fixed 8080 in tests
    env.update(extra)
    return env


def run(args, env, timeout=300, process: bool = False) -> subprocess.CompletedProcess:
    """`vigil ARGS` with `env` as its environment. In this process (`services.cli.main`, its output captured):
    what a command prints and its exit status do not need a process of their own. `process`: a real one, for what
    does (start-up, signals, what reaches a fresh terminal)."""
    if process:
        return subprocess.run([VIGIL, *args], env=env, capture_output=True, text=True, timeout=timeout)
    return run_in_process(args, env)


def run_in_process(args, env) -> subprocess.CompletedProcess:
    import contextlib
    import io

    from services.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse: --help (0), a bad argument (2)
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess([VIGIL, *args], code, out.getvalue(), err.getvalue())


def test_console_script_installed():
    assert VIGIL, "the `vigil` console script is not installed (pip install -e .)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def serve_process(make_server, cache_dir, media_dir, redis_url, namespace):
    """A server for the CLI to talk to, and the CLI's environment. In this process (a real gRPC server on
    127.0.0.1): the commands under test are the client's; `vigil serve` itself is tested in its own processes
    (test_cli_ux.py: banner, busy ports, signals; test_private_redis_goes_with_the_server)."""
    _, addr = make_server()
    env = env_for(cache_dir, VIGIL_REDIS_URL=redis_url, VIGIL_NAMESPACE=namespace,
                  VIGIL_MEDIA_ROOTS=json.dumps([str(media_dir), str(cache_dir)]))
    yield addr, env


def test_serve_ingest_ask_streams(serve_process, pattern_video):
    addr, env = serve_process
    ing = run(["ingest", str(pattern_video), "--fps", "2", "--wait", "--json", "--server", addr], env)
    assert ing.returncode == 0, ing.stderr
    info = json.loads(ing.stdout)
    assert {"stream_id", "state", "frames", "chunks", "duration_s"} <= set(info)
    assert info["state"] == "finished" and info["frames"] == 24 and info["chunks"] == 3

    ask = run(["ask", info["stream_id"], "what colour?", "--json", "--top-k", "2", "--server", addr], env)
    assert ask.returncode == 0, ask.stderr
    ans = json.loads(ask.stdout)
    assert {"answer", "evidence", "model", "latency_ms"} <= set(ans)
    assert [set(e) >= {"start_s", "end_s", "chunk_id", "score"} for e in ans["evidence"]] == [True, True]

    text = run(["ask", info["stream_id"], "what colour?", "--server", addr], env)
    assert text.returncode == 0 and "Evidence (" in text.stdout and "random weights" in text.stdout

    streams = run(["streams", "--json", "--server", addr], env)
    assert [s["stream_id"] for s in json.loads(streams.stdout)] == [info["stream_id"]]

    bad = run(["ask", "nosuchstream", "hi", "--server", addr], env)
    assert bad.returncode == 2 and "NOT_FOUND" in bad.stderr


def test_unknown_model_says_how_to_get_it(cache_dir, tmp_path):
    proc = run(["demo", "--model", "Qwen/Qwen2.5-VL-3B-Instruct"],
               env_for(cache_dir, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf")), timeout=120)
    assert proc.returncode == 2
    assert "hf download Qwen/Qwen2.5-VL-3B-Instruct" in proc.stderr


def _children(pid: int) -> list[tuple[int, str]]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines()]
    return [(int(r[0]), r[2]) for r in rows if len(r) == 3 and int(r[1]) == pid]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return bool(state) and not state.startswith("Z")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_private_redis_goes_with_the_server(cache_dir, sig):
    """`vigil serve` with no VIGIL_REDIS_URL owns a redis-server; stopped or killed, it takes it along."""
    port = _free_port()
    proc = subprocess.Popen([VIGIL, "serve", "--port", str(port)], env=env_for(cache_dir),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        redis_pids: list[int] = []
        while not redis_pids and time.monotonic() < deadline and proc.poll() is None:
            redis_pids = [pid for pid, args in _children(proc.pid) if "redis-server" in args]
            time.sleep(0.2)
        assert redis_pids, "vigil serve started no private redis-server"
        proc.send_signal(sig)
        proc.wait(30)
        deadline = time.monotonic() + 10
        while _alive(redis_pids[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(redis_pids[0]), f"redis-server {redis_pids[0]} outlived vigil serve ({sig.name})"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_push_and_watch_commands(serve_process, media_dir, bikes_ts):
    addr, env = serve_process
    ts = bikes_ts
    push = run(["push", str(ts), "--fps", "2", "--json", "--server", addr], env)
    assert push.returncode == 0, push.stderr
    info = json.loads(push.stdout)
    assert info["state"] == "finished" and info["kind"] == "push" and info["frames"] == 20
    assert info["source"] == "push:bikes.ts" and info["dropped_frames"] == 0
    # watching a finished stream prints its snapshot and ends at once
    watch = run(["watch", info["stream_id"], "--server", addr], env, timeout=60)
    assert watch.returncode == 0, watch.stderr
    assert "snapshot" in watch.stdout and "finished" in watch.stdout and f"chunks {info['chunks']:>5}" in watch.stdout
    missing = run(["push", str(media_dir / "nope.ts"), "--server", addr], env)
    assert missing.returncode == 2 and "no such file" in missing.stderr
