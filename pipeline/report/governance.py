"""The report's governance section: the consent and safety checks, takedowns, the age and NSFW
distributions where the run measured them, and what could not be checked."""

from __future__ import annotations

import json

import numpy as np

from pipeline.core.removals import LEDGER, TAKEN_DOWN, load_ledger
from pipeline.core.rundir import RunDir
from pipeline.dataset import governance
from pipeline.dataset.governance import MEASURES, Governance, Measure
from pipeline.dataset.governance_card import EVIDENCE_NOTE, evidence_text
from pipeline.report.hist import Histogram
from pipeline.report.html import cell, esc, num_cell, table
from pipeline.report.plots import histogram_png
from pipeline.report.state import RunState

AXES = {"age": ("years", 0.0, 100.0, 100), "nsfw": ("probability", 0.0, 1.0, 100)}  # xlabel, range, bins


def build(run: RunDir, state: RunState) -> tuple[str, dict]:
    """The section's HTML (its figures written under report/) and its numbers for summary.json."""
    hists = {m.key: Histogram(m.title, *AXES[m.key]) for m in MEASURES}

    def observe(measure: Measure, series: str, values: np.ndarray) -> None:
        hists[measure.key].add(series, values.tolist())

    facts = governance.gather(run, state.config, [stage.counts for stage in state.stages], load_ledger(run),
                              governance.indexed_shards(run), observe)
    figures = [_figure(run, state, measure, hists[measure.key], facts) for measure in MEASURES]
    body = "".join([_checks(facts), "<h3>Takedowns</h3>", _takedowns(facts), *figures,
                    "<h3>Not checked, or not known</h3>", _unknown(facts)])
    return body, governance.summary(facts)


def _checks(facts: Governance) -> str:
    rows = [[cell(esc(c["name"])), cell(esc(", ".join(c["reasons"]))), num_cell(c["dropped"]),
             cell("—" if c["value"] is None else f"<code>{esc(c['setting'])}: {esc(json.dumps(c['value']))}</code>"),
             cell(esc(evidence_text(c)))] for c in facts.checks]
    headers = ["check", "reason codes", "rows dropped", "setting", "the dataset's images, by outcome"]
    return ("<p>What was checked before an image could enter the dataset:</p>" + table(headers, rows)
            + f'<p class="muted">{esc(EVIDENCE_NOTE)}</p>')


def _takedowns(facts: Governance) -> str:
    ledger = facts.ledger
    if not ledger["requests"]:
        return f'<p class="muted">No removal requests ({esc(LEDGER)}/ is empty).</p>'
    by = "; ".join(f"{label}: " + ", ".join(f"{esc(k)} {n:,}" for k, n in ledger[key].items())
                   for key, label in (("by_kind", "by kind"), ("by_reason", "by reason")))
    rows = [[cell(esc(e["at"])), cell(esc(e["kind"])), cell(esc(e["name"] or e["value"])), cell(esc(e["reason"])),
             cell(esc(e["by"])), num_cell(e["images"])] for e in facts.removals]
    return (f"<p>{ledger['requests']:,} removal requests ({by}); {facts.reasons.get(TAKEN_DOWN, 0):,} rows "
            f"taken down.</p>" + table(["when (UTC)", "kind", "what", "reason", "by", "photos"], rows))


def _figure(run: RunDir, state: RunState, measure: Measure, hist: Histogram, facts: Governance) -> str:
    """The measure's histogram, or why there is none (an older figure without data is removed)."""
    dist, path = facts.distributions[measure.key], f"governance_{measure.key}.png"
    title = f"<h3>{esc(measure.title)}</h3>"
    if hist.empty:
        run.delete(f"report/{path}")
        columns = " or ".join(measure.columns)
        why = "no shards yet" if facts.dataset_rows is None else f"the data has no {columns} values"
        return f'{title}<p class="muted">Not measured: {esc(why)}.</p>'
    limit = governance.setting_value(state.config, measure.setting)
    line = limit if isinstance(limit, float) else None
    label = f"{measure.setting} {line:g}" if line is not None else ""
    run.write_bytes(f"report/{path}", histogram_png(hist, line, label))
    note = (f'<p class="muted">Column <code>{esc(dist.column)}</code>; {dist.missing:,} dataset images without '
            "a value.</p>") if dist.column else ""
    return f'{title}<img src="{esc(path)}" alt="{esc(measure.title)}">{note}'


def _unknown(facts: Governance) -> str:
    if facts.dataset_rows is None:
        return '<p class="muted">No shards yet: what the dataset holds is not known.</p>'
    total = facts.dataset_rows
    items = "".join(f"<li>{esc(what)}: {'not known' if n is None else f'{n:,} of {total:,}'}</li>"
                    for what, n in facts.unknown)
    return f"<ul>{items}</ul>"
