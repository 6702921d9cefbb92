"""Confine file sources to the configured media roots, without a race: the file checked is the file read.

`confine` opens the requested file once and hands back its descriptor in a `MediaFile`. The walk starts
at a media root's directory descriptor and opens every component relative to the one before it with
O_NOFOLLOW (directories: O_PATH|O_DIRECTORY, the file: O_RDONLY), so no name is ever resolved by the
kernel across a symbolic link. The readers then open `MediaFile.open_path` (``/proc/self/fd/N``): that
magic link reopens the very inode the descriptor holds, never the name. Renaming a directory of a root
or swapping it for a symbolic link after StartStream returns changes nothing for the stream.

Symbolic links inside a root are followed only when their target lies in a media root, race-free: the
link's text is read (readlinkat on the directory descriptor) and its target walked the same way, from a
root's descriptor with O_NOFOLLOW, so whatever the link says at whatever moment, only entries inside a
root are ever opened. A link whose target leaves the roots is refused (PathNotAllowed). At most 40 links
per path (then ELOOP). ``..`` steps back along the walked directories and never above the root the walk
started from (climbing out is "outside the media roots"). A relative source is taken under the first
root. An absolute source that does not start with a root's path is matched by resolving its leading
directories (a link *above* the root, e.g. /tmp -> /private/tmp): that only picks the root to start
from; the rest is walked from the root's descriptor as above. The root directories themselves are the
operator's and are opened by name.

Known limit: a directory already walked through that someone with write access to both sides moves out
of the root while `confine` runs still leads to the file below it (who can do that can as well move the
file itself into the root).

Linux only (O_PATH, /proc/self/fd).
"""
from __future__ import annotations

import errno
import os
import stat
import threading
from collections import deque
from pathlib import Path, PurePosixPath

from services.errors import InvalidRequest, LimitExceeded, PathNotAllowed
from streamer.errors import SourceNotFound

MAX_PATH_BYTES = 4096
MAX_LINKS = 40
SHOWN_CHARS = 100  # messages show at most this much of the requested path
_PREFIX_PROBE = 32  # leading components tried when an absolute source is not lexically under a root
_DIR_FLAGS = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_PATH", os.O_RDONLY)
# O_NONBLOCK: a FIFO swapped in after the lstat must not block the open; cleared once it is a regular file
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


class MediaFile:
    """An open, confined, regular media file.

    `path`: the resolved path shown to users and stored in the stream record. `fd`: the descriptor
    `confine` opened. `open_path`: ``/proc/self/fd/<fd>``; opening it reopens the same inode (a new,
    independent file offset), whatever has happened to the name since. `close()` is idempotent; the
    object is a context manager. `reopen()` gives an independent MediaFile (a dup of the descriptor)
    for a holder that closes on its own schedule. There is no finalizer: an open_path string must never
    outlive its descriptor silently, so whoever holds a MediaFile closes it.
    """

    __slots__ = ("_path", "_fd", "_size", "_lock")

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self._path, self._fd, self._size = Path(path), fd, size
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path

    @property
    def name(self) -> str:
        """What error messages show (the file's name, as the readers always have)."""
        return self._path.name

    @property
    def size(self) -> int:
        """Bytes, from fstat when confined."""
        return self._size

    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def fd(self) -> int:
        fd = self._fd
        if fd < 0:
            raise ValueError(f"{self.name}: the media file is closed")
        return fd

    @property
    def open_path(self) -> str:
        return f"/proc/self/fd/{self.fd}"

    def reopen(self) -> "MediaFile":
        return MediaFile(self._path, os.dup(self.fd), self._size)

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> "MediaFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MediaFile({str(self._path)!r}, fd={self._fd})"


def _short(text: str) -> str:
    s = text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."
    return "".join(c if c.isprintable() else "?" for c in s)


def _split(path: str, roots: tuple[Path, ...]) -> tuple[Path, tuple[str, ...]] | None:
    """The root an absolute path starts in and the components below it, or None."""
    parts = PurePosixPath(path).parts
    lexical = [r for r in roots if parts[:len(r.parts)] == r.parts]
    if lexical:  # the outermost root: `..` may step back as far as it allows
        root = min(lexical, key=lambda r: len(r.parts))
        return root, parts[len(root.parts):]
    for i in range(2, min(len(parts), _PREFIX_PROBE) + 1):
        real = Path(os.path.realpath(PurePosixPath(*parts[:i])))
        inside = [r for r in roots if real.is_relative_to(r)]
        if inside:
            root = min(inside, key=lambda r: len(r.parts))
            return root, real.relative_to(root).parts + parts[i:]
    return None


class _Walk:
    """One confined open: the descriptors it holds and how its failures read."""

    def __init__(self, source: str, roots: tuple[Path, ...]) -> None:
        self.shown, self.roots = _short(source), roots
        self.root: Path | None = None
        self.root_fd = self.cur = -1
        self.names: list[str] = []  # real directories walked below the root

    # ---- errors ---------------------------------------------------------------------------------
    def outside(self, why: str = "") -> PathNotAllowed:
        listed = ", ".join(map(str, self.roots))
        return PathNotAllowed(f"{self.shown}: outside the media roots{why}; files are read only from under "
                              f"VIGIL_MEDIA_ROOTS ({listed})")

    def error(self, exc: OSError, comp: str) -> Exception:
        e, shown = exc.errno, self.shown
        if e == errno.ENOENT:
            return SourceNotFound(f"{shown}: no such file")
        if e == errno.ENOTDIR:
            return SourceNotFound(f"{shown}: no such file ({_short(comp)!r} is not a directory)")
        if e == errno.ENAMETOOLONG:
            return InvalidRequest(f"{shown}: a path component is longer than the file system allows (255 bytes)")
        if e == errno.ELOOP:
            return InvalidRequest(f"{shown}: too many levels of symbolic links")
        if e in (errno.EACCES, errno.EPERM):
            return PathNotAllowed(f"{shown}: permission denied (the server may not open {_short(comp)!r})")
        if e in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
            return LimitExceeded(f"{shown}: the server has too many files open; try again later")
        if e in (errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP):
            return InvalidRequest(f"{shown}: not a regular file")
        return InvalidRequest(f"{shown}: cannot be opened ({exc.strerror or e})")

    # ---- descriptors ----------------------------------------------------------------------------
    def _set_cur(self, fd: int) -> None:
        if self.cur >= 0 and self.cur != self.root_fd:
            os.close(self.cur)
        self.cur = fd

    def _start(self, root: Path) -> None:
        self._set_cur(-1)
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1
        self.root, self.names = root, []
        try:
            self.root_fd = os.open(root, _DIR_FLAGS & ~os.O_NOFOLLOW)  # the operator's own path: followed
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise SourceNotFound(f"{self.shown}: no such file (the media root {root} does not exist)") from None
            raise self.error(exc, str(root)) from None
        self.cur = self.root_fd

    def close(self) -> None:
        self._set_cur(-1)
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    def _up(self) -> None:
        """`..`: back to the parent of the current directory, walked again from the root."""
        if not self.names:
            raise self.outside(" ('..' climbs above the root)")
        self.names.pop()
        self._set_cur(self.root_fd)
        for name in self.names:
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=self.cur)
            except OSError as exc:
                raise self.error(exc, name) from None
            self._set_cur(fd)

    def _link(self, comp: str) -> str | None:
        try:
            return os.readlink(comp, dir_fd=self.cur)
        except OSError:  # EINVAL: not a link (or it just went away)
            return None

    def _follow(self, comp: str, target: str, pending: deque) -> deque:
        """Components still to walk once the link `comp` (in the current directory) is replaced by its text."""
        if os.path.isabs(target):
            start = _split(target, self.roots)
            if start is None:
                raise self.outside(f" (the symbolic link {_short(comp)!r} points out of them)")
            self._start(start[0])
            return deque([*start[1], *pending])
        return deque([*PurePosixPath(target).parts, *pending])

    # ---- the walk -------------------------------------------------------------------------------
    def open(self, root: Path, parts) -> tuple[int, Path]:
        """The open descriptor of the regular file `parts` names below `root`, and its resolved path."""
        self._start(root)
        pending, links = deque(parts), 0
        while pending:
            comp = pending.popleft()
            if comp in ("", ".", "/"):
                continue
            if comp == "..":
                self._up()
                continue
            if pending:  # a directory
                try:
                    fd = os.open(comp, _DIR_FLAGS, dir_fd=self.cur)
                except OSError as exc:
                    target = self._link(comp) if exc.errno in (errno.ENOTDIR, errno.ELOOP) else None
                    if target is None:
                        raise self.error(exc, comp) from None
                    links += 1
                    if links > MAX_LINKS:
                        raise self.error(OSError(errno.ELOOP, "loop"), comp) from None
                    pending = self._follow(comp, target, pending)
                    continue
                self._set_cur(fd)
                self.names.append(comp)
                continue
            # the file itself: look before opening (no open of a FIFO or device), check again after
            try:
                st = os.stat(comp, dir_fd=self.cur, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    fd = -1
                else:
                    self._require_regular(st.st_mode)
                    fd = os.open(comp, _FILE_FLAGS, dir_fd=self.cur)
            except OSError as exc:
                if exc.errno != errno.ELOOP:  # ELOOP: it became a link after the lstat; look again
                    raise self.error(exc, comp) from None
                fd = -1
            if fd < 0:
                target = self._link(comp)
                links += 1
                if links > MAX_LINKS:
                    raise self.error(OSError(errno.ELOOP, "loop"), comp) from None
                if target is None:  # changed again: look at it again
                    pending.appendleft(comp)
                    continue
                pending = self._follow(comp, target, pending)
                continue
            return fd, self.root.joinpath(*self.names, comp)
        raise InvalidRequest(f"{self.shown}: names a directory, not a file")

    def _require_regular(self, mode: int) -> None:
        if stat.S_ISREG(mode):
            return
        if stat.S_ISDIR(mode):
            raise InvalidRequest(f"{self.shown}: names a directory, not a file")
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")
        raise InvalidRequest(f"{self.shown}: not a regular file ({kind})")


def confine(source: str, roots: tuple[Path, ...], max_bytes: int) -> MediaFile:
    """Open `source` (relative: under the first root) confined to `roots`; see the module docstring.

    Raises InvalidRequest (malformed, too long, a directory or other non-regular file, a link loop),
    PathNotAllowed (outside the roots, through a link or `..`, or no permission), SourceNotFound, or
    LimitExceeded (over `max_bytes`, or no descriptor left). The caller owns the returned MediaFile.
    """
    if not isinstance(source, str) or not source:
        raise InvalidRequest("source must be a non-empty file path")
    shown = _short(source)
    if "\x00" in source:
        raise InvalidRequest(f"{shown}: the path contains a NUL character")
    if len(source.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise InvalidRequest(f"{shown}: the path is longer than {MAX_PATH_BYTES} bytes")
    if "://" in source:
        raise InvalidRequest(f"URL sources are not supported yet: {_short(source.split('://')[0])}://")
    roots = tuple(dict.fromkeys(Path(os.path.realpath(r)) for r in roots))
    if not roots:
        raise PathNotAllowed(f"{shown}: no media roots are configured (VIGIL_MEDIA_ROOTS)")
    walk = _Walk(source, roots)
    raw = os.path.expanduser(source)
    if os.path.isabs(raw):
        start = _split(raw, roots)
        if start is None:
            raise walk.outside()
    else:
        start = (roots[0], PurePosixPath(raw).parts)
    try:
        fd, path = walk.open(*start)
    finally:
        walk.close()
    try:
        st = os.fstat(fd)
        walk._require_regular(st.st_mode)  # swapped for a FIFO/device between the lstat and the open
        if st.st_size > max_bytes:
            raise LimitExceeded(f"{shown}: {st.st_size} bytes is over the limit of {max_bytes}")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return MediaFile(path, fd, st.st_size)
