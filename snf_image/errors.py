"""The few exception classes whose message is what the operator reads.

Anything else escaping to an entry point is a bug: it is logged with a
traceback and reported as an internal error.
"""


class SnfImageError(Exception):
    """Base class: the message is a one-line, user-facing reason."""


class OperatorError(SnfImageError):
    """The operator (or Ganeti) gave us something wrong: a parameter, a setting, the environment."""


class ImageError(SnfImageError):
    """The image itself is bad: wrong format, too large, unreadable, corrupt."""


class SourceError(SnfImageError):
    """An image source failed to deliver the image (network, missing file, ...)."""


class HelperError(SnfImageError):
    """The helper VM failed: it crashed, timed out or reported a task failure."""
