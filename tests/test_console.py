"""The console shows our lines only: native log lines, child processes' stderr, library warnings and our
debug log go to the run's log file (`logged`); a bug's traceback is in it in full. In-process; the
whole CLI run's console is checked in tests/test_cli.py."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

from pipeline.core.rundir import RunDir
from pipeline.engine.progress import console, logged, task_progress

log = logging.getLogger("pipeline.tests")


def test_what_libraries_print_goes_to_the_log_and_ours_to_the_console(tmp_path, capfd) -> None:
    with logged(RunDir(str(tmp_path)), "run") as path:
        os.write(2, b"core_worker.cc:2465: a native log line\n")  # what Ray's and OpenCV's C++ code write
        subprocess.run([sys.executable, "-c", "import sys; print('a child process line', file=sys.stderr)"],
                       check=True)  # Ray's processes inherit the descriptor
        warnings.warn("a library's UserWarning", UserWarning, stacklevel=1)
        log.warning("our warning")
        log.debug("our detail")
        console.print("our table")
    err = capfd.readouterr().err
    assert "our table" in err and "warning: our warning" in err
    for line in ("native log line", "child process line", "UserWarning", "our detail"):
        assert line not in err
    assert Path(path).parent == tmp_path / "logs" and Path(path).name.startswith("run-")
    text = Path(path).read_text()
    for line in ("native log line", "child process line", "a library's UserWarning", "our warning",
                 "DEBUG pipeline.tests: our detail"):
        assert line in text
    os.write(2, b"after the command\n")
    assert "after the command" in capfd.readouterr().err and "after the command" not in Path(path).read_text()


def test_log_level_shows_more_of_our_log(tmp_path, capfd) -> None:
    with logged(RunDir(str(tmp_path)), "report", level="debug"):
        log.debug("our detail")
    assert "debug: our detail" in capfd.readouterr().err


def test_a_bug_is_in_the_log_in_full(tmp_path, capfd) -> None:
    with pytest.raises(ZeroDivisionError), logged(RunDir(str(tmp_path)), "run") as path:
        1 / 0  # noqa: B018
    text = Path(path).read_text()
    assert "Traceback (most recent call last)" in text and "ZeroDivisionError: division by zero" in text
    assert f"the traceback is in {path}" in capfd.readouterr().err.replace("\n", "")


def test_quiet_hides_the_progress_bars(tmp_path) -> None:
    with logged(RunDir(str(tmp_path)), "run", quiet=True):
        assert task_progress().disable
    assert not task_progress().disable


def test_without_a_run_directory_nothing_is_redirected(tmp_path) -> None:
    with logged(RunDir(str(tmp_path / "missing")), "export") as path:
        assert path == ""
    assert not (tmp_path / "missing").exists()


def test_on_an_object_store_the_log_is_copied_there() -> None:
    from benchmarks.object_store import BUCKET, s3_server

    with s3_server() as (options, _):
        run = RunDir(f"s3://{BUCKET}/logged?{options}")
        with logged(run, "report") as uri:
            log.warning("kept in the store")
        assert uri.startswith(f"s3://{BUCKET}/logged/logs/report-")
        [name] = run.list_files("logs")
        assert "kept in the store" in run.read_bytes(f"logs/{name}").decode()
        assert not (Path(tempfile.gettempdir()) / name).exists()
