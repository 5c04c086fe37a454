"""The report's section on checks across identities: possible same-person pairs beside each other's kept
photos, photos kept under two identities, merges. Read from the hygiene step's own files, not the parts."""

from __future__ import annotations

from pipeline.core.rundir import RunDir
from stages.hygiene_run import PAIRS, summary
from pipeline.report.data import IdentityStats
from pipeline.report.gallery import tiles
from pipeline.report.html import cell, esc, num_cell, table
from pipeline.report.sheets import build_sheet
from pipeline.report.state import RunState
from pipeline.report.thumbs import Thumbs

MAX_PAIRS = 10  # pairs shown with their photos; the table lists every pair


def build(run: RunDir, state: RunState, identities: list[IdentityStats], thumbs: Thumbs) -> tuple[str, dict]:
    """The section's HTML and its numbers for summary.json."""
    done = summary(run)
    if done is None:
        return '<p class="muted">Not run yet: the hygiene stage decides across identities after verify.</p>', {}
    pairs = run.read_table(PAIRS).to_pylist()
    stats = {identity.slug: identity for identity in identities}
    shown = [_pair(run, state, pair, stats, thumbs) for pair in pairs[:MAX_PAIRS]]
    body = _counts(done) + _pairs_table(pairs, stats) + "".join(shown)
    return body, {"counts": done["counts"], "rules": done["rules"], "pairs": pairs}


def _counts(done: dict) -> str:
    counts, rules = done["counts"], done["rules"] or {}
    cut = f" (centroid cosine at least {rules['same_person']:g})" if rules else ""
    return (f"<p>{counts.get('identities', 0):,} identities compared on their centroids: "
            f"<b>{counts.get('pairs', 0):,}</b> pairs possibly the same person{esc(cut)}, flagged on their rows "
            f"(<code>possible_same_person</code>) and kept; {counts.get('merged', 0):,} identities merged "
            f"(<code>hygiene.merge</code>).</p>"
            f"<p>Near-duplicate photos across identities: <b>{counts.get('near_duplicates', 0):,}</b> pairs of photos, "
            f"of which {counts.get('same_face', 0):,} with the same target face: {counts.get('claimed', 0):,} rows "
            "dropped as <code>claimed_by_other_identity</code>, each photo kept where its face is closest to the "
            "centroid. The others (a group photo with another person as the target) stay in both. Photos are "
            "compared between identities that share a photo's bytes or phash, or whose centroids are within "
            "verify's cluster cut.</p>")


def _pairs_table(pairs: list[dict], stats: dict[str, IdentityStats]) -> str:
    if not pairs:
        return '<p class="muted">No two identities are as close as one person\'s photos.</p>'

    def name(slug: str) -> str:
        return esc(stats[slug].name if slug in stats else slug)

    rows = [[cell(name(p["identity"])), cell(name(p["other"])), num_cell(p["similarity"])] for p in pairs]
    return table(["identity", "possibly the same person as", "centroid cosine"], rows, sortable=True)


def _pair(run: RunDir, state: RunState, pair: dict, stats: dict[str, IdentityStats], thumbs: Thumbs) -> str:
    """The two identities' kept photos side by side, as their contact sheets show them."""
    columns = []
    for slug in (pair["identity"], pair["other"]):
        if slug in stats:
            sheet = build_sheet(run, state, stats[slug], thumbs)
            kept = tiles(sheet.kept, sheet.kept_total, "nothing kept")
            columns.append(f"<div><h4>{esc(stats[slug].name)}</h4>{kept}</div>")
    title = f'{esc(pair["identity"])} · {esc(pair["other"])} ({pair["similarity"]:.3f})'
    return f'<h3>{title}</h3><div class="pair">{"".join(columns)}</div>'
