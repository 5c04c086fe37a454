"""Crawl sources behind one interface (`Source.fetch(name)`), registered in `SOURCES`, chosen by `crawl.source`."""

from __future__ import annotations

from stages.sources.base import SOURCES, Fetched, Source

__all__ = ["SOURCES", "Fetched", "Source"]
