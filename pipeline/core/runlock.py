"""The run lock: one command that writes a run (`run`, `remove`) at a time in a run directory.

`run.lock` names its holder (pid, host, start time, command). It is only ever created where there
is none, in one atomic step: on a local disk by hard-linking a written temporary to the name (which
fails when the name exists); on S3 by a conditional PUT (`If-None-Match: *`), sent through boto3, as
pyarrow's S3 filesystem cannot send it. Other stores, and S3 without boto3, get a check, a write and
a read-back: a narrow race is left there. A lock whose holder is gone (this host, its pid not
running) is stale, and taken over with a warning; a holder on another host cannot be checked from
here, so only its user can clear it. Readers (`status`, `report`, `export`) take no lock.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pydantic import TypeAdapter, ValidationError

from pipeline.core.errors import UserError
from pipeline.core.rundir import TMP_MARK, RunDir

log = logging.getLogger(__name__)

LOCK = "run.lock"
TAKEN = ("PreconditionFailed", "ConditionalRequestConflict")  # S3's answers to a conditional PUT on an existing key


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    started: str
    command: str
    token: str  # tells this holder's lock from a later one of the same process

    def __str__(self) -> str:
        return f"`{self.command}` (pid {self.pid} on {self.host}, since {self.started})"

    def gone(self) -> bool:
        """Known to have ended: it ran on this host and its pid runs no more."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False


HOLDER = TypeAdapter(Holder)


@contextmanager
def run_lock(run: RunDir, command: str) -> Iterator[Holder]:
    """Hold the run's lock for the block; a live holder is one error line naming it."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    mine = Holder(os.getpid(), socket.gethostname(), started, command, uuid.uuid4().hex)
    _take(run, mine)
    try:
        yield mine
    finally:
        _release(run, mine)


def _take(run: RunDir, mine: Holder) -> None:
    if _create(run, mine):
        return
    holder = _holder(run)
    if holder is not None and not holder.gone():
        raise UserError(f"{run.uri} is in use by {holder}",
                        f"wait for it to end or pass another --out; if it runs no more, delete {run.uri}/{LOCK}")
    if holder is not None:
        log.warning("taking over the lock of %s in %s: it runs no more", holder, run.uri)
        if _holder(run) == holder:
            run.delete(LOCK)
    if not _create(run, mine):  # another command took it meanwhile
        raise UserError(f"{run.uri} is in use by {_holder(run)}", "wait for it to end or pass another --out")


def _release(run: RunDir, mine: Holder) -> None:
    """Delete the lock if it is still this command's (a user may have deleted it, another command taken it)."""
    try:
        if _holder(run) == mine:
            run.delete(LOCK)
    except (UserError, OSError) as exc:  # the command's own outcome matters more than its lock's
        log.warning("could not release the lock of %s: %s", run.uri, exc)


def _holder(run: RunDir) -> Holder | None:
    """Who holds the lock; None when nobody does."""
    try:
        return HOLDER.validate_json(run.read_bytes(LOCK))
    except FileNotFoundError:
        return None
    except ValidationError as exc:
        raise UserError(f"{run.uri}/{LOCK} is unreadable, so whether a command is running there is unknown",
                        "delete it if none is") from exc


def _create(run: RunDir, mine: Holder) -> bool:
    """Write the lock only where there is none; False when there is one."""
    data = json.dumps(asdict(mine)).encode()
    try:
        if not run.object_store:
            return _create_local(run.path(LOCK), data)
        if run.uri.startswith("s3://") and (client := _s3_client(run.uri)) is not None:
            return _create_s3(client, run.root, data)
        return _create_checked(run, mine, data)
    except OSError as exc:
        raise UserError(f"cannot take the lock of {run.uri}: {exc}", "check that the run directory is writable") from exc


def _create_local(path: str, data: bytes) -> bool:
    temporary = f"{path}{TMP_MARK}{uuid.uuid4().hex}"
    with open(temporary, "wb") as stream:
        stream.write(data)
    try:
        os.link(temporary, path)  # the whole file appears at once, or not at all
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)
    return True


def _s3_client(uri: str) -> Any | None:
    """A boto3 client for the store the URI names (pyarrow's URI options); None without boto3."""
    try:
        import boto3
    except ImportError:
        log.info("boto3 is not installed: the run lock on %s is a check, then a write", uri)
        return None
    options = {key: values[0] for key, values in parse_qs(urlsplit(uri).query).items()}
    endpoint = options.get("endpoint_override")
    if endpoint and "://" not in endpoint:
        endpoint = f"{options.get('scheme', 'https')}://{endpoint}"
    return boto3.client("s3", endpoint_url=endpoint, region_name=options.get("region"),
                        aws_access_key_id=options.get("access_key"), aws_secret_access_key=options.get("secret_key"),
                        aws_session_token=options.get("session_token"))


def _create_s3(client: Any, root: str, data: bytes) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = root.partition("/")
    try:
        client.put_object(Bucket=bucket, Key=f"{prefix}/{LOCK}" if prefix else LOCK, Body=data, IfNoneMatch="*")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in TAKEN:
            return False
        raise OSError(str(exc)) from exc
    except BotoCoreError as exc:
        raise OSError(str(exc)) from exc
    return True


def _create_checked(run: RunDir, mine: Holder, data: bytes) -> bool:
    """A store without conditional writes: write where there is no lock, then read back whose it is."""
    if run.exists(LOCK):
        return False
    run.write_bytes(LOCK, data)
    return _holder(run) == mine
