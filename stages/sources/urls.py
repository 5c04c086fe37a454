"""The `urls` source: a TSV of `name <TAB> url [<TAB> page_url [<TAB> license]]` (re-crawl a known list).

A header line (second column `url`) is optional; blank lines and lines starting with `#` are
skipped; rows whose name is not in the names list are never asked for. Malformed lines (fewer
than two or more than four columns, an empty name or url) are reported once, on the driver.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import UserError
from pipeline.core.names import clean_name
from stages.sources.base import SOURCES, Fetched
from stages.sources.http import HttpSource, UrlTriple

log = logging.getLogger(__name__)
FORMAT = "name<TAB>url[<TAB>page_url[<TAB>license]]"


@dataclass
class UrlList:
    by_name: dict[str, list[UrlTriple]] = field(default_factory=lambda: defaultdict(list))
    malformed: list[tuple[int, str]] = field(default_factory=list)  # (line number, why)


def read_url_list(path: Path) -> UrlList:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read crawl.urls_file {path}: {exc}", f"give a UTF-8 TSV: {FORMAT}") from exc
    parsed = UrlList()
    header_allowed = True
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        columns = [column.strip() for column in line.split("\t")]
        if header_allowed and len(columns) > 1 and columns[1].lower() == "url":
            header_allowed = False
            continue
        header_allowed = False
        name = clean_name(columns[0])
        if not 2 <= len(columns) <= 4 or not name or not columns[1]:
            parsed.malformed.append((number, f"expected {FORMAT}, got {len(columns)} column(s)"))
            continue
        page_url, license_ = [*columns[2:], "", ""][:2]
        parsed.by_name[name].append((columns[1], page_url or None, license_ or None))
    return parsed


@SOURCES.register
class UrlsSource(HttpSource):
    name = "urls"

    @classmethod
    def check(cls, config: PipelineConfig) -> None:
        settings = config.crawl
        path = settings.urls_file
        if path is None or not path.is_file():
            raise UserError(f"crawl.urls_file is not a file: {path}", f"set crawl.urls_file to a TSV: {FORMAT}")
        parsed = read_url_list(path)
        if parsed.malformed:
            shown = "; ".join(f"line {number}: {why}" for number, why in parsed.malformed[:3])
            log.warning("%s: %d malformed line(s) skipped (%s)", path, len(parsed.malformed), shown)
        if not parsed.by_name:
            raise UserError(f"crawl.urls_file {path} holds no usable rows", f"write one row a line: {FORMAT}")

    @cached_property
    def url_list(self) -> UrlList:
        """Read once per worker, on first use."""
        assert self.settings.urls_file is not None
        return read_url_list(self.settings.urls_file)

    def fetch(self, name: str) -> Iterator[Fetched]:
        rows = self.url_list.by_name.get(name, [])
        return self.refetch(rows[: self.settings.max_per_name])
