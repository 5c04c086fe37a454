"""Crawl stage: one name in, one row per candidate image out; raw bytes stored content-addressed."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.config import PipelineConfig
from pipeline.core.schema import FAILED, OK, PROVENANCE
from stages.base import Row, Stage, drop
from stages.imaging import EXTENSIONS, sniff_format
from stages.sources import SOURCES, Fetched, Source


class CrawlStage(Stage):
    name = "crawl"
    sections = ("crawl",)
    requires = ("identity", "name")
    produces = PROVENANCE
    one_to_one = False
    volatile = ("fetched_at",)

    @classmethod
    def task_folders(cls, task: str) -> tuple[str, ...]:
        return (f"raw/{task}",)

    @classmethod
    def tasks_per_actor(cls, config: PipelineConfig) -> int:
        """Names crawl side by side, so the downloads of one never wait on the slowest of another;
        the source's limits are per worker, shared by them (thread-safe)."""
        return config.crawl.download.names_per_worker

    @classmethod
    def preflight(cls, config: PipelineConfig) -> None:
        SOURCES.preflight(config)

    def setup(self) -> None:
        self.source: Source = SOURCES.selected(self.config).load(self.config)

    def process(self, rows: pa.Table) -> pa.Table:
        out: list[Row] = []
        for person in rows.to_pylist():
            found = self.source.fetch(person["name"])
            out.extend(self._rows(person, found, seen=set()))
        return self.to_table(out, rows.schema)

    def retry(self, previous: pa.Table) -> pa.Table:
        failed_mask = pc.equal(previous["status"], FAILED)
        kept, failed = previous.filter(pc.invert(failed_mask)), previous.filter(failed_mask)
        seen = set(kept.filter(pc.equal(kept["status"], OK))["image_id"].to_pylist())
        out: list[Row] = []
        rows = failed.to_pylist()
        if rows:  # a task is one identity: its failed URLs go to the source together, fetched concurrently
            person = {"identity": rows[0]["identity"], "name": rows[0]["name"]}
            again = self.source.refetch([(row["url"], row["page_url"], row["license"]) for row in rows])
            out.extend(self._rows(person, again, seen))
        return pa.concat_tables([kept, self.to_table(out, previous.schema)])

    def _rows(self, person: Row, found: Iterable[Fetched], seen: set[str]) -> list[Row]:
        rows = [{**person, **self._row(person["identity"], item, seen)} for item in found]
        return rows or [{**person, **drop("no_images_found", f"{self.source.name} returned nothing")}]

    def _row(self, identity: str, item: Fetched, seen: set[str]) -> Row:
        row: Row = {
            "source": self.source.name,
            "url": item.url,
            "page_url": item.page_url,
            "license": item.license,
            "fetched_at": item.fetched_at,
            "http_status": item.http_status,
            "status": item.status,
            "reason": item.reason,
            "detail": item.detail,
        }
        if item.data is None:
            return row
        image_id = hashlib.sha256(item.data).hexdigest()
        row.update(image_id=image_id, num_bytes=len(item.data))
        if not item.data:
            return {**row, **drop("zero_bytes", "the body or file is empty")}
        image_format = sniff_format(item.data)
        if image_format is None:
            return {**row, **drop("not_an_image", "the bytes are not an image format Pillow reads")}
        row["image_format"] = image_format
        if image_id in seen:
            return {**row, **drop("duplicate", "the same bytes were already kept for this identity")}
        seen.add(image_id)
        row["raw_path"] = self._store(identity, image_id, image_format, item.data)
        return row

    def _store(self, identity: str, image_id: str, image_format: str, data: bytes) -> str:
        """Content-addressed, so a re-run or a retry writes nothing new."""
        rel = f"{self.task_folders(identity)[0]}/{image_id}.{EXTENSIONS.get(image_format, 'img')}"
        if not self.run.exists(rel):
            self.run.write_bytes(rel, data)
        return rel
