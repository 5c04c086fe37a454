"""What a command shows its user: the console every command prints to, a stage's progress bar, and the
log file that takes everything else.

While a command works on a run (`logged`), the process's stderr (file descriptor 2) goes to
`<run>/logs/<command>-<time>.log`: Ray's and OpenCV's native log lines, the lines Ray forwards from its
workers, library warnings and tracebacks land there, with our own log at debug level. The console
writes to the terminal through a copy of the old descriptor: our progress bars, tables and warnings
(our log records at `--log-level`). On an object store the log is written locally and copied there at
the end. Ray is shut down inside, so nothing it prints after an interrupt reaches the terminal.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.markup import escape
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

from pipeline.core.errors import UserError
from pipeline.core.rundir import RunDir

console = Console(stderr=True)
if not console.is_terminal:
    console.width = 160  # logs and CI: room for the reasons column

OUR_LOGGERS = ("pipeline", "stages")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FILE_ONLY = {"file_only": True}  # `extra` of a record the console does not show

log = logging.getLogger(__name__)


@dataclass
class View:
    """How much the console shows: `quiet`, no progress bars and no tables (warnings, errors, results)."""

    quiet: bool = False


view = View()


class ConsoleHandler(logging.Handler):
    """Our log records on the console, as `level: message`."""

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(record, "file_only", False):
            console.print(f"{record.levelname.lower()}: {record.getMessage()}", markup=False, highlight=False)


@contextmanager
def logged(run: RunDir, command: str, level: str = "warning", quiet: bool = False) -> Iterator[str]:
    """Run the block with stderr in the run's log file (module docstring); yields the log's URI, "" when
    there is no run directory to hold one (a command that fails at once, finding nothing there)."""
    name = f"{command}-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"
    path = _log_path(run, name)
    view.quiet = quiet
    try:
        if path is None:
            yield ""
            return
        with _stderr_to(path), _logging_to(path, level):
            try:
                yield path if not run.object_store else f"{run.uri.partition('?')[0]}/logs/{name}"
            except (UserError, KeyboardInterrupt) as exc:
                log.error("%s", str(exc) or "interrupted", extra=FILE_ONLY)
                raise
            except Exception:
                log.exception("unexpected error, a bug: please report it", extra=FILE_ONLY)
                console.print(f"[red]unexpected error[/] (a bug, not your mistake): the traceback is in {escape(path)}")
                raise
            finally:
                _stop_ray()
    finally:
        view.quiet = False
        if path is not None and run.object_store:
            _copy_log(run, path, name)


def _log_path(run: RunDir, name: str) -> str | None:
    """Where the log is written: in the run directory on a local disk, a local temporary for a store."""
    if run.object_store:
        return str(Path(tempfile.gettempdir()) / name)
    root = Path(run.root)
    if not root.is_dir():
        return None
    try:
        (root / "logs").mkdir(exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write the log in {root / 'logs'}: {exc}", "check the run directory's permissions") from exc
    return str(root / "logs" / name)


@contextmanager
def _stderr_to(path: str) -> Iterator[None]:
    """File descriptor 2 to `path`; the console to a copy of where it pointed (or to sys.stderr, when
    that is not descriptor 2: a test's capture)."""
    sys.stderr.flush()
    saved = os.dup(2)
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    terminal = _terminal(saved)
    console.file = terminal
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        console.file = None  # back to sys.stderr
        if terminal is not sys.stderr:
            terminal.close()


def _terminal(saved: int) -> IO[str]:
    try:
        on_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, io.UnsupportedOperation):  # a StringIO, a test's capture
        on_fd2 = False
    return os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace") if on_fd2 else sys.stderr


@contextmanager
def _logging_to(path: str, level: str) -> Iterator[None]:
    """Our loggers at debug level to the file and at `level` to the console; warnings.warn to the file."""
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter(LOG_FORMAT))
    to_console = ConsoleHandler(level.upper())
    root, ours = logging.getLogger(), [logging.getLogger(name) for name in OUR_LOGGERS]
    levels = [logger.level for logger in ours]
    root.addHandler(to_file)
    for logger in ours:
        logger.setLevel(logging.DEBUG)
        logger.addHandler(to_console)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for logger, old in zip(ours, levels, strict=True):
            logger.removeHandler(to_console)
            logger.setLevel(old)
        root.removeHandler(to_file)
        to_file.close()


def _stop_ray() -> None:
    """Ray's shutdown, while its output still goes to the log (else it prints after the command's last line)."""
    ray: Any = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _copy_log(run: RunDir, path: str, name: str) -> None:
    try:
        run.write_bytes(f"logs/{name}", Path(path).read_bytes())
    except OSError as exc:
        console.print(f"[yellow]warning:[/] the log stays at {path}: copying it to {run.uri} failed: {exc}")
        return
    Path(path).unlink()


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
        disable=view.quiet,
        redirect_stdout=False,  # not through the console: what libraries print goes to the log
        redirect_stderr=False,
    )


def plain_text(table: Table) -> str:
    """A rich table as plain text (the dataset card is Markdown)."""
    capture = Console(width=120, record=True, file=io.StringIO())
    capture.print(table)
    return capture.export_text()
