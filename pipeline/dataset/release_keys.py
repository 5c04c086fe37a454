"""Pseudonymous identity keys for a release: HMAC-SHA256 of the identity's slug under a secret kept in the run
directory (`governance/release_secret`), never in a release.

Created once, the secret makes two releases of one run agree (a holder of both can match rows and apply a
deletion list), while nobody without it can recompute a key from a name: a plain hash of a slug would be
found again by hashing a list of names.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from pipeline.core.rundir import RunDir

SECRET = "governance/release_secret"
SECRET_BYTES = 32


def release_secret(run: RunDir) -> bytes:
    """The run's secret, made on first use (a release holds only keys made with it)."""
    if not run.exists(SECRET):
        run.write_bytes(SECRET, secrets.token_hex(SECRET_BYTES).encode())
    return bytes.fromhex(run.read_bytes(SECRET).decode().strip())


def secret_id(secret: bytes) -> str:
    """A fingerprint that changes when the secret is replaced, and from which it cannot be recovered."""
    return hmac.new(secret, b"release secret id", hashlib.sha256).hexdigest()[:16]


class IdentityKeys:
    """identity slug -> its key, computed once per slug."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self._keys: dict[str, str] = {}

    def __call__(self, identity: str) -> str:
        key = self._keys.get(identity)
        if key is None:
            key = self._keys[identity] = hmac.new(self.secret, identity.encode(), hashlib.sha256).hexdigest()
        return key
