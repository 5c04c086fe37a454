"""Counts per stage, from a run's results or from its markers, rendered as tables."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from rich.table import Table

from pipeline.core.rundir import RunDir
from pipeline.core.schema import DROPPED, FAILED, OK
from pipeline.core.markers import distrusted, read_markers

TOP_REASONS = 4


@dataclass
class StageCounts:
    stage: str
    tasks_done: int = 0
    tasks_total: int = 0
    tasks_failed: int = 0
    tasks_skipped: int = 0  # already done by an earlier run
    tasks_reused: int = 0  # done on the driver from rows judged before (runner.reuse): no worker, no model
    rows_in: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0  # the stage's wall time, worker start-up and model loading included
    first_start: float | None = None  # epoch seconds: the span of the tasks themselves
    last_end: float | None = None
    redo: Counter[str] = field(default_factory=Counter)  # tasks whose marker was not trusted, by why
    devices: Counter[str] = field(default_factory=Counter)  # tasks by the device their worker held ("GPU", "CPU")

    def add(self, rows_in: int, statuses: dict[str, int], reasons: dict[str, int], device: str = "") -> None:
        self.tasks_done += 1
        if device:
            self.devices[device.split()[0]] += 1  # the kind: "GPU 3" and "GPU 0" are both GPU work
        self.rows_in += rows_in
        self.statuses.update(statuses)
        self.reasons.update(reasons)

    def timed(self, started: float, seconds: float) -> None:
        self.first_start = started if self.first_start is None else min(self.first_start, started)
        self.last_end = max(self.last_end or 0.0, started + seconds)

    @property
    def work_seconds(self) -> float:
        """First task's start to last task's end: the stage's wall time less its start-up."""
        if self.first_start is None or self.last_end is None:
            return 0.0
        return self.last_end - self.first_start


def _reasons(counts: Counter[str]) -> str:
    shown = ", ".join(f"{reason} {count:,}" for reason, count in counts.most_common(TOP_REASONS))
    more = len(counts) - TOP_REASONS
    return f"{shown}, +{more} more" if more > 0 else shown


def device_text(devices: Counter[str]) -> str:
    """Where a stage's tasks ran: "GPU", "CPU", or both with their task counts."""
    return next(iter(devices)) if len(devices) == 1 else ", ".join(f"{d} {n:,}" for d, n in devices.most_common())


def counts_table(title: str, rows: Iterable[StageCounts]) -> Table:
    table = Table(title=title)
    for column in ("stage", "tasks", "rows in", "kept", "dropped", "failed"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    table.add_column("not kept, by reason", min_width=24, ratio=1)
    table.add_column("device")
    table.add_column("seconds", justify="right")
    for row in rows:
        tasks = f"{row.tasks_done:,}/{row.tasks_total:,}"
        if row.tasks_failed:
            tasks += f" ({row.tasks_failed} failed)"
        if row.tasks_skipped:
            tasks = f"+{row.tasks_skipped:,} done" if not row.tasks_total else f"{tasks} +{row.tasks_skipped:,} done"
        table.add_row(
            row.stage,
            tasks,
            f"{row.rows_in:,}",
            f"{row.statuses[OK]:,}",
            f"{row.statuses[DROPPED]:,}",
            f"{row.statuses[FAILED]:,}",
            _reasons(row.reasons),
            device_text(row.devices),
            f"{row.seconds:.1f}" if row.seconds else "",
        )
    return table


def counts_from_markers(run: RunDir, stage: str, tasks: set[str], config_hash: str | None) -> StageCounts:
    """What the run directory holds for one stage; markers of another config are not counted, nor
    those not trusted (counted in `redo`)."""
    counts = StageCounts(stage, tasks_total=len(tasks))
    for task, marker in read_markers(run, stage).items():
        if task in tasks and (config_hash is None or marker.config_hash == config_hash):
            counts.add(marker.rows_in, marker.statuses, marker.reasons, marker.device)
    counts.redo.update(why for task, why in distrusted(run, stage).items() if task in tasks)
    return counts


def redo_lines(rows: Iterable[StageCounts], done: str) -> list[str]:
    """One line per stage with tasks whose marker was not trusted: `done` says what happens to them."""
    return [f"{row.stage}: {row.redo.total():,} tasks {done} ({_reasons(row.redo)})" for row in rows if row.redo]
