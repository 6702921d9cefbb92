class StoreError(Exception):
    """Base class for memory-store errors."""


class StreamNotFound(StoreError):
    pass


class IncompatibleBlob(StoreError):
    """A stored blob was written by another model, layout or format version."""
