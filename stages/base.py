"""The stage contract: a small transformation over one task's rows, with declared columns.

Stages never call Ray; the runner (`pipeline.engine.runner`) turns them into Ray Data actor pools. A stage
gets its task's `ok` rows from the previous stage as a `pyarrow.Table` and returns every one of
them again (or, for a source, the rows it found), each with `status` and `reason` set: drops are
values, never silence. A `ModelStage` splits its work in two: `prepare` (reading, decoding,
resizing: CPU only, no model) and `infer` (the model), so the runner can run the first on CPU
workers and keep the model's actors (GPUs) busy with the second.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.config import PipelineConfig, Resources
from pipeline.core.names import Identity
from pipeline.core.rundir import RunDir
from pipeline.core.schema import DROPPED, FAILED, OK, extend

Row = dict[str, Any]


def keep(**columns: Any) -> Row:
    return {"status": OK, "reason": None, "detail": None, **columns}


def drop(reason: str, detail: str | None = None, **columns: Any) -> Row:
    return {"status": DROPPED, "reason": reason, "detail": detail, **columns}


class Stage(ABC):
    name: ClassVar[str]
    sections: ClassVar[tuple[str, ...]]  # config sections the stage reads: its fingerprint
    requires: ClassVar[tuple[str, ...]]  # input columns
    produces: ClassVar[pa.Schema]  # columns it adds
    version: ClassVar[int] = 1  # bump when the logic changes what the stage outputs
    one_to_one: ClassVar[bool] = True  # one output row per input row (sources expand)
    volatile: ClassVar[tuple[str, ...]] = ()  # columns that differ between identical re-runs
    tasks_per_call: ClassVar[int] = 1  # tasks an actor gets per Ray call: more where a task costs less than a call
    # each output row depends only on its own `requires` columns and the config: a task whose input changed in
    # other rows only (a curator's decision) reuses the rows it judged before (pipeline.engine.runner.reuse)
    reuses_rows: ClassVar[bool] = False

    def __init__(self, config: PipelineConfig, run: RunDir) -> None:
        self.config = config
        self.run = run

    @classmethod
    def fingerprint(cls, config: PipelineConfig) -> str:
        """What decides the stage's output: its config sections, its version and its constants."""
        return config.fingerprint(cls.sections, cls.version, cls.constants())

    @classmethod
    def constants(cls) -> dict[str, Any]:
        """Values outside the config that decide the output (part of the fingerprint)."""
        return {}

    @classmethod
    def task_inputs(cls, run: RunDir) -> dict[str, str]:
        """Per task, a digest of what besides its upstream part decides its output (a curator's decisions,
        stages/curation.py): a task whose digest changed runs again; tasks missing here depend on nothing else."""
        return {}

    @classmethod
    def reuse_columns(cls) -> tuple[str, ...]:
        """The columns a reused row must hold unchanged (`reuses_rows`): those it requires, by default."""
        return cls.requires

    def reusable(self, rows: list[Row]) -> bool:
        """Whether rows judged before may be reused together (a stage deciding across its rows says)."""
        return True

    @classmethod
    def resources(cls, config: PipelineConfig) -> Resources:
        return getattr(config, cls.name).resources

    @classmethod
    def task_folders(cls, task: str) -> tuple[str, ...]:
        """Folders outside `stages/<name>/` a task writes into (a killed writer leaves temporaries there)."""
        return ()

    @classmethod
    def tasks_per_actor(cls, config: PipelineConfig) -> int:
        """Tasks one actor runs at once, in threads: more than one only where `process` is thread-safe."""
        return 1

    @classmethod
    def preflight(cls, config: PipelineConfig) -> None:
        """Checks on the driver before any task is scheduled; raise UserError for a user mistake."""

    @classmethod
    def check_identities(cls, config: PipelineConfig, identities: list[Identity]) -> None:
        """Checks of the config against the run's identities (as given: `run` reads the names file, `decide
        --apply` the run's record of them), before any task; raise UserError for a user mistake."""

    @classmethod
    def before_tasks(cls, upstream: str, config: PipelineConfig, run: RunDir, identities: list[Identity],
                     force: bool) -> None:
        """A whole-run step on the driver before the per-identity tasks are planned (hygiene's decisions across
        identities); it may forget the markers of tasks whose input it changed, so they run again."""

    def setup(self) -> None:
        """Load models once per worker; called before the first task."""

    @abstractmethod
    def process(self, rows: pa.Table) -> pa.Table:
        """Turn one task's input rows into output rows."""

    def retry(self, previous: pa.Table) -> pa.Table:
        """A task's output with its transiently failed rows run again, every other row kept."""
        failed = pc.equal(previous["status"], FAILED)
        ours = [field.name for field in self.produces if field.name in previous.schema.names]
        again = self.process(previous.filter(failed).drop_columns(ours))
        return pa.concat_tables([previous.filter(pc.invert(failed)), again.cast(previous.schema)])

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return extend(input_schema, self.produces)

    def to_table(self, rows: list[Row], input_schema: pa.Schema) -> pa.Table:
        return pa.Table.from_pylist(rows, schema=self.output_schema(input_schema))


class ModelStage(Stage):
    """A stage whose CPU-side work runs apart from its model; `process` does both in one place."""

    per_row: ClassVar[bool] = True  # rows judged one by one: `process` can go a model batch at a time

    @abstractmethod
    def prepare(self, rows: pa.Table) -> list[Any]:
        """Per row, what `infer` needs decoded (or the row's verdict); no model, no `setup` needed."""

    @abstractmethod
    def infer(self, rows: pa.Table, prepared: list[Any]) -> pa.Table:
        """The rows out, from the model run on what `prepare` made of them."""

    def process(self, rows: pa.Table) -> pa.Table:
        """Both halves in one worker; a batch of decoded images at a time where rows are independent."""
        if not self.per_row:
            return self.infer(rows, self.prepare(rows))
        size = self.resources(self.config).batch_size
        batches = (rows.slice(start, size) for start in range(0, max(rows.num_rows, 1), size))
        return pa.concat_tables([self.infer(batch, self.prepare(batch)) for batch in batches])


class RowStage(Stage):
    """A stage deciding row by row: `process_row` returns the new columns via keep/drop/fail."""

    @abstractmethod
    def process_row(self, row: Row) -> Row: ...

    def process(self, rows: pa.Table) -> pa.Table:
        return self.to_table([{**row, **self.process_row(row)} for row in rows.to_pylist()], rows.schema)
