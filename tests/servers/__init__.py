"""Real loopback servers for the tests of everything the host fetches: one per protocol.

- :class:`~tests.servers.httpd.ImageServer`: HTTP and HTTPS, with scripted misbehaviour;
- :class:`~tests.servers.ftpd.FtpServer`: FTP and explicit FTPS (pyftpdlib; import it from
  ``tests.servers.ftpd``, so that tests without FTP do not load asyncore);
- :func:`~tests.servers.tls.make_tls_files`: the CA and certificate both use for TLS.

The pytest fixtures that start and stop them are in ``tests/integration/conftest.py``.
"""

from __future__ import annotations

from snf_image.sources.base import ImageStream

from .httpd import Behaviour, ImageServer, RequestLog
from .tls import TlsFiles, make_tls_files


def read_all(stream: ImageStream, bufsize: int = 256 * 1024, limit: int = 64 * 1024 * 1024) -> bytes:
    """Drain ``stream`` through readinto with a bounded number of calls and bytes."""
    buffer = bytearray(bufsize)
    view = memoryview(buffer)
    out = bytearray()
    for _ in range(100_000):
        count = stream.readinto(view)
        if not count:
            return bytes(out)
        out += view[:count]
        assert len(out) <= limit
    raise AssertionError("stream did not end")


__all__ = ["Behaviour", "ImageServer", "RequestLog", "TlsFiles", "make_tls_files", "read_all"]
