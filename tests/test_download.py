"""The safe downloader against a real loopback server: each misbehaving route -> status and reason."""

from __future__ import annotations

import gzip
import ipaddress
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from pipeline.core.config import CrawlSection
from pipeline.core.schema import DROPPED, FAILED, OK
from stages.sources.addresses import AddressPolicy, AddressRefused, connect_checked
from stages.sources.http import CappedBody, Downloader, DownloadError
from tests.conftest import FACES
from benchmarks.fixtures.http_server import LocalServer, serving

LOOPBACK_ONLY = ["127.0.0.1/32"]  # the test server, and nothing else that is private


def crawl_settings(**overrides: object) -> CrawlSection:
    """Fast limits: short timeouts, one retry with a tiny backoff, a 5 MB cap."""
    download = {"connect_timeout": 1.0, "read_timeout": 1.0, "deadline": 2.0, "retries": 1, "backoff": 0.05}
    download.update(overrides.pop("download", {}))  # type: ignore[arg-type]
    values = {"allowed_networks": LOOPBACK_ONLY, "max_bytes": 5_000_000, "max_redirects": 3, "download": download}
    return CrawlSection.model_validate({**values, **overrides})


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with serving() as running:
        yield running


@pytest.fixture(scope="module")
def downloader() -> Downloader:
    return Downloader(crawl_settings())


PHOTO = (FACES / "images" / "img2.jpg").read_bytes()

ROUTES = [
    ("/img/img2.jpg", OK, None),
    ("/gzip/img2.jpg", OK, None),  # decoded, same bytes as the photo
    ("/redirect/3/img2.jpg", OK, None),  # 3 redirects = the cap
    ("/html-as-jpeg", OK, None),  # the downloader keeps bytes; the crawl stage sniffs them: not_an_image
    ("/svg-as-jpeg", OK, None),
    ("/empty", OK, None),  # a 200 with no body: the crawl stage drops it as zero_bytes
    ("/status/404", DROPPED, "http_404"),
    ("/status/403", DROPPED, "http_403"),
    ("/status/500", FAILED, "http_500"),
    ("/status/503", FAILED, "http_503"),
    ("/status/429", FAILED, "http_429"),
    ("/flaky/5/img2.jpg", FAILED, "http_500"),  # still failing after the retry
    ("/slow-headers/3/img2.jpg", FAILED, "timeout"),  # silent longer than read_timeout
    ("/drip/img2.jpg", FAILED, "timeout"),  # a byte every 0.5 s: only the deadline stops it
    ("/truncated/img2.jpg", FAILED, "connection_error"),  # hung up before Content-Length bytes
    ("/redirect/4/img2.jpg", DROPPED, "too_many_redirects"),
    ("/loop", DROPPED, "too_many_redirects"),
    ("/huge-cl", DROPPED, "too_large"),  # refused from the header, body never read
    ("/endless", DROPPED, "too_large"),  # no Content-Length, never ends
    ("/endless-chunked", DROPPED, "too_large"),  # Content-Length says 1000, chunks never end
    ("/gzip-bomb", DROPPED, "too_large"),  # 64 KiB on the wire, 64 MiB decoded
    ("/noai/img2.jpg", DROPPED, "robots_noai"),
    ("/noimageai/img2.jpg", DROPPED, "robots_noai"),  # "noindex, noimageai"
    ("/to?url=ftp://127.0.0.1/x.jpg", DROPPED, "bad_url"),  # redirect to another scheme
    ("/to?url=file:///etc/passwd", DROPPED, "bad_url"),
]


@pytest.mark.parametrize(("route", "status", "reason"), ROUTES)
def test_route_outcome(
    server: LocalServer, downloader: Downloader, route: str, status: str, reason: str | None
) -> None:
    fetched = downloader.fetch_image(server.url(route), "https://example.org/page", "CC-BY-4.0")
    assert (fetched.status, fetched.reason) == (status, reason), fetched.detail
    assert (fetched.page_url, fetched.license) == ("https://example.org/page", "CC-BY-4.0")
    assert (fetched.data is not None) == (status == OK)


def test_decoded_body_is_the_photo(server: LocalServer, downloader: Downloader) -> None:
    assert downloader.fetch_image(server.url("/gzip/img2.jpg")).data == PHOTO


def test_user_agent_is_configurable(server: LocalServer) -> None:
    agent = "face-dataset-test/1.0 (+mailto:crawler@example.org)"
    downloader = Downloader(crawl_settings(download={"user_agent": agent}))
    assert downloader.fetch_image(server.url("/img/img8.jpg")).status == OK
    assert agent in server.user_agents


def test_short_content_length_reads_no_further(server: LocalServer, downloader: Downloader) -> None:
    """A Content-Length smaller than the body: exactly that many bytes, the rest never read."""
    fetched = downloader.fetch_image(server.url("/short-cl/60000/img2.jpg"))
    assert fetched.status == OK and fetched.data == PHOTO[:60000]


def test_slow_drip_stops_at_the_deadline(server: LocalServer) -> None:
    downloader = Downloader(crawl_settings(download={"retries": 0, "deadline": 1.5, "read_timeout": 1.0}))
    started = time.monotonic()
    assert downloader.fetch_image(server.url("/drip/img3.jpg")).reason == "timeout"
    assert 1.4 < time.monotonic() - started < 2.5


def test_transient_failures_are_retried_with_backoff(server: LocalServer) -> None:
    downloader = Downloader(crawl_settings(download={"retries": 2, "backoff": 0.2}))
    started = time.monotonic()
    fetched = downloader.fetch_image(server.url("/flaky/2/img4.jpg"))
    assert fetched.status == OK and fetched.http_status == 200
    assert server.hits()["/flaky/2/img4.jpg"] == 3
    assert time.monotonic() - started >= 0.2 + 0.4  # backoff doubles


def test_permanent_failures_are_not_retried(server: LocalServer) -> None:
    downloader = Downloader(crawl_settings(download={"retries": 3}))
    assert downloader.fetch_image(server.url("/status/410")).reason == "http_410"
    assert downloader.fetch_image(server.url("/noai/img5.jpg")).reason == "robots_noai"
    assert server.hits()["/status/410"] == 1 and server.hits()["/noai/img5.jpg"] == 1


def test_unreachable_port_is_a_transient_connection_error(downloader: Downloader) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: the connection is refused
        fetched = downloader.fetch_image(f"http://127.0.0.1:{port}/img.jpg")
    assert (fetched.status, fetched.reason) == (FAILED, "connection_error")


# -- a connection back in the pool -----------------------------------------------------------------
def another_download_once_read(
    monkeypatch: pytest.MonkeyPatch, size: int, download: Callable[[], object]
) -> list[Future[object]]:
    """Forces an ordering that only load makes happen: once the last byte of a `size`-byte body is read,
    urllib3 has put its connection back in the pool while that download still goes on (decoding the body);
    here `download` runs in another thread, on that same connection, to its end before the first goes on."""
    ran: list[Future[object]] = []

    class Paused(CappedBody):
        def feed(self, chunk: bytes) -> None:
            super().feed(chunk)
            if self.wire_size == size and not ran:
                with ThreadPoolExecutor(1) as other:
                    ran.append(other.submit(download))

    monkeypatch.setattr("stages.sources.http.CappedBody", Paused)
    return ran


def test_a_connection_back_in_the_pool_is_not_used_again(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The read loop kept the socket of a connection urllib3 had put back: once the next download on it
    closed it (a 404 does), the good photo failed as connection_error "[Errno 9] Bad file descriptor"."""
    downloader = Downloader(crawl_settings(download={"retries": 0}))
    missing = server.url("/status/404")
    ran = another_download_once_read(monkeypatch, len(PHOTO), lambda: downloader.fetch_image(missing).reason)
    fetched = downloader.fetch_image(server.url("/img/img2.jpg"))
    assert [other.result() for other in ran] == ["http_404"]
    assert (fetched.status, fetched.reason, fetched.data == PHOTO) == (OK, None, True), fetched.detail


def test_a_late_deadline_spares_the_next_download_on_its_connection(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deadline watched its connection until its download ended, after urllib3 had put it back: firing
    then, it shut the socket of the next download on that connection, which failed."""
    downloader = Downloader(crawl_settings(download={"retries": 0, "deadline": 1.0, "read_timeout": 3.0}))
    slow = server.url("/slow-headers/1.5/img12.jpg")  # answered after the first download's deadline
    ran = another_download_once_read(
        monkeypatch, len(PHOTO), lambda: downloader.fetch(slow, ends_at=time.monotonic() + 5).status
    )
    downloader.fetch_image(server.url("/img/img2.jpg"))  # held past its own deadline by the other download
    assert [other.result() for other in ran] == [200]


def test_tls_certificates_are_verified() -> None:
    with serving(tls=True) as https:
        fetched = Downloader(crawl_settings()).fetch_image(https.url("/img/img2.jpg"))
    assert (fetched.status, fetched.reason) == (DROPPED, "tls_error"), fetched.detail
    assert "certificate verify failed" in (fetched.detail or "")


BAD_URLS = ["ftp://example.org/x.jpg", "http:///x.jpg", "http://[::1/x.jpg", "http://h.invalid:99999/x", "x.jpg"]


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_urls(downloader: Downloader, url: str) -> None:
    assert downloader.fetch_image(url).reason == "bad_url"


# -- limits on downloads in flight ---------------------------------------------------------------
@pytest.mark.parametrize(("per_host", "total", "expected"), [(2, 8, 2), (8, 3, 3)])
def test_concurrency_limits(per_host: int, total: int, expected: int) -> None:
    """A server of its own: the shared one may still be answering a client that gave up (a /drip handler sleeps
    on for up to a second after test_slow_drip_stops_at_the_deadline), which is no download of this one."""
    downloader = Downloader(crawl_settings(download={"per_host_concurrency": per_host, "max_concurrency": total}))
    with serving() as own:
        urls = [(own.url(f"/slow-headers/0.3/img{i}.jpg"), None, None) for i in (1, 2, 3, 4, 5, 6)]
        assert [item.status for item in downloader.fetch_all(urls)] == [OK] * 6
    assert own.max_held == expected


# -- private addresses -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
     "224.0.0.1", "240.0.0.1", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::"],
)  # fmt: skip
def test_non_public_addresses_are_refused(address: str) -> None:
    assert AddressPolicy().refusal(address)
    assert AddressPolicy(allow_private=True).refusal(address) is None


def test_public_and_allowed_addresses_pass() -> None:
    assert AddressPolicy().refusal("93.184.216.34") is None and AddressPolicy().refusal("2606:4700::1111") is None
    policy = CrawlSection.model_validate({"allowed_networks": ["10.0.0.0/8"]}).allowed_networks
    assert AddressPolicy(allowed_networks=tuple(policy)).refusal("10.9.9.9") is None
    assert AddressPolicy(allowed_networks=tuple(policy)).refusal("192.168.0.1")


def test_default_policy_sends_no_request_to_a_private_host(server: LocalServer) -> None:
    before = len(server.requests)
    fetched = Downloader(crawl_settings(allowed_networks=[])).fetch_image(server.url("/img/img2.jpg"))
    assert (fetched.status, fetched.reason) == (DROPPED, "private_address")
    assert len(server.requests) == before


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address a socket of this process tries to connect to."""
    attempts: list[str] = []
    real_connect = socket.socket.connect

    def connect(sock: socket.socket, address: tuple) -> None:
        attempts.append(address[0])
        if not ipaddress.ip_address(address[0]).is_loopback:  # whatever the code does, no packet leaves
            raise ConnectionRefusedError(f"test guard: {address[0]} is not loopback")
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return attempts


@pytest.mark.parametrize("host", ["10.0.0.1", "169.254.169.254", "[fd00::1]"])
def test_redirect_to_a_private_address_is_refused_before_connecting(
    server: LocalServer, downloader: Downloader, connects: list[str], host: str
) -> None:
    fetched = downloader.fetch_image(server.url(f"/to?url=http://{host}/x.jpg"))
    assert (fetched.status, fetched.reason) == (DROPPED, "private_address")
    assert set(connects) <= {"127.0.0.1"}  # the first hop only: no packet to the private target


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]) -> list[str]:
    """getaddrinfo answering `answers[host]` (one list per successive lookup); returns the lookups."""
    lookups: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list:
        if host not in answers:
            return real(host, port, *args, **kwargs)
        round_ = answers[host][min(lookups.count(host), len(answers[host]) - 1)]
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in round_]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


def test_a_host_with_any_private_answer_is_refused(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch, connects: list[str]
) -> None:
    fake_dns(monkeypatch, {"mixed.invalid": [["127.0.0.1", "10.0.0.7"]]})
    before = len(server.requests)
    fetched = Downloader(crawl_settings()).fetch_image(f"http://mixed.invalid:{server.server_address[1]}/img/img2.jpg")
    assert fetched.reason == "private_address" and "10.0.0.7" in (fetched.detail or "")
    assert connects == [] and len(server.requests) == before


def test_dns_rebinding_cannot_swap_the_checked_address(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch, connects: list[str]
) -> None:
    """The first answer is allowed, every later one private: only one lookup is made and used."""
    lookups = fake_dns(monkeypatch, {"rebind.invalid": [["127.0.0.1"], ["10.0.0.8"]]})
    one_request = {"robots_txt": False, "tdmrep": False}  # robots.txt and tdmrep.json would be requests of their own
    downloader = Downloader(crawl_settings(consent=one_request))
    fetched = downloader.fetch_image(f"http://rebind.invalid:{server.server_address[1]}/img/img2.jpg")
    assert fetched.status == OK
    assert lookups == ["rebind.invalid"] and connects == ["127.0.0.1"]


def test_the_connected_peer_is_checked_before_the_request(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulates a socket that ends up elsewhere than dialled (NAT, interception): refused, nothing sent."""
    monkeypatch.setattr(socket.socket, "getpeername", lambda sock: ("10.0.0.9", 80))
    before = len(server.requests)
    policy = AddressPolicy(allowed_networks=tuple(crawl_settings().allowed_networks))
    with pytest.raises(AddressRefused, match=r"10\.0\.0\.9"):
        connect_checked("127.0.0.1", server.server_address[1], 1.0, policy)
    fetched = Downloader(crawl_settings()).fetch_image(server.url("/img/img2.jpg"))
    assert fetched.reason == "private_address" and len(server.requests) == before


# -- the body cap ----------------------------------------------------------------------------------
def test_capped_body_bounds_decompression() -> None:
    bomb = gzip.compress(b"\0" * 10_000_000)
    body = CappedBody("gzip", limit=1_000_000)
    with pytest.raises(DownloadError, match="too_large"):
        for start in range(0, len(bomb), 4096):
            body.feed(bomb[start : start + 4096])
    assert body.size <= 1_000_001  # never more than one byte past the cap was produced


def test_capped_body_rejects_corrupt_and_unknown_encodings() -> None:
    with pytest.raises(DownloadError, match="not_an_image"):
        CappedBody("gzip", 1000).feed(b"this is not gzip")
    with pytest.raises(DownloadError, match="not_an_image"):
        CappedBody("br", 1000)
