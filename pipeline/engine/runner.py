"""The runner: plans a stage's tasks from the markers, runs the rest as a Ray Data actor pool.

A task is one identity. Each actor builds its stage once (`setup` loads models) and runs whole
tasks: read the upstream part (checked against the upstream marker's pin: a changed part fails the task
as `input changed`, and the driver forgets that marker), `process`, write the part atomically, then the
done-marker, which pins the part. The
driver only sees one small result row per task, so its memory does not grow with the data. A
model stage on GPUs gets its tasks prepared (images read and decoded) by `prepare_tasks` on CPU
workers first, and its actors only `infer`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.config import PipelineConfig
from pipeline.core.names import Identity
from pipeline.core.rundir import RunDir
from pipeline.core.schema import FACE_LABELS, NAMES, OK
from pipeline.core.markers import (
    Marker,
    PartChanged,
    count_outcomes,
    empty_marker,
    part_path,
    read_markers,
    read_pinned_part,
    task_digest,
    write_marker_file,
    write_part,
)
from stages.base import ModelStage, Row, Stage
from stages.devices import placed, placement

log = logging.getLogger(__name__)

RUN, RETRY = "run", "retry"
SETUP_FAILED = "setup failed: "  # prefix of a task error that is the actor's, not the task's
INPUT_CHANGED = "input changed: "  # prefix of a task error that is its upstream part's: that task is redone
PREPARED = "prepared"  # the task spec's column of pickled `prepare` output, when there is one
PREVIOUS = "previous_pin"  # in a spec: the task's last part, made under today's config, whose rows may be reused


@dataclass
class Plan:
    todo: list[dict[str, str]] = field(default_factory=list)
    skipped: int = 0
    missing: list[str] = field(default_factory=list)  # identities without upstream output
    empty: list[Marker] = field(default_factory=list)  # tasks without input rows: done without running


@dataclass
class TaskResult:
    task: str
    error: str | None = None
    rows_in: int = 0
    rows_out: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    started: float = 0.0  # wall clock (epoch seconds), comparable across the workers of one machine or cluster
    seconds: float = 0.0
    marker: dict[str, Any] | None = None  # what the worker wrote, for the driver's marker index
    device: str = ""  # what the worker held ("GPU 0", "CPU"); "" outside Ray


def name_digest(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def content_digest(table: pa.Table) -> str:
    """What downstream tasks consumed: equal content means nothing to redo downstream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue()).hexdigest()


def plan_stage(
    stage: type[Stage],
    upstream: type[Stage] | None,
    config: PipelineConfig,
    run: RunDir,
    identities: list[Identity],
    force: bool = False,
    retry_failed: bool = False,
) -> Plan:
    """Which tasks to run: those without a marker matching today's config and today's input."""
    if upstream:
        stage.before_tasks(upstream.name, config, run, identities, force)  # a whole-run step (hygiene's) first
    config_hash = stage.fingerprint(config)
    slugs = [identity.slug for identity in identities]
    done = read_markers(run, stage.name, slugs)
    inputs = read_markers(run, upstream.name, slugs) if upstream else {}
    extra = stage.task_inputs(run)
    plan = Plan()
    for identity in identities:
        if upstream and identity.slug not in inputs:
            plan.missing.append(identity.slug)
            continue
        upstream_digest = inputs[identity.slug].output_digest if upstream else name_digest(identity.name)
        digest = task_digest(upstream_digest, extra.get(identity.slug, ""))
        pin = inputs[identity.slug].pin if upstream else ""
        spec = {"task": identity.slug, "name": identity.name, "input_digest": digest, "input_pin": pin, "mode": RUN,
                PREVIOUS: None}
        marker = done.get(identity.slug)
        stale = force or marker is None or not marker.matches(config_hash, digest)
        if stale and upstream and not inputs[identity.slug].kept:  # nothing to process: no Ray call, no part
            plan.empty.append(empty_marker(stage.name, identity.slug, config_hash, digest))
            plan.skipped += 1
        elif stale:
            reusable = stage.reuses_rows and not force and marker is not None and marker.part
            plan.todo.append({**spec, PREVIOUS: marker.pin if reusable and marker.config_hash == config_hash else None})
        elif retry_failed and marker.failed:
            plan.todo.append({**spec, "mode": RETRY})
        else:
            plan.skipped += 1
    return plan


class TaskExecutor:
    """One per Ray actor: builds the stage once, then runs one task per call."""

    def __init__(self, stage: type[Stage], upstream: str | None, config: PipelineConfig, run_uri: str,
                 gpu_ids: list[str] | None = None) -> None:
        """`gpu_ids`: what the worker holds; None asks Ray (and outside Ray leaves `auto` to the libraries)."""
        gpu_ids = held_gpus() if gpu_ids is None else gpu_ids
        self.device = placement(gpu_ids) if gpu_ids is not None else ""
        config = placed(config, gpu_ids) if gpu_ids is not None else config  # a GPU worker requires CUDA
        self.run = RunDir(run_uri)
        self.stage = stage(config, self.run)
        self.upstream = upstream
        self.config_hash = stage.fingerprint(config)  # devices are not part of it
        self.node = node_address()
        self.setup_error = self._setup()

    def _setup(self) -> str | None:
        """Load the models. A failure leaves the actor alive (a dead one gives the driver only Ray's
        traceback): every task then fails with it, and the driver can say it in one line."""
        try:
            self.stage.setup()
        except Exception as exc:
            log.error("setup of %s failed:\n%s", self.stage.name, traceback.format_exc())
            return f"{SETUP_FAILED}{type(exc).__name__}: {first_line(exc)}"
        return None

    def __call__(self, batch: pa.Table) -> dict[str, list[str]]:
        """Ray Data batch in (task specs), one JSON result per task out."""
        return {"result": [json.dumps(asdict(self.execute(spec))) for spec in batch.to_pylist()]}

    def execute(self, spec: dict[str, str]) -> TaskResult:
        started, wall = time.monotonic(), time.time()
        result = TaskResult(spec["task"], error=self.setup_error) if self.setup_error else self._attempt(spec, started)
        result.started, result.seconds, result.device = wall, time.monotonic() - started, self.device
        return result

    def _attempt(self, spec: dict[str, Any], started: float) -> TaskResult:
        try:
            return self._execute(spec, started)
        except PartChanged as exc:  # the driver forgets the upstream marker, so the next run redoes that task
            log.warning("task %s of %s: %s", spec["task"], self.stage.name, exc)
            return TaskResult(spec["task"], error=f"{INPUT_CHANGED}{exc}")
        except Exception as exc:  # recorded and reported; no marker, so the next run retries it
            log.error("task %s of %s failed:\n%s", spec["task"], self.stage.name, traceback.format_exc())
            return TaskResult(spec["task"], error=f"{type(exc).__name__}: {exc}")

    def _execute(self, spec: dict[str, Any], started: float) -> TaskResult:
        task, name = spec["task"], self.stage.name
        rows = read_input(self.run, self.upstream, spec)
        if spec["mode"] == RETRY:
            output = self.stage.retry(self.run.read_table(part_path(name, task)))
        else:
            output = self._process(rows, spec.get(PREPARED))
            if self.stage.one_to_one and output.num_rows != rows.num_rows:
                raise RuntimeError(f"stage {name} returned {output.num_rows} rows for {rows.num_rows}")
        return finish_task(self.run, self.stage, self.config_hash, spec, rows, output, started, self.node, self.device)

    def _process(self, rows: pa.Table, prepared: bytes | None) -> pa.Table:
        """`infer` on what a CPU worker prepared, else the whole of `process` here."""
        if prepared is None:
            return self.stage.process(rows)
        assert isinstance(self.stage, ModelStage)
        return self.stage.infer(rows, pickle.loads(prepared))


def finish_task(run: RunDir, stage: Stage, config_hash: str, spec: dict[str, Any], rows: pa.Table, output: pa.Table,
                started: float, node: str = "", device: str = "") -> TaskResult:
    """The task's part, then its marker (pinning the part); the result the driver records."""
    task, name = spec["task"], stage.name
    size, part_hash = write_part(run, name, task, output)
    digest = content_digest(output.drop_columns(list(stage.volatile)))
    statuses, reasons = count_outcomes(output)
    marker = Marker(name, task, config_hash, spec["input_digest"], digest, rows.num_rows, output.num_rows,
                    statuses, reasons, seconds=time.monotonic() - started, node=node, device=device,
                    part_size=size, part_hash=part_hash)
    write_marker_file(run, marker)
    return TaskResult(task, None, rows.num_rows, output.num_rows, statuses, reasons, marker=asdict(marker))


def reuse(stage: type[Stage], upstream: str, config: PipelineConfig, run: RunDir,
          spec: dict[str, Any]) -> TaskResult | None:
    """A stale task of a row-by-row stage whose every input row it judged already under today's config (the
    columns it requires unchanged: a curator's decision changed only other rows): its output made on the driver
    from its last part, no model loaded; None when a row is new or changed, or the last part is not as pinned."""
    if spec.get(PREVIOUS) is None:
        return None
    started, worker = time.monotonic(), stage(config, run)  # no `setup`: nothing is computed
    try:
        rows = read_input(run, upstream, spec)
        previous = read_pinned_part(run, stage.name, spec["task"], spec[PREVIOUS])
    except (PartChanged, FileNotFoundError):
        return None
    before = {row["image_id"]: row for row in previous.to_pylist()}
    own = ("status", "reason", "detail", *stage.produces.names)
    out = []
    for row in rows.to_pylist():
        old = before.get(row["image_id"])
        if old is None or any(evidence(old, column) != evidence(row, column) for column in stage.reuse_columns()):
            return None
        out.append({**row, **{column: old.get(column) for column in own}})
    if not worker.reusable(out):
        return None
    return finish_task(run, worker, stage.fingerprint(config), spec, rows, worker.to_table(out, rows.schema), started)


def evidence(row: Row, column: str) -> Any:
    """What a stage reads of a column: faces without their label scores, which move with every centroid."""
    value = row.get(column)
    if column == "faces" and value:
        return [{key: item for key, item in face.items() if key not in FACE_LABELS} for face in value]
    return value


def node_address() -> str:
    """The address of the Ray node this process runs on; "" when an executor is called outside Ray."""
    import ray  # here: the driver imports this module before it needs Ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else ""


def held_gpus() -> list[str] | None:
    """The GPUs Ray gave this worker (none: it must leave them alone); None when called outside Ray."""
    import ray

    return [str(gpu) for gpu in ray.get_gpu_ids()] if ray.is_initialized() else None


def first_line(exc: BaseException) -> str:
    return next(iter(str(exc).strip().splitlines()), "")


def read_input(run: RunDir, upstream: str | None, spec: dict[str, Any]) -> pa.Table:
    """A task's input: its name (first stage), else the upstream part's `ok` rows."""
    if upstream is None:
        return pa.Table.from_pylist([{"identity": spec["task"], "name": spec["name"]}], schema=NAMES)
    table = read_pinned_part(run, upstream, spec["task"], spec.get("input_pin", ""))
    return table.filter(pc.equal(table["status"], OK))


def prepare_tasks(batch: pa.Table, stage: type[ModelStage], upstream: str, config: PipelineConfig,
                  run_uri: str) -> pa.Table:
    """Ray Data map on CPU workers: each task spec with its rows' `prepare` output (pickled) added.

    The pickle is our own, from one of our workers to another, as everything Ray ships is.
    A failure here (an unreadable part) leaves the spec without it: the actor then runs `process`
    and records the failure against the task as usual. Retries re-read their own output instead.
    """
    run, prepared = RunDir(run_uri), []
    worker = stage(config, run)  # no `setup`: preparing needs no model
    for spec in batch.to_pylist():
        try:
            prepared.append(pickle.dumps(worker.prepare(read_input(run, upstream, spec))) if spec["mode"] == RUN else None)
        except Exception:
            log.warning("preparing task %s of %s failed; its actor will retry it", spec["task"], stage.name, exc_info=True)
            prepared.append(None)
    return batch.append_column(PREPARED, pa.array(prepared, pa.large_binary()))


def result_from_row(row: dict[str, Any]) -> TaskResult:
    return TaskResult(**json.loads(row["result"]))
