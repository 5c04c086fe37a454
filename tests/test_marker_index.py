"""The per-stage marker index: few requests on an object store, crash-safe, empty tasks done without parts."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from benchmarks.object_store import BUCKET, cpu_config, resume, s3_server, synthetic_run
from pipeline.core.names import Identity
from pipeline.core.rundir import RunDir
from pipeline.core.markers import (
    Marker,
    index_path,
    marker_path,
    part_path,
    read_markers,
    record_markers,
    write_marker,
    write_marker_file,
)
from pipeline.engine.runner import plan_stage
from stages.crawl import CrawlStage
from stages.filter import FilterStage
from tests.conftest import labelled_tree


@pytest.fixture(scope="module")
def store():
    with s3_server() as server:
        yield server


@pytest.mark.slow
def test_a_resume_costs_about_the_same_requests_at_3n(store) -> None:
    options, log = store
    config, counts = cpu_config(), []
    for n in (40, 120):
        uri = f"s3://{BUCKET}/scale_{n}?{options}"
        identities = synthetic_run(RunDir(uri), config, n)
        start = log.count()
        resume(RunDir(uri), config, identities)
        counts.append(log.count() - start)
    assert counts[1] <= 1.3 * counts[0], counts


def marker(stage: str, task: str, digest: str = "in", kept: int = 1) -> Marker:
    return Marker(stage, task, CrawlStage.fingerprint(cpu_config()), digest, f"out-{task}", kept, kept, {"ok": kept})


def test_a_marker_the_index_lacks_still_counts_once(store) -> None:
    """Killed after the marker, before the index: the next plan finds the task done, not twice."""
    options, _ = store
    run = RunDir(f"s3://{BUCKET}/crash?{options}")
    people = [Identity(f"p{i}", f"P {i}") for i in range(3)]
    from pipeline.engine.runner import name_digest

    done = [marker("crawl", p.slug, name_digest(p.name)) for p in people]
    record_markers(run, "crawl", done[:2])
    write_marker_file(run, done[2])  # the worker wrote it; the driver died before the index
    fresh = RunDir(run.uri)
    plan = plan_stage(CrawlStage, None, cpu_config(), fresh, people)
    assert not plan.todo and plan.skipped == 3
    assert set(read_markers(RunDir(run.uri), "crawl")) == {"p0", "p1", "p2"}  # written back to the index


def test_a_task_without_marker_runs_again(store) -> None:
    options, _ = store
    run = RunDir(f"s3://{BUCKET}/nomarker?{options}")
    people = [Identity("q0", "Q 0")]
    plan = plan_stage(CrawlStage, None, cpu_config(), run, people)
    assert [spec["task"] for spec in plan.todo] == ["q0"]


def test_empty_tasks_write_no_part_and_resume_as_done(tmp_path) -> None:
    from pipeline.engine.driver import execute
    from pipeline.core.markers import read_part

    run, config = RunDir(str(tmp_path / "run")), cpu_config()
    people = [Identity("e0", "E 0")]
    write_marker_file(run, Marker("crawl", "e0", CrawlStage.fingerprint(config), "x", "crawl-out", 2, 2, {"dropped": 2}))
    plan = plan_stage(FilterStage, CrawlStage, config, run, people)
    assert not plan.todo and len(plan.empty) == 1
    execute(FilterStage, CrawlStage, config, run, plan)  # records it; no Ray is started for it
    assert not (tmp_path / "run" / "stages" / "filter" / "part-e0.parquet").exists()
    assert not (tmp_path / "run" / marker_path("filter", "e0")).exists()
    assert (tmp_path / "run" / index_path("filter")).exists()
    again = plan_stage(FilterStage, CrawlStage, config, RunDir(run.uri), people)
    assert not again.todo and not again.empty and again.skipped == 1
    assert read_part(run, "filter", "e0", ["status"]).num_rows == 0


@pytest.fixture
def crawled(tmp_path, faces):
    """Two identities' real photos crawled from local folders (in-process, as an actor runs a task)."""
    from pipeline.engine.runner import TaskExecutor

    labelled_tree(tmp_path, faces, ["matt_damon", "katy_perry"])
    config = cpu_config((f"crawl.local_root={tmp_path / 'photos'}", "crawl.source=local"))
    run, people = RunDir(str(tmp_path / "run")), [Identity(slug, slug) for slug in ("matt_damon", "katy_perry")]
    executor = TaskExecutor(CrawlStage, None, config, run.uri)
    results = [executor.execute(spec) for spec in plan_stage(CrawlStage, None, config, run, people).todo]
    record_markers(run, "crawl", [Marker.from_json(result.marker) for result in results])
    run.write_json("run.json", {"profile": "cpu", "stage_hashes": {"crawl": CrawlStage.fingerprint(config)},
                                "identities": [[p.slug, p.name] for p in people]})
    return run, people, config


def todo(run: RunDir, people: list[Identity], config) -> list[str]:
    """The crawl tasks a fresh command (a new RunDir: nothing cached) would run."""
    return [spec["task"] for spec in plan_stage(CrawlStage, None, config, RunDir(run.uri), people).todo]


def status_lines(run: RunDir, capsys) -> list[str]:
    from pipeline.__main__ import main

    assert main(["status", "--config", "cpu", "--out", run.uri]) == 0
    return capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("index", [True, False], ids=["in the index", "only a file"])
@pytest.mark.parametrize("content", [b"garbage{", b"[]", b'{"stage": "crawl"}', b"\xff\xfe"])
def test_a_corrupt_marker_means_not_done(crawled, capsys, content: bytes, index: bool) -> None:
    run, people, config = crawled
    (Path(run.root) / marker_path("crawl", "katy_perry")).write_bytes(content)
    if not index:
        (Path(run.root) / index_path("crawl")).unlink()
    assert todo(run, people, config) == ["katy_perry"]
    assert "crawl: 1 tasks to redo at the next run: their markers are not trusted (corrupt_marker 1)" in status_lines(
        run, capsys)


def test_a_corrupt_marker_index_is_rebuilt_from_the_marker_files(crawled, capsys) -> None:
    run, people, config = crawled
    (Path(run.root) / index_path("crawl")).write_bytes(b"garbage{")
    assert todo(run, people, config) == []
    assert set(read_markers(RunDir(run.uri), "crawl")) == {"matt_damon", "katy_perry"}
    assert any(line.startswith("│ crawl") and "2/2" in line for line in status_lines(run, capsys))


def test_a_truncated_part_is_redone(crawled, capsys) -> None:
    run, people, config = crawled
    part = Path(run.root) / part_path("crawl", "matt_damon")
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    assert "crawl: 1 tasks to redo at the next run: their markers are not trusted (part_changed 1)" in status_lines(
        run, capsys)
    assert todo(run, people, config) == ["matt_damon"]


def test_a_missing_part_is_redone(crawled) -> None:
    run, people, config = crawled
    (Path(run.root) / part_path("crawl", "katy_perry")).unlink()
    assert todo(run, people, config) == ["katy_perry"]


def test_a_reader_refuses_a_part_changed_in_place(crawled) -> None:
    """Same size, other bytes (what a size check misses, and what an object store's resume never lists): the
    downstream task reading it fails as `input changed`, and writes nothing."""
    from pipeline.engine.runner import INPUT_CHANGED, TaskExecutor

    run, people, config = crawled
    part = Path(run.root) / part_path("crawl", "katy_perry")
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    spec = next(s for s in plan_stage(FilterStage, CrawlStage, config, RunDir(run.uri), people).todo
                if s["task"] == "katy_perry")
    result = TaskExecutor(FilterStage, "crawl", config, run.uri).execute(spec)
    assert result.error.startswith(f"{INPUT_CHANGED}stages/crawl/part-katy_perry.parquet is not the part")
    assert not (Path(run.root) / part_path("filter", "katy_perry")).exists()


def test_a_marker_rewritten_after_its_part_is_pinned_to_the_new_part(crawled) -> None:
    """A takedown rewrites a part, then its marker: the marker pins the new part."""
    run, people, config = crawled
    old = read_markers(run, "crawl")["matt_damon"]
    table = run.read_table(part_path("crawl", "matt_damon"))
    run.write_table(part_path("crawl", "matt_damon"), table.slice(0, 1))
    write_marker(run, old)
    assert todo(run, people, config) == []


def test_a_corrupt_marker_on_an_object_store_means_not_done(store) -> None:
    options, _ = store
    run = RunDir(f"s3://{BUCKET}/corrupt?{options}")
    people = [Identity("c0", "C 0"), Identity("c1", "C 1")]
    from pipeline.engine.runner import name_digest

    for person in people:
        write_marker_file(run, marker("crawl", person.slug, name_digest(person.name)))
    run.write_bytes(marker_path("crawl", "c1"), b"garbage{")
    assert [spec["task"] for spec in plan_stage(CrawlStage, None, cpu_config(), RunDir(run.uri), people).todo] == ["c1"]


def test_a_pinned_part_that_is_gone_is_a_changed_part_not_an_error(tmp_path) -> None:
    """On an object store resume lists no part sizes: the reader finds the part gone, and the task that read
    it is redone (PartChanged) rather than failing at every run."""
    from pipeline.core.markers import PartChanged, read_pinned_part, write_part

    run = RunDir(str(tmp_path / "run"))
    size, digest = write_part(run, "filter", "someone", pa.table({"status": ["ok"]}))
    pin = f"{size}:{digest}"
    assert read_pinned_part(run, "filter", "someone", pin).num_rows == 1
    run.delete(part_path("filter", "someone"))
    with pytest.raises(PartChanged, match="gone"):
        read_pinned_part(run, "filter", "someone", pin)
