class StoreError(Exception):
    """Base class for memory-store errors."""


class StreamNotFound(StoreError):
    pass


class ConversationNotFound(StoreError):
    """No conversation with that id: never created, or expired (unused for its TTL)."""


class IncompatibleBlob(StoreError):
    """A stored blob was written by another model, layout or format version."""


class ChunksGone(StoreError):
    """Chunks a search found were deleted or merged (by retention) before they were read; search again."""


class InvalidMemoryOptions(ValueError):
    """A memory option is out of range, of the wrong type, unknown, or conflicts with another one."""


def clipped(text, n: int = 64) -> str:
    """`text` as repr() shows it, cut to a short prefix so an error message never echoes an unbounded input:
    at most `n` characters of repr (plus quotes), and "…(N chars)" giving the whole length when cut."""
    s = text if isinstance(text, str) else str(text)
    r = repr(s)
    if len(s) <= n and len(r) <= n + 2:
        return r
    k = min(len(s), n)
    while k > 0 and len(repr(s[:k])) > n + 2:  # escapes (\x00, \U0001f600) make repr longer than the text
        k //= 2
    return f"{s[:k]!r}…({len(s)} chars)"
