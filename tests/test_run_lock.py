"""The run lock: a second writing command on one run directory is refused with the holder's name; a
stale lock (its process gone) is taken over; on S3 the lock is a conditional write."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.errors import UserError
from pipeline.core.rundir import RunDir
from pipeline.core.runlock import LOCK, run_lock


@pytest.fixture
def other_process():
    """A live process that is not this one."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process.pid
    process.kill()
    process.wait()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(root: Path, pid: int, host: str = socket.gethostname()) -> None:
    root.mkdir(parents=True, exist_ok=True)
    holder = {"pid": pid, "host": host, "started": "2026-01-01T00:00:00+00:00", "command": "run", "token": "t"}
    (root / LOCK).write_text(json.dumps(holder))


def test_a_second_command_is_refused_naming_the_holder(tmp_path) -> None:
    run = RunDir(str(tmp_path))
    with run_lock(run, "run") as holder:
        with pytest.raises(UserError) as refused, run_lock(RunDir(run.uri), "remove"):
            pass
        assert f"is in use by `run` (pid {holder.pid} on {holder.host}, since {holder.started})" in str(refused.value)
        assert (tmp_path / LOCK).exists()
    assert not (tmp_path / LOCK).exists()


def test_the_lock_is_released_when_the_command_fails(tmp_path) -> None:
    run = RunDir(str(tmp_path))
    with pytest.raises(KeyboardInterrupt), run_lock(run, "run"):
        raise KeyboardInterrupt
    with run_lock(run, "run"):
        pass


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog) -> None:
    write_lock(tmp_path, dead_pid())
    with caplog.at_level(logging.WARNING), run_lock(RunDir(str(tmp_path)), "run") as holder:
        assert json.loads((tmp_path / LOCK).read_text())["token"] == holder.token
    assert "taking over the lock of `run`" in caplog.text and "it runs no more" in caplog.text


def test_a_live_holder_elsewhere_is_not_taken_over(tmp_path) -> None:
    """A pid on another host cannot be checked from here: the lock stands."""
    write_lock(tmp_path, dead_pid(), host="another-host")
    with pytest.raises(UserError, match="on another-host"), run_lock(RunDir(str(tmp_path)), "run"):
        pass


def test_an_unreadable_lock_is_one_error(tmp_path) -> None:
    (tmp_path / LOCK).write_text("garbage{")
    with pytest.raises(UserError, match=f"{LOCK} is unreadable"), run_lock(RunDir(str(tmp_path)), "run"):
        pass


@pytest.mark.parametrize("command", [["run"], ["remove", "--identity", "someone"]])
def test_run_and_remove_exit_2_with_one_line_while_another_run_holds_the_lock(
        tmp_path, capsys, other_process, command: list[str]) -> None:
    from pipeline.__main__ import main

    out = tmp_path / "run"
    write_lock(out, other_process)
    (out / "run.json").write_text(json.dumps({"profile": "default", "stage_hashes": {}, "identities": []}))
    (out / "config.yaml").write_text("{}\n")
    assert main([*command, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {out} is in use by `run` (pid {other_process} on ")


def test_on_s3_the_lock_is_a_conditional_write() -> None:
    from benchmarks.object_store import BUCKET, s3_server

    with s3_server() as (options, log):
        run = RunDir(f"s3://{BUCKET}/locked?{options}")
        start = log.count()
        with run_lock(run, "run") as holder:
            assert log.kinds_since(start) == {"PUT": 1}, "one conditional PUT, no check before it to race with"
            with pytest.raises(UserError, match="is in use by `run`"), run_lock(RunDir(run.uri), "run"):
                pass
            assert json.loads(run.read_bytes(LOCK))["token"] == holder.token
        assert not run.exists(LOCK)
