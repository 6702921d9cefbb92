"""Errors a source can raise; services map them to gRPC status codes in one table."""


class SourceError(Exception):
    """Base class for problems with a video source."""


class SourceNotFound(SourceError):
    pass


class NotAVideo(SourceError):
    pass


class UnsupportedCodec(SourceError):
    pass


class CorruptVideo(SourceError):
    pass


class SourceUnavailable(SourceError):
    """A live source refused the connection, could not be reached, or stayed down past the give-up time."""


class SourceTimeout(SourceError):
    """A live source accepted the connection but sent nothing within the timeout."""
