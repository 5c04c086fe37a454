"""The multi-identity sampler's reference rules (pipeline/training.py), as properties of random pools: no
reference too alike to the person's face in the photo (copy-paste), none twice, as many as asked where the
pool allows, the same draw for the same seed. Its end-to-end run over a real export is in tests/test_hygiene.py."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.training import copy_pasted, draw_references


@st.composite
def pools(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, float, tuple[int, int], int]:
    size, dim = draw(st.integers(0, 12)), draw(st.integers(2, 16))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    face = rng.standard_normal(dim)
    # references from the same shoot (the face plus a little noise) among other photos of the person
    near = rng.random(size) < draw(st.floats(0, 1))
    noise = draw(st.floats(0.01, 2.0))
    vectors = np.where(near[:, None], face + noise * rng.standard_normal((size, dim)), rng.standard_normal((size, dim)))
    low = draw(st.integers(0, 3))
    return face, vectors.reshape(size, dim), draw(st.floats(0.3, 0.99)), (low, low + draw(st.integers(0, 3))), \
        draw(st.integers(0, 2**16))


@settings(max_examples=100, deadline=None)
@given(pools())
def test_references_are_never_copy_pasted_never_twice_and_as_many_as_allowed(pool) -> None:
    face, vectors, limit, num_refs, seed = pool
    files = [f"ref/{k}.jpg" for k in range(len(vectors))]
    blocked = copy_pasted(face, vectors, limit) if len(vectors) else np.zeros(0, bool)
    allowed = [name for name, bad in zip(files, blocked, strict=True) if not bad]
    chosen = draw_references(allowed, num_refs, random.Random(seed))
    unit = face / np.linalg.norm(face)
    for name in chosen:
        vector = vectors[files.index(name)]
        assert vector @ unit / np.linalg.norm(vector) <= limit + 1e-9  # never a copy of this photo's face
    assert len(set(chosen)) == len(chosen)
    assert min(num_refs[0], len(allowed)) <= len(chosen) <= min(num_refs[1], len(allowed))
    assert chosen == draw_references(allowed, num_refs, random.Random(seed))
