"""The dataset card's governance section (Markdown), from the facts `governance.gather` collects."""

from __future__ import annotations

import json
from itertools import pairwise

from pipeline.core.removals import LEDGER, TAKEN_DOWN
from pipeline.dataset.governance import MEASURES, Distribution, Governance, Measure

EVIDENCE_NOTE = (
    "Rows dropped are counted over every stage. Outcomes come from each image's `consent` evidence: pass (a "
    "signal that allows), absent (no signal found), unreadable, unreachable, off (check disabled), not recorded "
    "(no evidence: local files, older runs). A check with no rows dropped, no setting and no evidence may not "
    "have run: the run does not record it.")


def md(text: object) -> str:
    """A table cell from data (names, URLs, reasons people typed): one line, no column breaks."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("`", "'")


def setting_text(check: dict) -> str:
    if check["value"] is None:
        return "—"
    return f"`{check['setting']}: {md(json.dumps(check['value']))}`"


def evidence_text(check: dict) -> str:
    """The check's outcomes on the dataset's images, per key of the rows' `consent` evidence."""
    parts = [f"{key}: " + ", ".join(f"{outcome} {n:,}" for outcome, n in outcomes.items())
             for key, outcomes in check["evidence"].items()]
    return "; ".join(parts) or "—"


def checks_table(facts: Governance) -> list[str]:
    rows = [f"| {check['name']} | {', '.join(f'`{r}`' for r in check['reasons'])} | {check['dropped']:,} | "
            f"{setting_text(check)} | {md(evidence_text(check))} |" for check in facts.checks]
    return ["| check | reason codes | rows dropped | setting | the dataset's images, by outcome |",
            "|---|---|---:|---|---|", *rows, "", EVIDENCE_NOTE]


def takedowns(facts: Governance) -> list[str]:
    ledger = facts.ledger
    if not ledger["requests"]:
        return [f"No removal requests (`{LEDGER}/` is empty)."]
    kinds = ", ".join(f"{kind} {n:,}" for kind, n in ledger["by_kind"].items())
    reasons = ", ".join(f"{md(reason)} {n:,}" for reason, n in ledger["by_reason"].items())
    rows = [f"| {md(e['at'])} | {e['kind']} | {md(e['name'] or e['value'])} | {md(e['reason'])} | {md(e['by'])} |"
            for e in facts.removals]
    summary = (f"{ledger['requests']:,} removal requests in `{LEDGER}/` ({kinds}); by reason: {reasons}. "
               f"Rows taken down: {facts.reasons.get(TAKEN_DOWN, 0):,}.")
    return [summary, "",
            "| when (UTC) | kind | what | reason | by |", "|---|---|---|---|---|", *rows]


def distribution(measure: Measure, dist: Distribution) -> list[str]:
    if dist.column is None:
        return [f"Not measured in this run: the shards have no {' or '.join(f'`{c}`' for c in measure.columns)} column."]
    names = list(dist.series)
    edges = measure.edges
    labels = [f"{lo:g}–{hi:g}" for lo, hi in pairwise(edges)]
    if measure.open_end:
        labels[-1] = f"{edges[-2]:g} and over"
    rows = [f"| {label} | " + " | ".join(f"{dist.series[n][i]:,}" for n in names) + " |" for i, label in enumerate(labels)]
    return [f"Column `{dist.column}`; {dist.missing:,} dataset images without a value.", "",
            f"| bucket | {' | '.join(names)} |", "|---|" + "---:|" * len(names), *rows]


def not_known(facts: Governance) -> list[str]:
    if facts.dataset_rows is None:
        return ["No shards yet: what the dataset holds is not known."]
    total = facts.dataset_rows
    return [f"- {what}: {'not known' if images is None else f'{images:,} of {total:,}'}"
            for what, images in facts.unknown]


def card_section(facts: Governance) -> str:
    intro = "What was checked before an image could enter the dataset, and what each check dropped:"
    lines = ["## Governance", "", intro, "", *checks_table(facts), "", "### Takedowns", "", *takedowns(facts)]
    for measure in MEASURES:
        lines += ["", f"### {measure.title}", "", *distribution(measure, facts.distributions[measure.key])]
    lines += ["", "### Not checked, or not known", "", *not_known(facts)]
    return "\n".join(lines)
