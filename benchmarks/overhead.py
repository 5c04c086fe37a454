"""Stage overhead and scaling: each model stage through the runner on Ray vs a bare loop.

The photos of ../shared/data/faces, repeated as different identities, are crawled once (local
source, in-process). Then, stage by stage: the bare loop builds the stage in this process, runs
`setup` and calls `process` on every identity's `ok` input rows (no writing); the runner runs the
same stage as a one-actor pool (`concurrency=1`, actor start-up, model load and the writes of
parts and markers included), and its output feeds the next stage. The CPU-bound stages run once
more with two actors (`--force`) for the scaling figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from benchmarks.common import Figure, identity_tree
from pipeline.config import PipelineConfig, load_config, resolve_profile
from pipeline.driver import connect, execute
from pipeline.markers import part_path
from pipeline.names import Identity
from pipeline.registry import upstream_of
from pipeline.rundir import RunDir
from pipeline.runner import TaskExecutor, plan_stage
from pipeline.schema import OK
from stages.base import Stage
from stages.caption import CaptionStage
from stages.crawl import CrawlStage
from stages.crop import CropStage
from stages.filter import FilterStage
from stages.segment import SegmentStage
from stages.verify import VerifyStage

MODEL_STAGES: tuple[type[Stage], ...] = (FilterStage, VerifyStage, CropStage, SegmentStage, CaptionStage)
CPU_BOUND: tuple[type[Stage], ...] = (FilterStage, CropStage, SegmentStage)


@dataclass
class StageTiming:
    stage: str
    rows: int
    bare_seconds: float
    ray_seconds: float
    ray2_seconds: float | None = None  # two actors

    @property
    def rows_per_s(self) -> float:
        """Through the runner with one actor: what the cost model scales."""
        return self.rows / self.ray_seconds


def bench_stages(root: Path, repeat: int) -> tuple[list[Figure], list[StageTiming]]:
    names = identity_tree(root / "photos", repeat)
    people = [Identity(name, name) for name in names]
    config = stage_config(root / "photos", concurrency=1)
    run = RunDir(str(root / "run"))
    crawl = TaskExecutor(CrawlStage, None, config, run.uri)
    for spec in plan_stage(CrawlStage, None, config, run, people).todo:
        crawl.execute(spec)
    connect(None)
    timings = [time_stage(stage, config, run, people, root / "photos") for stage in MODEL_STAGES]
    figures = [overhead_figure(t) for t in timings]
    figures += [scaling_figure(t) for t in timings if t.ray2_seconds is not None]
    return figures, timings


def stage_config(photos: Path, concurrency: int) -> PipelineConfig:
    overrides = ["crawl.source=local", f"crawl.local_root={photos}", "filter.min_face_size=80"]
    overrides += [f"{stage.name}.resources.concurrency={concurrency}" for stage in MODEL_STAGES]
    return load_config(resolve_profile("cpu"), overrides)


def time_stage(stage: type[Stage], config: PipelineConfig, run: RunDir, people: list[Identity], photos: Path) -> StageTiming:
    upstream = upstream_of(stage)
    assert upstream is not None
    inputs = [ok_rows(run, upstream.name, person.slug) for person in people]
    started = time.perf_counter()
    bare = stage(config, run)
    bare.setup()
    for rows in inputs:
        bare.process(rows)
    bare_seconds = time.perf_counter() - started
    timing = StageTiming(stage.name, sum(rows.num_rows for rows in inputs), bare_seconds, run_on_ray(stage, config, run, people))
    if stage in CPU_BOUND:
        timing.ray2_seconds = run_on_ray(stage, stage_config(photos, concurrency=2), run, people, force=True)
    return timing


def run_on_ray(stage: type[Stage], config: PipelineConfig, run: RunDir, people: list[Identity], force: bool = False) -> float:
    upstream = upstream_of(stage)
    started = time.perf_counter()
    counts = execute(stage, upstream, config, run, plan_stage(stage, upstream, config, run, people, force))
    if counts.tasks_failed:
        raise RuntimeError(f"{counts.tasks_failed} {stage.name} tasks failed")
    return time.perf_counter() - started


def ok_rows(run: RunDir, stage: str, task: str) -> pa.Table:
    table = run.read_table(part_path(stage, task))
    return table.filter(pc.equal(table["status"], OK))


def overhead_figure(t: StageTiming) -> Figure:
    context = {"rows": t.rows, "bare_seconds": round(t.bare_seconds, 2), "ray_seconds": round(t.ray_seconds, 2),
               "ray_rows_per_s": round(t.rows_per_s, 2)}
    return Figure(f"overhead: {t.stage} on Ray / bare loop", t.bare_seconds / t.ray_seconds, 0.8, ">=", context=context)


def scaling_figure(t: StageTiming) -> Figure:
    assert t.ray2_seconds is not None
    context = {"one_actor_seconds": round(t.ray_seconds, 2), "two_actors_seconds": round(t.ray2_seconds, 2),
               "note": "2 cores shared with other work: an upper bound of 2.0, rarely reached here"}
    return Figure(f"scaling: {t.stage} 2 CPUs / 1 CPU", t.ray_seconds / t.ray2_seconds, context=context)
