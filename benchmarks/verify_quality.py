"""Identity-verification quality per face backend, on realistic crawled folders and harder variants.

    python benchmarks/verify_quality.py [--backend dlib|sface|all] [--detail] [--set verify.key=value ...]
                                        [identity ...]

Folder kinds, all built from the labelled photos (benchmarks/fixtures/crawled_folders.py: the folders of
tests/test_verify.py's quality test):
  realistic  the identity's photos, a re-encoded copy, 40% wrong hits (other identities' photos, rotated
             per folder), three group photos, two faceless scenes
  grayscale  realistic, with every other photo of the identity replaced by a grayscale copy (old and B/W photos)
  lookalike  realistic, with the wrong hits replaced by the other identities' photos nearest to the identity's
             centroid in this backend's embedding space
  hard       grayscale and lookalike at once

Per backend it prints the similarity distributions its verify defaults are chosen from
(the backend's `calibration`, declared beside its model in stages/faces/), then precision and recall per folder kind
(`--detail`: per identity too).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make `tests` importable

from pipeline.core.config import PipelineConfig, load_config, resolve_profile
from pipeline.core.rundir import RunDir
from stages.faces import applied_calibration, open_backend
from stages.verify import VerifyStage
from benchmarks.fixtures.crawled_folders import (
    QUALITY_IDENTITIES,
    ROWS,
    Corpus,
    Folder,
    Photo,
    Score,
    build_folder,
    reencoded,
    score,
)

BACKENDS = ("dlib", "sface")
KINDS = ("realistic", "grayscale", "lookalike", "hard")
COLUMNS = ("photos", "wrong", "kept", "precision", "recall", "purity", "competing", "group face")
MIRRORED = {"img11_reflection.jpg": "img11.jpg"}  # a labelled pair that is one photo mirrored: a copy, not distinct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("identities", nargs="*", default=list(QUALITY_IDENTITIES))
    parser.add_argument("--backend", choices=(*BACKENDS, "all"), default="all")
    parser.add_argument("--detail", action="store_true", help="a table per identity for every folder kind")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="verify.key=value")
    args = parser.parse_args()
    for backend in BACKENDS if args.backend == "all" else (args.backend,):
        report(backend, args.identities, args.overrides, args.detail)


def report(backend: str, identities: list[str], overrides: list[str], detail: bool) -> None:
    started = time.monotonic()
    config = load_config(resolve_profile("cpu"), [f"face.backend={backend}", *overrides])
    corpus = Corpus(open_backend(config))
    print(f"== {backend}: verify {applied_calibration(config, backend)}")
    print_distributions(distributions(corpus, identities))
    print_scores(verify_kinds(config, corpus, identities), detail)
    seconds = time.monotonic() - started
    print(f"{corpus.analysed} photos analysed, {len(identities)} identities in {seconds:.1f} s\n")


# --- copies of photos, as a search engine returns them


def upright(path: Path) -> Image.Image:
    with Image.open(path) as opened:
        return ImageOps.exif_transpose(opened).convert("RGB")


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def grayscale(path: Path) -> bytes:
    return jpeg(upright(path).convert("L"))


def cropped(path: Path) -> bytes:
    image = upright(path)
    dx, dy = image.width // 10, image.height // 10
    return jpeg(image.crop((dx, dy, image.width - dx, image.height - dy)))


def mirrored(path: Path) -> bytes:
    return jpeg(ImageOps.mirror(upright(path)))


def grayscale_photo(corpus: Corpus, name: str) -> Photo:
    return corpus.photo(f"gray-{name}", grayscale(corpus.images / name))


# --- the similarity distributions the verify defaults are chosen from


def best_face(photo: Photo) -> np.ndarray:
    """The embedding of the detector's most confident face (the labelled person in a single-person photo)."""
    return np.asarray(max(photo.faces, key=lambda face: face["score"])["embedding"])


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def closest(photo: Photo, target: np.ndarray) -> float:
    """The cosine of the photo's face most like `target` (verify's target face)."""
    return max(float(np.asarray(face["embedding"]) @ target) for face in photo.faces)


COPIES = {"re-encoded 60%, q70": reencoded, "cropped 10% a side": cropped, "mirrored": mirrored}
# figure key: (what it is, which end of its samples counts)
FIGURES: dict[str, tuple[str, Callable]] = {
    "own": ("own photo vs centroid of its others (leave-one-out), min", min),
    "own_gray": ("own grayscale copy vs that centroid, min", min),
    "other": ("other identity's photo vs identity centroid, max", max),
    "own_link": ("own photo, mean cosine to its others (linkage), min", min),
    "own_gray_link": ("own grayscale copy, mean cosine to the others, min", min),
    "other_link": ("other identity's photo, mean cosine to its photos, max", max),
    **{kind: (f"copy ({kind}) vs original, min", min) for kind in COPIES},
    "mirror_pair": ("labelled mirrored pair, min", min),
    "distinct": ("two distinct photos of one identity, max", max),
}
Sample = tuple[str, float, str]  # figure key, cosine, where


@dataclass(frozen=True)
class Extreme:
    label: str
    value: float
    where: str


def distributions(corpus: Corpus, identities: list[str]) -> list[Extreme]:
    """Leave-one-out centroid similarity of own photos (colour, grayscale) vs other identities' photos, their mean
    similarity to an identity's photos (what average linkage cuts), copies vs distinct photos (what dup_similarity
    cuts): the extreme of each figure over the identities, and where it was found."""
    samples: dict[str, list[tuple[float, str]]] = {key: [] for key in FIGURES}
    for identity in identities:
        for key, value, where in (*own_samples(corpus, identity), *other_samples(corpus, identity)):
            samples[key].append((value, where))
    return [Extreme(label, *pick(samples[key])) for key, (label, pick) in FIGURES.items()]


def own_vectors(corpus: Corpus, identity: str) -> dict[str, np.ndarray]:
    """The identity's distinct labelled photos by name: their labelled face's embedding."""
    names = [name for name in corpus.labels["identities"][identity] if name not in MIRRORED]
    return {name: best_face(corpus.labelled(name)) for name in names}


def own_samples(corpus: Corpus, identity: str) -> Iterator[Sample]:
    vectors = own_vectors(corpus, identity)
    total = sum(vectors.values())
    for name, vector in vectors.items():
        others = {n: v for n, v in vectors.items() if n != name}
        centroid, gray = unit(total - vector), grayscale_photo(corpus, name)
        yield "own", float(vector @ centroid), name
        yield "own_gray", closest(gray, centroid), name
        yield "own_link", float(np.mean([vector @ v for v in others.values()])), name
        yield "own_gray_link", float(np.mean([closest(gray, v) for v in others.values()])), name
        yield from (("distinct", float(vector @ v), f"{name}~{n}") for n, v in others.items() if n < name)
        for kind, make in COPIES.items():
            yield kind, closest(corpus.photo(f"{kind}-{name}", make(corpus.images / name)), vector), name
        for copy in (copy for copy, original in MIRRORED.items() if original == name):
            yield "mirror_pair", closest(corpus.labelled(copy), vector), copy


def other_samples(corpus: Corpus, identity: str) -> Iterator[Sample]:
    """Every other identity's labelled photos against this identity (their face most like it)."""
    vectors = np.stack(list(own_vectors(corpus, identity).values()))
    centroid = unit(vectors.sum(axis=0))
    for other, names in corpus.labels["identities"].items():
        for name in names if other != identity else ():
            photo, where = corpus.labelled(name), f"{name} ({other}) vs {identity}"
            yield "other", closest(photo, centroid), where
            yield "other_link", max(float(np.mean(vectors @ np.asarray(f["embedding"]))) for f in photo.faces), where


def print_distributions(extremes: list[Extreme]) -> None:
    for e in extremes:
        print(f"  {e.label:<58} {e.value:6.3f}  {e.where}")


# --- the harder folders


def with_photos(corpus: Corpus, folder: Folder, drop: set[str], add: list[Photo], positive: bool) -> Folder:
    """The folder without the images `drop`, with the photos `add` (showing the identity or not)."""
    kept = [row for row in folder.rows.to_pylist() if row["image_id"] not in drop]
    rows = kept + [corpus.row(folder.identity, photo) for photo in add if photo.faces]
    added = {photo.image_id for photo in add}
    return replace(
        folder,
        rows=pa.Table.from_pylist(rows, schema=ROWS),
        names={**{i: n for i, n in folder.names.items() if i not in drop}, **{p.image_id: p.name for p in add}},
        positives=(folder.positives - drop) | (added if positive else set()),
    )


def grayscale_half(corpus: Corpus, folder: Folder) -> Folder:
    """Every other labelled photo of the identity as a grayscale copy (the re-encoded copy's original stays)."""
    originals = set(folder.copies.values())
    own = [
        name for name in corpus.labels["identities"][folder.identity] if corpus.labelled(name).image_id not in originals
    ][::2]
    drop = {corpus.labelled(name).image_id for name in own}
    return with_photos(corpus, folder, drop, [grayscale_photo(corpus, name) for name in own], positive=True)


def lookalikes(corpus: Corpus, folder: Folder) -> Folder:
    """The wrong hits replaced by as many other identities' photos, those nearest to the identity's centroid."""
    labels = corpus.labels["identities"]
    others = [name for identity, names in labels.items() if identity != folder.identity for name in names]
    wrong = {image_id for image_id, name in folder.names.items() if name in others}
    centroid = unit(sum(best_face(corpus.labelled(name)) for name in labels[folder.identity]))
    nearest = sorted(others, key=lambda name: -closest(corpus.labelled(name), centroid))[: len(wrong)]
    return with_photos(corpus, folder, wrong, [corpus.labelled(name) for name in nearest], positive=False)


def folder_of(corpus: Corpus, identity: str, kind: str) -> Folder:
    folder = build_folder(corpus, identity)
    if kind in ("grayscale", "hard"):
        folder = grayscale_half(corpus, folder)
    if kind in ("lookalike", "hard"):
        folder = lookalikes(corpus, folder)
    return folder


def verify_kinds(config: PipelineConfig, corpus: Corpus, identities: list[str]) -> dict[str, list[Score]]:
    with tempfile.TemporaryDirectory() as scratch:
        stage = VerifyStage(config, RunDir(scratch))
        return {
            kind: [
                score(folder, stage.process(folder.rows)) for folder in (folder_of(corpus, i, kind) for i in identities)
            ]
            for kind in KINDS
        }


# --- tables


def print_scores(scores: dict[str, list[Score]], detail: bool) -> None:
    print(f"  {'folders':>18} " + " ".join(f"{c:>10}" for c in COLUMNS))
    for kind, kind_scores in scores.items():
        for s in [*(kind_scores if detail else []), overall(kind_scores, kind)]:
            print_row(s)


def print_row(s: Score) -> None:
    cells = (s.photos, s.wrong, s.kept, f"{s.precision:.3f}", f"{s.recall:.3f}", f"{s.purity:.2f}", s.competing)
    print(f"  {s.identity:>18} " + " ".join(f"{c!s:>10}" for c in (*cells, f"{s.right_faces}/{s.group_photos}")))


def overall(scores: list[Score], label: str) -> Score:
    """Counts summed over the folders (purity: their mean; competing: any)."""
    counts = ("photos", "wrong", "kept", "true_kept", "right_faces", "group_photos")
    summed = {key: sum(getattr(s, key) for s in scores) for key in counts}
    purity = sum(s.purity for s in scores) / len(scores)
    return Score(identity=f"{label} (all)", purity=purity, competing=any(s.competing for s in scores), **summed)


if __name__ == "__main__":
    main()
