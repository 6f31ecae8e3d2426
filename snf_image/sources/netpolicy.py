"""Where an HTTP download may go: the redirect policy, enforced on every connection.

Two rules, for everything the host fetches over HTTP (images, pithos
objects, ``config_url``, ``os_answer_file``):

- a redirect never downgrades ``https`` to ``http`` (nor leaves HTTP);
- when the URL the operator gave names a public host, no connection of the
  download may reach a non-public address (loopback, link-local, private,
  unspecified, multicast, reserved, or one of these inside an IPv6 address:
  IPv4-mapped, 6to4, Teredo) unless ``ALLOW_PRIVATE_REDIRECTS=yes``. A URL
  that is itself private (a mirror on the cluster's network) may redirect
  within private addresses.

The address rule is checked where the connection is made, not where the
redirect is read: every address the target's name resolves to must be
public, and so must the peer the socket finally connected to. A name that
resolves to a public address when the redirect is checked and to a private
one when the connection is made (DNS rebinding) is caught all the same, and
so is a resume that finds the original name pointing elsewhere.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from collections.abc import Mapping
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from requests.utils import requote_uri
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import PoolManager

from ..errors import SourceError
from .urls import redact_url

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Redirects followed before giving up, as curl's default is 50 and requests' 30: fewer suffice.
MAX_REDIRECTS = 10


def is_public_address(address: str | _Address) -> bool:
    """Whether ``address`` is a globally routed unicast address (and so is any IPv4 address inside it)."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if not ip.is_global or ip.is_multicast or ip.is_reserved:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local:
            return False
        embedded = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
        return all(is_public_address(inner) for inner in embedded if inner is not None)
    return True


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (raises :class:`socket.gaierror`)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]).partition("%")[0] for info in infos]


class AddressGuard:
    """The address rule for one download: whether its connections must reach public addresses only."""

    def __init__(self, host: str, port: int, allow_private: bool) -> None:
        self.origin = host
        self.require_public = not allow_private and self._is_public(host, port)

    @staticmethod
    def _is_public(host: str, port: int) -> bool:
        try:
            return all(is_public_address(address) for address in resolve(host, port))
        except (OSError, ValueError):
            return True  # unknown: assume the strict rule; the connection will report the failure

    def check_host(self, host: str, port: int) -> None:
        """Before connecting: every address of ``host`` must be public (a resolver failure is urllib3's to report)."""
        if not self.require_public:
            return
        try:
            addresses = resolve(host, port)
        except OSError:
            return
        for address in addresses:
            self._check(host, address)

    def check_peer(self, host: str, sock: socket.socket) -> None:
        """After connecting: the peer itself must be public."""
        if self.require_public:
            self._check(host, str(sock.getpeername()[0]).partition("%")[0])

    def _check(self, host: str, address: str) -> None:
        if not is_public_address(address):
            raise SourceError(
                f"refusing to connect to {host} ({address}): a non-public address, reached from the public "
                f"host {self.origin} (ALLOW_PRIVATE_REDIRECTS=yes allows it)"
            )


def check_redirect(old_url: str, new_url: str) -> None:
    """A redirect must stay on HTTP and never go from https to http."""
    old, new = urllib.parse.urlsplit(old_url).scheme.lower(), urllib.parse.urlsplit(new_url).scheme.lower()
    if new not in ("http", "https") or (old == "https" and new != "https"):
        raise SourceError(
            f"refusing the redirect from {redact_url(old_url)} to {redact_url(new_url)}: "
            f"{old} must not be redirected to {new}"
        )


# -- the guard in urllib3's connection path --------------------------------------------------------


class _GuardedConnectionMixin:
    guard: AddressGuard | None = None
    _dns_host: str
    port: int

    def _new_conn(self) -> socket.socket:
        guard = self.guard
        if guard is not None:
            guard.check_host(self._dns_host, self.port)
        sock: socket.socket = super()._new_conn()  # type: ignore[misc]
        if guard is not None:
            try:
                guard.check_peer(self._dns_host, sock)
            except BaseException:
                sock.close()
                raise
        return sock


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedPoolMixin:
    guard: AddressGuard | None = None

    def _new_conn(self) -> Any:
        conn = super()._new_conn()  # type: ignore[misc]
        conn.guard = self.guard
        return conn


class _GuardedHTTPPool(_GuardedPoolMixin, HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(_GuardedPoolMixin, HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedPoolManager(PoolManager):
    def __init__(self, guard: AddressGuard, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard
        self.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}

    def _new_pool(self, scheme: str, host: str, port: int, request_context: Any = None) -> Any:
        pool = super()._new_pool(scheme, host, port, request_context)
        pool.guard = self.guard
        return pool


class GuardedAdapter(HTTPAdapter):
    """requests' adapter whose every connection passes ``guard``."""

    def __init__(self, guard: AddressGuard) -> None:
        self.guard = guard  # before super().__init__, which builds the pool manager
        super().__init__()

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        self._pool_connections = connections
        self._pool_maxsize = maxsize
        self._pool_block = block
        self.poolmanager = _GuardedPoolManager(
            self.guard, num_pools=connections, maxsize=maxsize, block=block, strict=True, **pool_kwargs
        )


class PolicySession(requests.Session):
    """The one HTTP session shape for everything the host fetches.

    No proxies and no ``~/.netrc`` from the environment (Ganeti clears it
    anyway; a shell and a real deployment must behave alike); every
    connection through :class:`GuardedAdapter`; redirects followed by
    :meth:`fetch` under the policy above.
    """

    def __init__(self, guard: AddressGuard, private_headers: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.private_headers = private_headers
        self.trust_env = False
        adapter = GuardedAdapter(guard)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def fetch(
        self,
        url: str,
        headers: Mapping[str, str],
        auth: tuple[str, str] | None,
        timeout: tuple[float, float],
        verify: bool | str,
    ) -> requests.Response:
        """GET ``url`` (streamed), following at most :data:`MAX_REDIRECTS` redirects under the policy.

        A redirect's body is never read (it could be endless). Credentials --
        ``auth``, ``Authorization`` and our private headers (``X-Auth-Token``)
        -- do not follow a redirect to another host, port or scheme.
        """
        request_headers = dict(headers)
        for _ in range(MAX_REDIRECTS + 1):
            response = self.get(
                url,
                headers=request_headers,
                auth=auth,
                stream=True,
                allow_redirects=False,
                timeout=timeout,
                verify=verify,
            )
            target = self.get_redirect_target(response)
            if target is None:
                return response
            response.close()
            new_url = requote_uri(urllib.parse.urljoin(url, target))
            check_redirect(url, new_url)
            if self.should_strip_auth(url, new_url):
                auth = None
                private = {name.lower() for name in (*self.private_headers, "Authorization")}
                request_headers = {k: v for k, v in request_headers.items() if k.lower() not in private}
            url = new_url
        raise requests.TooManyRedirects(f"more than {MAX_REDIRECTS} redirects")
