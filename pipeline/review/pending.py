"""How many decisions the run's tables do not show yet: what the next `decide --apply` would change.

Read from the data, not from a record of past applies: a decision is shown when verify's row (or caption's,
hygiene's) already says what it decided, so a decision that agrees with verify counts as shown at once, and
an undone reject whose photo still reads `curator_rejected` counts as pending. Only the identities the log
names are read, and with a `cache` only those whose decisions or parts changed since it was filled.
"""

from __future__ import annotations

from pipeline.core.decisions import (
    ACCEPT, CLASS_WORD, MERGE, REJECT, SPLIT, TARGET_FACE, Decision, by_identity, in_force, read_log,
)
from pipeline.core.markers import part_path
from pipeline.core.reasons import CURATOR_REJECTED, CURATOR_SPLIT
from pipeline.core.rundir import RunDir
from pipeline.core.schema import OK
from pipeline.review.tables import CAPTION, HYGIENE, VERIFY, read_columns

CURATOR_DROPS = {REJECT: CURATOR_REJECTED, SPLIT: CURATOR_SPLIT}


def pending(run: RunDir, cache: dict[str, tuple[tuple, int]] | None = None) -> int:
    """The count; `cache` (identity -> (what its count was made from, the count)) is filled and reused."""
    log = read_log(run).rows
    force = by_identity(in_force(log))
    cache = {} if cache is None else cache
    total = 0
    for slug in sorted({logged.decision.identity for logged in log}):
        mine = force.get(slug, [])
        made_from = (tuple(mine), _stamps(run, slug))
        if slug not in cache or cache[slug][0] != made_from:
            cache[slug] = (made_from, _pending_in(run, slug, mine))
        total += cache[slug][1]
    return total


def _stamps(run: RunDir, slug: str) -> tuple:
    """Size and time of the identity's parts the count reads: a new part (an apply, a run) counts again."""
    infos = run.fs.get_file_info([run.path(part_path(stage, slug)) for stage in (VERIFY, HYGIENE, CAPTION)])
    return tuple((info.size, info.mtime_ns) for info in infos)


def _pending_in(run: RunDir, slug: str, decisions: list[Decision]) -> int:
    table = read_columns(run, VERIFY, slug, ["image_id", "status", "reason", "target_face"])
    verify = {row["image_id"]: row for row in (table.to_pylist() if table is not None else [])}
    waiting = sum(not _shown(run, slug, decision, verify) for decision in decisions)
    verdicts = {d.image for d in decisions if d.kind in CURATOR_DROPS}
    dropped_by_curator = {image for image, row in verify.items() if row["reason"] in CURATOR_DROPS.values()}
    return waiting + len(dropped_by_curator - verdicts)  # taken back, still dropped


def _shown(run: RunDir, slug: str, decision: Decision, verify: dict[str, dict]) -> bool:
    row = verify.get(decision.image) if decision.image else None
    if decision.kind in CURATOR_DROPS:
        return row is None or row["reason"] == CURATOR_DROPS[decision.kind]  # a photo verify never saw: nothing to do
    if decision.kind == ACCEPT:
        return row is None or row["status"] == OK
    if decision.kind == TARGET_FACE:
        return row is None or row["target_face"] == decision.value
    if decision.kind == CLASS_WORD:
        words = read_columns(run, CAPTION, slug, ["status", "class_word"])
        return words is None or all(r["class_word"] == decision.value for r in words.to_pylist() if r["status"] == OK)
    if decision.kind == MERGE:
        moved = read_columns(run, HYGIENE, slug, ["kept_under"])
        return moved is None or any(r["kept_under"] == decision.value for r in moved.to_pylist())
    return True
