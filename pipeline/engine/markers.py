"""Done-markers: the whole resume logic is listing them.

`stages/<stage>/_done/<task>.json` is written after the task's part, atomically. It records what
the task consumed (`input_digest`: the upstream part's digest) and under which stage config
(`config_hash`), so a task is done exactly when both still match.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from pipeline.core.rundir import RunDir
from pipeline.core.schema import FAILED, OK


def part_path(stage: str, task: str) -> str:
    return f"stages/{stage}/part-{task}.parquet"


def marker_path(stage: str, task: str) -> str:
    return f"stages/{stage}/_done/{task}.json"


@dataclass
class Marker:
    stage: str
    task: str
    config_hash: str
    input_digest: str
    output_digest: str
    rows_in: int
    rows_out: int
    statuses: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def kept(self) -> int:
        return self.statuses.get(OK, 0)

    @property
    def failed(self) -> int:
        return self.statuses.get(FAILED, 0)

    def matches(self, config_hash: str, input_digest: str) -> bool:
        return self.config_hash == config_hash and self.input_digest == input_digest

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Marker:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


def count_outcomes(table: pa.Table) -> tuple[dict[str, int], dict[str, int]]:
    """Rows by status, and rows not kept by reason (the report's funnel)."""
    statuses = Counter(table["status"].to_pylist())
    outcomes = zip(table["status"].to_pylist(), table["reason"].to_pylist(), strict=True)
    not_kept = [reason for status, reason in outcomes if status != OK]
    return dict(statuses), dict(Counter(reason or "unknown" for reason in not_kept))


def write_marker(run: RunDir, marker: Marker) -> None:
    run.write_json(marker_path(marker.stage, marker.task), asdict(marker))


def read_markers(run: RunDir, stage: str) -> dict[str, Marker]:
    markers = {}
    for filename in run.list_files(f"stages/{stage}/_done", ".json"):
        marker = Marker.from_json(run.read_json(f"stages/{stage}/_done/{filename}"))
        markers[marker.task] = marker
    return markers
