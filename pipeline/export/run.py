"""The export driver: plan from the markers, one Ray task per changed source shard, then the
files over all shards, then the outputs of shards the index no longer names.

Nothing is read or started when every shard is unchanged. Tasks return only their marker (sample
keys, no image bytes), so the driver's memory does not grow with the images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa

from pipeline.core.config import PipelineConfig
from pipeline.core.rundir import RunDir
from pipeline.engine.driver import connect
from pipeline.export import jsonl, multiid, webdataset
from pipeline.export.format import Format, stem
from pipeline.export.plan import DONE, ExportPlan, file_digest, finish_fingerprint, marker_path, plan_export

FORMATS: dict[str, Format] = {fmt.name: fmt for fmt in (webdataset.FORMAT, jsonl.FORMAT)}  # no run settings


def export_format(name: str, config: PipelineConfig) -> Format:
    """The format `name`, under the run's settings where its files depend on them (multiid: near-duplicates)."""
    return multiid.export_format(config.verify.dup_hamming) if name == "multiid" else FORMATS[name]


@dataclass
class ExportSummary:
    dest: str
    written: int  # source shards whose outputs were (re)written
    unchanged: int  # skipped by their marker, or re-marked after a rewrite with the same content
    removed: int  # shards no longer in the index, their outputs deleted
    samples: int


def default_dest(run: RunDir, fmt: str) -> str:
    """`<run>/exports/<format>`, written like the run's URI (an s3:// URI's options stay at its end)."""
    base, sep, options = run.uri.partition("?")
    return f"{base}/exports/{fmt}{sep}{options}"


def export_dataset(run: RunDir, dest: RunDir, fmt: Format, address: str | None) -> ExportSummary:
    plan = plan_export(run, dest, fmt)
    results = _run_tasks(run, dest, fmt, plan, address) if plan.todo else []
    markers = {**plan.unchanged, **{result["marker"]["shard"]: result["marker"] for result in results}}
    current = [markers[shard] for shard in plan.shards]
    fingerprint = finish_fingerprint(fmt, current)
    if not dest.exists(DONE) or dest.read_json(DONE).get("fingerprint") != fingerprint:
        fmt.finish(dest, current)
        dest.write_json(DONE, {"format": fmt.name, "fingerprint": fingerprint, "shards": len(current)})
    for marker in plan.stale:  # after the new index, which no longer names them
        _remove_outputs(dest, marker)
    written = sum(result["written"] for result in results)
    return ExportSummary(dest.uri, written, len(plan.shards) - written, len(plan.stale),
                         sum(len(marker["samples"]) for marker in current))


def _run_tasks(run: RunDir, dest: RunDir, fmt: Format, plan: ExportPlan, address: str | None) -> list[dict]:
    connect(address)
    import ray.data

    dest.remove_temporaries("")  # leftovers of writers killed mid-write
    specs = [{"spec": json.dumps(spec)} for spec in plan.todo]
    tasks = ray.data.from_items(specs, override_num_blocks=len(specs)).map_batches(
        _export_batch,
        fn_kwargs={"run_uri": run.uri, "dest_uri": dest.uri, "fmt": fmt},  # the format itself: a release's has options
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=1,
    )
    return [json.loads(row["result"]) for row in tasks.iter_rows()]


def _export_batch(batch: pa.Table, run_uri: str, dest_uri: str, fmt: Format) -> dict[str, list[str]]:
    run, dest = RunDir(run_uri), RunDir(dest_uri)
    specs = [json.loads(spec) for spec in batch["spec"].to_pylist()]
    return {"result": [json.dumps(export_shard(run, dest, fmt, spec)) for spec in specs]}


def export_shard(run: RunDir, dest: RunDir, fmt: Format, spec: dict) -> dict:
    """One source shard: its outputs unless only its file's stat changed, then its marker."""
    digest, previous = file_digest(run, spec["shard"]), spec["previous"]
    stat = {"size": spec["size"], "mtime_ns": spec["mtime_ns"], "digest": digest}
    same = previous is not None and previous["fingerprint"] == fmt.fingerprint and previous["digest"] == digest
    if same:
        marker = {**previous, **stat}
    else:
        samples = fmt.write_shard(run, dest, spec["shard"])
        marker = {"shard": spec["shard"], "fingerprint": fmt.fingerprint, **stat,
                  "outputs": fmt.outputs(stem(spec["shard"])), "samples": samples}
    dest.write_json(marker_path(spec["shard"]), marker)
    return {"marker": marker, "written": not same}


def _remove_outputs(dest: RunDir, marker: dict) -> None:
    for output in marker["outputs"]:
        if output.endswith("/"):
            if dest.exists(output):
                dest.fs.delete_dir(dest.path(output))
        else:
            dest.delete(output)
    dest.delete(marker_path(marker["shard"]))
