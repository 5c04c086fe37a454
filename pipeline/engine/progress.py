"""What a run shows its user: the console every command prints to, and a stage's progress bar."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

console = Console(stderr=True)
if not console.is_terminal:
    console.width = 160  # logs and CI: room for the reasons column


class TaskRate(ProgressColumn):
    """Tasks per second over the whole stage (rich's own speed columns count bytes)."""

    def render(self, task: Task) -> Text:
        rate = task.completed / task.elapsed if task.elapsed else 0.0
        return Text(f"{rate:.2f} tasks/s", style="progress.data.speed")


def task_progress() -> Progress:
    """A stage's bar: tasks done of its total, rows kept so far, tasks per second, time left."""
    return Progress(
        TextColumn("[bold]{task.description:<8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tasks"),
        TextColumn("{task.fields[rows]}"),
        TaskRate(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def plain_text(table: Table) -> str:
    """A rich table as plain text (the dataset card is Markdown)."""
    capture = Console(width=120, record=True, file=io.StringIO())
    capture.print(table)
    return capture.export_text()
