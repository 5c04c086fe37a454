"""The review app's `a` and `r` on the queue's identity items (pipeline/review/answers.py), at request level over a
copy of the shared run: each item shows what the keys do and carries the decision the page's script posts;
posted as the script posts them, they are the decisions a curator expects (a merge for a pair, the gender
model's class word, a confirmation), written through the `decide` command's code, and `u` takes one back."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.core.decisions import CLASS_WORD, CONFIRM, MERGE, UNDO, current, read_log
from pipeline.core.rundir import RunDir
from pipeline.review.answers import flipped
from pipeline.review.app import TOKEN_HEADER, create_app
from pipeline.review.queue import CLASS_WORD as WORD_ITEM
from pipeline.review.queue import load_queue
from pipeline.review.serve import review_server
from tests import browser
from tests.shared_run import SharedRun

TOKEN = "answers-t0ken"
DAMON, CLOONEY = "matt_damon", "george_clooney"


def rewrite(run: Path, stage: str, slug: str, **columns: object) -> None:
    """An identity's part with these columns set on every row (what the stage would have flagged)."""
    path = run / "stages" / stage / f"part-{slug}.parquet"
    table = pq.read_table(path)
    for name, value in columns.items():
        field = table.schema.field(name)
        table = table.set_column(table.schema.get_field_index(name), field,
                                 pa.array([value] * table.num_rows, field.type))
    pq.write_table(table, path)


def flagged_run(shared_run: SharedRun, dest: Path) -> Path:
    """The shared run with one item of each identity kind: Matt Damon's captions saying "woman" against the gender
    model's real estimate (male), his folder flagged with a competing cluster, and George Clooney flagged as
    possibly the same person as him."""
    out = shared_run.copy(dest)
    caption = pq.read_table(out / "stages" / "caption" / f"part-{DAMON}.parquet")
    assert set(caption.filter(pc.equal(caption["status"], "ok"))["estimated_gender"].to_pylist()) == {"male"}
    rewrite(out, "caption", DAMON, class_word="woman", class_word_disagrees=True)
    rewrite(out, "verify", DAMON, identity_competing=True)
    rewrite(out, "hygiene", CLOONEY, possible_same_person=[DAMON], same_person_similarity=0.6)
    return out


def items(page: str) -> dict[tuple[str, str], dict[str, str]]:
    """(identity, the item's a-kind) -> the item's data attributes and its keys' line."""
    found = {}
    for article in re.findall(r'<article class="item".*?</article>', page, re.S):
        data = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', article))
        keys = re.search(r'<div class="keys">(.*?)</div>', article, re.S)
        found[(data["identity"], data["a-kind"])] = {**data, "keys": keys.group(1) if keys else ""}
    return found


def test_the_class_word_flip_follows_the_gender_models_estimate_at_the_words_age() -> None:
    assert [flipped(word, "male") for word in ("woman", "girl", "person", "man")] == ["man", "boy", "man", None]
    assert [flipped(word, "female") for word in ("man", "boy", "woman")] == ["woman", "girl", None]
    assert flipped("woman", None) is None  # no confident estimate: nothing to flip to


@pytest.mark.slow
def test_identity_items_answer_with_one_key(shared_run: SharedRun, tmp_path: Path) -> None:
    run = RunDir(str(flagged_run(shared_run, tmp_path / "run")))
    client = create_app(run, TOKEN).test_client()
    shown = {key: item for page in range(load_queue(run).pages)
             for key, item in items(client.get(f"/?page={page}&token={TOKEN}").text).items()}
    queue, captions = load_queue(run), pq.read_table(Path(run.root) / "stages" / "caption" / f"part-{DAMON}.parquet")
    words = [item for page in range(queue.pages) for item in queue.page(page) if item["kind"] == WORD_ITEM]
    assert len(words) == 1 < captions.num_rows  # his class word is one question, not one a photo

    word, competing, pair = shown[(DAMON, CLASS_WORD)], shown[(DAMON, CONFIRM)], shown[(CLOONEY, CONFIRM)]
    assert (word["a-value"], word["r-kind"], word["r-value"]) == ("woman", CLASS_WORD, "man")
    assert "keep the class word &#39;woman&#39;" in word["keys"] and "as the gender model says" in word["keys"]
    assert competing["r-kind"] == "open" and "largest face cluster" in competing["keys"]
    assert (pair["a-value"], pair["r-kind"], pair["r-value"]) == (f"different from {DAMON}", MERGE, DAMON)
    assert f"merge into {DAMON}" in pair["keys"]  # the name as listed (the shared run lists slugs)
    photo = next(item for (_, kind), item in shown.items() if kind == "accept")  # a photo keeps accept / reject
    assert photo["r-kind"] == "reject" and photo["image"]

    def post(item: dict[str, str], key: str) -> int:  # as review.js posts an identity item's answer
        asked = {"identity": item["identity"], "image": None, "kind": item[f"{key}-kind"],
                 "value": item[f"{key}-value"]}
        return client.post("/api/decide", json=asked, headers={TOKEN_HEADER: TOKEN}).status_code

    assert post(word, "r") == post(pair, "r") == post(competing, "a") == post(pair, "a") == 200
    decided = {(d.decision.identity, d.decision.kind, d.decision.value) for d in current(run)}
    assert decided == {(DAMON, CLASS_WORD, "man"), (CLOONEY, MERGE, DAMON), (DAMON, CONFIRM, competing["a-value"]),
                       (CLOONEY, CONFIRM, f"different from {DAMON}")}
    assert all(d.decision.by == "review app" for d in current(run))
    undo = {"identity": CLOONEY, "image": None, "kind": UNDO}
    assert client.post("/api/decide", json=undo, headers={TOKEN_HEADER: TOKEN}).status_code == 200
    assert read_log(run).rows[-1].decision.value == 4  # the latest in force of the identity's: the confirmation
    assert {(d.decision.identity, d.decision.kind) for d in current(run)} == {
        (DAMON, CLASS_WORD), (CLOONEY, MERGE), (DAMON, CONFIRM)}
    page = client.get(f"/identity/{CLOONEY}?token={TOKEN}").text
    assert f"merge {DAMON}" in page and "class_word man" in client.get(f"/?token={TOKEN}").text  # shown on items


@pytest.mark.slow
def test_r_on_a_class_word_item_in_a_real_browser_writes_the_gender_models_word(shared_run: SharedRun,
                                                                                 tmp_path: Path) -> None:
    """review.js sends the item's own answer: `r` on a class word item is the identity's class word, not a reject
    of the photo; `u` takes it back."""
    run = RunDir(str(flagged_run(shared_run, tmp_path / "run")))
    assert load_queue(run).page(0)[0]["kind"] == WORD_ITEM  # the model's confidence puts it first
    server, url = review_server(run, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    answered = "document.body.dataset.answered === '{}'".format
    try:
        browser.drive(url, [{"until": "document.body.dataset.ready === '1'"}, {"keys": "r", "until": answered(1)},
                            {"keys": "ku", "until": answered(2)}])
    finally:
        server.shutdown()
    written = [(d.decision.identity, d.decision.kind, d.decision.image, d.decision.value) for d in read_log(run).rows]
    assert written == [(DAMON, CLASS_WORD, None, "man"), (DAMON, UNDO, None, 1)]
