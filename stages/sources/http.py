"""The safe downloader shared by the web sources (URL lists and search engines).

Hosts and their answers are untrusted. Every download: only http(s); the address checked on the
connected socket (`addresses`), redirects followed by hand and each hop checked again; a connect
and a read timeout plus a deadline for the whole download, which also stops a host dripping its
handshake or headers (`addresses.Deadline`); the size capped while streaming, after gzip/deflate
decoding too (no bomb gets past the cap); bounded retries with exponential backoff for transient
failures only; a global and a per-host limit on downloads in flight. Headers are bounded by
http.client (100 lines of at most 64 KiB; more fails the download). What the bytes are is decided
later from the bytes, never from a header.

An image download also obeys the consent signals (`consent`): the licence allow-list and the
opt-out list before anything is sent; robots.txt and tdmrep.json of each hop's origin, fetched
once per origin through this same downloader (same address policy), each within one deadline for
all its attempts and kept to SITE_FILE_MAX_BYTES, and kept for the worker's life; X-Robots-Tag and
tdm-reservation on the response headers, before a byte of the body is read.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from urllib3 import BaseHTTPResponse, HTTPHeaderDict, Timeout
from urllib3.exceptions import HTTPError, LocationParseError, NewConnectionError, SSLError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from pipeline.core.config import CrawlSection
from pipeline.core.optout import OptOutList
from pipeline.core.schema import DROPPED, FAILED
from pipeline.core.tls import ca_bundle
from pipeline.core.reasons import (
    BAD_URL,
    CONNECTION_ERROR,
    NOT_AN_IMAGE,
    PRIVATE_ADDRESS,
    TIMEOUT,
    TLS_ERROR,
    TOO_LARGE,
    TOO_MANY_REDIRECTS,
)
from stages.sources import aipref
from stages.sources.aipref import RobotsUsage
from stages.sources.addresses import AddressPolicy, AddressRefused, Deadline, GuardedPoolManager
from stages.sources.base import Fetched, Source
from stages.sources.consent import (
    OFF,
    UNREACHABLE,
    Evidence,
    OncePerKey,
    RobotsTxt,
    SiteFile,
    TdmRules,
    origin,
    product_token,
    screen,
    tdm_header_refusal,
    x_robots_refusal,
)

REDIRECTS = {301, 302, 303, 307, 308}
CHUNK = 64 * 1024
ACCEPT_IMAGES = "image/avif,image/webp,image/jpeg,image/png,image/*;q=0.8,*/*;q=0.5"
ACCEPT_SITE_FILES = "text/plain,application/json;q=0.9,*/*;q=0.5"
# robots.txt and tdmrep.json: RFC 9309 2.5 asks crawlers to parse at least 500 KiB of robots.txt (Google stops
# there too); a tdmrep.json holds a few rules. Past it, robots.txt is read up to here, tdmrep.json is unreadable.
SITE_FILE_MAX_BYTES = 500 * 1024

UrlTriple = tuple[str, str | None, str | None]  # url, page_url, license


@dataclass(frozen=True)
class Wanted:
    """What a request asks for, and how much of the answer it keeps."""

    accept: str = "*/*"
    max_bytes: int | None = None  # None: crawl.max_bytes
    truncate: bool = False  # past max_bytes: keep the first max_bytes instead of failing as too_large


PAGE, IMAGE = Wanted(), Wanted(ACCEPT_IMAGES)
SITE_FILE = Wanted(ACCEPT_SITE_FILES, SITE_FILE_MAX_BYTES, truncate=True)


class DownloadError(Exception):
    """A download that produced no bytes; `reason` is the row's reason code."""

    def __init__(self, reason: str, detail: str, transient: bool = False, http_status: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.transient, self.http_status = reason, detail, transient, http_status


class SiteRefusal(DownloadError):
    """Decided by an origin's robots.txt or tdmrep.json, kept per worker: never retried within a download."""


@dataclass
class Response:
    url: str  # after redirects
    status: int
    headers: HTTPHeaderDict
    body: bytes
    truncated: bool = False  # the first bytes of a longer body (`Wanted.truncate`)


class CappedBody:
    """Collects a body, decoding gzip/deflate with its output bounded, and refuses past `limit` bytes
    (with `truncate`: keeps the first `limit` bytes and is `full`)."""

    def __init__(self, encoding: str, limit: int, truncate: bool = False) -> None:
        encoding = encoding.strip().lower()
        if encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
            raise DownloadError(NOT_AN_IMAGE, f"unsupported Content-Encoding {encoding!r}")
        # wbits 32+: zlib or gzip header, detected from the bytes.
        self.inflate = zlib.decompressobj(zlib.MAX_WBITS | 32) if encoding not in ("", "identity") else None
        self.limit, self.truncate = limit, truncate
        self.parts: list[bytes] = []
        self.size = self.wire_size = 0
        self.full = False

    def feed(self, chunk: bytes) -> None:
        self.wire_size += len(chunk)
        if self.wire_size > self.limit and not self.truncate:
            raise DownloadError(TOO_LARGE, f"more than {self.limit} bytes on the wire")
        self._add(self._inflate(chunk) if self.inflate else chunk)
        self.full = self.full or self.wire_size > self.limit  # compressed input that inflates to nothing ends too

    def finish(self) -> bytes:
        if self.inflate and not self.full:
            self._add(self.inflate.flush(self.limit - self.size + 1))
        return b"".join(self.parts)

    def _inflate(self, chunk: bytes) -> bytes:
        assert self.inflate is not None
        try:  # at most one byte past the cap is ever produced, whatever the ratio
            return self.inflate.decompress(chunk, self.limit - self.size + 1)
        except zlib.error as exc:
            raise DownloadError(NOT_AN_IMAGE, f"corrupt compressed body: {exc}") from exc

    def _add(self, data: bytes) -> None:
        room = self.limit - self.size
        if len(data) > room:
            if not self.truncate:
                raise DownloadError(TOO_LARGE, f"more than {self.limit} bytes")
            data, self.full = data[:room], True
        self.size += len(data)
        self.parts.append(data)


def check_url(url: str) -> str:
    """The host of an http(s) URL, or DownloadError(bad_url)."""
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port raises on a bad port
    except ValueError as exc:
        raise DownloadError(BAD_URL, f"{url!r}: {exc}") from exc
    if parts.scheme not in ("http", "https") or not host:
        raise DownloadError(BAD_URL, f"only http(s) URLs with a host are fetched: {url!r}")
    return host


class Downloader:
    def __init__(self, settings: CrawlSection, optout: OptOutList | None = None) -> None:
        self.settings = settings
        self.options = settings.download
        self.consent = settings.consent
        self.optout = optout or OptOutList()
        self.token = product_token(self.options.user_agent)
        # Per crawl worker (its names share them), for the worker's life: one request per origin and file.
        self._robots = OncePerKey(lambda site: RobotsTxt.from_file(self.site_file(f"{site}/robots.txt")))
        self._tdmrep = OncePerKey(lambda site: TdmRules.from_file(self.site_file(f"{site}/.well-known/tdmrep.json")))
        self._usage = OncePerKey(lambda site: RobotsUsage.parse(self._robots.get(site).text))
        policy = AddressPolicy(settings.allow_private_addresses, tuple(settings.allowed_networks))
        self.http = GuardedPoolManager(
            policy,
            num_pools=64,
            maxsize=self.options.per_host_concurrency,
            headers={"User-Agent": self.options.user_agent, "Accept-Encoding": "gzip, deflate"},
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_bundle(),
        )
        self._hosts: dict[str, threading.BoundedSemaphore] = {}
        self._hosts_lock = threading.Lock()
        # One pool for the worker's life, shared by the tasks it runs at once: `max_concurrency`
        # bounds the whole worker, and no threads are started per task.
        self._pool = ThreadPoolExecutor(self.options.max_concurrency, thread_name_prefix="download")

    def fetch_all(self, items: Iterable[UrlTriple]) -> Iterator[Fetched]:
        """Download concurrently (at most `max_concurrency` at once per worker); results in input order."""
        futures = [self._pool.submit(self.fetch_image, *item) for item in items]
        try:
            for future in futures:
                yield future.result()
        finally:  # a consumer that stops early leaves no queued downloads behind
            for future in futures:
                future.cancel()

    def fetch_image(self, url: str, page_url: str | None = None, license_: str | None = None) -> Fetched:
        """An image, with the consent checks around it; `consent` of the result says what they found."""
        evidence: Evidence = {}
        try:
            refusal = screen(url, page_url, license_, self.settings.allowed_licenses, self.optout, evidence)
            if refusal:
                raise DownloadError(*refusal)
            response = self.fetch(url, IMAGE, evidence)
        except DownloadError as error:
            status = FAILED if error.transient else DROPPED
            return Fetched(url, None, page_url, license_, error.http_status, status, error.reason, error.detail,
                           consent=evidence)  # fmt: skip
        return Fetched(url, response.body, page_url, license_, response.status, consent=evidence)

    def site_file(self, url: str) -> SiteFile:
        """robots.txt or tdmrep.json: its body, or why there is none. Every download from the origin waits
        for it, so all its attempts share one deadline."""
        try:
            response = self.fetch(url, SITE_FILE, ends_at=time.monotonic() + self.options.deadline)
            return SiteFile(url, response.body, truncated=response.truncated)
        except DownloadError as error:
            return SiteFile(url, error=error.reason, detail=error.detail, transient=error.transient)

    def fetch(
        self, url: str, wanted: Wanted = PAGE, evidence: Evidence | None = None, ends_at: float | None = None
    ) -> Response:
        """GET with retries and exponential backoff for transient failures only; with `evidence`, the
        consent checks of an image download run on every hop and are recorded there. Each attempt has
        the download's deadline; with `ends_at`, all attempts together end then."""
        attempt = 0
        while True:
            try:
                return self.get(url, wanted, evidence, None if ends_at is None else ends_at - time.monotonic())
            except DownloadError as error:
                pause = self.options.backoff * 2**attempt
                late = ends_at is not None and time.monotonic() + pause >= ends_at
                if not error.transient or isinstance(error, SiteRefusal) or attempt >= self.options.retries or late:
                    raise
            time.sleep(pause)
            attempt += 1

    def get(
        self, url: str, wanted: Wanted = PAGE, evidence: Evidence | None = None, deadline: float | None = None
    ) -> Response:
        """One attempt: follow up to `max_redirects` redirects, each hop checked like the first."""
        ends_at: float | None = None
        for _ in range(self.settings.max_redirects + 1):
            if evidence is not None:
                self._check_site(url, evidence)
            # the deadline starts once the first origin's robots.txt and tdmrep.json are known (they have their own)
            ends_at = ends_at or time.monotonic() + (self.options.deadline if deadline is None else deadline)
            response = self._hop(url, wanted, ends_at, evidence)
            location = response.headers.get("Location")
            if response.status not in REDIRECTS or not location:
                return self._accept(response)
            url = urljoin(url, location)
        raise DownloadError(TOO_MANY_REDIRECTS, f"more than {self.settings.max_redirects} redirects, last to {url}")

    def _check_site(self, url: str, evidence: Evidence) -> None:
        """robots.txt and tdmrep.json of the URL's origin, before any request to it."""
        check_url(url)  # a URL we would not fetch has no robots.txt worth asking for
        site = origin(url)
        if self.consent.robots_txt:
            robots = self._robots.get(site)
            refusal = robots.refusal(url, self.token, evidence)
            if refusal:
                raise SiteRefusal(*refusal, transient=robots.outcome == UNREACHABLE and robots.transient)
        else:
            evidence["robots_txt"] = OFF
        if self.consent.content_usage and self.consent.robots_txt:
            refusal = self._usage.get(site).refusal(url, self.token, evidence)
            if refusal:
                raise SiteRefusal(*refusal)
        else:
            evidence["content_usage_robots"] = OFF
        if self.consent.tdmrep:
            refusal = self._tdmrep.get(site).refusal(url, evidence)
            if refusal:
                raise SiteRefusal(*refusal)
        else:
            evidence["tdmrep_json"] = OFF

    def _check_headers(self, headers: HTTPHeaderDict, evidence: Evidence) -> None:
        """X-Robots-Tag, tdm-reservation and Content-Usage: each recorded, the first refusal raised."""
        noai = x_robots_refusal(headers.getlist("X-Robots-Tag"), self.token, self.consent.x_robots_tag, evidence)
        if self.consent.tdmrep:
            reserved = tdm_header_refusal(headers.getlist("tdm-reservation"), evidence)
        else:
            reserved, evidence["tdm_header"] = None, OFF
        if self.consent.content_usage:
            usage = aipref.header_refusal(headers.getlist("Content-Usage"), evidence)
        else:
            usage, evidence["content_usage_header"] = None, OFF
        refusal = noai or reserved or usage
        if refusal:
            raise DownloadError(*refusal)

    def _accept(self, response: Response) -> Response:
        status = response.status
        if status == 429 or status >= 500:
            raise DownloadError(
                f"http_{status}", f"{response.url} answered {status}", transient=True, http_status=status
            )
        if status != 200:
            raise DownloadError(f"http_{status}", f"{response.url} answered {status}", http_status=status)
        return response

    def _hop(self, url: str, wanted: Wanted, ends_at: float, evidence: Evidence | None = None) -> Response:
        host = check_url(url)
        with self._host_slot(host), Deadline(ends_at) as deadline, _transport_errors(url, deadline):
            raw = self.http.request(
                "GET",
                url,
                headers={**self.http.headers, "Accept": wanted.accept},
                redirect=False,
                retries=False,
                preload_content=False,
                decode_content=False,
                timeout=self._timeout(ends_at),
            )
            complete = False
            try:
                if raw.status == 200 and evidence is not None:  # refused on the headers: the body is never read
                    self._check_headers(raw.headers, evidence)
                body, truncated = self._read(raw, ends_at, wanted) if raw.status == 200 else (b"", False)
                if deadline.expired:  # its socket shut mid-answer: the end of file it met ends no headers, no body
                    raise _deadline_passed(url)
                complete = raw.status == 200 and not truncated
            except DownloadError as error:
                error.http_status = raw.status
                raise
            finally:
                # unread bytes would poison the next request on this connection, and a shut socket would fail it
                if deadline.settle() or not complete:
                    raw.close()
                raw.release_conn()
        return Response(url, raw.status, raw.headers, body, truncated)

    def _read(self, raw: BaseHTTPResponse, ends_at: float, wanted: Wanted) -> tuple[bytes, bool]:
        """The body, and whether it is only the first `max_bytes` of it (`wanted.truncate`)."""
        limit = wanted.max_bytes or self.settings.max_bytes
        declared = raw.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit and not wanted.truncate:
            raise DownloadError(TOO_LARGE, f"Content-Length {declared} > {limit}")
        body = CappedBody(raw.headers.get("Content-Encoding", ""), limit, wanted.truncate)
        while not body.full and (chunk := self._read_chunk(raw, ends_at)):
            body.feed(chunk)
        return body.finish(), body.full

    def _read_chunk(self, raw: BaseHTTPResponse, ends_at: float) -> bytes:
        left = ends_at - time.monotonic()
        if left <= 0:
            raise DownloadError(TIMEOUT, "the download's deadline passed while reading", transient=True)
        # Asked anew each time: once the body's last byte is read, urllib3 puts the connection back in the pool
        # (`connection` is None), and another download may already be using, or have closed, its socket.
        sock = getattr(raw.connection, "sock", None)
        if sock is not None:  # a slow drip of bytes must not outlive the deadline
            sock.settimeout(min(self.options.read_timeout, left))
        return raw.read1(CHUNK, decode_content=False)

    def _timeout(self, ends_at: float) -> Timeout:
        left = ends_at - time.monotonic()
        if left <= 0:
            raise DownloadError(TIMEOUT, "the download's deadline passed", transient=True)
        return Timeout(connect=min(self.options.connect_timeout, left), read=min(self.options.read_timeout, left))

    @contextmanager
    def _host_slot(self, host: str) -> Iterator[None]:
        with self._hosts_lock:
            slot = self._hosts.setdefault(host, threading.BoundedSemaphore(self.options.per_host_concurrency))
        with slot:
            yield


@contextmanager
def _transport_errors(url: str, deadline: Deadline) -> Iterator[None]:
    """urllib3's and the address guard's exceptions as reasons: transient ones are retried."""
    try:
        yield
    except AddressRefused as exc:
        raise DownloadError(PRIVATE_ADDRESS, f"{url}: {exc}") from exc
    except (HTTPError, OSError) as exc:
        if deadline.expired:  # the deadline shut the socket: whatever broke next is its doing
            raise _deadline_passed(url) from exc
        raise _transport_error(url, exc) from exc


def _deadline_passed(url: str) -> DownloadError:
    return DownloadError(TIMEOUT, f"{url}: the download's deadline passed", transient=True)


def _transport_error(url: str, exc: HTTPError | OSError) -> DownloadError:
    if isinstance(exc, NewConnectionError):  # before the timeouts: urllib3 makes it a ConnectTimeoutError subclass
        return DownloadError(CONNECTION_ERROR, _describe(url, exc), transient=True)
    if isinstance(exc, Urllib3Timeout):
        return DownloadError(TIMEOUT, _describe(url, exc), transient=True)
    if isinstance(exc, SSLError):
        return DownloadError(TLS_ERROR, _describe(url, exc))
    if isinstance(exc, LocationParseError):
        return DownloadError(BAD_URL, _describe(url, exc))
    # refused, reset, truncated body, DNS failure; more than 100 header lines, or one over 64 KiB (http.client)
    return DownloadError(CONNECTION_ERROR, _describe(url, exc), transient=True)


def _describe(url: str, exc: Exception) -> str:
    """The exception's message without urllib3's pool repr ("HTTPConnectionPool(host=...): ")."""
    return f"{url}: {str(exc).split('): ', 1)[-1]}"


class HttpSource(Source):
    """A source whose candidates are URLs, all downloaded by the one safe `Downloader`."""

    def __init__(self, settings: CrawlSection, optout: OptOutList | None = None) -> None:
        super().__init__(settings, optout)
        self.downloader = Downloader(settings, self.optout)

    def refetch(self, urls: Iterable[UrlTriple]) -> Iterator[Fetched]:
        return self.downloader.fetch_all(urls)
