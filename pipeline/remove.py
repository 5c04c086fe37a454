"""`python -m pipeline remove`: take an identity, a photo, a URL, a domain or a face out of a run for good.

The request goes into the removals ledger first (who, what, when, why), then the whole ledger is
applied to the run (`pipeline.dataset.takedown`); the crawl and the shard step consult the ledger,
so no later run, `--force` included, brings it back. The same command again finishes an
interrupted takedown without a second entry. An identity is named as everywhere (its name in any
case or Unicode form, its slug or its readable slug); a local crawl's file by its `local:` URL or
by its `file://` URL, which covers its rows in runs from before `local:` URLs too.
"""

from __future__ import annotations

import argparse
import getpass
import re
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.errors import UserError
from pipeline.core.names import Identity, IdentityIndex
from pipeline.core.removals import Ledger, Removal, host_of, load_ledger, new_removal, record
from pipeline.core.rundir import RunDir
from pipeline.dataset.takedown import apply_ledger, covered, describe, verified_photos
from pipeline.core.markers import part_path
from pipeline.dataset.takedown_parts import CRAWL, crawled
from pipeline.remove_face import face_request, write_receipt
from stages.sources.local import url_forms

if TYPE_CHECKING:
    from pipeline.report.state import RunState

SHA256 = re.compile(r"[0-9a-f]{64}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--identity", metavar="NAME",
                        help="a name (any case or Unicode form), its slug or its readable slug (angelina_jolie)")
    target.add_argument("--image", metavar="SHA256", help="a photo's image_id (sha256 of its bytes), wherever it is")
    target.add_argument("--url", help="an image URL exactly as crawled (the url column); a local file as "
                        "local:<path under crawl.local_root> or as its file:// URL")
    target.add_argument("--domain", metavar="HOST",
                        help="every image served from, or found on a page of, HOST or its subdomains")
    target.add_argument("--face", metavar="PHOTO", action="append", type=Path,
                        help="a photo of the person (repeat for several): every photo where they are the target is "
                        "taken down; beside someone else, governance.bystander blurs or drops (docs/governance.md)")
    parser.add_argument("--reason", help="why (e.g. 'subject request', 'copyright'); status, report and card count by it")
    parser.add_argument("--by", help="who asked or acted (default: the user running the command)")


def requested(args: argparse.Namespace, state: RunState, run: RunDir) -> tuple[str, str, str | None]:
    """(kind, value as the ledger keeps it, identity name) from the command line."""
    if args.identity is not None:
        return "identity", *_identity(args.identity, state, run)
    if args.image is not None:
        image = args.image.strip().lower()
        if not SHA256.fullmatch(image):
            raise UserError(f"--image {args.image!r} is not a sha256", "pass the photo's image_id: 64 hex digits")
        return "image", image, None
    if args.url is not None:
        return "url", url_forms(args.url.strip(), state.config.crawl.local_root)[0], None
    host = args.domain.strip().lower().rstrip(".")
    if not host or host_of(f"http://{host}/") != host:
        raise UserError(f"--domain {args.domain!r} is not a host name", "pass the host alone, e.g. example.org")
    return "domain", host, None


def _identity(given: str, state: RunState, run: RunDir) -> tuple[str, str]:
    """Today's names, and the identities an earlier names list crawled (named as their crawl rows name them)."""
    listed = {identity.slug for identity in state.identities}
    earlier = [Identity(slug, _crawled_name(run, slug)) for slug in crawled(run) if slug not in listed]
    found = IdentityIndex([*state.identities, *earlier]).resolve(given)
    return found.slug, found.name


def _crawled_name(run: RunDir, slug: str) -> str:
    names = run.read_table(part_path(CRAWL, slug), ["name"])["name"].to_pylist()
    return names[0] if names else slug


def _removal(run: RunDir, kind: str, value: str, name: str | None, args: argparse.Namespace,
             local_root: Path | None) -> Removal:
    """The ledger entry, with what it covers in the run now; a request that covers nothing is refused.
    A local file's URL covers its rows in either form (`local:`, or `file://` in runs from before it)."""
    by = args.by or _user()
    if kind == "identity":
        return new_removal(kind, value, args.reason, by, name=name, identities=(value,),
                           image_ids=tuple(sorted(verified_photos(run, value))))
    values = url_forms(value, local_root) if kind == "url" else [value]
    probe = [new_removal(kind, form, args.reason, by, image_ids=(form,) if kind == "image" else ()) for form in values]
    identities, images = covered(run, Ledger(probe))
    if not identities:
        raise UserError(f"nothing in {run.uri} matches --{kind} {value}",
                        f"check it against the {'image_id' if kind == 'image' else 'url and page_url'} column; "
                        "to keep something out of future crawls, use an opt-out list (governance.optout)")
    return new_removal(kind, value, args.reason, by, identities=tuple(sorted(identities)),
                       image_ids=tuple(sorted(images | {image for entry in probe for image in entry.image_ids})))


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no LOGNAME/USER and no passwd entry (some containers)
        return "unknown"


def command_remove(run: RunDir, args: argparse.Namespace) -> int:
    from pipeline.report import INDEX, index_uri, write_report  # matplotlib: loaded only when the command runs
    from pipeline.report.state import load_state

    state = load_state(run)
    if args.face:
        removal, new = face_request(run, state.config, args.face, args, args.by or _user())
        print(f"recorded removal {removal.id} (face, {len(args.face)} photos: {len(removal.rows)} rows taken down, "
              f"{len(removal.blurred)} bystander faces to blur; reason: {removal.reason}, by {removal.by})" if new else
              f"already in the ledger as removal {removal.id} ({removal.at}, by {removal.by}); applying it again")
    else:
        kind, value, name = requested(args, state, run)
        earlier = load_ledger(run).find(kind, value)
        if earlier is None:
            removal = _removal(run, kind, value, name, args, state.config.crawl.local_root)
            record(run, removal)
            print(f"recorded removal {removal.id} ({kind} {value}, reason: {removal.reason}, by {removal.by})")
        else:
            print(f"already in the ledger as removal {earlier.id} ({earlier.at}, by {earlier.by}); applying it again")
    shards_current = bool(state.shards and state.shards["current"])
    applied = apply_ledger(run, state.config, state.identities, load_ledger(run), shards_current)
    print(describe(applied))
    if args.face:
        print(f"receipt for the requester: {run.uri_of(write_receipt(run, removal, len(args.face)))}")
    if run.exists(INDEX):  # the page named and showed what was removed
        write_report(run)
        print(f"report rewritten: {index_uri(run)}")
    if applied.shards:
        print("note: exports made from the shards before (`python -m pipeline export`) still hold what was removed: "
              "run each export again, which rewrites only the changed shards")
    return 0
