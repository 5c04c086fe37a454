"""The per-stage marker index: few requests on an object store, crash-safe, empty tasks done without parts."""

from __future__ import annotations

import pytest

from benchmarks.object_store import BUCKET, cpu_config, resume, s3_server, synthetic_run
from pipeline.core.names import Identity
from pipeline.core.rundir import RunDir
from pipeline.engine.markers import Marker, index_path, marker_path, read_markers, record_markers, write_marker_file
from pipeline.engine.runner import plan_stage
from stages.crawl import CrawlStage
from stages.filter import FilterStage


@pytest.fixture(scope="module")
def store():
    with s3_server() as server:
        yield server


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
    from pipeline.engine.markers import read_part

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
