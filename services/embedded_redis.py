"""A private, real redis-server for one process (the embedded default), on a unix socket.

It always keeps an append-only file (in `VIGIL_REDIS_DIR`, or in a private temp dir removed on stop), and
its owner restarts it if it dies: a killed Redis comes back with everything it had acknowledged, and the
workers waiting for it continue. Its files are the owner's alone (dir 0700, files 0600).
"""
from __future__ import annotations

import fcntl
import logging
import os
import threading
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from memory.store.client import connect

SOCKET_PATH_MAX = 100  # bytes; Linux's sun_path holds 108 with its terminating NUL
log = logging.getLogger("vigil.redis")


def _die_with_parent(args: list[str]) -> list[str]:
    """Ask Linux to SIGTERM the child when the thread that started it dies (PR_SET_PDEATHSIG), via
    util-linux `setpriv`: no Python code runs between fork and exec (a `preexec_fn` can deadlock
    in a process with other threads, and did: a dlopen in the child hung forever)."""
    setpriv = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    return [setpriv, "--pdeathsig", "TERM", "--", *args] if setpriv else args


class EmbeddedRedis:
    """Lives as long as its owner: stopped by stop(), and killed by the kernel if the owner dies."""

    def __init__(self, binary: str | None = None, data_dir: Path | None = None, fsync: str = "always") -> None:
        self.fsync = fsync  # the append-only file's fsync policy (Settings.redis_fsync)
        self.binary = binary or shutil.which("redis-server")
        if not self.binary:
            raise RuntimeError(
                "no VIGIL_REDIS_URL is set and redis-server is not installed for the embedded default; "
                "install it (apt-get install redis-server / brew install redis) or set VIGIL_REDIS_URL"
            )
        # data_dir: keep the data (append-only file) there across restarts; else a temp dir removed on stop
        self.persistent = data_dir is not None
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(data_dir, 0o700)
            self._lock = os.fdopen(os.open(data_dir / "vigil.lock", os.O_WRONLY | os.O_CREAT, 0o600), "w")
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock.close()
                raise RuntimeError(f"another vigil server uses the embedded Redis in {data_dir}; stop it, "
                                   "or set VIGIL_REDIS_URL to share one Redis") from None
        self.dir = data_dir or Path(tempfile.mkdtemp(prefix="vigil-redis-"))
        self.socket = self.dir / "redis.sock"
        self._socket_dir: Path | None = None
        if len(os.fsencode(self.socket)) > SOCKET_PATH_MAX:  # a unix socket's path is limited (108 bytes on Linux)
            self._socket_dir = Path(tempfile.mkdtemp(prefix="vigil-", dir="/tmp"))  # owner-only, as mkdtemp makes it
            self.socket = self._socket_dir / "redis.sock"
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout_s: float = 10.0) -> "EmbeddedRedis":
        # the append-only file, fsynced before each reply by default ("always"): with "everysec" Redis replies
        # before writing when the previous second's fsync is still running (up to 2 s of acknowledged writes
        # live only in its memory), so a SIGKILL then loses chunks a worker was told were stored
        args = [self.binary, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
                "--save", "", "--appendonly", "yes", "--appendfsync", self.fsync,
                "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")]
        self.socket.unlink(missing_ok=True)  # left behind by a killed server
        # its own session: a Ctrl-C at the terminal (SIGINT to the foreground process group) reaches `vigil serve`
        # only, which then stops it last, after the workers and the health checks (it still dies with its parent)
        self.proc = subprocess.Popen(_die_with_parent(args), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, umask=0o077, start_new_session=True)  # files: owner-only
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"embedded redis-server exited with {self.proc.returncode}: {err.strip()}")
            if self.socket.exists():
                try:
                    connect(self.url).ping()
                    return self
                except redis.BusyLoadingError:  # up, reading its append-only file: clients wait for it
                    return self
                except redis.ConnectionError:
                    pass
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        raise RuntimeError(f"embedded redis-server did not answer within {timeout_s}s")

    def supervise(self, period_s: float = 0.25) -> None:
        """Restart redis-server (from its append-only file) whenever it dies, until stop()."""
        def watch() -> None:
            delay = 0.1
            while not self._stopping.wait(period_s):
                if self.proc is None or self.proc.poll() is None:
                    continue
                log.warning("the private redis-server exited (%s); restarting it", self.proc.returncode)
                try:
                    self.start()
                    self.restarts += 1
                    delay = 0.1
                    log.info("the private redis-server is back (restart %d)", self.restarts)
                except RuntimeError as exc:
                    log.error("could not restart the private redis-server: %s; retrying in %.1fs", exc, delay)
                    self._stopping.wait(delay)
                    delay = min(delay * 2, 10.0)

        self._supervisor = threading.Thread(target=watch, name="redis-supervisor", daemon=True)
        self._supervisor.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(5)
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.persistent:
            self._lock.close()
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
