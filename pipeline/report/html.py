"""The page frame and small HTML helpers. Every value passes through `esc`: names, captions, URLs
and reasons come from the web or from models and must show as text, never as markup."""

from __future__ import annotations

from html import escape
from urllib.parse import urlparse

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2731;background:#f6f7f9}
nav{position:sticky;top:0;background:#1d3557;padding:.5em 1em;z-index:1}nav a{color:#fff;margin-right:1.2em}
main{padding:0 1.5em 3em}section{background:#fff;margin:1.2em 0;padding:.6em 1.2em 1.2em;border-radius:6px}
h2{border-bottom:2px solid #e9ecef}table{border-collapse:collapse;font-size:13px}
td,th{border-bottom:1px solid #e9ecef;padding:3px 8px;text-align:right;vertical-align:top}
th:first-child,td.text{text-align:left}th{background:#f1f3f5;cursor:pointer;user-select:none}
.warn{background:#fff3cd;padding:.5em 1em;border-left:4px solid #e9c46a}.muted{color:#6c757d}
.figs img{max-width:48%;margin:.3em}.tiles{display:flex;flex-wrap:wrap;gap:8px}
.tile{width:224px;font-size:12px;overflow-wrap:anywhere}
.tile img{width:224px;height:224px;object-fit:contain;display:block;background:#e9ecef;border-radius:3px}
.noimg{width:224px;height:60px;background:#e9ecef;display:flex;align-items:center;justify-content:center}
.sheet{display:grid;grid-template-columns:1fr 1fr;gap:1em}.dropped .tile{opacity:.9}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1.5em}.scroll{max-height:70vh;overflow:auto}
.next{background:#e8f4f8;border-left:4px solid #1d3557;padding:.2em 1em;margin-top:1em}.next pre{white-space:pre-wrap}
code.id{user-select:all;font-size:11px;cursor:copy}
"""

# Click a header to sort by it; cells carry their sort value in data-v (numbers compare as numbers).
SORT_JS = """
document.querySelectorAll('table.sortable th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0], asc = th.dataset.dir !== 'asc';
  th.dataset.dir = asc ? 'asc' : 'desc';
  const rows = [...body.rows], key = r => r.cells[col].dataset.v ?? r.cells[col].textContent;
  const numeric = rows.every(r => key(r) === '' || !isNaN(Number(key(r))));
  const value = r => numeric ? (key(r) === '' ? NaN : Number(key(r))) : key(r);
  const cmp = (a, b) => numeric ? isNaN(a) - isNaN(b) || (asc ? a - b : b - a) : (asc ? 1 : -1) * a.localeCompare(b);
  body.append(...rows.sort((a, b) => cmp(value(a), value(b))));
}));
"""


def esc(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def link(url: str, text: object) -> str:
    """A link only for web addresses (a `javascript:` URL from a crawl must not become clickable);
    any other address shows its last part as text, the whole of it on hover."""
    if urlparse(url).scheme in ("http", "https"):
        return f'<a href="{esc(url)}" rel="noreferrer noopener">{esc(text)}</a>'
    return f'<span class="muted" title="{esc(url)}">{esc(url.rstrip("/").rsplit("/", 1)[-1])}</span>'


def cell(html: str, sort: object = None) -> str:
    """A left-aligned cell from ready HTML; `sort` is its sort value when the shown text is not."""
    attrs = f' data-v="{esc(sort)}"' if sort is not None else ""
    return f"<td class=text{attrs}>{html}</td>"


def num_cell(value: float | None, digits: int = 3) -> str:
    """A number, sorted as one; a missing value sorts last."""
    return f'<td data-v="{"" if value is None else value}">{number(value, digits)}</td>'


def table(headers: list[str], rows: list[list[str]], sortable: bool = False) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(f"<tr>{''.join(row)}</tr>" for row in rows)
    return f'<table{" class=sortable" if sortable else ""}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return '<span class="muted">–</span>'
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, sections: list[tuple[str, str, str]]) -> str:
    """(anchor, title, body HTML) per section, with a navigation bar to each."""
    nav = "".join(f'<a href="#{esc(anchor)}">{esc(name)}</a>' for anchor, name, _ in sections)
    body = "".join(section(*parts) for parts in sections)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{CSS}</style></head><body><nav>{nav}</nav><main><h1>{esc(title)}</h1>{body}</main>"
        f"<script>{SORT_JS}</script></body></html>"
    )
