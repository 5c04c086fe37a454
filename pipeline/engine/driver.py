"""Drives a run on Ray: connect, then per stage plan, execute as an actor pool, show progress.

Ray is imported where it is first needed, after planning: a finished run resumes in well under
a second because it never imports or starts Ray.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

import pipeline
import stages
from pipeline.core.config import PipelineConfig
from pipeline.core.errors import UserError
from pipeline.core.names import Identity
from pipeline.core.rundir import RunDir
from pipeline.core.schema import DROPPED, OK
from pipeline.core.markers import Marker, distrusted, forget_markers, read_markers, record_markers
from pipeline.engine.progress import console, plain_text, task_progress
from pipeline.engine.registry import STAGES, upstream_of
from pipeline.engine.runner import (
    INPUT_CHANGED,
    SETUP_FAILED,
    Plan,
    TaskExecutor,
    plan_stage,
    prepare_tasks,
    result_from_row,
    reuse,
)
from pipeline.engine.stats import StageCounts, counts_from_markers, counts_table
from stages.base import ModelStage, Stage

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

# Ray calls (blocks) a stage gets at most: Ray Data keeps ~12 KB of driver memory per block, so at 100k
# identities one task per call would hold over 1 GB; past this, tasks share calls whatever they cost.
MAX_CALLS = 4096


def tasks_per_call(stage: type[Stage], tasks: int, cap: int | None = None) -> int:
    """The stage's own tasks per call, at most `cap`, raised so that `tasks` make at most MAX_CALLS calls."""
    return max(min(stage.tasks_per_call, cap or stage.tasks_per_call), -(-tasks // MAX_CALLS))


def connect(address: str | None) -> None:
    """Join `address` (or RAY_ADDRESS), else start a private local instance; once per process."""
    import ray
    import ray.data

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    options = {"include_dashboard": False, "logging_level": logging.ERROR}
    try:
        if address:
            _check_reachable(address)
            # Cluster nodes get this code with the job, so only the driver needs it installed.
            ray.init(address=address, runtime_env={"py_modules": [pipeline, stages]}, **options)
        else:
            ray.init(address="local", **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"cannot join the Ray cluster at {address}: {exc}", "check --address and `ray status`") from exc
    log.debug("Ray: %s, resources %s", f"joined {address}" if address else "a local instance", ray.cluster_resources())
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours below counts tasks and rows instead
    context.print_on_execution_start = False


def _check_reachable(address: str) -> None:
    """Ray retries an unreachable head for minutes; a plain TCP connect answers at once."""
    if "://" in address:
        return  # ray:// client addresses go through Ray's own handshake
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot join the Ray cluster at {address}: {exc}", "check --address and `ray status`") from exc


def pool_size(stage: type[Stage], config: PipelineConfig, calls: int) -> int:
    """Actors for the stage: what its resources and the cluster allow, and no more than its Ray calls (an actor
    more would load the stage's models and get no work)."""
    import ray

    resources, cluster = stage.resources(config), ray.cluster_resources()
    if resources.num_gpus > cluster.get("GPU", 0):
        _no_gpu(stage, resources.num_gpus, config)
    if resources.concurrency:
        return min(resources.concurrency, calls)
    if resources.num_gpus:
        fit = cluster.get("GPU", 0) // resources.num_gpus
    else:
        fit = cluster.get("CPU", 1) // resources.num_cpus
    return max(1, min(int(fit), calls))


def _no_gpu(stage: type[Stage], wanted: float, config: PipelineConfig) -> None:
    """Actors asking for a GPU Ray does not have would wait forever: a private instance never gets one."""
    what = f"{stage.name}.resources.num_gpus={wanted:g}, but Ray sees no such GPU"
    if not (config.run.address or os.environ.get("RAY_ADDRESS")):
        raise UserError(f"{what} on this machine", f"use --config cpu, or --set {stage.name}.resources.num_gpus=0")
    console.print(f"[yellow]warning:[/] {what} in the cluster yet; its actors wait for GPU nodes to join")


def check_nodes(stage: type[Stage], config: PipelineConfig) -> None:
    """The stage's preflight (its model files are there) on every live node that can run its actors: `models fetch`
    on the driver does not put files on the other nodes."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    needs = "GPU" if stage.resources(config).num_gpus else "CPU"
    nodes = [node for node in ray.nodes() if node["Alive"] and node["Resources"].get(needs, 0) > 0]
    check = ray.remote(num_cpus=0)(_preflight_here)
    calls = [check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
             .remote(stage, config) for node in nodes]
    failed = [(node["NodeManagerAddress"], error) for node, error in zip(nodes, ray.get(calls)) if error]
    if failed:
        address, error = failed[0]
        raise UserError(f"{stage.name} cannot start on {len(failed)} of {len(nodes)} nodes; on {address}: {error}",
                        "run the same `python -m pipeline models fetch` on every node, or keep models.cache_dir on "
                        "storage every node sees (docs/cluster.md: model files on every node)")


def _preflight_here(stage: type[Stage], config: PipelineConfig) -> str | None:
    """A Ray task on one node: its preflight's error line, or None."""
    try:
        stage.preflight(config)
    except UserError as error:
        return str(error)
    return None


def execute(stage: type[Stage], upstream: type[Stage] | None, config: PipelineConfig, run: RunDir, plan: Plan) -> StageCounts:
    summary = StageCounts(stage.name, tasks_total=len(plan.todo), tasks_skipped=plan.skipped)
    record_markers(run, stage.name, plan.empty)
    plan.todo = _reused(stage, upstream, config, run, plan.todo, summary)
    if not plan.todo:
        return summary
    connect(config.run.address)  # only now: a finished run resumes without starting Ray
    if config.run.address or os.environ.get("RAY_ADDRESS"):  # a private instance is this machine, checked already
        check_nodes(stage, config)
    if not run.object_store:  # there parts and markers are written whole, never as temporaries
        run.remove_temporaries(f"stages/{stage.name}")
    for spec in plan.todo:  # only unfinished tasks can have left a temporary behind
        for folder in stage.task_folders(spec["task"]):
            run.remove_temporaries(folder)
    doubted = distrusted(run, stage.name)
    summary.redo.update(doubted[spec["task"]] for spec in plan.todo if spec["task"] in doubted)
    results = _task_results(stage, upstream, config, run, plan.todo)
    setup_errors: list[str] = []
    changed_inputs: list[str] = []
    index = MarkerIndexWriter(run, stage.name)
    with task_progress() as progress, index:
        bar = progress.add_task(stage.name, total=len(plan.todo), rows="")
        for row in results.iter_rows():
            result = result_from_row(row)
            index.add(result.marker)
            summary.timed(result.started, result.seconds)
            if result.error:
                summary.tasks_failed += 1
                if result.error.startswith(SETUP_FAILED):
                    setup_errors.append(result.error.removeprefix(SETUP_FAILED))
                elif result.error.startswith(INPUT_CHANGED):
                    changed_inputs.append(result.task)
            else:
                summary.add(result.rows_in, result.statuses, result.reasons, result.device)
            kept, seen = summary.statuses[OK], sum(summary.statuses.values())
            progress.update(bar, advance=1, rows=f"{kept:,}/{seen:,} rows kept")
        summary.seconds = progress.tasks[bar].elapsed or 0.0
    if changed_inputs and upstream:
        _forget_changed(run, upstream.name, changed_inputs)
    if len(setup_errors) == len(plan.todo):  # no worker could load its models: a setting, not bad luck
        import ray

        ray.shutdown()  # the workers' logged tracebacks reach the run's log now, before the one line
        raise UserError(f"the {stage.name} stage could not start: {setup_errors[0]}",
                        f"check the {' and '.join(stage.sections)} settings and their model files; the "
                        "run's log has the workers' tracebacks, and finished work is kept")
    return summary


def _reused(stage: type[Stage], upstream: type[Stage] | None, config: PipelineConfig, run: RunDir,
            todo: list[dict], summary: StageCounts) -> list[dict]:
    """Tasks whose every row the stage judged before are finished here, without Ray or a model (`reuse`: a
    curator's decision removed or changed other rows); the tasks left to run."""
    if not stage.reuses_rows or upstream is None:
        return todo
    left, done = [], []
    for spec in todo:
        result = reuse(stage, upstream.name, config, run, spec)
        (left if result is None else done).append(spec if result is None else result)
    record_markers(run, stage.name, [Marker.from_json(result.marker) for result in done])
    for result in done:
        summary.add(result.rows_in, result.statuses, result.reasons)
    summary.tasks_reused = len(done)
    return left


def _forget_changed(run: RunDir, upstream: str, tasks: list[str]) -> None:
    """Upstream parts that are not what their markers pinned: those tasks are not done, so the next run redoes them."""
    forget_markers(run, upstream, tasks)
    named = ", ".join(tasks[:5]) + (", ..." if len(tasks) > 5 else "")
    console.print(f"[yellow]warning:[/] {len(tasks)} {upstream} parts are not what their markers pinned (truncated or "
                  f"replaced since): {named}; the next run redoes them")


class MarkerIndexWriter:
    """The stage's marker index, from its tasks' results: written every `every` seconds and at the end,
    errors and interrupts included; a driver killed in between leaves markers the next plan reads."""

    def __init__(self, run: RunDir, stage: str, every: float = 30.0) -> None:
        self.run, self.stage, self.every = run, stage, every
        self.pending: list[Marker] = []
        self.written = time.monotonic()

    def add(self, marker: dict | None) -> None:
        if marker is not None:
            self.pending.append(Marker.from_json(marker))
        if time.monotonic() - self.written > self.every:
            self.flush()

    def flush(self) -> None:
        record_markers(self.run, self.stage, self.pending)
        self.pending, self.written = [], time.monotonic()

    def __enter__(self) -> MarkerIndexWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.flush()


def _task_results(stage: type[Stage], upstream: type[Stage] | None, config: PipelineConfig, run: RunDir,
                  todo: list[dict[str, str]]) -> ray.data.Dataset:
    """The stage's Ray Data pipeline: task specs in, one result row per task out."""
    import ray.data

    resources = stage.resources(config)
    at_once = stage.tasks_per_actor(config)
    per_call = tasks_per_call(stage, len(todo), config.run.max_tasks_per_call)
    calls = -(-len(todo) // per_call)
    pool = ray.data.ActorPoolStrategy(size=pool_size(stage, config, calls),
                                      max_concurrent_calls_per_actor=at_once, enable_true_multi_threading=at_once > 1)
    tasks = ray.data.from_items(todo, override_num_blocks=calls)
    if issubclass(stage, ModelStage) and resources.num_gpus and upstream:
        # Decoding on CPU workers keeps the GPU actors inferring; on CPUs alone it would only add
        # a hop, so there the actors do both.
        tasks = tasks.map_batches(
            prepare_tasks,
            fn_kwargs={"stage": stage, "upstream": upstream.name, "config": config, "run_uri": run.uri},
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=resources.prepare_cpus,
        )
    return tasks.map_batches(
        TaskExecutor,
        fn_constructor_args=(stage, upstream.name if upstream else None, config, run.uri),
        batch_size=per_call,
        batch_format="pyarrow",
        compute=pool,
        num_cpus=resources.num_cpus,
        num_gpus=resources.num_gpus,
    )


def run_stages(
    selected: tuple[type[Stage], ...],
    config: PipelineConfig,
    run: RunDir,
    identities: list[Identity],
    force: bool,
    retry_failed: bool,
) -> list[StageCounts]:
    summaries = []
    for stage in selected:
        upstream = upstream_of(stage)
        plan = plan_stage(stage, upstream, config, run, identities, force, retry_failed)
        log.debug("%s: %d tasks to run, %d done, %d without input rows, %d without upstream output", stage.name,
                  len(plan.todo), plan.skipped, len(plan.empty), len(plan.missing))
        if plan.missing and not summaries:
            _missing_input(stage, upstream, plan, run)
        summaries.append(execute(stage, upstream, config, run, plan))
    return summaries


def _missing_input(stage: type[Stage], upstream: type[Stage] | None, plan: Plan, run: RunDir) -> None:
    assert upstream is not None
    fix = f"run `python -m pipeline run --stage {upstream.name}` (or --stage all) first"
    if not plan.todo and not plan.skipped:
        raise UserError(f"no {upstream.name} output in {run.uri} for these names, needed by {stage.name}", fix)
    console.print(f"[yellow]warning:[/] {len(plan.missing)} identities have no {upstream.name} output yet; {fix}")


def map_tasks(function: Callable[..., dict], specs: list[dict], address: str | None, num_cpus: float,
              **kwargs: Any) -> list[dict]:
    """`function(spec, **kwargs)` for every spec, each as a Ray task of `num_cpus`: a whole-run step's parallel part
    (the shard step's shards). Results must be JSON-able; they come back in no particular order."""
    connect(address)
    import ray.data

    batches = ray.data.from_items(specs, override_num_blocks=max(1, len(specs))).map_batches(
        _call_each, fn_kwargs={"function": function, "kwargs": kwargs}, batch_size=1, batch_format="pyarrow",
        num_cpus=num_cpus,
    )
    return [json.loads(row["result"]) for row in batches.iter_rows()]


def _call_each(batch: pa.Table, function: Callable[..., dict], kwargs: dict[str, Any]) -> dict[str, list[str]]:
    return {"result": [json.dumps(function(spec, **kwargs)) for spec in batch.to_pylist()]}
