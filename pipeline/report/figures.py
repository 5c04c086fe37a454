"""Writes the report's PNG figures and says, for each missing one, which stage it waits for."""

from __future__ import annotations

from pipeline.core.rundir import RunDir
from pipeline.report.data import Gathered
from pipeline.report.plots import funnel_png, histogram_png, words_png
from pipeline.report.quality import METRICS, line, thresholds
from pipeline.report.state import RunState

Figure = tuple[str, str | None, str]  # title, path relative to report/ (None: not drawn), note

NEEDS = {"short_side": "filter", "face_size": "filter", "sim_to_centroid": "verify", "mask_area": "segment",
         "caption_words": "caption", "class_words": "caption"} | dict.fromkeys(METRICS, "verify")
NOTES = {"face_size": "only faces that reach filter.min_face_size are stored, so the histogram starts there",
         "sharpness": "of the target face; runs filtered before quality evidence was measured have none",
         "pitch": "the estimate's zero depends on the detector's nose landmark (YuNet reads level faces near -18)"}


def verify_threshold(gathered: Gathered) -> float | None:
    """The threshold verify applied, as its rows record it (None: no verified row, or rows made before it)."""
    return gathered.calibration["threshold"] if gathered.calibration else None


def write_figures(run: RunDir, state: RunState, gathered: Gathered, threshold: float | None) -> list[Figure]:
    run.write_bytes("report/funnel.png", funnel_png([stage.counts for stage in state.stages]))
    lines = {
        "short_side": line(state.config.filter.min_short_side, "filter.min_short_side"),
        "face_size": line(state.config.filter.min_face_size, "filter.min_face_size"),
        "sim_to_centroid": line(threshold, "verify.threshold"),
        **thresholds(state.config, gathered.calibration),
    }
    pngs = {
        name: None if hist.empty else histogram_png(hist, *lines.get(name, (None, "")))
        for name, hist in gathered.dists.hists.items()
    }
    words = gathered.dists.class_words
    pngs["class_words"] = words_png(words) if words else None
    titles = {name: hist.title for name, hist in gathered.dists.hists.items()} | {"class_words": "Class words"}
    ran = {stage.name for stage in state.stages if stage.kept}
    return [_write(run, name, titles[name], png, NEEDS[name] in ran) for name, png in pngs.items()]


def _write(run: RunDir, name: str, title: str, png: bytes | None, stage_ran: bool) -> Figure:
    """Writes a figure, or removes an older one that no longer has data (a re-run emptied it)."""
    path = f"{name}.png"
    if png is None:
        run.delete(f"report/{path}")
        why = "it measured nothing" if stage_ran else "it has not run yet"
        return title, None, f"no data: needs {NEEDS[name]}, and {why}"
    run.write_bytes(f"report/{path}", png)
    return title, path, NOTES.get(name, "")
