"""The `vigil` CLI as a new user meets it: what `serve` prints, what errors say, exit codes, push of a plain MP4,
`streams` / `watch --json`, --since mm:ss, help texts, setup.sh's second run. Subprocesses of the real console
script against real servers (a `vigil serve` process, or an in-process server from `make_server`)."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from services.client import Client, server_address, state_name
from tests.conftest import REPO, wait_done
from tests.services.test_cli import VIGIL, _free_port, env_for, run

REDIS_PASSWORD = "ux-secret-pw-0123456789"


class Lines:
    """A process's output, read line by line in a thread (never blocks the test past its deadline)."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def until(self, text: str, timeout_s: float) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in self.lines):
            try:
                line = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {text!r} within {timeout_s}s; got: {self.lines}") from None
            if line is None:
                raise AssertionError(f"the process ended before {text!r}; got: {self.lines}")
            self.lines.append(line)
        return self.lines

    def rest(self) -> list[str]:
        while (line := self._q.get(timeout=60)) is not None:
            self.lines.append(line)
        return self.lines


@pytest.fixture
def password_redis(tmp_path):
    """A real redis-server that requires a password, so the URL `vigil serve` is given has credentials in it."""
    port = _free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass",
                             REDIS_PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port, password=REDIS_PASSWORD)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    yield f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


def test_serve_says_where_it_listens_then_ready_and_refuses_busy_ports(cache_dir, media_dir, pattern_video,
                                                                       password_redis):
    port, http_port = _free_port(), _free_port()
    env = env_for(cache_dir, VIGIL_REDIS_URL=password_redis, VIGIL_MEDIA_ROOTS=str(media_dir))
    proc = subprocess.Popen([VIGIL, "serve", "--port", str(port), "--http-port", str(http_port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    try:
        banner = "\n".join(out.until("ready", 180))
        assert f"gRPC    127.0.0.1:{port}  (plaintext; no auth" in banner
        assert f"HTTP    http://127.0.0.1:{http_port}/metrics" in banner
        assert "role    all: streams and questions" in banner
        assert "model   tiny on cpu, float32, attention SDPA (random weights" in banner
        assert "clips of up to 8 streams batched" in banner
        assert f"media   {media_dir}" in banner and "VIGIL_MEDIA_ROOTS" in banner
        assert f"redis   redis://***@127.0.0.1:{password_redis.rsplit(':', 1)[1].split('/')[0]}/0" in banner
        assert REDIS_PASSWORD not in banner
        assert "loading model 'tiny'" in "\n".join(err.lines or err.until("loading model", 5))
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=30) as resp:
            assert b"vigil_store_up 1.0" in resp.read()

        # a second server on either port: one line, exit 2, before any model loads
        again = run(["serve", "--port", str(port), "--http-port", "0"], env, timeout=120)
        assert again.returncode == 2
        assert again.stderr.strip().splitlines() == [
            f"error: gRPC port {port} on 127.0.0.1 is in use (another `vigil serve`?): pick another with "
            "--port P (VIGIL_PORT)"]
        again = run(["serve", "--port", str(_free_port()), "--http-port", str(http_port)], env, timeout=120)
        assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1
        assert f"HTTP port {http_port} on 127.0.0.1 is in use" in again.stderr and "--http-port" in again.stderr

        # the model runs (ingest, a question): no library warning reaches the terminal
        addr = f"127.0.0.1:{port}"
        ing = run(["ingest", str(pattern_video), "--fps", "2", "--wait", "--server", addr], env, process=True)
        assert ing.returncode == 0, ing.stderr
        sid = ing.stdout.split()[1].rstrip(":")
        ask = run(["ask", sid, "what colour?", "--server", addr], env, process=True)
        assert ask.returncode == 0, ask.stderr
        for text in (ing.stderr, ask.stderr):
            assert "Warning" not in text
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    stderr = "\n".join(err.rest())
    assert proc.returncode == 0
    assert "FutureWarning" not in stderr and "past_key_values" not in stderr, stderr
    assert REDIS_PASSWORD not in stderr


def test_client_commands_without_a_server_say_so(cache_dir):
    env = env_for(cache_dir)
    addr = f"127.0.0.1:{_free_port()}"  # nothing listens there
    for args in (["streams"], ["ask", "x", "hello?"], ["ingest", "/nonexistent.mp4"]):
        proc = run([*args, "--server", addr], env, timeout=60)
        assert proc.returncode == 2
        assert f"is `vigil serve` running at {addr}?" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_a_host_alone_means_port_50051(cache_dir):
    assert server_address("localhost") == "localhost:50051"
    assert server_address("10.1.2.3") == "10.1.2.3:50051"
    assert server_address("::1") == "[::1]:50051" and server_address("[::1]") == "[::1]:50051"
    assert server_address("host:7000") == "host:7000" and server_address("unix:/run/v.sock") == "unix:/run/v.sock"
    from services.http import port_free

    if not port_free("127.0.0.1", 50051):
        pytest.skip("something listens on 50051 on this machine")
    proc = run(["streams", "--server", "localhost"], env_for(cache_dir), timeout=60)
    assert proc.returncode == 2
    assert "is `vigil serve` running at localhost:50051?" in proc.stderr, proc.stderr  # not :443


def test_questions_to_an_ingest_server_name_the_role(make_server, cache_dir):
    _, addr = make_server(role="ingest")
    proc = run(["ask", "anystream", "what happened?", "--server", addr], env_for(cache_dir), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: this server does not serve questions (role ingest); ask a server with "
                                   f"role qa or all (--server; this one is {addr})")


def test_a_file_outside_the_media_roots_names_the_setting(make_server, cache_dir, media_dir):
    _, addr = make_server(media_roots=(str(media_dir),))
    proc = run(["ingest", "/etc/hostname", "--server", addr], env_for(cache_dir), timeout=60)
    assert proc.returncode == 2
    assert "PERMISSION_DENIED" in proc.stderr and "VIGIL_MEDIA_ROOTS" in proc.stderr and str(media_dir) in proc.stderr


def test_push_of_a_plain_mp4_is_remuxed_on_the_fly(make_server, cache_dir, bikes, tmp_path):
    from streamer.remux import sniff

    assert sniff(bikes) == "mp4"  # its moov box is at the end: pushed as is, the server could read nothing
    _, addr = make_server()
    env = env_for(cache_dir)
    push = run(["push", str(bikes), "--fps", "2", "--json", "--server", addr], env)
    assert push.returncode == 0, push.stderr
    info = json.loads(push.stdout)
    # the same frames as the MPEG-TS push of this file (test_cli.test_push_and_watch_commands)
    assert info["state"] == "finished" and info["frames"] == 20 and info["source"] == "push:bikes.mp4"
    text = run(["push", str(bikes), "--fps", "2", "--server", addr], env)
    assert text.returncode == 0 and "remuxing into MPEG-TS" in text.stderr

    forced = run(["push", str(bikes), "--format", "mp4", "--server", addr], env, timeout=60)
    assert forced.returncode == 2 and "not a fragmented MP4" in forced.stderr and "leave out --format" in forced.stderr
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video\n")
    bad = run(["push", str(notes), "--server", addr], env, timeout=60)
    assert bad.returncode == 2 and "not a video" in bad.stderr and "Traceback" not in bad.stderr


def test_streams_has_a_header_and_watch_json_matches_streams_json(make_server, cache_dir, pattern_video):
    _, addr = make_server()
    env = env_for(cache_dir)
    empty = run(["streams", "--server", addr], env, timeout=60)
    assert empty.returncode == 0 and empty.stdout.startswith("no streams")
    with Client(addr) as c:
        sid = wait_done(c, c.start(str(pattern_video), fps=2).stream_id).stream_id
    table = run(["streams", "--server", addr], env, timeout=60).stdout.splitlines()
    assert table[0].split() == ["STREAM", "NAME", "STATE", "CHUNKS", "FRAMES", "VIDEO", "MEMORY", "SOURCE"]
    assert table[1].split()[:5] == [sid, "-", "finished", "3", "24"]  # no camera's or push's name: "-"
    listed = json.loads(run(["streams", "--json", "--server", addr], env, timeout=60).stdout)[0]
    watch = run(["watch", sid, "--json", "--server", addr], env, timeout=60)
    assert watch.returncode == 0, watch.stderr
    event = json.loads(watch.stdout.splitlines()[0])
    assert event["event"] == "snapshot"
    assert {k: event[k] for k in listed} == listed  # same names, same types, same values (a finished stream)
    assert all(type(event[k]) is type(v) for k, v in listed.items())


def test_since_and_until_take_mm_ss(make_server, cache_dir, pattern_video):
    from services.cli.parser import media_time

    assert [media_time(v) for v in ("90", "90.5", "1:30", "01:30.5", "1:02:03", "0:00")] == \
        [90.0, 90.5, 90.0, 90.5, 3723.0, 0.0]
    for bad in ("1:75", "abc", "1:", "-5", "1.5:30", "1:2:3:4", "inf"):
        with pytest.raises(Exception, match="not a media time"):
            media_time(bad)
    _, addr = make_server()
    env = env_for(cache_dir)
    with Client(addr) as c:
        sid = wait_done(c, c.start(str(pattern_video), fps=2).stream_id).stream_id
    ask = run(["ask", sid, "what colour?", "--since", "0:02", "--until", "0:08", "--json", "--server", addr], env)
    assert ask.returncode == 0, ask.stderr
    w = json.loads(ask.stdout)["searched_window"]
    assert (w["start_s"], w["end_s"], w["source"]) == (2.0, 8.0, "request")
    bad = run(["ask", sid, "q", "--since", "1:75", "--server", addr], env, timeout=60)
    assert bad.returncode == 2 and "not a media time" in bad.stderr and "mm:ss" in bad.stderr


def test_a_non_image_example_says_so(cache_dir, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("a shopping list\n")
    proc = run(["ask", "anystream", "where?", "--example", str(notes)], env_for(cache_dir), timeout=60)
    assert proc.returncode == 2 and f"{notes} is not an image: give a JPEG or PNG still" in proc.stderr


def test_ctrl_c_during_ingest_wait_says_the_stream_goes_on(make_server, cache_dir, media_dir):
    from testkit import media

    video = media_dir / "pattern-90s.mp4"  # the same file test_redis_faults uses
    media.shared_synthetic_video(video, seconds=90, fps=10, scenes=6)
    _, addr = make_server()
    # 450 clips: the ingest runs for seconds, so Ctrl-C lands while the client waits (at 2 fps it could finish first)
    proc = subprocess.Popen([VIGIL, "ingest", str(video), "--fps", "10", "--clip-frames", "2", "--wait",
                             "--server", addr], env=env_for(cache_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        with Client(addr) as c:
            deadline = time.monotonic() + 120
            while not (streams := c.list()) or state_name(streams[0].state) != "running":
                assert time.monotonic() < deadline and proc.poll() is None, "the stream never ran"
                time.sleep(0.1)
            sid = streams[0].stream_id
            time.sleep(0.5)  # the client is in its --wait loop by now (no assertion rests on this)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 130, (out, err)
            assert f"stream {sid} goes on on the server" in err and f"`vigil stop {sid}`" in err
            assert "Traceback" not in err
            assert state_name(c.describe(sid).state) in ("running", "finished")  # it went on
            c.stop(sid)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_file_that_ends_early_says_how_much_was_read(make_server, cache_dir, pattern_video, tmp_path):
    whole = tmp_path / "faststart.mp4"  # the index first: a reader gets the frames up to where the bytes stop
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(pattern_video), "-c", "copy", "-movflags", "+faststart",
                    str(whole)], check=True)
    data = whole.read_bytes()
    half = tmp_path / "half.mp4"
    half.write_bytes(data[:len(data) // 2])
    _, addr = make_server(media_roots=(str(tmp_path),))
    env = env_for(cache_dir)
    short = run(["ingest", str(half), "--fps", "2", "--wait", "--server", addr], env)
    assert short.returncode == 0, short.stderr
    assert "note: the file claims 12.0s but only" in short.stderr and "ends early" in short.stderr
    full = run(["ingest", str(whole), "--fps", "2", "--wait", "--server", addr], env)
    assert full.returncode == 0 and "note:" not in full.stderr


def test_every_option_says_what_it_means():
    import argparse

    from services.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, sp in commands.items()
               for a in sp._actions if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert missing == []
    text = run(["push", "--help"], env_for(Path("/tmp")), timeout=60).stdout
    assert "(default: auto)" in text and "remux" in text
    serve = run(["serve", "--help"], env_for(Path("/tmp")), timeout=60).stdout
    assert "VIGIL_HTTP_PORT, else 8080" in serve and "0 turns it off" in serve


@pytest.mark.timeout(900)
def test_setup_sh_skips_pip_when_nothing_changed():
    """The first run installs when pyproject.toml, the script or python changed since the stamp; the second skips."""
    script = REPO / "scripts" / "setup.sh"
    first = subprocess.run(["bash", str(script), "test"], capture_output=True, text=True, timeout=800)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(["bash", str(script), "test"], capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "skipped pip" in second.stderr and "BuildBackendWarning" not in second.stderr + second.stdout
    assert second.stderr.rstrip().splitlines()[-1].startswith("setup: ready (")


def test_an_empty_model_folder_says_what_it_must_hold(cache_dir, tmp_path):
    proc = run(["demo", "--model", str(tmp_path)], env_for(cache_dir), timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"model folder {tmp_path} has no config.json" in proc.stderr and "*.safetensors" in proc.stderr


def test_cuda_without_cuda_is_one_line(cache_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    proc = run(["demo"], env_for(cache_dir, VIGIL_MODEL__DEVICE="cuda"), timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no CUDA GPU is usable here" in errors[0] and "VIGIL_MODEL__DEVICE" in errors[0]


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_sigterm_shuts_down_in_full_and_removes_the_private_redis(cache_dir, media_dir):
    """SIGTERM: workers released, gRPC and HTTP closed, the private redis-server stopped and its temp dir (with
    every chunk) removed; exit 0 with no traceback."""
    port = _free_port()
    proc = subprocess.Popen([VIGIL, "serve", "--port", str(port), "--http-port", "0"],
                            env=env_for(cache_dir, VIGIL_MEDIA_ROOTS=str(media_dir)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    try:
        out.until("ready", 180)
        (redis_pid,) = [c for c in _children(proc.pid) if "redis-server" in Path(f"/proc/{c}/cmdline").read_text()]
        data_dir = Path(os.readlink(f"/proc/{redis_pid}/cwd"))  # redis-server works in its --dir
        assert data_dir.name.startswith("vigil-redis-")
        assert data_dir.is_dir()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = "\n".join(err.rest())
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    assert not Path(f"/proc/{redis_pid}").exists() or "redis" not in Path(f"/proc/{redis_pid}/cmdline").read_text()
    assert not data_dir.exists()
