"""The run directory, on a local disk or any pyarrow filesystem (`s3://...` on a cluster).

A reader never sees half a file: on a local disk everything is written to a temporary name and
renamed; on an object store a whole object written in one request is atomic already (S3's rename is
a copy and a delete), so what is written from memory goes there directly. A task's done-marker is
written after its part, so the markers are the whole resume logic.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.core.errors import UserError

TMP_MARK = ".tmp-"


def _split_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in uri:
        uri = str(Path(uri).expanduser().resolve())
    elif uri.startswith("s3://") and "allow_delayed_open" not in uri:
        # Opened lazily, a stream of less than 5 MB is sent on close as one PutObject; otherwise every
        # object costs a multipart upload (three requests), however small.
        uri += f"{'&' if '?' in uri else '?'}allow_delayed_open=true"
    return pafs.FileSystem.from_uri(uri)


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as a whole Parquet file, as the run directory stores tables."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


class RunDir:
    """Paths and atomic I/O under one run directory; cheap to pickle (by URI) into Ray workers."""

    def __init__(self, uri: str) -> None:
        self.uri = uri if "://" in uri else str(Path(uri).expanduser().resolve())
        try:
            self.fs, self.root = _split_uri(self.uri)
        except (ValueError, OSError) as exc:  # pyarrow: an unknown scheme or option, a filesystem it cannot load
            raise UserError(f"cannot open {uri} as a run directory: {exc}", "pass a folder or s3://bucket/path") from exc
        self._made: set[str] = set()  # folders this process created: one create_dir call each
        self.object_store = not isinstance(self.fs, pafs.LocalFileSystem)
        self.cache: dict[str, Any] = {}  # what one command derived from the run (the marker indexes), read once

    def __reduce__(self) -> tuple[Any, ...]:
        return (RunDir, (self.uri,))

    def check(self, create: bool = False) -> None:
        """One line instead of a traceback later when this cannot be a run directory: a file, a folder
        that cannot be made (`create`), a store that cannot be reached."""
        try:
            found = self.fs.get_file_info(self.root).type
            if found == pafs.FileType.File:
                raise UserError(f"{self.uri} is a file, not a run directory", "pass a folder with --out")
            if create and found == pafs.FileType.NotFound and not self.object_store:  # a store has no folders
                self._make_dir(self.root)
        except OSError as exc:
            raise UserError(f"cannot use {self.uri} as a run directory: {exc}", "check the path, its permissions "
                            "and, for a store, its address and credentials") from exc

    def uri_of(self, rel: str) -> str:
        """Where `rel` is, written like the run's URI (an s3:// URI's options stay at its end)."""
        base, sep, options = self.uri.partition("?")
        return f"{base}/{rel}{sep}{options}"

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def write_bytes(self, rel: str, data: bytes) -> None:
        if not self.object_store:
            with self.open_atomic(rel) as stream:
                stream.write(data)
            return
        # The whole object in hand: it is sent on close, in one request, or not at all (no folders to make).
        with self.fs.open_output_stream(self.path(rel)) as stream:
            stream.write(data)

    @contextmanager
    def open_atomic(self, rel: str) -> Iterator[pa.NativeFile]:
        """A stream to a temporary name, renamed to `rel` only once it closed without error."""
        target = self.path(rel)
        self._make_dir(posixpath.dirname(target))
        tmp = f"{target}{TMP_MARK}{uuid.uuid4().hex}"
        try:
            with self.fs.open_output_stream(tmp) as stream:
                yield stream
        except BaseException:
            with suppress(OSError):  # a failed write leaves nothing behind, not even the temporary
                self.fs.delete_file(tmp)
            raise
        self.fs.move(tmp, target)

    def _make_dir(self, folder: str) -> None:
        if folder not in self._made:  # a set is thread-safe enough: a repeated create_dir is harmless
            self.fs.create_dir(folder, recursive=True)
            self._made.add(folder)

    def append_line(self, rel: str, line: str) -> int:
        """Append one line to a log; its line number (1-based). On a local disk one locked O_APPEND write, so
        concurrent writers never interleave and a writer killed mid-line tears only its own line (a newline
        first ends such a torn line, so it stays one line readers skip). An object store has no append: the
        object is rewritten whole, so writers there must take turns (the run's lock)."""
        data = line.replace("\n", " ").encode() + b"\n"
        if self.object_store:
            old = self.read_bytes(rel) if self.exists(rel) else b""
            old += b"\n" if old and not old.endswith(b"\n") else b""
            self.write_bytes(rel, old + data)
            return old.count(b"\n") + 1
        self._make_dir(posixpath.dirname(self.path(rel)))
        with open(self.path(rel), "a+b") as stream:
            fcntl.flock(stream, fcntl.LOCK_EX)  # released when the file closes
            stream.seek(0)
            old = stream.read()
            if old and not old.endswith(b"\n"):
                data = b"\n" + data
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        return old.count(b"\n") + data.count(b"\n")

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as stream:
            return stream.read()

    def write_table(self, rel: str, table: pa.Table) -> None:
        """Write a Parquet part atomically."""
        self.write_bytes(rel, parquet_bytes(table))

    def read_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        if self.object_store:  # one GET for the whole part, not one per footer and column chunk
            return pq.read_table(pa.BufferReader(self.read_bytes(rel)), columns=columns)
        return pq.read_table(self.path(rel), filesystem=self.fs, columns=columns)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=1, sort_keys=True).encode())

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def read_state(self, rel: str) -> dict | None:
        """A state file the run can make again (a step's fingerprint, a summary): None when missing, torn or
        not a JSON object, so the step is redone rather than the command failing."""
        if not self.exists(rel):
            return None
        try:
            data = self.read_json(rel)
        except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
            return None
        return data if isinstance(data, dict) else None

    def list_files(self, rel_dir: str, suffix: str = "") -> list[str]:
        """Base names of the files in a folder (not recursive); temporaries excluded."""
        selector = pafs.FileSelector(self.path(rel_dir), allow_not_found=True)
        names = (posixpath.basename(info.path) for info in self.fs.get_file_info(selector) if info.is_file)
        return sorted(name for name in names if name.endswith(suffix) and TMP_MARK not in name)

    def remove_temporaries(self, rel_dir: str) -> None:
        """Leftovers of writers killed mid-write; nobody reads them, so they can go."""
        selector = pafs.FileSelector(self.path(rel_dir), allow_not_found=True, recursive=True)
        for info in self.fs.get_file_info(selector):
            if info.is_file and TMP_MARK in info.base_name:
                self.fs.delete_file(info.path)

    def delete(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_file(self.path(rel))
