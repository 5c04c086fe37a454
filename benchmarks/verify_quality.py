"""Identity-verification quality on realistic crawled folders of the shared labelled photos (dlib).

    python benchmarks/verify_quality.py [--set verify.key=value ...] [identity ...]

Prints, per identity: its photos and the wrong hits that reached verify, images kept, precision,
recall, the identity's purity and competing flag, and the group photos whose target face is right.
The folders are those of tests/test_verify.py's quality test (tests/crawled_folders.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make `tests` importable

from pipeline.core.config import load_config, resolve_profile
from pipeline.core.rundir import RunDir
from stages.faces.dlib_backend import DlibBackend
from stages.verify import VerifyStage
from tests.crawled_folders import QUALITY_IDENTITIES, Corpus, Score, build_folder, score

COLUMNS = ("identity", "photos", "wrong", "kept", "precision", "recall", "purity", "competing", "group face")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("identities", nargs="*", default=list(QUALITY_IDENTITIES))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="verify.key=value")
    args = parser.parse_args()
    config = load_config(resolve_profile("cpu"), args.overrides)
    started = time.monotonic()
    corpus = Corpus(DlibBackend(upsample=0))
    with tempfile.TemporaryDirectory() as scratch:
        stage = VerifyStage(config, RunDir(scratch))
        folders = [build_folder(corpus, identity) for identity in args.identities]
        scores = [score(folder, stage.process(folder.rows)) for folder in folders]
    print_table(scores)
    seconds = time.monotonic() - started
    print(
        f"\n{corpus.analysed} photos analysed (dlib HOG, upsample 0), {len(scores)} folders verified in {seconds:.1f} s"
    )


def print_table(scores: list[Score]) -> None:
    print(f"{COLUMNS[0]:>18} " + " ".join(f"{c:>10}" for c in COLUMNS[1:]))
    for s in [*scores, overall(scores)]:
        cells = (s.photos, s.wrong, s.kept, f"{s.precision:.3f}", f"{s.recall:.3f}", f"{s.purity:.2f}", s.competing)
        print(f"{s.identity:>18} " + " ".join(f"{c!s:>10}" for c in (*cells, f"{s.right_faces}/{s.group_photos}")))


def overall(scores: list[Score]) -> Score:
    """Counts summed over the folders (purity: their mean; competing: any)."""
    counts = ("photos", "wrong", "kept", "true_kept", "right_faces", "group_photos")
    summed = {key: sum(getattr(s, key) for s in scores) for key in counts}
    purity = sum(s.purity for s in scores) / len(scores)
    return Score(identity="all", purity=purity, competing=any(s.competing for s in scores), **summed)


if __name__ == "__main__":
    main()
