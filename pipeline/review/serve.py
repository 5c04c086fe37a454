"""Start the review app: a threaded server on 127.0.0.1 by default, with a fresh random token in the URL it
prints (as Jupyter does). Werkzeug's server is enough for one curator on one machine; nothing here is meant
to face a network."""

from __future__ import annotations

import logging
import secrets
import sys
from collections.abc import Callable

from werkzeug.serving import BaseWSGIServer, make_server

from pipeline.core.errors import UserError
from pipeline.core.rundir import RunDir
from pipeline.review.app import create_app

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def review_server(run: RunDir, host: str, port: int) -> tuple[BaseWSGIServer, str]:
    """The server (not yet serving) and the URL to open, token included."""
    token = secrets.token_urlsafe(24)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request (each carries the token)
    try:
        server = make_server(host, port, create_app(run, token), threaded=True)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror})",
                        "pass another --port (0: any free)") from exc
    shown = f"[{host}]" if ":" in host else host
    return server, f"http://{shown}:{server.server_port}/?token={token}"


def serve(run: RunDir, host: str, port: int, say: Callable[[str], None] = print) -> None:
    say(f"reading {run.uri} (the first time on a big run, minutes: every part is scanned once)")
    server, url = review_server(run, host, port)
    if host not in LOOPBACK:
        say(f"warning: listening on {host}: anyone who can reach it and has the token can write decisions")
    say(f"review app for {run.uri}: open {url}")
    say("stop with Ctrl-C")
    sys.stdout.flush()
    try:
        server.serve_forever()
    finally:
        server.server_close()
