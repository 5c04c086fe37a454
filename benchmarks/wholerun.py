"""Whole CLI runs, as a user types them: resume cost and peak memory of the process tree."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import CliRun, Figure, identity_tree, run_cli, write_names


def cpu_args(names: Path, out: Path, photos: Path, stage: str) -> list[str]:
    """A cpu-profile run over local folders (the face limit is below every labelled face)."""
    return ["run", "--stage", stage, "--config", "cpu", "--names", str(names), "--out", str(out),
            "--set", "crawl.source=local", "--set", f"crawl.local_root={photos}", "--set", "filter.min_face_size=80"]


def run_stages(root: Path, tag: str, repeat: int, limit: int, stages: tuple[str, ...]) -> list[CliRun]:
    """One CLI command per entry of `stages` on `repeat` rounds of the first `limit` identities."""
    photos = root / f"photos_{tag}"
    names = write_names(root / f"names_{tag}.txt", identity_tree(photos, repeat, limit))
    runs = [run_cli(cpu_args(names, root / f"run_{tag}", photos, stage)) for stage in stages]
    for run in runs:
        if run.returncode:
            raise RuntimeError(f"pipeline run failed ({run.returncode}):\n{run.stderr_tail}")
    return runs


def bench_resume(root: Path, limit: int) -> Figure:
    first, again = run_stages(root, "resume", 1, limit, ("all", "all"))
    context = {"identities": limit, "first_seconds": round(first.seconds, 2), "rerun_seconds": round(again.seconds, 2)}
    return Figure("resume: re-run of a finished run / first run", again.seconds / first.seconds, 0.05, "<=", context=context)


def bench_memory(root: Path, limit: int, stages: tuple[str, ...]) -> Figure:
    small = run_stages(root, "n", 1, limit, stages)
    large = run_stages(root, "10n", 10, limit, stages)
    peak_small, peak_large = max(r.peak_rss for r in small), max(r.peak_rss for r in large)
    context = {"stages": list(stages), "identities_n": limit, "identities_10n": 10 * limit,
               "peak_rss_mib_n": round(peak_small / 2**20), "peak_rss_mib_10n": round(peak_large / 2**20),
               "seconds_n": round(sum(r.seconds for r in small), 1), "seconds_10n": round(sum(r.seconds for r in large), 1)}
    return Figure("memory: peak RSS at 10N / at N images", peak_large / peak_small, 1.3, "<=", context=context)
