"""`python -m pipeline decide`: a curator's decisions about a run, written to its log and listed.

A decision is a row appended to `curation/decisions.jsonl` (`pipeline/core/decisions.py`); nothing in the
run changes until `decide --apply` (or the next `run`) re-runs verify and the stages after it for the
identities the decisions touch. The review app writes through the same `record` function.
"""

from __future__ import annotations

import argparse

from pipeline.core.decisions import (
    ACCEPT, CLASS_WORD, MERGE, REJECT, SPLIT, TARGET_FACE, UNDO, Decision, append, current, os_user, read_log,
)
from pipeline.core.errors import UserError
from pipeline.core.names import IdentityIndex, run_identities
from pipeline.core.rundir import RunDir
from stages.class_words import CANONICAL
from stages.curation import split_targets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--reject", action="store_true", help="the photo is not this person (curator_rejected)")
    action.add_argument("--accept", action="store_true", help="the photo is this person, even against verify")
    action.add_argument("--target-face", type=int, metavar="N",
                        help="in a group photo, the person is face N (0, 1, ...)")
    action.add_argument("--split", nargs="?", const="", metavar="NAME",
                        help="the photo is another person: it leaves this identity, and joins NAME (an identity of "
                             "the run) if given")
    action.add_argument("--merge-into", metavar="NAME",
                        help="the identity is the same person as NAME (hygiene merges it)")
    action.add_argument("--class-word", metavar="WORD", help="the identity's class word (man, woman, ...)")
    action.add_argument("--undo", type=int, metavar="ROW", help="take back the decision in row ROW (see --list)")
    action.add_argument("--list", action="store_true", help="the decisions in force (--all: every row of the log)")
    action.add_argument("--apply", action="store_true",
                        help="re-run verify and the stages after it for the identities decisions touch")
    parser.add_argument("--identity", metavar="NAME", help="a name (any case), its slug or its readable slug")
    parser.add_argument("--image", metavar="SHA256", help="the photo's image_id (sha256 of its bytes)")
    parser.add_argument("--note", default="", help="why; kept in the log")
    parser.add_argument("--by", help="who decided (default: the user running the command)")
    parser.add_argument("--all", action="store_true", help="with --list: every row, undone and replaced ones too")


def requested(args: argparse.Namespace, run: RunDir) -> Decision:
    """The decision the command line asks for, its identity resolved against the run's names."""
    by = args.by or os_user()
    if args.undo is not None:
        undone = next((logged for logged in read_log(run).rows if logged.row == args.undo), None)
        if undone is None:
            raise UserError(f"no decision row {args.undo} to undo", "see the row ids with: decide --list --all")
        return Decision(undone.decision.identity, UNDO, value=args.undo, note=args.note, by=by)
    if args.identity is None:
        raise UserError("a decision needs --identity NAME", "name the identity as in the names list")
    index = IdentityIndex(run_identities(run))
    slug = index.resolve(args.identity).slug
    image = args.image.strip().lower() if args.image else None
    kind, value = _kind(args, index)
    return Decision(slug, kind, image, value, args.note, by)


def _kind(args: argparse.Namespace, index: IdentityIndex) -> tuple[str, str | int | None]:
    if args.reject or args.accept:
        return (REJECT if args.reject else ACCEPT), None
    if args.target_face is not None:
        return TARGET_FACE, args.target_face
    if args.split is not None:
        return SPLIT, _split_target(index, args.split.strip()) if args.split.strip() else None
    if args.merge_into is not None:
        return MERGE, index.resolve(args.merge_into, "--merge-into identity").slug
    word = args.class_word.strip().lower()
    if word not in CANONICAL:
        raise UserError(f"--class-word {args.class_word!r} is not a class word", f"use one of: {', '.join(CANONICAL)}")
    return CLASS_WORD, word


def _split_target(index: IdentityIndex, name: str) -> str:
    """The slug of the identity a split photo joins: one of the run's. A person the run does not know has no
    crawl, filter or task of their own to join (docs/curation.md: split into another person)."""
    try:
        return index.resolve(name, "--split identity").slug
    except UserError as unknown:
        raise UserError(f"--split {name!r} is not an identity of this run",
                        "add the name to the names file and run, then split into it; or --split without a name "
                        "to leave the photo out") from unknown


def _check_split_target(run: RunDir, source: str, target: str) -> None:
    """A split into the photo's own identity, or into one with no verify task (the filter kept none of its
    photos, so nothing would take the photo in), cannot be applied."""
    if target == source:
        raise UserError("a photo cannot be split into its own identity", "use --accept to keep it there")
    if target not in split_targets(run):
        raise UserError(f"--split {target!r}: the run kept no photo of that identity to join",
                        "run it with its own photos first, or --split without a name to leave the photo out")


def record(run: RunDir, decision: Decision) -> int:
    """Append a decision to the run's log; its row id. The review app calls this too."""
    if decision.kind == MERGE and decision.value == decision.identity:
        raise UserError("an identity cannot be merged into itself")
    if decision.kind == SPLIT and decision.value is not None:
        _check_split_target(run, decision.identity, str(decision.value))
    return append(run, decision)


def list_lines(run: RunDir, every: bool) -> list[str]:
    """One line a decision: row, identity, kind, value, image, by, time, note; and the unreadable lines."""
    log = read_log(run)
    rows = log.rows if every else current(run)
    lines = [f"{logged.row:>5}  {d.identity}  {d.kind}{'' if d.value is None else f' {d.value}'}"
             f"{f'  {d.image}' if d.image else ''}  by {d.by} at {d.time}{f'  ({d.note})' if d.note else ''}"
             for logged in rows for d in [logged.decision]]
    lines += [f"{row:>5}  (unreadable: a write cut short; skipped)" for row in log.torn]
    return lines or ["no decisions"]
