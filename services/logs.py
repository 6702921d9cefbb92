"""Logging at the process edge: no URL's credentials in any log line, whoever logs it.

`RedactFilter` rewrites a record's final message (``msg % args``), its exception text and its stack
text with `streamer.redact.redact_text` before a handler writes it. `install()` puts one on every
handler of the root logger (and on `logging.lastResort`, which writes warnings when no handler is
configured), so library records that propagate to the root (PyAV / FFmpeg routed through logging,
grpc, urllib3) are covered as well as vigil's own. It is idempotent: call it after the handlers
are set up (`services.cli.main`, `VigilServer.start_async`). Handlers added later, or attached below
the root, are not covered unless install() runs again.
"""
from __future__ import annotations

import logging

from streamer.redact import redact_text

__all__ = ["RedactFilter", "install"]

_FORMATTER = logging.Formatter()


class RedactFilter(logging.Filter):
    """Masks credentials in a record in place (the record is shared by all handlers); never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler, which reports it
            return True
        masked = redact_text(message)
        if masked != message:
            record.msg, record.args = masked, None  # formatted once, here; handlers see the masked text
        if record.exc_info and not record.exc_text:
            record.exc_text = _FORMATTER.formatException(record.exc_info)  # what Formatter.format would cache
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def _has(handler: logging.Handler) -> bool:
    return any(isinstance(f, RedactFilter) for f in handler.filters)


def install(logger: logging.Logger | None = None) -> int:
    """Add a RedactFilter to each handler of `logger` (default: the root) and to logging.lastResort that has none;
    returns how many were added."""
    logger = logger or logging.getLogger()
    handlers = list(logger.handlers)
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    added = 0
    for h in handlers:
        if not _has(h):
            h.addFilter(RedactFilter())
            added += 1
    return added
