"""Crash and resume: one run SIGKILLed in each stage in turn (each resume is killed in the next stage),
then resumed to the end and compared with an uninterrupted run: its shards and every stage's table.

One chain rather than a run per stage: each stage still has a kill land mid-stage and a resume that
finishes it, but the stages' work is done about once, not once for each earlier stage killed."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.core.markers import read_markers
from pipeline.core.rundir import TMP_MARK, RunDir
from pipeline.engine.registry import SHARD, STAGE_NAMES
from tests.conftest import REPO, built_once, cpu_run_args, run_cli, stage_rows

IDENTITIES = 8  # tasks per stage: enough that a kill after the first finished task lands mid-stage
# Where a killed stage's writers leave temporaries besides stages/<stage>/ (crawl: its tasks' folders).
WRITTEN_BESIDES = {"crawl": ("raw/",), SHARD: ("shards/",)}

# The fixtures below are built once a session (`built_once`): test_worker_crash and test_two_hosts import them,
# and pytest would run an imported fixture again for each module that holds it (the uninterrupted run takes
# minutes).
@pytest.fixture(scope="session")
def tree(tmp_path_factory, faces) -> dict:
    """Identities, each a folder of copies of one labelled person's real photos (the local source follows
    no link out of its root)."""
    return {"root": built_once(tmp_path_factory, "many", lambda root: photo_tree(root, faces))}


def photo_tree(root: Path, faces: dict) -> Path:
    people = sorted(faces["identities"])
    names = []
    for index in range(IDENTITIES):
        person = people[index % len(people)]
        folder = root / "photos" / f"{person}_{index:02d}"
        folder.mkdir(parents=True)
        for photo in faces["identities"][person]:
            shutil.copyfile(faces["images"] / photo, folder / photo)
        names.append(folder.name)
    (root / "names.txt").write_text("\n".join(names) + "\n")
    return root


def args(tree: dict, out: Path) -> list[str]:
    # a shard per identity: the shard step then has a task per kept identity, and a kill can land between them;
    # a name at a time per crawl worker, a task per Ray call in every stage: tasks done together (8 names crawled side
    # by side, verify's 8 tasks in one call) end within milliseconds, and no kill lands between them
    return cpu_run_args(tree["root"] / "names.txt", out, tree["root"] / "photos", "--set=shard.max_rows=1",
                        "--set=crawl.download.names_per_worker=1", "--set=run.max_tasks_per_call=1")


def image_ids(out: Path, stage: str) -> list[tuple[str, str, str]]:
    return sorted((row["identity"], row["image_id"] or "", row["status"]) for row in stage_rows(out, stage))


def shard_rows(out: Path) -> list[tuple[str, str]]:
    """(identity, image_id) of every row of the final shards, which must be exactly the ones the index names."""
    index = pq.read_table(out / "shards" / "_index.parquet").to_pylist()
    files = sorted((out / "shards").glob("train-*.parquet"))
    assert [file.name for file in files] == sorted({entry["shard"] for entry in index})
    tables = [pq.read_table(file, columns=["identity", "image_id"]) for file in files]
    rows = [(row["identity"], row["image_id"]) for table in tables for row in table.to_pylist()]
    assert len(rows) == sum(entry["num_rows"] for entry in index)
    return sorted(rows)


def kill_session(leader: int) -> None:
    """SIGKILL every live process of the session `leader` started: Ray gives each worker a process
    group of its own, so killpg alone leaves workers finishing (and writing) their tasks."""
    while members := [pid for pid, session, state in _processes() if session == leader and state != "Z"]:
        for pid in members:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _processes() -> list[tuple[int, int, str]]:
    """(pid, session id, state) of every process, from /proc/<pid>/stat."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with suppress(OSError):  # gone meanwhile
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()  # after "pid (command)"
                found.append((int(proc.name), int(fields[3]), fields[0]))
    return found


def finished(out: Path, stage: str) -> list[Path]:
    """What `stage` has finished so far: its tasks' done-markers, or the shard step's shards."""
    if stage == SHARD:
        return sorted((out / "shards").glob("train-*.parquet"))
    return sorted((out / "stages" / stage / "_done").glob("*.json"))


def empty_tasks(out: Path, stage: str) -> int:
    """Tasks without an input row: done before any task runs, with an index entry and no marker file."""
    return sum(not marker.part for marker in read_markers(RunDir(str(out)), stage).values())


def kill_mid_stage(tree: dict, out: Path, stage: str) -> tuple[int, int]:
    """Start (or resume) the whole run and SIGKILL all of it as soon as `stage` finished a task;
    returns the run's pid and the stage's finished tasks."""
    # niced: on a busy machine (the suite's other worker) this watcher must see the first marker and kill
    # before the stage's other tasks finish
    process = subprocess.Popen(
        ["nice", "-n", "10", sys.executable, "-m", "pipeline", "run", "--stage", "all", *args(tree, out)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 300  # a resume first finishes the stage killed before
    # at once, not after a few: crawl, verify, crop, caption and the shard step finish a task every ~0.1 s
    while time.monotonic() < deadline and process.poll() is None and not finished(out, stage):
        time.sleep(0.002)
    kill_session(process.pid)
    process.wait()
    return process.pid, len(finished(out, stage))


def run_logs(out: Path, pid: int | str = "*") -> set[Path]:
    """The logs of the runs in `out` (each names its process), or of the run `pid`."""
    return set((out / "logs").glob(f"run-*-{pid}.log"))


def planned(log: Path) -> dict[str, tuple[int, int]]:
    """(tasks to run, tasks done) of each per-identity stage, as the run that wrote `log` planned them."""
    lines = re.findall(r" (\w+): (\d+) tasks to run, (\d+) done", log.read_text())  # the driver's debug lines
    return {stage: (int(todo), int(done)) for stage, todo, done in lines}


def assert_resumed(log: Path, reference: Path, stage: str, finished_at_kill: int) -> None:
    """The resume after a kill mid-`stage` redid none of its finished tasks, nor any task of an earlier stage."""
    plans = planned(log)
    assert plans[stage][1] == finished_at_kill + empty_tasks(reference, stage), "finished tasks are not redone"
    assert [name for name in STAGE_NAMES[: STAGE_NAMES.index(stage)] if plans[name][0]] == [], "no task twice"


def temporaries(out: Path) -> list[str]:
    return sorted(str(path.relative_to(out)) for path in out.rglob("*") if TMP_MARK in path.name)


def plant_temporaries(out: Path) -> list[str]:
    """A temporary where each kind of writer leaves one when killed (a crawl task's part and download, a
    shard), and that crawl task to redo: its marker removed."""
    marker = finished(out, "crawl")[0]
    marker.unlink()
    written = [f"stages/crawl/part-{marker.stem}.parquet", f"raw/{marker.stem}/0123.jpg", "shards/train-0.parquet"]
    planted = [f"{rel}{TMP_MARK}0123" for rel in written]
    for rel in planted:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(b"killed mid-write")
    return planted


def assert_visible_files_whole(out: Path) -> None:
    """A reader sees only whole files: a writer's temporary has another name."""
    for path in out.rglob("*.parquet"):
        pq.read_table(path)
    for path in out.rglob("*.json"):
        json.loads(path.read_bytes())
    for path in (out / "raw").rglob("*.*"):
        if TMP_MARK not in path.name:  # a download is named by its content's hash
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem, path


@pytest.fixture(scope="session")
def reference(tree, tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "reference", lambda folder: uninterrupted_run(tree, folder / "run")) / "run"


def uninterrupted_run(tree: dict, out: Path) -> Path:
    result = run_cli("run", "--stage", "all", *args(tree, out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.slow
def test_a_run_killed_in_any_stage_resumes_to_the_same_shards(tree, reference, tmp_path) -> None:
    """Killed mid-crawl, resumed and killed mid-filter, ..., mid-shard, then resumed to the end. Each resume
    finishes the stage killed before without redoing a finished task and removes the temporaries its
    killed writers left. The last one also finds a temporary where each kind of writer leaves one, and a
    crawl task to redo."""
    out = tmp_path / "run"
    killed: tuple[str, int] | None = None  # the stage killed last, and its tasks finished then
    for stage in STAGE_NAMES:
        pid, finished_at_kill = kill_mid_stage(tree, out, stage)
        assert 0 < finished_at_kill < len(finished(reference, stage)), f"the kill must land mid-{stage}"
        assert_visible_files_whole(out)
        where = (f"stages/{stage}/", *WRITTEN_BESIDES.get(stage, ()))
        assert [path for path in temporaries(out) if not path.startswith(where)] == [], "earlier ones removed"
        if killed:
            (log,) = run_logs(out, pid)
            assert_resumed(log, reference, *killed)
        killed = stage, finished_at_kill

    planted, before = plant_temporaries(out), run_logs(out)
    result = run_cli("run", "--stage", "all", *args(tree, out))
    assert result.returncode == 0, result.stderr
    (log,) = run_logs(out) - before
    # the shard step rewrites every shard until its index is written: nothing to skip
    assert {stage: todo for stage, (todo, _) in planned(log).items() if todo} == {"crawl": 1}, "only the planted task"
    rows = shard_rows(out)
    assert rows == shard_rows(reference)
    assert len(set(rows)) == len(rows), "no row twice"
    for name in STAGE_NAMES[:-1]:  # and every per-identity stage on the way
        assert image_ids(out, name) == image_ids(reference, name)
    assert_visible_files_whole(out)
    assert [rel for rel in planted if (out / rel).exists()] == []
    assert temporaries(out) == []
