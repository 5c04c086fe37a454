"""The `local` source: `crawl.local_root/<name>/` holds one person's images (a team's own crawl).

A name finds its folders in three steps; the first step that finds any decides:
1. a folder named exactly as the name, or as its slug (the hostile-name-safe form);
2. a folder whose key matches the name's: Unicode NFC, case folded, `-`, `_`, `.` and spaces alike
   (`Jack-Dorsey`, `jack_dorsey`, `JACK DORSEY`);
3. the same with accents folded (`Zoe` for `Zoë`: only when no folder keeps the accent), or the
   readable slug's transliteration (`zhou_jie_lun` for 周杰伦).
Several folders found in one step are all taken (one person's photos split over two folders; bytes
found twice are dropped as `duplicate`), and the driver's check warns about it. Images are taken
from the folders and their sub-folders, a folder's files before its sub-folders', each in sorted
order; hidden files and folders are skipped, and no symlink is followed out of the root. The
driver's check also warns, before the crawl, about names without a folder (their rows say
`no_source_folder`) and folders no name takes.

A row's `url` is `local:<path relative to crawl.local_root>`, so the dataset does not carry the
builder's folder layout; the root is in the run's config only. Rows of runs before that hold
`file://` URLs; a retry reads both.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import UserError
from pipeline.core.names import identity_slug, name_key, read_names, readable_slug
from pipeline.core.optout import LOCAL
from pipeline.core.reasons import BAD_FILE_NAME, BAD_URL, NO_SOURCE_FOLDER, READ_ERROR
from pipeline.core.schema import DROPPED, FAILED
from stages.sources.base import SOURCES, Fetched, Source
from stages.sources.consent import screen

log = logging.getLogger(__name__)
SEPARATORS = str.maketrans("-_.", "   ")
SHOWN = 10  # names or folders a warning lists


def folder_key(name: str) -> str:
    """A folder's or a name's key: case, spacing, `-`, `_` and `.` aside."""
    return " ".join(name_key(name).translate(SEPARATORS).split())


def folded_key(name: str) -> str:
    """The key without accents (combining marks dropped after decomposing)."""
    decomposed = unicodedata.normalize("NFD", folder_key(name))
    return unicodedata.normalize("NFC", "".join(ch for ch in decomposed if not unicodedata.combining(ch)))


def local_url(path: Path, root: Path) -> str:
    return LOCAL + path.absolute().relative_to(root.absolute()).as_posix()


def local_file(url: str, root: Path) -> Path | None:
    """The file a `local:` URL (or an older row's `file://` URL) names, if it lies inside the root."""
    if url.startswith(LOCAL):
        path = root / url[len(LOCAL):]
    elif url.startswith("file://"):
        path = Path(unquote(urlsplit(url).path))
    else:
        return None
    return path if _inside(path, root) else None


def url_forms(url: str, root: Path | None) -> list[str]:
    """A file's URL as this source writes it (`local:`) and as runs before it did (`file://`), then as given;
    any other URL alone."""
    path = local_file(url, root) if root is not None else None
    if path is None or root is None:
        return [url]
    return list(dict.fromkeys([local_url(path, root), path.absolute().as_uri(), url]))


def _inside(path: Path, root: Path) -> bool:
    """Whether the path, every link on the way followed, stays inside the root."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, ValueError, RuntimeError):  # a loop of links, a name no file system takes
        return False


class Folders:
    """The root's top folders, indexed by the three steps' keys."""

    def __init__(self, root: Path) -> None:
        self.root = root
        with os.scandir(root) as entries:
            self.names = sorted(entry.name for entry in entries if not entry.name.startswith(".")
                                and entry.is_dir() and _inside(root / entry.name, root))
        self.exact = set(self.names)
        self.keyed: dict[str, list[str]] = defaultdict(list)
        self.folded: dict[str, list[str]] = defaultdict(list)
        for folder in self.names:
            self.keyed[folder_key(folder)].append(folder)
            self.folded[folded_key(folder)].append(folder)

    def of(self, name: str) -> list[str]:
        """The folders a name takes (sorted), by the first step that finds any."""
        slug = identity_slug(name)
        exact = [folder for folder in dict.fromkeys([name, slug]) if folder in self.exact]
        folded = {*self.folded.get(folded_key(name), []), *self.keyed.get(folder_key(readable_slug(slug)), [])}
        return exact or sorted(self.keyed.get(folder_key(name), [])) or sorted(folded)

    def images(self, folder: str) -> Iterator[Path]:
        """Files under a folder, then its sub-folders', each sorted; hidden ones and links out of the root skipped."""
        for top, dirs, files in os.walk(self.root / folder):  # links to folders are not walked into
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for file in sorted(f for f in files if not f.startswith(".")):
                path = Path(top) / file
                if path.is_file() and _inside(path, self.root):
                    yield path

    def census(self, names: list[str]) -> list[str]:
        """Warnings: names without a folder, names with several, folders no name takes."""
        taken = {name: self.of(name) for name in names}
        used = {folder for folders in taken.values() for folder in folders}
        found = [
            ("names have no folder", [repr(name) for name, folders in taken.items() if not folders]),
            ("names take several folders",
             [f"{name!r} ({', '.join(map(repr, f))})" for name, f in taken.items() if len(f) > 1]),
            ("folders match no name", [repr(folder) for folder in self.names if folder not in used]),
        ]
        return [f"{len(items):,} {what} in {self.root}: {_listed(items)}" for what, items in found if items]


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - SHOWN:,} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


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
        for warning in Folders(settings.local_root).census([i.name for i in read_names(config.run.names)]):
            log.warning("%s", warning)

    @functools.cached_property
    def folders(self) -> Folders:
        """Listed once per worker, on first use."""
        assert self.settings.local_root is not None
        return Folders(self.settings.local_root)

    def fetch(self, name: str) -> Iterator[Fetched]:
        folders = self.folders.of(name)
        if not folders:
            yield Fetched(url="", status=DROPPED, reason=NO_SOURCE_FOLDER, detail=f"no folder for {name!r}")
            return
        files = (path for folder in folders for path in self.folders.images(folder))
        for path in itertools.islice(files, self.settings.max_per_name):
            url = local_url(path, self.folders.root)
            try:
                url.encode("utf-8")  # a name of bytes that are not UTF-8 (surrogate escapes) fits no column
            except UnicodeEncodeError:
                shown = url.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                yield Fetched(url=shown, status=DROPPED, reason=BAD_FILE_NAME, detail="the file name is not UTF-8")
                continue
            yield from self.refetch([(url, None, None)])

    def refetch(self, urls: Iterable[tuple[str, str | None, str | None]]) -> Iterator[Fetched]:
        root = self.settings.local_root
        assert root is not None
        for url, page_url, license_ in urls:
            evidence: dict[str, str] = {}  # a file has no robots.txt or headers: licence and opt-out only
            refusal = screen(url, page_url, license_, self.settings.allowed_licenses, self.optout, evidence)
            if refusal:
                yield Fetched(url, None, page_url, license_, None, DROPPED, *refusal, consent=evidence)
                continue
            path = local_file(url, root)
            if path is None:
                yield Fetched(url=url, status=DROPPED, reason=BAD_URL, detail="not a file inside crawl.local_root")
                continue
            try:
                data = path.read_bytes()
            except OSError as exc:  # a flaky mount is worth a retry
                yield Fetched(url=url, status=FAILED, reason=READ_ERROR, detail=str(exc), consent=evidence)
                continue
            yield Fetched(url=url, data=data, page_url=page_url, license=license_, consent=evidence)
