"""Names lists, identity slugs, and finding an identity by any of its names.

A slug is the identity's id everywhere: a path component, a task id, a column value. It must be
safe (no separators, no `..`), bounded in length, recognisable for non-ASCII names, and unique:
names that are already canonical (`angelina_jolie`) are kept; every other name gets its readable
transliteration plus a hash of the exact name, so "John Smith" and "john smith" never collide.

Names are cleaned once, where they are read (`clean_name`): Unicode NFC, so a `ë` typed as one code
point and one typed as `e` plus a combining diaeresis are one letter and one person; no comment,
control characters, invisible format characters (a byte-order mark, a zero-width space) at the
ends of words, or repeated spacing. Wherever a name is looked up (opt-out lists, `remove`,
`generate`, `hygiene.merge`) it is compared by `name_key`, which also ignores case; `IdentityIndex`
finds an identity by its slug, its name or its readable slug (the slug without its hash).
"""

from __future__ import annotations

import difflib
import hashlib
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from slugify import slugify

from pipeline.core.errors import UserError
from pipeline.core.rundir import RunDir

MAX_BASE_LENGTH = 64
CANONICAL = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")
RUN_INFO = "run.json"  # written by `run`: the names list it last used, as [slug, name] pairs
ACCEPTED = "pass the name as the names list gives it, its slug, or its readable slug (the identity column)"


@dataclass(frozen=True)
class Identity:
    slug: str
    name: str


def identity_slug(name: str) -> str:
    """Hashes the exact name it is given: names reach it cleaned, so NFC. A name written in NFC (as
    keyboards write nearly every name) keeps the slug it had before names were normalised; only a
    name read in another form (NFD) gets a new one, its NFC twin's."""
    if len(name) <= MAX_BASE_LENGTH and CANONICAL.fullmatch(name):
        return name
    base = slugify(name, separator="_", max_length=MAX_BASE_LENGTH, word_boundary=True) or "id"
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:10]
    return f"{base}-{digest}"


def readable_slug(slug: str) -> str:
    """The slug without its hash (`angelina_jolie-735faef8e6` -> `angelina_jolie`): the base holds no `-`."""
    return slug.split("-", 1)[0]


def clean_name(line: str) -> str:
    """NFC, then no comment, control characters, format characters at word ends or extra whitespace."""
    text = unicodedata.normalize("NFC", line).split("#", 1)[0]
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cc")
    words = (strip_invisible(word) for word in text.split())
    return " ".join(word for word in words if word)


def strip_invisible(text: str) -> str:
    """Without whitespace or invisible format characters (category Cf: a byte-order mark, a zero-width
    space) at its ends; inside a word (a ZWNJ in a Persian name, a ZWJ in an emoji) they are part of it."""
    start, end = 0, len(text)
    while start < end and _invisible(text[start]):
        start += 1
    while end > start and _invisible(text[end - 1]):
        end -= 1
    return text[start:end]


def _invisible(char: str) -> bool:
    return char.isspace() or unicodedata.category(char) == "Cf"


def name_key(name: str) -> str:
    """What two spellings of one name share: the cleaned name, case folded (folding can decompose, so NFC again)."""
    return unicodedata.normalize("NFC", clean_name(name).casefold())


def read_names(path: Path) -> list[Identity]:
    """One name a line; blank lines, `#` comments and duplicates (after cleaning) are skipped, order kept."""
    if not path.is_file():
        raise UserError(f"names file not found: {path}", "pass --names FILE with one name a line")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: a byte-order mark is no name
    except UnicodeDecodeError as exc:
        raise UserError(f"names file {path} is not UTF-8", "re-save it as UTF-8") from exc
    seen: dict[str, Identity] = {}
    for line in lines:
        name = clean_name(line)
        if name and name not in seen:
            seen[name] = Identity(identity_slug(name), name)
    if not seen:
        raise UserError(f"names file {path} holds no names", "write one name a line")
    return list(seen.values())


def run_identities(run: RunDir) -> list[Identity]:
    """The identities of the names list the run last used; none before a first run."""
    if not run.exists(RUN_INFO):
        return []
    return [Identity(slug, name) for slug, name in run.read_json(RUN_INFO)["identities"]]


class IdentityIndex:
    """Identities found by what a user types: the slug, the name (any case, spacing or Unicode form) or the
    readable slug, then by the readable slug of what was typed (`Mark Zuckerberg` finds `mark_zuckerberg`). Tried
    in that order; the first way that finds any decides, so `John Smith` finds that name even beside
    `john smith`, while `john_smith` or `JOHN SMITH` finds both and is refused."""

    def __init__(self, identities: Iterable[Identity]) -> None:
        self.identities = list({identity.slug: identity for identity in identities}.values())
        self.ways: tuple[dict[str, list[Identity]], ...] = tuple(defaultdict(list) for _ in range(4))
        for identity in self.identities:
            keys = (identity.slug, clean_name(identity.name), readable_slug(identity.slug), name_key(identity.name))
            for way, key in zip(self.ways, keys, strict=True):
                way[key].append(identity)

    def resolve(self, given: str, what: str = "identity") -> Identity:
        """The one identity `given` names; none or several is a UserError naming the close candidates."""
        cleaned = clean_name(given)
        slug, name, readable, key = self.ways
        tries = ((slug, given.strip()), (name, cleaned), (readable, cleaned), (key, name_key(given)),
                 (readable, readable_slug(identity_slug(cleaned))))
        for way, key in tries:
            found = way.get(key, [])
            if len(found) == 1:
                return found[0]
            if found:
                listed = ", ".join(f"{identity.name!r} ({identity.slug})" for identity in found)
                raise UserError(f"{what} {given!r} names {len(found)} identities: {listed}", "pass one of their slugs")
        count = len(self.identities)
        raise UserError(f"no {what} {given!r} among the run's {count:,} identities{self._close(cleaned)}", ACCEPTED)

    def _close(self, given: str) -> str:
        by_text = {identity.name: identity for identity in self.identities} | {i.slug: i for i in self.identities}
        close = difflib.get_close_matches(given, list(by_text), n=3, cutoff=0.6)
        shown = list(dict.fromkeys(f"{by_text[text].name!r} ({by_text[text].slug})" for text in close))
        return f"; close: {', '.join(shown)}" if shown else ""
