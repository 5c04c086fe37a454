"""The removals ledger: takedown requests, one JSON file each under `governance/removals/`.

One file per request, written atomically and never rewritten, so two `remove` commands cannot lose
each other's entry (on a local disk or an object store, where nothing appends). File names start
with the UTC time, so listing them gives the ledger in order. The crawl and the shard step consult
it, so no later run re-admits what was removed.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from urllib.parse import urlsplit

import pyarrow as pa

from pipeline.core.errors import UserError
from pipeline.core.rundir import RunDir
from pipeline.core.reasons import TAKEN_DOWN

LEDGER = "governance/removals"
KINDS = ("identity", "image", "url", "domain", "face")
NO_REASON = "not given"


@dataclass(frozen=True)
class Removal:
    id: str
    kind: str  # one of KINDS
    value: str  # identity slug, sha256, URL or host; a face request: its photos' salted embedding hashes, joined
    reason: str  # why, as the requester gave it
    by: str  # who asked or acted
    at: str  # UTC, ISO 8601
    name: str | None = None  # an identity's name as listed
    # Photos removed wherever they appear, so the same bytes found again at another address or under
    # another name stay out: the photo, those found at the URL or host, or the photos verify kept of a
    # removed identity less those hygiene gave to another identity (those that show that person; not
    # every candidate crawled for the name, which holds other people's photos too).
    image_ids: tuple[str, ...] = ()
    identities: tuple[str, ...] = ()  # identities it touched when it was made (for the record)
    # A face request (`remove --face`): the rows where the requester is the target, as `identity/image_id` (the same
    # bytes under another name, where someone else is the target, stay), and the bystander faces it blurs, as
    # `identity/image_id/face` (an index into the row's `faces`); the embeddings themselves: core/faceprints.py.
    rows: tuple[str, ...] = ()
    blurred: tuple[str, ...] = ()

    @property
    def detail(self) -> str:
        return f"taken down by removal {self.id} ({self.kind})"


def new_removal(kind: str, value: str, reason: str | None, by: str, **more: object) -> Removal:
    now = datetime.now(timezone.utc)
    return Removal(f"{now:%Y%m%dT%H%M%S.%fZ}-{uuid.uuid4().hex[:8]}", kind, value, reason or NO_REASON, by,
                   now.isoformat(timespec="seconds"), **more)  # type: ignore[arg-type]


def host_of(url: str | None) -> str | None:
    try:
        host = urlsplit(url or "").hostname
    except ValueError:  # a malformed URL from the web names no host
        return None
    return host.rstrip(".") if host else None


class Ledger:
    """Every removal so far, indexed for the checks a crawl and a shard step make per row."""

    def __init__(self, entries: list[Removal]) -> None:
        self.entries = entries
        by_kind: dict[str, dict[str, Removal]] = {kind: {} for kind in KINDS}
        for entry in entries:
            by_kind[entry.kind].setdefault(entry.value, entry)
            for image_id in entry.image_ids:
                by_kind["image"].setdefault(image_id, entry)
        self.identities, self.images = by_kind["identity"], by_kind["image"]
        self.urls, self.domains = by_kind["url"], by_kind["domain"]
        self.rows: dict[tuple[str, str], Removal] = {}
        self.blurs: dict[tuple[str, str], set[int]] = {}  # (identity, image_id) -> bystander faces to blur
        for entry in entries:
            for key in entry.rows:
                self.rows.setdefault(_row_key(key), entry)
            for key in entry.blurred:
                identity, image_id, face = key.rsplit("/", 2)
                self.blurs.setdefault((identity, image_id), set()).add(int(face))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def find(self, kind: str, value: str) -> Removal | None:
        return next((entry for entry in self.entries if (entry.kind, entry.value) == (kind, value)), None)

    def identity(self, slug: str) -> Removal | None:
        return self.identities.get(slug)

    def match(self, identity: str | None, image_id: str | None, url: str | None, page_url: str | None,
              merged_from: str | None = None) -> Removal | None:
        """The removal that covers this row: its identity (or the one it was merged from), its bytes, its
        URL, or the host of its image or page URL (a domain covers its subdomains)."""
        return (self.identities.get(identity or "") or self.identities.get(merged_from or "")
                or self.images.get(image_id or "") or self.urls.get(url or "") or self._domain(url)
                or self._domain(page_url) or self.rows.get((identity or "", image_id or ""))
                or self.rows.get((merged_from or "", image_id or "")))

    def _domain(self, url: str | None) -> Removal | None:
        host = host_of(url)
        if not host or not self.domains:
            return None
        labels = host.split(".")
        return next((self.domains[d] for d in (".".join(labels[i:]) for i in range(len(labels))) if d in self.domains), None)

    def matches(self, table: pa.Table) -> list[Removal | None]:
        """Per row of a stage part or a shard, the removal covering it (None: none does)."""
        def column(name: str) -> list:
            return table[name].to_pylist() if name in table.schema.names else [None] * table.num_rows

        keys = zip(column("identity"), column("image_id"), column("url"), column("page_url"), column("merged_from"),
                   strict=True)
        return [self.match(*key) for key in keys]

    def admitted(self, table: pa.Table) -> pa.Table:
        """The rows no removal covers."""
        if not self:
            return table
        return table.filter(pa.array([found is None for found in self.matches(table)], pa.bool_()))

    def withhold(self, table: pa.Table) -> tuple[pa.Table, Counter[str]]:
        """The rows no removal covers, and how many it left out (by reason, as the shard step counts)."""
        kept = self.admitted(table)
        left_out = table.num_rows - kept.num_rows
        return kept, Counter({TAKEN_DOWN: left_out} if left_out else {})


def _row_key(key: str) -> tuple[str, str]:
    identity, image_id = key.rsplit("/", 1)
    return identity, image_id


def load_ledger(run: RunDir) -> Ledger:
    entries = []
    for filename in run.list_files(LEDGER, ".json"):
        entries.append(_entry(run, f"{LEDGER}/{filename}"))
    return Ledger(entries)


def _entry(run: RunDir, rel: str) -> Removal:
    """One takedown request; a torn one stops the command: skipping it would re-admit what it removed."""
    try:
        data = run.read_json(rel)
        listed = ("image_ids", "identities", "rows", "blurred")
        return Removal(**{**data, **{key: tuple(data.get(key, ())) for key in listed}})
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise UserError(f"removals ledger entry {run.uri}/{rel} is unreadable ({type(exc).__name__})",
                        "restore it from a backup, or re-run the same `python -m pipeline remove` command") from exc


def record(run: RunDir, removal: Removal) -> None:
    run.write_json(f"{LEDGER}/{removal.id}.json", asdict(removal))


def ledger_summary(ledger: Ledger) -> dict:
    """What status, the report and the dataset card say about the ledger."""
    return {
        "requests": len(ledger.entries),
        "by_kind": dict(Counter(entry.kind for entry in ledger.entries)),
        "by_reason": dict(Counter(entry.reason for entry in ledger.entries).most_common()),
    }


def removals_line(ledger: Ledger, rows: int) -> str:
    """`status`'s line on takedowns; `rows`: the stage rows dropped as taken down."""
    if not ledger:
        return f"removals ledger ({LEDGER}/): no requests"
    counts = ledger_summary(ledger)
    kinds = ", ".join(f"{kind} {n:,}" for kind, n in counts["by_kind"].items())
    reasons = ", ".join(f"{reason} {n:,}" for reason, n in counts["by_reason"].items())
    return (f"removals ledger ({LEDGER}/): {counts['requests']:,} requests ({kinds}); by reason: {reasons}; "
            f"{rows:,} rows taken down")
