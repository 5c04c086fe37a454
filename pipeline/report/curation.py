"""The report's curation section: a curator's decisions, whether they are applied, what they changed, the
threshold they argue for (decisions as labels), and the commands to run next."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from pipeline.core.decisions import ACCEPT, REJECT, SPLIT, TARGET_FACE, Decision, in_force, read_log
from pipeline.core.markers import read_markers, read_part
from pipeline.core.rundir import RunDir
from pipeline.report.html import esc, table
from stages.curation import CURATOR, verify_inputs

POSITIVE, NEGATIVE = (ACCEPT, TARGET_FACE), (REJECT, SPLIT)  # this person / not this person
VERIFY = "verify"


@dataclass(frozen=True)
class Labelled:
    """A photo a curator judged, with the similarity verify scored its face with."""

    sim: float
    person: bool


@dataclass(frozen=True)
class Advice:
    decisions: int  # labelled photos with a similarity
    current: float | None
    current_matches: int | None
    best: float
    best_matches: int


def threshold_advice(labelled: list[Labelled], current: float | None) -> Advice | None:
    """The threshold that agrees with the most decisions (the middle of the widest such gap between scores),
    and how many the current one agrees with."""
    if not labelled:
        return None
    sims = np.array([item.sim for item in labelled])
    person = np.array([item.person for item in labelled])
    edges = np.unique(sims)
    candidates = np.concatenate([[edges[0] - 0.01], (edges[:-1] + edges[1:]) / 2, [edges[-1] + 0.01]])
    matches = np.array([int(((sims >= t) == person).sum()) for t in candidates])
    tied = candidates[matches == matches.max()]  # of equally good ones, the smallest change
    best = float(tied[np.argmin(np.abs(tied - current))] if current is not None else tied[0])
    now = None if current is None else int(((sims >= current) == person).sum())
    return Advice(len(labelled), current, now, round(best, 3), int(matches.max()))


def labelled_photos(run: RunDir, decisions: list[Decision]) -> tuple[list[Labelled], int]:
    """The decided photos with verify's similarity (as last applied), and how many rows a decision changed."""
    verdicts = {(d.identity, d.image): d.kind in POSITIVE for d in decisions if d.kind in POSITIVE + NEGATIVE}
    labelled, changed = [], 0
    for slug in sorted({identity for identity, _ in verdicts}):
        rows = read_part(run, VERIFY, slug, ["image_id", "sim_to_centroid", "decided_by"])
        if not rows.num_rows:
            continue
        changed += int(pc.sum(pc.equal(rows["decided_by"], CURATOR)).as_py() or 0)
        for image_id, sim in zip(rows["image_id"].to_pylist(), rows["sim_to_centroid"].to_pylist(), strict=True):
            if (slug, image_id) in verdicts and sim is not None:
                labelled.append(Labelled(sim, verdicts[(slug, image_id)]))
    return labelled, changed


def pending(run: RunDir) -> list[str]:
    """Identities whose photo decisions verify has not applied yet (its marker consumed other ones)."""
    wanted = verify_inputs(run)  # an identity's photo decisions, and the photos split into it
    markers = read_markers(run, VERIFY, list(wanted))
    return sorted(slug for slug, text in wanted.items()
                  if slug not in markers or markers[slug].input_digest.partition("+")[2] != text)


def build(run: RunDir, threshold: float | None) -> tuple[str, dict]:
    log = read_log(run)
    decisions = [logged.decision for logged in in_force(log.rows)]
    labelled, changed = labelled_photos(run, decisions)
    advice = threshold_advice(labelled, threshold)
    waiting = pending(run)
    numbers = {"rows": len(log.rows), "torn_rows": len(log.torn), "in_force": len(decisions),
               "identities": len({d.identity for d in decisions}), "not_applied_identities": len(waiting),
               "rows_changed": changed, "threshold_advice": advice.__dict__ if advice else None}
    return _html(numbers, decisions, advice, waiting) + next_steps(run, advice, bool(waiting)), numbers


def _html(numbers: dict, decisions: list[Decision], advice: Advice | None, waiting: list[str]) -> str:
    if not decisions:
        return ('<p class="muted">No curator decisions yet. Review the contact sheets and the threshold guidance, '
                "then record corrections with the review app or <code>decide</code> (docs/curation.md).</p>")
    kinds: dict[str, int] = {}
    for decision in decisions:
        kinds[decision.kind] = kinds.get(decision.kind, 0) + 1
    torn = f", {numbers['torn_rows']} unreadable line(s) skipped" if numbers["torn_rows"] else ""
    text = (f"<p>{counted(numbers['in_force'], 'decision')} in force about {counted(numbers['identities'], 'identity')} "
            f"({counted(numbers['rows'], 'row')} in the log{torn}); {counted(numbers['rows_changed'], 'row')} of "
            "verify's output changed by them (<code>decided_by: curator</code>).</p>")
    text += table(["decision", "in force"], [[f"<td class=text>{esc(k)}</td>", f"<td>{n}</td>"] for k, n in
                                            sorted(kinds.items())])
    if waiting:
        text += (f'<p class="warn">{len(waiting)} identities have decisions not applied yet: '
                 f"{esc(', '.join(waiting[:10]))}{' ...' if len(waiting) > 10 else ''}.</p>")
    if advice:
        now = (f"; the current threshold {advice.current:g} matches {advice.current_matches}"
               if advice.current is not None else "")
        text += (f"<p>Threshold guidance from the decisions as labels: with {counted(advice.decisions, 'decision')}, "
                 f"threshold {advice.best:g} would have matched {advice.best_matches}{esc(now)}. Similarities are "
                 "verify's after the decisions were applied, so a rejected photo no longer pulls the centroid.</p>")
    return text


def counted(count: int, noun: str) -> str:
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{count:,} {noun if count == 1 else plural}"


def next_steps(run: RunDir, advice: Advice | None, waiting: bool) -> str:
    out = shlex.quote(run.uri)
    steps = [f"python -m pipeline review --out {out}   # triage: a accept, r reject, u undo, j/k, 1-9 face"]
    if waiting:
        steps.append(f"python -m pipeline decide --apply --out {out}   # apply the decisions waiting")
    if advice and advice.current is not None and advice.best_matches > (advice.current_matches or 0):
        steps.append(f"python -m pipeline run --out {out} --set verify.threshold={advice.best:g}   # the threshold "
                     "the decisions argue for")
    steps.append(f"python -m pipeline decide --list --out {out}   # what was decided, by whom")
    steps.append(f"python -m pipeline export --format webdataset --out {out}   # the dataset for a trainer")
    lines = "\n".join(esc(step) for step in steps)
    return f'<div class="next"><h3>Next steps</h3><pre>{lines}</pre></div>'
