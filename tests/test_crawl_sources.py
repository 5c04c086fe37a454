"""The web sources: the URL list, the search engines through icrawler's real parsers, and the CLI
end to end against the loopback server (never the internet)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipeline.core.config import CrawlSection, PipelineConfig
from pipeline.core.errors import UserError
from pipeline.core.names import identity_slug
from pipeline.core.schema import DROPPED, FAILED, OK
from stages.sources.search import FLICKR_PHOTO_PAGE, SearchFailed, SearchSource
from stages.sources.urls import UrlsSource, read_url_list
from tests.conftest import REPO, run_cli, stage_rows
from benchmarks.fixtures.http_server import LocalServer, serving

FAST = {"connect_timeout": 1.0, "read_timeout": 1.0, "deadline": 2.0, "retries": 0, "backoff": 0.05}


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with serving() as running:
        yield running


def settings(**values: object) -> CrawlSection:
    return CrawlSection.model_validate({"allowed_networks": ["127.0.0.1/32"], "download": FAST, **values})


# -- the URL list ------------------------------------------------------------------------------------
URL_LIST = """\
name\turl\tpage_url\tlicense
# a comment, then a blank line

Angelina  Jolie\thttp://a.invalid/1.jpg\thttp://a.invalid/page\tCC-BY-4.0
Angelina Jolie\thttp://a.invalid/2.jpg
Matt Damon\thttp://a.invalid/3.jpg\t\tCC0-1.0
only one column
Matt Damon\thttp://a.invalid/4.jpg\tp\tl\textra
\thttp://a.invalid/no-name.jpg
Brad Pitt\thttp://a.invalid/5.jpg
"""


def test_url_list_format(tmp_path: Path) -> None:
    path = tmp_path / "urls.tsv"
    path.write_text(URL_LIST)
    parsed = read_url_list(path)
    assert dict(parsed.by_name) == {
        "Angelina Jolie": [
            ("http://a.invalid/1.jpg", "http://a.invalid/page", "CC-BY-4.0"),
            ("http://a.invalid/2.jpg", None, None),
        ],
        "Matt Damon": [("http://a.invalid/3.jpg", None, "CC0-1.0")],
        "Brad Pitt": [("http://a.invalid/5.jpg", None, None)],
    }
    assert [number for number, _ in parsed.malformed] == [7, 8, 9]


def test_url_list_preflight(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "urls.tsv"
    path.write_text(URL_LIST)
    with caplog.at_level(logging.WARNING):
        UrlsSource.check(PipelineConfig(crawl=settings(source="urls", urls_file=path)))
    assert "3 malformed line(s) skipped (line 7:" in caplog.text
    with pytest.raises(UserError, match="not a file"):
        UrlsSource.check(PipelineConfig(crawl=settings(source="urls", urls_file=tmp_path / "missing.tsv")))
    (tmp_path / "empty.tsv").write_text("# nothing\nname\turl\n")
    with pytest.raises(UserError, match="no usable rows"):
        UrlsSource.check(PipelineConfig(crawl=settings(source="urls", urls_file=tmp_path / "empty.tsv")))


def test_urls_source_fetches_its_names_rows_only(server: LocalServer, tmp_path: Path) -> None:
    path = tmp_path / "urls.tsv"
    rows = [
        ("Matt Damon", "/img/img33.jpg"),
        ("Matt Damon", "/status/404"),
        ("Matt Damon", "/img/img30.jpg"),
        ("Brad Pitt", "/img/img3.jpg"),
    ]
    path.write_text("".join(f"{name}\t{server.url(route)}\thttp://page.invalid/\tCC0-1.0\n" for name, route in rows))
    source = UrlsSource(settings(source="urls", urls_file=path, max_per_name=2))
    fetched = list(source.fetch("Matt Damon"))
    assert [(item.status, item.reason) for item in fetched] == [(OK, None), (DROPPED, "http_404")]
    assert (fetched[0].page_url, fetched[0].license, fetched[0].http_status) == ("http://page.invalid/", "CC0-1.0", 200)
    assert list(source.fetch("Nobody")) == []
    # max_per_name; Brad Pitt never asked; robots.txt and tdmrep.json once for the host
    site_files = {"/robots.txt": 1, "/.well-known/tdmrep.json": 1}
    assert server.hits() == Counter({"/img/img33.jpg": 1, "/status/404": 1, **site_files})


# -- search engines: icrawler's feeders and parsers, our downloader --------------------------------------
RESULTS = {
    "Angelina Jolie": [("/img/img1.jpg", "https://page.invalid/a1"), ("/gzip/img2.jpg", "https://page.invalid/a2"),
                       ("/status/404.png", "https://page.invalid/a3")],
    "Matt Damon": [("/img/img33.jpg", "https://page.invalid/m1")],
}  # fmt: skip
# What each engine's parser and our provenance make of RESULTS for "Angelina Jolie": (route, page url, license).
EXPECTED = {
    # BingParser keeps murls with ".jpg" only (icrawler issue #98); the .png hit is dropped
    "bing": [("/img/img1.jpg", "https://page.invalid/a1", None), ("/gzip/img2.jpg", "https://page.invalid/a2", None)],
    "baidu": [("/img/img1.jpg", "https://page.invalid/a1", None), ("/gzip/img2.jpg", "https://page.invalid/a2", None),
              ("/status/404.png", "https://page.invalid/a3", None)],
    "google": [("/img/img1.jpg", None, None), ("/gzip/img2.jpg", None, None), ("/status/404.png", None, None)],
    "flickr": [(route, FLICKR_PHOTO_PAGE.format(owner=f"owner{k}", id=k), "flickr-license-4")
               for k, route in enumerate(("/img/img1.jpg", "/gzip/img2.jpg", "/status/404.png"))],
}  # fmt: skip


def search_settings(server: LocalServer, engine: str, **values: object) -> CrawlSection:
    return settings(source=engine, search_base_url=server.url(f"/{engine}"), **values)


@pytest.mark.parametrize("engine", sorted(EXPECTED))
def test_search_engine_results(engine: str, server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLICKR_API_KEY", "test-key")
    server.search_results = {
        name: [(server.url(route), page) for route, page in hits] for name, hits in RESULTS.items()
    }
    source = SearchSource(search_settings(server, engine))
    fetched = list(source.fetch("Angelina Jolie"))
    assert [(item.url, item.page_url, item.license) for item in fetched] == [
        (server.url(route), page, license_) for route, page, license_ in EXPECTED[engine]
    ]
    assert [item.status for item in fetched[:2]] == [OK, OK] and source.name == engine
    assert "/img/img33.jpg" not in server.requests  # the other name's photo was never fetched


def test_search_stops_at_max_per_name(server: LocalServer) -> None:
    server.search_results = {
        "Angelina Jolie": [(server.url(f"/img/img{i}.jpg"), f"https://p.invalid/{i}") for i in (1, 2, 4, 5)]
    }
    found = SearchSource(search_settings(server, "bing", max_per_name=3)).search("Angelina Jolie portrait photo")
    assert [url for url, _, _ in found] == [server.url(f"/img/img{i}.jpg") for i in (1, 2, 4)]


def test_search_page_failure_fails_the_task(server: LocalServer) -> None:
    """No result page, no candidates: an exception for the runner (task retried next run), not empty rows."""
    source = SearchSource(settings(source="bing", search_base_url=server.url("/status/503")))
    with pytest.raises(SearchFailed, match=r"bing result page .* http_503"):
        list(source.fetch("Angelina Jolie"))


def test_preflight_stops_when_the_engine_is_unreachable() -> None:
    with pytest.raises(UserError) as error:
        SearchSource.check(PipelineConfig(crawl=settings(source="bing", search_base_url="http://127.0.0.1:9/")))
    assert "cannot reach the bing search engine" in str(error.value)
    assert "crawl.source=local" in str(error.value) and "crawl.source=urls" in str(error.value)


def test_preflight_refuses_a_private_engine_without_sending_anything(server: LocalServer) -> None:
    with pytest.raises(UserError, match="is a loopback address"):
        SearchSource.check(PipelineConfig(crawl=search_settings(server, "bing", allowed_networks=[])))
    assert server.requests == []


def test_flickr_needs_an_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLICKR_API_KEY", raising=False)
    with pytest.raises(UserError, match="FLICKR_API_KEY"):
        SearchSource.check(PipelineConfig(crawl=settings(source="flickr")))


def test_cli_without_network_stops_at_once_with_one_line(tmp_path: Path) -> None:
    engine = ["--set", "crawl.search_base_url=http://127.0.0.1:9", "--set", "crawl.allowed_networks=[127.0.0.1/32]"]
    result = run_cli("run", "--stage", "crawl", "--config", "cpu", "--out", str(tmp_path / "run"), *engine)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the bing search engine"), result.stderr
    assert not (tmp_path / "run" / "stages").exists()


# -- end to end through the CLI ------------------------------------------------------------------------
# route -> outcome after crawl (and filter, for rows the crawl kept); "Brad Pitt" is not in the names list.
URL_ROWS = [
    ("Angelina Jolie", "/img/img1.jpg", "ok"),
    ("Angelina Jolie", "/img/img10.jpg", "low_resolution"),  # 408 x 594
    ("Angelina Jolie", "/gzip/img2.jpg", "ok"),
    ("Angelina Jolie", "/redirect/2/img1.jpg", "duplicate"),  # the same bytes as the first row
    ("Angelina Jolie", "/short-cl/60000/img7.jpg", "decode_error"),  # a truncated JPEG gets past the crawl
    ("Angelina Jolie", "/status/404", "http_404"),
    ("Angelina Jolie", "/flaky/1/img4.jpg", "http_500"),  # transient: ok after --retry-failed
    ("Angelina Jolie", "/status/503", "http_503"),  # transient, and still failing on retry
    ("Angelina Jolie", "/drip/img6.jpg", "timeout"),
    ("Angelina Jolie", "/html-as-jpeg", "not_an_image"),
    ("Angelina Jolie", "/svg-as-jpeg", "not_an_image"),
    ("Angelina Jolie", "/empty", "zero_bytes"),
    ("Angelina Jolie", "/noai/img5.jpg", "robots_noai"),
    ("Angelina Jolie", "/endless", "too_large"),
    ("Angelina Jolie", "/loop", "too_many_redirects"),
    # unspecified: refused like any private target, and on Linux it would only ever reach loopback
    ("Angelina Jolie", "/to?url=http://0.0.0.0:9/x.jpg", "private_address"),
    ("Matt Damon", "/img/img33.jpg", "ok"),
    ("Brad Pitt", "/img/img3.jpg", "never fetched"),
]
TRANSIENT = {"/flaky/1/img4.jpg", "/status/503", "/drip/img6.jpg"}


def write_run_config(tmp_path: Path, crawl: dict) -> Path:
    """The CPU profile (real dlib face models), with these names and crawl settings."""
    names = tmp_path / "names.txt"
    names.write_text("Angelina Jolie\nMatt Damon\nNobody Listed\n")
    profile = yaml.safe_load((REPO / "configs" / "cpu.yaml").read_text())
    profile["run"]["names"] = str(names)
    profile["crawl"] = {"max_per_name": 50, "max_bytes": 5_000_000, "download": FAST, **crawl}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(profile))
    return config


def write_url_list(tmp_path: Path, server: LocalServer) -> Path:
    path = tmp_path / "urls.tsv"
    lines = ["name\turl\tpage_url\tlicense", "broken line without tabs"]
    lines += [f"{name}\t{server.url(route)}\thttps://page.invalid{route}\tCC-BY-4.0" for name, route, _ in URL_ROWS]
    path.write_text("\n".join(lines) + "\n")
    return path


def outcomes(out: Path, stage: str) -> dict[tuple[str, str], str]:
    return {(row["name"], row["url"]): row["reason"] or row["status"] for row in stage_rows(out, stage)}


@pytest.mark.slow
def test_urls_source_end_to_end_with_retry(server: LocalServer, tmp_path: Path) -> None:
    urls = write_url_list(tmp_path, server)
    config = write_run_config(
        tmp_path, {"source": "urls", "urls_file": str(urls), "allowed_networks": ["127.0.0.1/32"]}
    )
    out = tmp_path / "run"
    crawl = run_cli("run", "--stage", "crawl", "--config", str(config), "--out", str(out))
    assert crawl.returncode == 0, crawl.stderr
    assert "1 malformed line(s) skipped (line 2:" in crawl.stderr
    assert run_cli("run", "--stage", "filter", "--config", str(config), "--out", str(out)).returncode == 0

    got = {**outcomes(out, "crawl"), **outcomes(out, "filter")}
    expected = {(name, server.url(route)): outcome for name, route, outcome in URL_ROWS if name != "Brad Pitt"}
    expected[("Nobody Listed", None)] = "no_images_found"
    assert got == expected
    assert "/img/img3.jpg" not in server.requests
    rows = {row["url"]: row for row in stage_rows(out, "crawl")}
    first = rows[server.url("/img/img1.jpg")]
    assert (first["source"], first["page_url"], first["license"], first["http_status"]) == (
        "urls", "https://page.invalid/img/img1.jpg", "CC-BY-4.0", 200)  # fmt: skip
    assert (out / first["raw_path"]).read_bytes()[:2] == b"\xff\xd8"
    assert {row["url"] for row in rows.values() if row["status"] == FAILED} == {server.url(r) for r in TRANSIENT}

    before = len(server.requests)
    retry = run_cli("run", "--stage", "crawl", "--retry-failed", "--config", str(config), "--out", str(out))
    assert retry.returncode == 0, retry.stderr
    # only the transient failures, once each; a new crawl worker asks for robots.txt and tdmrep.json again
    assert Counter(server.requests[before:]) == Counter([*TRANSIENT, "/robots.txt", "/.well-known/tdmrep.json"])
    after = outcomes(out, "crawl")
    assert after[("Angelina Jolie", server.url("/flaky/1/img4.jpg"))] == "ok"
    assert after[("Angelina Jolie", server.url("/status/503"))] == "http_503"
    assert after[("Angelina Jolie", server.url("/img/img1.jpg"))] == "ok"  # kept rows untouched


@pytest.mark.slow
def test_bing_source_end_to_end(server: LocalServer, tmp_path: Path) -> None:
    server.search_results = {
        "Angelina Jolie": [(server.url("/img/img1.jpg"), "https://page.invalid/a1"),
                           (server.url("/img/img10.jpg"), "https://page.invalid/a10"),
                           (server.url("/status/404.jpg"), "https://page.invalid/gone")],
        "Matt Damon": [(server.url("/img/img33.jpg"), "https://page.invalid/m1")],
    }  # fmt: skip
    crawl = {"source": "bing", "search_base_url": server.url("/bing"), "allowed_networks": ["127.0.0.1/32"]}
    config = write_run_config(tmp_path, crawl)
    out = tmp_path / "run"
    result = run_cli("run", "--stage", "all", "--config", str(config), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert {**outcomes(out, "crawl"), **outcomes(out, "filter")} == {
        ("Angelina Jolie", server.url("/img/img1.jpg")): "ok",
        ("Angelina Jolie", server.url("/img/img10.jpg")): "low_resolution",
        ("Angelina Jolie", server.url("/status/404.jpg")): "http_404",
        ("Matt Damon", server.url("/img/img33.jpg")): "ok",
        ("Nobody Listed", None): "no_images_found",
    }
    crawled = {row["url"]: row for row in stage_rows(out, "crawl")}
    assert crawled[server.url("/img/img1.jpg")]["page_url"] == "https://page.invalid/a1"
    assert crawled[server.url("/img/img1.jpg")]["source"] == "bing"
    assert "/bing/images/async?q=Angelina+Jolie+portrait+photo&first=0" in server.requests


@pytest.mark.slow
def test_private_addresses_are_refused_by_default(server: LocalServer, tmp_path: Path) -> None:
    urls = write_url_list(tmp_path, server)
    config = write_run_config(tmp_path, {"source": "urls", "urls_file": str(urls)})
    out = tmp_path / "run"
    result = run_cli("run", "--stage", "crawl", "--config", str(config), "--out", str(out))
    assert result.returncode == 0, result.stderr
    reasons = Counter(row["reason"] for row in stage_rows(out, "crawl"))
    assert reasons == Counter({"private_address": len(URL_ROWS) - 1, "no_images_found": 1})
    bing = run_cli("run", "--stage", "crawl", "--config", str(config), "--out", str(out),
                   "--set", "crawl.source=bing", "--set", f"crawl.search_base_url={server.url('/bing')}")  # fmt: skip
    assert bing.returncode == 2 and "is a loopback address" in bing.stderr
    assert server.requests == []  # not one request reached the server
    assert identity_slug("Angelina Jolie") in {row["identity"] for row in stage_rows(out, "crawl")}
