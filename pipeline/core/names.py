"""Names lists and identity slugs.

A slug is the identity's id everywhere: a path component, a task id, a column value. It must be
safe (no separators, no `..`), bounded in length, recognisable for non-ASCII names, and unique:
names that are already canonical (`angelina_jolie`) are kept; every other name gets its readable
transliteration plus a hash of the exact name, so "John Smith" and "john smith" never collide.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from slugify import slugify

from pipeline.core.errors import UserError

MAX_BASE_LENGTH = 64
CANONICAL = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")


@dataclass(frozen=True)
class Identity:
    slug: str
    name: str


def identity_slug(name: str) -> str:
    if len(name) <= MAX_BASE_LENGTH and CANONICAL.fullmatch(name):
        return name
    base = slugify(name, separator="_", max_length=MAX_BASE_LENGTH, word_boundary=True) or "id"
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:10]
    return f"{base}-{digest}"


def clean_name(line: str) -> str:
    """Drop comments, control characters and surrounding or repeated whitespace."""
    text = line.split("#", 1)[0]
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cc")
    return " ".join(text.split())


def read_names(path: Path) -> list[Identity]:
    """One name a line; blank lines, `#` comments and exact duplicates are skipped, order kept."""
    if not path.is_file():
        raise UserError(f"names file not found: {path}", "pass --names FILE with one name a line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
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
