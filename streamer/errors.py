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
