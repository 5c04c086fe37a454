"""The run's identity choice: which person each name keeps, decided across names before verify's tasks.

Verify alone takes a folder's dominant cluster. A crawl of a cast fills every name's folder with the same
group photos, where a co-star can out-number a name's own portraits: verify would then keep the co-star
under that name and drop the name's own portraits. Here every name's candidate clusters
(`stages/face_clusters.py`: those covering `verify.min_images` images) are weighed across the run:

1. Candidates of two names are the same person when their centroids are at least `same_person` alike
   (hygiene's rule: as close as one person's photos). Names in one merge group (`hygiene.merge`) are
   one identity and never compete.
2. Candidates are taken in order of support: the share of the name's photos the cluster covers, then the
   share of those where it is the only face (portraits before group photos), then its size, then the
   name. A candidate goes to its name unless the name has one already, or the same person went to
   another name first. A cluster other than the folder's dominant one must be alone in at least one of
   its photos: a person seen only beside others is a bystander of the name's search (a co-star not in the
   run), not the name.
3. A name whose candidates all went to other names drops as `identity_is_other_name`; a name with no
   candidate is left to verify (`too_few_images`).

Only names whose choice differs from verify's own get a row: `pick` (the centroid of the cluster to take)
or `other_name`. numpy only; the pairs come from blocked products over float16 centroids (`close_pairs`),
so 100k names cost what hygiene's census costs.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from stages.cross_identity import close_pairs
from stages.face_clusters import Candidate

PICK, OTHER_NAME = "pick", "other_name"
CHOICE_SCHEMA = pa.schema(
    [
        pa.field("identity", pa.string()),
        pa.field("decision", pa.string()),  # pick | other_name
        pa.field("other", pa.string()),  # the name that keeps the folder's dominant person
        pa.field("similarity", pa.float32()),  # the two candidates' centroid cosine
        pa.field("centroid", pa.list_(pa.float32())),  # pick: the centroid of the cluster to take
        pa.field("detail", pa.string()),
    ]
)


@dataclass
class Pool:
    """Every name's candidates, flattened: candidate k belongs to name `owner[k]`."""

    names: list[str] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)
    support: list[tuple[float, float, int]] = field(default_factory=list)
    dominant: list[bool] = field(default_factory=list)
    centroids: list[np.ndarray] = field(default_factory=list)

    def add(self, name: str, photos: int, found: list[Candidate]) -> None:
        """One name's candidates; `photos`: the images of its folder that have a face."""
        self.names.append(name)
        for candidate in found:
            self.owner.append(len(self.names) - 1)
            self.support.append((candidate.images / photos, candidate.solo / candidate.images, candidate.images))
            self.dominant.append(candidate.dominant)
            self.centroids.append(candidate.centroid)


def choose(pool: Pool, groups: dict[str, int], same_person: float) -> pa.Table:
    """The rows of the names whose choice differs from verify's own, sorted by identity."""
    rivals = same_people(pool, groups, same_person)
    order = sorted(range(len(pool.owner)), key=lambda k: (*(-value for value in pool.support[k]), pool.names[pool.owner[k]]))
    held: dict[int, int] = {}  # name -> its candidate
    holder: dict[int, int] = {}  # a taken candidate -> its name
    lost: dict[int, tuple[int, float]] = {}  # name -> (the name holding its best candidate, their cosine)
    for k in order:
        name = pool.owner[k]
        if name in held or not (pool.dominant[k] or pool.support[k][1] > 0):
            continue
        taken = [other for other in rivals[k] if other in holder]
        if taken:  # named after the best-supported holder, so an unrelated change leaves the row alone
            best = max(taken, key=lambda other: (pool.support[other], -other))
            lost.setdefault(name, (holder[best], rivals[k][best]))
            continue
        held[name], holder[k] = k, name
    changed = [name for name in range(len(pool.names))
               if (name in held and not pool.dominant[held[name]]) or (name not in held and name in lost)]
    rows = [row(pool, name, held.get(name), lost.get(name)) for name in changed]
    return pa.Table.from_pylist(rows, schema=CHOICE_SCHEMA).sort_by("identity")


def same_people(pool: Pool, groups: dict[str, int], same_person: float) -> dict[int, dict[int, float]]:
    """Candidate -> the other names' candidates that are the same person, with their cosine."""
    rivals: dict[int, dict[int, float]] = defaultdict(dict)
    if not pool.centroids:
        return rivals
    centroids = np.stack(pool.centroids).astype(np.float16)
    i, j, sims = close_pairs(centroids, np.arange(len(centroids)), same_person)
    for a, b, sim in zip(i.tolist(), j.tolist(), sims.tolist(), strict=True):
        first, second = pool.names[pool.owner[a]], pool.names[pool.owner[b]]
        if groups.get(first, first) != groups.get(second, second):
            rivals[a][b] = rivals[b][a] = sim
    return rivals


def row(pool: Pool, name: int, taken: int | None, lost: tuple[int, float] | None) -> dict:
    other, sim = (pool.names[lost[0]], lost[1]) if lost else (None, None)
    base = {"identity": pool.names[name], "other": other, "similarity": sim}
    if taken is None:
        return {**base, "decision": OTHER_NAME, "centroid": None,
                "detail": f"every cluster of verify.min_images photos is a person {other} keeps (cosine {sim:.3f})"}
    share, solo = pool.support[taken][:2]
    why = f"its most frequent person is kept under {other} (cosine {sim:.3f})" if lost else (
        "two clusters cover as many photos; this one is alone in more of them")
    return {**base, "decision": PICK, "centroid": pool.centroids[taken].tolist(),
            "detail": f"{why}: took the cluster of {share:.0%} of the photos, alone in {solo:.0%} of those"}
