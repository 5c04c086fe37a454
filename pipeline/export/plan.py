"""Which source shards to export, from the done-markers alone.

`<dest>/_done/<shard stem>.json` is written after a shard's outputs. It records the format's
fingerprint, the source shard's sha256 and its size and mtime, its outputs and its samples. A
shard is unchanged when fingerprint, size and mtime still match (no byte is read); otherwise its
task hashes the file, and exports it only when the fingerprint or the digest differ (a shard
rewritten with the same content only gets a new marker). `<dest>/_done.json` fingerprints the
markers the files over all shards (index.json, train.jsonl) were made from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from pipeline.core.errors import UserError
from pipeline.core.rundir import RunDir
from pipeline.dataset.shards import INDEX, SHARDS
from pipeline.export.format import Format, stem

DONE = "_done.json"
MARKERS = "_done"
HASH_CHUNK = 8 << 20


@dataclass
class ExportPlan:
    shards: list[str]  # source shards in index order
    todo: list[dict] = field(default_factory=list)  # task specs: shard, size, mtime_ns, previous marker
    unchanged: dict[str, dict] = field(default_factory=dict)  # shard -> its marker
    stale: list[dict] = field(default_factory=list)  # markers of shards the index no longer names


def marker_path(shard: str) -> str:
    return f"{MARKERS}/{stem(shard)}.json"


def plan_export(run: RunDir, dest: RunDir, fmt: Format) -> ExportPlan:
    check_dest(dest, fmt)
    plan = ExportPlan(source_shards(run))
    markers = {m["shard"]: m for m in (dest.read_json(f"{MARKERS}/{n}") for n in dest.list_files(MARKERS, ".json"))}
    infos = {info.base_name: info for info in run.fs.get_file_info([run.path(SHARDS, s) for s in plan.shards])}
    for shard in plan.shards:
        info, marker = infos[shard], markers.get(shard)
        if info.type != pafs.FileType.File:
            fix = "run `python -m pipeline run --stage shard`"
            raise UserError(f"{SHARDS}/{shard}, listed in {INDEX}, is missing", fix)
        if marker and marker["fingerprint"] == fmt.fingerprint and _same_file(info, marker):
            plan.unchanged[shard] = marker
        else:
            plan.todo.append({"shard": shard, "size": info.size, "mtime_ns": info.mtime_ns, "previous": marker})
    plan.stale = [marker for shard, marker in markers.items() if shard not in plan.shards]
    return plan


def source_shards(run: RunDir) -> list[str]:
    if not run.exists(INDEX):
        raise UserError(f"no shards in {run.uri}", "run `python -m pipeline run` (or `--stage shard`) first")
    return list(dict.fromkeys(run.read_table(INDEX, columns=["shard"])["shard"].to_pylist()))


def check_dest(dest: RunDir, fmt: Format) -> None:
    """Only an empty folder or an export of this format: an export deletes the outputs it no longer needs."""
    if dest.exists(DONE):
        found = dest.read_json(DONE).get("format")
        if found != fmt.name:
            what = f"a {found} export" if found else "something else"
            raise UserError(f"{dest.uri} holds {what}, not a {fmt.name} export", "choose another --dest")
    elif dest.fs.get_file_info(pafs.FileSelector(dest.root, allow_not_found=True)) and not dest.list_files(MARKERS):
        raise UserError(f"{dest.uri} is not empty and holds no {fmt.name} export", "choose an empty or new --dest")


def _same_file(info: pafs.FileInfo, marker: dict) -> bool:
    """Shards are only ever replaced whole (renamed into place), so a new file has a new mtime."""
    return info.mtime_ns is not None and (info.size, info.mtime_ns) == (marker["size"], marker["mtime_ns"])


def file_digest(run: RunDir, shard: str) -> str:
    """sha256 of a source shard's bytes, streamed: the content the outputs were made from."""
    digest = hashlib.sha256()
    with run.fs.open_input_stream(run.path(SHARDS, shard)) as stream:
        while chunk := stream.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def finish_fingerprint(fmt: Format, markers: list[dict]) -> str:
    """What the files over all shards depend on: the format and every current shard's content, in order."""
    text = json.dumps([fmt.fingerprint, [(m["shard"], m["digest"]) for m in markers]])
    return hashlib.sha256(text.encode()).hexdigest()[:16]
