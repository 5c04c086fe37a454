"""The finished cpu-profile run shared by the test modules that only read one (test_cli, test_export,
test_report, test_shards, test_training): built once per session by the `shared_tree` and `shared_run`
fixtures of tests/conftest.py, since a whole run costs a minute or two, mostly Ray and model start-up.

The tree holds what each of them needs: five identities' labelled photos with build_tree's bad files,
Angelina Jolie's photos also in odd image modes (with a grey impostor) and a couple photo, a photo of
George Clooney hidden in Matt Damon's folder (verify drops it), Jennifer Aniston's photos under a
hostile name, and a name without a folder. shard.max_rows splits the identities into several shards,
some shared, with small row groups. Tests that change a run (a rerun, a reshard, an export into it,
a takedown) work on a copy, never on the shared run.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.names import identity_slug
from tests.conftest import cpu_run_args, run_cli
from tests.local_tree import build_tree, upright_size
from tests.test_any_image import write_odd_photos

IDENTITIES = ["angelina_jolie", "scarlett_johansson", "matt_damon", "george_clooney", "katy_perry"]
HOSTILE_NAME = """Zoë "Q" O'Hara </table><script>alert('name')</script> & co"""
NOBODY = "Nobody Without Photos"
NAMES = [*IDENTITIES, HOSTILE_NAME, NOBODY]  # the names file's lines, after a comment
SLUGS = [*IDENTITIES, identity_slug(HOSTILE_NAME)]  # the identities with photos, as the dataset names them
# the identities in the dataset: Katy Perry has two photos of 512 px or more, verify drops them (too_few_images)
KEPT = [slug for slug in SLUGS if slug != "katy_perry"]
IMPOSTOR = "img17.jpg"  # jack_dorsey, not in the run: in greys among Angelina Jolie's photos
MAX_ROWS = 10  # splits the identities into several shards, some holding two identities
ROW_GROUP_ROWS = 3  # small, so identities span row groups and readers' row-group arithmetic is exercised
EXPECTED, CONSOLE = "expected.json", "console.txt"  # beside the photos and the run: what a reader rebuilds from


@dataclass(frozen=True)
class SharedTree:
    """root/photos/<slug>/ and root/names.txt; `expected`: per slug, file name -> `ok` or the reason of the
    crawl or filter drop."""

    root: Path
    expected: dict[str, dict[str, str]]

    @property
    def photos(self) -> Path:
        return self.root / "photos"

    @property
    def names(self) -> Path:
        return self.root / "names.txt"

    def args(self, out: Path | str, *extra: str) -> list[str]:
        """The shared run's options with `out` as --out; `extra` may override any of them."""
        shard = ["--set", f"shard.max_rows={MAX_ROWS}", "--set", f"shard.row_group_rows={ROW_GROUP_ROWS}"]
        return cpu_run_args(self.names, out, self.photos, *shard, *extra)


@dataclass(frozen=True)
class SharedRun:
    """The finished run of a SharedTree at `out`, with what its console showed."""

    tree: SharedTree
    out: Path
    console: str

    def copy(self, dest: Path) -> Path:
        """A copy at `dest` (file times kept) for a test that changes the run."""
        shutil.copytree(self.out, dest)
        return dest


def build_shared_tree(root: Path, faces: dict) -> None:
    photos = root / "photos"
    expected = build_tree(photos, faces, IDENTITIES)
    write_odd_photos(photos / "angelina_jolie", faces, "angelina_jolie", IMPOSTOR)
    shutil.copy(faces["images"] / "couple.jpg", photos / "angelina_jolie" / "couple.jpg")
    shutil.copy(faces["images"] / "img39.jpg", photos / "matt_damon" / "impostor.jpg")
    hostile = build_tree(root / "hostile", faces, ["jennifer_aniston"])
    (root / "hostile" / "jennifer_aniston").rename(photos / SLUGS[-1])
    expected[SLUGS[-1]] = hostile["jennifer_aniston"]
    for slug, outcomes in expected.items():  # the added photos: kept by filter when large enough, as build_tree's
        added = [path for path in (photos / slug).iterdir() if path.name not in outcomes]
        outcomes.update({path.name: "ok" if min(upright_size(path)) >= 512 else "low_resolution" for path in added})
    (root / "names.txt").write_text("# test names\n" + "\n".join(NAMES) + "\n")
    (root / EXPECTED).write_text(json.dumps(expected))


def read_shared_tree(root: Path) -> SharedTree:
    return SharedTree(root, json.loads((root / EXPECTED).read_text()))


def finish_shared_run(tree: SharedTree, out: Path) -> None:
    result = run_cli("run", "--stage", "all", *tree.args(out), timeout=900)
    assert result.returncode == 0, result.stderr
    (out.parent / CONSOLE).write_text(result.stdout + result.stderr)  # what the user saw (not a terminal)


def read_shared_run(tree: SharedTree, out: Path) -> SharedRun:
    return SharedRun(tree, out, (out.parent / CONSOLE).read_text())


def reshard(run: SharedRun, out: Path) -> Path:
    """A copy at `out` whose shard step ran again with shard.max_rows=1000: one shard."""
    run.copy(out)
    result = run_cli("run", "--stage", "shard", *run.tree.args(out, "--set", "shard.max_rows=1000"))
    assert result.returncode == 0, result.stderr
    return out
