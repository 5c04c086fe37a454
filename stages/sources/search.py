"""Search-engine sources (bing, baidu, google, flickr) through icrawler's own feeders and parsers.

icrawler builds the result-page URLs (its Feeder) and reads the result pages (its Parser); every
request, result pages included, goes through our `Downloader`, never icrawler's, so the address
checks, caps, timeouts and reasons are the same as for a URL list. `crawl.search_base_url` moves
the engine (scheme, host and a path prefix) elsewhere: a mirror, or the loopback server of the tests.
"""

from __future__ import annotations

import functools
import html
import json
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

from pipeline.core.config import CrawlSection, PipelineConfig
from pipeline.core.errors import UserError
from pipeline.core.optout import OptOutList
from pipeline.core.reasons import BAD_URL, CONNECTION_ERROR, PRIVATE_ADDRESS, TIMEOUT, TLS_ERROR
from stages.sources.base import SOURCES, Fetched
from stages.sources.http import Downloader, DownloadError, HttpSource, UrlTriple

# BingParser's regex runs past a murl without ".jpg" into later JSON fields: such "URLs" hold quotes.
URL_TEXT = re.compile(r"[^\s\"'<>]+")
UNREACHABLE = {CONNECTION_ERROR, TIMEOUT, BAD_URL, TLS_ERROR}
FLICKR_KEY = "FLICKR_API_KEY"
FLICKR_SIZES = ["original", "large 2048", "large 1600", "large", "medium 800"]
Provenance = tuple[str | None, str | None]  # page_url, license


class SearchFailed(Exception):
    """A result page could not be fetched: the task fails and the next run retries it."""


@dataclass(frozen=True)
class Engine:
    origin: str  # where icrawler's feeder sends the queries
    classes: Callable[[], tuple[type, type]]  # (Feeder, Parser), imported on first use
    feed: Callable[[str, int], dict[str, Any]]  # (query, max_num) -> feeder kwargs
    provenance: Callable[[Any, bytes, dict[str, Any]], Provenance] = lambda parser, page, task: (None, None)
    parse_kwargs: Callable[[], dict[str, Any]] = dict


@dataclass
class PageResponse:
    """The part of a `requests.Response` that icrawler's parsers read."""

    content: bytes
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)


def rebase(url: str, base: str | None) -> str:
    """`url` moved to `base`'s scheme and host, under its path prefix."""
    if not base:
        return url
    target, parts = urlsplit(base), urlsplit(url)
    return urlunsplit((target.scheme, target.netloc, target.path.rstrip("/") + parts.path, parts.query, parts.fragment))


# -- engines ----------------------------------------------------------------------------------------
def _bing_classes() -> tuple[type, type]:
    from icrawler.builtin.bing import BingFeeder, BingParser

    return BingFeeder, BingParser


@functools.lru_cache(maxsize=4)
def _bing_pages(page: bytes) -> dict[str, str]:
    """file_url -> purl, from the same `m` JSON BingParser reads its murl from (cut after .jpg like it)."""
    from bs4 import BeautifulSoup

    pages = {}
    for anchor in BeautifulSoup(page.decode("utf-8", "ignore"), "lxml").select("div.imgpt a[m]"):
        try:
            meta = json.loads(html.unescape(str(anchor["m"])))
        except (ValueError, TypeError):
            continue
        murl, purl = meta.get("murl") or "", meta.get("purl")
        if ".jpg" in murl and purl:
            pages[murl[: murl.index(".jpg") + 4]] = purl
    return pages


def _baidu_classes() -> tuple[type, type]:
    from icrawler.builtin.baidu import BaiduFeeder, BaiduParser

    return BaiduFeeder, BaiduParser


@functools.lru_cache(maxsize=4)
def _baidu_items(page: bytes) -> tuple[dict[str, Any], ...]:
    try:  # the same leniency as BaiduParser
        return tuple(json.loads(page.decode("utf-8", "ignore").replace("\\'", "'"), strict=False).get("data", []))
    except (ValueError, AttributeError):
        return ()


def _baidu_provenance(parser: Any, page: bytes, task: dict[str, Any]) -> Provenance:
    for item in _baidu_items(page):
        if item.get("objURL") and parser._decode_url(item["objURL"]) == task["file_url"]:
            return (parser._decode_url(item["fromURL"]) if item.get("fromURL") else None), None
    return None, None


def _google_classes() -> tuple[type, type]:
    from icrawler.builtin.google import GoogleFeeder, GoogleParser

    return GoogleFeeder, GoogleParser


def _flickr_classes() -> tuple[type, type]:
    from icrawler.builtin.flickr import FlickrFeeder, FlickrParser

    return FlickrFeeder, FlickrParser


FLICKR_PHOTO_PAGE = "https://www.flickr.com/photos/{owner}/{id}"  # a photo's public page (provenance)


def _flickr_provenance(parser: Any, page: bytes, task: dict[str, Any]) -> Provenance:
    photo = task.get("meta") or {}
    page_url = FLICKR_PHOTO_PAGE.format(owner=photo["owner"], id=photo["id"]) if "owner" in photo else None
    return page_url, (f"flickr-license-{photo['license']}" if "license" in photo else None)


ENGINES: dict[str, Engine] = {
    "bing": Engine(
        "https://www.bing.com", _bing_classes,
        lambda query, n: {"keyword": quote_plus(query), "offset": 0, "max_num": n},
        lambda parser, page, task: (_bing_pages(page).get(task["file_url"]), None),
    ),
    "baidu": Engine(
        "http://image.baidu.com", _baidu_classes,
        lambda query, n: {"keyword": quote(query), "offset": 0, "max_num": n},
        _baidu_provenance,
    ),
    "google": Engine(
        "https://www.google.com", _google_classes,
        lambda query, n: {"keyword": query, "offset": 0, "max_num": n},
    ),
    "flickr": Engine(
        "https://api.flickr.com", _flickr_classes,
        lambda query, n: {"apikey": os.environ.get(FLICKR_KEY), "max_num": n, "text": query, "extras": "license"},
        _flickr_provenance,
        lambda: {"apikey": os.environ.get(FLICKR_KEY), "size_preference": FLICKR_SIZES},
    ),
}  # fmt: skip


class _Session:
    """Stands in for the requests.Session icrawler hands its parsers (Flickr's fetches more pages)."""

    def __init__(self, downloader: Downloader, base: str | None) -> None:
        self.downloader, self.base = downloader, base

    def get(self, url: str, **_: Any) -> PageResponse:
        response = self.downloader.fetch(rebase(url, self.base))
        return PageResponse(response.body, response.url)


class SearchSource(HttpSource):
    """Query = name + `crawl.search_terms`; up to `max_per_name` image URLs, then our downloader."""

    def __init__(self, settings: CrawlSection, optout: OptOutList | None = None) -> None:
        from icrawler.utils import Signal

        super().__init__(settings, optout)
        self.name = settings.source
        self.engine = ENGINES[settings.source]
        signal = Signal()
        signal.set(reach_max_num=False)
        session = _Session(self.downloader, settings.search_base_url)
        feeder_class, parser_class = self.engine.classes()
        self.feeder = feeder_class(1, signal, session)
        self.feeder.out_queue = queue.Queue()  # icrawler's is bounded; nothing drains it while feeding
        self.parser = parser_class(1, signal, session)
        self._feeding = threading.Lock()  # one feeder queue, and a worker crawls several names at once

    @classmethod
    def check(cls, config: PipelineConfig) -> None:
        """One request to the engine, so a machine without network stops here, not after a timeout per name."""
        settings = config.crawl
        if settings.source == "flickr" and not os.environ.get(FLICKR_KEY):
            raise UserError("crawl.source=flickr needs a Flickr API key", f"export {FLICKR_KEY}=<your key>")
        origin = settings.search_base_url or ENGINES[settings.source].origin
        try:
            Downloader(settings).get(origin.rstrip("/") + "/", deadline=min(settings.download.deadline, 15.0))
        except DownloadError as error:
            if error.reason == PRIVATE_ADDRESS:
                raise UserError(
                    f"the {settings.source} search engine at {origin} is not a public address ({error.detail})",
                    "to search through a private mirror, add its network to crawl.allowed_networks",
                ) from error
            if error.reason in UNREACHABLE:
                raise UserError(
                    f"cannot reach the {settings.source} search engine at {origin} ({error.detail})",
                    "no network? crawl from a local folder (--set crawl.source=local --set crawl.local_root=DIR, "
                    "one sub-folder per name) or a URL list (--set crawl.source=urls --set crawl.urls_file=FILE.tsv)",
                ) from error

    def fetch(self, name: str) -> Iterator[Fetched]:
        query = " ".join([name, *self.settings.search_terms])
        return self.refetch(self.search(query))

    def search(self, query: str) -> list[UrlTriple]:
        """Result pages in order until `max_per_name` distinct image URLs, or a page adds none."""
        wanted = self.settings.max_per_name
        found: dict[str, UrlTriple] = {}
        for page_url in self._result_pages(query, wanted):
            before = len(found)
            for item in self._parse(page_url):
                found.setdefault(item[0], item)
            if len(found) >= wanted or len(found) == before:
                break
        return list(found.values())[:wanted]

    def _result_pages(self, query: str, wanted: int) -> list[str]:
        pages = []
        with self._feeding:
            self.feeder.feed(**self.engine.feed(query, wanted))
            while not self.feeder.out_queue.empty():
                pages.append(rebase(self.feeder.out_queue.get_nowait(), self.settings.search_base_url))
        return pages

    def _parse(self, page_url: str) -> Iterator[UrlTriple]:
        try:
            page = self.downloader.fetch(page_url).body
        except DownloadError as error:
            raise SearchFailed(f"{self.name} result page {page_url}: {error}") from error
        for task in self.parser.parse(PageResponse(page, page_url), **self.engine.parse_kwargs()) or ():
            if isinstance(task, dict) and URL_TEXT.fullmatch(task.get("file_url") or ""):
                yield (task["file_url"], *self.engine.provenance(self.parser, page, task))


for _engine in ENGINES:
    SOURCES.register(SearchSource, _engine)
