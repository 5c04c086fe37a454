"""`python -m pipeline release --dest DIR`: a copy of the dataset that is safe to publish (docs/release.md).

The rows are made by pipeline/dataset/release_rows.py; this module drives them through the export machinery
(per-shard markers, one Ray task per changed source shard, stale outputs removed), so a release resumes
and is incremental as an export is: a second release of an unchanged run writes nothing, and a takedown or
new options rewrite every shard. Then the card, `croissant.json` and, with `--since PREV`, the deletion list.
"""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass
from datetime import date
from functools import partial

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import UserError
from pipeline.core.names import Identity
from pipeline.core.removals import Ledger, ledger_summary, load_ledger
from pipeline.core.rundir import RunDir
from pipeline.dataset import governance
from pipeline.dataset.release_card import (CARD, CROISSANT, DELETIONS, LAST_RELEASE, ReleaseFacts, croissant,
                                           dataset_card, facts_record)
from pipeline.dataset.release_keys import release_secret, secret_id
from pipeline.dataset.release_rows import ReleaseOptions
from pipeline.dataset.release_write import outputs, write_release_shard
from pipeline.dataset.shards import INDEX, INDEX_SCHEMA, SHARDS
from pipeline.engine.progress import plain_text
from pipeline.engine.registry import STAGES
from pipeline.engine.stats import counts_from_markers, counts_table
from pipeline.export.format import Format, stem
from pipeline.export.plan import DONE, MARKERS, marker_path, source_shards
from pipeline.export.run import export_dataset

LAYOUT = 1  # bump when what a released shard holds changes for the same options: every shard is released again


@dataclass(frozen=True)
class ReleaseRequest:
    fmt: str = "parquet"
    keep_names: bool = False
    with_embeddings: bool = False
    since: str | None = None  # a previous release's folder or URI
    contact: str | None = None  # where removal requests go, for the card


@dataclass
class ReleaseSummary:
    dest: str
    identities: int
    images: int
    withheld: int
    written: int  # source shards released again
    unchanged: int
    deletions: int | None


def release_format(fmt: str, options: ReleaseOptions) -> Format:
    writer = partial(write_release_shard, fmt=fmt, options=options)
    return Format(f"release-{fmt}", LAYOUT, partial(outputs, fmt), writer, partial(_finish, fmt),
                  settings=options.settings())


def make_release(run: RunDir, dest: RunDir, config: PipelineConfig, identities: list[Identity],
                 request: ReleaseRequest) -> ReleaseSummary:
    previous = RunDir(request.since) if request.since else None
    if previous is not None:
        _check_previous(previous, dest)
    ledger = load_ledger(run)
    options = ReleaseOptions(request.keep_names, request.with_embeddings, secret_id(release_secret(run)),
                             _ledger_digest(ledger))
    done = export_dataset(run, dest, release_format(request.fmt, options), config.run.address)
    counts = [sample for marker in _markers(run, dest) for sample in marker["samples"]]
    facts = _facts(run, config, identities, ledger, request, counts)
    if previous is not None:
        facts.deletions = _write_deletions(previous, dest)
    dest.write_bytes(CARD, dataset_card(facts).encode())
    dest.write_json(CROISSANT, croissant(facts))
    run.write_json(LAST_RELEASE, facts_record(facts, dest.uri))
    return ReleaseSummary(dest.uri, facts.identities, facts.images, facts.withheld, done.written, done.unchanged,
                          facts.deletions)


def _finish(fmt: str, dest: RunDir, markers: list[dict]) -> None:
    """A Parquet release's `shards/_index.parquet` (identity key -> shard, first row, rows), as a run's."""
    if fmt != "parquet":
        return
    index = []
    for marker in markers:
        start, shard = 0, outputs(fmt, stem(marker["shard"]))[0].rsplit("/", 1)[1]
        for entry in marker["samples"]:
            if entry["num_rows"]:
                index.append({"identity": entry["identity"], "shard": shard, "row_start": start,
                              "num_rows": entry["num_rows"]})
            start += entry["num_rows"]
    dest.write_table(INDEX, pa.Table.from_pylist(index, schema=INDEX_SCHEMA))


def _markers(run: RunDir, dest: RunDir) -> list[dict]:
    return [dest.read_json(marker_path(shard)) for shard in source_shards(run)]


def _ledger_digest(ledger: Ledger) -> str:
    """The ledger's entries (each file written once, never changed), as a digest."""
    return hashlib.sha256("\n".join(entry.id for entry in ledger.entries).encode()).hexdigest()[:16]


def _facts(run: RunDir, config: PipelineConfig, identities: list[Identity], ledger: Ledger, request: ReleaseRequest,
           counts: list[dict]) -> ReleaseFacts:
    funnel = [counts_from_markers(run, stage.name, {i.slug for i in identities}, None) for stage in STAGES]
    checks = governance.gather(run, config, funnel, ledger, None).checks
    faces = [entry for entry in ledger.entries if entry.kind == "face"]
    return ReleaseFacts(
        request.fmt, ReleaseOptions(request.keep_names, request.with_embeddings),
        identities=sum(1 for entry in counts if entry["num_rows"]), images=sum(entry["num_rows"] for entry in counts),
        withheld=sum(entry["withheld"] for entry in counts), funnel=plain_text(counts_table("funnel", funnel)),
        checks=[{"name": c["name"], "reasons": c["reasons"], "dropped": c["dropped"]} for c in checks],
        requests=ledger_summary(ledger)["by_kind"], face_rows=sum(len(entry.rows) for entry in faces),
        faces_blurred=sum(len(entry.blurred) for entry in faces),
        models={"faces (detection, embedding)": config.face.backend, "person masks": config.segment.backend,
                "captions": config.caption.backend},
        thresholds={"filter.min_short_side": config.filter.min_short_side,
                    "filter.min_face_size": config.filter.min_face_size, **_calibration(run)},
        contact=request.contact or ReleaseFacts.contact, published=date.today().isoformat(),
    )


def _calibration(run: RunDir) -> dict[str, object]:
    """The verify thresholds as applied (every row records them): the first shard's first row."""
    shards = source_shards(run)
    with run.fs.open_input_file(run.path(SHARDS, shards[0])) as handle:
        parquet = pq.ParquetFile(handle)
        if "calibration" not in parquet.schema_arrow.names or not parquet.metadata.num_rows:
            return {}
        applied = parquet.read_row_group(0, columns=["calibration"])["calibration"][0].as_py() or {}
    return {f"verify.{key}": value for key, value in applied.items() if value is not None}


def release_keys(release: RunDir) -> set[str]:
    """Every row of a release as `identity/image_id`, read from its files (a Parquet or WebDataset release)."""
    keys: set[str] = set()
    for name in release.list_files(MARKERS, ".json"):
        for output in release.read_json(f"{MARKERS}/{name}")["outputs"]:
            if output.endswith(".parquet"):
                table = release.read_table(output, columns=["identity", "image_id"])
                keys.update(f"{i}/{m}" for i, m in zip(*(table[c].to_pylist() for c in ("identity", "image_id"))))
            else:
                keys.update(_tar_keys(release, output))
    return keys


def _tar_keys(release: RunDir, output: str) -> set[str]:
    with release.fs.open_input_stream(release.path(output)) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        return {member.name.split(".", 1)[0] for member in tar}  # `<key>/<image_id>.<ext>`: no dot before the ext


def _check_previous(previous: RunDir, dest: RunDir) -> None:
    if previous.uri == dest.uri:
        raise UserError("--since names the release being written",
                        "give the previous release's folder, or a new --dest")
    found = previous.read_state(DONE) or {}
    if not str(found.get("format", "")).startswith("release-"):
        raise UserError(f"{previous.uri} is not a release", "give --since the folder of an earlier `release`")


def _write_deletions(previous: RunDir, dest: RunDir) -> int:
    """deletions.txt: the rows of the previous release that this one no longer holds, one key a line."""
    gone = sorted(release_keys(previous) - release_keys(dest))
    dest.write_bytes(DELETIONS, "".join(f"{key}\n" for key in gone).encode())
    return len(gone)
