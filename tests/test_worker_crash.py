"""A Ray worker killed in the middle of a task: the task is retried and the run still completes.

The run is over a few of test_resume's identities, compared with their rows of its uninterrupted run
(`reference`, which test_resume builds anyway): the same kill mid-filter, fewer photos through the model
stages, and each case of the whole tree kept: photos filter drops, an identity verify drops (the later
stages' tasks without input rows), identities kept into the shards."""

from __future__ import annotations

import os
import shutil
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

# a task per identity; jeff_bezos_04 is dropped by verify, jack_dorsey_03 keeps 3 of its 5 photos past filter
FEW = ("jack_dorsey_03", "leonardo_dicaprio_07", "elon_musk_01", "jeff_bezos_04")


def subset_tree(tree: dict, root: Path, identities: tuple[str, ...]) -> dict:
    """A tree like `tree` (test_resume's `args` reads it) of `identities` alone: their photo folders, copied, and
    a names file of them."""
    for identity in identities:
        shutil.copytree(tree["root"] / "photos" / identity, root / "photos" / identity)
    (root / "names.txt").write_text("\n".join(identities) + "\n")
    return {"root": root}


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
        assert image_ids(out, stage) == [row for row in image_ids(reference, stage) if row[0] in FEW], stage
    assert stage_rows(out, "filter")
    assert shard_rows(out) == [row for row in shard_rows(reference) if row[0] in FEW]
