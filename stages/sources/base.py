"""The interface every crawl source implements: yield what it fetched for one name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pipeline.core.config import CrawlSection, PipelineConfig
from pipeline.core.optout import OptOutList
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
    consent: dict[str, str] = field(default_factory=dict)  # consent check -> outcome (`stages.sources.consent`)


SOURCES = Registry("crawl.source", "stages.sources")


class Source(ABC, Backend):
    name: str

    def __init__(self, settings: CrawlSection, optout: OptOutList | None = None) -> None:
        self.settings = settings
        self.optout = optout or OptOutList()  # its domains and URLs are refused before any request

    @classmethod
    def check(cls, config: PipelineConfig) -> None:
        """Driver-side checks (files exist, engine reachable) before any task runs."""

    @classmethod
    def load(cls, config: PipelineConfig) -> Source:
        governance = config.governance
        return cls(config.crawl, OptOutList.read(governance.optout, governance.optout_phash_bits))

    @abstractmethod
    def fetch(self, name: str) -> Iterator[Fetched]:
        """Up to `max_per_name` candidates for one person."""

    @abstractmethod
    def refetch(self, urls: Iterable[tuple[str, str | None, str | None]]) -> Iterator[Fetched]:
        """Fetch again (url, page_url, license) triples that failed transiently."""
