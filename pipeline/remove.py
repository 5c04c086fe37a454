"""`python -m pipeline remove`: take an identity, a photo, a URL or a domain out of a run for good.

The request goes into the removals ledger first (who, what, when, why), then the whole ledger is
applied to the run (`pipeline.engine.takedown`); the crawl and the shard step consult the ledger,
so no later run, `--force` included, brings it back. The same command again finishes an
interrupted takedown without a second entry.
"""

from __future__ import annotations

import argparse
import getpass
import re
from typing import TYPE_CHECKING

from pipeline.core.errors import UserError
from pipeline.core.names import identity_slug
from pipeline.core.removals import Ledger, Removal, host_of, load_ledger, new_removal, record
from pipeline.core.rundir import RunDir
from pipeline.engine.takedown import apply_ledger, covered, describe, verified_photos
from pipeline.engine.takedown_parts import crawled

if TYPE_CHECKING:
    from pipeline.report.state import RunState

SHA256 = re.compile(r"[0-9a-f]{64}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--identity", metavar="NAME", help="a name as the names list gives it, or its slug")
    target.add_argument("--image", metavar="SHA256", help="a photo's image_id (sha256 of its bytes), wherever it is")
    target.add_argument("--url", help="an image URL exactly as crawled (the url column)")
    target.add_argument("--domain", metavar="HOST",
                        help="every image served from, or found on a page of, HOST or its subdomains")
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
        return "url", args.url.strip(), None
    host = args.domain.strip().lower().rstrip(".")
    if not host or host_of(f"http://{host}/") != host:
        raise UserError(f"--domain {args.domain!r} is not a host name", "pass the host alone, e.g. example.org")
    return "domain", host, None


def _identity(given: str, state: RunState, run: RunDir) -> tuple[str, str]:
    """Today's names first, then identities an earlier names list crawled."""
    for identity in state.identities:
        if given in (identity.slug, identity.name) or identity_slug(given) == identity.slug:
            return identity.slug, identity.name
    for slug in crawled(run):
        if slug in (given, identity_slug(given)):
            return slug, given
    raise UserError(f"no identity {given!r} in {state.uri}",
                    "pass the name as the names list gives it, or its slug (the identity column)")


def _removal(run: RunDir, kind: str, value: str, name: str | None, args: argparse.Namespace) -> Removal:
    """The ledger entry, with what it covers in the run now; a request that covers nothing is refused."""
    by = args.by or _user()
    if kind == "identity":
        return new_removal(kind, value, args.reason, by, name=name, identities=(value,),
                           image_ids=tuple(sorted(verified_photos(run, value))))
    probe = new_removal(kind, value, args.reason, by, image_ids=(value,) if kind == "image" else ())
    identities, images = covered(run, Ledger([probe]))
    if not identities:
        raise UserError(f"nothing in {run.uri} matches --{kind} {value}",
                        f"check it against the {'image_id' if kind == 'image' else 'url and page_url'} column; "
                        "to keep something out of future crawls, use an opt-out list (governance.optout)")
    return new_removal(kind, value, args.reason, by, identities=tuple(sorted(identities)),
                       image_ids=tuple(sorted(images | set(probe.image_ids))))


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no LOGNAME/USER and no passwd entry (some containers)
        return "unknown"


def command_remove(run: RunDir, args: argparse.Namespace) -> int:
    from pipeline.report import INDEX, index_uri, write_report  # matplotlib: loaded only when the command runs
    from pipeline.report.state import load_state

    state = load_state(run)
    kind, value, name = requested(args, state, run)
    earlier = load_ledger(run).find(kind, value)
    if earlier is None:
        removal = _removal(run, kind, value, name, args)
        record(run, removal)
        print(f"recorded removal {removal.id} ({kind} {value}, reason: {removal.reason}, by {removal.by})")
    else:
        print(f"already in the ledger as removal {earlier.id} ({earlier.at}, by {earlier.by}); applying it again")
    shards_current = bool(state.shards and state.shards["current"])
    applied = apply_ledger(run, state.config, state.identities, load_ledger(run), shards_current)
    print(describe(applied))
    if run.exists(INDEX):  # the page named and showed what was removed
        write_report(run)
        print(f"report rewritten: {index_uri(run)}")
    if applied.shards:
        print("note: exports made from the shards before (`python -m pipeline export`) still hold what was removed: "
              "run each export again, which rewrites only the changed shards")
    return 0
