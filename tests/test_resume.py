"""Crash and resume: SIGKILL the whole run during each stage in turn, run it again, and compare its
final shards with an uninterrupted run's."""

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

from pipeline.core.rundir import TMP_MARK, RunDir
from pipeline.core.markers import read_markers
from pipeline.engine.registry import SHARD, STAGE_NAMES
from tests.conftest import REPO, cpu_run_args, run_cli, stage_rows

IDENTITIES = 8  # tasks per stage: enough that a kill after the first finished task lands mid-stage


@pytest.fixture(scope="module")
def tree(tmp_path_factory, faces) -> dict:
    """Identities, each a folder of copies of one labelled person's real photos (the local source follows
    no link out of its root)."""
    root = tmp_path_factory.mktemp("many")
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
    return {"root": root}


def args(tree: dict, out: Path) -> list[str]:
    # a shard per identity: the shard step then has a task per kept identity, and a kill can land between them
    return cpu_run_args(tree["root"] / "names.txt", out, tree["root"] / "photos", "--set=shard.max_rows=1")


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


def start_at(reference: Path, out: Path, stage: str) -> None:
    """The run directory as a whole run leaves it when `stage` starts: every earlier stage done.
    Copied from the uninterrupted run rather than recomputed, which keeps each case short."""
    upstream = STAGE_NAMES[: STAGE_NAMES.index(stage)]
    if upstream:
        shutil.copytree(reference / "raw", out / "raw")  # crawl's downloads, read by later stages
    for name in upstream:
        shutil.copytree(reference / "stages" / name, out / "stages" / name)


def kill_mid_stage(tree: dict, out: Path, stage: str) -> int:
    """Start the whole run and SIGKILL all of it as soon as `stage` finished a task; returns its finished tasks."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "--stage", "all", *args(tree, out)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 120
    # at once, not after a few: crawl, verify, crop, caption and the shard step finish a task every ~0.1 s
    while time.monotonic() < deadline and process.poll() is None and not finished(out, stage):
        time.sleep(0.002)
    kill_session(process.pid)
    process.wait()
    return len(finished(out, stage))


def assert_visible_files_whole(out: Path) -> None:
    """A reader sees only whole files: a writer's temporary has another name."""
    for path in out.rglob("*.parquet"):
        pq.read_table(path)
    for path in out.rglob("*.json"):
        json.loads(path.read_bytes())
    for path in (out / "raw").rglob("*.*"):
        if TMP_MARK not in path.name:  # a download is named by its content's hash
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem, path


@pytest.fixture(scope="module")
def reference(tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    result = run_cli("run", "--stage", "all", *args(tree, out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_a_run_killed_in_any_stage_resumes_to_the_same_shards(tree, reference, tmp_path, stage: str) -> None:
    out = tmp_path / "run"
    start_at(reference, out, stage)
    total = len(finished(reference, stage))
    finished_at_kill = kill_mid_stage(tree, out, stage)
    assert 0 < finished_at_kill < total, "the kill must land mid-stage"
    assert_visible_files_whole(out)

    result = run_cli("run", "--stage", "all", *args(tree, out))
    assert result.returncode == 0, result.stderr
    if stage != SHARD:  # the shard step rewrites every shard until its index is written: nothing to skip
        line = next(line for line in result.stderr.splitlines() if line.startswith(f"│ {stage} "))
        skipped = int(re.search(r"\+(\d+) done", line).group(1))
        assert skipped == finished_at_kill + empty_tasks(reference, stage), "finished tasks are not redone"
    rows = shard_rows(out)
    assert rows == shard_rows(reference)
    assert len(set(rows)) == len(rows), "no row twice"
    for name in STAGE_NAMES[:-1]:  # and every per-identity stage on the way
        assert image_ids(out, name) == image_ids(reference, name)
    assert_visible_files_whole(out)
    assert [path for path in out.rglob("*") if TMP_MARK in path.name] == []


@pytest.mark.slow
def test_a_resume_removes_the_temporaries_of_writers_killed_mid_write(tree, reference, tmp_path) -> None:
    """A temporary where each kind of writer leaves one when killed, with a crawl task and the shard step to do."""
    out = tmp_path / "run"
    start_at(reference, out, SHARD)
    marker = finished(out, "crawl")[0]
    marker.unlink()
    written = [f"stages/crawl/part-{marker.stem}.parquet", f"raw/{marker.stem}/0123.jpg", "shards/train-0.parquet"]
    for rel in written:
        temporary = out / f"{rel}{TMP_MARK}0123"
        temporary.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_bytes(b"killed mid-write")

    result = run_cli("run", "--stage", "all", *args(tree, out))
    assert result.returncode == 0, result.stderr
    assert [str(path.relative_to(out)) for path in out.rglob("*") if TMP_MARK in path.name] == []
