"""Opt-out lists (`governance.optout`): people, sites and images that must not be in the dataset.

A UTF-8 text file (a byte-order mark is ignored), one entry a line as `kind:value`; blank lines and
lines starting with `#` are skipped (no comments after an entry: URLs may hold `#`); whitespace and
invisible format characters (a zero-width space) around an entry or its parts are ignored:

    name:Jane Doe                      a person as written in the names list (case, spacing and Unicode form ignored)
    domain:example.org                 a host and all its subdomains, as the image URL's or the page URL's host
    url:https://example.org/jane/      a URL prefix of the image or page URL (http and https alike, host case ignored)
    url:local:Jane Doe/                a prefix of a local crawl's file (its path under crawl.local_root)
    sha256:<64 hex digits>             the exact image bytes (a row's `image_id`)
    phash:<16 hex digits>              a perceptual hash (a row's `phash`: imagehash.phash of the upright image);
                                       matches copies within `governance.optout_phash_bits` bits (re-encoded, resized)
    face:photos/jane.jpg               a person's face: a photo of them (its largest face), or a `.npy` of unit
                                       embeddings of the run's face backend (as governance/faceprints/ keeps them);
                                       a relative path is read from the opt-out file's folder

A malformed line or a missing file is an error naming the file and line: an opt-out is never
silently ignored. The crawl checks names before any request, domains and URLs before a download
and hashes on the downloaded bytes; the shard step checks every entry again on the rows it
writes, so entries added after the crawl still keep those rows out of the dataset. Faces are matched
by the shard step against the faces filter stored (pipeline/dataset/face_optout.py): a cheap decision
on stored embeddings, so a new `face:` entry never runs the face model over the run again.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline.core.errors import UserError
from pipeline.core.names import name_key, strip_invisible
from pipeline.core.reasons import OPTED_OUT_IDENTITY, OPTED_OUT_IMAGE, OPTED_OUT_URL

FORMAT = "one `kind:value` a line, kind one of name, domain, url, sha256, phash, face"
SHA256 = re.compile(r"[0-9a-f]{64}")
PHASH = re.compile(r"[0-9a-f]{16}")  # imagehash's default 8x8 phash, as the filter stage stores it
HOST = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
HTTP_URL = re.compile(r"(?i)https?://[^/?#]")
LOCAL = "local:"  # the `local` source's URLs: a path under crawl.local_root


@dataclass(frozen=True)
class OptOutList:
    names: frozenset[str] = frozenset()  # `name_key` form
    domains: frozenset[str] = frozenset()  # lower-case ASCII (IDNA) host names
    url_prefixes: tuple[str, ...] = ()  # `url_key` form
    sha256: frozenset[str] = frozenset()
    phashes: tuple[int, ...] = ()
    phash_bits: int = 8
    faces: tuple[Path, ...] = ()  # photos or .npy embeddings of people's faces
    digest: str = field(default="", compare=False)  # of the entries: a changed list re-writes the shards

    @classmethod
    def read(cls, paths: list[Path], phash_bits: int) -> OptOutList:
        entries: dict[str, set[Any]] = {kind: set() for kind in PARSERS}
        for path in paths:
            for number, line in enumerate(map(strip_invisible, _lines(path)), 1):
                if line and not line.startswith("#"):
                    kind, value = _entry(path, number, line)
                    entries[kind].add(_face_file(path, number, value) if kind == "face" else value)
        faces = sorted(entries["face"])
        entries["face"] = {hashlib.sha256(face.read_bytes()).hexdigest() for face in faces}  # a replaced photo counts
        text = repr(sorted((kind, sorted(values)) for kind, values in entries.items())) + f"/{phash_bits}"
        return cls(
            names=frozenset(entries["name"]),
            domains=frozenset(entries["domain"]),
            url_prefixes=tuple(sorted(entries["url"])),
            sha256=frozenset(entries["sha256"]),
            phashes=tuple(sorted(entries["phash"])),
            phash_bits=phash_bits,
            faces=tuple(faces),
            digest=hashlib.sha256(text.encode()).hexdigest()[:16],
        )

    def __bool__(self) -> bool:
        return bool(self.names or self.domains or self.url_prefixes or self.sha256 or self.phashes or self.faces)

    @property
    def has_urls(self) -> bool:
        return bool(self.domains or self.url_prefixes)

    @property
    def has_images(self) -> bool:
        return bool(self.sha256 or self.phashes)

    def name_listed(self, name: str | None) -> bool:
        return bool(name) and name_key(name or "") in self.names

    def url_listed(self, *urls: str | None) -> str | None:
        """The first of `urls` (image, page) a domain or URL-prefix entry covers, or None."""
        for url in filter(None, urls):
            host = _ascii_host(urlsplit(url).hostname or "")
            if host and any(host == domain or host.endswith("." + domain) for domain in self.domains):
                return url
            if url_key(url).startswith(self.url_prefixes):
                return url
        return None

    def image_listed(self, image_id: str | None, phash: str | None) -> str | None:
        """Why the image is listed ("sha256", "phash within N bits"), or None."""
        if image_id and image_id in self.sha256:
            return "sha256"
        if phash and self.phashes:
            value = int(phash, 16)
            nearest = min((value ^ listed).bit_count() for listed in self.phashes)
            if nearest <= self.phash_bits:
                return f"phash within {nearest} bits"
        return None

    def match(self, row: dict[str, Any]) -> tuple[str, str] | None:
        """(reason, detail) when a row (name, url, page_url, image_id, phash) is opted out, or None."""
        if self.name_listed(row.get("name")):
            return OPTED_OUT_IDENTITY, f"{row.get('name')!r} is on the opt-out list"
        url = self.url_listed(row.get("url"), row.get("page_url"))
        if url:
            return OPTED_OUT_URL, f"{url} is covered by the opt-out list"
        why = self.image_listed(row.get("image_id"), row.get("phash"))
        if why:
            return OPTED_OUT_IMAGE, f"the image is on the opt-out list ({why})"
        return None


def url_key(url: str) -> str:
    """host[:port]/path?query of an http(s) URL (scheme dropped, host lower-cased); other URLs as they are."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return url
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return url
    return f"{_ascii_host(parts.hostname)}{port}{parts.path or '/'}{'?' + parts.query if parts.query else ''}"


def _ascii_host(host: str) -> str:
    host = host.strip().rstrip(".").lower()
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


def _domain(value: str) -> str | None:
    host = _ascii_host(value)
    return host if HOST.fullmatch(host) else None


def _url(value: str) -> str | None:
    if value.startswith(LOCAL) and len(value) > len(LOCAL):  # a local crawl's `url` column
        return value
    key = url_key(value) if HTTP_URL.match(value) else value
    return key if key != value else None  # url_key leaves what it cannot parse as it is


PARSERS = {  # kind -> value normaliser (None: malformed)
    "name": lambda value: name_key(value) or None,
    "domain": _domain,
    "url": _url,
    "sha256": lambda value: value.lower() if SHA256.fullmatch(value.lower()) else None,
    "phash": lambda value: int(value, 16) if PHASH.fullmatch(value.lower()) else None,
    "face": lambda value: value or None,  # a path, checked by `_face_file`
}


def _face_file(listing: Path, number: int, value: str) -> Path:
    face = (listing.parent / value).resolve()
    if not face.is_file():
        raise UserError(f"opt-out file {listing} line {number}: face file {face} does not exist",
                        "give a photo of the person or a .npy of embeddings, relative to the opt-out file's folder")
    return face


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(
            f"cannot read opt-out file {path}: {exc}", "fix governance.optout: UTF-8 files, " + FORMAT
        ) from exc


def _entry(path: Path, number: int, line: str) -> tuple[str, Any]:
    kind, colon, value = line.partition(":")
    kind = strip_invisible(kind).lower()
    parse = PARSERS.get(kind)
    parsed = parse(strip_invisible(value)) if colon and parse else None
    if parsed is None:
        raise UserError(f"opt-out file {path} line {number} is not a valid entry: {line[:80]!r}", FORMAT)
    return kind, parsed
