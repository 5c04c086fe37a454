"""Crawl stage: one name in, one row per candidate image out; raw bytes stored content-addressed.

Consent (docs/governance.md): a name on the opt-out list is never searched for; the
source refuses licences, opted-out URLs, robots.txt, TDMRep and X-Robots-Tag before or while
downloading; here, on the bytes (the only place they exist), the opt-out list's hashes and the
image's own metadata. Refused images are never stored. `governance.optout` is read here but is not
part of the crawl's fingerprint: a changed list re-crawls nothing, and the shard step applies it again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import imagehash
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.config import PipelineConfig
from pipeline.core.optout import OPTED_OUT_IDENTITY, OPTED_OUT_IMAGE, OptOutList
from pipeline.core.removals import TAKEN_DOWN, load_ledger
from pipeline.core.schema import FAILED, OK, PROVENANCE
from pipeline.core.reasons import DUPLICATE, NOT_AN_IMAGE, NO_IMAGES_FOUND, ZERO_BYTES
from stages.base import Row, Stage, drop
from stages.imaging import EXTENSIONS, ImageRejected, decode_upright, sniff_format
from stages.sources import SOURCES, Fetched, Source
from stages.sources.consent import OFF, PASS, REFUSED, UNREADABLE, Refusal
from stages.sources.embedded import embedded_refusal

PHASH_SIDE = 256  # decode at least this large for the opt-out phash (it looks at 32x32)


class CrawlStage(Stage):
    name = "crawl"
    sections = ("crawl",)
    requires = ("identity", "name")
    produces = PROVENANCE
    one_to_one = False
    volatile = ("fetched_at",)
    version = 2  # 2: consent checks and the `consent` column

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
        OptOutList.read(config.governance.optout, config.governance.optout_phash_bits)  # a bad list stops the run

    def setup(self) -> None:
        self.source: Source = SOURCES.selected(self.config).load(self.config)
        self.removals = load_ledger(self.run)  # takedowns: what was removed never comes back

    def process(self, rows: pa.Table) -> pa.Table:
        out: list[Row] = []
        for person in rows.to_pylist():
            removed = self.removals.identity(person["identity"])
            if removed:  # taken down: not even searched for
                out.append({**person, **drop(TAKEN_DOWN, removed.detail)})
                continue
            if self.source.optout.name_listed(person["name"]):  # opted out: not even searched for
                out.append(self._opted_out(person))
                continue
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
            if self.source.optout.name_listed(person["name"]):  # opted out since: dropped whole, nothing asked
                return self.to_table([self._opted_out(person)], previous.schema)
            again = self.source.refetch([(row["url"], row["page_url"], row["license"]) for row in rows])
            out.extend(self._rows(person, again, seen))
        return pa.concat_tables([kept, self.to_table(out, previous.schema)])

    def _opted_out(self, person: Row) -> Row:
        evidence = json.dumps({"optout_name": REFUSED})
        return {**person, **drop(OPTED_OUT_IDENTITY, f"{person['name']!r} is on the opt-out list"), "consent": evidence}

    def _rows(self, person: Row, found: Iterable[Fetched], seen: set[str]) -> list[Row]:
        name_checked = PASS if self.source.optout.names else OFF
        rows = [{**person, **self._row(person["identity"], item, seen),
                 "consent": json.dumps({"optout_name": name_checked, **item.consent}, sort_keys=True)}
                for item in found]  # fmt: skip
        return rows or [{**person, **drop(NO_IMAGES_FOUND, f"{self.source.name} returned nothing")}]

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
        image_id = hashlib.sha256(item.data).hexdigest() if item.data is not None else None
        removed = self.removals.match(identity, image_id, item.url, item.page_url)
        if removed:  # taken down: nothing is stored, whatever the download gave
            return {**row, "image_id": image_id, **drop(TAKEN_DOWN, removed.detail)}
        if item.data is None:
            return row
        row.update(image_id=image_id, num_bytes=len(item.data))
        if not item.data:
            return {**row, **drop(ZERO_BYTES, "the body or file is empty")}
        image_format = sniff_format(item.data)
        if image_format is None:
            return {**row, **drop(NOT_AN_IMAGE, "the bytes are not an image format Pillow reads")}
        row["image_format"] = image_format
        refusal = self._after_download(item, image_id, image_format)
        if refusal:  # never stored
            return {**row, **drop(*refusal)}
        if image_id in seen:
            return {**row, **drop(DUPLICATE, "the same bytes were already kept for this identity")}
        seen.add(image_id)
        row["raw_path"] = self._store(identity, image_id, image_format, item.data)
        return row

    def _after_download(self, item: Fetched, image_id: str, image_format: str) -> Refusal | None:
        """The opt-out list by exact bytes, the image's own metadata, then the opt-out list by look
        (the costliest: a decode); each outcome goes to the row's evidence."""
        assert item.data is not None
        optout, evidence = self.source.optout, item.consent
        if image_id in optout.sha256:
            evidence["optout_image"] = REFUSED
            return OPTED_OUT_IMAGE, "the image is on the opt-out list (sha256)"
        refusal = embedded_refusal(item.data, image_format, self.config.crawl.consent, evidence)
        if refusal:
            return refusal
        if not optout.has_images:
            evidence["optout_image"] = OFF
            return None
        try:  # the filter stage's bomb limit: no decode here that it would refuse
            phash = str(imagehash.phash(decode_upright(item.data, self.config.filter.max_pixels, at_least=PHASH_SIDE)))
        except ImageRejected:  # the filter drops it anyway
            evidence["optout_image"] = UNREADABLE
            return None
        listed = optout.image_listed(None, phash)
        evidence["optout_image"] = REFUSED if listed else PASS
        return (OPTED_OUT_IMAGE, f"the image is on the opt-out list ({listed})") if listed else None

    def _store(self, identity: str, image_id: str, image_format: str, data: bytes) -> str:
        """Content-addressed, so a re-run or a retry writes nothing new."""
        rel = f"{self.task_folders(identity)[0]}/{image_id}.{EXTENSIONS.get(image_format, 'img')}"
        if not self.run.exists(rel):
            self.run.write_bytes(rel, data)
        return rel
