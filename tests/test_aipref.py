"""AI usage preferences (IETF AIPREF, draft-ietf-aipref-vocab-06 and draft-ietf-aipref-attach-05): the
Content-Usage header and robots.txt rules, parsed as the drafts say and honoured by the crawl end to end
against the loopback server (a refused path is never requested; every row records what it found)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pytest

from pipeline.core.config import PipelineConfig
from pipeline.core.names import identity_slug
from pipeline.core.rundir import RunDir
from stages.crawl import CrawlStage
from stages.sources.aipref import RobotsUsage, header_refusal, training_preference
from benchmarks.fixtures.http_server import LocalServer, serving

TOKEN = "id-dataset-pipeline"  # the default user agent's product token
QUOTED_N = 'train-ai="n"'  # a String, not the Token n: the preference is unknown
FAST = {"connect_timeout": 1.0, "read_timeout": 1.0, "deadline": 2.0, "retries": 1, "backoff": 0.05}


@pytest.mark.parametrize(
    ("expression", "preference"),
    [("train-ai=n", "n"), ("train-ai=y", "y"), ("search=n, train-ai=n;reason=x", "n"),
     ("train-genai=n", "n"),  # drafts -03..-05's generative-training label still refuses
     ("train-ai=y, train-genai=n", "n"),  # any disallow wins
     ("train-ai=n, train-ai=y", "y"),  # RFC 9651: the last value of a repeated key
     ('train-ai="n"', None), ("train-ai", None), ("train-ai=no", None),  # not the token y or n: unknown
     ("Train-AI=n", None), ("train-ai=n,,", None),  # not a Dictionary: unknown
     ("search=n, ai-use=n", None), ("", None)],  # other categories say nothing about training
)  # fmt: skip
def test_training_preference_follows_the_vocabulary(expression: str, preference: str | None) -> None:
    assert training_preference(expression) == preference


def test_the_header_refuses_on_train_ai_n_and_records_what_it_found() -> None:
    evidence: dict[str, str] = {}
    assert header_refusal(["search=y", "train-ai=n"], evidence)[0] == "ai_usage_refused"  # two fields, one dict
    assert evidence == {"content_usage_header": "refused"}
    assert header_refusal(["train-ai=y"], evidence) is None and evidence["content_usage_header"] == "pass"
    assert header_refusal([], evidence) is None and evidence["content_usage_header"] == "absent"


# the attach draft's example, with a group for us and rules of equal length that disagree
ROBOTS = f"""User-Agent: *
Allow: /
Disallow: /never/
Content-Usage: / train-ai=n
Content-Usage: /ai-ok/ train-ai=y

User-Agent: ExampleBot
Allow: /
Content-Usage: / train-ai=y

User-agent: {TOKEN}
content-usage : /  search=y   # a comment
Content-Usage:\t/train/*.jpg$\ttrain-ai=n
Content-Usage: /mixed/ train-ai=y
Content-Usage: /mixed/ train-ai=n
Content-Usage: nopath train-ai=n
"""


@pytest.mark.parametrize(
    ("token", "path", "outcome"),
    [("examplebot", "/test", "pass"), ("otherbot", "/test", "refused"), ("otherbot", "/ai-ok/test", "pass"),
     (TOKEN, "/test", "pass"), (TOKEN, "/train/a.jpg", "refused"), (TOKEN, "/train/a.jpg?x=1", "pass"),
     (TOKEN, "/mixed/a.jpg", "refused")],
)  # fmt: skip
def test_robots_rules_pick_the_group_and_the_longest_path(token: str, path: str, outcome: str) -> None:
    evidence: dict[str, str] = {}
    refusal = RobotsUsage.parse(ROBOTS).refusal(f"http://site.example.com{path}", token, evidence)
    assert evidence["content_usage_robots"] == outcome and (refusal is not None) == (outcome == "refused")


def test_a_robots_txt_without_rules_says_nothing() -> None:
    evidence: dict[str, str] = {}
    assert RobotsUsage.parse("User-agent: *\nDisallow: /x\n").refusal("http://a.example.com/p", TOKEN, evidence) is None
    assert evidence == {"content_usage_robots": "absent"}


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with serving() as running:
        yield running


def test_crawl_honours_ai_preferences_end_to_end(server: LocalServer, tmp_path: Path) -> None:
    robots = f"User-agent: {TOKEN}\nAllow: /\nContent-Usage: / train-ai=y\nContent-Usage: /img/no-ai/ train-ai=n\n"
    server.files["/robots.txt"] = (200, robots.encode(), {"Content-Type": "text/plain"})
    rows = [  # (path, expected reason, the row's Content-Usage evidence: robots.txt, header)
        ("/img/img1.jpg", "ok", ("pass", "absent")),
        ("/img/no-ai/img2.jpg", "ai_usage_refused", ("refused", None)),  # refused before any request
        (f"/headers/img4.jpg?Content-Usage={quote('search=y, train-ai=n')}", "ai_usage_refused", ("pass", "refused")),
        (f"/headers/img5.jpg?Content-Usage={quote('train-ai=y')}", "ok", ("pass", "pass")),
        (f"/headers/img6.jpg?Content-Usage={quote(QUOTED_N)}", "ok", ("pass", "pass")),  # unknown: kept
    ]
    urls = [server.url(path) for path, _, _ in rows]
    (tmp_path / "urls.tsv").write_text("".join(f"Angelina Jolie\t{url}\n" for url in urls))
    config = PipelineConfig.model_validate({"crawl": {
        "source": "urls", "urls_file": str(tmp_path / "urls.tsv"), "allowed_networks": ["127.0.0.1/32"],
        "download": FAST}})  # fmt: skip
    stage = CrawlStage(config, RunDir(str(tmp_path / "run")))
    stage.setup()
    out = stage.process(pa.table({"identity": [identity_slug("Angelina Jolie")], "name": ["Angelina Jolie"]}))
    got = {row["url"]: row for row in out.to_pylist()}
    for url, (_, reason, (from_robots, from_header)) in zip(urls, rows, strict=True):
        evidence = json.loads(got[url]["consent"])
        assert (got[url]["reason"] or got[url]["status"]) == reason, url
        assert (evidence["content_usage_robots"], evidence.get("content_usage_header")) == (from_robots, from_header)
        assert (got[url]["raw_path"] is None) == (reason != "ok")  # refused bytes are never stored
    assert server.hits().get("/img/no-ai/img2.jpg", 0) == 0 and server.hits()["/robots.txt"] == 1


def test_ai_preferences_can_be_switched_off(server: LocalServer, tmp_path: Path) -> None:
    from stages.sources.http import Downloader

    config = PipelineConfig.model_validate({"crawl": {"allowed_networks": ["127.0.0.1/32"], "download": FAST,
                                                      "consent": {"content_usage": False}}})
    url = server.url(f"/headers/img1.jpg?Content-Usage={quote('train-ai=n')}")
    fetched = Downloader(config.crawl).fetch_image(url)
    assert fetched.status == "ok"
    assert (fetched.consent["content_usage_robots"], fetched.consent["content_usage_header"]) == ("off", "off")
