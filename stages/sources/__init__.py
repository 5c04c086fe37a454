"""Crawl sources behind one interface (`Source.fetch(name)`), chosen by `crawl.source`."""

from __future__ import annotations

from pipeline.core.config import CrawlSection
from pipeline.core.errors import UserError
from stages.sources.base import Fetched, Source
from stages.sources.local import LocalSource
from stages.sources.search import ENGINES, SearchSource
from stages.sources.urls import UrlsSource

SOURCES: dict[str, type[Source]] = {
    "local": LocalSource,
    "urls": UrlsSource,
    **{engine: SearchSource for engine in ENGINES},
}


def source_class(settings: CrawlSection) -> type[Source]:
    try:
        return SOURCES[settings.source]
    except KeyError:
        raise UserError(
            f"crawl.source={settings.source} is not available in this version",
            f"use one of: {', '.join(sorted(SOURCES))}",
        ) from None


__all__ = ["Fetched", "Source", "source_class"]
