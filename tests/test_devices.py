"""Device truth: a worker holding a GPU runs its models on CUDA or fails setup in one line; one holding none
runs them on the CPU; where they ran is scheduling, not part of any fingerprint.

"Holding a GPU" is the executor's input (`gpu_ids`, what Ray's `get_gpu_ids()` gives it). The CPU build of
onnxruntime stands in for a broken CUDA install: asked for CUDA, it runs the model on the CPU and says so
only in a warning, which is the silent fallback the check must catch.
"""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
from PIL import Image

from pipeline.core.config import PipelineConfig, load_config, resolve_profile
from pipeline.core.errors import UserError
from pipeline.core.models import locate
from pipeline.engine.runner import SETUP_FAILED, TaskExecutor
from stages.classifiers.open_nsfw import OpenNsfw
from stages.devices import CPU_PROVIDER, CUDA_PROVIDER, PADDED_BATCHES, checked_providers, padded, placed
from stages.filter import FilterStage
from stages.safety import SafetyScoresStage

CPU_ONLY = [CPU_PROVIDER]


@pytest.fixture()
def cpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime as the CPU package installs it (what this machine has; on a GPU machine, a stand-in for
    `pip install onnxruntime` put back over onnxruntime-gpu)."""
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: CPU_ONLY)


def test_a_worker_holding_a_gpu_requires_cuda_and_one_holding_none_uses_the_cpu() -> None:
    config = load_config(resolve_profile("cpu"), ["segment.device=cpu"])
    on_gpu, on_cpu = placed(config, ["0"]), placed(config, [])
    assert (on_gpu.face.device, on_gpu.caption.device, on_gpu.governance.device) == ("cuda",) * 3
    assert on_gpu.segment.device == "cpu"  # an explicit setting is the user's
    assert (on_cpu.face.device, on_cpu.caption.device, on_cpu.governance.device) == ("cpu",) * 3
    for stage in (FilterStage, SafetyScoresStage):  # a run moved onto GPUs redoes nothing
        assert stage.fingerprint(on_gpu) == stage.fingerprint(on_cpu) == stage.fingerprint(config)


def test_a_gpu_worker_on_the_cpu_build_fails_setup_in_one_line(cpu_build, tmp_path) -> None:
    config = load_config(resolve_profile("cpu"))
    executor = TaskExecutor(SafetyScoresStage, "verify", config, str(tmp_path), gpu_ids=["0"])
    assert executor.device == "GPU 0" and executor.setup_error is not None
    error = executor.setup_error.removeprefix(SETUP_FAILED)
    assert "\n" not in error and "device=cuda, but the CPU build of onnxruntime is installed" in error
    assert "pip install 'onnxruntime-gpu[cuda,cudnn]'" in error  # the fix
    result = executor.execute({"task": "someone", "name": "someone", "mode": "run"})
    assert result.error == executor.setup_error and result.device == "GPU 0"  # every task fails with it

    on_cpu = TaskExecutor(SafetyScoresStage, "verify", config, str(tmp_path), gpu_ids=[])
    assert on_cpu.setup_error is None and on_cpu.device == "CPU"
    assert on_cpu.stage.classifier.versions()["providers"] == CPU_PROVIDER  # the providers got, as evidence


def test_a_cuda_provider_that_does_not_start_fails_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime-gpu whose CUDA libraries do not load falls back to the CPU with a log line; device 99 makes
    the CUDA provider fail to start on every machine, and the CPU build claiming CUDA falls back the same way."""
    available = onnxruntime.get_available_providers()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA_PROVIDER, *available])
    model = locate("open_nsfw", PipelineConfig().models.cache_dir)
    with pytest.raises(UserError, match="its CUDA provider did not start") as failed:
        OpenNsfw(model, "cuda:99")
    assert "\n" not in str(failed.value) and "LD_LIBRARY_PATH" in failed.value.fix
    with pytest.raises(UserError, match="did not start"):
        checked_providers([CPU_PROVIDER], "cuda", "model.onnx")
    assert checked_providers([CUDA_PROVIDER, CPU_PROVIDER], "cuda", "m") == f"{CUDA_PROVIDER},{CPU_PROVIDER}"
    assert checked_providers(CPU_ONLY, "cpu", "m") == CPU_PROVIDER


def test_padded_batches_give_each_image_its_own_score(faces) -> None:
    """open_nsfw on the labelled photos: padded to a fixed batch size (as on CUDA), every score is the one the
    image gets unpadded."""
    classifier = OpenNsfw.load(PipelineConfig.model_validate({"governance": {"device": "cpu"}}))
    photos = [faces["images"] / name for name in ("img1.jpg", "img13.jpg", "couple.jpg")]
    inputs = [OpenNsfw.prepare(Image.open(photo)) for photo in photos]
    plain = classifier.score(inputs)
    assert len(padded(inputs, PADDED_BATCHES)) == 8 and len(padded(inputs, ())) == 3 and padded([], (8,)) == []
    classifier._batch_sizes = PADDED_BATCHES
    np.testing.assert_allclose(classifier.score(inputs), plain, atol=1e-5)
    assert len(set(np.round(plain, 6))) == 3  # the images differ, so a mixed-up row would show


def test_cpu_only_face_backends_refuse_a_gpu_worker() -> None:
    """sface (OpenCV's CPU engine) and dlib (a CPU build) cannot use the GPU a worker holds: setup fails in one line."""
    from stages.faces.dlib_backend import DlibBackend
    from stages.faces.sface_backend import SFaceBackend

    for backend, says in ((SFaceBackend, "OpenCV's CPU DNN engine only"), (DlibBackend, "the CPU only")):
        config = placed(load_config(resolve_profile("cpu"), [f"face.backend={backend.name}"]), ["0"])
        with pytest.raises(UserError, match=f"face.device=cuda: the {backend.name} backend runs on {says}"):
            backend.load(config)
