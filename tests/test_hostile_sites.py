"""Hostile hosts on 127.0.0.1 against every parser the network feeds (robots.txt, tdmrep.json, response
headers, XMP, C2PA): each is bounded in time and memory, each case ends within its bound as a row with
its reason, and the identity's URLs on other hosts are still crawled."""

from __future__ import annotations

import io
import json
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image, PngImagePlugin

from pipeline.core.config import PipelineConfig
from pipeline.core.names import identity_slug
from pipeline.core.rundir import RunDir
from pipeline.core.schema import DROPPED, FAILED, OK
from stages.crawl import CrawlStage
from stages.sources.embedded import XMP_MAX_BYTES
from stages.sources.http import SITE_FILE_MAX_BYTES, Downloader
from tests.conftest import FACES
from benchmarks.fixtures.http_server import DRIP_MAX, LocalServer, serving
from tests.test_consent import PROHIBITED, jpeg, serve, settings, xmp

DEADLINE = 1.0  # seconds per download, and for each site file with all its attempts
DRIP = 0.05  # seconds between the bytes of a dripped answer: the whole of it (DRIP_MAX bytes) takes 3 s
LIMITS = {"connect_timeout": 0.5, "read_timeout": 0.5, "deadline": DEADLINE, "retries": 1, "backoff": 0.05}
# Refuses everything under /img/, past the cap: a crawler reading the whole file would obey it.
HUGE_ROBOTS = b"User-agent: *\nDisallow: /private/\n" + b"# padding\n" * SITE_FILE_MAX_BYTES + b"Disallow: /img/\n"
HUGE_TDMREP = b"[" + b'{"location": "/pad", "tdm-reservation": 0}, ' * (SITE_FILE_MAX_BYTES // 4) \
              + b'{"location": "/", "tdm-reservation": 1}]'  # fmt: skip
NESTED_TDMREP = b"[" * 200_000 + b"]" * 200_000
LAUGHS = "".join(f'<!ENTITY l{i + 1} "{f"&l{i};" * 10}">' for i in range(9))
XML_BOMB = f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY l0 "lol">{LAUGHS}]><x>&l9;</x>'  # a billion laughs
C2PA_STORE = bytes.fromhex("6332706100110010800000AA00389B71")  # the JUMBF UUID of a C2PA manifest store


@pytest.fixture
def hostile() -> Iterator[LocalServer]:
    with serving() as running:
        yield running


@pytest.fixture
def good() -> Iterator[LocalServer]:
    with serving() as running:
        yield running


def downloader() -> Downloader:
    return Downloader(settings(download=LIMITS))


def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def garbage_c2pa(photo: bytes) -> bytes:
    """A JPEG whose APP11 segment holds a C2PA manifest store (JUMBF) with random bytes for content."""
    store = box(b"jumb", box(b"jumd", C2PA_STORE + b"\x03c2pa\x00") + os.urandom(60_000))
    segment = b"JP" + struct.pack(">HI", 1, 1) + store
    return photo[:2] + b"\xff\xeb" + struct.pack(">H", len(segment) + 2) + segment + photo[2:]


def png_with_huge_xmp() -> bytes:
    """A packet refusing training, past XMP_MAX_BYTES: parsed, it would cost seconds and ~40x its size."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp(elements=PROHIBITED + "<x/>" * (XMP_MAX_BYTES // 4)))
    out = io.BytesIO()
    Image.open(FACES / "images" / "img6.jpg").save(out, "PNG", pnginfo=info)
    return out.getvalue()


@pytest.mark.parametrize(
    ("path", "status", "reason", "attempts"),
    [("/robots.txt", FAILED, "timeout", 1),  # unreachable robots.txt: complete disallow, retried later
     ("/.well-known/tdmrep.json", OK, None, 1),  # a tdmrep.json that cannot be fetched: no rules
     ("/img/img1.jpg", FAILED, "timeout", 2)],  # the image: a deadline per attempt
)  # fmt: skip
def test_a_host_dripping_bytes_ends_at_the_deadline(
    hostile: LocalServer, good: LocalServer, path: str, status: str, reason: str | None, attempts: int
) -> None:
    """Status line, headers and body one byte every DRIP seconds (slowloris): every read is quick, so only the
    deadline ends each attempt, long before the host would. A site file's attempts share one deadline, as every
    download from its origin waits: the first one spends it, and no second is sent. Counted, not timed: on a
    loaded machine the timer and the download threads wake late, by half a second and more."""
    hostile.drips[path] = DRIP
    started = time.monotonic()
    urls = [(hostile.url("/img/img1.jpg"), None, None), (good.url("/img/img2.jpg"), None, None)]
    slow, other = downloader().fetch_all(urls)
    assert time.monotonic() - started < attempts * DRIP_MAX * DRIP  # the host's whole answer, per attempt
    assert hostile.hits()[path] == attempts
    assert (slow.status, slow.reason) == (status, reason), slow.detail
    assert (other.status, other.reason) == (OK, None)


@pytest.mark.parametrize(
    ("path", "body", "evidence", "other"),
    [("/robots.txt", HUGE_ROBOTS, {"robots_txt": "pass"}, ("/private/img2.jpg", "robots_disallowed")),  # the
     ("/.well-known/tdmrep.json", HUGE_TDMREP, {"tdmrep_json": "unreadable"}, ("/img/img2.jpg", None))],  # cap's rules
)  # fmt: skip
def test_site_files_are_read_up_to_a_cap(
    hostile: LocalServer, path: str, body: bytes, evidence: dict, other: tuple[str, str | None]
) -> None:
    """robots.txt up to SITE_FILE_MAX_BYTES (its rule past the cap, refusing /img/, is never seen); tdmrep.json
    longer than that is unreadable (its last rule would reserve everything)."""
    assert len(body) > 10 * SITE_FILE_MAX_BYTES
    serve(hostile, path, body, content_type="text/plain")
    started = time.monotonic()
    urls = [(hostile.url("/img/img1.jpg"), None, None), (hostile.url(other[0]), None, None)]
    kept, refused = downloader().fetch_all(urls)
    assert time.monotonic() - started < 1.0
    assert (kept.status, kept.reason) == (OK, None) and kept.consent.items() >= evidence.items()
    assert refused.reason == other[1]


def test_a_hostile_site_costs_its_own_rows_only(hostile: LocalServer, good: LocalServer, tmp_path: Path) -> None:
    """One identity's URLs on a hostile host and a good one, crawled by the stage: a tdmrep.json nested too
    deep, repeated and endless headers, an XML bomb, a huge XMP packet, a garbage C2PA manifest."""
    serve(hostile, "/.well-known/tdmrep.json", NESTED_TDMREP, content_type="application/json")
    rows = [  # (URL, expected reason or status, evidence the row must hold)
        (hostile.url("/img/img1.jpg"), OK, {"tdmrep_json": "unreadable"}),
        (hostile.url("/repeat-headers/1/img3.jpg?tdm-reservation=0&tdm-reservation=1"), "tdm_reserved",
         {"tdm_header": "refused"}),
        (hostile.url("/repeat-headers/5000/img4.jpg?X-Robots-Tag=noindex"), "connection_error", {}),  # http.client: 100
        (serve(hostile, "/files/bomb.jpg", jpeg("img5.jpg", XML_BOMB)), OK, {"xmp": "unreadable"}),
        (serve(hostile, "/files/huge-xmp.png", png_with_huge_xmp()), OK, {"xmp": "unreadable"}),
        (serve(hostile, "/files/c2pa.jpg", garbage_c2pa(jpeg("img7.jpg"))), OK, {"c2pa": "unreadable"}),
        (good.url("/img/img9.jpg"), OK, {"tdmrep_json": "absent"}),
    ]  # fmt: skip
    (tmp_path / "urls.tsv").write_text("".join(f"Angelina Jolie\t{url}\n" for url, _, _ in rows))
    config = PipelineConfig.model_validate({
        "crawl": {"source": "urls", "urls_file": str(tmp_path / "urls.tsv"), "allowed_networks": ["127.0.0.1/32"],
                  "download": LIMITS},
    })  # fmt: skip
    stage = CrawlStage(config, RunDir(str(tmp_path / "run")))
    stage.setup()
    started = time.monotonic()
    out = stage.process(pa.table({"identity": [identity_slug("Angelina Jolie")], "name": ["Angelina Jolie"]}))
    assert time.monotonic() - started < 5.0
    got = {row["url"]: (row["reason"] or row["status"], json.loads(row["consent"])) for row in out.to_pylist()}
    for url, reason, evidence in rows:
        assert got[url][0] == reason and got[url][1].items() >= evidence.items(), (url, got[url])
    assert {row["status"] for row in out.to_pylist() if row["reason"]} == {DROPPED, FAILED}
