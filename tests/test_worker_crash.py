"""A Ray worker killed in the middle of a task: the task is retried and the run still completes.

The run is over a few of test_resume's identities (tests/worker_crash_tree.py), compared with their rows of
its uninterrupted run: the same kill mid-filter, fewer photos through the model stages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.engine.registry import STAGE_NAMES
from tests.conftest import ONE_ACTOR, REPO, stage_rows
from tests.test_resume import (  # noqa: F401  (reference and tree: session fixtures, built once)
    args,
    image_ids,
    kill_session,
    reference,
    shard_rows,
    tree,
)
from tests.worker_crash_tree import FEW, reference_ids, reference_shard_rows, subset_tree


def stage_workers() -> list[int]:
    """Pids of Ray actor processes running our task executor."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                command = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "TaskExecutor" in command and "MapWorker" in command:
                pids.append(int(proc.name))
    return pids


@pytest.mark.slow
def test_killed_worker_is_replaced_and_its_task_retried(tree, reference, tmp_path) -> None:  # noqa: F811
    out, few = tmp_path / "run", subset_tree(tree, tmp_path / "few", FEW)
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "--stage", "all", *args(few, out), *ONE_ACTOR],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        deadline, killed = time.monotonic() + 120, None
        while killed is None and time.monotonic() < deadline and process.poll() is None:
            done = out / "stages" / "filter" / "_done"
            workers = stage_workers()
            if done.is_dir() and any(done.iterdir()) and workers:
                killed = workers[0]
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        output, _ = process.communicate(timeout=300)
    finally:
        kill_session(process.pid)
    assert killed is not None, "a filter worker was found and killed mid-stage"
    assert process.returncode == 0, output[-3000:]
    for stage in STAGE_NAMES[:-1]:
        assert image_ids(out, stage) == reference_ids(reference, stage, FEW), stage
    assert stage_rows(out, "filter")
    assert shard_rows(out) == reference_shard_rows(reference, FEW)
