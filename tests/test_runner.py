"""Planning from markers and executing tasks, in-process (the same code each Ray actor runs)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.core.config import load_config, resolve_profile
from pipeline.core.names import Identity
from pipeline.core.rundir import RunDir
from pipeline.engine.driver import MAX_CALLS, pool_size, tasks_per_call
from pipeline.core.markers import Marker, part_path, read_markers, write_marker
from pipeline.engine.runner import RETRY, RUN, TaskExecutor, plan_stage
from stages.crawl import CrawlStage
from stages.filter import FilterStage
from stages.verify import VerifyStage
from tests.local_tree import build_tree

IDENTITIES = ["jeff_bezos", "elon_musk", "sundar_pichai"]


@pytest.fixture
def setup(tmp_path, faces):
    build_tree(tmp_path / "photos", faces, IDENTITIES)
    run = RunDir(str(tmp_path / "run"))
    people = [Identity(slug, slug) for slug in IDENTITIES]

    def config(*overrides: str):
        return load_config(resolve_profile("cpu"), ["crawl.source=local", f"crawl.local_root={tmp_path / 'photos'}", *overrides])

    return run, people, config


def run_stage(stage, upstream, config, run, people, **flags):
    plan = plan_stage(stage, upstream, config, run, people, **flags)
    executor = TaskExecutor(stage, upstream.name if upstream else None, config, run.uri)
    results = [executor.execute(spec) for spec in plan.todo]
    assert all(result.error is None for result in results), results
    return plan


def test_a_finished_stage_plans_nothing(setup) -> None:
    run, people, config = setup
    first = run_stage(CrawlStage, None, config(), run, people)
    assert len(first.todo) == 3 and first.skipped == 0
    again = plan_stage(CrawlStage, None, config(), run, people)
    assert (again.todo, again.skipped) == ([], 3)


def test_markers_record_how_long_each_task_took(setup) -> None:
    run, people, config = setup
    run_stage(CrawlStage, None, config(), run, people)
    run_stage(FilterStage, CrawlStage, config(), run, people)
    assert all(marker.seconds > 0 for marker in read_markers(run, "filter").values())


def test_downstream_waits_for_upstream_output(setup) -> None:
    run, people, config = setup
    plan = plan_stage(FilterStage, CrawlStage, config(), run, people)
    assert plan.missing == IDENTITIES and not plan.todo


def test_a_new_threshold_reruns_that_stage_only(setup) -> None:
    run, people, config = setup
    run_stage(CrawlStage, None, config(), run, people)
    run_stage(FilterStage, CrawlStage, config(), run, people)
    changed = config("filter.min_short_side=256")
    assert plan_stage(CrawlStage, None, changed, run, people).skipped == 3
    assert len(plan_stage(FilterStage, CrawlStage, changed, run, people).todo) == 3


def test_new_upstream_output_reruns_only_that_identity_downstream(setup, tmp_path) -> None:
    run, people, config = setup
    run_stage(CrawlStage, None, config(), run, people)
    run_stage(FilterStage, CrawlStage, config(), run, people)
    (tmp_path / "photos" / "elon_musk" / "extra.jpg").write_bytes(b"not really an image")
    run_stage(CrawlStage, None, config(), run, people, force=True)
    plan = plan_stage(FilterStage, CrawlStage, config(), run, people)
    assert [spec["task"] for spec in plan.todo] == ["elon_musk"] and plan.skipped == 2


def test_retry_failed_reruns_only_the_failed_rows(setup) -> None:
    run, people, config = setup
    run_stage(CrawlStage, None, config(), run, people)
    before = run.read_table(part_path("crawl", "elon_musk"))
    _mark_first_ok_row_failed(run, before)

    assert plan_stage(CrawlStage, None, config(), run, people).skipped == 3
    plan = run_stage(CrawlStage, None, config(), run, people, retry_failed=True)
    assert [(spec["task"], spec["mode"]) for spec in plan.todo] == [("elon_musk", RETRY)]

    after = run.read_table(part_path("crawl", "elon_musk"))
    assert sorted(after["image_id"].to_pylist(), key=str) == sorted(before["image_id"].to_pylist(), key=str)
    assert "failed" not in after["status"].to_pylist()
    assert read_markers(run, "crawl")["elon_musk"].failed == 0


def _mark_first_ok_row_failed(run: RunDir, table: pa.Table) -> None:
    """What a transient read error leaves behind: one failed row and a marker counting it."""
    rows = table.to_pylist()
    index = next(i for i, row in enumerate(rows) if row["status"] == "ok")
    rows[index].update(status="failed", reason="read_error", image_id=None, raw_path=None)
    digest = run.write_table(part_path("crawl", "elon_musk"), pa.Table.from_pylist(rows, schema=table.schema))
    marker = read_markers(run, "crawl")["elon_musk"]
    statuses = {**marker.statuses, "ok": marker.kept - 1, "failed": 1}
    write_marker(run, Marker(**{**marker.__dict__, "output_digest": digest, "statuses": statuses}))


class SilentDropFilter(FilterStage):
    """A broken stage that loses a row: the runner must refuse to mark its task done."""

    def process(self, rows: pa.Table) -> pa.Table:
        return super().process(rows).slice(1)


def test_a_stage_that_loses_rows_fails_its_task(setup) -> None:
    run, people, config = setup
    run_stage(CrawlStage, None, config(), run, people)
    plan = plan_stage(SilentDropFilter, CrawlStage, config(), run, people)
    executor = TaskExecutor(SilentDropFilter, "crawl", config(), run.uri)
    result = executor.execute(plan.todo[0])
    assert result.error and "returned" in result.error
    assert read_markers(run, "filter") == {}
    assert plan.todo[0]["mode"] == RUN


@pytest.mark.parametrize("tasks", [1, 100, MAX_CALLS, MAX_CALLS + 1, 100_000, 1_000_000])
def test_a_stage_never_makes_more_than_max_calls_ray_calls(tasks: int) -> None:
    """One task a call for a costly stage while it fits, a stage's own batching for cheap ones, and never
    more than MAX_CALLS calls (each costs driver memory) however many identities."""
    for stage in (FilterStage, VerifyStage):
        assert -(-tasks // tasks_per_call(stage, tasks)) <= MAX_CALLS
    assert tasks_per_call(FilterStage, tasks) == (1 if tasks <= MAX_CALLS else -(-tasks // MAX_CALLS))
    assert tasks_per_call(VerifyStage, tasks) >= VerifyStage.tasks_per_call
    assert tasks_per_call(VerifyStage, tasks, cap=1) == tasks_per_call(FilterStage, tasks)  # run.max_tasks_per_call


def test_a_stage_gets_no_more_actors_than_ray_calls(monkeypatch) -> None:
    """An actor beyond the stage's calls would load its models and get no work (verify's 8 tasks make one call)."""
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    config = load_config(resolve_profile("cpu"))
    assert pool_size(FilterStage, config, calls=8) == 2  # the CPUs bound it
    assert pool_size(VerifyStage, config, calls=-(-8 // tasks_per_call(VerifyStage, 8))) == 1
    assert pool_size(FilterStage, load_config(resolve_profile("cpu"), ["filter.resources.concurrency=4"]), calls=3) == 3
