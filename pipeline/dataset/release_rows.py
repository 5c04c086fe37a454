"""A shard row as a release holds it: only the columns listed here, each made safe to publish.

- `identity` is the identity's pseudonymous key (release_keys); `name` only with `--keep-names`; the columns
  that name other identities (`kept_under`, `merged_from`, `possible_same_person`) are left out, and a face's
  `identity` label, where the shards have one, is keyed as well.
- `faces` keep their boxes, landmarks and quality measures; their embeddings only with `--with-embeddings`.
- `url` and `page_url` only when http(s): a local crawl's `file://` paths, and `raw_path`, never leave.
- `crop_image` and `mask` lose every metadata segment but the ICC profile (release_images).
- Rows the removals ledger covers now are withheld, as the shard step does, and the bystander faces it
  blurs are blurred (`blurred_faces`) if a takedown has not rewritten the shards yet.

A column not listed (a new one, or the run's bookkeeping: consent evidence, model hashes, paths) is not
released: a release holds what this module says it holds, nothing more.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core.removals import Ledger
from pipeline.core.rundir import RunDir
from pipeline.dataset import blur
from pipeline.dataset.release_images import strip_metadata
from pipeline.dataset.release_keys import IdentityKeys
from pipeline.dataset.shards import SHARDS

BATCH_ROWS = 256  # rows in hand at once: a task holds a few crops, never a whole shard
FACE_FIELDS = ["box", "landmarks", "score", "sharpness", "yaw", "pitch", "roll", "image_share"]
EMBEDDING_FIELDS = ["embedding", "embedding_norm"]
IMAGES = ("crop_image", "mask")
URLS = ("url", "page_url")
RELEASED = [
    "identity", "name", "image_id", "dup_group", "sim_to_centroid", "face_backend", "target_face", "faces",
    "calibration", "crop_image", "crop_format", "crop_size", "crop_box", "crop_faces", "crop_face_share", "mask",
    "mask_source", "mask_area", "person_box", "caption", "caption_source", "class_word", "class_word_span",
    "class_word_tokens", "width", "height", "source", "url", "page_url", "license", "fetched_at", "blurred_faces",
]
LEDGER_ONLY = ["merged_from"]  # read to apply the ledger (a takedown of the identity a row merged from)


@dataclass(frozen=True)
class ReleaseOptions:
    """What a release's rows depend on besides the shards: its fingerprint."""

    keep_names: bool = False
    with_embeddings: bool = False
    secret_id: str = ""  # release_keys.secret_id: a new secret gives new keys
    ledger: str = ""  # the removals ledger's entries, as a digest: a new takedown withholds more rows

    def settings(self) -> str:
        return ",".join(f"{key}={value}" for key, value in sorted(asdict(self).items()))


def released_tables(run: RunDir, shard: str, ledger: Ledger, keys: IdentityKeys,
                    options: ReleaseOptions) -> Iterator[tuple[pa.Table, pa.Array]]:
    """Per batch of `shards/<shard>`: the released rows, and the keys of the rows the ledger withholds."""
    with run.fs.open_input_file(run.path(SHARDS, shard)) as handle:
        parquet = pq.ParquetFile(handle)
        columns = [name for name in [*RELEASED, *LEDGER_ONLY] if name in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            table = _with_blurred_faces(pa.Table.from_batches([batch]))
            found = ledger.matches(table) if ledger else [None] * table.num_rows
            covered = pa.array([entry is not None for entry in found], pa.bool_())
            withheld = _keyed(table.filter(covered)["identity"], keys)
            admitted, _ = blur.blur_table(table.filter(pc.invert(covered)), ledger.blurs)  # if not in the shards yet
            yield release_table(admitted, keys, options), withheld


def _with_blurred_faces(table: pa.Table) -> pa.Table:
    """Shards written before face takedowns have no `blurred_faces`; every batch gets one, so a batch the ledger
    blurs has the same columns as the others."""
    if "blurred_faces" in table.column_names:
        return table
    return table.append_column(pa.field("blurred_faces", pa.list_(pa.int32())),
                               pa.nulls(table.num_rows, pa.list_(pa.int32())))


def release_table(table: pa.Table, keys: IdentityKeys, options: ReleaseOptions) -> pa.Table:
    """The released columns of these shard rows."""
    columns: dict[str, pa.ChunkedArray | pa.Array] = {}
    for name in RELEASED:
        if name not in table.column_names or (name == "name" and not options.keep_names):
            continue
        column = table[name]
        if name == "identity":
            column = _keyed(column, keys)
        elif name == "faces":
            column = _faces(column, keys, options.with_embeddings)
        elif name in IMAGES:
            column = pa.array([None if data is None else strip_metadata(data) for data in column.to_pylist()],
                              pa.binary())
        elif name in URLS:
            column = web_only(column)
        columns[name] = column
    return pa.table(columns)


def web_only(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """http(s) URLs as they are; any other scheme (file://, a bare path) as null."""
    lower = pc.utf8_lower(column)
    web = pc.or_(pc.starts_with(lower, "http://"), pc.starts_with(lower, "https://"))
    return pc.if_else(web, column, pa.scalar(None, pa.string()))


def _keyed(column: pa.ChunkedArray | pa.Array, keys: IdentityKeys) -> pa.Array:
    """Slugs -> keys, one HMAC per distinct slug of the batch."""
    encoded = pc.dictionary_encode(column)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    mapped = pa.array([keys(slug) for slug in encoded.dictionary.to_pylist()], pa.string())
    return pc.take(mapped, encoded.indices)


def _faces(column: pa.ChunkedArray, keys: IdentityKeys, with_embeddings: bool) -> pa.Array:
    """Each row's faces with the listed fields only (a face's identity label keyed)."""
    faces = column.combine_chunks()
    values = faces.flatten()
    present = {field.name for field in values.type}
    wanted = [name for name in [*FACE_FIELDS, *(EMBEDDING_FIELDS if with_embeddings else [])] if name in present]
    arrays = [pc.struct_field(values, name) for name in wanted]
    if "identity" in present:
        wanted.append("identity")
        arrays.append(_keyed(pc.struct_field(values, "identity"), keys))
    struct = pa.StructArray.from_arrays(arrays, names=wanted)
    offsets = pc.subtract(faces.offsets, faces.offsets[0])
    return pa.ListArray.from_arrays(offsets, struct, mask=faces.is_null())
