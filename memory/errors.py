class StoreError(Exception):
    """Base class for memory-store errors."""


class StreamNotFound(StoreError):
    pass


class IncompatibleBlob(StoreError):
    """A stored blob was written by another model, layout or format version."""


class ChunksGone(StoreError):
    """Chunks a search found were deleted or merged (by retention) before they were read; search again."""


class InvalidMemoryOptions(ValueError):
    """A memory option is out of range, of the wrong type, unknown, or conflicts with another one."""
