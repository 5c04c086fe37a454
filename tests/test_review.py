"""The review app (pipeline/review) over a copy of the shared cpu-profile run (tests/shared_run.py): the token
on every request, writes as POSTs through the decisions log, the triage queue's order, identity pages,
search, the count of decisions not yet applied; then a real browser (Qt WebEngine, tests/browser.py)
triaging by keyboard and applying, checked in the shards."""

from __future__ import annotations

import hashlib
import html
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.core.decisions import ACCEPT, CLASS_WORD, REJECT, TARGET_FACE, UNDO, current, read_log
from pipeline.core.reasons import CURATOR_REJECTED, NOT_TARGET_IDENTITY
from pipeline.core.rundir import RunDir
from pipeline.review.app import TOKEN_HEADER, create_app
from pipeline.review.pending import pending
from pipeline.review.queue import PAGE, QUEUE, SIMILARITY, load_queue
from pipeline.review.queue import TARGET_FACE as GROUP_PHOTO
from pipeline.review.serve import review_server
from tests import browser
from tests.conftest import REPO
from tests.shared_run import HOSTILE_NAME, SLUGS, SharedRun

TOKEN = "t0ken-for-tests"
IMPOSTOR = "img39.jpg"  # George Clooney, hidden in Matt Damon's folder: verify drops it


@pytest.fixture(scope="module")
def review_run(shared_run: SharedRun, tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """A copy of the shared run: the app writes its queue and decisions into it."""
    return RunDir(str(shared_run.copy(tmp_path_factory.mktemp("review") / "run")))


@pytest.fixture
def client(review_run: RunDir):
    review_run.delete("curation/decisions.jsonl") if review_run.exists("curation/decisions.jsonl") else None
    return create_app(review_run, TOKEN).test_client()


def sha256_of(faces: dict, photo: str) -> str:
    return hashlib.sha256((faces["images"] / photo).read_bytes()).hexdigest()


def verify_rows(run: RunDir) -> list[dict]:
    return [row for path in sorted(Path(run.uri, "stages", "verify").glob("part-*.parquet"))
            for row in pq.read_table(path, columns=["identity", "image_id", "status", "reason",
                                                    "sim_to_centroid", "large_faces"]).to_pylist()]


@pytest.mark.slow
def test_every_request_needs_the_token(client, review_run: RunDir) -> None:
    image = verify_rows(review_run)[0]
    paths = ["/", "/identity/matt_damon", "/search?q=matt", "/static/review.js", "/api/apply",
             f"/thumb/{image['identity']}/{image['image_id']}.jpg"]
    for path in paths:
        joiner = "&" if "?" in path else "?"
        assert client.get(path).status_code == 403, path
        assert client.get(f"{path}{joiner}token=wrong").status_code == 403, path
        assert client.get(f"{path}{joiner}token={TOKEN}").status_code == 200, path
    assert client.get(f"/identity/nobody_at_all?token={TOKEN}").status_code == 404
    assert client.get("/?token=\u00e9t\u00e9").status_code == 403  # any text: refused, never an error


@pytest.mark.slow
def test_a_decision_is_a_post_with_the_token_outside_the_url(client, review_run: RunDir, faces: dict) -> None:
    impostor = sha256_of(faces, IMPOSTOR)
    asked = {"identity": "matt_damon", "image": impostor, "kind": ACCEPT}
    assert client.get(f"/api/decide?token={TOKEN}").status_code == 405  # a link or an <img> cannot write
    assert client.post(f"/api/decide?token={TOKEN}", json=asked).status_code == 403  # not from the URL
    assert client.post("/api/decide", json=asked, headers={TOKEN_HEADER: "wrong"}).status_code == 403
    assert client.post("/api/apply", data={"token": "wrong"}).status_code == 403
    assert read_log(review_run).rows == []

    answer = client.post("/api/decide", json=asked, headers={TOKEN_HEADER: TOKEN})
    assert answer.status_code == 200 and answer.json == {"row": 1, "pending": 1}
    form = client.post("/api/decide", data={**asked, "kind": REJECT, "token": TOKEN})  # a form field works too
    assert form.status_code == 200 and form.json["row"] == 2
    [decided] = current(review_run)  # through the decisions log: the reject replaced the accept
    decision = decided.decision
    assert (decision.identity, decision.image, decision.kind) == ("matt_damon", impostor, REJECT)
    assert decision.by == "review app"
    assert pending(review_run) == 1  # verify drops it already, but not yet as curator_rejected

    undo = client.post("/api/decide", json={**asked, "kind": UNDO}, headers={TOKEN_HEADER: TOKEN})
    assert undo.status_code == 200 and read_log(review_run).rows[-1].decision.value == 2
    assert [logged.decision.kind for logged in current(review_run)] == [ACCEPT]
    bad = client.post("/api/decide", json={**asked, "image": "not-a-sha"}, headers={TOKEN_HEADER: TOKEN})
    assert bad.status_code == 400 and "sha256" in bad.json["error"]

    page = client.get(f"/identity/matt_damon?token={TOKEN}").text  # the identity's class word, as buttons
    assert 'data-kind="class_word" data-value="woman"' in page
    word = {"identity": "matt_damon", "kind": CLASS_WORD, "value": "person"}
    assert client.post("/api/decide", json=word, headers={TOKEN_HEADER: TOKEN}).status_code == 200
    assert [(d.decision.kind, d.decision.value) for d in current(review_run)][-1] == (CLASS_WORD, "person")
    assert "class_word person" in client.get(f"/identity/matt_damon?token={TOKEN}").text


@pytest.mark.slow
def test_a_reject_of_a_kept_photo_is_pending_until_applied(client, review_run: RunDir) -> None:
    kept = next(row for row in verify_rows(review_run) if row["status"] == "ok" and row["identity"] == "matt_damon")
    asked = {"identity": "matt_damon", "image": kept["image_id"], "kind": REJECT}
    assert client.post("/api/decide", json=asked, headers={TOKEN_HEADER: TOKEN}).json["pending"] == 1
    page = client.get(f"/?token={TOKEN}").text
    assert re.search(r'id="pending">1<', page)
    client.post("/api/decide", json={**asked, "kind": UNDO}, headers={TOKEN_HEADER: TOKEN})
    assert pending(review_run) == 0


@pytest.mark.slow
def test_the_queue_puts_the_doubtful_first(review_run: RunDir, faces: dict, tmp_path: Path) -> None:
    queue = load_queue(review_run, rebuild=True)
    items = [item for number in range(queue.pages) for item in queue.page(number)]
    assert len(items) == queue.items and all(len(queue.page(n)) <= PAGE for n in range(queue.pages))
    assert [item["doubt"] for item in items] == sorted((item["doubt"] for item in items), reverse=True)
    rows = verify_rows(review_run)
    judged = [row for row in rows if row["status"] == "ok" or row["reason"] == NOT_TARGET_IDENTITY]
    photos = [item for item in items if item["kind"] == SIMILARITY]
    assert {(i["identity"], i["image_id"]) for i in photos} == {(r["identity"], r["image_id"]) for r in judged}
    kept = [item for item in photos if item["status"] == "ok"]
    assert kept[0]["value"] == min(row["sim_to_centroid"] for row in judged if row["status"] == "ok")
    dropped = [item for item in photos if item["status"] != "ok"]
    assert dropped[0]["value"] == max(row["sim_to_centroid"] for row in judged if row["status"] != "ok")
    assert sha256_of(faces, IMPOSTOR) in {item["image_id"] for item in dropped}
    groups = {(i["identity"], i["image_id"]) for i in items if i["kind"] == GROUP_PHOTO}
    assert groups == {(r["identity"], r["image_id"]) for r in rows if r["status"] == "ok" and r["large_faces"] > 1}
    assert ("angelina_jolie", sha256_of(faces, "couple.jpg")) in groups
    assert load_queue(review_run).items == queue.items  # the cached file, unchanged parts: not built again
    assert review_run.exists(QUEUE)

    copy = RunDir(str(shutil.copytree(review_run.uri, tmp_path / "run")))
    part = Path(copy.uri, "stages", "verify", "part-matt_damon.parquet")  # rewritten without its kept photos
    rows = pq.read_table(part)
    pq.write_table(rows.filter(pc.not_equal(rows["status"], "ok")), part)
    updated = load_queue(copy)  # only Matt Damon's items built again
    again = [item for number in range(updated.pages) for item in updated.page(number)]
    kept = {(i["identity"], i["image_id"]) for i in items if i["identity"] == "matt_damon" and i["status"] == "ok"}
    assert kept and [i for i in items if (i["identity"], i["image_id"]) not in kept] == again
    assert again == [i for n in range(updated.pages) for i in load_queue(copy, rebuild=True).page(n)]


@pytest.mark.slow
def test_an_identity_page_shows_every_photo_and_search_finds_it(client, review_run: RunDir, faces: dict) -> None:
    page = client.get(f"/identity/matt_damon?token={TOKEN}").text
    mine = [row for row in verify_rows(review_run) if row["identity"] == "matt_damon"]
    assert mine and all(row["image_id"] in page for row in mine)
    [impostor] = [card for card in page.split("<article")[1:] if sha256_of(faces, IMPOSTOR) in card]
    assert f"dropped: {NOT_TARGET_IDENTITY}" in impostor and "similarity 0." in impostor
    assert page.count('class="face target"') == sum(1 for row in mine)  # the target face boxed on every photo

    hostile = client.get(f"/identity/{SLUGS[-1]}?token={TOKEN}").text
    assert "<script>alert('name')</script>" not in hostile and "&lt;script&gt;" in hostile

    by_name = client.get(f"/search?q=Damon&token={TOKEN}").text
    assert f'href="/identity/matt_damon?token={TOKEN}"' in by_name
    by_hash = client.get(f"/search?q={sha256_of(faces, IMPOSTOR).upper()}&token={TOKEN}").text
    assert f'href="/identity/matt_damon?token={TOKEN}"' in by_hash and "angelina_jolie" not in by_hash
    assert HOSTILE_NAME not in client.get(f"/search?q=zo&token={TOKEN}").text  # escaped, never raw


@pytest.mark.slow
def test_a_thumbnail_is_the_photo_from_the_run(client, review_run: RunDir, faces: dict) -> None:
    answer = client.get(f"/thumb/matt_damon/{sha256_of(faces, IMPOSTOR)}.jpg?token={TOKEN}")
    assert answer.status_code == 200 and answer.mimetype == "image/jpeg" and answer.data[:2] == b"\xff\xd8"
    assert client.get(f"/thumb/matt_damon/{'0' * 64}.jpg?token={TOKEN}").status_code == 404


@pytest.mark.slow
def test_keyboard_triage_then_apply_in_a_real_browser(shared_run: SharedRun, tmp_path: Path) -> None:
    """The most doubtful photo rejected with `r`, the next accepted with `a`, that accept taken back with `k` `u`;
    then the apply button: the rejected photo leaves the shards, and nothing is left to apply."""
    run = RunDir(str(shared_run.copy(tmp_path / "run")))
    server, url = review_server(run, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        first, second = load_queue(run).page(0)[:2]
        assert first["status"] == second["status"] == "ok"  # both in the shards before
        answered = "document.body.dataset.answered === '{}'".format
        dom = browser.drive(url, [
            {"until": "document.body.dataset.ready === '1'"},
            {"keys": "r", "until": answered(1)},
            {"keys": "a", "until": answered(2)},
            {"keys": "ku", "until": answered(3)},
            {"click": "#apply", "until": "document.body.dataset.applied !== undefined"},
        ], timeout=400)
    finally:
        server.shutdown()
        server.app.extensions["review"].job.stop()  # an apply the browser gave up on must not outlive the test
    assert [(d.decision.kind, d.decision.image) for d in current(run)] == [(REJECT, first["image_id"])]
    assert [d.decision.kind for d in read_log(run).rows] == [REJECT, ACCEPT, UNDO]
    assert read_log(run).rows[1].decision.image == second["image_id"]
    progress = html.unescape(re.search(r'<pre id="progress"[^>]*>(.*?)</pre>', dom, re.S).group(1))
    assert re.search(r'data-applied="([^"]*)"', dom).group(1) == "0", progress[-2000:]
    assert re.search(r'id="pending">([^<]*)<', dom).group(1) == "0"
    shards = [row for path in Path(run.uri, "shards").glob("train-*.parquet")
              for row in pq.read_table(path, columns=["identity", "image_id"]).to_pylist()]
    assert (first["identity"], first["image_id"]) not in {(row["identity"], row["image_id"]) for row in shards}
    assert (second["identity"], second["image_id"]) in {(row["identity"], row["image_id"]) for row in shards}
    rejected = [row for row in verify_rows(run) if row["image_id"] == first["image_id"]]
    assert [row["reason"] for row in rejected] == [CURATOR_REJECTED]


@pytest.mark.slow
def test_the_command_listens_on_loopback_with_a_fresh_token(review_run: RunDir) -> None:
    command = [sys.executable, "-m", "pipeline", "review", "--out", review_run.uri, "--port", "0"]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as app:
        try:
            line = app.stdout.readline()
            while line and " open " not in line:  # first it says it reads the run
                line = app.stdout.readline()
            url = re.search(r"open (" + re.escape("http://127.0.0.1:") + r"\d+/\?token=)([\w-]{32})$", line.strip())
            assert url, line
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url.group(1) + "x" * 32, timeout=30)
            assert refused.value.code == 403
            with urllib.request.urlopen(url.group(1) + url.group(2), timeout=30) as page:
                assert page.status == 200 and "Triage queue" in page.read().decode()
        finally:
            app.terminate()


@pytest.mark.slow
def test_a_target_face_answer_names_another_face_of_a_group_photo(client, review_run: RunDir, faces: dict) -> None:
    couple = sha256_of(faces, "couple.jpg")
    target = pq.read_table(Path(review_run.uri, "stages", "verify", "part-angelina_jolie.parquet"),
                           columns=["image_id", "target_face"]).to_pylist()
    [current_target] = [row["target_face"] for row in target if row["image_id"] == couple]
    page = client.get(f"/identity/angelina_jolie?token={TOKEN}").text
    [card] = [card for card in page.split("<article")[1:] if f'data-image="{couple}"' in card]
    assert int(re.search(r'data-faces="(\d+)"', card).group(1)) >= 2 and card.count('class="face') >= 2
    asked = {"identity": "angelina_jolie", "image": couple, "kind": TARGET_FACE, "value": 1 - current_target}
    assert client.post("/api/decide", json=asked, headers={TOKEN_HEADER: TOKEN}).json["pending"] == 1
    [decided] = current(review_run)
    assert (decided.decision.kind, decided.decision.value) == (TARGET_FACE, 1 - current_target)
    same = {**asked, "value": current_target}  # the face verify already took: nothing to apply
    assert client.post("/api/decide", json=same, headers={TOKEN_HEADER: TOKEN}).json["pending"] == 0
