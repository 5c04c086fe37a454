"""The report's "Release" section: what the last `python -m pipeline release` of this run published and left
out (names, embeddings, takedowns, blurred bystanders), from the facts it recorded in the run directory."""

from __future__ import annotations

import re

from pipeline.core.rundir import RunDir
from pipeline.dataset.release_card import LAST_RELEASE, facts_from_record, release_section
from pipeline.report.html import esc

NO_RELEASE = ("<p>No release written yet. <code>python -m pipeline release --dest DIR</code> writes a copy safe to "
              "publish: identities as keyed hashes, no face embeddings, no local paths, image metadata removed, "
              "takedowns applied (docs/release.md).</p>")


def build(run: RunDir) -> tuple[str, dict]:
    record = run.read_state(LAST_RELEASE)
    if record is None:
        return NO_RELEASE, {}
    facts = facts_from_record(record)
    items = [_inline(line.removeprefix("- ")) for line in release_section(facts)[2:]]
    head = (f"<p>Last release: <code>{esc(record.get('dest', ''))}</code> ({esc(facts.published)}, "
            f"{esc(facts.fmt)}): {facts.identities:,} identities, {facts.images:,} images.</p>")
    numbers = {key: record.get(key) for key in ("dest", "published", "fmt", "identities", "images", "withheld",
                                                 "face_rows", "faces_blurred", "deletions")}
    return head + "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>", {**numbers, **record["options"]}


def _inline(markdown: str) -> str:
    """The card's inline Markdown (**bold**, `code`) as HTML, the text escaped first."""
    html = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", esc(markdown))
    return re.sub(r"`(.+?)`", r"<code>\1</code>", html)
