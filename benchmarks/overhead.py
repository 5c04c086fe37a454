"""Stage overhead and scaling: each model stage through the runner on Ray vs a bare loop.

The photos of tests/data/faces, repeated as different identities, are crawled once (local
source, in-process). Then, stage by stage, the same work two ways, each timed after its set-up:
the bare loop builds the stage in this process, runs `setup`, then per identity reads the input
part, calls `process` on its `ok` rows and writes the output with `pq.write_table` (what a script
doing the job by hand does); the runner runs the stage as a one-actor pool (`concurrency=1`), timed
from the first task's start to the last one's end (atomic parts, markers and digests included).
What comes before the first task (actor start-up, imports, model load) is a fixed cost per stage
and worker, reported beside the figure as `startup_seconds`. The runner's output feeds the next
stage. The CPU-bound stages run once more with two actors (`--force`) for the scaling figure.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from unittest.mock import patch

import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.common import Figure, identity_tree
from pipeline.core.config import PipelineConfig, load_config, resolve_profile
from pipeline.core.names import Identity
from pipeline.core.rundir import RunDir
from pipeline.core.schema import OK
from pipeline.engine.driver import connect, execute
from pipeline.core.markers import part_path
from pipeline.engine.registry import STAGES, upstream_of
from pipeline.engine.runner import Plan, TaskExecutor, plan_stage
from stages.base import Stage
from stages.crawl import CrawlStage
from stages.crop import CropStage
from stages.filter import FilterStage
from stages.safety import SafetyScoresStage, SafetyStage
from stages.segment import SegmentStage

# Every stage after crawl, but safety: its decisions on stored scores take milliseconds an identity, and
# its actors' resources are fixed in code, so its pool cannot be held to the one actor compared here.
MODEL_STAGES: tuple[type[Stage], ...] = tuple(stage for stage in STAGES if stage not in (CrawlStage, SafetyStage))
RESOURCE_SECTION = {SafetyScoresStage.name: "governance"}  # where a stage's resources are set, if not its own
CPU_BOUND: tuple[type[Stage], ...] = (FilterStage, CropStage, SegmentStage)


@dataclass
class RayTiming:
    work_seconds: float  # first task's start to last task's end
    wall_seconds: float  # start-up included


@dataclass
class StageTiming:
    stage: str
    rows: int
    bare_seconds: float
    ray: RayTiming
    ray2: RayTiming | None = None  # two actors

    @property
    def rows_per_s(self) -> float:
        """Through the runner with one actor, start-up excluded: what the cost model scales."""
        return self.rows / self.ray.work_seconds


def bench_stages(root: Path, repeat: int) -> tuple[list[Figure], list[StageTiming]]:
    names = identity_tree(root / "photos", repeat)
    people = [Identity(name, name) for name in names]
    config = stage_config(root / "photos", concurrency=1)
    run = RunDir(str(root / "run"))
    crawl = TaskExecutor(CrawlStage, None, config, run.uri)
    for spec in plan_stage(CrawlStage, None, config, run, people).todo:
        crawl.execute(spec)
    connect(None)
    timings = []
    for stage in STAGES[1:]:
        if stage in MODEL_STAGES:
            timings.append(time_stage(stage, config, run, people, root / "photos"))
        else:  # run for the stages after it, not timed (see MODEL_STAGES)
            run_on_ray(stage, config, run, plan_stage(stage, upstream_of(stage), config, run, people))
    figures = [overhead_figure(t) for t in timings]
    figures += [scaling_figure(t) for t in timings if t.ray2 is not None]
    return figures, timings


def stage_config(photos: Path, concurrency: int) -> PipelineConfig:
    overrides = ["crawl.source=local", f"crawl.local_root={photos}", "filter.min_face_size=80"]
    sections = [RESOURCE_SECTION.get(stage.name, stage.name) for stage in MODEL_STAGES]
    overrides += [f"{section}.resources.concurrency={concurrency}" for section in sections]
    return load_config(resolve_profile("cpu"), overrides)


def time_stage(stage: type[Stage], config: PipelineConfig, run: RunDir, people: list[Identity], photos: Path) -> StageTiming:
    upstream = upstream_of(stage)
    assert upstream is not None
    plan = plan_stage(stage, upstream, config, run, people)  # first: hygiene's decisions are made when planned
    tasks = [spec["task"] for spec in plan.todo]  # as the engine: tasks without input rows do not run
    rows, bare_seconds = bare_loop(stage, upstream.name, config, run, tasks, photos.parent / f"bare_{stage.name}")
    timing = StageTiming(stage.name, rows, bare_seconds, run_on_ray(stage, config, run, plan))
    if stage in CPU_BOUND:
        twice = stage_config(photos, concurrency=2)
        timing.ray2 = run_on_ray(stage, twice, run, plan_stage(stage, upstream, twice, run, people, force=True))
    return timing


def bare_loop(stage: type[Stage], upstream: str, config: PipelineConfig, run: RunDir, tasks: list[str],
              out: Path) -> tuple[int, float]:
    """(input rows, seconds after setup) of the stage called by hand: read, process, write, per task.
    Its models keep to one CPU, as in the one actor it is compared with (Ray says so in OMP_NUM_THREADS)."""
    with patch.dict(os.environ, {"OMP_NUM_THREADS": "1"}):
        bare = stage(config, run)
        bare.setup()
    out.mkdir(parents=True)
    rows, started = 0, time.perf_counter()
    for task in tasks:
        table = run.read_table(part_path(upstream, task))
        table = table.filter(pc.equal(table["status"], OK))
        pq.write_table(bare.process(table), out / f"{task}.parquet", compression="zstd")
        rows += table.num_rows
    return rows, time.perf_counter() - started


def run_on_ray(stage: type[Stage], config: PipelineConfig, run: RunDir, plan: Plan) -> RayTiming:
    started = time.perf_counter()
    counts = execute(stage, upstream_of(stage), config, run, plan)
    if counts.tasks_failed:
        raise RuntimeError(f"{counts.tasks_failed} {stage.name} tasks failed")
    return RayTiming(counts.work_seconds, time.perf_counter() - started)


def overhead_figure(t: StageTiming) -> Figure:
    context = {"rows": t.rows, "bare_seconds": round(t.bare_seconds, 2), "ray_seconds": round(t.ray.work_seconds, 2),
               "startup_seconds": round(t.ray.wall_seconds - t.ray.work_seconds, 2),
               "ray_rows_per_s": round(t.rows_per_s, 2)}
    return Figure(f"overhead: {t.stage} on Ray / bare loop", t.bare_seconds / t.ray.work_seconds, 0.8, ">=", context=context)


def scaling_figure(t: StageTiming) -> Figure:
    assert t.ray2 is not None
    context = {"one_actor_seconds": round(t.ray.work_seconds, 2), "two_actors_seconds": round(t.ray2.work_seconds, 2),
               "note": "2 cores shared with other work: an upper bound of 2.0, rarely reached here"}
    return Figure(f"scaling: {t.stage} 2 CPUs / 1 CPU", t.ray.work_seconds / t.ray2.work_seconds, context=context)
