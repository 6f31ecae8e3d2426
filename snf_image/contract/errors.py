"""The exceptions both sides raise: the message is the one line the operator reads.

Anything else escaping to an entry point (host script or the jail's runner)
is a bug: it is logged with a traceback and reported as an internal error.
"""


class SnfImageError(Exception):
    """Base class: the message is a one-line, user-facing reason."""


class ImageError(SnfImageError):
    """The image itself is bad: wrong format, too large, unreadable, corrupt."""
