"""Which addresses the crawler may connect to, enforced on the socket it actually connects.

Crawled URLs, redirects and DNS answers are untrusted: without this check a URL pointing at
127.0.0.1, 10.x or 169.254.169.254 (cloud metadata) reaches internal services. The check lives
inside the connection, so it covers the first request and every redirect alike: the host is
resolved once, every address it resolves to is checked before a packet is sent, the socket
connects to exactly those checked addresses (a second DNS answer cannot slip in), and the peer
of the connected socket is checked again before the request is written.

The connection also holds a download to its deadline (`Deadline`), where a socket timeout cannot:
a host that drips its status line and headers a byte at a time resets the timeout of every read.
The deadline lets go of a connection as it goes back to the pool, where another download may take it.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Checked in this order, so the refusal names the most telling property.
KINDS = ("unspecified", "loopback", "link_local", "multicast", "reserved", "private")


class AddressRefused(Exception):
    """The host resolved to, or the socket reached, an address the policy forbids."""


@dataclass(frozen=True)
class AddressPolicy:
    allow_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()

    def refusal(self, address: str) -> str | None:
        """Why `address` may not be connected to, or None when it may."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        if self.allow_private or any(ip in network for network in self.allowed_networks):
            return None
        for kind in KINDS:
            if getattr(ip, f"is_{kind}"):
                return f"{ip} is a {kind.replace('_', '-')} address"
        return None if ip.is_global else f"{ip} is not a public address"

    def check(self, address: str) -> None:
        why = self.refusal(address)
        if why:
            raise AddressRefused(why)


def connect_checked(host: str, port: int, timeout: float | None, policy: AddressPolicy) -> socket.socket:
    """Resolve once, refuse if any answer is forbidden, connect to a checked address, check the peer."""
    answers = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    for *_, sockaddr in answers:
        policy.check(str(sockaddr[0]))
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in answers:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            policy.check(sock.getpeername()[0])
            return sock
        except (OSError, AddressRefused) as exc:
            sock.close()
            if isinstance(exc, AddressRefused):
                raise
            error = exc
    raise error or OSError(f"no address for {host}")


class Deadline:
    """The end of one download, enforced from outside its thread: when time is up, a timer shuts down
    every socket the download used, and whatever read was blocked returns. Entered (`with`), it binds
    the connections this thread opens or reuses meanwhile."""

    def __init__(self, ends_at: float) -> None:
        self.expired = False
        self._copies: list[socket.socket] = []  # duplicates of the sockets' descriptors, to shut them from here
        self._lock = threading.Lock()
        self._open = True
        self._timer = threading.Timer(max(0.0, ends_at - time.monotonic()), self._expire)
        self._timer.daemon = True
        self._token: Token[Deadline | None] | None = None

    def __enter__(self) -> Deadline:
        self._token = _DEADLINE.set(self)
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        assert self._token is not None
        _DEADLINE.reset(self._token)
        self.settle()

    def settle(self) -> bool:
        """Stop watching: the timer can no longer shut these sockets. True when it already had, so the connection
        must not go back to the pool as it is. Called as the connection goes back (`_SettlingPool`), before any
        other download can take it, and again when the download ends."""
        with self._lock:
            self._open = False
            for copy in self._copies:
                copy.close()  # the duplicate only: the connection may go back to the pool
            self._copies.clear()
            return self.expired

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self._open:  # fromfd duplicates the descriptor: still valid once TLS has wrapped the socket
                self._copies.append(socket.fromfd(sock.fileno(), sock.family, sock.type))
            if self.expired:
                self._shut()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._open:
                self._shut()

    def _shut(self) -> None:
        for copy in self._copies:
            try:
                copy.shutdown(socket.SHUT_RDWR)
            except OSError:  # the peer closed it already
                pass


_DEADLINE: ContextVar[Deadline | None] = ContextVar("download_deadline", default=None)


def _watch(sock: socket.socket | None) -> None:
    deadline = _DEADLINE.get()
    if deadline is not None and sock is not None and sock.fileno() >= 0:
        deadline.watch(sock)


class _Guarded:
    """Replaces urllib3's connect with `connect_checked`, keeping its exception types."""

    address_policy: AddressPolicy
    host: str
    port: int
    timeout: Any

    def __init__(self, *args: Any, address_policy: AddressPolicy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.address_policy = address_policy

    def _new_conn(self) -> socket.socket:
        try:
            sock = connect_checked(self.host, self.port, self.timeout, self.address_policy)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, f"connection to {self.host} timed out") from exc
        except OSError as exc:
            raise NewConnectionError(self, f"failed to connect to {self.host}: {exc}") from exc  # type: ignore[arg-type]
        _watch(sock)  # from here on: the TLS handshake, the request, the answer
        return sock

    def getresponse(self) -> Any:
        _watch(getattr(self, "sock", None))  # a kept-alive connection, reused by this download
        return super().getresponse()  # type: ignore[misc]


class GuardedHTTPConnection(_Guarded, HTTPConnection):
    pass


class GuardedHTTPSConnection(_Guarded, HTTPSConnection):
    pass  # TLS wraps the checked socket; SNI and certificate checks still use the host name


class _SettlingPool(HTTPConnectionPool):
    """Settles the download's deadline as its connection comes back. urllib3 puts a connection back by itself
    once the last byte of the body is read, before the download is done: another download may take it at once,
    and a late timer would shut that one's socket."""

    def _put_conn(self, conn: Any) -> None:
        deadline = _DEADLINE.get()
        if deadline is not None and deadline.settle() and conn is not None:
            conn.close()  # the timer shut its socket: pooled, it would fail the next request
        super()._put_conn(conn)


class _GuardedHTTPPool(_SettlingPool):
    ConnectionCls = GuardedHTTPConnection


class _GuardedHTTPSPool(_SettlingPool, HTTPSConnectionPool):
    ConnectionCls = GuardedHTTPSConnection


class GuardedPoolManager(PoolManager):
    """A PoolManager whose every connection goes through `connect_checked` under one policy.

    It never uses a proxy (a proxy would be the peer, hiding the real destination from the check).
    """

    def __init__(self, policy: AddressPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy = policy
        self.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}

    def _new_pool(
        self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None
    ) -> HTTPConnectionPool:
        pool = super()._new_pool(scheme, host, port, request_context)
        pool.conn_kw["address_policy"] = self.policy
        return pool
