"""The `local` source: `crawl.local_root/<name>/` holds one person's images (a team's own crawl)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from slugify import slugify

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import UserError
from pipeline.core.names import MAX_BASE_LENGTH, identity_slug
from pipeline.core.schema import DROPPED, FAILED
from stages.sources.base import SOURCES, Fetched, Source
from stages.sources.consent import screen


@SOURCES.register
class LocalSource(Source):
    name = "local"

    @classmethod
    def check(cls, config: PipelineConfig) -> None:
        settings = config.crawl
        if settings.local_root is None or not settings.local_root.is_dir():
            raise UserError(
                f"crawl.local_root is not a folder: {settings.local_root}",
                "set crawl.local_root to a folder holding one sub-folder of images per name",
            )

    def folder_for(self, name: str) -> Path | None:
        """The exact name, its slug, or its readable slug base (`Angelina Jolie` -> angelina_jolie)."""
        root = self.settings.local_root
        assert root is not None
        base = slugify(name, separator="_", max_length=MAX_BASE_LENGTH, word_boundary=True)
        for candidate in (name, identity_slug(name), base):
            if candidate and candidate not in (".", "..") and "/" not in candidate and _is_folder(root / candidate):
                return root / candidate
        return None

    def fetch(self, name: str) -> Iterator[Fetched]:
        folder = self.folder_for(name)
        if folder is None:
            yield Fetched(url="", status=DROPPED, reason="no_source_folder", detail=f"no folder for {name!r}")
            return
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        yield from self.refetch((path.absolute().as_uri(), None, None) for path in files[: self.settings.max_per_name])

    def refetch(self, urls: Iterable[tuple[str, str | None, str | None]]) -> Iterator[Fetched]:
        for url, page_url, license_ in urls:
            evidence: dict[str, str] = {}  # a file has no robots.txt or headers: licence and opt-out only
            refusal = screen(url, page_url, license_, self.settings.allowed_licenses, self.optout, evidence)
            if refusal:
                yield Fetched(url, None, page_url, license_, None, DROPPED, *refusal, consent=evidence)
                continue
            try:
                data = Path(unquote(urlparse(url).path)).read_bytes()
            except OSError as exc:  # a flaky mount is worth a retry
                yield Fetched(url=url, status=FAILED, reason="read_error", detail=str(exc), consent=evidence)
                continue
            yield Fetched(url=url, data=data, page_url=page_url, license=license_, consent=evidence)


def _is_folder(path: Path) -> bool:
    """A name can be no valid file name at all (too long, odd bytes): then it names no folder."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False
