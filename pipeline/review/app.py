"""The review app's routes (Flask): the triage queue, an identity's page, search, thumbnails, decisions, apply.

Every request needs the token (`?token=` on pages and assets; a header or form field on writes), else 403.
Writes are POST only, with the token in the `X-Review-Token` header or a `token` form field, never the URL,
so a page on another site can neither read the app nor write a decision. Decisions go through
`pipeline.decide.record`, the function the `decide` command uses.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, field

from flask import Flask, Response, abort, jsonify, render_template, request

from pipeline.core.decisions import TARGET_FACE, UNDO, Decision, in_force, read_log
from pipeline.core.errors import UserError
from pipeline.core.names import Identity, IdentityIndex, run_identities
from pipeline.core.rundir import RunDir
from pipeline.decide import record
from pipeline.report.thumbs import THUMBS, Thumbs
from pipeline.review.answers import answers
from pipeline.review.apply import ApplyJob
from pipeline.review.pending import pending
from pipeline.review.queue import CLASS_WORD as CLASS_WORD_ITEM
from pipeline.review.queue import Queue, load_queue
from pipeline.review.tables import VERIFY, class_word_of, identity_photos, read_columns, verify_photos
from stages.class_words import CANONICAL

SHA256 = re.compile(r"[0-9a-f]{64}")
TOKEN_HEADER = "X-Review-Token"
SEARCH_HITS = 50


@dataclass
class Review:
    """What the app holds between requests: the run, its names, the queue and the apply job."""

    run: RunDir
    token: str
    identities: list[Identity]
    counted: dict = field(default_factory=dict)  # pending()'s cache: identity -> its count and what it was made from

    def __post_init__(self) -> None:
        self.names = {identity.slug: identity.name for identity in self.identities}
        self.queue = load_queue(self.run)
        self.job = ApplyJob(self.run, on_done=self.refresh)
        self.thumbs = Thumbs(self.run)  # lists report/thumbs once

    def refresh(self) -> None:
        """After an apply, before its end is reported: the queue without what the apply changed."""
        self.queue = load_queue(self.run)

    def current_queue(self) -> Queue:
        return self.queue

    def pending(self) -> int:
        return pending(self.run, self.counted)


def create_app(run: RunDir, token: str) -> Flask:
    app = Flask(__name__)
    review = Review(run, token, run_identities(run))
    app.extensions["review"] = review
    review.pending()  # counted now, so the first page does not read every decided identity's parts
    for page in ("queue.html", "identity.html", "search.html"):  # compiled now, not on the first request
        app.jinja_env.get_template(page)

    @app.before_request
    def check_token() -> None:
        if request.method == "POST":
            given = request.headers.get(TOKEN_HEADER) or request.form.get("token")
        else:
            given = request.args.get("token")
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            abort(403)

    @app.after_request
    def no_framing(response: Response) -> Response:
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"  # the token is in the URL: never send it on
        return response

    _pages(app, review)
    _writes(app, review)
    return app


def _pages(app: Flask, review: Review) -> None:
    @app.get("/")
    def queue_page() -> str:
        queue = review.current_queue()
        number = request.args.get("page", 0, type=int)
        items = _with_faces(review, queue.page(number))
        return render_template("queue.html", items=items, page=number, pages=queue.pages, total=queue.items,
                               **_common(review))

    @app.get("/identity/<slug>")
    def identity_page(slug: str) -> str:
        names = review.names
        if slug not in names:
            abort(404)
        photos = _decided(review, slug, identity_photos(review.run, slug))
        decided = _decisions_of(review, {slug}).get((slug, None), [])
        return render_template("identity.html", slug=slug, name=names[slug], photos=photos, class_words=CANONICAL,
                               identity_decisions=decided, **_common(review))

    @app.get("/search")
    def search() -> str:
        query = request.args.get("q", "").strip()
        return render_template("search.html", query=query, hits=_search(review, query), **_common(review))

    @app.get("/thumb/<slug>/<image_id>.jpg")
    def thumb(slug: str, image_id: str) -> Response:
        table = read_columns(review.run, VERIFY, slug, ["image_id", "raw_path"])
        row = next((r for r in (table.to_pylist() if table is not None else []) if r["image_id"] == image_id), None)
        data = _thumbnail(review, row) if row else None
        if data is None:
            abort(404)
        return Response(data, mimetype="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/apply")
    def apply_status() -> Response:
        return jsonify({**review.job.status(), "pending": review.pending()})


def _writes(app: Flask, review: Review) -> None:
    @app.post("/api/decide")
    def decide() -> tuple[Response, int] | Response:
        given = request.get_json(silent=True) or request.form.to_dict()
        try:
            row = record(review.run, _decision(review, given))
        except (UserError, TypeError, ValueError) as exc:
            return jsonify({"error": str(exc)}), 400
        return jsonify({"row": row, "pending": review.pending()})

    @app.post("/api/apply")
    def apply() -> tuple[Response, int]:
        started = review.job.start()
        return jsonify(review.job.status()), 202 if started else 409


def _decision(review: Review, given: dict) -> Decision:
    """The decision a request asks for; `undo` takes back the latest decision in force for that photo."""
    slug, image, kind = str(given.get("identity", "")), given.get("image") or None, str(given.get("kind", ""))
    if slug not in review.names:
        raise UserError(f"unknown identity {slug!r}")
    note, by = str(given.get("note", "")), "review app"
    if kind == UNDO:
        mine = [logged for logged in in_force(read_log(review.run).rows)
                if logged.decision.identity == slug and logged.decision.image == image]
        if not mine:
            raise UserError("no decision to undo for this photo")
        return Decision(slug, UNDO, value=mine[-1].row, note=note, by=by)
    value = given.get("value")
    return Decision(slug, kind, image, int(value) if kind == TARGET_FACE else value, note, by)


def _thumbnail(review: Review, row: dict) -> bytes | None:
    """The report's thumbnail of the photo (made now if missing); one made again if a report pruned it since."""
    for _ in range(2):
        made = review.thumbs.raw(row, None)
        if made is None:
            return None
        name = made.removeprefix("thumbs/")
        try:
            return review.run.read_bytes(f"{THUMBS}/{name}")
        except FileNotFoundError:
            review.thumbs.cached.discard(name)
    return None


def _common(review: Review) -> dict:
    return {"token": review.token, "pending": review.pending(), "names": review.names,
            "run": review.run.uri}


def _decisions_of(review: Review, slugs: set[str]) -> dict[tuple[str, str | None], list[str]]:
    """In force, per (identity, image): how each reads ("reject", "target_face 1")."""
    found: dict[tuple[str, str | None], list[str]] = {}
    for logged in in_force(read_log(review.run).rows):
        d = logged.decision
        if d.identity in slugs:
            found.setdefault((d.identity, d.image), []).append(d.kind if d.value is None else f"{d.kind} {d.value}")
    return found


def _with_faces(review: Review, items: list[dict]) -> list[dict]:
    """The page's items with their photo's faces and size (read per identity, only for this page)."""
    decided = _decisions_of(review, {item["identity"] for item in items})
    photos: dict[str, dict[str, dict]] = {}
    for slug in {item["identity"] for item in items if item["image_id"]}:
        photos[slug] = verify_photos(review.run, slug, {item["image_id"] for item in items if item["identity"] == slug})
    words = {slug: class_word_of(review.run, slug) for slug in {item["identity"] for item in items
                                                                if item["kind"] == CLASS_WORD_ITEM}}
    shown = [{**photos.get(item["identity"], {}).get(item["image_id"], {}), **item,
              "class_word": words.get(item["identity"]), "decided": _item_decisions(decided, item)} for item in items]
    return [{**item, "answers": answers(item, review.names)} for item in shown]


def _item_decisions(decided: dict[tuple[str, str | None], list[str]], item: dict) -> list[str]:
    """A photo item shows its photo's decisions; an identity item (and a class word's) the identity's."""
    photo = item["image_id"] if item["kind"] != CLASS_WORD_ITEM else None
    return decided.get((item["identity"], photo), [])


def _decided(review: Review, slug: str, photos: list[dict]) -> list[dict]:
    decided = _decisions_of(review, {slug})
    return [{**photo, "identity": slug, "decided": decided.get((slug, photo["image_id"]), []),
             "answers": answers(photo, review.names)} for photo in photos]


def _search(review: Review, query: str) -> list[dict]:
    """Identities whose name or slug holds the query; for a sha256, the identities holding that photo."""
    if not query:
        return []
    lowered = query.lower()
    if SHA256.fullmatch(lowered):
        return [{"slug": slug, "name": review.names[slug], "image": lowered} for slug in _holding(review, lowered)]
    try:
        exact = [IdentityIndex(review.identities).resolve(query)]
    except UserError:
        exact = []
    near = [i for i in review.identities if lowered in i.name.lower() or lowered in i.slug]
    unique = {i.slug: i for i in [*exact, *near]}
    return [{"slug": i.slug, "name": i.name, "image": None} for i in list(unique.values())[:SEARCH_HITS]]


def _holding(review: Review, image_id: str) -> list[str]:
    return review.current_queue().holding(image_id)
