"""A model stage on GPU actors: images decoded on CPU workers, the model run in the actors only.

Ray is told the machine has one GPU (a logical resource: no CUDA is needed), so the runner takes
the path it takes on a GPU box. The stage records which process prepared and which inferred.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.core.config import load_config, resolve_profile
from pipeline.core.names import Identity
from pipeline.core.rundir import RunDir
from pipeline.core.markers import part_path
from pipeline.engine.runner import TaskExecutor, plan_stage, read_input
from stages.crawl import CrawlStage
from stages.filter import FilterStage
from tests.conftest import cpu_run_args, labelled_tree, run_cli

IDENTITIES = ["angelina_jolie", "matt_damon", "jennifer_aniston"]


class RecordingFilter(FilterStage):
    """The filter stage, leaving a file per process that prepared or inferred."""

    def prepare(self, rows: pa.Table) -> list:
        self.run.write_bytes(f"pids/prepare-{os.getpid()}", b"")
        return super().prepare(rows)

    def infer(self, rows: pa.Table, prepared: list) -> pa.Table:
        self.run.write_bytes(f"pids/infer-{os.getpid()}", b"")
        return super().infer(rows, prepared)


@pytest.fixture(scope="module")
def ray_with_a_gpu():
    import ray

    with pytest.MonkeyPatch.context() as patch:  # restored after: a 0 left behind refuses multi-node clusters
        patch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only, as the CLI's private instance
        ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False)
        yield
        ray.shutdown()


def pids(run: Path, step: str) -> set[str]:
    return {path.name.split("-", 1)[1] for path in (run / "pids").glob(f"{step}-*")}


@pytest.mark.slow
def test_gpu_stage_decodes_on_cpu_workers_and_infers_in_its_actors(ray_with_a_gpu, faces, tmp_path, monkeypatch) -> None:
    import cv2

    from pipeline.engine.driver import execute

    labelled_tree(tmp_path, faces, IDENTITIES)
    # the logical GPU has no CUDA behind it: under `auto` the actor would require CUDA and fail its setup
    # (tests/test_devices.py), so the face model is placed on the CPU by hand, as a user may
    overrides = ["crawl.source=local", f"crawl.local_root={tmp_path / 'photos'}", "filter.min_face_size=80",
                 "filter.resources.num_gpus=1", "face.device=cpu"]
    config = load_config(resolve_profile("cpu"), overrides)
    run = RunDir(str(tmp_path / "run"))
    people = [Identity(name, name) for name in IDENTITIES]
    crawl = TaskExecutor(CrawlStage, None, config, run.uri)
    for spec in plan_stage(CrawlStage, None, config, run, people).todo:
        crawl.execute(spec)

    counts = execute(RecordingFilter, CrawlStage, config, run, plan_stage(RecordingFilter, CrawlStage, config, run, people))

    assert counts.tasks_done == len(IDENTITIES) and not counts.tasks_failed
    assert counts.devices == {"GPU": len(IDENTITIES)}  # what Ray gave the actors, in the run summary
    preparers, models = pids(tmp_path / "run", "prepare"), pids(tmp_path / "run", "infer")
    assert preparers and models and not preparers & models, (preparers, models)
    # the same models here, on one thread as in the actor: OpenCV's last bits depend on its thread count
    threads = cv2.getNumThreads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    local = FilterStage(config, run)
    local.setup()
    try:
        for person in people:
            spec = {"task": person.slug, "name": person.name}
            expected = local.process(read_input(run, "crawl", spec))
            assert run.read_table(part_path("filter", person.slug)).to_pylist() == expected.to_pylist()
    finally:
        cv2.setNumThreads(threads)  # process-wide: later tests get the default back


@pytest.mark.slow
def test_a_gpu_stage_on_a_machine_without_one_is_a_clear_error(faces, tmp_path) -> None:
    names = labelled_tree(tmp_path, faces, IDENTITIES[:1])
    common = cpu_run_args(names, tmp_path / "run", tmp_path / "photos")
    assert run_cli("run", "--stage", "crawl", *common).returncode == 0

    # on a machine with a GPU, hide it: what Ray then counts is what a machine without one shows
    result = run_cli("run", "--stage", "filter", *common, "--set", "filter.resources.num_gpus=1",
                     env={"CUDA_VISIBLE_DEVICES": ""})

    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: filter.resources.num_gpus=1, but Ray sees no such GPU on this machine "
        "(use --config cpu, or --set filter.resources.num_gpus=0)"
    ), result.stderr


@pytest.mark.slow
def test_every_node_that_runs_a_stage_is_checked_for_its_model_files(ray_with_a_gpu, tmp_path) -> None:
    """On a cluster `models fetch` on the driver puts nothing on the other nodes: the preflight runs on each node
    that can run the stage's actors (here the one node, its files present, then a folder without them)."""
    from pipeline.core.errors import UserError
    from pipeline.engine.driver import check_nodes
    from stages.segment import SegmentStage

    config = load_config(resolve_profile("cpu"))
    check_nodes(FilterStage, config)  # the cpu profile's files are in the model cache
    missing = load_config(resolve_profile("cpu"), ["segment.resources.num_gpus=1", f"models.cache_dir={tmp_path}"])
    with pytest.raises(UserError, match=r"segment cannot start on 1 of 1 nodes; on [\d.]+: .*modnet") as failed:
        check_nodes(SegmentStage, missing)
    assert "models fetch` on every node" in failed.value.fix
