"""The report's figures as PNG bytes, drawn with matplotlib's Agg canvas (no display, no pyplot state)."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.core.schema import DROPPED, FAILED, OK
from pipeline.engine.stats import StageCounts
from pipeline.report.hist import Histogram

TOP_REASONS = 15
COLOURS = {"kept": "#2a9d8f", "dropped": "#e76f51", "failed": "#8d99ae", "in": "#264653"}


def _label(text: str) -> str:
    """Labels come from data: keep matplotlib from reading `$...$` in them as mathtext."""
    return text.replace("$", r"\$")


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def funnel_png(stages: list[StageCounts]) -> bytes:
    """Rows in / kept / dropped / failed per stage, and the commonest drop reasons."""
    figure = Figure(figsize=(12, 4))
    bars, reasons = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(len(stages))
    series = [("in", [s.rows_in for s in stages]), ("kept", [s.statuses[OK] for s in stages]),
              ("dropped", [s.statuses[DROPPED] for s in stages]), ("failed", [s.statuses[FAILED] for s in stages])]
    for offset, (name, values) in enumerate(series):
        bars.bar(x + (offset - 1.5) * 0.2, values, 0.2, label=name, color=COLOURS[name])
    bars.set_xticks(x, [s.stage for s in stages], rotation=30, ha="right")  # nine stage names side by side overlap
    bars.set_ylabel("rows")
    bars.legend(loc="lower left", bbox_to_anchor=(0, 1.08), ncol=4, fontsize=8, frameon=False)  # above, off the bars
    bars.set_title("Funnel")
    counts = Counter({f"{s.stage}: {reason}": n for s in stages for reason, n in s.reasons.items()})
    top = counts.most_common(TOP_REASONS)[::-1]
    reasons.barh([_label(name) for name, _ in top], [n for _, n in top], color=COLOURS["dropped"])
    reasons.set_title("Not kept, by reason" if top else "Not kept, by reason: none")
    return _png(figure)


def histogram_png(hist: Histogram, threshold: float | None = None, threshold_label: str = "threshold") -> bytes:
    """`threshold_label`: the legend's text for the line, its value included (the caller knows its units)."""
    figure = Figure(figsize=(7.5, 3.4))
    axes = figure.subplots()
    edges, counts = hist.zoomed(include=threshold)
    for series, values in counts.items():
        axes.stairs(values, edges, label=_label(f"{series} ({values.sum():,})"), linewidth=1.8)
    if threshold is not None:
        axes.axvline(threshold, color="#d62828", linestyle="--", label=_label(threshold_label))
    axes.set_xlabel(hist.xlabel)
    axes.set_ylabel("images")
    axes.set_title(hist.title)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # beside the data
    return _png(figure)


def words_png(words: Counter[str], title: str = "Class words") -> bytes:
    figure = Figure(figsize=(6, 3.4))
    axes = figure.subplots()
    top = words.most_common(TOP_REASONS)
    axes.bar([_label(word) for word, _ in top], [n for _, n in top], color=COLOURS["kept"])
    axes.set_ylabel("kept images")
    axes.set_title(title)
    return _png(figure)
