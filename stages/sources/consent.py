"""Consent signals a site sets for its content, decided without I/O (the downloader fetches, this judges).

- robots.txt (RFC 9309), parsed by protego, matched with our product token and `*`. A 4xx answer
  (or more than five redirects) means no rules. A 5xx, a 429 or no answer at all means "unreachable",
  and RFC 9309 2.3.1.4 says to assume complete disallow: the image is not requested and its row
  fails as `robots_unreachable` (or with the transport's own reason when no answer came: a timeout,
  a refused connection, a private address), so `--retry-failed` asks again later. A file longer than
  the downloader keeps (RFC 9309 2.5 lets a crawler stop at 500 KiB) is parsed up to its last whole line.
- TDMRep (W3C community group report): `/.well-known/tdmrep.json` rules whose `location` covers the
  path (the longest pattern wins, ties go to the first; `*` and a final `$` as in robots.txt, matched
  in linear time), and the `tdm-reservation` response header: a `1` in any of its values reserves. A
  file that cannot be fetched means no rules, as the report says; one that is not the JSON the report
  defines (broken, nested too deep to parse, longer than the downloader keeps) is `unreadable`.
- X-Robots-Tag directives, unscoped or scoped to our token (`otherbot: noai` binds only otherbot).

Every check leaves an outcome in the row's evidence (`consent` column): pass, refused, absent (no
signal), unreadable (a signal we could not parse: treated as absent), unreachable, off (disabled).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Generic, TypeVar
from urllib.parse import urlsplit

from protego import Protego

from pipeline.core.optout import OPTED_OUT_URL, OptOutList
from pipeline.core.reasons import (
    BAD_URL,
    CONNECTION_ERROR,
    LICENSE_NOT_ALLOWED,
    PRIVATE_ADDRESS,
    ROBOTS_DISALLOWED,
    ROBOTS_NOAI,
    ROBOTS_UNREACHABLE,
    TDM_RESERVED,
    TIMEOUT,
    TLS_ERROR,
    TOO_MANY_REDIRECTS,
)

PASS, REFUSED, ABSENT, UNREADABLE, UNREACHABLE, OFF = "pass", "refused", "absent", "unreadable", "unreachable", "off"
# X-Robots-Tag directives that take a value after a colon (Google's list): never a user-agent scope.
VALUED_DIRECTIVES = {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"}
BOT_NAME = re.compile(r"[a-z0-9_.-]+")  # what may scope X-Robots-Tag directives (not a date's "25-jun-10 15")
# robots.txt got no answer at all: the image request would meet the same, so the row gets that reason.
NO_ANSWER = {PRIVATE_ADDRESS, TLS_ERROR, BAD_URL, CONNECTION_ERROR, TIMEOUT}
UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

Evidence = dict[str, str]  # check -> outcome
Refusal = tuple[str, str]  # reason, detail
T = TypeVar("T")


def product_token(user_agent: str) -> str:
    """The crawler's name in robots.txt terms (RFC 9309 2.2.1): the User-Agent's first product, letters, - and _."""
    match = re.match(r"[A-Za-z_-]+", user_agent.strip())
    return match.group(0).lower() if match else "*"


def origin(url: str) -> str:
    """scheme://host[:port]: robots.txt and tdmrep.json are per origin."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme.lower()}://{host}{f':{parts.port}' if parts.port else ''}"


def path_and_query(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


# -- pre-request: licence and opt-out --------------------------------------------------------------
def license_allowed(license_: str | None, allowed: Collection[str]) -> bool:
    """Case-insensitive shell patterns: `CC-BY-4.0` only itself, `CC-BY-*` every CC-BY variant."""
    if not license_:
        return False
    return any(fnmatchcase(license_.lower(), pattern.lower()) for pattern in allowed)


def screen(
    url: str,
    page_url: str | None,
    license_: str | None,
    allowed: Collection[str],
    optout: OptOutList,
    evidence: Evidence,
) -> Refusal | None:
    """The checks that need no request: the licence allow-list, then the opt-out list's domains and URLs."""
    if allowed:
        ok = license_allowed(license_, allowed)
        evidence["license"] = PASS if ok else REFUSED
        if not ok:
            return LICENSE_NOT_ALLOWED, f"licence {license_!r} is not in crawl.allowed_licenses"
    else:
        evidence["license"] = OFF
    listed = optout.url_listed(url, page_url) if optout.has_urls else None
    evidence["optout_url"] = (REFUSED if listed else PASS) if optout.has_urls else OFF
    return (OPTED_OUT_URL, f"{listed} is covered by the opt-out list") if listed else None


# -- files fetched once per origin -------------------------------------------------------------------
@dataclass(frozen=True)
class SiteFile:
    """What fetching robots.txt or tdmrep.json gave: a body, or the reason code of the failure."""

    url: str
    body: bytes | None = None
    error: str | None = None  # a download reason code: http_404, http_503, timeout, ...
    detail: str = ""
    transient: bool = False
    truncated: bool = False  # the body is the file's first bytes only: it was longer than the downloader keeps


@dataclass(frozen=True)
class RobotsTxt:
    outcome: str  # PASS (rules parsed), ABSENT (allow all) or UNREACHABLE (disallow all)
    rules: Protego | None = None
    reason: str = ROBOTS_UNREACHABLE  # when unreachable: ours, or the transport's when no answer came
    detail: str = ""
    transient: bool = True  # when unreachable: worth another try later (`--retry-failed`)
    text: str = ""  # the rules as parsed: stages/sources/aipref.py reads its Content-Usage rules from it

    @classmethod
    def from_file(cls, file: SiteFile) -> RobotsTxt:
        if file.body is not None:  # RFC 9309 2.3: UTF-8; protego skips the lines it cannot read
            text = file.body.decode("utf-8", "replace")
            if file.truncated:  # a cut rule could allow more than the whole one: "Allow: /a" of "Allow: /a/b"
                end = max(text.rfind("\n"), text.rfind("\r"))  # CR alone ends a line too (RFC 9309 2.2)
                if end < 0:  # not one whole rule within the cap: what it says is unknown, so nothing is allowed
                    return cls(UNREACHABLE, detail=f"{file.url}: no whole line in its first {len(file.body)} bytes",
                               transient=False)
                text = text[: end + 1]
            return cls(PASS, Protego.parse(text), text=text)
        if file.error == TOO_MANY_REDIRECTS or _is_4xx(file.error):  # RFC 9309 2.3.1.2, 2.3.1.3
            return cls(ABSENT, detail=f"{file.url}: {file.error}")
        if file.error in NO_ANSWER:
            return cls(
                UNREACHABLE, reason=file.error or "", detail=f"{file.url}: {file.detail}", transient=file.transient
            )
        detail = f"{file.url} unreachable ({file.error}: {file.detail}); RFC 9309 2.3.1.4: assume complete disallow"
        return cls(UNREACHABLE, detail=detail)

    def refusal(self, url: str, token: str, evidence: Evidence) -> Refusal | None:
        if self.outcome == UNREACHABLE:
            evidence["robots_txt"] = UNREACHABLE
            return self.reason, self.detail
        allowed = self.rules is None or self.rules.can_fetch(url, token)
        evidence["robots_txt"] = self.outcome if allowed else REFUSED
        if allowed:
            return None
        return ROBOTS_DISALLOWED, f"robots.txt of {origin(url)} disallows {path_and_query(url)} for {token}"


def _is_4xx(reason: str | None) -> bool:
    return reason is not None and reason != "http_429" and re.fullmatch(r"http_4\d\d", reason) is not None


@dataclass(frozen=True)
class PathPattern:
    """robots.txt pattern syntax (RFC 9309 2.2.3): a prefix, `*` any characters, a final `$` the end of the path.

    Matched piece by piece, each `*`-free piece at its first place after the last: linear in the path,
    where a regex of the same pattern backtracks for minutes (`/*a*a*...*b` against a path of `a`s).
    """

    pieces: tuple[str, ...]  # the literal text between `*`s, escapes of unreserved characters decoded
    anchored: bool  # a final `$`

    @classmethod
    def parse(cls, pattern: str) -> PathPattern:
        anchored = pattern.endswith("$")
        return cls(tuple(decode_unreserved(pattern[:-1] if anchored else pattern).split("*")), anchored)

    def matches(self, path: str) -> bool:
        """`path` with its escapes of unreserved characters decoded, as the pieces are."""
        first, *rest = self.pieces
        if not path.startswith(first):
            return False
        if not rest:
            return path == first if self.anchored else True
        at = len(first)
        for piece in rest[:-1]:  # the earliest place of each piece leaves the most room for the next
            at = path.find(piece, at)
            if at < 0:
                return False
            at += len(piece)
        last = rest[-1]
        if self.anchored:
            return len(path) - len(last) >= at and path.endswith(last)
        return path.find(last, at) >= 0


@dataclass(frozen=True)
class TdmRule:
    location: str
    reserved: bool
    policy: str | None
    pattern: PathPattern


@dataclass(frozen=True)
class TdmRules:
    outcome: str  # PASS (rules read), ABSENT (no file) or UNREADABLE (not the JSON the report defines)
    rules: tuple[TdmRule, ...] = ()
    detail: str = ""

    @classmethod
    def from_file(cls, file: SiteFile) -> TdmRules:
        if file.body is None:
            return cls(ABSENT, detail=f"{file.url}: {file.error}")
        if file.truncated:
            return cls(UNREADABLE, detail=f"{file.url} is longer than the {len(file.body)} bytes kept")
        try:
            entries = json.loads(file.body)
        except (ValueError, RecursionError) as exc:  # RecursionError: arrays or objects nested too deep
            return cls(UNREADABLE, detail=f"{file.url}: {type(exc).__name__}: {str(exc)[:200]}")
        rules = tuple(_tdm_rules(entries if isinstance(entries, list) else []))
        return cls(PASS, rules) if rules else cls(UNREADABLE, detail=f"{file.url} holds no valid rule")

    def refusal(self, url: str, evidence: Evidence) -> Refusal | None:
        """The most specific rule covering the URL's path (longest location, first on ties) decides."""
        path = decode_unreserved(path_and_query(url))
        covering = [rule for rule in self.rules if rule.pattern.matches(path)]
        rule = max(covering, key=lambda r: len(r.location)) if covering else None  # max keeps the first of equals
        evidence["tdmrep_json"] = REFUSED if rule and rule.reserved else self.outcome
        if not (rule and rule.reserved):
            return None
        policy = f" (policy: {rule.policy})" if rule.policy else ""
        return TDM_RESERVED, f"tdmrep.json of {origin(url)} reserves TDM rights on {rule.location}{policy}"


def _tdm_rules(entries: Iterable[object]) -> Iterable[TdmRule]:
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("location"), str):
            continue
        reservation = str(entry.get("tdm-reservation", "")).strip()
        if reservation in ("0", "1"):  # other values are protocol errors: no declaration
            location, policy = entry["location"], entry.get("tdm-policy")
            policy = policy if isinstance(policy, str) else None
            yield TdmRule(location, reservation == "1", policy, PathPattern.parse(location))


def decode_unreserved(text: str) -> str:
    """Percent-escapes of unreserved characters decoded (the report's matching rule), others upper-cased."""

    def decode(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in UNRESERVED else match.group(0).upper()

    return re.sub(r"%([0-9A-Fa-f]{2})", decode, text)


# -- response headers ----------------------------------------------------------------------------------
def x_robots_directives(values: Iterable[str], token: str) -> set[str]:
    """The X-Robots-Tag directives that bind `token`: unscoped ones, and those after `token:` in a header."""
    binding: set[str] = set()
    for value in values:
        scope: str | None = None  # each header starts unscoped; `bot:` scopes what follows in it
        for part in value.lower().split(","):
            head, colon, tail = part.partition(":")
            head = head.strip()
            if colon and head not in VALUED_DIRECTIVES and BOT_NAME.fullmatch(head):
                scope, part = head, tail
            if scope in (None, token):
                binding.add(part.strip())
    if "none" in binding:  # `none` is noindex + nofollow
        binding |= {"noindex", "nofollow"}
    return binding


def x_robots_refusal(values: list[str], token: str, refusing: Collection[str], evidence: Evidence) -> Refusal | None:
    if not refusing:
        evidence["x_robots_tag"] = OFF
        return None
    found = sorted(x_robots_directives(values, token) & {word.lower() for word in refusing})
    evidence["x_robots_tag"] = REFUSED if found else PASS if values else ABSENT
    return (ROBOTS_NOAI, f"X-Robots-Tag: {', '.join(values)} ({', '.join(found)})") if found else None


def tdm_header_refusal(values: list[str], evidence: Evidence) -> Refusal | None:
    """`tdm-reservation: 1` reserves; 0 does not; anything else is a protocol error (no declaration).

    The header repeated (or its values joined by commas, the same in HTTP) reserves if any value is 1:
    a site that says both has said 1.
    """
    found = [part.strip() for value in values for part in value.split(",")]
    reserved = "1" in found
    evidence["tdm_header"] = REFUSED if reserved else PASS if values else ABSENT
    return (TDM_RESERVED, "the response says tdm-reservation: 1") if reserved else None


# -- per-origin cache ----------------------------------------------------------------------------------
@dataclass
class _Slot(Generic[T]):
    lock: threading.Lock = field(default_factory=threading.Lock)
    value: T | None = None
    loaded: bool = False


class OncePerKey(Generic[T]):
    """`load(key)` run once per key however many threads ask at once; the result kept for the object's life."""

    def __init__(self, load: Callable[[str], T]) -> None:
        self._load = load
        self._slots: dict[str, _Slot[T]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> T:
        with self._lock:
            slot = self._slots.setdefault(key, _Slot())
        with slot.lock:  # other threads wanting this key wait here; other keys go on
            if not slot.loaded:
                slot.value, slot.loaded = self._load(key), True
        return slot.value  # type: ignore[return-value]
