"""Done-markers: the whole resume logic is reading them.

`stages/<stage>/_done/<task>.json` is written after the task's part, atomically. It records what
the task consumed (`input_digest`: the upstream part's digest) and under which stage config
(`config_hash`), so a task is done exactly when both still match.

Reading one marker per task costs a request per identity and stage on an object store, so the
driver also keeps `stages/<stage>/_markers.parquet`, every marker of the stage in one file, rewritten
from the results it gets back. The marker files stay the truth: the index is read once per command,
tasks it lacks are looked up in their marker files (listed when many are missing: a listing answers
1000 keys a request), and what they add is written back. A task killed after its marker but before
the index is found done; one killed before its marker runs again, once. On a local disk, where a
listing is cheap, the index is also checked against it (files newer than it or gone from it).
A task whose input has no `ok` row is done without running: it has no part and no marker file,
only its entry in the index (`part` false); readers of its part get nothing.

A marker is trusted only while it is readable and its part is the one it pinned (`part_size`,
`part_hash`): otherwise the task is not done, and is redone. Resume checks sizes where a listing is
cheap (a local disk: one listing a stage); a reader of an upstream part checks its hash, which needs
the bytes it reads anyway, so an object store costs no extra request. A corrupt marker index is
rebuilt from the marker files. What was distrusted, and why, is kept for `status` and the summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from collections import Counter
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import TypeAdapter, ValidationError

from pipeline.core.rundir import TMP_MARK, RunDir, parquet_bytes
from pipeline.core.schema import FAILED, OK

log = logging.getLogger(__name__)


def part_path(stage: str, task: str) -> str:
    return f"stages/{stage}/part-{task}.parquet"


def marker_path(stage: str, task: str) -> str:
    return f"stages/{stage}/_done/{task}.json"


def index_path(stage: str) -> str:
    return f"stages/{stage}/_markers.parquet"


EMPTY_DIGEST = "empty"  # the output digest of a task that had no input row
LIST_ABOVE = 50  # missing tasks beyond which one listing (1000 keys a request) beats a read each
READERS = 32  # concurrent marker reads: object-store requests wait on the network, not the CPU
INDEX_SCHEMA = pa.schema([pa.field("task", pa.string()), pa.field("marker", pa.string())])
# Why a task's marker is not trusted (the task is redone): `status` and a run's summary count these.
CORRUPT_MARKER = "corrupt_marker"  # its file is not a marker (not JSON, fields missing or of the wrong type)
PART_CHANGED = "part_changed"  # its part is gone, or not the size or bytes it pinned (truncated, replaced)


class PartChanged(Exception):
    """A part whose bytes are not those its marker pinned."""


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
    node: str = ""  # address of the Ray node that ran the task (on a cluster: which host); "" outside Ray
    device: str = ""  # what the worker held: "GPU 0", "CPU"; "" outside Ray
    part: bool = True  # false: no input row, so no part and no marker file, only an index entry
    part_size: int | None = None  # the part's bytes and their hash when written; None: a marker from before pins
    part_hash: str = ""

    @property
    def pin(self) -> str:
        """`size:hash` of the part, what a reader checks; "" when the marker pins none."""
        return f"{self.part_size}:{self.part_hash}" if self.part_size is not None else ""

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


MARKER = TypeAdapter(Marker)  # parses and checks a marker's JSON (ValidationError, a ValueError, when it is none)


def task_digest(upstream_digest: str, extra: str) -> str:
    """What a task consumed (its marker's `input_digest`): its upstream part's digest, and the digest of its other
    inputs where it has any (`Stage.task_inputs`: a curator's decisions), so a task without them keeps the digest
    it always had."""
    return f"{upstream_digest}+{extra}" if extra else upstream_digest


def consumed(input_digest: str, upstream_digest: str) -> bool:
    """A marker's input was this upstream part, whatever other inputs it had."""
    return input_digest.split("+", 1)[0] == upstream_digest


def count_outcomes(table: pa.Table) -> tuple[dict[str, int], dict[str, int]]:
    """Rows by status, and rows not kept by reason (the report's funnel)."""
    statuses = Counter(table["status"].to_pylist())
    outcomes = zip(table["status"].to_pylist(), table["reason"].to_pylist(), strict=True)
    not_kept = [reason for status, reason in outcomes if status != OK]
    return dict(statuses), dict(Counter(reason or "unknown" for reason in not_kept))


def read_part(run: RunDir, stage: str, task: str, columns: list[str] | None = None) -> pa.Table:
    """A task's part; an empty task has none: no rows then, in the columns asked for (typed as text)."""
    try:
        return run.read_table(part_path(stage, task), columns)
    except FileNotFoundError:
        return pa.table({name: pa.array([], pa.string()) for name in columns or ["status", "reason"]})


def part_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def write_part(run: RunDir, stage: str, task: str, table: pa.Table) -> tuple[int, str]:
    """A task's part, written whole; returns its pin (size, hash) for the marker."""
    data = parquet_bytes(table)
    run.write_bytes(part_path(stage, task), data)
    return len(data), part_hash(data)


def read_pinned_part(run: RunDir, stage: str, task: str, pin: str) -> pa.Table:
    """A task's part, checked against its marker's `pin` ("" for a marker without one)."""
    rel = part_path(stage, task)
    if not pin:
        return run.read_table(rel)
    try:
        data = run.read_bytes(rel)
    except FileNotFoundError as exc:  # on a store, resume lists no part sizes: a part gone is found here
        raise PartChanged(f"{rel} is gone, though its marker pinned it") from exc
    if f"{len(data)}:{part_hash(data)}" != pin:
        raise PartChanged(f"{rel} is not the part its marker pinned (truncated or replaced since it was written)")
    return pq.read_table(pa.BufferReader(data))


def distrusted(run: RunDir, stage: str) -> dict[str, str]:
    """Tasks whose marker this command found untrustworthy, and why (CORRUPT_MARKER, PART_CHANGED)."""
    return run.cache.setdefault("distrusted", {}).setdefault(stage, {})


def empty_marker(stage: str, task: str, config_hash: str, input_digest: str) -> Marker:
    return Marker(stage, task, config_hash, input_digest, EMPTY_DIGEST, 0, 0, part=False)


def write_marker_file(run: RunDir, marker: Marker) -> None:
    """A worker's write: the driver adds the marker to the index from the task's result."""
    run.write_json(marker_path(marker.stage, marker.task), asdict(marker))


def write_marker(run: RunDir, marker: Marker) -> None:
    """A marker written outside a stage's run (a takedown, a test), pinned to its part as the part is
    now: its file, then the index."""
    if marker.part:
        try:
            data = run.read_bytes(part_path(marker.stage, marker.task))
            marker = replace(marker, part_size=len(data), part_hash=part_hash(data))
        except FileNotFoundError:
            pass  # no part to pin
    write_marker_file(run, marker)
    record_markers(run, marker.stage, [marker])


def forget_markers(run: RunDir, stage: str, tasks: Collection[str]) -> None:
    """These tasks are no longer done: their files, then their index entries, go."""
    if not tasks:
        return
    for task in tasks:
        run.delete(marker_path(stage, task))
    known = _loaded(run, stage)
    for task in tasks:
        known.pop(task, None)
    _save_index(run, stage, known)


def record_markers(run: RunDir, stage: str, markers: Collection[Marker]) -> None:
    """Add markers to the stage's index (the driver, from its tasks' results, or empty tasks)."""
    if not markers:
        return
    known, doubted = _loaded(run, stage), distrusted(run, stage)
    for marker in markers:
        known[marker.task] = marker
        doubted.pop(marker.task, None)
    _save_index(run, stage, known)


def read_markers(run: RunDir, stage: str, tasks: Collection[str] | None = None) -> dict[str, Marker]:
    """The stage's markers by task (do not modify it). `tasks`: those wanted, looked up in their files
    when the index lacks them; without it, what the index holds (on a local disk, checked by a listing)."""
    known = _loaded(run, stage)
    listed = stage in run.cache["listed"]  # this command saw every marker file already
    missing = [task for task in tasks if task not in known] if tasks is not None and not listed else []
    found = _read_files(run, stage, missing) if missing else {}
    if found:
        known.update(found)
        _save_index(run, stage, known)
    return known


def _loaded(run: RunDir, stage: str) -> dict[str, Marker]:
    """The index, read once per command (per RunDir); rebuilt from the marker files when absent.
    On a local disk each call also lists the files, so markers written behind its back count."""
    cache, checked = run.cache.setdefault("markers", {}), run.cache.setdefault("checked", {})
    run.cache.setdefault("listed", set())
    if stage not in cache:
        cache[stage] = _load(run, stage)
    elif not run.object_store:
        now = datetime.now(timezone.utc)
        if _check_against_files(run, stage, cache[stage], checked[stage]):
            _save_index(run, stage, cache[stage])
        checked[stage] = now
    return cache[stage]


def _load(run: RunDir, stage: str) -> dict[str, Marker]:
    """The stage's index; absent or unreadable, rebuilt from the marker files. On a local disk, checked
    against the marker files and the parts' sizes."""
    now = datetime.now(timezone.utc)
    known = _read_index(run, stage)
    if known is None:
        run.cache["checked"][stage] = now
        known = _read_files(run, stage, None)
        if known:
            _save_index(run, stage, known)
    elif not run.object_store:
        if _check_against_files(run, stage, known, run.fs.get_file_info(run.path(index_path(stage))).mtime):
            _save_index(run, stage, known)
        run.cache["checked"][stage] = now
    if not run.object_store:  # once a command: later changes to the parts are its own tasks'
        _check_parts(run, stage, known)
    return known


def _read_index(run: RunDir, stage: str) -> dict[str, Marker] | None:
    """The stage's marker index; None when there is none or it is unreadable (it is rebuilt then)."""
    try:
        rows = pq.read_table(pa.BufferReader(run.read_bytes(index_path(stage)))).to_pydict()
        return {task: MARKER.validate_json(text) for task, text in zip(rows["task"], rows["marker"], strict=True)}
    except FileNotFoundError:
        return None
    except (KeyError, ValueError) as exc:  # not Parquet (ArrowInvalid), columns missing, a row not a marker
        log.warning("the %s marker index is unreadable, rebuilt from the marker files: %s", stage, exc)
        return None


def _check_against_files(run: RunDir, stage: str, known: dict[str, Marker], since: datetime) -> bool:
    """Local disk: markers written (at or after `since`) or removed behind the index's back."""
    files = {info.base_name.removesuffix(".json"): info.mtime for info in _marker_files(run, stage)}
    run.cache["listed"].add(stage)
    doubted = distrusted(run, stage)
    gone = [task for task, marker in known.items() if marker.part and task not in files]
    newer = [task for task, mtime in files.items()
             if (task not in known and task not in doubted) or mtime is None or mtime >= since]
    for task in gone:
        del known[task]
    found = _read_files(run, stage, newer)
    for task in newer:  # the file is the truth: a corrupt one (distrusted now) outweighs the index's entry
        if task in found:
            known[task] = found[task]
            doubted.pop(task, None)
        elif doubted.get(task) == CORRUPT_MARKER:
            known.pop(task, None)
    return bool(gone or newer)


def _check_parts(run: RunDir, stage: str, known: dict[str, Marker]) -> None:
    """Local disk: a marker whose part is gone or not the size it pinned is dropped (its task is redone)."""
    sizes = {info.base_name: info.size for info in _listing(run, f"stages/{stage}", ".parquet")}
    for task, marker in list(known.items()):
        size = sizes.get(posixpath.basename(part_path(stage, task)))
        if marker.part_size is not None and size != marker.part_size:
            del known[task]
            distrusted(run, stage)[task] = PART_CHANGED


def _marker_files(run: RunDir, stage: str) -> list[pafs.FileInfo]:
    return _listing(run, f"stages/{stage}/_done", ".json")


def _listing(run: RunDir, folder: str, suffix: str) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(run.path(folder), allow_not_found=True)
    return [info for info in run.fs.get_file_info(selector) if info.is_file and info.base_name.endswith(suffix)
            and TMP_MARK not in info.base_name]


def _read_files(run: RunDir, stage: str, tasks: list[str] | None) -> dict[str, Marker]:
    """Marker files, read concurrently: these tasks' (those that have one), else all the listing shows."""
    if tasks is None or len(tasks) > LIST_ABOVE:
        listed = {posixpath.splitext(info.base_name)[0] for info in _marker_files(run, stage)}
        run.cache["listed"].add(stage)
        tasks = sorted(listed) if tasks is None else [task for task in tasks if task in listed]
    with ThreadPoolExecutor(READERS) as pool:
        markers = pool.map(lambda task: read_marker(run, stage, task), tasks)
        return {marker.task: marker for marker in markers if marker is not None}


def read_marker(run: RunDir, stage: str, task: str) -> Marker | None:
    """A task's marker file; None when there is none, or it is torn (recorded: the task is not done)."""
    try:
        return MARKER.validate_json(run.read_bytes(marker_path(stage, task)))
    except FileNotFoundError:
        return None
    except ValidationError:
        distrusted(run, stage)[task] = CORRUPT_MARKER
        return None


def _save_index(run: RunDir, stage: str, known: dict[str, Marker]) -> None:
    tasks = sorted(known)
    texts = [json.dumps(asdict(known[task]), separators=(",", ":")) for task in tasks]
    table = pa.table([pa.array(tasks, pa.string()), pa.array(texts, pa.string())], schema=INDEX_SCHEMA)
    run.write_table(index_path(stage), table)
