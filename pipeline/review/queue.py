"""The triage queue: the photos and identities whose automatic decision is most likely wrong, first.

Every item gets a `doubt` in (0, 1], and the queue is sorted by it:
- `similarity`: every photo verify kept or dropped as not_target_identity; doubt is 1 minus its distance
  from verify's threshold (kept at 0.41 and dropped at 0.39 around 0.40 are both near 1), so the kept photos
  with the lowest similarity and the dropped with the highest come first;
- `target_face`: a kept group photo; doubt is 1 minus the gap between the target face and the runner-up;
- `class_word`: an identity whose class word a confident gender estimate contradicts, once, on its most
  confident photo; doubt = that confidence;
- `competing`: an identity with a second large face cluster (namesakes, mixed results); doubt = 1 - purity;
- `same_person`: two identities whose centroids are as close as one person's photos; doubt = that cosine.

An identity's items depend on its own parts only. The queue is built in one column-pruned scan of verify's,
hygiene's and caption's parts and cached in the run directory (`review/queue.parquet`, sorted, in row groups
of GROUP items, so a page reads one row group), with the size and time of every part it read
(`review/queue.json`). When parts change (an apply, a run), only the identities whose parts changed are
scanned again and their items replaced; a restart over an unchanged run reads nothing else. Only the MAX_ITEMS
most doubtful are kept. Beside it,
`review/images.parquet`: every photo verify judged and its identity, sorted by image_id, so a search by
sha256 reads one row group (the row groups' min/max statistics prune the rest).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core.reasons import NOT_TARGET_IDENTITY
from pipeline.core.rundir import RunDir
from pipeline.core.schema import OK
from pipeline.review.tables import CAPTION, HYGIENE, VERIFY, Parts, list_parts, scan

QUEUE, QUEUE_KEY, IMAGES = "review/queue.parquet", "review/queue.json", "review/images.parquet"
IMAGE_GROUP = 8192  # rows a row group of the image index
VERSION = 4  # of the rules below: a cached queue built under other rules is built again
PAGE = 25  # items a page
GROUP = 100 * PAGE  # items a row group of the cached queue: a small footer, a page read is one group
# The most doubtful items kept (2,000 pages): nobody triages a million photos one by one, and an update after an
# apply then rewrites a small file. An update keeps the cut it had (items of unchanged identities beyond it stay
# out until the next whole build).
MAX_ITEMS = 50_000
SPAN = 1.0  # cosine distance at which doubt reaches 0 (an item further away is left out)
SIMILARITY, TARGET_FACE, CLASS_WORD, COMPETING, SAME_PERSON = (
    "similarity", "target_face", "class_word", "competing", "same_person")
VERIFY_COLUMNS = ["identity", "image_id", "status", "reason", "sim_to_centroid", "runner_up_sim", "large_faces",
                  "identity_competing", "identity_purity", "calibration"]
IMAGE_SCHEMA = pa.schema([pa.field("image_id", pa.string()), pa.field("identity", pa.string())])
ORDER = [("doubt", "descending"), ("kind", "ascending"), ("identity", "ascending"), ("image_id", "ascending")]
SCHEMA = pa.schema([
    pa.field("kind", pa.string()),
    pa.field("identity", pa.string()),
    pa.field("image_id", pa.string()),  # null for an identity's item
    pa.field("doubt", pa.float64()),
    pa.field("status", pa.string()),  # verify's verdict for a photo
    pa.field("reason", pa.string()),
    pa.field("value", pa.float64()),  # similarity, class-word confidence, purity or centroid cosine
    pa.field("against", pa.float64()),  # what `value` is compared with: the threshold, the runner-up face
    pa.field("other", pa.string()),  # the other identity (same_person), the estimated gender (class_word)
])


@dataclass(frozen=True)
class Queue:
    """The cached queue: its row count and how to read one page."""

    run: RunDir
    items: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.items // PAGE))

    def holding(self, image_id: str) -> list[str]:
        """The identities verify judged this photo under."""
        with self.run.fs.open_input_file(self.run.path(IMAGES)) as stream:
            table = pq.read_table(stream, filters=[("image_id", "=", image_id)])
        return sorted(set(table["identity"].to_pylist()))

    def page(self, number: int) -> list[dict]:
        """The items of page `number` (0-based), from the one row group that holds them."""
        if not self.items or not 0 <= number < self.pages:
            return []
        group, offset = divmod(number * PAGE, GROUP)
        with self.run.fs.open_input_file(self.run.path(QUEUE)) as stream:
            return pq.ParquetFile(stream).read_row_group(group).slice(offset, PAGE).to_pylist()


def load_queue(run: RunDir, rebuild: bool = False) -> Queue:
    """The queue of the run as its parts are now: the cached one, its changed identities built again."""
    parts = [list_parts(run, stage) for stage in (VERIFY, HYGIENE, CAPTION)]
    stamps = {p.stage: p.stamps for p in parts}
    cached = run.read_state(QUEUE_KEY)
    whole = rebuild or not cached or cached.get("version") != VERSION or not (run.exists(QUEUE) and run.exists(IMAGES))
    if not whole and cached["stamps"] == stamps:
        return Queue(run, int(cached["items"]))
    tasks = {task for p in parts for task in p.files} | (set() if whole else _tasks_in(cached["stamps"]))
    changed = tasks if whole else {t for t in tasks if any(p.stamps.get(t) != cached["stamps"][p.stage].get(t)
                                                          for p in parts)}
    verify = scan(run, parts[0], VERIFY_COLUMNS, changed)
    table, images = build_queue(run, verify, parts[1], parts[2], changed), _images(verify)
    if not whole:  # the unchanged identities' items and photos, as cached
        table = pa.concat_tables([_without(run, QUEUE, changed), table.cast(SCHEMA)])
        images = pa.concat_tables([_without(run, IMAGES, changed), images])
    table = table.sort_by(ORDER).slice(0, MAX_ITEMS)
    _write(run, QUEUE, table, GROUP)
    _write(run, IMAGES, images.sort_by("image_id"), IMAGE_GROUP)
    run.write_json(QUEUE_KEY, {"version": VERSION, "items": table.num_rows, "stamps": stamps})
    return Queue(run, table.num_rows)


def _tasks_in(stamps: dict[str, dict[str, str]]) -> set[str]:
    return {task for by_task in stamps.values() for task in by_task}


def _without(run: RunDir, rel: str, identities: set[str]) -> pa.Table:
    """A cached table less the rows of these identities."""
    with run.fs.open_input_file(run.path(rel)) as stream:
        table = pq.read_table(stream)
    return table.filter(pc.invert(pc.is_in(table["identity"], pa.array(sorted(identities), pa.string()))))


def _images(verify: pa.Table) -> pa.Table:
    if "image_id" not in verify.column_names:
        return IMAGE_SCHEMA.empty_table()
    return verify.select(["image_id", "identity"]).filter(pc.is_valid(verify["image_id"])).cast(IMAGE_SCHEMA)


def _write(run: RunDir, rel: str, table: pa.Table, row_group: int) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=row_group)
    run.write_bytes(rel, buffer.getvalue())


def build_queue(run: RunDir, verify: pa.Table, hygiene_parts: Parts, caption_parts: Parts, tasks: set[str]) -> pa.Table:
    """These identities' items (unsorted) from verify's columns (VERIFY_COLUMNS of their parts) and their hygiene
    and caption parts."""
    hygiene = scan(run, hygiene_parts, ["identity", "possible_same_person", "same_person_similarity"], tasks)
    caption = scan(run, caption_parts, ["identity", "image_id", "status", "reason", "class_word", "estimated_gender",
                                        "estimated_gender_confidence", "class_word_disagrees"], tasks)
    parts = [_similarity(verify), _target_face(verify), _class_word(caption), _competing(verify),
             _same_person(hygiene)]
    return pa.concat_tables([SCHEMA.empty_table(), *(part.cast(SCHEMA) for part in parts if part is not None)])


def _items(kind: str, table: pa.Table, mask: pa.Array, doubt: pa.Array, value: pa.Array, against: pa.Array,
           other: pa.Array | None = None, image: bool = True) -> pa.Table:
    rows = len(table)
    picked = {
        "kind": pa.array([kind] * rows, pa.string()),
        "identity": table["identity"],
        "image_id": table["image_id"] if image else pa.nulls(rows, pa.string()),
        "doubt": doubt,
        "status": table["status"] if image else pa.nulls(rows, pa.string()),
        "reason": table["reason"] if image else pa.nulls(rows, pa.string()),
        "value": pc.cast(value, pa.float64()),
        "against": pc.cast(against, pa.float64()),
        "other": other if other is not None else pa.nulls(rows, pa.string()),
    }
    return pa.table(picked).filter(pc.fill_null(mask, False))


def _closeness(distance: pa.Array) -> pa.Array:
    """1 at no distance, 0 at SPAN or more."""
    return pc.max_element_wise(pc.subtract(1.0, pc.divide(pc.cast(distance, pa.float64()), SPAN)), 0.0)


def _similarity(verify: pa.Table) -> pa.Table | None:
    if "sim_to_centroid" not in verify.column_names or "calibration" not in verify.column_names:
        return None
    sim, threshold = verify["sim_to_centroid"], pc.struct_field(verify["calibration"], "threshold")
    doubt = _closeness(pc.abs(pc.subtract(pc.cast(sim, pa.float64()), threshold)))
    judged = pc.or_kleene(pc.equal(verify["status"], OK), pc.equal(verify["reason"], NOT_TARGET_IDENTITY))
    return _items(SIMILARITY, verify, pc.and_kleene(judged, pc.greater(doubt, 0.0)), doubt, sim, threshold)


def _target_face(verify: pa.Table) -> pa.Table | None:
    if "runner_up_sim" not in verify.column_names:
        return None
    sim, runner_up = verify["sim_to_centroid"], verify["runner_up_sim"]
    doubt = _closeness(pc.max_element_wise(pc.subtract(pc.cast(sim, pa.float64()), runner_up), 0.0))
    group = pc.and_(pc.equal(verify["status"], OK), pc.greater(verify["large_faces"], 1))
    return _items(TARGET_FACE, verify, pc.and_(group, pc.greater(doubt, 0.0)), doubt, sim, runner_up)


def _class_word(caption: pa.Table) -> pa.Table | None:
    """One item an identity (its class word is one decision), shown on its most confidently contradicted photo."""
    if "class_word_disagrees" not in caption.column_names:
        return None
    confidence = pc.fill_null(pc.cast(caption["estimated_gender_confidence"], pa.float64()), 0.5)
    disagreeing = caption.append_column("confidence", confidence).filter(pc.fill_null(caption["class_word_disagrees"],
                                                                                      False))
    firsts = _first_per_identity(disagreeing.sort_by([("confidence", "descending"), ("image_id", "ascending")]))
    return _items(CLASS_WORD, firsts, pa.array([True] * len(firsts), pa.bool_()), firsts["confidence"],
                  firsts["confidence"], pa.nulls(len(firsts), pa.float64()), other=firsts["estimated_gender"])


def _competing(verify: pa.Table) -> pa.Table | None:
    if "identity_competing" not in verify.column_names:
        return None
    firsts = _first_per_identity(verify.filter(pc.fill_null(verify["identity_competing"], False)))
    purity = pc.fill_null(pc.cast(firsts["identity_purity"], pa.float64()), 0.5)
    doubt = pc.max_element_wise(pc.subtract(1.0, purity), 0.01)
    return _items(COMPETING, firsts, pa.array([True] * len(firsts), pa.bool_()), doubt, purity,
                  pa.nulls(len(firsts), pa.float64()), image=False)


def _same_person(hygiene: pa.Table) -> pa.Table | None:
    if "possible_same_person" not in hygiene.column_names:
        return None
    flagged = hygiene.filter(pc.greater(pc.fill_null(pc.list_value_length(hygiene["possible_same_person"]), 0), 0))
    firsts = _first_per_identity(flagged)
    other = pc.list_element(firsts["possible_same_person"], 0)
    once = pc.less(firsts["identity"], other)  # a pair is flagged on both identities: listed once
    similarity = firsts["same_person_similarity"]
    return _items(SAME_PERSON, firsts, once, pc.cast(similarity, pa.float64()), similarity,
                  pa.nulls(len(firsts), pa.float64()), other=other, image=False)


def _first_per_identity(table: pa.Table) -> pa.Table:
    """One row per identity (identity-wide columns hold the same value on each of its rows)."""
    if not len(table):
        return table
    indices = pa.table({"identity": table["identity"], "i": pa.array(range(len(table)))}) \
        .group_by("identity").aggregate([("i", "min")])["i_min"]
    return table.take(indices)
