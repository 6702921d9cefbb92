"""Confine file sources to the configured media roots."""
from __future__ import annotations

from pathlib import Path

from services.errors import InvalidRequest, LimitExceeded, PathNotAllowed
from streamer.errors import SourceNotFound


def confine(source: str, roots: tuple[Path, ...], max_bytes: int) -> Path:
    """Resolve `source` (relative paths against the first root) and require it under a root."""
    if not source or "\x00" in source or len(source) > 4096:
        raise InvalidRequest("source must be a file path of 1..4096 characters")
    if "://" in source:
        raise InvalidRequest(f"URL sources are not supported yet: {source.split('://')[0]}://")
    raw = Path(source).expanduser()
    path = (raw if raw.is_absolute() else roots[0] / raw).resolve()
    if not any(path.is_relative_to(root) for root in roots):
        raise PathNotAllowed(f"{source}: outside the configured media roots ({', '.join(map(str, roots))})")
    if not path.exists():
        raise SourceNotFound(f"{source}: no such file")
    if path.is_file() and path.stat().st_size > max_bytes:
        raise LimitExceeded(f"{source}: {path.stat().st_size} bytes is over the limit of {max_bytes}")
    return path
