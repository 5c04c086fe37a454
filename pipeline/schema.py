"""Column schemas in one place. Each stage's table is its input's columns plus the ones it adds.

`status` is `ok` (flows on), `dropped` (a decision about the content; kept for the report) or
`failed` (a transient error such as a timeout; `--retry-failed` runs it again). `reason` is a short
code (`low_resolution`, `http_404`, ...) and `detail` a human-readable message.
"""

from __future__ import annotations

import pyarrow as pa

OK, DROPPED, FAILED = "ok", "dropped", "failed"

ROW_KEYS = pa.schema(
    [
        pa.field("identity", pa.string(), nullable=False),
        pa.field("image_id", pa.string()),  # sha256 of the bytes; null only on per-identity rows
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
    ]
)

NAMES = pa.schema([pa.field("identity", pa.string(), nullable=False), pa.field("name", pa.string())])

PROVENANCE = pa.schema(
    [
        pa.field("source", pa.string()),
        pa.field("url", pa.string()),
        pa.field("page_url", pa.string()),
        pa.field("license", pa.string()),
        pa.field("fetched_at", pa.timestamp("us", tz="UTC")),
        pa.field("http_status", pa.int32()),
        pa.field("raw_path", pa.string()),  # relative to the run directory
        pa.field("num_bytes", pa.int64()),
        pa.field("image_format", pa.string()),  # decided from the bytes, never from a header
    ]
)

IMAGE_SIZE = pa.schema(
    [
        pa.field("width", pa.int32()),  # after EXIF orientation, as a viewer shows it
        pa.field("height", pa.int32()),
        pa.field("exif_orientation", pa.int8()),
    ]
)


def extend(base: pa.Schema, *more: pa.Schema) -> pa.Schema:
    """`base` followed by the fields of `more` it lacks; row keys always come first."""
    fields = {field.name: field for field in ROW_KEYS}
    for schema in (base, *more):
        for field in schema:
            fields.setdefault(field.name, field)
    return pa.schema(list(fields.values()))
