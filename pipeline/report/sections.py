"""The report's table sections: overview, funnel, per-identity table, distributions."""

from __future__ import annotations

from pipeline.core.schema import DROPPED, FAILED, OK
from pipeline.engine.stats import device_text
from pipeline.report.data import IdentityStats
from pipeline.report.html import cell, esc, num_cell, table
from pipeline.report.state import RunState


def overview(state: RunState, missing: list[str]) -> str:
    parts = [f"<p>Run <code>{esc(state.uri)}</code>: {len(state.identities):,} identities.</p>"]
    if missing:
        listed = ", ".join(f"{esc(name)} ({esc(_progress(state, name))})" for name in missing)
        parts.append(f'<p class="warn">Partial run. Missing or unfinished: {listed}. '
                     "Sections that need them say so.</p>")
    if state.shards:
        shards = state.shards
        stale = "" if shards["current"] else " <b>(older than the last stage: re-run <code>--stage shard</code>)</b>"
        parts.append(f"<p>Shards: {shards['identities']:,} identities, {shards['rows']:,} rows in "
                     f"{shards['files']:,} shard file(s){stale}.</p>")
    return "".join(parts)


def _progress(state: RunState, name: str) -> str:
    stage = next((stage for stage in state.stages if stage.name == name), None)
    if stage is not None and stage.kept:
        return f"{len(stage.kept):,}/{stage.total:,} identities"
    return "older than the last stage" if stage is None and state.shards else "not run yet"


def funnel(state: RunState) -> str:
    rows = []
    for stage in state.stages:
        count = stage.counts
        reasons = ", ".join(f"{esc(reason)} {n:,}" for reason, n in count.reasons.most_common())
        stale = f" ({stage.stale:,} stale)" if stage.stale else ""
        rows.append([
            cell(esc(stage.name)), cell(f"{esc(stage.status)} {len(stage.kept):,}/{stage.total:,}{stale}"),
            num_cell(count.rows_in), num_cell(count.statuses[OK]), num_cell(count.statuses[DROPPED]),
            num_cell(count.statuses[FAILED]), cell(reasons), cell(esc(device_text(count.devices))),
        ])
    headers = ["stage", "tasks", "rows in", "kept", "dropped", "failed", "not kept, by reason", "device"]
    note = '<p class="muted">Crawl\'s input rows are names; every later stage takes the previous one\'s kept rows.</p>'
    return f'<img src="funnel.png" alt="funnel chart" width="1200">{note}{table(headers, rows)}'


def _class_check(stats: IdentityStats) -> tuple[str, float | None]:
    if not stats.class_word_checked:
        return '<span class="muted">no estimate</span>', None
    agree = 1 - stats.class_word_disagrees / stats.class_word_checked
    text = f"{stats.class_word_checked - stats.class_word_disagrees}/{stats.class_word_checked} agree"
    return (f"<b>{text}</b>" if stats.class_word_disagrees else text), agree


def _identity_row(stats: IdentityStats, shown: set[str]) -> list[str]:
    anchor = f"#sheet-{esc(stats.slug)}" if stats.slug in shown else f"../raw/{esc(stats.slug)}/"
    name = f'<a href="{anchor}">{esc(stats.name)}</a><br><span class="muted">{esc(stats.slug)}</span>'
    check, agree = _class_check(stats)
    competing = {None: "", True: "<b>yes</b>", False: "no"}[stats.competing]
    return [
        cell(name, sort=stats.name), cell(esc(stats.done_through or "—")),
        num_cell(stats.crawled), num_cell(stats.kept), num_cell(stats.sim_mean), num_cell(stats.sim_min),
        num_cell(stats.purity, 2), cell(competing, sort=int(bool(stats.competing))),
        cell(esc(stats.class_word or "—")), cell(check, sort="" if agree is None else agree),
    ]


def identity_table(identities: list[IdentityStats], shown: set[str]) -> str:
    headers = ["identity", "done through", "crawled", "kept", "mean sim", "min sim", "purity", "competing",
               "class word", "class word check"]
    note = (f'<p class="muted">{len(identities):,} identities; click a header to sort. A name links to its contact '
            "sheet where the report has one, else to its downloaded images. Similarities are of the images verify "
            "kept; purity is the dominant face cluster's share of the images with faces.</p>")
    rows = [_identity_row(stats, shown) for stats in identities]
    return f'{note}<div class="scroll">{table(headers, rows, sortable=True)}</div>'


def figures(figs: list[tuple[str, str | None, str]]) -> str:
    """(title, PNG path or None, note) per figure; a missing one says what it waits for."""
    shown = "".join(f'<img src="{esc(path)}" alt="{esc(title)}">' for title, path, _ in figs if path)
    notes = "".join(f"<li>{esc(title)}: {esc(note)}</li>" for title, _, note in figs if note)
    return f'<div class="figs">{shown}</div>' + (f'<ul class="muted">{notes}</ul>' if notes else "")
