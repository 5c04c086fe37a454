"""The engine alone at scale: many identities whose tasks cost milliseconds, so the engine's own work shows.

The labelled photos go through crawl and filter once; their filter parts are then copied to N
synthetic identities (with markers, as a finished filter stage leaves them). The verify stage, whose
tasks read stored face evidence only, then runs on all N:

- through the engine on Ray (one actor, so both sides use one core): wall time per task from the
  stage's start (planning excluded, Ray Data's set-up and the actor's start included), and the
  driver's peak RSS over the stage less its RSS before;
- in a plain loop, the same executor called in this process on the first `plain` tasks: the same
  reads, stage code, part and marker writes, without Ray.

`python -m benchmarks.engine_scale [--n 100000] [--plain 5000]` writes
benchmarks/results/engine_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import REPO, TreeMemory, identity_tree
from pipeline.core.config import PipelineConfig, load_config, resolve_profile
from pipeline.core.names import Identity
from pipeline.core.rundir import RunDir
from pipeline.engine.driver import MAX_CALLS, connect, execute, tasks_per_call
from pipeline.core.markers import part_path, read_markers, write_marker_file
from pipeline.engine.runner import TaskExecutor, name_digest, plan_stage
from stages.crawl import CrawlStage
from stages.filter import FilterStage
from stages.verify import VerifyStage

RESULTS = REPO / "benchmarks" / "results" / "engine_scale.json"
TARGET_PER_TASK = 1.5  # engine cost per task at most this times the plain loop's
TARGET_DRIVER_MIB = 1024  # driver memory growth over a stage at 100k identities


def config_for(photos: Path) -> PipelineConfig:
    overrides = ["crawl.source=local", f"crawl.local_root={photos}", "filter.min_face_size=80",
                 "verify.resources.concurrency=1"]  # fmt: skip
    return load_config(resolve_profile("cpu"), overrides)


def template_parts(root: Path, config: PipelineConfig, run: RunDir) -> list[Identity]:
    """Crawl and filter of the labelled identities, in this process; returns those filter kept photos of."""
    people = [Identity(name, name) for name in identity_tree(root / "photos", 1)]
    for stage, upstream in ((CrawlStage, None), (FilterStage, CrawlStage)):
        executor = TaskExecutor(stage, upstream.name if upstream else None, config, run.uri)
        for spec in plan_stage(stage, upstream, config, run, people).todo:
            executor.execute(spec)
    markers = read_markers(run, FilterStage.name)
    return [person for person in people if markers[person.slug].kept]


def synthetic_identities(run: RunDir, templates: list[Identity], count: int) -> list[Identity]:
    """`count` identities, each a copy of a template's filter part and marker."""
    markers = read_markers(run, FilterStage.name)
    identities = [Identity(f"person_{i:06d}", f"Person {i}") for i in range(count)]

    def copy(index: int) -> None:
        source, target = templates[index % len(templates)], identities[index]
        shutil.copyfile(run.path(part_path(FilterStage.name, source.slug)),
                        run.path(part_path(FilterStage.name, target.slug)))  # fmt: skip
        write_marker_file(run, replace(markers[source.slug], task=target.slug, input_digest=name_digest(target.name)))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(copy, range(count)))
    read_markers(run, FilterStage.name)  # the stage's marker index, as a finished stage leaves it
    return identities


def plain_loop(config: PipelineConfig, run: RunDir, todo: list[dict[str, str]]) -> float:
    """Seconds per task of the executor called here, without Ray."""
    executor = TaskExecutor(VerifyStage, FilterStage.name, config, run.uri)
    started = time.perf_counter()
    for spec in todo:
        executor.execute(spec)
    return (time.perf_counter() - started) / len(todo)


def on_engine(config: PipelineConfig, run: RunDir, identities: list[Identity]) -> dict[str, Any]:
    plan = plan_stage(VerifyStage, FilterStage, config, run, identities, force=True)
    connect(None)
    before = psutil.Process().memory_info().rss
    memory = TreeMemory(os.getpid(), interval=0.1, children=False)  # the driver alone
    memory.start()
    started = time.perf_counter()
    counts = execute(VerifyStage, FilterStage, config, run, plan)
    seconds = time.perf_counter() - started
    memory.stop()
    assert counts.tasks_failed == 0 and counts.tasks_done == len(plan.todo), counts
    return {"tasks": len(plan.todo), "ray_calls": -(-len(plan.todo) // tasks_per_call(VerifyStage, len(plan.todo))),
            "max_calls": MAX_CALLS, "seconds": round(seconds, 1), "per_task_ms": round(1000 * seconds / len(plan.todo), 3),
            "driver_rss_before_mib": round(before / 2**20), "driver_growth_mib": round((memory.peak - before) / 2**20)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="identities")
    parser.add_argument("--plain", type=int, default=5_000, help="tasks timed in the plain loop")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="engine-scale-") as tmp:
        root = Path(tmp)
        config, run = config_for(root / "photos"), RunDir(str(root / "run"))
        identities = synthetic_identities(run, template_parts(root, config, run), args.n)
        plan = plan_stage(VerifyStage, FilterStage, config, run, identities[: args.plain])
        plain = plain_loop(config, run, plan.todo)
        engine = on_engine(config, run, identities)
    ratio = engine["per_task_ms"] / (1000 * plain)
    results = {"identities": args.n, "engine": engine, "plain_per_task_ms": round(1000 * plain, 3),
               "engine_over_plain": round(ratio, 2), "target_engine_over_plain": TARGET_PER_TASK,
               "target_driver_growth_mib": TARGET_DRIVER_MIB}  # fmt: skip
    print(json.dumps(results, indent=1))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
