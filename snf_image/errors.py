"""The host's exception classes; the base ones are the contract's (shared with the jail).

Anything else escaping to an entry point is a bug: it is logged with a
traceback and reported as an internal error.
"""

from .contract.errors import ImageError, SnfImageError

__all__ = ["HelperError", "ImageError", "OperatorError", "SnfImageError", "SourceError"]


class OperatorError(SnfImageError):
    """The operator (or Ganeti) gave us something wrong: a parameter, a setting, the environment."""


class SourceError(SnfImageError):
    """An image source failed to deliver the image (network, missing file, ...)."""


class HelperError(SnfImageError):
    """The helper VM failed: it crashed, timed out or reported a task failure."""
