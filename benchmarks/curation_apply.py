"""What `decide --apply` re-runs: k of N identities get a curator's decision, the rest must not move.

    python benchmarks/curation_apply.py [--identities 12] [--touched 3]

A cpu-profile run over N identities (the labelled photos, each identity its own folder), then one `reject`
for k of them (a photo verify kept), then `decide --apply`. Per stage it counts the tasks the apply wrote
again, split into those that ran on a worker (a model loaded, for a model stage) and those finished on the
driver from rows judged before (`pipeline.engine.runner.reuse`: no worker, no model); and it checks that
the shards holding only untouched identities are byte-identical. Exit code 1 when a target is missed:
no crawl, filter, safety_scores, crop or segment task of an untouched identity, and no model stage's task
run on a worker for these decisions (they change no crop).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.compute as pc

from benchmarks.common import FACES, labels, run_cli, write_names
from benchmarks.wholerun import cpu_args
from pipeline.core.decisions import REJECT, Decision
from pipeline.core.markers import Marker, read_markers, read_part
from pipeline.core.rundir import RunDir
from pipeline.core.schema import OK
from pipeline.dataset.shards import INDEX
from pipeline.decide import record
from pipeline.engine.registry import STAGES
from stages.base import ModelStage

UNTOUCHED_STAGES = ("crawl", "filter", "safety_scores", "crop", "segment")  # the target 1
MODEL_STAGES = tuple(stage.name for stage in STAGES if issubclass(stage, ModelStage))


def copied_tree(root: Path, limit: int) -> list[str]:
    """`root/<identity>/` with copies of its labelled photos (the local source follows no link out of its root);
    at most the corpus's 13 identities, each photo under one name only, so hygiene finds no shared photo."""
    names = []
    for identity, photos in list(labels().items())[:limit]:
        (root / identity).mkdir(parents=True)
        for photo in photos:
            shutil.copy(FACES / "images" / photo, root / identity / photo)
        names.append(identity)
    return names


def markers(run: RunDir) -> dict[str, dict[str, Marker]]:
    run.cache.clear()  # a fresh read of every stage's markers
    return {stage.name: dict(read_markers(run, stage.name)) for stage in STAGES}


def shard_hashes(run: RunDir) -> dict[str, tuple[str, frozenset[str]]]:
    """Shard file -> (sha256 of its bytes, the identities it holds)."""
    index = run.read_table(INDEX).to_pylist()
    held: dict[str, set[str]] = {}
    for entry in index:
        held.setdefault(entry["shard"], set()).add(entry["identity"])
    return {shard: (hashlib.sha256(run.read_bytes(f"shards/{shard}")).hexdigest(), frozenset(ids))
            for shard, ids in held.items()}


def reject_one(run: RunDir, slug: str) -> str:
    """A reject of the identity's first photo verify kept (by image_id)."""
    rows = read_part(run, "verify", slug, ["image_id", "status"])
    image = sorted(rows.filter(pc.equal(rows["status"], OK))["image_id"].to_pylist())[0]
    record(run, Decision(slug, REJECT, image, note="benchmark"))
    return image


def rerun_counts(before: dict[str, dict[str, Marker]], after: dict[str, dict[str, Marker]],
                 touched: set[str]) -> dict[str, dict[str, int]]:
    """Per stage: tasks written again for touched and untouched identities, on workers and on the driver."""
    counts = {}
    for stage, now in after.items():
        redone = [m for task, m in now.items() if task not in before[stage] or before[stage][task] != m]
        counts[stage] = {
            "touched_on_worker": sum(m.task in touched and bool(m.node) for m in redone),
            "touched_reused_on_driver": sum(m.task in touched and not m.node for m in redone),
            "untouched": sum(m.task not in touched for m in redone),
        }
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=12, help="N: labelled identities (at most 13)")
    parser.add_argument("--touched", type=int, default=3, help="k: identities that get a decision")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-curation-") as tmp:
        root = Path(tmp)
        photos, out = root / "photos", root / "run"
        names = copied_tree(photos, args.identities)
        shards = ["--set", "shard.max_rows=12"]  # several shards, so untouched ones can be compared
        first = run_cli([*cpu_args(write_names(root / "names.txt", names), out, photos, "all"), *shards], timeout=3600)
        if first.returncode:
            sys.exit(f"the run failed:\n{first.stderr_tail}")
        run = RunDir(str(out))
        before, shards_before = markers(run), shard_hashes(run)
        kept = [slug for slug in names if slug in before["verify"] and before["verify"][slug].kept >= 3]
        touched = set(kept[: args.touched])
        for slug in sorted(touched):
            reject_one(run, slug)
        applied = run_cli(["decide", "--apply", "--out", str(out)], timeout=3600)
        if applied.returncode:
            sys.exit(f"decide --apply failed:\n{applied.stderr_tail}")
        counts = rerun_counts(before, markers(run), touched)
        shards_after = shard_hashes(run)
        untouched_shards = [shard for shard, (_, ids) in shards_before.items() if not ids & touched]
        same = sum(shards_after.get(shard) == shards_before[shard] for shard in untouched_shards)
    report = {"identities": len(names), "touched": len(touched), "run_seconds": round(first.seconds, 1),
              "apply_seconds": round(applied.seconds, 1), "tasks_rerun": counts,
              "untouched_shards": len(untouched_shards), "untouched_shards_identical": same}
    print(json.dumps(report, indent=1))
    missed = [stage for stage in UNTOUCHED_STAGES if counts[stage]["untouched"]]
    models = [stage for stage in MODEL_STAGES if counts[stage]["touched_on_worker"]]
    print(f"untouched identities re-run in {missed or 'no'} target stage; model stages run on a worker: "
          f"{models or 'none'}; untouched shards identical: {same}/{len(untouched_shards)}")
    if missed or models or same != len(untouched_shards):
        sys.exit(1)


if __name__ == "__main__":
    main()
