"""Decisions across identities, made once per run on centroids: the logic of the hygiene stage's whole-run step.

numpy and pyarrow only; the hygiene stage's whole-run step (`stages/hygiene_run.py`) reads the verified rows through a callback
and writes what `decide` returns. Memory stays bounded at 100k identities: one float16 centroid per identity
(100 MB at 512-d), 20 bytes per kept photo, and one block of similarities at a time.

1. Merge groups (`hygiene.merge`) count as one identity from here on: their centroid is over all their photos.
2. Pairs: every two centroids at least `search_cut` alike, by blocked matrix products (`close_pairs`). Those at
   `same_person` or above are flagged: as close as one of the identity's own photos would be.
3. The same photo kept twice: two identities' photos are compared one by one (phash within `dup_hamming` and
   target faces at least `dup_similarity` alike) where the identities share a photo's bytes or its phash, or
   their centroids are within verify's cluster cut (where one face can pass verify under both). Of every
   such set of copies, the identity whose centroid (leave-one-out) is closest to the face keeps it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.config import PipelineConfig
from pipeline.core.errors import UserError
from pipeline.core.names import Identity, IdentityIndex

BLOCK = 4096  # centroids per matrix product: a 4096 x 4096 float32 block of similarities is 64 MB
GROUPS_PER_READ = 128  # identities read at once in the census (their faces' embeddings: ~10 MB)
CACHED_GROUPS = 1024  # identities' photos held while candidate pairs are compared
COLUMNS = ["identity", "image_id", "phash", "faces", "target_face", "face_backend", "calibration"]  # what the step reads
CLAIMED, SAME_PERSON, MERGE_FROM, MERGED_INTO = "claimed", "same_person", "merge_from", "merged_into"

DECISION_SCHEMA = pa.schema(
    [
        pa.field("identity", pa.string()),  # the task that applies it
        pa.field("image_id", pa.string()),  # claimed photos only
        pa.field("decision", pa.string()),  # claimed | same_person | merge_from | merged_into
        pa.field("other", pa.string()),  # the identity that keeps the photo, the pair's other one, the merge's other
        pa.field("similarity", pa.float32()),  # claimed: this identity's; same_person: the centroids'
        pa.field("detail", pa.string()),
        pa.field("part", pa.string()),  # merge_from: the other identity's upstream part, read by the task
        pa.field("part_digest", pa.string()),  # merge_from: its digest, so a change re-applies the merge
    ]
)
PAIR_SCHEMA = pa.schema(
    [pa.field("identity", pa.string()), pa.field("other", pa.string()), pa.field("similarity", pa.float32())]
)
Reader = Callable[[list[str]], pa.Table]  # identities -> their kept rows' COLUMNS


@dataclass(frozen=True)
class Rules:
    same_person: float  # centroid cosine flagging a pair
    candidate: float  # centroid cosine from which two identities' photos are compared one by one
    dup_hamming: int
    dup_similarity: float

    @classmethod
    def of(cls, config: PipelineConfig, calibration: dict) -> Rules:
        """From the calibration verify recorded in the rows; hygiene.same_person_similarity null = its threshold."""
        explicit = config.hygiene.same_person_similarity
        same = calibration["threshold"] if explicit is None else explicit
        return cls(same, calibration["cluster_threshold"], config.verify.dup_hamming, calibration["dup_similarity"])

    @property
    def search_cut(self) -> float:
        return min(self.same_person, self.candidate)


def merge_groups(identities: list[Identity], merge: list[list[str]]) -> list[tuple[str, ...]]:
    """Every identity in a group: the merge groups (members as listed: name, slug or readable slug), the rest alone."""
    index = IdentityIndex(identities)
    listed: dict[str, tuple[str, ...]] = {}
    for entry in merge:
        group = tuple(index.resolve(name, "hygiene.merge member").slug for name in entry)
        twice = [slug for slug in group if slug in listed or group.count(slug) > 1]
        if twice:
            raise UserError(f"hygiene.merge lists {twice[0]!r} twice", "put each identity in one merge group, once")
        listed |= dict.fromkeys(group, group)
    groups = (listed.get(identity.slug, (identity.slug,)) for identity in identities)
    return list(dict.fromkeys(groups))


def hex_keys(values: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """The first 64 bits of hex strings (an image_id's sha256, a phash) as uint64, and which were present."""
    present = np.array([bool(value) for value in values], dtype=bool)
    return np.array([int(value[:16], 16) if value else 0 for value in values], dtype=np.uint64), present


def target_vectors(table: pa.Table) -> np.ndarray:
    """Each row's target face embedding, L2-normalised: a (rows, dim) float32 matrix."""
    if not table.num_rows:
        return np.zeros((0, 0), np.float32)
    faces = table["faces"].combine_chunks()
    lengths = pc.list_value_length(faces).to_numpy(zero_copy_only=False)
    chosen = np.cumsum(lengths) - lengths + table["target_face"].to_numpy(zero_copy_only=False)
    embeddings = pc.list_flatten(faces).field("embedding").take(pa.array(chosen))
    dims = set(pc.list_value_length(embeddings).to_pylist())
    if len(dims) != 1:
        raise ValueError(f"target face embeddings of several sizes {sorted(dims)}: the run mixes face backends")
    vectors = pc.list_flatten(embeddings).to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(chosen), -1)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), np.finfo(np.float32).tiny)


def group_sums(vectors: np.ndarray, codes: np.ndarray, count: int) -> np.ndarray:
    """Sum of the vectors of each code 0..count-1 (sorted runs, no per-row Python)."""
    sums = np.zeros((count, vectors.shape[1] if vectors.size else 0), np.float32)
    if not len(codes):
        return sums
    order = np.argsort(codes, kind="stable")
    ordered = codes[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sums[ordered[starts]] = np.add.reduceat(vectors[order], starts)
    return sums


@dataclass
class Census:
    """Phase one, a streaming pass over every group: a centroid each, and the keys of every kept photo."""

    groups: list[tuple[str, ...]]
    names: list[str]  # per group: the first member with kept photos (the merge target)
    centroids: np.ndarray  # (groups, dim) float16 unit rows; zero for a group without photos
    sizes: np.ndarray  # kept photos per group
    backends: set[str]
    image_keys: np.ndarray  # per kept photo: uint64, the image_id's first 8 bytes (a collision costs one comparison)
    phashes: np.ndarray  # uint64
    has_phash: np.ndarray
    owners: np.ndarray  # int32: its group
    calibration: dict | None = None  # the thresholds verify applied, as its rows record them

    @classmethod
    def of(cls, groups: list[tuple[str, ...]], read: Reader) -> Census:
        census = cls(groups, [], np.zeros((len(groups), 0), np.float16), np.zeros(len(groups), np.int64), set(),
                     *(np.zeros(0, dtype) for dtype in (np.uint64, np.uint64, bool, np.int32)))
        photos = [census.add(first, groups[first : first + GROUPS_PER_READ], read)
                  for first in range(0, len(groups), GROUPS_PER_READ)]
        if photos:
            census.image_keys, census.phashes, census.has_phash, census.owners = map(np.concatenate, zip(*photos))
        return census

    def add(self, first: int, chunk: list[tuple[str, ...]], read: Reader) -> tuple[np.ndarray, ...]:
        """One read of a chunk of groups: their centroids and sizes stored, their photos' keys returned."""
        members = [slug for group in chunk for slug in group]
        table = read(members)
        self.backends |= set(table["face_backend"].unique().to_pylist())
        one_backend(self.backends)  # before two backends' vectors meet in one matrix
        if self.calibration is None and table.num_rows:  # one per run: verify applies one config to one backend
            self.calibration = table["calibration"][0].as_py()
        found = pc.index_in(table["identity"], value_set=pa.array(members, pa.string()))
        member = found.to_numpy(zero_copy_only=False).astype(np.int64)  # every row's identity is one asked for
        local = np.repeat(np.arange(len(chunk)), [len(group) for group in chunk])[member]
        kept = np.bincount(member, minlength=len(members))
        self.names += list(representatives(chunk, dict(zip(members, kept.tolist(), strict=True))))
        self.sizes[first : first + len(chunk)] = np.bincount(local, minlength=len(chunk))
        vectors = target_vectors(table)
        if vectors.size:
            self.store(first, group_sums(vectors, local, len(chunk)))
        keys, _ = hex_keys(table["image_id"].to_pylist())
        phashes, present = hex_keys(table["phash"].to_pylist())
        return keys, phashes, present, (local + first).astype(np.int32)

    def store(self, first: int, sums: np.ndarray) -> None:
        if not self.centroids.shape[1]:
            self.centroids = np.zeros((len(self.groups), sums.shape[1]), np.float16)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        self.centroids[first : first + len(sums)] = sums / np.maximum(norms, np.finfo(np.float32).tiny)

    def active(self) -> np.ndarray:
        """Groups with at least one kept photo: the only ones with a centroid."""
        return np.flatnonzero(self.sizes > 0)


def one_backend(backends: set[str]) -> None:
    """Two backends' embeddings are not comparable: a run mixing them is refused."""
    if len(backends) > 1:
        raise ValueError(f"the run's kept faces come from backends {sorted(backends)}; re-run filter with one")


def representatives(chunk: list[tuple[str, ...]], kept: dict[str, int]) -> Iterator[str]:
    """Per group, the first member with kept photos (else the first): the identity the group's rows go to."""
    for group in chunk:
        yield next((slug for slug in group if kept[slug]), group[0])


def close_pairs(centroids: np.ndarray, rows: np.ndarray, cut: float, block: int = BLOCK
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, cosine) of every two of `rows` (i < j, indices into `centroids`) at least `cut` alike.

    Blocks of `block` rows are upcast to float32 one at a time, so the products run in BLAS and memory holds
    two blocks and one block of similarities, whatever the number of identities."""
    found = [(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))]
    for start in range(0, len(rows), block):
        left = centroids[rows[start : start + block]].astype(np.float32)
        for other in range(start, len(rows), block):
            right = left if other == start else centroids[rows[other : other + block]].astype(np.float32)
            i, j, sims = block_pairs(left, right, cut, diagonal=other == start)
            found.append((rows[start + i], rows[other + j], sims))
    i, j, sims = zip(*found, strict=True)
    return np.concatenate(i), np.concatenate(j), np.concatenate(sims)


def block_pairs(left: np.ndarray, right: np.ndarray, cut: float, diagonal: bool
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row pairs of one block product at least `cut` alike (on the diagonal, each pair once)."""
    sims = left @ right.T
    i, j = np.nonzero(sims >= cut)
    if diagonal:
        i, j = i[i < j], j[i < j]
    return i, j, sims[i, j]


def shared_keys(keys: np.ndarray, owners: np.ndarray) -> set[tuple[int, int]]:
    """Pairs (a < b) of groups holding an equal key: one sort, then only the colliding runs in Python."""
    if not len(keys):
        return set()
    order = np.lexsort((owners, keys))
    keys, owners = keys[order], owners[order]
    distinct = np.r_[True, (keys[1:] != keys[:-1]) | (owners[1:] != owners[:-1])]
    keys, owners = keys[distinct], owners[distinct]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    pairs = set()
    for start, end in zip(starts[ends - starts > 1], ends[ends - starts > 1], strict=True):
        members = owners[start:end].tolist()
        pairs |= {(a, b) for k, a in enumerate(members) for b in members[k + 1 :]}
    return pairs


@dataclass(frozen=True)
class Photos:
    """One group's kept photos, each image once: what two identities' photos are compared by."""

    image_ids: list[str]
    phashes: np.ndarray  # uint64
    has_phash: np.ndarray
    vectors: np.ndarray  # target faces, unit rows
    own: np.ndarray  # each target face's cosine to its group's centroid without it (verify's leave-one-out)

    @classmethod
    def of(cls, table: pa.Table) -> Photos:
        first: dict[str, int] = {}
        for row, image_id in enumerate(table["image_id"].to_pylist()):
            first.setdefault(image_id, row)  # a merge group may hold one photo twice: compare it once
        table = table.take(pa.array(list(first.values()), pa.int64()))
        phashes, present = hex_keys(table["phash"].to_pylist())
        vectors = target_vectors(table)
        return cls(table["image_id"].to_pylist(), phashes, present, vectors, leave_one_out(vectors))


def leave_one_out(vectors: np.ndarray) -> np.ndarray:
    """Cosine of each row to the normalised sum of the others (of all, when it is alone)."""
    if not len(vectors):
        return np.zeros(0, np.float32)
    total = vectors.sum(axis=0)
    others = total - vectors if len(vectors) > 1 else total[None, :]
    others = others / np.maximum(np.linalg.norm(others, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    return np.einsum("nd,nd->n", vectors, others)


class PhotoCache:
    """Groups' photos, read on demand and kept for the next candidate pairs (most recently used first)."""

    def __init__(self, census: Census, read: Reader, capacity: int = CACHED_GROUPS) -> None:
        self.census, self.read, self.capacity = census, read, capacity
        self.held: dict[int, Photos] = {}

    def __getitem__(self, group: int) -> Photos:
        photos = self.held.pop(group, None) or Photos.of(self.read(list(self.census.groups[group])))
        self.held[group] = photos
        if len(self.held) > self.capacity:
            del self.held[next(iter(self.held))]
        return photos


Node = tuple[int, int]  # (group, photo index in its Photos)


@dataclass
class Links:
    """Cross-identity near-duplicates found among the candidate pairs."""

    near: int = 0  # photo pairs within dup_hamming, whatever their faces (group photos included)
    same: list[tuple[Node, Node]] = field(default_factory=list)  # of those, with the same target face


def compare(a: Photos, b: Photos, rules: Rules) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (into a, into b) of the near-duplicate photo pairs, and whether their target faces are one."""
    bits = np.bitwise_count(a.phashes[:, None] ^ b.phashes[None, :])
    near = (bits <= rules.dup_hamming) & a.has_phash[:, None] & b.has_phash[None, :]
    i, j = np.nonzero(near)
    same = np.einsum("nd,nd->n", a.vectors[i], b.vectors[j]) >= rules.dup_similarity
    return i, j, same


def find_links(candidates: set[tuple[int, int]], photos: PhotoCache, rules: Rules) -> Links:
    links = Links()
    for a, b in sorted(candidates):
        i, j, same = compare(photos[a], photos[b], rules)
        links.near += len(i)
        links.same += [((a, int(x)), (b, int(y))) for x, y in zip(i[same], j[same], strict=True)]
    return links


def components(edges: list[tuple[Node, Node]]) -> list[list[Node]]:
    """Connected components of the copies (union-find; the edges are few: photos kept twice)."""
    parent: dict[Node, Node] = {}

    def root(node: Node) -> Node:
        while parent.setdefault(node, node) != node:
            node = parent[node]
        return node

    for a, b in edges:
        parent[root(a)] = root(b)
    found: dict[Node, list[Node]] = {}
    for node in parent:
        found.setdefault(root(node), []).append(node)
    return list(found.values())


def claim_rows(links: Links, photos: PhotoCache, names: list[str]) -> list[dict]:
    """Of each set of copies, the group whose centroid is closest to the face keeps it; a row per other copy."""
    rows = []
    for copies in components(links.same):
        score = {node: float(photos[node[0]].own[node[1]]) for node in copies}
        winner = max(sorted(copies, key=lambda node: names[node[0]]), key=score.__getitem__)  # ties: first name
        for node in copies:
            if node[0] == winner[0]:
                continue
            detail = (f"the same photo is kept under {names[winner[0]]} (its face {score[winner]:.3f} to that "
                      f"identity's centroid, {score[node]:.3f} to this one's)")
            rows.append({"identity": names[node[0]], "image_id": photos[node[0]].image_ids[node[1]],
                         "decision": CLAIMED, "other": names[winner[0]], "similarity": score[node], "detail": detail})
    return rows


def pair_rows(i: np.ndarray, j: np.ndarray, sims: np.ndarray, names: list[str]) -> list[dict]:
    """Both directions of every flagged pair: each identity's task marks its own rows."""
    rows = []
    for a, b, sim in zip(i.tolist(), j.tolist(), sims.tolist(), strict=True):
        for one, other in ((a, b), (b, a)):
            rows.append({"identity": names[one], "decision": SAME_PERSON, "other": names[other], "similarity": sim,
                         "detail": f"centroid cosine {sim:.3f}"})
    return rows


def merge_rows(census: Census, parts: dict[str, tuple[str, str]]) -> list[dict]:
    """The target of each merge group reads its other members' rows; those members drop theirs."""
    rows = []
    for group, target in zip(census.groups, census.names, strict=True):
        for member in (slug for slug in group if slug != target and slug in parts):
            part, digest = parts[member]
            rows += [{"identity": target, "decision": MERGE_FROM, "other": member, "part": part, "part_digest": digest,
                      "detail": f"{member}'s rows join this identity (hygiene.merge)"},
                     {"identity": member, "decision": MERGED_INTO, "other": target,
                      "detail": f"merged into {target} (hygiene.merge)"}]
    return rows


@dataclass
class Outcome:
    decisions: pa.Table
    pairs: pa.Table
    counts: dict[str, int]
    census: Census  # the centroids, which the face labels are made against (stages/face_labels_run.py)
    rules: Rules | None = None


def decide(groups: list[tuple[str, ...]], read: Reader, config: PipelineConfig,
           parts: dict[str, tuple[str, str]]) -> Outcome:
    """Every decision across the run's identities. `parts`: identity -> (upstream part, digest), for merges."""
    census = Census.of(groups, read)
    merges = merge_rows(census, parts)
    active = census.active()
    if not len(active):
        counts = {"identities": 0, "merged": len(merges) // 2}
        return Outcome(table(merges, DECISION_SCHEMA), table([], PAIR_SCHEMA), counts, census)
    rules = Rules.of(config, census.calibration)  # a photo was kept, so its row recorded one
    i, j, sims = close_pairs(census.centroids, active, rules.search_cut)
    flagged = sims >= rules.same_person
    candidates = {(int(a), int(b)) for a, b, sim in zip(i, j, sims, strict=True) if sim >= rules.candidate}
    candidates |= shared_keys(census.image_keys, census.owners)
    candidates |= shared_keys(census.phashes[census.has_phash], census.owners[census.has_phash])
    photos = PhotoCache(census, read)
    links = find_links(candidates, photos, rules)
    claims = claim_rows(links, photos, census.names)
    pairs = [{"identity": census.names[a], "other": census.names[b], "similarity": s}
             for a, b, s in zip(i[flagged].tolist(), j[flagged].tolist(), sims[flagged].tolist(), strict=True)]
    counts = {"identities": len(active), "merged": len(merges) // 2, "pairs": len(pairs), "candidates": len(candidates),
              "near_duplicates": links.near, "same_face": len(links.same), "claimed": len(claims)}
    decisions = claims + pair_rows(i[flagged], j[flagged], sims[flagged], census.names) + merges
    return Outcome(table(decisions, DECISION_SCHEMA), table(pairs, PAIR_SCHEMA), counts, census, rules)


def table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Sorted by identity, so a task's filtered read touches one row group."""
    data = pa.Table.from_pylist(rows, schema=schema)
    return data.sort_by([(name, "ascending") for name in schema.names[:3]]) if data.num_rows else data
