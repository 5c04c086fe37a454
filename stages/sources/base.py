"""The interface every crawl source implements: yield what it fetched for one name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pipeline.core.config import CrawlSection, PipelineConfig
from pipeline.core.schema import OK
from stages.backends import Backend, Registry


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Fetched:
    """One candidate image: its bytes, or why there are none (`status` failed or dropped)."""

    url: str
    data: bytes | None = None
    page_url: str | None = None
    license: str | None = None
    http_status: int | None = None
    status: str = OK
    reason: str | None = None
    detail: str | None = None
    fetched_at: datetime = field(default_factory=utc_now)


SOURCES = Registry("crawl.source", "stages.sources")


class Source(ABC, Backend):
    name: str

    def __init__(self, settings: CrawlSection) -> None:
        self.settings = settings

    @classmethod
    def check(cls, config: PipelineConfig) -> None:
        """Driver-side checks (files exist, engine reachable) before any task runs."""

    @classmethod
    def load(cls, config: PipelineConfig) -> Source:
        return cls(config.crawl)

    @abstractmethod
    def fetch(self, name: str) -> Iterator[Fetched]:
        """Up to `max_per_name` candidates for one person."""

    @abstractmethod
    def refetch(self, urls: Iterable[tuple[str, str | None, str | None]]) -> Iterator[Fetched]:
        """Fetch again (url, page_url, license) triples that failed transiently."""
