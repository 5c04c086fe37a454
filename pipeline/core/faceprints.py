"""Faceprints of face takedowns: the requesters' face embeddings, kept apart from the ledger.

The ledger entry of a `remove --face` request names each photo's embedding only by a salted hash
(SHA-256 over a secret salt and the float32 vector), so the ledger can be shown or copied without
holding anyone's face. The embeddings themselves live in `governance/faceprints/<removal id>.npy`
(one row per photo sent, unit vectors of the run's face backend): the next crawl and the filter
stage need them to keep the person out of new photos. The salt, `governance/faceprints/salt`, is
made once per run and never leaves it. Deleting a request's `.npy` ends its enforcement on new
photos; the rows it removed stay removed (the ledger still names them).
"""

from __future__ import annotations

import hashlib
import io
import secrets

import numpy as np

from pipeline.core.rundir import RunDir

FACEPRINTS = "governance/faceprints"
SALT = f"{FACEPRINTS}/salt"


def salt(run: RunDir) -> bytes:
    """The run's secret salt, made on first use."""
    if not run.exists(SALT):
        run.write_bytes(SALT, secrets.token_hex(32).encode())
    return run.read_bytes(SALT)


def salted_hashes(run: RunDir, embeddings: np.ndarray) -> list[str]:
    """One hex digest per row: SHA-256 of the salt and the row as little-endian float32."""
    key = salt(run)
    rows = np.ascontiguousarray(embeddings, dtype="<f4")
    return [hashlib.sha256(key + row.tobytes()).hexdigest() for row in rows]


def save(run: RunDir, removal_id: str, embeddings: np.ndarray) -> str:
    """Store a request's embeddings; returns their path in the run directory."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(embeddings, dtype=np.float32), allow_pickle=False)
    rel = f"{FACEPRINTS}/{removal_id}.npy"
    run.write_bytes(rel, buffer.getvalue())
    return rel


def load(run: RunDir, rel: str) -> np.ndarray:
    return np.load(io.BytesIO(run.read_bytes(rel)), allow_pickle=False)


def load_all(run: RunDir) -> np.ndarray | None:
    """Every stored request's embeddings stacked (None: no face request), for enforcement on new photos."""
    names = run.list_files(FACEPRINTS, ".npy")
    if not names:
        return None
    return np.concatenate([load(run, f"{FACEPRINTS}/{name}") for name in names])
