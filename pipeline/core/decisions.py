"""A curator's decisions: an append-only log in the run directory, `curation/decisions.jsonl`.

API (the `decide` command and the review app write through it; verify, hygiene and caption read it):

- `Decision(identity, kind, image=None, value=None, note="", by=<OS user>, time=<now, UTC ISO>)`: one row.
  `identity` is the identity's slug; `image` the photo's sha256 (the rows' `image_id`), None for decisions
  about the whole identity (merge, class_word, confirm); `kind` one of KINDS; `value` by kind:
  REJECT, ACCEPT: None. TARGET_FACE: the face's index in the image's `faces` (int). SPLIT: the slug of
  the identity of the run the photo joins, or None (left out). MERGE: the identity (slug) to merge into.
  CLASS_WORD: the word. UNDO: the row id (int) of the row it undoes. CONFIRM: what the curator confirms the
  pipeline got right about the identity (a review queue item: the competing cluster, "different from <slug>");
  it changes no row.
- `append(run, decision) -> int`: validates it, appends it as one JSON line, returns its row id.
- `read_log(run) -> Log`: every row with its id (`Log.rows`: list of `Logged(row, decision)`), and
  `Log.torn`: ids of lines that could not be read (a writer killed mid-line); they are skipped, never fatal.
- `current(run) -> list[Logged]`: the decisions in force: the log replayed without the rows an `undo` names
  (as if never written), the last row per key winning (`Decision.key`: reject, accept and split of one photo
  share a key). `by_identity(rows)` groups them; `digest(rows)` fingerprints them.

A row's id is its line number (1-based): lines are only ever appended, so ids never change. Decisions are
keyed by content (identity slug, image sha256), so they survive re-crawls, new thresholds and backends.
"""

from __future__ import annotations

import getpass
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from pipeline.core.errors import UserError
from pipeline.core.rundir import RunDir

LOG = "curation/decisions.jsonl"

REJECT, ACCEPT, TARGET_FACE, SPLIT, MERGE, CLASS_WORD, CONFIRM, UNDO = (
    "reject", "accept", "target_face", "split", "merge", "class_word", "confirm", "undo")
KINDS = (REJECT, ACCEPT, TARGET_FACE, SPLIT, MERGE, CLASS_WORD, CONFIRM, UNDO)
IMAGE_KINDS = (REJECT, ACCEPT, TARGET_FACE, SPLIT)  # these name a photo; the others the identity
# The slot a decision fills: a later row for the same slot replaces it (accept and reject answer one question).
SLOT = {REJECT: "verdict", ACCEPT: "verdict", SPLIT: "verdict", TARGET_FACE: "target_face", MERGE: "merge",
        CLASS_WORD: "class_word"}


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no LOGNAME/USER and no passwd entry (some containers)
        return "unknown"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Decision:
    identity: str
    kind: str
    image: str | None = None
    value: str | int | None = None
    note: str = ""
    by: str = field(default_factory=os_user)
    time: str = field(default_factory=now)

    @property
    def key(self) -> tuple[str, str | None, str]:
        slot = f"{CONFIRM} {self.value}" if self.kind == CONFIRM else SLOT.get(self.kind, self.kind)  # one per item
        return self.identity, self.image, slot

    def check(self) -> None:
        """A decision that cannot be applied is a user mistake, refused before it is written."""
        if self.kind not in KINDS:
            raise UserError(f"unknown decision {self.kind!r}", f"use one of: {', '.join(KINDS)}")
        if (self.image is None) == (self.kind in IMAGE_KINDS):
            raise UserError(f"a {self.kind} decision {'needs' if self.kind in IMAGE_KINDS else 'takes no'} --image")
        if self.image is not None and not _is_sha256(self.image):
            raise UserError(f"--image {self.image!r} is not a sha256", "copy the image_id from the report or the shards")
        if self.kind == TARGET_FACE and not (isinstance(self.value, int) and self.value >= 0):
            raise UserError("a target_face decision needs a face index (0, 1, ...)")
        if self.kind == UNDO and not (isinstance(self.value, int) and self.value >= 1):
            raise UserError("an undo decision needs a row id (1, 2, ...)")
        if self.kind in (MERGE, CLASS_WORD, CONFIRM) and not (isinstance(self.value, str) and self.value.strip()):
            raise UserError(f"a {self.kind} decision needs a value")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Decision:
        decision = cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})
        if not isinstance(decision.identity, str) or decision.kind not in KINDS:
            raise ValueError("not a decision")
        return decision


@dataclass(frozen=True)
class Logged:
    row: int  # the line number in the log, 1-based
    decision: Decision


@dataclass
class Log:
    rows: list[Logged]
    torn: list[int]  # lines that are not a decision (a writer killed mid-line): skipped and reported


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(ch in "0123456789abcdef" for ch in text)


def append(run: RunDir, decision: Decision) -> int:
    """Write one decision at the end of the log; its row id (its line number)."""
    decision.check()
    if decision.kind == UNDO and not any(logged.row == decision.value for logged in read_log(run).rows):
        raise UserError(f"no decision row {decision.value} to undo", "see the row ids with: decide --list")
    line = json.dumps(asdict(decision), sort_keys=True, ensure_ascii=False)
    return run.append_line(LOG, line)


def read_log(run: RunDir) -> Log:
    if not run.exists(LOG):
        return Log([], [])
    rows, torn = [], []
    for number, line in enumerate(run.read_bytes(LOG).decode("utf-8", "replace").splitlines(), start=1):
        try:
            rows.append(Logged(number, Decision.from_json(json.loads(line))))
        except (ValueError, TypeError):  # JSONDecodeError is a ValueError; TypeError: fields missing
            torn.append(number)
    return Log(rows, torn)


def current(run: RunDir) -> list[Logged]:
    """The decisions in force, in log order."""
    return in_force(read_log(run).rows)


def in_force(rows: Iterable[Logged]) -> list[Logged]:
    """The log replayed as if the undone rows were never written: each key's last row holds."""
    rows = list(rows)
    undone = {logged.decision.value for logged in rows if logged.decision.kind == UNDO}
    slots = {logged.decision.key: logged for logged in rows
             if logged.decision.kind != UNDO and logged.row not in undone}
    return sorted(slots.values(), key=lambda logged: logged.row)


def by_identity(rows: Iterable[Logged]) -> dict[str, list[Decision]]:
    found: dict[str, list[Decision]] = defaultdict(list)
    for logged in rows:
        found[logged.decision.identity].append(logged.decision)
    return dict(found)


def digest(decisions: Iterable[Decision]) -> str:
    """What the decisions decide (not who made them, when, or why): equal digests apply the same."""
    applied = sorted(json.dumps([d.kind, d.image, d.value]) for d in decisions)
    return hashlib.sha256(json.dumps(applied).encode()).hexdigest()[:16] if applied else ""
