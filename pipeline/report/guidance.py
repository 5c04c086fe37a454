"""Threshold guidance: the kept faces least like their identity and the dropped faces most like it.

Two bounded heaps, so a run of any size keeps only `limit` candidates of each kind.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

GUIDANCE_FACES = 12


@dataclass(frozen=True)
class Candidate:
    identity: str
    image_id: str
    sim: float
    raw_path: str | None
    box: list[float] | None  # the target face, upright source pixels
    detail: str | None


@dataclass
class Guidance:
    limit: int = GUIDANCE_FACES
    # Heap entries (key, identity, image_id, candidate): the top is the candidate to evict first.
    _kept: list[tuple] = field(default_factory=list)
    _dropped: list[tuple] = field(default_factory=list)

    def offer(self, row: dict, kept: bool) -> None:
        """A verify row: kept rows compete for the lowest similarities, dropped ones for the highest."""
        target = row["target_face"]
        box = row["faces"][target]["box"] if target is not None and row["faces"] else None
        candidate = Candidate(
            row["identity"], row["image_id"], row["sim_to_centroid"], row["raw_path"], box, row["detail"]
        )
        heap, key = (self._kept, -candidate.sim) if kept else (self._dropped, candidate.sim)
        entry = (key, candidate.identity, candidate.image_id, candidate)
        if len(heap) < self.limit:
            heapq.heappush(heap, entry)
        elif entry > heap[0]:
            heapq.heapreplace(heap, entry)

    def lowest_kept(self) -> list[Candidate]:
        return [entry[-1] for entry in sorted(self._kept, reverse=True)]

    def highest_dropped(self) -> list[Candidate]:
        return [entry[-1] for entry in sorted(self._dropped, reverse=True)]
