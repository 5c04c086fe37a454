"""The dataset QA report: `python -m pipeline report` writes report/index.html and report/summary.json.

One streaming pass over the run gathers per-identity figures and fixed-size distributions; only
the capped identities of the contact sheets and the guidance faces are read again for images.
Everything is written through the RunDir, so the report sits beside a run on disk or s3://.
"""

from __future__ import annotations

from dataclasses import asdict

from pipeline.core.rundir import RunDir
from pipeline.report import (curation, diversity, gallery, generator, governance, group_photos, hygiene, release,
                             sections)
from pipeline.report.data import gather
from pipeline.report.figures import verify_threshold, write_figures
from pipeline.report.html import page
from pipeline.report.quality import pairs_section
from pipeline.report.sheets import build_sheet, choose, guidance_tile
from pipeline.report.state import load_state
from pipeline.report.summary import summary
from pipeline.report.thumbs import Thumbs

INDEX = "report/index.html"
SUMMARY = "report/summary.json"


def index_uri(run: RunDir) -> str:
    """Where the page is, written like the run's URI (an s3:// URI's options stay at its end)."""
    base, sep, options = run.uri.partition("?")
    return f"{base}/{INDEX}{sep}{options}"


def write_report(run: RunDir) -> dict:
    """Write the report of the run in `run`; returns what summary.json holds."""
    state = load_state(run)
    gathered = gather(run, state)
    threshold = verify_threshold(gathered)
    figures = write_figures(run, state, gathered, threshold)
    thumbs = Thumbs(run)
    chosen = choose(gathered.identities)
    sheets = [build_sheet(run, state, stats, thumbs) for stats in chosen]
    names = {identity.slug: identity.name for identity in state.identities}
    kept = [guidance_tile(c, names.get(c.identity, c.identity), thumbs) for c in gathered.guidance.lowest_kept()]
    dropped = [guidance_tile(c, names.get(c.identity, c.identity), thumbs) for c in gathered.guidance.highest_dropped()]
    records = generator.read_records(run)
    consent, consent_numbers = governance.build(run, state)
    across, across_numbers = hygiene.build(run, state, gathered.identities, thumbs)
    groups, group_numbers = group_photos.build(run, thumbs)
    curated, curated_numbers = curation.build(run, threshold)
    released, released_numbers = release.build(run)
    body = [
        ("overview", "Overview", sections.overview(state, state.missing())),
        ("funnel", "Funnel", sections.funnel(state)),
        ("governance", "Governance", consent),
        ("release", "Release", released),
        ("identities", "Identities", sections.identity_table(gathered.identities, {s.slug for s in chosen})),
        ("hygiene", "Across identities", across),
        ("group-photos", "Group photos", groups),
        ("distributions", "Distributions", sections.figures(figures)),
        ("pairs", "Training pairs", pairs_section(gathered.pairs, names, gathered.training)),
        ("pose", "Pose spread", diversity.section(gathered.spreads, names)),
        ("guidance", "Threshold guidance", gallery.guidance(kept, dropped, threshold)),
        ("curation", "Curation", curated),
        ("sheets", "Contact sheets", gallery.sheets(sheets, len(state.identities))),
        ("generator", "Reference generator", generator.render(records, thumbs)),
    ]
    run.write_bytes(INDEX, page("Dataset QA report", body).encode())
    numbers = summary(state, gathered, threshold, [s.slug for s in chosen], generator.summaries(records))
    numbers["governance"] = consent_numbers
    numbers["hygiene"] = across_numbers
    numbers["multi_identity"] = group_numbers
    numbers["curation"] = curated_numbers
    numbers["release"] = released_numbers
    numbers["training_pairs"] = {slug: asdict(counts) for slug, counts in gathered.pairs.items()}
    numbers["pose_spread"] = {slug: asdict(spread) for slug, spread in gathered.spreads.items()}
    run.write_json(SUMMARY, numbers)
    thumbs.prune()
    return numbers
