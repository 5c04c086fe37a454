"""A real threaded HTTP server on 127.0.0.1 for the crawl tests: photos, search pages, bad hosts.

Photos come from tests/data/faces/images. Search-result pages are written in the formats the
installed icrawler parsers read (Bing, Baidu, Google, Flickr's API), listing `search_results`.
Every other route misbehaves in one way. `files` serves exact paths as a test sets them (robots.txt,
tdmrep.json, images it made); `drips` sends the whole answer to some paths (status line and headers
included) a byte at a time. `requests` logs every request line the server received, so a test can
assert what was (or was never) fetched; `max_held` is the peak of /slow-headers requests held unanswered
at once, the downloads a client had in flight.
"""

from __future__ import annotations

import functools
import gzip
import html
import json
import ssl
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

from tests.conftest import FACES

BOMB = gzip.compress(b"\0" * (64 << 20), compresslevel=9)  # 64 MiB of zeros in ~64 KiB
DRIP_SECONDS = 0.5  # between the bytes of /drip
DRIP_MAX = 60  # bytes; bounds the handler thread if a client never hangs up
# A self-signed certificate for 127.0.0.1 (valid to 2126): no CA the crawler trusts signed it.
SELF_SIGNED = """\
-----BEGIN CERTIFICATE-----
MIIBmzCCAUGgAwIBAgIUQCPbzVeejmmBmisDJrd3gvxP2dswCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyNTAxMzczNFoYDzIxMjYxMTAx
MDEzNzM0WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAT/mbnUa5Iqr1MumPVk+yWS2kyOXunH0xEzl3ndi/R5mrKYF0+XRRNu
YXFwbSjsP9CUwPxF3vu2Vfotd256tmVYo28wbTAdBgNVHQ4EFgQUrXyvda1vW3Rm
xwEv60vSmmNRCeYwHwYDVR0jBBgwFoAUrXyvda1vW3RmxwEv60vSmmNRCeYwDwYD
VR0TAQH/BAUwAwEB/zAaBgNVHREEEzARhwR/AAABgglsb2NhbGhvc3QwCgYIKoZI
zj0EAwIDSAAwRQIgLthvg17t1tjsA7EPUJH+OJbRTgZYZ0at3bQrvUmbT3sCIQCk
omLotDinGE05EP+AINi/YFH6gW+dIKTvwI+dJnl7yA==
-----END CERTIFICATE-----
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgIDEN756QVmBND73F
dsd+t/PKa4moRGBOKh1YmCZxUqGhRANCAAT/mbnUa5Iqr1MumPVk+yWS2kyOXunH
0xEzl3ndi/R5mrKYF0+XRRNuYXFwbSjsP9CUwPxF3vu2Vfotd256tmVY
-----END PRIVATE KEY-----
"""


def baidu_encode(url: str) -> str:
    """The inverse of icrawler's BaiduParser._decode_url, as Baidu's objURL field is written."""
    from icrawler.builtin.baidu import BaiduParser

    cipher_to_plain = {"w": "a", "k": "b", "v": "c", "1": "d", "j": "e", "u": "f", "2": "g", "i": "h", "t": "i",
                       "3": "j", "h": "k", "s": "l", "4": "m", "g": "n", "5": "o", "r": "p", "q": "q", "6": "r",
                       "f": "s", "p": "t", "7": "u", "e": "v", "o": "w", "8": "1", "d": "2", "n": "3", "9": "4",
                       "c": "5", "m": "6", "0": "7", "b": "8", "l": "9", "a": "0"}  # fmt: skip
    inverse = {plain: cipher for cipher, plain in cipher_to_plain.items()}
    text = "".join(inverse.get(ch, ch) for ch in url)
    encoded = text.replace(":", "_z2C$q").replace(".", "_z&e3B").replace("/", "AzdH3F")
    assert BaiduParser._decode_url(None, encoded) == url, url  # type: ignore[arg-type]
    return encoded


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, images: Path) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.images = images
        self.requests: list[str] = []  # request targets (path + query), in arrival order
        self._times_asked: Counter[str] = Counter()  # the same, counted: O(1) per request under load
        self.user_agents: set[str] = set()
        self.search_results: dict[str, list[tuple[str, str]]] = {}  # name -> [(image url, page url)]
        self.files: dict[str, tuple[int, bytes, dict[str, str]]] = {}  # path -> (status, body, headers)
        self.drips: dict[str, float] = {}  # path -> seconds between the bytes of its whole answer
        self.lock = threading.Lock()
        self.held = self.max_held = 0  # /slow-headers requests held unanswered at once, and the peak
        self.scheme = "http"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}"

    def url(self, path: str) -> str:
        return self.origin + path

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one server per test, and the photos never change
    def photo(self, name: str) -> bytes:
        return (self.images / name).read_bytes()

    def hits(self) -> Counter[str]:
        with self.lock:
            return Counter(self.requests)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client hanging up mid-body is what /endless, /drip and the limits expect: not an error."""
        if not isinstance(sys.exc_info()[1], ConnectionError | ssl.SSLError):
            super().handle_error(request, client_address)

    @contextmanager
    def holding(self) -> Iterator[None]:
        """One request held unanswered. Counted from its arrival to its answer's first byte, inside the client's
        own wait for it: a handler thread still finishing after its client read the answer (and sent the next
        request) counts no more, so the peak is never above what the client had in flight."""
        with self.lock:
            self.held += 1
            self.max_held = max(self.max_held, self.held)
        try:
            yield
        finally:
            with self.lock:
                self.held -= 1

    def log_request_target(self, target: str) -> int:
        """Record a request; returns how many times this exact target was asked for before."""
        with self.lock:
            before = self._times_asked[target]
            self._times_asked[target] += 1
            self.requests.append(target)
            return before

    def results_for(self, query: str) -> list[tuple[int, str, str]]:
        """(number, image url, page url) of every name contained in the query (name + search terms)."""
        numbered = enumerate((name, *hit) for name, hits in self.search_results.items() for hit in hits)
        return [(i, image, page) for i, (name, image, page) in numbered if name.lower() in query.lower()]

    def result_number(self, number: int) -> str:
        return [image for hits in self.search_results.values() for image, _ in hits][number]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, a kept-alive connection holds the body
    # until the client's delayed ACK (~40 ms a request), as no production server does.
    disable_nagle_algorithm = True
    server: LocalServer

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        self.seen_before = self.server.log_request_target(self.path)
        self.server.user_agents.add(self.headers.get("User-Agent", ""))
        parts = urlsplit(self.path)
        self.query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        route, _, self.rest = parts.path.lstrip("/").partition("/")
        handler = getattr(self, f"route_{route.replace('-', '_')}", None) if route else self.route_root
        if parts.path in self.server.files:
            handler = self.route_file
        if parts.path in self.server.drips:
            self.wfile = Drip(self.wfile, self.server.drips[parts.path])  # type: ignore[assignment]
            self.close_connection = True
        (handler or self.route_missing)()

    # -- helpers ---------------------------------------------------------------------------------
    def send(self, status: int, body: bytes, content_type: str = "image/jpeg", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", headers.pop("content_length", str(len(body))))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def photo(self, name: str) -> bytes:
        return self.server.photo(Path(name).name)

    def redirect(self, location: str) -> None:
        self.send(302, b"", "text/plain", Location=location)

    # -- well-behaved ----------------------------------------------------------------------------
    def route_root(self) -> None:
        self.send(200, b"ok", "text/plain")

    def route_missing(self) -> None:
        self.send(404, b"no such route", "text/plain")

    def route_img(self) -> None:
        self.send(200, self.photo(self.rest))

    def route_gzip(self) -> None:
        self.send(200, gzip.compress(self.photo(self.rest)), Content_Encoding="gzip")

    def route_redirect(self) -> None:
        hops, _, name = self.rest.partition("/")
        self.redirect(f"/redirect/{int(hops) - 1}/{name}" if int(hops) > 1 else f"/img/{name}")

    # -- misbehaving -----------------------------------------------------------------------------
    def route_status(self) -> None:
        code = self.rest.split("/")[0].split(".")[0]  # /status/404.jpg, /status/503/images/async
        self.send(int(code), b"error page", "text/html")

    def route_flaky(self) -> None:
        """/flaky/<n>/<photo>: 500 for the first n requests, then the photo."""
        failures, _, name = self.rest.partition("/")
        if self.seen_before < int(failures):
            self.send(500, b"try again", "text/html")
        else:
            self.send(200, self.photo(name))

    def route_slow_headers(self) -> None:
        seconds, _, name = self.rest.partition("/")
        with self.server.holding():
            time.sleep(float(seconds))
        self.send(200, self.photo(name))

    def route_drip(self) -> None:
        """Announces the whole photo, then sends one byte every DRIP_SECONDS: only a deadline stops it."""
        data = self.photo(self.rest)
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        for byte in data[:DRIP_MAX]:
            self.wfile.write(bytes([byte]))
            self.wfile.flush()
            time.sleep(DRIP_SECONDS)
        self.close_connection = True

    def route_loop(self) -> None:
        self.redirect("/loop")

    def route_to(self) -> None:
        """/to?url=...: a redirect to anywhere (private addresses, other schemes)."""
        self.redirect(self.query["url"])

    def route_truncated(self) -> None:
        """Announces the whole photo, sends half of it, hangs up."""
        data = self.photo(self.rest)
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.close_connection = True

    def route_short_cl(self) -> None:
        """/short-cl/<n>/<photo>: a Content-Length of n, then the whole photo (a lie the other way)."""
        size, _, name = self.rest.partition("/")
        self.send(200, self.photo(name), content_length=size, Connection="close")
        self.close_connection = True

    def route_html_as_jpeg(self) -> None:
        self.send(200, b"<!doctype html><html><body>not a photo</body></html>", "image/jpeg")

    def route_svg_as_jpeg(self) -> None:
        self.send(200, b'<?xml version="1.0"?><svg width="900" height="900"><circle r="400"/></svg>')

    def route_empty(self) -> None:
        self.send(200, b"")

    def route_huge_cl(self) -> None:
        self.send(200, b"x" * 1024, content_length=str(10**12), Connection="close")
        self.close_connection = True

    def route_endless(self) -> None:
        """No Content-Length, body until the client hangs up (bounded at 1 GiB)."""
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self._stream_zeros(lambda chunk: self.wfile.write(chunk))

    def route_endless_chunked(self) -> None:
        """Claims 1000 bytes in Content-Length but streams endless chunks: the cap must still hold."""
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True
        self._stream_zeros(lambda chunk: self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk)))

    def _stream_zeros(self, write: Any) -> None:
        chunk = b"\0" * (64 << 10)
        for _ in range(16384):
            write(chunk)

    def route_gzip_bomb(self) -> None:
        self.send(200, BOMB, Content_Encoding="gzip")

    def route_noai(self) -> None:
        self.send(200, self.photo(self.rest), X_Robots_Tag="noai")

    def route_noimageai(self) -> None:
        self.send(200, self.photo(self.rest), X_Robots_Tag="noindex, noimageai")

    def route_file(self) -> None:
        status, body, headers = self.server.files[urlsplit(self.path).path]
        self.send(status, body, headers.get("Content-Type", "application/octet-stream"),
                  **{name.replace("-", "_"): value for name, value in headers.items() if name != "Content-Type"})

    def route_headers(self) -> None:
        """/headers/<photo>?Header-Name=value...: the photo with those response headers."""
        self.send(200, self.photo(self.rest), **{name.replace("-", "_"): value for name, value in self.query.items()})

    def route_repeat_headers(self) -> None:
        """/repeat-headers/<n>/<photo>?Name=value&Name=other...: the photo, with those header lines, in that
        order, sent n times over (`headers` sends each name once)."""
        times, _, name = self.rest.partition("/")
        data = self.photo(name)
        self.send_response(200)
        for key, value in parse_qsl(urlsplit(self.path).query) * int(times):
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def route_headers_endless(self) -> None:
        """/headers-endless?Header-Name=value...: those headers, then a body that never ends: refused on the
        headers, or the client would meet too_large."""
        self.send_response(200)
        for name, value in self.query.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self._stream_zeros(lambda chunk: self.wfile.write(chunk))

    # -- search engines, in the formats icrawler's parsers read -------------------------------------
    def route_bing(self) -> None:
        """/bing/images/async?q=...&first=N: Bing's result fragment (div.imgpt > a.iusc[m])."""
        hits = self.server.results_for(self.query.get("q", "")) if self.query.get("first") == "0" else []
        items = []
        for number, image_url, page_url in hits:  # the field order and compact JSON of Bing's pages
            meta = {"cid": str(number), "purl": page_url, "murl": image_url, "turl": "t", "t": f"photo {number}.jpg"}
            meta = json.dumps(meta, separators=(",", ":"))
            items.append(f'<div class="imgpt"><a class="iusc" m="{html.escape(meta)}" href="#"><img src="t"></a></div>')
        self.send(200, f"<html><body>{''.join(items)}</body></html>".encode(), "text/html; charset=utf-8")

    def route_baidu(self) -> None:
        """/baidu/search/acjson?...&word=...&pn=N: Baidu's JSON with encoded objURL/fromURL."""
        hits = self.server.results_for(self.query.get("word", "")) if self.query.get("pn") == "0" else []
        data = [{"objURL": baidu_encode(image), "fromURL": baidu_encode(page)} for _, image, page in hits] + [{}]
        self.send(200, json.dumps({"data": data}).encode(), "application/json")

    def route_google(self) -> None:
        """/google/search?q=...: image URLs inside a script, as GoogleParser's regex expects."""
        hits = self.server.results_for(self.query.get("q", "")) if self.query.get("start") == "0" else []
        data = json.dumps([[1, [0, "id", [url, 800, 600]]] for _, url, _ in hits])
        page = f"<html><script>AF_initDataCallback({{key: 'ds:1', data:{data}}});</script></html>"
        self.send(200, page.encode(), "text/html")

    def route_flickr(self) -> None:
        """/flickr/services/rest/?method=...: flickr.photos.search and flickr.photos.getSizes."""
        if "method" not in self.query:
            return self.route_root()
        if self.query["method"] == "flickr.photos.search":
            hits = self.server.results_for(self.query["text"]) if self.query.get("page") == "1" else []
            photos = [{"id": str(i), "owner": f"owner{i}", "license": "4"} for i, _, _ in hits]
            body: dict[str, Any] = {"stat": "ok", "photos": {"page": 1, "pages": 1, "photo": photos}}
        else:
            image_url = self.server.result_number(int(self.query["photo_id"]))
            body = {"stat": "ok", "sizes": {"size": [{"label": "Large", "source": image_url}]}}
        self.send(200, json.dumps(body).encode(), "application/json")


class Drip:
    """A handler's output, written one byte every `seconds` (a slowloris server), DRIP_MAX bytes at most."""

    def __init__(self, out: Any, seconds: float) -> None:
        self.out, self.seconds, self.sent = out, seconds, 0

    def write(self, data: bytes) -> int:
        for byte in data:
            if self.sent >= DRIP_MAX:  # hang up: the handler thread ends even if the client never does
                raise ConnectionAbortedError("drip limit reached")
            self.out.write(bytes([byte]))
            self.out.flush()
            self.sent += 1
            time.sleep(self.seconds)
        return len(data)

    def __getattr__(self, name: str) -> Any:  # flush, close, closed: the socket's writer
        return getattr(self.out, name)


@contextmanager
def serving(images: Path = FACES / "images", tls: bool = False) -> Iterator[LocalServer]:
    """The server on a free port of 127.0.0.1, in a daemon thread; `tls` serves https (self-signed)."""
    server = LocalServer(images)
    if tls:
        with tempfile.NamedTemporaryFile("w", suffix=".pem") as pem:
            pem.write(SELF_SIGNED)
            pem.flush()
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(pem.name)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.scheme = "https"
    with running(server):
        yield server


@contextmanager
def running(server: HTTPServer) -> Iterator[None]:
    """`server` answering in a daemon thread until the block ends, then closed."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":  # `python -m tests.http_server DIR`: serve DIR's photos until stdin closes
    with serving(Path(sys.argv[1])) as own:
        print(own.origin, flush=True)
        sys.stdin.read()
