"""Image sections: threshold guidance and per-identity contact sheets."""

from __future__ import annotations

from pipeline.report.html import esc, link
from pipeline.report.sheets import MAX_SHEETS, Sheet, Tile


def tile(item: Tile) -> str:
    image = (f'<img src="{esc(item.thumb)}" alt="{esc(item.label)}">' if item.thumb
             else '<div class="noimg muted">no preview</div>')
    detail = f'<div class="muted">{esc(item.detail)}</div>' if item.detail else ""
    source = f'<div>{link(item.url, "source")}</div>' if item.url else ""
    hint = "image_id: one click selects it, for decide --image"
    image_id = f'<code class="id" title="{hint}">{esc(item.image_id)}</code>' if item.image_id else ""
    return f'<div class="tile">{image}<div>{esc(item.label)}</div>{detail}{source}{image_id}</div>'


def tiles(items: list[Tile], total: int, empty: str) -> str:
    if not items:
        return f'<p class="muted">{esc(empty)}</p>'
    more = f'<p class="muted">{len(items)} of {total:,} shown.</p>' if total > len(items) else ""
    return f'<div class="tiles">{"".join(tile(item) for item in items)}</div>{more}'


def guidance(kept: list[Tile], dropped: list[Tile], threshold: float | None) -> str:
    if not kept and not dropped:
        return '<p class="muted">No similarities to show: verify has not run yet, or found no faces.</p>'
    rule = f"the threshold is {threshold:g}" if threshold is not None else "no threshold known"
    intro = (f"<p>Faces as verify compared them (cosine similarity to the identity's centroid; {esc(rule)}). "
             "If the left column shows other people, raise the threshold; if the right one shows the right "
             "people, lower it.</p>")
    left = f"<div><h3>Lowest-similarity kept</h3>{tiles(kept, len(kept), 'none kept')}</div>"
    right = f"<div><h3>Highest-similarity dropped</h3>{tiles(dropped, len(dropped), 'none dropped')}</div>"
    return f'{intro}<div class="pair">{left}{right}</div>'


def sheet(item: Sheet) -> str:
    stats = item.identity
    slug = f"{stats.slug} · " if stats.slug != stats.name else ""
    title = (f'<h3 id="sheet-{esc(stats.slug)}">{esc(stats.name)} <span class="muted">{esc(slug)}'
             f"done through {esc(stats.done_through or 'nothing')}</span></h3>")
    order = " (lowest similarity first)" if stats.sim_min is not None else ""
    kept = f"<div><h4>Kept{order}</h4>{tiles(item.kept, item.kept_total, 'nothing kept')}</div>"
    dropped = (f'<div class="dropped"><h4>Dropped, with reasons</h4>'
               f"{tiles(item.dropped, item.dropped_total, 'nothing dropped')}</div>")
    return f'{title}<div class="sheet">{kept}{dropped}</div>'


def sheets(items: list[Sheet], identities: int) -> str:
    intro = (f"<p>Kept crops with the person mask tinted and the target face boxed, the caption beneath; beside "
             f"them the images dropped on the way. {len(items)} of {identities:,} identities, those most in need "
             f"of a look first (competing clusters, low purity, low similarity), at most {MAX_SHEETS}; the identity "
             "table links to every other one's images.</p>")
    return intro + "".join(sheet(item) for item in items)
