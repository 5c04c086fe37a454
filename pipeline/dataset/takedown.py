"""Takedowns: apply the removals ledger to a whole run, and find what a new request covers.

In order: each pending identity's stage parts and raw bytes (`takedown_parts`), then the shards,
their index, the card and the shard marker (`takedown_shards`), then the copies the report and the
generator made (thumbnails, generate runs). Each step finds its work in what the run still holds,
so applying the same ledger again finishes an interrupted takedown, and otherwise does nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.core.config import PipelineConfig
from pipeline.core.names import Identity
from pipeline.core.removals import Ledger
from pipeline.core.rundir import RunDir
from pipeline.core.schema import OK
from pipeline.core.markers import part_path
from pipeline.core.reasons import CLAIMED_BY_OTHER_IDENTITY
from pipeline.engine.registry import STAGES
from pipeline.dataset.shards import SHARDS
from pipeline.dataset.takedown_parts import CRAWL, crawled, pending, take_down
from pipeline.dataset.takedown_shards import KEYS, rewrite_dataset, shard_files
from stages.hygiene import HygieneStage
from stages.verify import VerifyStage

THUMBS = "report/thumbs"  # the report's cache: `<image_id>-<view>-<digest>.jpg`
GENERATE = "generate"  # the generator's runs: `<run id>/record.json`, references, images


@dataclass
class Applied:
    identities: list[str] = field(default_factory=list)  # whose stage parts were rewritten
    partial: list[str] = field(default_factory=list)  # of them, identities that lost photos but stay
    rows: int = 0  # crawl rows taken down
    raw_files: int = 0
    shards: list[str] = field(default_factory=list)  # shard files rewritten
    thumbnails: int = 0
    generations: list[str] = field(default_factory=list)  # generate runs deleted


def _key_tables(run: RunDir) -> Iterator[pa.Table]:
    for slug in crawled(run):
        yield run.read_table(part_path(CRAWL, slug), KEYS)
    for name in shard_files(run):
        yield run.read_table(f"{SHARDS}/{name}", KEYS)


def covered(run: RunDir, probe: Ledger) -> tuple[set[str], set[str]]:
    """Identities and photos (image ids) of the rows a request covers, in the crawl parts and the shards."""
    identities, images = set(), set()
    for table in _key_tables(run):
        for row, match in zip(table.to_pylist(), probe.matches(table), strict=True):
            if match is not None:
                identities.add(row["identity"])
                images.update([row["image_id"]] if row["image_id"] else [])
    return identities, images


def verified_photos(run: RunDir, slug: str) -> set[str]:
    """An identity's photos: those verify kept (its face check says they show that person), less those
    hygiene found closer to another identity (they show someone else, who keeps them)."""
    claimed = _image_ids(run, HygieneStage.name, slug, CLAIMED_BY_OTHER_IDENTITY)
    return _image_ids(run, VerifyStage.name, slug, OK) - claimed


def _image_ids(run: RunDir, stage: str, slug: str, outcome: str) -> set[str]:
    """Image ids of the task's rows whose status (`ok`) or reason is `outcome`."""
    rel = part_path(stage, slug)
    if not run.exists(rel):
        return set()
    rows = run.read_table(rel, ["image_id", "status", "reason"]).to_pylist()
    return {row["image_id"] for row in rows if outcome in (row["status"], row["reason"]) and row["image_id"]}


def apply_ledger(run: RunDir, config: PipelineConfig, identities: list[Identity], ledger: Ledger,
                 shards_current: bool) -> Applied:
    """`shards_current`: whether the shards matched the stages before (then they still do after)."""
    applied, gone = Applied(), set(ledger.images)
    for folder in [*(f"stages/{stage.name}" for stage in STAGES), SHARDS]:
        run.remove_temporaries(folder)  # a writer killed mid-write may have left a copy of what is removed
    for slug in crawled(run):
        if pending(run, ledger, slug):
            run.remove_temporaries(f"raw/{slug}")
            outcome = take_down(run, ledger, slug)
            applied.identities.append(slug)
            applied.rows += outcome.rows
            applied.raw_files += outcome.raw_files
            applied.partial += [slug] if outcome.photos else []
            gone |= outcome.image_ids
    applied.shards = rewrite_dataset(run, config, identities, ledger, shards_current)
    blurred = {image_id for _, image_id in ledger.blurs}  # their cached thumbnails show the bystander unblurred
    applied.thumbnails = _delete_thumbnails(run, gone | blurred)
    applied.generations = _delete_generations(run, ledger, gone)
    return applied


def _delete_thumbnails(run: RunDir, gone: set[str]) -> int:
    names = [name for name in run.list_files(THUMBS) if name.split("-", 1)[0] in gone]
    for name in names:
        run.delete(f"{THUMBS}/{name}")
    return len(names)


def _delete_generations(run: RunDir, ledger: Ledger, gone: set[str]) -> list[str]:
    """Generate runs made from a removed identity or photo: their reference crops are copies, their
    images likenesses."""
    selector = pafs.FileSelector(run.path(GENERATE), allow_not_found=True)
    deleted = []
    for info in run.fs.get_file_info(selector):
        record = f"{GENERATE}/{info.base_name}/record.json"
        if info.type == pafs.FileType.Directory and run.exists(record) and _uses(run, record, ledger, gone):
            run.fs.delete_dir(info.path)
            deleted.append(info.base_name)
    return sorted(deleted)


def _uses(run: RunDir, record: str, ledger: Ledger, gone: set[str]) -> bool:
    try:
        people = run.read_json(record).get("identities") or []
    except (ValueError, AttributeError):  # unreadable: the report shows it as such, and it names nobody
        return False
    for person in (person for person in people if isinstance(person, dict)):
        references = [ref.get("image_id") for ref in person.get("references") or [] if isinstance(ref, dict)]
        if ledger.identity(str(person.get("identity"))) or gone.intersection(references):
            return True
    return False


def describe(applied: Applied) -> str:
    """What was done, for the terminal; and how to recompute what still counts removed photos."""
    done = (f"taken down: {applied.rows:,} crawl rows of {len(applied.identities):,} identities; deleted "
            f"{applied.raw_files:,} raw files, {applied.thumbnails:,} report thumbnails, "
            f"{len(applied.generations):,} generate runs; rewrote {len(applied.shards):,} shards "
            f"{json.dumps(applied.shards) if applied.shards else ''}".rstrip())
    if not applied.partial:
        return done
    return (f"{done}\nnote: {', '.join(applied.partial)} kept other photos; what was computed over each identity's "
            "photos (verify's centroid similarities, safety's median age, caption's class word) still counts "
            "the removed ones: `python -m pipeline run --stage verify --force`, then `python -m pipeline run`, "
            "recomputes them for these identities only")
