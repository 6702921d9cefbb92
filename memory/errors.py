class MemoryError_(Exception):
    """Base class for memory-store errors."""


class StreamNotFound(MemoryError_):
    pass


class IncompatibleBlob(MemoryError_):
    """A stored blob was written by another model, layout or format version."""
