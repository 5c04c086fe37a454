"""The multi-identity sampler's reference rules (pipeline/training.py: MultiIdentityDataset), as properties of
generated exports: per labelled person, no reference too alike to their face in the photo (copy-paste), none from
another person's pool, none twice, as many as asked where the pool allows, the same draw for the same seed, and a
sample skipped exactly when a person has too few references left. Each rule is checked against a brute-force
cosine over every (person, reference) pair. Its end-to-end run over a real export is in tests/test_hygiene.py."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.training import MultiIdentityDataset

BORDER = 1e-5  # cosines this close to the cut are left unjudged: float32 vectors round either way


@st.composite
def exports(draw: st.DrawFn) -> dict:
    """One group photo: 1-3 labelled people and 0-2 unnamed faces in a random order, each person with a pool of
    0-8 references, some from the same shoot (their face here plus a little noise), the rest other photos."""
    dim, people, unnamed = draw(st.integers(2, 16)), draw(st.integers(1, 3)), draw(st.integers(0, 2))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    names = draw(st.permutations([f"person_{k}" for k in range(people)] + [None] * unnamed))
    faces = rng.standard_normal((len(names), dim)).astype(np.float32)
    near, noise = draw(st.floats(0, 1)), draw(st.floats(0.01, 2.0))
    vectors = {}
    for who, face in zip(names, faces, strict=True):
        if who:
            size = draw(st.integers(0, 8))
            shoot = rng.random(size) < near
            pool = np.where(shoot[:, None], face + noise * rng.standard_normal((size, dim)),
                            rng.standard_normal((size, dim)))
            vectors.update({f"ref/{who}/{k}.jpg": vector.astype(np.float32) for k, vector in enumerate(pool)})
    low = draw(st.integers(0, 3))
    return {"names": names, "faces": faces, "vectors": vectors, "limit": draw(st.floats(0.3, 0.99)),
            "num_refs": (low, low + draw(st.integers(0, 3))), "seed": draw(st.integers(0, 2**16))}


def write_export(root: Path, case: dict) -> None:
    """train.jsonl with the one sample, and each reference's embedding where the export keeps it (`.npy`)."""
    for path, vector in case["vectors"].items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / Path(path).with_suffix(".npy"), vector)
    pools = {who: [path for path in case["vectors"] if path.startswith(f"ref/{who}/")] for who in case["names"] if who}
    sample = {"image_id": "photo", "name": case["names"], "embeddings": case["faces"].tolist(), "references": pools,
              "copy_paste_max": case["limit"]}
    (root / "train.jsonl").write_text(json.dumps(sample) + "\n")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = [float(x) for x in a], [float(x) for x in b]
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


@settings(max_examples=100, deadline=None)
@given(exports())
def test_the_sampler_draws_per_person_only_allowed_references(case: dict) -> None:
    limit, (low, high) = case["limit"], case["num_refs"]
    with tempfile.TemporaryDirectory() as folder:
        write_export(Path(folder), case)
        dataset = MultiIdentityDataset(folder, num_refs=case["num_refs"], seed=case["seed"])
        again = MultiIdentityDataset(folder, num_refs=case["num_refs"], seed=case["seed"])
    people = [(who, face) for who, face in zip(case["names"], case["faces"], strict=True) if who]
    similar = {who: {path: cosine(face, vector) for path, vector in case["vectors"].items()
                     if path.startswith(f"ref/{who}/")} for who, face in people}
    sure = {who: [path for path, value in pool.items() if value <= limit - BORDER] for who, pool in similar.items()}
    maybe = {who: [path for path, value in pool.items() if abs(value - limit) < BORDER] for who, pool in similar.items()}
    if any(len(sure[who]) + len(maybe[who]) < low for who in sure):
        assert (len(dataset), dataset.skipped) == (0, 1)
        return
    if all(len(sure[who]) >= low for who in sure):
        assert (len(dataset), dataset.skipped) == (1, 0)
    if not len(dataset):
        return  # only cosines at the cut decided it
    (sample,) = dataset.samples
    drawn = dataset.reference_files(0)
    assert drawn == again.reference_files(0)  # seeded: the same epoch in any worker
    assert len(drawn) == len(people)  # one list per labelled person, left to right; unnamed faces get none
    for (who, _), allowed, chosen in zip(people, sample["allowed"], drawn, strict=True):
        assert set(sure[who]) <= set(allowed) <= set(sure[who]) | set(maybe[who])
        assert set(chosen) <= set(allowed) and len(set(chosen)) == len(chosen)
        assert min(low, len(allowed)) <= len(chosen) <= min(high, len(allowed))
