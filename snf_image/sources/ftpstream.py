"""FTP(S) downloads: binary mode, read straight from the data socket, ``REST`` after a break.

``ftps://`` is *explicit* FTPS (``AUTH TLS`` on port 21 unless the URL names
a port; ``ftplib`` has no implicit mode), with the same TLS settings as
HTTPS. The data connection goes to the control connection's host whatever
the server's ``PASV`` reply names (``ftplib``'s default), so a server cannot
point it elsewhere.
"""

from __future__ import annotations

import contextlib
import ftplib
import logging
import socket
import ssl
from collections.abc import Mapping

from ..errors import SourceError
from .failures import FATAL, TRANSIENT, Failure, describe_network_error
from .options import FtpOptions
from .resuming import NotModified, ResumingStream
from .urls import ImageUrl, printable

log = logging.getLogger(__name__)


class FtpStream(ResumingStream):
    """One FTP(S) download.

    ``size`` comes from the ``SIZE`` command (None when the server has none),
    ``validators`` from ``MDTM`` and ``SIZE``. Anonymous login unless the URL
    carries credentials. With ``revalidate`` (the validators of a copy the
    caller holds) :class:`NotModified` is raised, before any data is sent,
    when they still match.
    """

    def __init__(
        self,
        url: ImageUrl,
        options: FtpOptions,
        *,
        subject: str = "image",
        revalidate: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(url.display, options.retry, options.rate, subject)
        self._url = url
        self._options = options
        self._revalidate = dict(revalidate or {})
        self._ftp: ftplib.FTP | None = None
        self._data: socket.socket | None = None
        self._open_first()

    @property
    def _ftp_path(self) -> str:
        # Relative to the login directory, as RFC 1738 and curl resolve ftp://host/a/b.
        return self._url.path[1:] if self._url.path.startswith("/") else self._url.path

    def _tls_context(self) -> ssl.SSLContext:
        verify = self._options.verify
        context = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
        if verify is False:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _connect(self) -> None:
        try:
            ftp = self._login()
            if not self._connected_once:
                self.size = self.total = self._size(ftp)
                self.validators = self._stat_validators(ftp)
                if self._revalidate and self.validators == self._revalidate:
                    raise NotModified(self.display)
            self._data = ftp.transfercmd(f"RETR {self._ftp_path}", rest=self.position or None)
            self._data.settimeout(self._options.timeout)
        except ftplib.error_perm as exc:
            raise SourceError(self._refusal(exc)) from None
        except (OSError, EOFError, ftplib.Error) as exc:
            raise Failure(*self._describe(exc)) from None
        if self.position:
            log.info("%s: resumed at byte %d", self.display, self.position)

    def _login(self) -> ftplib.FTP:
        url = self._url
        if url.scheme == "ftps":
            ftp: ftplib.FTP = ftplib.FTP_TLS(context=self._tls_context(), timeout=self._options.timeout)
        else:
            ftp = ftplib.FTP(timeout=self._options.timeout)
        self._ftp = ftp
        ftp.connect(url.host, url.port)
        if url.username is None:
            ftp.login("anonymous", "anonymous@")
        else:
            ftp.login(url.username, url.password or "")
        if isinstance(ftp, ftplib.FTP_TLS):
            ftp.prot_p()
        ftp.voidcmd("TYPE I")
        return ftp

    def _size(self, ftp: ftplib.FTP) -> int | None:
        try:
            size = ftp.size(self._ftp_path)
        except ftplib.error_perm as exc:
            if str(exc).startswith("550"):
                raise
            return None  # SIZE not implemented
        return size if isinstance(size, int) and size >= 0 else None

    def _stat_validators(self, ftp: ftplib.FTP) -> dict[str, str]:
        """``MDTM`` and ``SIZE``: what tells this version of the file from another (empty without MDTM)."""
        try:
            reply = ftp.sendcmd(f"MDTM {self._ftp_path}")
        except ftplib.error_perm as exc:
            if str(exc).startswith("550"):
                raise
            return {}  # MDTM not implemented
        stamp = reply[4:].strip()
        if not reply.startswith("213") or not stamp.isdigit():
            return {}
        return {"MDTM": stamp, "SIZE": str(self.size)}

    def _read(self, view: memoryview) -> int:
        assert self._data is not None
        try:
            return self._data.recv_into(view)
        except OSError as exc:
            raise Failure(self._describe(exc)[0]) from None

    def _end(self) -> None:
        """Close the data connection and read the transfer's final reply (226, or 426 when aborted)."""
        data, self._data = self._data, None
        try:
            if data is not None:
                if isinstance(data, ssl.SSLSocket):
                    with contextlib.suppress(OSError, ValueError):
                        data.unwrap()
                data.close()
            assert self._ftp is not None
            self._ftp.voidresp()
        except ftplib.error_perm as exc:
            raise SourceError(self._refusal(exc)) from None
        except (OSError, EOFError, ftplib.Error) as exc:
            raise Failure(self._describe(exc)[0]) from None

    def _is_open(self) -> bool:
        return self._data is not None

    def _disconnect(self) -> None:
        """Close data and control connections without waiting for the server."""
        data, self._data = self._data, None
        if data is not None:
            data.close()
        ftp, self._ftp = self._ftp, None
        if ftp is not None:
            ftp.close()

    def _describe(self, exc: BaseException) -> tuple[str, int]:
        if isinstance(exc, ftplib.error_temp):
            return f"FTP server {self._url.host} answered {printable(str(exc))}", TRANSIENT
        if isinstance(exc, ftplib.Error):
            return f"unexpected answer from FTP server {self._url.host}: {printable(str(exc))}", FATAL
        return describe_network_error(exc, self._url.host, self._url.port, self._options.timeout)

    def _refusal(self, exc: ftplib.error_perm) -> str:
        text = printable(str(exc))
        if text.startswith("550"):
            return f"{self.subject} not found at {self.display} (FTP {text[:3]})"
        if text.startswith("530"):
            return f"FTP login to {self._url.host} failed: {text}"
        return f"FTP server {self._url.host} refused {self.display}: {text}"
